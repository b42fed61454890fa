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

use crate::channel::ChannelRecord;
use crate::config::EngineConfig;
use crate::crypto::{Deployment, Hash, Keypair, NodeId};
use crate::error::ProtocolError;
use crate::messages::Message;
use crate::store::{Store, Write};
use crate::time::Time;
use crate::topology::{Quote, Topology};
use crate::types::{ChannelId, RequestId};

mod channels;
mod closes;
mod events;
mod fees;
mod input;
mod liveness;
mod request;
mod requests;
mod seal;
mod sever;

pub use crate::pending::{Downstream, Pending, Resolution, Upstream};
pub use events::{ChainAction, ChainEvent, Described, Event, Transmit};

use channels::ChannelRt;
use requests::Requests;
use seal::Unsealed;

/// How many nonces one [`Write::NonceFloor`] reserves: one write per this many
/// requests, about a second's worth of the clock's nonces (1,000 a millisecond).
pub const NONCE_BLOCK: u64 = 1 << 20;

/// What a timer is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Sync(ChannelId),
    Overdue(RequestId),
    SeverAt(RequestId),
}

/// The Proof of Response state machine of one node.
#[derive(Debug)]
pub struct Engine {
    key: Keypair,
    /// The deployment every signature made or checked here is for.
    deployment: Deployment,
    id: NodeId,
    config: EngineConfig,
    topology: Topology,
    channels: BTreeMap<ChannelId, ChannelRt>,
    by_peer: BTreeMap<NodeId, ChannelId>,
    requests: Requests,
    timers: BTreeSet<(Time, Timer)>,
    /// The nonce of our latest request.
    next_nonce: u64,
    /// The standing delay the driver reported, while it sheds load
    /// ([`Engine::set_overloaded`]).
    overloaded: Option<u64>,
    /// The floor last written ([`Write::NonceFloor`]): nonces up to it are ours to
    /// take without a write.
    nonce_floor: u64,
    writes: Vec<Write>,
    write_seq: u64,
    durable_seq: u64,
    outbox: VecDeque<(u64, Transmit)>,
    /// Frames that commit us to nothing, released at once, ahead of the outbox: a
    /// response forwarded upstream without a fee (see `Engine::send_now`).
    early: VecDeque<Transmit>,
    /// Channels with updates waiting to be acknowledged.
    ack_channels: BTreeSet<ChannelId>,
    /// What we made but have not signed yet, with its Merkle leaf and the channel it
    /// leaves on (see `seal`).
    unsealed: Vec<(Unsealed, Hash, ChannelId)>,
    /// Events of the input being handled; [`Engine::poll_event`] tags them with the
    /// writes made so far and moves them to `events_out`.
    events: VecDeque<Event>,
    /// Events waiting for the writes they report (tagged with their `write_seq`) to
    /// become durable.
    events_out: VecDeque<(u64, Event)>,
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
    pub fn new(config: EngineConfig, key: Keypair, deployment: Deployment, now: Time) -> Engine {
        Engine {
            id: key.id(),
            key,
            deployment,
            config,
            topology: Topology::new(),
            channels: BTreeMap::new(),
            by_peer: BTreeMap::new(),
            requests: Requests::default(),
            timers: BTreeSet::new(),
            // Nonces start from the clock so that a restarted node never reuses one.
            next_nonce: now.ms().saturating_mul(1_000),
            nonce_floor: now.ms().saturating_mul(1_000),
            overloaded: None,
            writes: Vec::new(),
            write_seq: 0,
            durable_seq: 0,
            outbox: VecDeque::new(),
            early: VecDeque::new(),
            ack_channels: BTreeSet::new(),
            unsealed: Vec::new(),
            events: VecDeque::new(),
            events_out: VecDeque::new(),
            chain_actions: VecDeque::new(),
        }
    }

