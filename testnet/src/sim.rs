//! The deterministic simulator: N engines over virtual links, one virtual clock.
//!
//! Every frame goes through the real wire encoding. Every write an engine asks for is
//! folded into that node's [`Store`] before its frames are released, exactly as the
//! node does with its database, so a node that "crashes" (an `offline` fault with
//! `restart = true`) comes back from its durable state alone.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::Serialize;
use sha2::{Digest, Sha256};

use por_protocol::engine::Event;
use por_protocol::store::Store;
use por_protocol::topology::Topology;
use por_protocol::types::{ChannelId, EdgeInfo, EdgeTerms, RequestId, Route, SeverReason};
use por_protocol::{
    messages, Amount, ChainAction, ChainEvent, Engine, EngineConfig, Keypair, NodeId, Time,
};

use crate::scenario::{FaultSpec, Scenario};

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

/// One line of output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Record {
    /// Virtual time.
    pub t_ms: u64,
    /// The node reporting.
    pub node: String,
    /// What happened.
    pub kind: &'static str,
    /// The other node involved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The request, as `r<index>` in scenario order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// An amount (yoctoNEAR).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amount: Option<u128>,
    /// A running total (late fees).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<u128>,
    /// A latency or budget in ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ms: Option<u64>,
    /// A deadline in virtual ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// Free-form detail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Record {
    fn new(t: Time, node: &str, kind: &'static str) -> Record {
        Record {
            t_ms: t.ms(),
            node: node.to_string(),
            kind,
            peer: None,
            request: None,
            amount: None,
            total: None,
            ms: None,
            deadline_ms: None,
            detail: None,
        }
    }
}

/// What a run produced.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The timeline.
    pub records: Vec<Record>,
    /// Net balance change per node, from the states each payee holds (what the
    /// contract would pay out).
    pub balances: BTreeMap<String, i128>,
    /// Broken invariants (must be empty).
    pub violations: Vec<String>,
    /// Late-fee rate per request label.
    pub rates: BTreeMap<String, u128>,
    /// Requests the first hop acknowledged, by label.
    pub acked: BTreeSet<String>,
    /// Frames delivered.
    pub frames: u64,
}

impl Report {
    /// The timeline as a table for reading: a header with the scenario's name and
    /// wrapped description, one line per record, then the final balances.
    pub fn to_table(&self, name: &str, description: &str) -> String {
        use std::fmt::Write as _;
        let report = self;
        let mut out = format!("== {name}\n");
        for line in textwrap(description, 88) {
            let _ = writeln!(out, "   {line}");
        }
        for r in &report.records {
            let mut rest = Vec::new();
            if let Some(p) = &r.peer {
                rest.push(format!("peer={p}"));
            }
            if let Some(x) = &r.request {
                rest.push(format!("request={x}"));
            }
            if let Some(a) = r.amount {
                rest.push(format!("amount={a}"));
            }
            if let Some(t) = r.total {
                rest.push(format!("total={t}"));
            }
            if let Some(ms) = r.ms {
                rest.push(format!("ms={ms}"));
            }
            if let Some(d) = r.deadline_ms {
                rest.push(format!("deadline={d}"));
            }
            if let Some(d) = &r.detail {
                rest.push(d.clone());
            }
            let _ = writeln!(
                out,
                "{:>7} ms  {:<6} {:<22} {}",
                r.t_ms,
                r.node,
                r.kind,
                rest.join(" ")
            );
        }
        let balances: Vec<String> = report
            .balances
            .iter()
            .map(|(n, b)| format!("{n} {b:+}"))
            .collect();
        let _ = writeln!(
            out,
            "   final balances (yoctoNEAR): {}\n",
            balances.join(", ")
        );
        out
    }

    /// The records as JSON lines, with the final balances line last.
    pub fn to_json_lines(&self) -> String {
        let mut out = String::new();
        for r in &self.records {
            out.push_str(&serde_json::to_string(r).unwrap_or_default());
            out.push('\n');
        }
        let balances = serde_json::to_string(&self.balances).unwrap_or_default();
        out.push_str(&format!("{{\"kind\":\"final\",\"balances\":{balances}}}"));
        out.push('\n');
        out
    }

