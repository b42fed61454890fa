//! A consistency fuzzer for several engines, as LDK's `chanmon_consistency`: a byte
//! string drives 3 to 5 engines through requests, responses, frames delivered in any
//! order across links, connections dropped and restored, write batches made durable
//! one at a time or lost in a crash (before or after they reach the store), restarts
//! from the store, severs and their finality on chain, and time.
//!
//! After every step the harness checks:
//! - **durability before release**: every update a node signs and every ack it
//!   countersigns is in its durable store before the frame carrying it leaves;
//! - **nothing backwards**: the store refuses no write, and no engine holds less
//!   than its store;
//! - **no payee holds more than its payer signed**, and no payer thinks more was
//!   acknowledged than its payee holds;
//! - **no node spends what it does not have**: deposit + received - paid never
//!   goes negative;
//! - **no late fee before its deadline**, and none above `rate × lateness`;
//! - **one outcome per request**: never a response and a proof (or a refund) for one,
//!   nor the same one twice, even across a crash (events wait for their writes);
//! - **honest peers stay connected**: no engine refuses an honest peer's frame with an
//!   error that would drop it (stale and replayed frames after a reconnection are
//!   refused harmlessly, and counted in [`Stats::refusals`]).
//!
//! [`Harness::settle`] then reconnects everything, answers every request, makes every
//! sever final and lets time pass until nothing is in flight, and checks that every
//! acknowledged request had its outcome and that both ends of every live channel
//! agree. [`Harness::ends`] gives what each end holds, so that a test can settle
//! every channel on the contract and compare (`chain/tests/consistency.rs`).

// Test harness arithmetic: counters and small values bounded by the input's length.
#![allow(clippy::arithmetic_side_effects)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use crate::amount::Amount;
use crate::config::{EngineConfig, ProofForwarding, SeverPolicy};
use crate::crypto::{Keypair, NodeId};
use crate::engine::{ChainAction, ChainEvent, Event, WriteBatch};
use crate::messages::Message;
use crate::time::Time;
use crate::topology::Topology;
use crate::types::SignedUpdate;
use crate::types::{ChannelId, EdgeInfo, EdgeTerms, RequestId, SeverReason, SignedSeverNotice};

use super::TestNode;

/// A broken invariant: the step it broke at and what broke.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The step (0 for setup, `usize::MAX` for [`Harness::settle`]).
    pub step: usize,
    /// What broke.
    pub what: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "step {}: {}", self.step, self.what)
    }
}

impl std::error::Error for Violation {}

/// One edge to open: its endpoints (indexes), terms and deposits. The chain test opens
/// these on the contract and hands the harness the edges the contract assigned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EdgeSpec {
    /// The proposing endpoint.
    pub a: usize,
    /// The confirming endpoint.
    pub b: usize,
    /// The terms.
    pub terms: EdgeTerms,
    /// `a`'s deposit.
    pub deposit_a: Amount,
    /// `b`'s deposit.
    pub deposit_b: Amount,
}

/// The network a byte string asks for: 3 to 5 nodes, a path through them plus some
/// extra edges, and each node's policies.
#[derive(Clone, Debug)]
pub struct Setup {
    /// The nodes' keys.
    pub keys: Vec<Keypair>,
    /// Their configurations.
    pub configs: Vec<EngineConfig>,
    /// The edges.
    pub edges: Vec<EdgeSpec>,
}

impl Setup {
    /// Reads the setup from the front of `input` (missing bytes read as zero).
    pub fn from_bytes(input: &mut Bytes<'_>) -> Setup {
        let n = 3 + usize::from(input.byte() % 3);
        let keys: Vec<Keypair> = (0..n)
            .map(|i| Keypair::from_seed([u8::try_from(i + 1).unwrap_or(1); 32]))
            .collect();
        let configs = (0..n)
            .map(|_| {
                let b = input.byte();
                let mut c = EngineConfig {
                    sever_policy: match b % 4 {
                        0 => SeverPolicy::Never,
                        1 => SeverPolicy::Immediate,
                        2 => SeverPolicy::WaitSyncs(1 + u32::from((b >> 2) % 3)),
                        _ => SeverPolicy::WaitMs(u64::from(b >> 2) * 20),
                    },
                    proof_forwarding: if b & 0x80 == 0 {
                        ProofForwarding::Immediate
                    } else {
                        ProofForwarding::NextSync
                    },
                    ..EngineConfig::default()
                };
                // Small bounds, so that the fuzzer reaches them.
                c.max_in_flight_per_peer = 64;
                c
            })
            .collect();
        let extra = input.byte();
        let mut pairs: Vec<(usize, usize)> = (1..n).map(|i| (i - 1, i)).collect();
        for (k, (a, b)) in [(0, 2), (1, 3), (0, 4), (2, 4)].into_iter().enumerate() {
            if b < n && extra & (1 << k) != 0 {
                pairs.push((a, b));
            }
        }
        let edges = pairs
            .into_iter()
            .map(|(a, b)| {
                let t = input.byte();
                EdgeSpec {
                    a,
                    b,
                    terms: EdgeTerms {
                        latency_ms: 5 + u64::from(t % 4) * 10,
                        base_cost: Amount(100),
                        byte_cost: Amount(1),
                        sync_interval_ms: [100, 250, 500, 1000][usize::from((t >> 2) % 4)],
                        sync_phase_ms: u64::from((t >> 4) % 4) * 10,
                        max_late_fee_rate: Amount(10),
                        bandwidth: EdgeTerms::DEFAULT_BANDWIDTH,
                    },
                    // Sometimes small enough to run out.
                    deposit_a: Amount(if t & 0x40 == 0 { 1_000_000 } else { 3_000 }),
                    deposit_b: Amount(if t & 0x80 == 0 { 1_000_000 } else { 3_000 }),
                }
            })
            .collect();
        Setup {
            keys,
            configs,
            edges,
        }
    }

