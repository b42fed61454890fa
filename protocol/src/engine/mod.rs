//! The sans-IO Proof of Response engine for one node.
//!
//! Inputs: [`Engine::handle_frame`] / [`Engine::handle_message`] (from a peer),
//! [`Engine::handle_timeout`], API calls ([`Engine::send_request`],
//! [`Engine::respond`], [`Engine::sever`]), chain events
//! ([`Engine::handle_chain_event`]) and connection changes
//! ([`Engine::peer_connected`]). Every input takes `now`.
//!
//! Outputs are polled: [`Engine::poll_writes`] (state to persist),
//! [`Engine::poll_transmit`] (frames for peers, released only once the writes they
//! depend on are reported durable with [`Engine::writes_durable`]),
//! [`Engine::poll_event`], [`Engine::poll_chain_action`] and [`Engine::poll_timeout`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::amount::Amount;
use crate::channel::ChannelRecord;
use crate::config::{EngineConfig, ProofForwarding, SeverPolicy};
use crate::crypto::{self, Hash, Keypair, NodeId};
use crate::error::ProtocolError;
use crate::merkle::MerkleProof;
use crate::messages::{Echo, Message, RejectReason, RequestMsg};
use crate::store::{Store, Write};
use crate::time::Time;
use crate::topology::{Quote, Topology};
use crate::types::{
    fee_items_hash, BatchRoot, ChannelId, EdgeInfo, FeeItem, FeePayment, Memo, RequestCore,
    RequestHeader, RequestId, ResponseBody, Route, SeverNotice, SeverReason, SignedResponse,
    SignedSeverNotice, SignedUpdate,
};
use crate::wire::{self, MAX_BODY_LEN};

mod events;
mod inbound;
mod outbound;
mod pending;
mod timers;

pub use events::{ChainAction, ChainEvent, Event, Resolution, Transmit};
pub use pending::{Downstream, Pending, Upstream};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Sync(ChannelId),
    Overdue(RequestId),
    SeverAt(RequestId),
}

#[derive(Clone, Debug, Default)]
struct Ledger {
    earnings: VecDeque<(Time, Amount)>,
    losses: VecDeque<(Time, Amount)>,
}

impl Ledger {
    fn prune(&mut self, since: Time) {
        while self.earnings.front().is_some_and(|(t, _)| *t < since) {
            self.earnings.pop_front();
        }
        while self.losses.front().is_some_and(|(t, _)| *t < since) {
            self.losses.pop_front();
        }
    }
}

#[derive(Clone, Debug)]
struct ChannelRt {
    rec: ChannelRecord,
    next_sync: Time,
    last_heard: Option<Time>,
    silent_reported: bool,
    last_peer_sync: Option<(u64, Time)>,
    ledger: Ledger,
    /// False from a disconnect until the peer's `Reestablish` arrives; frames for the
    /// peer are held meanwhile.
    ready: bool,
    held: Vec<Message>,
    /// Closing messages (response or proof, without fee) recently sent to the peer,
    /// and their insertion order for pruning by age and count.
    closings: BTreeMap<RequestId, Box<Message>>,
    closing_order: VecDeque<(Time, RequestId)>,
    /// Updates accepted from the peer and not yet acknowledged, with the write each
    /// needs durable first, in seq order.
    acks_due: VecDeque<(u64, crate::types::ChannelUpdate)>,
}

/// A value made by the engine and signed at the next poll of its outputs.
#[derive(Clone, Debug)]
enum Unsealed {
    /// Our channel update with this seq (on the entry's channel).
    Update(u64),
    /// As client, the core of this request.
    Core(RequestId),
    /// As server, this response.
    Response(ResponseBody),
}

/// At most this many closing messages are kept per channel for resending.
const MAX_CLOSINGS: usize = 65_536;

