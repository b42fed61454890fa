//! The deterministic simulator: N engines over virtual links, one virtual clock.
//!
//! Every frame goes through the real wire encoding. Every write an engine asks for is
//! folded into that node's [`Store`](por_protocol::store::Store) before its frames are released, exactly as the
//! node does with its database, so a node that "crashes" (an `offline` fault with
//! `restart = true`) comes back from its durable state alone.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use rand_chacha::ChaCha20Rng;
use sha2::{Digest, Sha256};

use por_protocol::testing::TestNode;
use por_protocol::topology::Topology;
use por_protocol::types::{ChannelId, RequestId};
use por_protocol::{Keypair, NodeId, Time};

use crate::scenario::Scenario;

mod build;
mod report;
mod run;

pub use report::{Record, Report};

/// Why a scenario cannot run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A name is used twice or not defined.
    #[error("scenario {scenario}: {detail}")]
    Invalid {
        /// The scenario.
        scenario: String,
        /// What is wrong.
        detail: String,
    },
}

#[derive(Clone, Debug)]
enum Ev {
    Wake(usize),
    Deliver {
        from: usize,
        to: usize,
        frame: Vec<u8>,
    },
    SendRequest(usize),
    Respond {
        node: usize,
        request: RequestId,
        body: Vec<u8>,
    },
    GoOffline(usize),
    GoOnline {
        node: usize,
        restart: bool,
    },
    ForceSever {
        node: usize,
        channel: ChannelId,
    },
    ChainSever(Box<por_protocol::SignedSeverNotice>),
}

/// A simulated node: the harness's engine and durable store, and what the scenario
/// says of it.
struct NodeRt {
    name: String,
    node: TestNode,
    online: bool,
    wakes: BTreeSet<Time>,
    respond: bool,
    response_delay_ms: u64,
}

struct Link {
    latency_ms: u64,
    last_arrival: Time,
}

/// A running simulation.
pub struct Sim {
    scenario: Scenario,
    nodes: Vec<NodeRt>,
    index: BTreeMap<NodeId, usize>,
    by_name: BTreeMap<String, usize>,
    links: BTreeMap<(usize, usize), Link>,
    queue: BinaryHeap<Reverse<(Time, u8, u64)>>,
    pending_events: BTreeMap<u64, Ev>,
    seq: u64,
    rng: ChaCha20Rng,
    labels: BTreeMap<RequestId, String>,
    report: Report,
    chain_topology: Topology,
    chain_severed: Vec<por_protocol::SignedSeverNotice>,
}

fn key_for(seed: u64, name: &str) -> Keypair {
    let mut h = Sha256::new();
    h.update(b"por-sim-key");
    h.update(seed.to_le_bytes());
    h.update(name.as_bytes());
    Keypair::from_seed(h.finalize().into())
}

impl Sim {
    fn lookup(&self, name: &str) -> Result<usize, SimError> {
        self.by_name
            .get(name)
            .copied()
            .ok_or_else(|| SimError::Invalid {
                scenario: self.scenario.name.clone(),
                detail: format!("unknown node {name:?}"),
            })
    }

    fn push(&mut self, t: Time, ev: Ev) {
        self.seq = self.seq.wrapping_add(1);
        // At one instant, frames and API calls come before timers: a response that
        // arrives exactly at its deadline is on time.
        let class = u8::from(matches!(ev, Ev::Wake(_)));
        self.queue.push(Reverse((t, class, self.seq)));
        self.pending_events.insert(self.seq, ev);
    }

    fn name_of(&self, id: &NodeId) -> String {
        self.index
            .get(id)
            .map(|i| self.nodes[*i].name.clone())
            .unwrap_or_else(|| id.to_string())
    }

    fn label(&self, id: &RequestId) -> String {
        self.labels
            .get(id)
            .cloned()
            .unwrap_or_else(|| id.to_string())
    }

    fn neighbours(&self, i: usize) -> Vec<usize> {
        self.links
            .keys()
            .filter(|(x, _)| *x == i)
            .map(|(_, y)| *y)
            .collect()
    }

    fn violation(&mut self, now: Time, what: String) {
        self.report
            .violations
            .push(format!("t={}: {what}", now.ms()));
    }
}

/// Parses and runs a scenario.
pub fn run_toml(text: &str) -> Result<Report, Box<dyn std::error::Error + Send + Sync>> {
    let scenario = Scenario::from_toml(text)?;
    Ok(Sim::new(scenario)?.run())
}