    /// Records of one kind.
    pub fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Record> + 'a {
        self.records.iter().filter(move |r| r.kind == kind)
    }
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

struct NodeRt {
    name: String,
    key: Keypair,
    config: EngineConfig,
    engine: Engine,
    store: Store,
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
    /// Builds the network of a scenario at time zero.
    pub fn new(scenario: Scenario) -> Result<Sim, SimError> {
        let scenario_name = scenario.name.clone();
        let invalid = |detail: String| SimError::Invalid {
            scenario: scenario_name.clone(),
            detail,
        };
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
                engine: Engine::new(config.clone(), key.clone(), Time::ZERO),
                key,
                config,
                store: Store::default(),
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
                node: nodes[i].key.id(),
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
                a: nodes[a].key.id(),
                b: nodes[b].key.id(),
                terms: EdgeTerms {
                    latency_ms: e.latency_ms,
                    base_cost: e.base_cost.into(),
                    byte_cost: e.byte_cost.into(),
                    sync_interval_ms: e.sync_interval_ms,
                    sync_phase_ms: e.sync_phase_ms,
                    max_late_fee_rate: e.max_late_fee_rate.into(),
                },
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
                        .live_edge_between(&sim.nodes[i].key.id(), &sim.nodes[j].key.id())
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

    /// Runs to the scenario's end and returns the report.
    pub fn run(mut self) -> Report {
        let end = Time(self.scenario.duration_ms);
        while let Some(Reverse((t, _, seq))) = self.queue.pop() {
            if t > end {
                break;
            }
            if let Some(ev) = self.pending_events.remove(&seq) {
                self.step(t, ev);
            }
        }
        self.finish()
    }

    fn step(&mut self, now: Time, ev: Ev) {
        match ev {
            Ev::Wake(i) => {
                self.nodes[i].wakes.remove(&now);
                if self.nodes[i].online {
                    self.nodes[i].engine.handle_timeout(now);
                    self.drain(i, now);
                }
            }
            Ev::Deliver { from, to, frame } => {
                if !self.nodes[to].online {
                    return;
                }
                self.report.frames = self.report.frames.saturating_add(1);
                let from_id = self.nodes[from].key.id();
                if let Err(e) = self.nodes[to].engine.handle_frame(from_id, &frame, now) {
                    let mut r = Record::new(now, &self.nodes[to].name, "frame_refused");
                    r.peer = Some(self.nodes[from].name.clone());
                    r.detail = Some(e.to_string());
                    self.report.records.push(r);
                }
                self.drain(to, now);
            }
            Ev::SendRequest(k) => self.send_request(k, now),
            Ev::Respond {
                node,
                request,
                body,
            } => {
                if self.nodes[node].online {
                    // The request may have ended meanwhile (its upstream edge severed, or
                    // the node restarted): the answer is then refused, which is correct.
                    if let Err(e) = self.nodes[node].engine.respond(request, body, now) {
                        let mut r = Record::new(now, &self.nodes[node].name, "response_refused");
                        r.request = Some(self.label(&request));
                        r.detail = Some(e.to_string());
                        self.report.records.push(r);
                    }
                    self.drain(node, now);
                }
            }
            Ev::GoOffline(i) => {
                self.nodes[i].online = false;
                let r = Record::new(now, &self.nodes[i].name, "node_offline");
                self.report.records.push(r);
                // Its neighbours see the connection drop.
                let me = self.nodes[i].key.id();
                for j in self.neighbours(i) {
                    if self.nodes[j].online {
                        self.nodes[j].engine.peer_disconnected(me, now);
                        self.drain(j, now);
                    }
                }
            }
            Ev::GoOnline { node, restart } => self.go_online(node, restart, now),
            Ev::ForceSever { node, channel } => {
                if self.nodes[node].online {
                    if let Err(e) =
                        self.nodes[node]
                            .engine
                            .sever(channel, SeverReason::Operator, now)
                    {
                        self.violation(now, format!("forced sever failed: {e}"));
                    }
                    self.drain(node, now);
                }
            }
            Ev::ChainSever(notice) => {
                if !self.chain_topology.sever(notice.notice.channel) {
                    return;
                }
                self.chain_severed.push((*notice).clone());
                let r = Record {
                    detail: Some(format!("edge {} severed on chain", notice.notice.channel)),
                    peer: Some(self.name_of(&notice.notice.peer)),
                    ..Record::new(
                        now,
                        &self.name_of(&notice.notice.severer),
                        "chain_sever_final",
                    )
                };
                self.report.records.push(r);
                for i in 0..self.nodes.len() {
                    if self.nodes[i].online {
                        let ev = ChainEvent::EdgeSevered((*notice).clone());
                        self.nodes[i].engine.handle_chain_event(ev, now);
                        self.drain(i, now);
                    }
                }
            }
        }
    }

    fn go_online(&mut self, i: usize, restart: bool, now: Time) {
        if restart {
            // A crash: everything not durable is gone. Rebuild from the store and the
            // chain, then reconnect to every neighbour.
            let n = &self.nodes[i];
            let engine = Engine::restore(
                n.config.clone(),
                n.key.clone(),
                self.chain_topology.clone(),
                &n.store,
                now,
            );
            self.nodes[i].engine = engine;
            self.nodes[i].wakes.clear();
        }
        self.nodes[i].online = true;
        // Catch up with the chain: severances finalized while it was away.
        for notice in self.chain_severed.clone() {
            self.nodes[i]
                .engine
                .handle_chain_event(ChainEvent::EdgeSevered(notice), now);
        }
        let mut r = Record::new(now, &self.nodes[i].name, "node_online");
        r.detail = Some(
            if restart {
                "restarted from store"
            } else {
                "resumed"
            }
            .into(),
        );
        self.report.records.push(r);
        let me = self.nodes[i].key.id();
        for j in self.neighbours(i) {
            if !self.nodes[j].online {
                continue;
            }
            let pj = self.nodes[j].key.id();
            // A resumed node saw its connections drop too.
            self.nodes[i].engine.peer_disconnected(pj, now);
            self.nodes[i].engine.peer_connected(pj, now);
            self.nodes[j].engine.peer_connected(me, now);
            self.drain(j, now);
        }
        self.drain(i, now);
    }

    fn neighbours(&self, i: usize) -> Vec<usize> {
        self.links
            .keys()
            .filter(|(x, _)| *x == i)
            .map(|(_, y)| *y)
            .collect()
    }

    fn send_request(&mut self, k: usize, now: Time) {
        let spec = self.scenario.requests[k].clone();
        let label = format!("r{}", k + 1);
        let (Ok(c), Ok(s)) = (self.lookup(&spec.client), self.lookup(&spec.server)) else {
            return;
        };
        if !self.nodes[c].online {
            let mut r = Record::new(now, &spec.client, "request_failed");
            r.request = Some(label);
            r.detail = Some("client offline".into());
            self.report.records.push(r);
            return;
        }
        let body = spec.body.clone().into_bytes();
        let route = match &spec.route {
            Some(names) => self.route_by_names(c, names),
            None => {
                let server = self.nodes[s].key.id();
                let max = spec.max_rtt_ms.unwrap_or(u64::MAX);
                self.nodes[c]
                    .engine
                    .quote(&server, body.len() as u64, max, 1)
                    .into_iter()
                    .next()
                    .map(|q| q.route)
                    .ok_or_else(|| "no route within the bound".to_string())
            }
        };
        let result = route.and_then(|route| {
            self.nodes[c]
                .engine
                .send_request(route, body, spec.late_fee_rate.into(), now)
                .map_err(|e| e.to_string())
        });
        match result {
            Ok(id) => {
                self.labels.insert(id, label);
            }
            Err(e) => {
                let mut r = Record::new(now, &spec.client, "request_failed");
                r.request = Some(label);
                r.detail = Some(e);
                self.report.records.push(r);
            }
        }
        self.drain(c, now);
    }

    fn route_by_names(&self, client: usize, names: &[String]) -> Result<Route, String> {
        let mut nodes = Vec::new();
        for n in names {
            let i = self
                .by_name
                .get(n)
                .ok_or_else(|| format!("unknown node {n:?} in route"))?;
            nodes.push(self.nodes[*i].key.id());
        }
        if nodes.first() != Some(&self.nodes[client].key.id()) {
            return Err("route must start at the client".into());
        }
        let topo = self.nodes[client].engine.topology();
        let mut channels = Vec::new();
        for w in nodes.windows(2) {
            let e = topo.live_edge_between(&w[0], &w[1]).ok_or_else(|| {
                format!(
                    "no live edge {}-{}",
                    self.name_of(&w[0]),
                    self.name_of(&w[1])
                )
            })?;
            channels.push(e.id);
        }
        Ok(Route { nodes, channels })
    }

    /// Persists writes, releases frames, maps events, schedules wakes for node `i`.
    fn drain(&mut self, i: usize, now: Time) {
        loop {
            let mut progressed = false;
            while let Some(batch) = self.nodes[i].engine.poll_writes() {
                progressed = true;
                for w in &batch.writes {
                    if let Err(e) = self.nodes[i].store.apply(w) {
                        let name = self.nodes[i].name.clone();
                        self.violation(now, format!("{name}: store refused a write: {e}"));
                    }
                }
                self.nodes[i].engine.writes_durable(batch.up_to);
            }
            while let Some(t) = self.nodes[i].engine.poll_transmit() {
                progressed = true;
                self.transmit(i, t.to, &t.message, now);
            }
            while let Some(ev) = self.nodes[i].engine.poll_event() {
                progressed = true;
                self.on_event(i, ev, now);
            }
            while let Some(action) = self.nodes[i].engine.poll_chain_action() {
                progressed = true;
                let ChainAction::Sever(notice) = action;
                let at = now.plus(self.scenario.chain_delay_ms);
                self.push(at, Ev::ChainSever(Box::new(notice)));
            }
            if !progressed {
                break;
            }
        }
        if let Some(t) = self.nodes[i].engine.poll_timeout() {
            if self.nodes[i].wakes.insert(t) {
                self.push(t.max(now), Ev::Wake(i));
            }
        }
    }

    fn transmit(
        &mut self,
        from: usize,
        to: NodeId,
        message: &por_protocol::messages::Message,
        now: Time,
    ) {
        let Some(&j) = self.index.get(&to) else {
            return;
        };
        if !self.nodes[from].online {
            return;
        }
        let frame = match messages::encode_frame(message) {
            Ok(f) => f,
            Err(e) => {
                self.violation(now, format!("encode failed: {e}"));
                return;
            }
        };
        let (from_name, to_name) = (self.nodes[from].name.clone(), self.nodes[j].name.clone());
        let mut extra = 0u64;
        for f in &self.scenario.faults {
            match f {
                FaultSpec::Drop {
                    from: a,
                    to: b,
                    probability,
                    from_ms,
                    until_ms,
                } if *a == from_name
                    && *b == to_name
                    && now.ms() >= *from_ms
                    && until_ms.is_none_or(|u| now.ms() < u)
                    && self.rng.gen_bool(*probability) =>
                {
                    return;
                }
                FaultSpec::Delay {
                    from: a,
                    to: b,
                    extra_ms,
                    from_ms,
                    until_ms,
                } if *a == from_name
                    && *b == to_name
                    && now.ms() >= *from_ms
                    && until_ms.is_none_or(|u| now.ms() < u) =>
                {
                    extra = extra.saturating_add(*extra_ms);
                }
                _ => {}
            }
        }
        let Some(link) = self.links.get_mut(&(from, j)) else {
            return;
        };
        // Links are ordered, like TCP: a delayed frame holds back the ones after it.
        let arrival = now
            .plus(link.latency_ms.saturating_add(extra))
            .max(link.last_arrival);
        link.last_arrival = arrival;
        self.push(arrival, Ev::Deliver { from, to: j, frame });
    }

    fn violation(&mut self, now: Time, what: String) {
        self.report
            .violations
            .push(format!("t={}: {what}", now.ms()));
    }

    fn on_event(&mut self, i: usize, ev: Event, now: Time) {
        let name = self.nodes[i].name.clone();
        let mut r = Record::new(now, &name, "");
        match ev {
            Event::RequestSent {
                request,
                first_hop,
                amount,
                deadline,
            } => {
                r.kind = "request_sent";
                r.request = Some(self.label(&request));
                r.peer = Some(self.name_of(&first_hop));
                r.amount = Some(amount.0);
                r.deadline_ms = Some(deadline.ms());
            }
            Event::RequestAcked { request } => {
                r.kind = "request_acked";
                r.request = Some(self.label(&request));
                self.report.acked.insert(self.label(&request));
            }
            Event::RequestForwarded {
                request,
                downstream,
                budget_ms,
                send_deadline,
                kept,
                ..
            } => {
                r.kind = "request_forwarded";
                r.request = Some(self.label(&request));
                r.peer = Some(self.name_of(&downstream));
                r.amount = Some(kept.0);
                r.ms = Some(budget_ms);
                r.deadline_ms = Some(send_deadline.ms());
            }
            Event::RequestReceived {
                request,
                client,
                body,
                send_deadline,
            } => {
                r.kind = "request_received";
                r.request = Some(self.label(&request));
                r.peer = Some(self.name_of(&client));
                r.deadline_ms = Some(send_deadline.ms());
                if self.nodes[i].respond {
                    let at = now.plus(self.nodes[i].response_delay_ms);
                    self.push(
                        at,
                        Ev::Respond {
                            node: i,
                            request,
                            body,
                        },
                    );
                }
            }
            Event::ResponseSent { request } => {
                r.kind = "response_sent";
                r.request = Some(self.label(&request));
            }
            Event::ResponseForwarded { request, to } => {
                r.kind = "response_forwarded";
                r.request = Some(self.label(&request));
                r.peer = Some(self.name_of(&to));
            }
            Event::ResponseDelivered {
                request,
                latency_ms,
                on_time,
                fees_received,
                ..
            } => {
                r.kind = "response_delivered";
                r.request = Some(self.label(&request));
                r.ms = Some(latency_ms);
                r.total = Some(fees_received.0);
                r.detail = Some(if on_time { "on time" } else { "late" }.into());
            }
            Event::RequestRejected {
                request,
                reason,
                refunded,
            } => {
                r.kind = "request_rejected";
                r.request = Some(self.label(&request));
                r.amount = Some(refunded.0);
                r.detail = Some(format!("{reason:?}"));
            }
            Event::LateFeePaid {
                request,
                peer,
                amount,
                total,
                owed_since,
            } => {
                r.kind = "late_fee_paid";
                r.request = Some(self.label(&request));
                r.peer = Some(self.name_of(&peer));
                r.amount = Some(amount.0);
                r.total = Some(total.0);
                r.deadline_ms = Some(owed_since.ms());
                let rate = self
                    .report
                    .rates
                    .get(&self.label(&request))
                    .copied()
                    .unwrap_or(0);
                let allowed = rate.saturating_mul(u128::from(now.since(owed_since)));
                if total.0 > allowed {
                    self.violation(
                        now,
                        format!("{name} paid {} for time before its deadline", total.0),
                    );
                }
            }
            Event::LateFeeReceived {
                request,
                peer,
                amount,
                total,
            } => {
                r.kind = "late_fee_received";
                r.request = Some(self.label(&request));
                r.peer = Some(self.name_of(&peer));
                r.amount = Some(amount.0);
                r.total = Some(total.0);
            }
            Event::SeverInitiated {
                channel,
                peer,
                reason,
            } => {
                r.kind = "sever_initiated";
                r.peer = Some(self.name_of(&peer));
                r.detail = Some(format!("{channel} {reason:?}"));
            }
            Event::SeverProofForwarded {
                request,
                to,
                channel,
            } => {
                r.kind = "sever_proof_forwarded";
                r.request = Some(self.label(&request));
                r.peer = Some(self.name_of(&to));
                r.detail = Some(channel.to_string());
            }
            Event::SeverProofDelivered {
                request,
                channel,
                severer,
                latency_ms,
                fees_received,
            } => {
                r.kind = "sever_proof_delivered";
                r.request = Some(self.label(&request));
                r.peer = Some(self.name_of(&severer));
                r.ms = Some(latency_ms);
                r.total = Some(fees_received.0);
                r.detail = Some(channel.to_string());
            }
            Event::LossRecorded {
                request,
                peer,
                amount,
            } => {
                r.kind = "loss_recorded";
                r.request = Some(self.label(&request));
                r.peer = Some(self.name_of(&peer));
                r.amount = Some(amount.0);
            }
            Event::ResponseDiscarded { request } => {
                r.kind = "response_discarded";
                r.request = Some(self.label(&request));
            }
            Event::PeerSilent { peer } => {
                r.kind = "peer_silent";
                r.peer = Some(self.name_of(&peer));
            }
            Event::LatencyObserved { .. } => return,
        }
        self.report.records.push(r);
    }

    fn finish(mut self) -> Report {
        // Balances from the states each payee holds durably: exactly what the contract
        // would pay out if every channel closed now.
        let mut balances: BTreeMap<String, i128> =
            self.nodes.iter().map(|n| (n.name.clone(), 0i128)).collect();
        let mut violations = Vec::new();
        for (k, e) in self.scenario.edges.iter().enumerate() {
            let ch = ChannelId(k as u64 + 1);
            let (Some(&a), Some(&b)) = (self.by_name.get(&e.a), self.by_name.get(&e.b)) else {
                continue;
            };
            let held = |x: usize| {
                self.nodes[x]
                    .store
                    .channels
                    .get(&ch)
                    .map(|c| (c.incoming.cumulative, c.outgoing.cumulative))
                    .unwrap_or_default()
            };
            let ((a_in, a_out), (b_in, b_out)) = (held(a), held(b));
            // The payee never holds more than the payer signed.
            if a_in > b_out || b_in > a_out {
                violations.push(format!("{ch}: payee holds more than payer signed"));
            }
            let capacity = Amount(e.deposit_a.0).checked_add(Amount(e.deposit_b.0));
            let net_a = i128::try_from(a_in.0)
                .unwrap_or(i128::MAX)
                .saturating_sub(i128::try_from(b_in.0).unwrap_or(i128::MAX));
            let payout_a = i128::try_from(e.deposit_a.0)
                .unwrap_or(i128::MAX)
                .saturating_add(net_a);
            let payout_b = i128::try_from(e.deposit_b.0)
                .unwrap_or(i128::MAX)
                .saturating_sub(net_a);
            if payout_a < 0 || payout_b < 0 || capacity.is_err() {
                violations.push(format!(
                    "{ch}: settlement out of range ({payout_a}, {payout_b})"
                ));
            }
            if let Some(v) = balances.get_mut(&e.a) {
                *v = v.saturating_add(net_a);
            }
            if let Some(v) = balances.get_mut(&e.b) {
                *v = v.saturating_sub(net_a);
            }
        }
        // Every node's durable store must match its live channel state.
        for n in &self.nodes {
            if !n.online {
                continue;
            }
            for rec in n.engine.channels() {
                match n.store.channels.get(&rec.id()) {
                    Some(s) if s.incoming == rec.incoming && s.outgoing.seq == rec.outgoing.seq => {
                    }
                    _ => violations.push(format!(
                        "{}: store diverges from engine on {}",
                        n.name,
                        rec.id()
                    )),
                }
            }
        }
        let total: i128 = balances.values().copied().fold(0i128, i128::saturating_add);
        if total != 0 {
            violations.push(format!("money not conserved: balances sum to {total}"));
        }
        self.report.balances = balances;
        self.report.violations.extend(violations);
        self.report
    }
}

/// Parses and runs a scenario.
pub fn run_toml(text: &str) -> Result<Report, Box<dyn std::error::Error + Send + Sync>> {
    let scenario = Scenario::from_toml(text)?;
    Ok(Sim::new(scenario)?.run())
}

/// Splits `text` into lines of at most `width` characters, at spaces.
fn textwrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}