/// The Proof of Response state machine of one node.
#[derive(Debug)]
pub struct Engine {
    key: Keypair,
    id: NodeId,
    config: EngineConfig,
    topology: Topology,
    channels: BTreeMap<ChannelId, ChannelRt>,
    by_peer: BTreeMap<NodeId, ChannelId>,
    /// Boxed: a `Pending` is about 600 bytes, and B-tree inserts and removals shift
    /// their neighbours in the node.
    pending: BTreeMap<RequestId, Box<Pending>>,
    by_up: BTreeMap<ChannelId, BTreeSet<RequestId>>,
    by_down: BTreeMap<ChannelId, BTreeSet<RequestId>>,
    timers: BTreeSet<(Time, Timer)>,
    next_nonce: u64,
    writes: Vec<Write>,
    write_seq: u64,
    durable_seq: u64,
    outbox: VecDeque<(u64, Transmit)>,
    /// Channels with updates waiting to be acknowledged.
    ack_channels: BTreeSet<ChannelId>,
    /// What we made but have not signed yet, with its Merkle leaf and the channel it
    /// leaves on (see `seal`).
    unsealed: Vec<(Unsealed, Hash, ChannelId)>,
    events: VecDeque<Event>,
    chain_actions: VecDeque<ChainAction>,
}

/// A batch of writes to make durable, then confirm with [`Engine::writes_durable`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteBatch {
    /// Confirm with this number once durable.
    pub up_to: u64,
    /// The writes, in order.
    pub writes: Vec<Write>,
}

impl Engine {
    /// A new engine with an empty topology.
    pub fn new(config: EngineConfig, key: Keypair, now: Time) -> Engine {
        Engine {
            id: key.id(),
            key,
            config,
            topology: Topology::new(),
            channels: BTreeMap::new(),
            by_peer: BTreeMap::new(),
            pending: BTreeMap::new(),
            by_up: BTreeMap::new(),
            by_down: BTreeMap::new(),
            timers: BTreeSet::new(),
            // Nonces start from the clock so that a restarted node never reuses one.
            next_nonce: now.ms().saturating_mul(1_000),
            writes: Vec::new(),
            write_seq: 0,
            durable_seq: 0,
            outbox: VecDeque::new(),
            ack_channels: BTreeSet::new(),
            unsealed: Vec::new(),
            events: VecDeque::new(),
            chain_actions: VecDeque::new(),
        }
    }

    /// Rebuilds an engine after a restart from its persisted store and the chain's
    /// topology. Channels resume from their last durable state; pending requests keep
    /// their deadlines and fee totals, so nothing acknowledged is lost or paid twice.
    pub fn restore(
        config: EngineConfig,
        key: Keypair,
        topology: Topology,
        store: &Store,
        now: Time,
    ) -> Engine {
        let mut e = Engine::new(config, key, now);
        e.topology = topology;
        for rec in store.channels.values() {
            if rec.me != e.id {
                continue;
            }
            e.install_channel(rec.clone(), now);
            if let Some(ch) = e.channels.get_mut(&rec.id()) {
                // After a restart nothing may be sent on a channel before the peer has
                // told us what it holds.
                ch.ready = false;
            }
        }
        for p in store.pending.values() {
            e.index_pending(p);
            if let Some(d) = &p.down {
                if d.resolved.is_none() {
                    e.timers.insert((d.expect_by, Timer::Overdue(p.id)));
                }
            }
            e.pending.insert(p.id, Box::new(p.clone()));
        }
        e
    }

    /// This node's identity.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The engine's configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The topology as known from the chain.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Our channel records.
    pub fn channels(&self) -> impl Iterator<Item = &ChannelRecord> {
        self.channels.values().map(|c| &c.rec)
    }

    /// One channel record.
    pub fn channel(&self, id: ChannelId) -> Option<&ChannelRecord> {
        self.channels.get(&id).map(|c| &c.rec)
    }

    /// Requests in flight here.
    pub fn pending(&self) -> impl Iterator<Item = &Pending> {
        self.pending.values().map(|p| &**p)
    }