    /// The edges with ids 1, 2, ... in order, as a fresh contract would assign them.
    pub fn edges_in_order(&self) -> Vec<EdgeInfo> {
        self.edges
            .iter()
            .zip(1u64..)
            .map(|(e, id)| EdgeInfo {
                id: ChannelId(id),
                a: self.keys[e.a].id(),
                b: self.keys[e.b].id(),
                terms: e.terms.clone(),
                deposit_a: e.deposit_a,
                deposit_b: e.deposit_b,
            })
            .collect()
    }
}

/// `len` pseudo-random bytes from `seed` (xorshift64*): inputs for tests that want
/// many scripts, reproducibly, without a fuzzer.
pub fn random_input(seed: &mut u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| {
            *seed ^= *seed >> 12;
            *seed ^= *seed << 25;
            *seed ^= *seed >> 27;
            (seed.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// An input as saved in `protocol/tests/consistency/`: its bytes as a comma-separated
/// list (in brackets or not), or raw.
pub fn parse_saved(raw: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(raw);
    let listed: Option<Vec<u8>> = text
        .trim()
        .trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .map(str::trim)
        .filter(|b| !b.is_empty())
        .map(|b| b.parse().ok())
        .collect();
    listed.unwrap_or_else(|| raw.to_vec())
}

/// The fuzzer's input, read a byte at a time; past its end every byte is zero.
#[derive(Clone, Debug)]
pub struct Bytes<'a> {
    data: &'a [u8],
}

impl<'a> Bytes<'a> {
    /// Reads from `data`.
    pub fn new(data: &'a [u8]) -> Bytes<'a> {
        Bytes { data }
    }

    /// The next byte, or zero past the end.
    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    /// Whether anything is left.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// One step of the script.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// `client` sends a request to `server` over the cheapest route it knows.
    Send {
        /// The client (index, reduced modulo the node count).
        client: u8,
        /// The server.
        server: u8,
        /// Body length.
        body: u8,
        /// Response limit.
        limit: u8,
        /// Late-fee rate (0 to 11; 11 is above every edge's maximum).
        rate: u8,
    },
    /// A server answers one of its open requests.
    Respond {
        /// Which of the servers with open requests.
        node: u8,
        /// Which of its open requests.
        pick: u8,
        /// Answer one byte longer than the client bought.
        oversize: bool,
    },
    /// The frames at the head of one direction of one edge arrive.
    Deliver {
        /// Which of the directions of edges with frames on them.
        link: u8,
        /// How many frames (at least one).
        count: u8,
    },
    /// A node's oldest write batch (or all of them) becomes durable.
    Persist {
        /// Which of the nodes with writes pending.
        node: u8,
        /// All of them.
        all: bool,
    },
    /// A node crashes and restarts from its store. With `committed`, its pending
    /// batches reached the store but the process died before it heard so.
    Crash {
        /// The node.
        node: u8,
        /// The pending batches reached the store.
        committed: bool,
    },
    /// The connection of one edge drops; frames on it are lost.
    Disconnect {
        /// The edge.
        edge: u8,
    },
    /// The connection of one edge comes (back) up.
    Connect {
        /// The edge.
        edge: u8,
    },
    /// Time passes; every engine handles its timers.
    Advance {
        /// How long, in ms.
        ms: u16,
    },
    /// A node severs one of its edges.
    Sever {
        /// The node.
        node: u8,
        /// Which of its edges.
        pick: u8,
    },
    /// The oldest severing notice submitted becomes final on chain.
    ChainFinal,
}

impl Action {
    /// Reads the next action (missing bytes read as zero). The low six bits of the
    /// first byte choose it, weighted towards the steps that make progress (frames
    /// delivered, writes made durable), so that requests get somewhere between
    /// faults; its top bits are flags.
    pub fn from_bytes(input: &mut Bytes<'_>) -> Action {
        let op = input.byte();
        let flag = op & 0x80 != 0;
        match op % 64 {
            0..=9 => Action::Send {
                client: input.byte(),
                server: input.byte(),
                body: input.byte(),
                limit: input.byte(),
                rate: input.byte() % 12,
            },
            10..=13 => {
                let b = input.byte();
                Action::Respond {
                    node: b & 0x0f,
                    pick: b >> 4,
                    oversize: flag && b & 0x0f == 0,
                }
            }
            14..=33 => {
                let b = input.byte();
                Action::Deliver {
                    link: b & 0x1f,
                    count: 1 + (b >> 5),
                }
            }
            34..=49 => Action::Persist {
                node: input.byte(),
                all: flag,
            },
            50 => Action::Crash {
                node: input.byte(),
                committed: flag,
            },
            51 => Action::Disconnect { edge: input.byte() },
            52 | 53 => Action::Connect { edge: input.byte() },
            54..=57 => {
                let b = input.byte();
                Action::Advance {
                    ms: [1, 1, 2, 5, 10, 20, 100, 1000][usize::from(b % 8)],
                }
            }
            // Rare (one step in 256): severs end everything that crosses the edge.
            63 if flag && op & 0x40 != 0 => {
                let b = input.byte();
                Action::Sever {
                    node: b & 0x0f,
                    pick: b >> 4,
                }
            }
            _ => Action::ChainFinal,
        }
    }
}

/// What happened over a run: for a fuzzer's statistics and a test's assertions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Steps run.
    pub steps: usize,
    /// Requests sent (accepted by the client's engine).
    pub sent: usize,
    /// Requests acknowledged by their first hop.
    pub acked: usize,
    /// Responses delivered to clients.
    pub responses: usize,
    /// Proofs of severance delivered to clients.
    pub proofs: usize,
    /// Requests refused and refunded.
    pub rejected: usize,
    /// Late-fee payments made.
    pub late_fees: usize,
    /// Crashes.
    pub crashes: usize,
    /// Edges severed on chain.
    pub severed: usize,
    /// Frames delivered.
    pub frames: usize,
    /// Frames an engine refused (each named in [`Stats::refusals`]).
    pub refused: usize,
    /// The kinds of refusal seen, with counts.
    pub refusals: BTreeMap<String, usize>,
    /// Severs by the engines, by reason.
    pub severs: BTreeMap<String, usize>,
}

/// What one end of a channel holds at the end of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelEnds {
    /// The edge.
    pub edge: EdgeInfo,
    /// Whether it was severed on chain.
    pub severed: bool,
    /// The latest update `b` signed that `a` holds.
    pub a_holds: Option<SignedUpdate>,
    /// The latest update `a` signed that `b` holds.
    pub b_holds: Option<SignedUpdate>,
    /// `a`'s balance by its engine: deposit + received - paid.
    pub a_balance: Amount,
    /// `b`'s balance by its engine.
    pub b_balance: Amount,
}

#[derive(Debug)]
struct Slot {
    node: TestNode,
    /// Batches polled but not yet durable: lost if the node crashes.
    pending: VecDeque<WriteBatch>,
    /// Bumped at each crash: an outcome seen again after a crash is a redelivery.
    epoch: u32,
}

#[derive(Debug, Default)]
struct Req {
    client: usize,
    rate: Amount,
    acked: bool,
    /// Outcomes seen at the client, with the client's epoch when seen.
    outcomes: Vec<(&'static str, u32)>,
    /// The client crashed after its outcome reached its store and before it heard so:
    /// the outcome is durable, and its event was never released.
    ended_unheard: bool,
}

/// The engines, their links and the chain, driven one [`Action`] at a time.
#[derive(Debug)]
pub struct Harness {
    slots: Vec<Slot>,
    edges: Vec<EdgeInfo>,
    index: BTreeMap<NodeId, usize>,
    /// Frames in flight, per direction of each edge (by edge index), in order.
    links: BTreeMap<(usize, bool), VecDeque<Message>>,
    /// Edges whose connection is up.
    up: BTreeSet<usize>,
    chain_topology: Topology,
    chain_queue: VecDeque<SignedSeverNotice>,
    chain_severed: Vec<SignedSeverNotice>,
    requests: BTreeMap<RequestId, Req>,
    now: Time,
    step: usize,
    stats: Stats,
    /// Print every action and event to stderr (`POR_CONSISTENCY_TRACE=1`).
    trace: bool,
}

/// How long [`Harness::settle`] lets virtual time run before it gives up on quiet.
const SETTLE_ROUNDS: usize = 2_000;

impl Harness {
    /// Engines for `keys` with `configs`, each told that `edges` opened, every
    /// connection up and every opening write durable.
    pub fn new(
        keys: &[Keypair],
        configs: &[EngineConfig],
        edges: Vec<EdgeInfo>,
    ) -> Result<Harness, Violation> {
        let now = Time(1_000);
        let slots: Vec<Slot> = keys
            .iter()
            .zip(configs)
            .map(|(k, c)| {
                let mut node = TestNode::new(c.clone(), k.clone(), now);
                node.open(&edges, now);
                Slot {
                    node,
                    pending: VecDeque::new(),
                    epoch: 0,
                }
            })
            .collect();
        let index = slots
            .iter()
            .enumerate()
            .map(|(i, s)| (s.node.id(), i))
            .collect();
        let mut chain_topology = Topology::new();
        for e in &edges {
            chain_topology.insert_edge(e.clone());
        }
        let mut h = Harness {
            slots,
            up: (0..edges.len()).collect(),
            edges,
            index,
            links: BTreeMap::new(),
            chain_topology,
            chain_queue: VecDeque::new(),
            chain_severed: Vec::new(),
            requests: BTreeMap::new(),
            now,
            step: 0,
            stats: Stats::default(),
            trace: std::env::var_os("POR_CONSISTENCY_TRACE").is_some(),
        };
        for i in 0..h.slots.len() {
            h.drain(i)?;
            h.persist(i, true)?;
        }
        Ok(h)
    }

    /// Runs a whole input: the setup from its front, then one action per remaining
    /// bytes, then [`Harness::settle`]. Returns the harness for [`Harness::ends`].
    pub fn run(input: &[u8]) -> Result<Harness, Violation> {
        let mut bytes = Bytes::new(input);
        let setup = Setup::from_bytes(&mut bytes);
        let mut h = Harness::new(&setup.keys, &setup.configs, setup.edges_in_order())?;
        h.run_actions(&mut bytes)?;
        h.settle()?;
        Ok(h)
    }

    /// Runs one action per remaining bytes of `input` (at most 4,096 actions).
    pub fn run_actions(&mut self, input: &mut Bytes<'_>) -> Result<(), Violation> {
        let mut n = 0;
        while !input.is_empty() && n < 4_096 {
            let a = Action::from_bytes(input);
            self.apply(a)?;
            n += 1;
        }
        Ok(())
    }

    /// What happened so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The current virtual time.
    pub fn now(&self) -> Time {
        self.now
    }

    fn violation(&self, what: impl Into<String>) -> Violation {
        Violation {
            step: self.step,
            what: what.into(),
        }
    }

    fn ends_of(&self, e: usize) -> (usize, usize) {
        let edge = &self.edges[e];
        (self.index[&edge.a], self.index[&edge.b])
    }

    fn edge_between(&self, i: usize, j: usize) -> Option<usize> {
        (0..self.edges.len()).find(|&e| {
            let (a, b) = self.ends_of(e);
            (a, b) == (i, j) || (a, b) == (j, i)
        })
    }

    /// Applies one action, then drains every node and checks every invariant.
    pub fn apply(&mut self, action: Action) -> Result<(), Violation> {
        self.step += 1;
        self.stats.steps += 1;
        if self.trace {
            eprintln!("[{} t={}] {action:?}", self.step, self.now.ms());
        }
        let n = self.slots.len();
        let now = self.now;
        match action {
            Action::Send {
                client,
                server,
                body,
                limit,
                rate,
            } => {
                let (c, s) = (usize::from(client) % n, usize::from(server) % n);
                if c != s {
                    self.send(c, s, usize::from(body), u64::from(limit), rate)?;
                }
            }
            Action::Respond {
                node,
                pick,
                oversize,
            } => {
                // One of the servers with open requests.
                let serving: Vec<usize> = (0..n)
                    .filter(|&i| !self.open_as_server(i).is_empty())
                    .collect();
                let i = match serving.len() {
                    0 => 0,
                    k => serving[usize::from(node) % k],
                };
                let open = self.open_as_server(i);
                if !open.is_empty() {
                    let (id, limit) = open[usize::from(pick) % open.len()];
                    let len = usize::try_from(limit).unwrap_or(0) + usize::from(oversize);
                    // Refusals (an oversized body, a request that ended meanwhile)
                    // are the engine's to make.
                    let _ = self.slots[i].node.engine.respond(id, vec![0x5a; len], now);
                }
            }
            Action::Deliver { link, count } => {
                // One of the links with frames on it (so that most steps move).
                let busy = self.busy_links();
                if !busy.is_empty() {
                    let (e, backwards) = busy[usize::from(link) % busy.len()];
                    self.deliver(e, backwards, usize::from(count))?;
                }
            }
            Action::Persist { node, all } => {
                // One of the nodes with writes pending.
                let waiting: Vec<usize> = (0..n)
                    .filter(|&i| !self.slots[i].pending.is_empty())
                    .collect();
                if !waiting.is_empty() {
                    let i = waiting[usize::from(node) % waiting.len()];
                    self.persist(i, all)?;
                }
            }
            Action::Crash { node, committed } => {
                let i = usize::from(node) % n;
                self.crash(i, committed)?;
            }
            Action::Disconnect { edge } => {
                let e = usize::from(edge) % self.edges.len();
                self.disconnect(e);
            }
            Action::Connect { edge } => {
                let e = usize::from(edge) % self.edges.len();
                self.connect(e);
            }
            Action::Advance { ms } => {
                self.now = self.now.plus(u64::from(ms));
                for i in 0..n {
                    self.slots[i].node.engine.handle_timeout(self.now);
                }
            }
            Action::Sever { node, pick } => {
                let i = usize::from(node) % n;
                let mine: Vec<ChannelId> = self.slots[i]
                    .node
                    .engine
                    .channels()
                    .filter(|c| c.severed.is_none())
                    .map(|c| c.id())
                    .collect();
                if !mine.is_empty() {
                    let ch = mine[usize::from(pick) % mine.len()];
                    self.slots[i]
                        .node
                        .engine
                        .sever(ch, SeverReason::Operator, now)
                        .map_err(|e| self.violation(format!("n{i} could not sever {ch}: {e}")))?;
                }
            }
            Action::ChainFinal => self.chain_final(),
        }
        for i in 0..n {
            self.drain(i)?;
        }
        self.check()
    }

    fn send(
        &mut self,
        c: usize,
        s: usize,
        body: usize,
        limit: u64,
        rate: u8,
    ) -> Result<(), Violation> {
        let server = self.slots[s].node.id();
        let bytes = u64::try_from(body)
            .unwrap_or(u64::MAX)
            .saturating_add(limit);
        let engine = &mut self.slots[c].node.engine;
        let Some(q) = engine.quote(&server, bytes, u64::MAX, 1).into_iter().next() else {
            return Ok(());
        };
        let rate = Amount(u128::from(rate));
        // A refusal (funds, bounds, a fee rate too high) moves no money: the checks
        // after this step say so.
        if let Ok(id) = engine.send_request(q.route, vec![0xa5; body], limit, rate, self.now) {
            self.stats.sent += 1;
            self.requests.insert(
                id,
                Req {
                    client: c,
                    rate,
                    ..Req::default()
                },
            );
        }
        Ok(())
    }

    /// Requests node `i` serves that it has not answered yet, with their limits.
    fn open_as_server(&self, i: usize) -> Vec<(RequestId, u64)> {
        self.slots[i]
            .node
            .engine
            .pending()
            .filter(|p| p.position + 1 == p.core.route.nodes.len())
            .filter(|p| p.up.as_ref().is_some_and(|u| u.closed_at.is_none()))
            .map(|p| (p.id, p.core.response_limit))
            .collect()
    }

    fn deliver(&mut self, e: usize, backwards: bool, count: usize) -> Result<(), Violation> {
        let (a, b) = self.ends_of(e);
        let (from, to) = if backwards { (b, a) } else { (a, b) };
        for _ in 0..count {
            let Some(m) = self
                .links
                .get_mut(&(e, backwards))
                .and_then(|q| q.pop_front())
            else {
                break;
            };
            self.stats.frames += 1;
            if self.trace {
                eprintln!("    n{from} -> n{to}: {}", describe(&m));
            }
            let from_id = self.slots[from].node.id();
            if let Err(err) = self.slots[to]
                .node
                .engine
                .handle_message(from_id, m, self.now)
            {
                // Every engine here is honest: a refusal that would drop the peer is
                // a bug (an honest peer dropped, perhaps on every reconnection).
                if err.is_fatal() {
                    return Err(self.violation(format!("n{to} refused a frame of n{from}: {err}")));
                }
                if self.trace {
                    eprintln!("    n{to} refused: {err}");
                }
                self.stats.refused += 1;
                let kind = format!("{err}");
                let kind = kind.split(':').next().unwrap_or_default().to_string();
                *self.stats.refusals.entry(kind).or_default() += 1;
            }
            self.drain(to)?;
        }
        Ok(())
    }

    fn persist(&mut self, i: usize, all: bool) -> Result<(), Violation> {
        while let Some(batch) = self.slots[i].pending.pop_front() {
            self.commit(i, &batch)?;
            self.slots[i].node.engine.writes_durable(batch.up_to);
            if !all {
                break;
            }
        }
        self.drain(i)
    }

    fn commit(&mut self, i: usize, batch: &WriteBatch) -> Result<(), Violation> {
        for w in &batch.writes {
            if let Err(e) = self.slots[i].node.store.apply(w) {
                return Err(self.violation(format!("n{i}'s store refused a write: {e}")));
            }
        }
        Ok(())
    }

    fn crash(&mut self, i: usize, committed: bool) -> Result<(), Violation> {
        let batches: Vec<WriteBatch> = self.slots[i].pending.drain(..).collect();
        if committed {
            for b in &batches {
                self.commit(i, b)?;
            }
        }
        if committed {
            let store = &self.slots[i].node.store;
            for (id, r) in self.requests.iter_mut() {
                let ended = store
                    .pending
                    .get(id)
                    .is_none_or(|p| p.down.as_ref().is_some_and(|d| d.resolved.is_some()));
                if r.client == i && r.outcomes.is_empty() && ended {
                    r.ended_unheard = true;
                }
            }
        }
        let now = self.now;
        // Whatever the engine had not yet handed out is gone with the process.
        self.slots[i].node.crash(self.chain_topology.clone(), now);
        self.slots[i].epoch += 1;
        self.stats.crashes += 1;
        for notice in self.chain_severed.clone() {
            self.slots[i]
                .node
                .engine
                .handle_chain_event(ChainEvent::EdgeSevered(notice), now);
        }
        for e in 0..self.edges.len() {
            let (a, b) = self.ends_of(e);
            if a == i || b == i {
                self.disconnect(e);
            }
        }
        Ok(())
    }

    fn disconnect(&mut self, e: usize) {
        let (a, b) = self.ends_of(e);
        self.links.remove(&(e, false));
        self.links.remove(&(e, true));
        if self.up.remove(&e) {
            let (ia, ib) = (self.slots[a].node.id(), self.slots[b].node.id());
            self.slots[a].node.engine.peer_disconnected(ib, self.now);
            self.slots[b].node.engine.peer_disconnected(ia, self.now);
        }
    }

    fn connect(&mut self, e: usize) {
        if !self.up.insert(e) {
            return;
        }
        let (a, b) = self.ends_of(e);
        if self.trace {
            eprintln!("    connect n{a} - n{b}");
        }
        let (ia, ib) = (self.slots[a].node.id(), self.slots[b].node.id());
        self.slots[a].node.engine.peer_connected(ib, self.now);
        self.slots[b].node.engine.peer_connected(ia, self.now);
    }

    fn chain_final(&mut self) {
        let Some(notice) = self.chain_queue.pop_front() else {
            return;
        };
        if !self.chain_topology.sever(notice.notice.channel) {
            return;
        }
        self.stats.severed += 1;
        self.chain_severed.push(notice.clone());
        for i in 0..self.slots.len() {
            self.slots[i]
                .node
                .engine
                .handle_chain_event(ChainEvent::EdgeSevered(notice.clone()), self.now);
        }
    }

    /// Takes node `i`'s writes (pending until a [`Action::Persist`]), frames (onto
    /// their links, checked against the store), events (checked) and chain actions.
    fn drain(&mut self, i: usize) -> Result<(), Violation> {
        loop {
            let mut moved = false;
            while let Some(batch) = self.slots[i].node.engine.poll_writes() {
                moved = true;
                self.slots[i].pending.push_back(batch);
            }
            while let Some(t) = self.slots[i].node.engine.poll_transmit() {
                moved = true;
                self.released(i, &t.message)?;
                let Some(&j) = self.index.get(&t.to) else {
                    return Err(self.violation(format!("n{i} sent to a stranger {}", t.to)));
                };
                let Some(e) = self.edge_between(i, j) else {
                    return Err(self.violation(format!("n{i} sent to n{j}, not a neighbour")));
                };
                if self.up.contains(&e) {
                    let backwards = self.ends_of(e).0 != i;
                    self.links
                        .entry((e, backwards))
                        .or_default()
                        .push_back(t.message);
                }
            }
            while let Some(ev) = self.slots[i].node.engine.poll_event() {
                moved = true;
                self.event(i, ev)?;
            }
            while let Some(a) = self.slots[i].node.engine.poll_chain_action() {
                moved = true;
                match a {
                    ChainAction::Sever(n) | ChainAction::Watch(n) => self.chain_queue.push_back(n),
                    // Closes are settled after the run, on the contract.
                    ChainAction::Challenge { .. } => {}
                }
            }
            if !moved {
                return Ok(());
            }
        }
    }

    /// A frame leaves node `i`: every update it signed and every ack it countersigned
    /// in it must already be durable.
    fn released(&self, i: usize, m: &Message) -> Result<(), Violation> {
        let store = &self.slots[i].node.store;
        let me = self.slots[i].node.id();
        let mut updates: Vec<&SignedUpdate> = Vec::new();
        match m {
            Message::Request(r) => updates.push(&r.payment),
            Message::Reject { refund, .. } => updates.push(refund),
            Message::Response { fee, .. } | Message::Proof { fee, .. } => {
                updates.extend(fee.iter().map(|f| &f.update));
            }
            Message::Sync { fee, .. } => updates.extend(fee.iter().map(|f| &f.update)),
            Message::LateFee { fee, .. } => updates.push(&fee.update),
            Message::Ack { channel, seq, .. } => {
                let held = store.channels.get(channel).map_or(0, |c| c.incoming.seq);
                if held < *seq {
                    return Err(self.violation(format!(
                        "n{i} acked {channel} seq {seq} with only seq {held} durable"
                    )));
                }
            }
            _ => {}
        }
        for u in updates {
            let u = &u.update;
            if u.payer != me {
                return Err(self.violation(format!("n{i} sent an update it did not sign")));
            }
            let held = store.channels.get(&u.channel).map_or(0, |c| c.outgoing.seq);
            if held < u.seq {
                return Err(self.violation(format!(
                    "n{i} released update {} seq {} with only seq {held} durable",
                    u.channel, u.seq
                )));
            }
        }
        Ok(())
    }

    fn event(&mut self, i: usize, ev: Event) -> Result<(), Violation> {
        if self.trace {
            if let Some(d) = ev.describe() {
                eprintln!("    n{i}: {} {:?} {:?}", d.kind, d.request, d.detail);
            }
        }
        let epoch = self.slots[i].epoch;
        let outcome = match &ev {
            Event::RequestAcked { request } => {
                if let Some(r) = self.requests.get_mut(request) {
                    if !r.acked {
                        r.acked = true;
                        self.stats.acked += 1;
                    }
                }
                return Ok(());
            }
            Event::LateFeePaid {
                request,
                total,
                owed_since,
                ..
            } => {
                self.stats.late_fees += 1;
                let Some(late) = self.now.ms().checked_sub(owed_since.ms()) else {
                    return Err(self.violation(format!(
                        "n{i} paid a late fee for {request} before its deadline {}",
                        owed_since.ms()
                    )));
                };
                if let Some(r) = self.requests.get(request) {
                    let most = r.rate.0.saturating_mul(u128::from(late));
                    if total.0 > most {
                        return Err(self.violation(format!(
                            "n{i} paid {} in late fees for {request}, {late} ms late at rate {}",
                            total.0, r.rate.0
                        )));
                    }
                }
                return Ok(());
            }
            Event::SeverInitiated { reason, .. } => {
                *self.stats.severs.entry(format!("{reason:?}")).or_default() += 1;
                return Ok(());
            }
            Event::ResponseDelivered { request, .. } => (request, "response"),
            Event::SeverProofDelivered { request, .. } => (request, "proof"),
            Event::RequestRejected { request, .. } => (request, "rejected"),
            _ => return Ok(()),
        };
        let (request, kind) = (*outcome.0, outcome.1);
        let Some(r) = self.requests.get(&request) else {
            return Ok(());
        };
        if r.client != i {
            let what = format!("n{i} got the outcome of n{}'s {request}", r.client);
            return Err(self.violation(what));
        }
        // Events wait for their writes, so not even a crash repeats an outcome.
        if let Some(&(first, at)) = r.outcomes.first() {
            let what = format!(
                "{request} ended twice at n{i}: {first} (epoch {at}), then {kind} (epoch {epoch})"
            );
            return Err(self.violation(what));
        }
        match kind {
            "response" => self.stats.responses += 1,
            "proof" => self.stats.proofs += 1,
            _ => self.stats.rejected += 1,
        }
        if let Some(r) = self.requests.get_mut(&request) {
            r.outcomes.push((kind, epoch));
        }
        Ok(())
    }

    /// Every invariant that holds after every step.
    fn check(&self) -> Result<(), Violation> {
        for (i, s) in self.slots.iter().enumerate() {
            for c in s.node.engine.channels() {
                let id = c.id();
                if c.balance().is_err() {
                    return Err(self.violation(format!(
                        "n{i} on {id}: paid {} with deposit {:?} and {} received",
                        c.outgoing.cumulative.0,
                        c.edge.deposit_of(&c.me),
                        c.incoming.cumulative.0
                    )));
                }
                if let Some(d) = s.node.store.channels.get(&id) {
                    if c.outgoing.seq < d.outgoing.seq || c.incoming.seq < d.incoming.seq {
                        return Err(self.violation(format!(
                            "n{i}'s engine holds less of {id} than its store"
                        )));
                    }
                }
                if let Some(held) = &c.incoming.latest {
                    if held.update.cumulative != c.incoming.cumulative
                        || held.update.seq != c.incoming.seq
                    {
                        return Err(self.violation(format!(
                            "n{i} on {id}: the update held is not the state counted"
                        )));
                    }
                }
                let Some(&j) = self.index.get(&c.peer) else {
                    continue;
                };
                let Some(p) = self.slots[j].node.engine.channel(id) else {
                    continue;
                };
                // What i holds from j, against what j signed.
                if c.incoming.cumulative > p.outgoing.cumulative || c.incoming.seq > p.outgoing.seq
                {
                    return Err(self.violation(format!(
                        "n{i} holds {} (seq {}) on {id} from n{j}, who signed {} (seq {})",
                        c.incoming.cumulative.0,
                        c.incoming.seq,
                        p.outgoing.cumulative.0,
                        p.outgoing.seq
                    )));
                }
                if c.outgoing.acked_seq > p.incoming.seq {
                    return Err(self.violation(format!(
                        "n{i} thinks n{j} acked seq {} on {id}; n{j} holds seq {}",
                        c.outgoing.acked_seq, p.incoming.seq
                    )));
                }
            }
        }
        Ok(())
    }

    /// Reconnects every edge, answers every request, makes every sever final and lets
    /// time pass until nothing is in flight; then checks that every acknowledged
    /// request ended once at its client and that both ends of every channel agree.
    pub fn settle(&mut self) -> Result<(), Violation> {
        self.step = usize::MAX;
        for round in 0..SETTLE_ROUNDS {
            for i in 0..self.slots.len() {
                self.persist(i, true)?;
            }
            for e in 0..self.edges.len() {
                self.connect(e);
            }
            self.pump()?;
            let mut answered = false;
            for i in 0..self.slots.len() {
                for (id, limit) in self.open_as_server(i) {
                    let len = usize::try_from(limit).unwrap_or(0);
                    answered |= self.slots[i]
                        .node
                        .engine
                        .respond(id, vec![0x5a; len], self.now)
                        .is_ok();
                }
            }
            while !self.chain_queue.is_empty() {
                self.chain_final();
            }
            self.pump()?;
            if !answered && self.quiet() {
                let _ = round;
                return self.settled();
            }
            self.now = self.now.plus(100);
            for i in 0..self.slots.len() {
                self.slots[i].node.engine.handle_timeout(self.now);
            }
        }
        let busy: Vec<String> = self
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let stuck: Vec<String> = s
                    .node
                    .engine
                    .pending()
                    .map(|p| {
                        format!(
                            "{} at {} up {:?} down {:?}",
                            p.id,
                            p.position,
                            p.up.as_ref().map(|u| (u.closed_at, u.fee_paid.0)),
                            p.down.as_ref().map(|d| (
                                d.acked,
                                d.resolved,
                                d.finished,
                                d.fees_received.0
                            )),
                        )
                    })
                    .collect();
                let unacked: Vec<String> = s
                    .node
                    .engine
                    .channels()
                    .filter(|c| c.severed.is_none() && c.outgoing.acked_seq != c.outgoing.seq)
                    .map(|c| {
                        format!(
                            "{} acked {} of {}",
                            c.id(),
                            c.outgoing.acked_seq,
                            c.outgoing.seq
                        )
                    })
                    .collect();
                format!(
                    "n{i}: [{}] unacked [{}]",
                    stuck.join("; "),
                    unacked.join("; ")
                )
            })
            .collect();
        Err(self.violation(format!("never settled: {}", busy.join(", "))))
    }

    /// The links with frames on them: (edge index, backwards).
    fn busy_links(&self) -> Vec<(usize, bool)> {
        self.links
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(k, _)| *k)
            .collect()
    }

    /// Delivers every frame (each node's writes made durable as it goes) until
    /// nothing moves.
    fn pump(&mut self) -> Result<(), Violation> {
        for _ in 0..10_000 {
            for i in 0..self.slots.len() {
                self.persist(i, true)?;
            }
            let busy = self.busy_links();
            if busy.is_empty() {
                return self.check();
            }
            for (e, backwards) in busy {
                self.deliver(e, backwards, usize::MAX)?;
            }
            self.check()?;
        }
        Err(self.violation("frames never stopped moving"))
    }

    fn quiet(&self) -> bool {
        self.slots.iter().all(|s| {
            s.pending.is_empty()
                && s.node.engine.in_flight() == 0
                && s.node
                    .engine
                    .channels()
                    .all(|c| c.severed.is_some() || c.outgoing.acked_seq == c.outgoing.seq)
        }) && self.links.values().all(VecDeque::is_empty)
            && self.chain_queue.is_empty()
    }

    fn settled(&self) -> Result<(), Violation> {
        for (id, r) in &self.requests {
            if r.acked && r.outcomes.is_empty() && !r.ended_unheard {
                let c = &self.slots[r.client].node.engine;
                let state = c
                    .pending()
                    .find(|p| p.id == *id)
                    .map(|p| format!("{:?}", p.down));
                return Err(self.violation(format!(
                    "{id} was acknowledged and never ended at n{} (its record: {state:?}, {} events waiting)",
                    r.client,
                    c.events_waiting()
                )));
            }
        }
        for e in &self.edges {
            let (a, b) = (self.index[&e.a], self.index[&e.b]);
            let (Some(ca), Some(cb)) = (
                self.slots[a].node.engine.channel(e.id),
                self.slots[b].node.engine.channel(e.id),
            ) else {
                return Err(self.violation(format!("{} is missing at an end", e.id)));
            };
            let live = ca.severed.is_none() && cb.severed.is_none();
            let agree = ca.outgoing.cumulative == cb.incoming.cumulative
                && cb.outgoing.cumulative == ca.incoming.cumulative;
            if live && !agree {
                return Err(self.violation(format!(
                    "the ends of live {} disagree: a paid {} and b holds {}; b paid {} and a holds {}",
                    e.id,
                    ca.outgoing.cumulative.0,
                    cb.incoming.cumulative.0,
                    cb.outgoing.cumulative.0,
                    ca.incoming.cumulative.0
                )));
            }
        }
        Ok(())
    }

    /// The severing notices that became final on the harness's chain, in order: a
    /// test settling on the contract submits them there too.
    pub fn severed_on_chain(&self) -> &[SignedSeverNotice] {
        &self.chain_severed
    }

    /// What each end of every channel holds, for settling on the contract.
    pub fn ends(&self) -> Result<Vec<ChannelEnds>, Violation> {
        let severed: BTreeSet<ChannelId> = self
            .chain_severed
            .iter()
            .map(|n| n.notice.channel)
            .collect();
        self.edges
            .iter()
            .map(|e| {
                let (a, b) = (self.index[&e.a], self.index[&e.b]);
                let (Some(ca), Some(cb)) = (
                    self.slots[a].node.engine.channel(e.id),
                    self.slots[b].node.engine.channel(e.id),
                ) else {
                    return Err(self.violation(format!("{} is missing at an end", e.id)));
                };
                let balance = |c: &crate::channel::ChannelRecord| {
                    c.balance()
                        .map_err(|err| self.violation(format!("balance of {}: {err}", e.id)))
                };
                Ok(ChannelEnds {
                    edge: e.clone(),
                    severed: severed.contains(&e.id),
                    a_holds: ca.incoming.latest.clone(),
                    b_holds: cb.incoming.latest.clone(),
                    a_balance: balance(ca)?,
                    b_balance: balance(cb)?,
                })
            })
            .collect()
    }
}