    /// Rebuilds an engine after a restart from its persisted store and the chain's
    /// topology. Channels resume from their last durable state; pending requests keep
    /// their deadlines and fee totals, so nothing acknowledged is lost or paid twice.
    pub fn restore(
        config: EngineConfig,
        key: Keypair,
        deployment: Deployment,
        topology: Topology,
        store: &Store,
        now: Time,
    ) -> Engine {
        let mut e = Engine::new(config, key, deployment, now);
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
        // Nonces start from the clock (`new`), or past every nonce taken before the
        // restart if that is further (a restart within the same millisecond, or a
        // clock stepped back): a new request must never get an earlier one's id.
        e.next_nonce = e.next_nonce.max(store.nonce_floor);
        for p in store.pending.values() {
            // A store written before floors were kept has only its requests held.
            if p.core.client == e.id {
                e.next_nonce = e.next_nonce.max(p.core.nonce);
            }
            if let Some(d) = &p.down {
                if d.resolved.is_none() {
                    e.timers.insert((d.expect_by, Timer::Overdue(p.id)));
                }
            }
            // Acknowledged for us as server but not answered before the restart: the
            // handler gets it again (its answer leaves once the peer has reconnected).
            if let (Some(up), Some(body)) = (&p.up, &p.served_body) {
                if up.closed_at.is_none() && p.core.server == e.id {
                    e.events.push_back(Event::RequestReceived {
                        request: p.id,
                        client: p.core.client,
                        body: body.clone(),
                        response_limit: p.core.response_limit,
                        send_deadline: up.send_deadline,
                    });
                }
            }
            e.requests.insert(p.clone());
        }
        // Nothing reserved past here yet: the first request writes a floor.
        e.nonce_floor = e.next_nonce;
        // Closings committed before the crash, whether or not their frames left: each
        // is resent if its peer reconnects awaiting it. Retention starts again now.
        for (id, (channel, message)) in &store.closings {
            e.keep_closing(*channel, *id, message.clone(), now);
        }
        e
    }

    /// This node's identity.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The contract deployment this engine signs and verifies for.
    pub fn deployment(&self) -> &Deployment {
        &self.deployment
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
        self.requests.values()
    }

    /// How many requests are in flight here.
    pub fn in_flight(&self) -> usize {
        self.requests.len()
    }

    /// Whether frames for our channel `channel` leave at once: its peer is connected
    /// and has reestablished the channel. A request sent over a channel that is not
    /// ready waits for the reconnection, and its deadline runs meanwhile: a client
    /// prefers a route whose first hop is ready (its downstream could not know of
    /// the wait, and would answer late by our clock). False for a channel we do not
    /// hold or that is severed.
    pub fn channel_ready(&self, channel: ChannelId) -> bool {
        self.channels
            .get(&channel)
            .is_some_and(|c| c.ready && c.rec.severed.is_none())
    }

    /// Up to `k` priced routes to `server` for `bytes` carried (request body plus
    /// response limit) whose round trip fits `max_rtt_ms`, cheapest first.
    pub fn quote(&self, server: &NodeId, bytes: u64, max_rtt_ms: u64, k: usize) -> Vec<Quote> {
        self.topology
            .find_routes(&self.id, server, bytes, max_rtt_ms, k)
    }

    /// Admission control, decided by the driver: with `Some(delay_ms)` (the standing
    /// delay it measured, past its target) new requests are refused, a peer's as
    /// [`RejectReason::Overloaded`](crate::messages::RejectReason::Overloaded) with its
    /// payment refunded, ours with [`ProtocolError::Overloaded`]; with `None` they are
    /// taken again. Requests already taken are served as always: shedding only stops
    /// a backlog from growing past what the node answers in time.
    pub fn set_overloaded(&mut self, delay_ms: Option<u64>) {
        self.overloaded = delay_ms;
    }

    /// The standing delay the driver reported, while this node sheds load.
    pub fn overloaded(&self) -> Option<u64> {
        self.overloaded
    }

    // ----------------------------------------------------------------- outputs

    /// The next batch of writes to persist, if any.
    pub fn poll_writes(&mut self) -> Option<WriteBatch> {
        self.seal();
        self.tag_events();
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
        if let Some(t) = self.early.pop_front() {
            return Some(t);
        }
        match self.outbox.front() {
            Some((needs, _)) if *needs <= self.durable_seq => {
                self.outbox.pop_front().map(|(_, t)| t)
            }
            _ => self.next_ack(),
        }
    }

    /// Frames waiting for persistence (acks included).
    pub fn transmits_waiting(&self) -> usize {
        let acks: usize = self
            .ack_channels
            .iter()
            .filter_map(|c| self.channels.get(c))
            .map(|c| c.acks_due.len())
            .sum();
        self.outbox
            .len()
            .saturating_add(self.early.len())
            .saturating_add(acks)
    }