    /// How many requests are in flight here.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Up to `k` priced routes to `server` for a body of `body_len` bytes whose round
    /// trip fits `max_rtt_ms`, cheapest first.
    pub fn quote(&self, server: &NodeId, body_len: u64, max_rtt_ms: u64, k: usize) -> Vec<Quote> {
        self.topology
            .find_routes(&self.id, server, body_len, max_rtt_ms, k)
    }

    // ----------------------------------------------------------------- outputs

    /// The next batch of writes to persist, if any.
    pub fn poll_writes(&mut self) -> Option<WriteBatch> {
        self.seal();
        if self.writes.is_empty() {
            return None;
        }
        Some(WriteBatch {
            up_to: self.write_seq,
            writes: std::mem::take(&mut self.writes),
        })
    }

    /// Reports that every write up to `up_to` is durable, releasing the frames that
    /// depend on them.
    pub fn writes_durable(&mut self, up_to: u64) {
        self.durable_seq = self.durable_seq.max(up_to.min(self.write_seq));
    }

    /// The next frame to send, once the state it commits to is durable.
    ///
    /// Acknowledgements are signed here, not when the update arrives: every update of a
    /// channel that has become durable since the last ack is acknowledged by one ack of
    /// the latest of them. Under load a group commit makes many updates durable at
    /// once, so a node signs (and its peer verifies) one ack per commit and channel
    /// rather than one per request.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.seal();
        match self.outbox.front() {
            Some((needs, _)) if *needs <= self.durable_seq => {
                self.outbox.pop_front().map(|(_, t)| t)
            }
            _ => self.next_ack(),
        }
    }

    /// One ack of the latest durable update of some channel that owes its peer one.
    fn next_ack(&mut self) -> Option<Transmit> {
        let owing: Vec<ChannelId> = self.ack_channels.iter().copied().collect();
        for channel in owing {
            let Some(ch) = self.channels.get_mut(&channel) else {
                self.ack_channels.remove(&channel);
                continue;
            };
            let mut last = None;
            while ch
                .acks_due
                .front()
                .is_some_and(|(needs, _)| *needs <= self.durable_seq)
            {
                last = ch.acks_due.pop_front().map(|(_, u)| u);
            }
            if !ch.ready {
                // The peer is away: the re-ack on its `Reestablish` covers all of it.
                ch.acks_due.clear();
                last = None;
            }
            if ch.acks_due.is_empty() {
                self.ack_channels.remove(&channel);
            }
            let Some(update) = last else { continue };
            // Signing a well-formed value cannot fail to encode; were it to, the
            // payer would retransmit the update after a reconnect and be re-acked.
            let Ok(sig) = self.key.sign(&crate::types::AckOf(&update)) else {
                continue;
            };
            let message = Message::Ack {
                channel,
                seq: update.seq,
                sig,
            };
            return Some(Transmit {
                to: ch.rec.peer,
                message,
            });
        }
        None
    }

    /// Frames waiting for persistence (acks included).
    pub fn transmits_waiting(&self) -> usize {
        let acks: usize = self
            .ack_channels
            .iter()
            .filter_map(|c| self.channels.get(c))
            .map(|c| c.acks_due.len())
            .sum();
        self.outbox.len().saturating_add(acks)
    }

    /// The next application event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next chain action.
    pub fn poll_chain_action(&mut self) -> Option<ChainAction> {
        self.chain_actions.pop_front()
    }

    /// When [`Engine::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Time> {
        self.timers.first().map(|(t, _)| *t)
    }

    fn write(&mut self, w: Write) {
        self.write_seq = self.write_seq.saturating_add(1);
        self.writes.push(w);
    }

    fn send(&mut self, to: NodeId, message: Message) {
        if let Some(ch) = self.by_peer.get(&to).and_then(|c| self.channels.get_mut(c)) {
            if !ch.ready && !matches!(message, Message::Reestablish { .. }) {
                // Frames carrying updates come back through the retransmission of
                // unacknowledged updates, acks through the re-ack, and heartbeats are
                // stale by then: only the rest is worth holding (so `held` is bounded by
                // the requests in flight, not by how long the peer is away).
                let superseded = message.carries_update()
                    || matches!(message, Message::Ack { .. } | Message::Sync { .. });
                if !superseded {
                    ch.held.push(message);
                }
                return;
            }
        }
        self.outbox
            .push_back((self.write_seq, Transmit { to, message }));
    }

    fn write_pending(&mut self, id: RequestId) {
        if let Some(p) = self.pending.get(&id) {
            let w = Write::Pending(p.clone());
            self.write(w);
        }
    }

    // ----------------------------------------------------------------- chain

    /// Applies a chain event.
    pub fn handle_chain_event(&mut self, event: ChainEvent, now: Time) {
        match event {
            ChainEvent::Stake { node, stake } => self.topology.set_stake(node, stake),
            ChainEvent::EdgeOpened(edge) => {
                self.topology.insert_edge(edge.clone());
                if self.channels.contains_key(&edge.id) {
                    return;
                }
                if let Some(rec) = ChannelRecord::open(edge, self.id) {
                    self.write(Write::Channel(Box::new(rec.clone())));
                    self.install_channel(rec, now);
                }
            }
            ChainEvent::EdgeSevered(notice) => {
                if crypto::verify(&notice.notice.severer, &notice.notice, &notice.sig).is_err() {
                    return;
                }
                self.apply_severance(&notice, now, None);
            }
        }
    }

    fn install_channel(&mut self, rec: ChannelRecord, now: Time) {
        let id = rec.id();
        self.topology.insert_edge(rec.edge.clone());
        if let Some(n) = &rec.severed {
            self.topology.sever(n.notice.channel);
        }
        let next_sync = Time(rec.edge.terms.next_sync_after(now.ms()));
        self.by_peer.insert(rec.peer, id);
        if rec.severed.is_none() {
            self.timers.insert((next_sync, Timer::Sync(id)));
        }
        self.channels.insert(
            id,
            ChannelRt {
                rec,
                next_sync,
                last_heard: None,
                silent_reported: false,
                last_peer_sync: None,
                ledger: Ledger::default(),
                ready: true,
                held: Vec::new(),
                closings: BTreeMap::new(),
                closing_order: VecDeque::new(),
                acks_due: VecDeque::new(),
            },
        );
    }

    /// Requests whose upstream edge is `channel` (we owe the peer there).
    fn ids_up(&self, channel: ChannelId) -> Vec<RequestId> {
        self.by_up
            .get(&channel)
            .into_iter()
            .flatten()
            .copied()
            .collect()
    }

    /// Requests whose downstream edge is `channel` (the peer owes us there).
    fn ids_down(&self, channel: ChannelId) -> Vec<RequestId> {
        self.by_down
            .get(&channel)
            .into_iter()
            .flatten()
            .copied()
            .collect()
    }

    fn index_pending(&mut self, p: &Pending) {
        if let Some(u) = &p.up {
            self.by_up.entry(u.channel).or_default().insert(p.id);
        }
        if let Some(d) = &p.down {
            self.by_down.entry(d.channel).or_default().insert(p.id);
        }
    }

    fn finish_if_done(&mut self, id: RequestId) {
        let Some(p) = self.pending.get(&id) else {
            return;
        };
        if !p.done() {
            return;
        }
        if let Some(u) = &p.up {
            if let Some(s) = self.by_up.get_mut(&u.channel) {
                s.remove(&id);
            }
        }
        if let Some(d) = &p.down {
            if let Some(s) = self.by_down.get_mut(&d.channel) {
                s.remove(&id);
            }
        }
        self.pending.remove(&id);
        self.write(Write::PendingDone(id));
    }
}