/// A frame in a trace line: its kind and the updates or acks it carries.
fn describe(m: &Message) -> String {
    let up = |u: &SignedUpdate| {
        format!(
            "{}#{}={}",
            u.update.channel, u.update.seq, u.update.cumulative.0
        )
    };
    match m {
        Message::Request(r) => format!(
            "request {} pay {}",
            r.header
                .core
                .id()
                .map(|i| i.to_string())
                .unwrap_or_default(),
            up(&r.payment)
        ),
        Message::Ack { channel, seq, .. } => format!("ack {channel}#{seq}"),
        Message::Reject {
            request, refund, ..
        } => format!("reject {request} refund {}", up(refund)),
        Message::Response { request, fee, .. } => {
            format!(
                "response {request} fee {:?}",
                fee.as_ref().map(|f| up(&f.update))
            )
        }
        Message::Proof { request, fee, .. } => {
            format!(
                "proof {request} fee {:?}",
                fee.as_ref().map(|f| up(&f.update))
            )
        }
        Message::Sync { channel, fee, .. } => {
            format!(
                "sync {channel} fee {:?}",
                fee.as_ref().map(|f| up(&f.update))
            )
        }
        Message::Reestablish {
            channel,
            received_seq,
            sent_seq,
            awaiting,
        } => format!(
            "reestablish {channel} received {received_seq} sent {sent_seq} awaiting {}",
            awaiting.len()
        ),
        Message::Severed { notice } => format!("severed {}", notice.notice.channel),
        Message::LateFee { fee, .. } => format!("late fee {}", up(&fee.update)),
        Message::Ping { .. } => "ping".into(),
    }
}
