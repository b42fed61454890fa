//! Building a simulation from a scenario: nodes, keys, edges, links, and the
//! scheduled requests and faults.

use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use por_protocol::testing::TestNode;
use por_protocol::topology::Topology;
use por_protocol::types::{ChannelId, EdgeInfo};
use por_protocol::{ChainEvent, Time};

use crate::scenario::{FaultSpec, Scenario};

use super::{key_for, Ev, Link, NodeRt, Report, Sim, SimError};

impl Sim {
    /// Builds the network of a scenario at time zero.
    pub fn new(scenario: Scenario) -> Result<Sim, SimError> {
        let scenario_name = scenario.name.clone();
        let invalid = |detail: String| SimError::Invalid {
            scenario: scenario_name.clone(),
            detail,
        };
        // Request loads are requests like any other; file loads need a file layer,
        // which the simulator does not have: they run on real processes only.
        let scenario = scenario
            .expand_loads()
            .map_err(|e| invalid(e.to_string()))?;
        let mut nodes = Vec::new();
        let mut index = BTreeMap::new();
        let mut by_name = BTreeMap::new();
        for (i, n) in scenario.nodes.iter().enumerate() {
            if by_name.insert(n.name.clone(), i).is_some() {
                return Err(invalid(format!("node {:?} defined twice", n.name)));
            }
            let key = key_for(scenario.seed, &n.name);
            index.insert(key.id(), i);
            let config = n.engine_config();
            nodes.push(NodeRt {
                name: n.name.clone(),
                node: TestNode::new(config, key, Time::ZERO),
                online: true,
                wakes: BTreeSet::new(),
                respond: n.respond,
                response_delay_ms: n.response_delay_ms,
            });
        }
        let lookup = |name: &str| {
            by_name
                .get(name)
                .copied()
                .ok_or_else(|| invalid(format!("unknown node {name:?}")))
        };
        let mut chain_topology = Topology::new();
        let mut links = BTreeMap::new();
        let mut chain_events = Vec::new();
        for n in &scenario.nodes {
            let i = lookup(&n.name)?;
            let ev = ChainEvent::Stake {
                node: nodes[i].node.key.id(),
                stake: n.stake.into(),
            };
            chain_events.push(ev);
        }
        for (k, e) in scenario.edges.iter().enumerate() {
            let (a, b) = (lookup(&e.a)?, lookup(&e.b)?);
            if a == b {
                return Err(invalid(format!("edge {}-{} is a loop", e.a, e.b)));
            }
            let info = EdgeInfo {
                id: ChannelId(k as u64 + 1),
                a: nodes[a].node.key.id(),
                b: nodes[b].node.key.id(),
                terms: e.terms(),
                deposit_a: e.deposit_a.into(),
                deposit_b: e.deposit_b.into(),
            };
            let actual = e.actual_latency_ms.unwrap_or(e.latency_ms);
            for (x, y) in [(a, b), (b, a)] {
                links.insert(
                    (x, y),
                    Link {
                        latency_ms: actual,
                        last_arrival: Time::ZERO,
                    },
                );
            }
            chain_topology.insert_edge(info.clone());
            chain_events.push(ChainEvent::EdgeOpened(info));
        }
        let mut sim = Sim {
            rng: ChaCha20Rng::seed_from_u64(scenario.seed),
            scenario,
            nodes,
            index,
            by_name,
            links,
            queue: BinaryHeap::new(),
            pending_events: BTreeMap::new(),
            seq: 0,
            labels: BTreeMap::new(),
            report: Report::default(),
            chain_topology,
            chain_severed: Vec::new(),
        };
        for i in 0..sim.nodes.len() {
            for ev in &chain_events {
                sim.nodes[i]
                    .node
                    .engine
                    .handle_chain_event(ev.clone(), Time::ZERO);
            }
            sim.drain(i, Time::ZERO);
        }
        for (k, r) in sim.scenario.requests.clone().iter().enumerate() {
            let c = sim.lookup(&r.client)?;
            sim.lookup(&r.server)?;
            sim.report
                .rates
                .insert(format!("r{}", k + 1), r.late_fee_rate.0);
            sim.push(Time(r.at_ms), Ev::SendRequest(k));
            let _ = c;
        }
        for f in sim.scenario.faults.clone() {
            match f {
                FaultSpec::Offline {
                    node,
                    from_ms,
                    until_ms,
                    restart,
                } => {
                    let i = sim.lookup(&node)?;
                    sim.push(Time(from_ms), Ev::GoOffline(i));
                    if let Some(u) = until_ms {
                        sim.push(Time(u), Ev::GoOnline { node: i, restart });
                    }
                }
                FaultSpec::Sever { node, peer, at_ms } => {
                    let (i, j) = (sim.lookup(&node)?, sim.lookup(&peer)?);
                    let channel = sim
                        .chain_topology
                        .live_edge_between(&sim.nodes[i].node.key.id(), &sim.nodes[j].node.key.id())
                        .map(|e| e.id)
                        .ok_or_else(|| invalid(format!("no edge {node}-{peer} to sever")))?;
                    sim.push(Time(at_ms), Ev::ForceSever { node: i, channel });
                }
                FaultSpec::Drop {
                    from,
                    to,
                    probability,
                    ..
                } => {
                    sim.lookup(&from)?;
                    sim.lookup(&to)?;
                    if !(0.0..=1.0).contains(&probability) {
                        return Err(invalid(format!(
                            "drop probability {probability} not in [0, 1]"
                        )));
                    }
                }
                FaultSpec::Delay { from, to, .. } => {
                    sim.lookup(&from)?;
                    sim.lookup(&to)?;
                }
            }
        }
        Ok(sim)
    }
}