    /// The next application event, once the state it reports is durable: like a
    /// frame, an event waits for the writes made before it. So an outcome (a response
    /// delivered, a proof, a refund) reaches the application once, even across a crash:
    /// had the node crashed before its record was durable, the event was never
    /// released, and the outcome arrives again after the restart.
    ///
    /// One kind does not wait: a request for us as server goes to the handler at once,
    /// so that its answer is computed while the commit runs (the answer itself leaves
    /// only once everything before it is durable). Were the node to crash before the
    /// request was durable, it was never acknowledged, and it arrives again.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.tag_events();
        let durable = self.durable_seq;
        let at = self.events_out.iter().position(|(needs, e)| {
            *needs <= durable || matches!(e, Event::RequestReceived { .. })
        })?;
        self.events_out.remove(at).map(|(_, e)| e)
    }

    /// Events waiting for their writes to become durable.
    pub fn events_waiting(&self) -> usize {
        self.events.len().saturating_add(self.events_out.len())
    }

    /// Tags the events of the inputs handled so far with the writes made for them.
    fn tag_events(&mut self) {
        if self.events.is_empty() {
            return;
        }
        self.seal();
        let seq = self.write_seq;
        self.events_out
            .extend(self.events.drain(..).map(|e| (seq, e)));
    }

    /// The next chain action.
    pub fn poll_chain_action(&mut self) -> Option<ChainAction> {
        self.chain_actions.pop_front()
    }

    /// When [`Engine::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Time> {
        self.timers.first().map(|(t, _)| *t)
    }

    /// The nonce for a new request of ours. Past the floor last written, a new floor
    /// [`NONCE_BLOCK`] ahead is written first: it is in the same batch as the
    /// request's own writes, before them, so it is durable before the request leaves.
    pub(super) fn take_nonce(&mut self) -> Result<u64, ProtocolError> {
        let nonce = self
            .next_nonce
            .checked_add(1)
            .ok_or_else(|| ProtocolError::InvalidCall("no nonce left".into()))?;
        self.next_nonce = nonce;
        if nonce > self.nonce_floor {
            self.nonce_floor = nonce.saturating_add(NONCE_BLOCK);
            self.write(Write::NonceFloor(self.nonce_floor));
        }
        Ok(nonce)
    }

    pub(super) fn write(&mut self, w: Write) {
        self.write_seq = self.write_seq.saturating_add(1);
        self.writes.push(w);
    }

    pub(super) fn send(&mut self, to: NodeId, message: Message) {
        if self.hold_for_reconnect(to, &message) {
            return;
        }
        self.outbox
            .push_back((self.write_seq, Transmit { to, message }));
    }

    /// Sends a frame that signs nothing of ours and answers what a peer paid us for
    /// without committing us to anything: released at once, not after the writes made
    /// so far are durable. Only a response forwarded upstream without a fee is sent
    /// so. Its signature is the server's; the peer it reaches stops counting us late,
    /// which only ever saves us money. Were we to crash before our record of it is
    /// durable, we would restart still awaiting it; our downstream, which made its own
    /// record durable before it sent the response, sends it again once we say we
    /// await it, and we forward it again (a peer that has it refuses the copy as an
    /// unknown request, without dropping us).
    pub(super) fn send_now(&mut self, to: NodeId, message: Message) {
        if self.hold_for_reconnect(to, &message) {
            return;
        }
        self.early.push_back(Transmit { to, message });
    }

    /// Whether `message` for `to` is held (or dropped) because its channel is not
    /// ready; see [`Engine::send`].
    fn hold_for_reconnect(&mut self, to: NodeId, message: &Message) -> bool {
        if let Some(ch) = self.by_peer.get(&to).and_then(|c| self.channels.get_mut(c)) {
            if !ch.ready && !matches!(message, Message::Reestablish { .. }) {
                // Frames carrying updates come back through the retransmission of
                // unacknowledged updates, acks through the re-ack, and heartbeats are
                // stale by then: only the rest is worth holding (so `held` is bounded by
                // the requests in flight, not by how long the peer is away).
                // A response or proof we keep among the closings is resent from there
                // if the peer still awaits it (holding it too would send it twice,
                // and hold a MiB body per response for as long as the peer is away).
                if !ch.supersedes(message) {
                    ch.held.push(message.clone());
                }
                return true;
            }
        }
        false
    }

    pub(super) fn write_pending(&mut self, id: RequestId) {
        if let Some(p) = self.requests.get(&id) {
            let w = Write::Pending(Box::new(p.clone()));
            self.write(w);
        }
    }

    /// Forgets a request once both its ends are done here.
    pub(super) fn finish_if_done(&mut self, id: RequestId) {
        if self.requests.get(&id).is_some_and(Pending::done) {
            self.requests.remove(&id);
            self.write(Write::PendingDone(id));
        }
    }
}
