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
use crate::messages::{Echo, Message, RejectReason, RequestMsg};
use crate::store::{Store, Write};
use crate::time::Time;
use crate::topology::{Quote, Topology};
use crate::types::{
    fee_items_hash, ChannelId, EdgeInfo, FeeItem, FeePayment, Memo, RequestCore, RequestHeader,
    RequestId, ResponseBody, Route, SeverNotice, SeverReason, SignedResponse, SignedSeverNotice,
    SignedUpdate,
};
use crate::wire::{self, MAX_BODY_LEN};

/// A frame for a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// The neighbour to send to.
    pub to: NodeId,
    /// The message.
    pub message: Message,
}

/// Something for the node's operator or the chain client to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChainAction {
    /// Submit this severing notice to the contract.
    Sever(SignedSeverNotice),
}

/// What the chain reports to the engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChainEvent {
    /// A node registered or changed its stake.
    Stake {
        /// The node.
        node: NodeId,
        /// Its stake.
        stake: Amount,
    },
    /// An edge was opened (confirmed by both sides).
    EdgeOpened(EdgeInfo),
    /// An edge was severed on chain with this notice.
    EdgeSevered(SignedSeverNotice),
}

/// How a request ended at the node that reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Resolution {
    /// The server's signed response arrived.
    Response,
    /// A proof that this edge on the route was severed arrived (or we severed it).
    Proof(ChannelId),
    /// The downstream refused the request and refunded it.
    Rejected,
}

/// Application-level events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// We sent a request as client.
    RequestSent {
        /// The request.
        request: RequestId,
        /// First hop.
        first_hop: NodeId,
        /// Payment to the first hop (`C(P, m)`).
        amount: Amount,
        /// When the response or a proof is due.
        deadline: Time,
    },
    /// The first hop acknowledged our request: an outcome is now guaranteed.
    RequestAcked {
        /// The request.
        request: RequestId,
    },
    /// We relayed a request.
    RequestForwarded {
        /// The request.
        request: RequestId,
        /// Where it came from.
        upstream: NodeId,
        /// Where it went.
        downstream: NodeId,
        /// Budget given downstream (ms).
        budget_ms: u64,
        /// Our deadline to send a response or proof upstream.
        send_deadline: Time,
        /// What we kept (our edge's cost plus any tip).
        kept: Amount,
    },
    /// A request arrived for us as server; answer it with [`Engine::respond`].
    RequestReceived {
        /// The request.
        request: RequestId,
        /// The verified client.
        client: NodeId,
        /// The body.
        body: Vec<u8>,
        /// When the response must leave.
        send_deadline: Time,
    },
    /// We answered a request as server.
    ResponseSent {
        /// The request.
        request: RequestId,
    },
    /// We relayed a response upstream.
    ResponseForwarded {
        /// The request.
        request: RequestId,
        /// The upstream peer.
        to: NodeId,
    },
    /// The verified response reached us as client.
    ResponseDelivered {
        /// The request.
        request: RequestId,
        /// The response body.
        body: Vec<u8>,
        /// Time from sending to delivery.
        latency_ms: u64,
        /// Whether it came within the bound `b`.
        on_time: bool,
        /// Late fees received for it.
        fees_received: Amount,
    },
    /// The downstream refused our request (refunded in full).
    RequestRejected {
        /// The request.
        request: RequestId,
        /// Why.
        reason: RejectReason,
        /// The refund.
        refunded: Amount,
    },
    /// We paid a late fee.
    LateFeePaid {
        /// The request.
        request: RequestId,
        /// The upstream peer paid.
        peer: NodeId,
        /// This payment.
        amount: Amount,
        /// Total paid for the request so far.
        total: Amount,
        /// The deadline from which the fee accrues.
        owed_since: Time,
    },
    /// We received a late fee.
    LateFeeReceived {
        /// The request.
        request: RequestId,
        /// The downstream peer that paid.
        peer: NodeId,
        /// This payment.
        amount: Amount,
        /// Total received for the request so far.
        total: Amount,
    },
    /// We severed an edge.
    SeverInitiated {
        /// The edge.
        channel: ChannelId,
        /// The other endpoint.
        peer: NodeId,
        /// Why.
        reason: SeverReason,
    },
    /// We passed a proof of severance upstream.
    SeverProofForwarded {
        /// The request.
        request: RequestId,
        /// The upstream peer.
        to: NodeId,
        /// The severed edge.
        channel: ChannelId,
    },
    /// A proof of severance reached us as client (or we severed our own first hop).
    SeverProofDelivered {
        /// The request.
        request: RequestId,
        /// The severed edge.
        channel: ChannelId,
        /// Who severed it.
        severer: NodeId,
        /// Time from sending to delivery.
        latency_ms: u64,
        /// Late fees received for it.
        fees_received: Amount,
    },
    /// A downstream failed to pay late fees it owed: a loss on that edge.
    LossRecorded {
        /// The request.
        request: RequestId,
        /// The peer.
        peer: NodeId,
        /// The unpaid amount.
        amount: Amount,
    },
    /// A response arrived for a request already resolved otherwise; it was dropped.
    ResponseDiscarded {
        /// The request.
        request: RequestId,
    },
    /// A peer has been silent for `silence_syncs` sync intervals.
    PeerSilent {
        /// The peer.
        peer: NodeId,
    },
    /// A round trip was measured on an edge at a sync.
    LatencyObserved {
        /// The peer.
        peer: NodeId,
        /// Measured round trip.
        rtt_ms: u64,
        /// Promised round trip (2 L_e).
        promised_rtt_ms: u64,
    },
}

/// Our side towards the node that sent us the request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upstream {
    /// The sender.
    pub peer: NodeId,
    /// The edge it came over.
    pub channel: ChannelId,
    /// When it arrived.
    pub received_at: Time,
    /// When our response or proof must leave: `received_at + budget - 2 L_in`.
    pub send_deadline: Time,
    /// What the upstream paid us.
    pub amount_in: Amount,
    /// Late fees we have paid for it.
    pub fee_paid: Amount,
    /// When we sent the response or proof (accrual stops).
    pub closed_at: Option<Time>,
    /// A proof waiting for the next sync (forwarding policy `next_sync`).
    pub queued_proof: Option<SignedSeverNotice>,
}

/// Our side towards the node we sent the request to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Downstream {
    /// The receiver.
    pub peer: NodeId,
    /// The edge.
    pub channel: ChannelId,
    /// When we sent it.
    pub sent_at: Time,
    /// When the response or proof is due here: `sent_at + budget_out`.
    pub expect_by: Time,
    /// What we paid.
    pub amount_out: Amount,
    /// Whether the receiver acknowledged it.
    pub acked: bool,
    /// Late fees the receiver has paid us for it.
    pub fees_received: Amount,
    /// How and when it was resolved.
    pub resolved: Option<(Time, Resolution)>,
    /// Syncs counted since it went overdue (for [`SeverPolicy::WaitSyncs`]).
    pub overdue_syncs: u32,
    /// Nothing more is expected (settled, or the shortfall was recorded as a loss).
    pub finished: bool,
}

/// A request this node is involved in, as client, relay or server. Persisted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// The request id.
    pub id: RequestId,
    /// The client-signed core.
    pub core: RequestCore,
    /// Our index on the route.
    pub position: usize,
    /// Towards the client (absent for the client itself).
    pub up: Option<Upstream>,
    /// Towards the server (absent for the server itself).
    pub down: Option<Downstream>,
}

impl Pending {
    fn rate(&self) -> Amount {
        self.core.late_fee_rate
    }

    /// Late fee owed upstream at `t`: `rate * (min(t, closed_at) - send_deadline)`.
    fn owed_upstream(&self, t: Time) -> Result<Amount, ProtocolError> {
        let Some(up) = &self.up else {
            return Ok(Amount::ZERO);
        };
        let until = up.closed_at.map_or(t, |c| c.min(t));
        Ok(self
            .rate()
            .checked_mul(u128::from(until.since(up.send_deadline)))?)
    }

    /// Late fee the downstream should have paid by the time a message sent at
    /// `arrival - L` arrives at `arrival`, less `tolerance_ms` of slack.
    fn expected_from_downstream(
        &self,
        arrival: Time,
        tolerance_ms: u64,
    ) -> Result<Amount, ProtocolError> {
        let Some(down) = &self.down else {
            return Ok(Amount::ZERO);
        };
        let until = down.resolved.map_or(arrival, |(t, _)| t.min(arrival));
        let late = until.minus(tolerance_ms).since(down.expect_by);
        Ok(self.rate().checked_mul(u128::from(late))?)
    }

    fn done(&self) -> bool {
        let up_done = self.up.as_ref().is_none_or(|u| u.closed_at.is_some());
        let down_done = self.down.as_ref().is_none_or(|d| d.finished);
        up_done && down_done
    }
}

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
    closings: BTreeMap<RequestId, Message>,
    closing_order: VecDeque<(Time, RequestId)>,
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
    pending: BTreeMap<RequestId, Pending>,
    by_up: BTreeMap<ChannelId, BTreeSet<RequestId>>,
    by_down: BTreeMap<ChannelId, BTreeSet<RequestId>>,
    timers: BTreeSet<(Time, Timer)>,
    next_nonce: u64,
    writes: Vec<Write>,
    write_seq: u64,
    durable_seq: u64,
    outbox: VecDeque<(u64, Transmit)>,
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
            e.pending.insert(p.id, p.clone());
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
        self.pending.values()
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
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        match self.outbox.front() {
            Some((needs, _)) if *needs <= self.durable_seq => {
                self.outbox.pop_front().map(|(_, t)| t)
            }
            _ => None,
        }
    }

    /// Frames waiting for persistence.
    pub fn transmits_waiting(&self) -> usize {
        self.outbox.len()
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
                ch.held.push(message);
                return;
            }
        }
        self.outbox
            .push_back((self.write_seq, Transmit { to, message }));
    }

    fn write_pending(&mut self, id: RequestId) {
        if let Some(p) = self.pending.get(&id) {
            let w = Write::Pending(Box::new(p.clone()));
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

    // ----------------------------------------------------------------- API

    /// Sends a request to the last node of `route` as client, paying `C(P, m)` to the
    /// first hop. Returns the request id; the outcome arrives as events.
    pub fn send_request(
        &mut self,
        route: Route,
        body: Vec<u8>,
        late_fee_rate: Amount,
        now: Time,
    ) -> Result<RequestId, ProtocolError> {
        if body.len() > MAX_BODY_LEN {
            return Err(ProtocolError::InvalidCall(format!(
                "body of {} bytes exceeds {MAX_BODY_LEN}",
                body.len()
            )));
        }
        if route.nodes.first() != Some(&self.id) {
            return Err(ProtocolError::InvalidCall(
                "route does not start here".into(),
            ));
        }
        let quote = self.topology.quote(&route, body.len() as u64)?;
        let max_rate = self.topology.max_fee_rate(&route)?;
        if late_fee_rate > max_rate {
            return Err(ProtocolError::InvalidCall(format!(
                "late-fee rate {late_fee_rate} exceeds the route's maximum {max_rate}"
            )));
        }
        let (first_hop, channel) = (route.nodes[1], route.channels[0]);
        if !self.channels.contains_key(&channel) {
            return Err(ProtocolError::InvalidCall("first edge is not ours".into()));
        }
        self.next_nonce = self.next_nonce.wrapping_add(1);
        let core = RequestCore {
            client: self.id,
            server: *route.nodes.last().unwrap_or(&self.id),
            nonce: self.next_nonce,
            body_hash: Hash::of(&body),
            body_len: body.len() as u64,
            late_fee_rate,
            route,
        };
        let id = core.id()?;
        if self.pending.contains_key(&id) {
            return Err(ProtocolError::InvalidCall("duplicate request id".into()));
        }
        let client_sig = self
            .key
            .sign(&core)
            .map_err(|source| ProtocolError::BadSignature {
                what: "own request",
                source,
            })?;
        let header = RequestHeader {
            core: core.clone(),
            client_sig,
            id,
            budget_ms: quote.rtt_ms,
        };
        self.forward(
            Pending {
                id,
                core,
                position: 0,
                up: None,
                down: None,
            },
            header,
            body,
            first_hop,
            channel,
            quote.cost,
            quote.rtt_ms,
            now,
        )?;
        self.events.push_back(Event::RequestSent {
            request: id,
            first_hop,
            amount: quote.cost,
            deadline: now.plus(quote.rtt_ms),
        });
        Ok(id)
    }

    /// Pays `next` over `channel` and sends the request on; registers `p` as pending.
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &mut self,
        mut p: Pending,
        mut header: RequestHeader,
        body: Vec<u8>,
        next: NodeId,
        channel: ChannelId,
        amount: Amount,
        budget_ms: u64,
        now: Time,
    ) -> Result<(), ProtocolError> {
        header.budget_ms = budget_ms;
        let memo = Memo::Request {
            request: p.id,
            amount,
            budget_ms,
            late_fee_rate: p.core.late_fee_rate,
        };
        let msg = self.pay_with(channel, memo, |payment| {
            Message::Request(Box::new(RequestMsg {
                header,
                payment,
                body,
            }))
        })?;
        p.down = Some(Downstream {
            peer: next,
            channel,
            sent_at: now,
            expect_by: now.plus(budget_ms),
            amount_out: amount,
            acked: false,
            fees_received: Amount::ZERO,
            resolved: None,
            overdue_syncs: 0,
            finished: false,
        });
        let id = p.id;
        self.timers
            .insert((now.plus(budget_ms), Timer::Overdue(id)));
        self.index_pending(&p);
        self.pending.insert(id, p);
        self.write_pending(id);
        self.send(next, msg);
        Ok(())
    }

    /// Answers a request we received as server; the engine signs the response.
    pub fn respond(
        &mut self,
        request: RequestId,
        body: Vec<u8>,
        now: Time,
    ) -> Result<(), ProtocolError> {
        if body.len() > MAX_BODY_LEN {
            return Err(ProtocolError::InvalidCall(format!(
                "response of {} bytes exceeds {MAX_BODY_LEN}",
                body.len()
            )));
        }
        let p = self
            .pending
            .get(&request)
            .ok_or(ProtocolError::UnknownRequest(request))?;
        if p.core.server != self.id || p.up.as_ref().is_none_or(|u| u.closed_at.is_some()) {
            return Err(ProtocolError::InvalidCall(
                "not an open request for us as server".into(),
            ));
        }
        let rb = ResponseBody {
            request,
            body_hash: Hash::of(&body),
        };
        let sig = self
            .key
            .sign(&rb)
            .map_err(|source| ProtocolError::BadSignature {
                what: "own response",
                source,
            })?;
        let response = SignedResponse { body: rb, sig };
        self.close_upstream(request, now, |fee| Message::Response {
            request,
            response,
            body,
            fee,
        })?;
        self.events.push_back(Event::ResponseSent { request });
        Ok(())
    }

    /// Severs one of our edges: signs a notice, asks for it to be submitted on chain,
    /// and answers every request routed through it with the proof.
    pub fn sever(
        &mut self,
        channel: ChannelId,
        reason: SeverReason,
        now: Time,
    ) -> Result<(), ProtocolError> {
        self.sever_inner(channel, reason, now, None)
    }

    fn sever_inner(
        &mut self,
        channel: ChannelId,
        reason: SeverReason,
        now: Time,
        in_sync_of: Option<ChannelId>,
    ) -> Result<(), ProtocolError> {
        let ch = self
            .channels
            .get(&channel)
            .ok_or(ProtocolError::InvalidCall(format!("{channel} is not ours")))?;
        if ch.rec.severed.is_some() {
            return Ok(());
        }
        let peer = ch.rec.peer;
        let notice = SeverNotice {
            channel,
            severer: self.id,
            peer,
            reason,
            at_ms: now.ms(),
        };
        let sig = self
            .key
            .sign(&notice)
            .map_err(|source| ProtocolError::BadSignature {
                what: "own notice",
                source,
            })?;
        let signed = SignedSeverNotice { notice, sig };
        self.events.push_back(Event::SeverInitiated {
            channel,
            peer,
            reason,
        });
        self.chain_actions
            .push_back(ChainAction::Sever(signed.clone()));
        self.apply_severance(&signed, now, in_sync_of);
        self.send(peer, Message::Severed { notice: signed });
        Ok(())
    }

    /// Records a (verified) severance and resolves everything it proves.
    fn apply_severance(
        &mut self,
        notice: &SignedSeverNotice,
        now: Time,
        in_sync_of: Option<ChannelId>,
    ) {
        let channel = notice.notice.channel;
        self.topology.sever(channel);
        if let Some(ch) = self.channels.get_mut(&channel) {
            if ch.rec.severed.is_none() {
                ch.rec.severed = Some(notice.clone());
                self.timers.remove(&(ch.next_sync, Timer::Sync(channel)));
                self.write(Write::Severed {
                    channel,
                    notice: Box::new(notice.clone()),
                });
                // Obligations towards that peer can no longer be met: the notice itself
                // proves the edge gone to them.
                let ups: Vec<RequestId> = self.ids_up(channel);
                for id in ups {
                    if let Some(u) = self.pending.get_mut(&id).and_then(|p| p.up.as_mut()) {
                        u.closed_at.get_or_insert(now);
                        u.queued_proof = None;
                    }
                    self.write_pending(id);
                    self.finish_if_done(id);
                }
                // Whatever the peer still owed us on finished requests is lost now.
                let downs: Vec<RequestId> = self.ids_down(channel);
                for id in downs {
                    let resolved = self
                        .pending
                        .get(&id)
                        .and_then(|p| p.down.as_ref())
                        .is_some_and(|d| d.resolved.is_some());
                    if resolved {
                        self.realize_loss(id, now);
                    }
                }
            }
        }
        // Every request whose remaining route crosses the edge is answered by the proof.
        let affected: Vec<RequestId> = self
            .pending
            .values()
            .filter(|p| {
                p.down.as_ref().is_some_and(|d| d.resolved.is_none())
                    && p.core.route.channels[p.position..].contains(&channel)
            })
            .map(|p| p.id)
            .collect();
        for id in affected {
            self.resolve_with_proof(id, notice.clone(), now, in_sync_of);
        }
    }

    fn resolve_with_proof(
        &mut self,
        id: RequestId,
        notice: SignedSeverNotice,
        now: Time,
        in_sync_of: Option<ChannelId>,
    ) {
        let channel = notice.notice.channel;
        let Some(p) = self.pending.get_mut(&id) else {
            return;
        };
        let Some(d) = p.down.as_mut() else {
            return;
        };
        d.resolved = Some((now, Resolution::Proof(channel)));
        let d = d.clone();
        self.timers.remove(&(d.expect_by, Timer::Overdue(id)));
        match p.up.as_ref().map(|u| (u.channel, u.peer, u.closed_at)) {
            None => {
                let fees_received = d.fees_received;
                self.events.push_back(Event::SeverProofDelivered {
                    request: id,
                    channel,
                    severer: notice.notice.severer,
                    latency_ms: now.since(d.sent_at),
                    fees_received,
                });
            }
            Some((_, _, Some(_))) => {}
            Some((up_ch, _, None)) => {
                let immediate = self.config.proof_forwarding == ProofForwarding::Immediate
                    && in_sync_of != Some(up_ch);
                if immediate {
                    let n = notice.clone();
                    if self
                        .close_upstream(id, now, |fee| Message::Proof {
                            request: id,
                            notice: n,
                            fee,
                        })
                        .is_ok()
                    {
                        self.note_proof_forwarded(id, channel);
                    }
                } else if let Some(u) = self.pending.get_mut(&id).and_then(|p| p.up.as_mut()) {
                    u.queued_proof = Some(notice);
                }
            }
        }
        self.maybe_finish_downstream(id, now);
        self.write_pending(id);
        self.finish_if_done(id);
    }

    fn note_proof_forwarded(&mut self, id: RequestId, channel: ChannelId) {
        if let Some(u) = self.pending.get(&id).and_then(|p| p.up.as_ref()) {
            self.events.push_back(Event::SeverProofForwarded {
                request: id,
                to: u.peer,
                channel,
            });
        }
    }

    /// Sends the closing message (response or proof) upstream with the final late fee
    /// attached if we are late, and marks the obligation closed.
    fn close_upstream(
        &mut self,
        id: RequestId,
        now: Time,
        make: impl FnOnce(Option<FeePayment>) -> Message,
    ) -> Result<(), ProtocolError> {
        let p = self
            .pending
            .get_mut(&id)
            .ok_or(ProtocolError::UnknownRequest(id))?;
        let up = p.up.as_mut().ok_or(ProtocolError::UnknownRequest(id))?;
        if up.closed_at.is_some() {
            return Ok(());
        }
        up.closed_at = Some(now);
        up.queued_proof = None;
        let (peer, channel) = (up.peer, up.channel);
        let message = self.with_fees(channel, &[id], now, make)?;
        self.remember_closing(channel, id, &message, now);
        self.write_pending(id);
        self.send(peer, message);
        self.finish_if_done(id);
        Ok(())
    }

    /// Keeps a fee-less copy of a closing message for resending after a reconnect.
    fn remember_closing(
        &mut self,
        channel: ChannelId,
        id: RequestId,
        message: &Message,
        now: Time,
    ) {
        let copy = match message {
            Message::Response {
                request,
                response,
                body,
                ..
            } => Message::Response {
                request: *request,
                response: response.clone(),
                body: body.clone(),
                fee: None,
            },
            Message::Proof {
                request, notice, ..
            } => Message::Proof {
                request: *request,
                notice: notice.clone(),
                fee: None,
            },
            _ => return,
        };
        let retention = self.config.closing_retention_ms;
        if let Some(ch) = self.channels.get_mut(&channel) {
            ch.closings.insert(id, copy);
            ch.closing_order.push_back((now, id));
            while let Some(&(t, old)) = ch.closing_order.front() {
                if now.since(t) <= retention && ch.closing_order.len() <= MAX_CLOSINGS {
                    break;
                }
                ch.closing_order.pop_front();
                ch.closings.remove(&old);
            }
        }
    }

    /// Signs the next update on `channel` for `memo`, carried by the message `make`
    /// builds; records it for retransmission and queues it for persistence.
    fn pay_with(
        &mut self,
        channel: ChannelId,
        memo: Memo,
        make: impl FnOnce(SignedUpdate) -> Message,
    ) -> Result<Message, ProtocolError> {
        let ch = self
            .channels
            .get_mut(&channel)
            .ok_or(ProtocolError::InvalidCall(format!("{channel} is not ours")))?;
        let signed = ch.rec.pay(&self.key, memo, make)?;
        let message = ch
            .rec
            .outgoing
            .unacked
            .get(&signed.update.seq)
            .map(|(_, m)| m.clone())
            .ok_or(ProtocolError::Overflow)?;
        self.write(Write::Outgoing {
            channel,
            update: Box::new(signed),
            message: Box::new(message.clone()),
        });
        Ok(message)
    }

    /// Builds the message `make` makes, with one late-fee payment attached covering
    /// what `ids` owe on `channel` up to `now` (none when nothing is owed or we
    /// withhold), and records the fees as paid.
    fn with_fees(
        &mut self,
        channel: ChannelId,
        ids: &[RequestId],
        now: Time,
        make: impl FnOnce(Option<FeePayment>) -> Message,
    ) -> Result<Message, ProtocolError> {
        let mut items = Vec::new();
        let mut increments = Vec::new();
        if !self.config.misbehaviour.withhold_late_fees {
            for id in ids {
                let Some(p) = self.pending.get(id) else {
                    continue;
                };
                let Some(up) = p.up.as_ref().filter(|u| u.channel == channel) else {
                    continue;
                };
                let owed = p.owed_upstream(now)?;
                if owed > up.fee_paid {
                    increments.push((
                        *id,
                        owed.checked_sub(up.fee_paid)?,
                        up.peer,
                        up.send_deadline,
                    ));
                    items.push(FeeItem {
                        request: *id,
                        total: owed,
                    });
                }
            }
        }
        if items.is_empty() {
            return Ok(make(None));
        }
        let memo = Memo::LateFees {
            amount: Amount::checked_sum(increments.iter().map(|(_, a, _, _)| *a))?,
            items: fee_items_hash(&items)?,
        };
        let message = self.pay_with(channel, memo, |update| {
            make(Some(FeePayment { update, items }))
        })?;
        for (id, inc, peer, owed_since) in increments {
            if let Some(up) = self.pending.get_mut(&id).and_then(|p| p.up.as_mut()) {
                up.fee_paid = up.fee_paid.checked_add(inc)?;
                self.events.push_back(Event::LateFeePaid {
                    request: id,
                    peer,
                    amount: inc,
                    total: up.fee_paid,
                    owed_since,
                });
            }
            self.write_pending(id);
        }
        Ok(message)
    }

    // ----------------------------------------------------------------- connections

    /// The connection to `peer` is down: hold frames for it until it reconnects and
    /// the channel is reestablished.
    pub fn peer_disconnected(&mut self, peer: NodeId, _now: Time) {
        if let Some(ch) = self
            .by_peer
            .get(&peer)
            .and_then(|c| self.channels.get_mut(c))
        {
            ch.ready = false;
        }
    }

    /// A (re)connection to `peer` is up: tell it what we hold and what we still await,
    /// so that it retransmits the rest.
    pub fn peer_connected(&mut self, peer: NodeId, now: Time) {
        let Some(&channel) = self.by_peer.get(&peer) else {
            return;
        };
        let awaiting: Vec<RequestId> = self
            .by_down
            .get(&channel)
            .into_iter()
            .flatten()
            .filter(|id| {
                self.pending
                    .get(id)
                    .and_then(|p| p.down.as_ref())
                    .is_some_and(|d| d.resolved.is_none())
            })
            .copied()
            .collect();
        if let Some(ch) = self.channels.get_mut(&channel) {
            if ch.rec.severed.is_some() {
                return;
            }
            ch.last_heard = Some(now);
            let msg = Message::Reestablish {
                channel,
                received_seq: ch.rec.incoming.seq,
                sent_seq: ch.rec.outgoing.seq,
                awaiting,
            };
            self.send(peer, msg);
        }
    }

    // ----------------------------------------------------------------- input

    /// Decodes and handles one frame from `from` (an authenticated neighbour).
    pub fn handle_frame(
        &mut self,
        from: NodeId,
        frame: &[u8],
        now: Time,
    ) -> Result<(), ProtocolError> {
        let message = wire::decode_frame(frame)?;
        self.handle_message(from, message, now)
    }

    /// Handles one decoded message from `from`.
    pub fn handle_message(
        &mut self,
        from: NodeId,
        message: Message,
        now: Time,
    ) -> Result<(), ProtocolError> {
        let channel = *self
            .by_peer
            .get(&from)
            .ok_or(ProtocolError::UnknownPeer(from))?;
        let Some(ch) = self.channels.get_mut(&channel) else {
            return Err(ProtocolError::UnknownPeer(from));
        };
        if ch.rec.severed.is_some() {
            return Err(ProtocolError::ChannelSevered(channel));
        }
        ch.last_heard = Some(now);
        ch.silent_reported = false;
        match message {
            Message::Ping { .. } => Ok(()),
            Message::Request(r) => self.on_request(from, channel, *r, now),
            Message::Ack {
                channel: c,
                seq,
                sig,
            } => {
                self.check_channel(c, channel, from)?;
                self.on_ack(channel, seq, &sig, now)
            }
            Message::Reject {
                request,
                reason,
                refund,
            } => self.on_reject(from, channel, request, reason, refund, now),
            Message::Response {
                request,
                response,
                body,
                fee,
            } => self.on_response(from, channel, request, response, body, fee, now),
            Message::Proof {
                request,
                notice,
                fee,
            } => {
                if let Some(f) = &fee {
                    self.on_fee(from, channel, f, now)?;
                }
                self.on_proof(from, request, notice, now)
            }
            Message::Sync {
                channel: c,
                sent_at_ms,
                echo,
                fee,
                proofs,
            } => {
                self.check_channel(c, channel, from)?;
                self.on_sync_received(from, channel, sent_at_ms, echo, fee, proofs, now)
            }
            Message::Reestablish {
                channel: c,
                received_seq,
                sent_seq,
                awaiting,
            } => {
                self.check_channel(c, channel, from)?;
                self.on_reestablish(from, channel, received_seq, sent_seq, &awaiting)
            }
            Message::Severed { notice } => {
                if notice.notice.channel != channel || notice.notice.severer != from {
                    return Err(ProtocolError::Misaddressed("sever notice"));
                }
                crypto::verify(&from, &notice.notice, &notice.sig).map_err(|source| {
                    ProtocolError::BadSignature {
                        what: "sever notice",
                        source,
                    }
                })?;
                self.apply_severance(&notice, now, None);
                Ok(())
            }
        }
    }

    fn check_channel(
        &self,
        named: ChannelId,
        ours: ChannelId,
        peer: NodeId,
    ) -> Result<(), ProtocolError> {
        if named == ours {
            Ok(())
        } else {
            Err(ProtocolError::NotOurChannel {
                channel: named,
                peer,
            })
        }
    }

    /// Accepts a peer-signed update into the channel and queues our ack (after the
    /// state is durable).
    fn accept_update(
        &mut self,
        from: NodeId,
        channel: ChannelId,
        su: &SignedUpdate,
    ) -> Result<(), ProtocolError> {
        let ch = self
            .channels
            .get_mut(&channel)
            .ok_or(ProtocolError::UnknownPeer(from))?;
        let sig = ch.rec.receive(&self.key, su)?;
        self.write(Write::Incoming {
            channel,
            update: Box::new(su.clone()),
        });
        self.send(
            from,
            Message::Ack {
                channel,
                seq: su.update.seq,
                sig,
            },
        );
        Ok(())
    }

    fn refuse(
        &mut self,
        from: NodeId,
        channel: ChannelId,
        request: RequestId,
        amount: Amount,
        reason: RejectReason,
        detail: String,
    ) -> Result<(), ProtocolError> {
        let memo = Memo::Refund { request, amount };
        let msg = self.pay_with(channel, memo, |refund| Message::Reject {
            request,
            reason,
            refund,
        })?;
        self.send(from, msg);
        Err(ProtocolError::RequestRefused {
            request,
            reason,
            detail,
        })
    }

    fn on_request(
        &mut self,
        from: NodeId,
        channel: ChannelId,
        r: RequestMsg,
        now: Time,
    ) -> Result<(), ProtocolError> {
        let RequestMsg {
            header,
            payment,
            body,
        } = r;
        let Memo::Request {
            request,
            amount,
            budget_ms,
            late_fee_rate,
        } = payment.update.memo.clone()
        else {
            return Err(ProtocolError::Misaddressed("request payment memo"));
        };
        // The payment itself must be valid, or nothing happens at all (and the peer is
        // broken or hostile). From here on the payment is ours to hold; refusals
        // refund it.
        self.accept_update(from, channel, &payment)?;
        let verdict = self.validate_request(
            from,
            channel,
            &header,
            &body,
            request,
            amount,
            budget_ms,
            late_fee_rate,
        );
        let (position, route_cost_rest, budget_out) = match verdict {
            Ok(v) => v,
            Err((reason, detail)) => {
                return self.refuse(from, channel, request, amount, reason, detail)
            }
        };
        let id = header.id;
        let l_in = self
            .channels
            .get(&channel)
            .map(|c| c.rec.edge.terms.latency_ms)
            .unwrap_or_default();
        let send_deadline = now.plus(budget_ms.saturating_sub(l_in.saturating_mul(2)));
        let up = Upstream {
            peer: from,
            channel,
            received_at: now,
            send_deadline,
            amount_in: amount,
            fee_paid: Amount::ZERO,
            closed_at: None,
            queued_proof: None,
        };
        let p = Pending {
            id,
            core: header.core.clone(),
            position,
            up: Some(up),
            down: None,
        };
        let is_server = position.saturating_add(1) == header.core.route.nodes.len();
        if is_server {
            self.index_pending(&p);
            self.pending.insert(id, p);
            self.write_pending(id);
            self.events.push_back(Event::RequestReceived {
                request: id,
                client: header.core.client,
                body,
                send_deadline,
            });
            return Ok(());
        }
        let next = header.core.route.nodes[position.saturating_add(1)];
        let down_channel = header.core.route.channels[position];
        // Our own next edge already severed: the notice we hold is the answer.
        if let Some(notice) = self
            .channels
            .get(&down_channel)
            .and_then(|c| c.rec.severed.clone())
        {
            self.index_pending(&p);
            self.pending.insert(id, p);
            self.write_pending(id);
            self.close_upstream(id, now, |fee| Message::Proof {
                request: id,
                notice,
                fee,
            })?;
            self.note_proof_forwarded(id, down_channel);
            return Ok(());
        }
        let kept = amount.checked_sub(route_cost_rest)?;
        match self.forward(
            p,
            header,
            body,
            next,
            down_channel,
            route_cost_rest,
            budget_out,
            now,
        ) {
            Ok(()) => {}
            Err(e) => {
                // Cannot pay downstream (insolvent): refund upstream.
                return self.refuse(
                    from,
                    channel,
                    id,
                    amount,
                    RejectReason::Overloaded,
                    e.to_string(),
                );
            }
        }
        if let Some(ch) = self.channels.get_mut(&channel) {
            ch.ledger.earnings.push_back((now, kept));
        }
        if let Some(ch) = self.channels.get_mut(&down_channel) {
            ch.ledger.earnings.push_back((now, kept));
        }
        self.events.push_back(Event::RequestForwarded {
            request: id,
            upstream: from,
            downstream: next,
            budget_ms: budget_out,
            send_deadline,
            kept,
        });
        Ok(())
    }

    /// Checks a paid request against the route and our topology. Returns our position,
    /// the cost of the route after us and the budget to forward with.
    #[allow(clippy::too_many_arguments)]
    fn validate_request(
        &self,
        from: NodeId,
        channel: ChannelId,
        header: &RequestHeader,
        body: &[u8],
        request: RequestId,
        amount: Amount,
        budget_ms: u64,
        late_fee_rate: Amount,
    ) -> Result<(usize, Amount, u64), (RejectReason, String)> {
        use RejectReason as R;
        let core = &header.core;
        let route = &core.route;
        if header.id != request || core.id().ok() != Some(request) {
            return Err((R::BadRequest, "request id does not match its core".into()));
        }
        if budget_ms != header.budget_ms || late_fee_rate != core.late_fee_rate {
            return Err((
                R::BadRequest,
                "payment memo disagrees with the header".into(),
            ));
        }
        if body.len() as u64 != core.body_len || Hash::of(body) != core.body_hash {
            return Err((R::BadRequest, "body does not match its hash".into()));
        }
        if self.pending.contains_key(&request) {
            return Err((R::Duplicate, "request already in flight here".into()));
        }
        if self.pending.len() >= self.config.max_in_flight {
            return Err((R::Overloaded, "in-flight limit reached".into()));
        }
        let position = match route.position(&self.id) {
            Some(p) if p >= 1 && route.well_formed() => p,
            _ => return Err((R::RouteInvalid, "we are not a hop of this route".into())),
        };
        let prev = position.saturating_sub(1);
        if route.nodes[prev] != from || route.channels[prev] != channel {
            return Err((
                R::RouteInvalid,
                "route does not arrive over this edge".into(),
            ));
        }
        // Validate the rest of the route against the topology. Our own next edge may be
        // severed: that is answered with the proof, not refused.
        for (i, ch) in route.channels.iter().enumerate().skip(position) {
            let Some(e) = self.topology.edge(*ch) else {
                return Err((R::RouteInvalid, format!("unknown edge {ch}")));
            };
            if !e.connects(&route.nodes[i], &route.nodes[i.saturating_add(1)]) {
                return Err((R::RouteInvalid, format!("edge {ch} does not join its hops")));
            }
            if i > position && self.topology.is_severed(*ch) {
                return Err((R::RouteInvalid, format!("edge {ch} is severed")));
            }
        }
        let max_rate = self
            .topology
            .max_fee_rate(route)
            .map_err(|e| (R::RouteInvalid, e.to_string()))?;
        if late_fee_rate > max_rate {
            return Err((R::FeeRateTooHigh, format!("{late_fee_rate} > {max_rate}")));
        }
        let cost_here = self
            .topology
            .cost_from(route, prev, core.body_len)
            .map_err(|e| (R::RouteInvalid, e.to_string()))?;
        if amount < cost_here {
            return Err((
                R::AmountTooSmall,
                format!("paid {amount}, path costs {cost_here}"),
            ));
        }
        let expect = self
            .topology
            .latency_from(route, prev)
            .ok()
            .and_then(|l| l.checked_mul(2))
            .ok_or((R::RouteInvalid, "latency overflow".into()))?;
        if budget_ms != expect {
            let which = if budget_ms < expect {
                "too small"
            } else {
                "exceeds the route"
            };
            return Err((
                R::BudgetMismatch,
                format!("budget {budget_ms} ms {which}: route allows {expect} ms"),
            ));
        }
        if position.saturating_add(1) == route.nodes.len()
            && crypto::verify(&core.client, core, &header.client_sig).is_err()
        {
            return Err((R::BadRequest, "client signature does not verify".into()));
        }
        let rest_cost = self
            .topology
            .cost_from(route, position, core.body_len)
            .map_err(|e| (R::RouteInvalid, e.to_string()))?;
        let budget_out = self
            .topology
            .latency_from(route, position)
            .ok()
            .and_then(|l| l.checked_mul(2))
            .ok_or((R::RouteInvalid, "latency overflow".into()))?;
        Ok((position, rest_cost, budget_out))
    }

    fn on_ack(
        &mut self,
        channel: ChannelId,
        seq: u64,
        sig: &crypto::Signature,
        _now: Time,
    ) -> Result<(), ProtocolError> {
        let ch = self
            .channels
            .get_mut(&channel)
            .ok_or(ProtocolError::InvalidCall("no such channel".into()))?;
        let memos = ch.rec.acked(seq, sig)?;
        self.write(Write::Acked {
            channel,
            seq,
            sig: *sig,
        });
        for memo in memos {
            if let Memo::Request { request, .. } = memo {
                let Some(p) = self.pending.get_mut(&request) else {
                    continue;
                };
                let Some(d) = p.down.as_mut() else { continue };
                if d.channel != channel || d.acked {
                    continue;
                }
                d.acked = true;
                if p.up.is_none() {
                    self.events.push_back(Event::RequestAcked { request });
                }
                self.write_pending(request);
            }
        }
        Ok(())
    }

    fn on_reject(
        &mut self,
        from: NodeId,
        channel: ChannelId,
        request: RequestId,
        reason: RejectReason,
        refund: SignedUpdate,
        now: Time,
    ) -> Result<(), ProtocolError> {
        let Memo::Refund {
            request: refunded_for,
            amount,
        } = refund.update.memo
        else {
            return Err(ProtocolError::Misaddressed("refund memo"));
        };
        if refunded_for != request {
            return Err(ProtocolError::Misaddressed("refund names another request"));
        }
        let known = self
            .pending
            .get(&request)
            .and_then(|p| p.down.as_ref())
            .is_some_and(|d| d.peer == from && d.resolved.is_none() && d.amount_out <= amount);
        // Money is money: a valid refund is accepted even for a request we do not know.
        self.accept_update(from, channel, &refund)?;
        if !known {
            return Err(ProtocolError::UnknownRequest(request));
        }
        let Some(p) = self.pending.get_mut(&request) else {
            return Ok(());
        };
        if let Some(d) = p.down.as_mut() {
            d.resolved = Some((now, Resolution::Rejected));
            d.finished = true;
            self.timers.remove(&(d.expect_by, Timer::Overdue(request)));
        }
        match p.up.as_ref().map(|u| (u.peer, u.channel, u.amount_in)) {
            None => self.events.push_back(Event::RequestRejected {
                request,
                reason,
                refunded: amount,
            }),
            Some((up_peer, up_channel, amount_in)) => {
                // Pass the failure upstream, refunding everything we were paid.
                if let Some(u) = p.up.as_mut() {
                    u.closed_at = Some(now);
                }
                self.write_pending(request);
                let _refused = self.refuse(
                    up_peer,
                    up_channel,
                    request,
                    amount_in,
                    reason,
                    String::new(),
                );
            }
        }
        self.write_pending(request);
        self.finish_if_done(request);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn on_response(
        &mut self,
        from: NodeId,
        channel: ChannelId,
        request: RequestId,
        response: SignedResponse,
        body: Vec<u8>,
        fee: Option<FeePayment>,
        now: Time,
    ) -> Result<(), ProtocolError> {
        let p = self
            .pending
            .get(&request)
            .filter(|p| p.down.as_ref().is_some_and(|d| d.peer == from))
            .ok_or(ProtocolError::UnknownRequest(request))?;
        if response.body.request != request || response.body.body_hash != Hash::of(&body) {
            return Err(ProtocolError::BadResponse(request));
        }
        crypto::verify(&p.core.server, &response.body, &response.sig)
            .map_err(|_| ProtocolError::BadResponse(request))?;
        if let Some(f) = &fee {
            self.on_fee(from, channel, f, now)?;
        }
        let Some(p) = self.pending.get_mut(&request) else {
            return Ok(());
        };
        let Some(d) = p.down.as_mut() else {
            return Ok(());
        };
        if d.resolved.is_some() {
            self.events.push_back(Event::ResponseDiscarded { request });
            return Ok(());
        }
        d.resolved = Some((now, Resolution::Response));
        let (sent_at, expect_by, fees_received) = (d.sent_at, d.expect_by, d.fees_received);
        self.timers.remove(&(expect_by, Timer::Overdue(request)));
        match p.up.as_ref().map(|u| (u.peer, u.closed_at)) {
            None => self.events.push_back(Event::ResponseDelivered {
                request,
                body,
                latency_ms: now.since(sent_at),
                on_time: now <= expect_by,
                fees_received,
            }),
            Some((_, Some(_))) => self.events.push_back(Event::ResponseDiscarded { request }),
            Some((up_peer, None)) => {
                self.close_upstream(request, now, |fee| Message::Response {
                    request,
                    response,
                    body,
                    fee,
                })?;
                self.events.push_back(Event::ResponseForwarded {
                    request,
                    to: up_peer,
                });
            }
        }
        self.maybe_finish_downstream(request, now);
        self.write_pending(request);
        self.finish_if_done(request);
        Ok(())
    }

    fn on_proof(
        &mut self,
        from: NodeId,
        request: RequestId,
        notice: SignedSeverNotice,
        now: Time,
    ) -> Result<(), ProtocolError> {
        let p = self
            .pending
            .get(&request)
            .filter(|p| p.down.as_ref().is_some_and(|d| d.peer == from))
            .ok_or(ProtocolError::UnknownRequest(request))?;
        self.check_proof(p, &notice)?;
        if p.down.as_ref().is_some_and(|d| d.resolved.is_some()) {
            return Ok(());
        }
        self.apply_severance(&notice, now, None);
        Ok(())
    }

    /// A proof is valid for a request when the notice is signed by an endpoint of an
    /// edge on the route at or after our downstream edge.
    fn check_proof(&self, p: &Pending, notice: &SignedSeverNotice) -> Result<(), ProtocolError> {
        let n = &notice.notice;
        let bad = |detail| ProtocolError::BadProof {
            request: p.id,
            detail,
        };
        let idx = p
            .core
            .route
            .channels
            .iter()
            .position(|c| *c == n.channel)
            .ok_or(bad("severed edge is not on the route"))?;
        if idx < p.position {
            return Err(bad("severed edge is upstream of us"));
        }
        let (x, y) = (
            &p.core.route.nodes[idx],
            &p.core.route.nodes[idx.saturating_add(1)],
        );
        let endpoints_ok = (n.severer == *x && n.peer == *y) || (n.severer == *y && n.peer == *x);
        if !endpoints_ok {
            return Err(bad("severer is not an endpoint of the edge"));
        }
        crypto::verify(&n.severer, n, &notice.sig).map_err(|source| ProtocolError::BadSignature {
            what: "sever notice",
            source,
        })
    }

    /// Accepts a late-fee payment from a downstream peer.
    fn on_fee(
        &mut self,
        from: NodeId,
        channel: ChannelId,
        fee: &FeePayment,
        _now: Time,
    ) -> Result<(), ProtocolError> {
        let bad = |detail| ProtocolError::BadFee { channel, detail };
        let Memo::LateFees { amount, items } = &fee.update.update.memo else {
            return Err(bad("memo is not a late-fee memo"));
        };
        if fee_items_hash(&fee.items)? != *items {
            return Err(bad("items do not match the signed hash"));
        }
        let mut known = Amount::ZERO;
        let mut credits = Vec::new();
        for item in &fee.items {
            let Some(d) = self
                .pending
                .get(&item.request)
                .and_then(|p| p.down.as_ref())
                .filter(|d| d.peer == from)
            else {
                continue;
            };
            let inc = item
                .total
                .checked_sub(d.fees_received)
                .map_err(|_| bad("an item's running total went backwards"))?;
            known = known.checked_add(inc)?;
            credits.push((item.request, inc, item.total));
        }
        if known > *amount {
            return Err(bad("item increments exceed the payment"));
        }
        self.accept_update(from, channel, &fee.update)?;
        for (id, inc, total) in credits {
            if let Some(d) = self.pending.get_mut(&id).and_then(|p| p.down.as_mut()) {
                d.fees_received = total;
                self.events.push_back(Event::LateFeeReceived {
                    request: id,
                    peer: from,
                    amount: inc,
                    total,
                });
            }
            self.write_pending(id);
        }
        Ok(())
    }

    /// A resolved downstream is finished once its fees are settled in full.
    fn maybe_finish_downstream(&mut self, id: RequestId, _now: Time) {
        let tol = self.config.fee_tolerance_ms;
        let Some(p) = self.pending.get(&id) else {
            return;
        };
        let Some(d) = &p.down else { return };
        let Some((resolved_at, _)) = d.resolved else {
            return;
        };
        let Ok(expected) = p.expected_from_downstream(resolved_at, tol) else {
            return;
        };
        if d.fees_received >= expected {
            if let Some(d) = self.pending.get_mut(&id).and_then(|p| p.down.as_mut()) {
                d.finished = true;
            }
        }
    }

    /// The downstream's last chance to settle has passed: record what is missing.
    fn realize_loss(&mut self, id: RequestId, now: Time) {
        let tol = self.config.fee_tolerance_ms;
        let Some(p) = self.pending.get_mut(&id) else {
            return;
        };
        let expected = p.expected_from_downstream(now, tol).unwrap_or_default();
        let Some(d) = p.down.as_mut() else { return };
        if d.finished {
            return;
        }
        d.finished = true;
        let missing = expected.saturating_sub(d.fees_received);
        let (peer, channel) = (d.peer, d.channel);
        if !missing.is_zero() {
            if let Some(ch) = self.channels.get_mut(&channel) {
                ch.ledger.losses.push_back((now, missing));
            }
            self.events.push_back(Event::LossRecorded {
                request: id,
                peer,
                amount: missing,
            });
        }
        self.write_pending(id);
        self.finish_if_done(id);
    }

    #[allow(clippy::too_many_arguments)]
    fn on_sync_received(
        &mut self,
        from: NodeId,
        channel: ChannelId,
        sent_at_ms: u64,
        echo: Option<Echo>,
        fee: Option<FeePayment>,
        proofs: Vec<(RequestId, SignedSeverNotice)>,
        now: Time,
    ) -> Result<(), ProtocolError> {
        if let Some(f) = &fee {
            self.on_fee(from, channel, f, now)?;
        }
        let mut first_err = None;
        for (request, notice) in proofs {
            if let Err(e) = self.on_proof(from, request, notice, now) {
                first_err.get_or_insert(e);
            }
        }
        if let Some(ch) = self.channels.get_mut(&channel) {
            ch.last_peer_sync = Some((sent_at_ms, now));
            if let Some(echo) = echo {
                let rtt = now
                    .ms()
                    .saturating_sub(echo.sent_at_ms)
                    .saturating_sub(echo.held_ms);
                self.events.push_back(Event::LatencyObserved {
                    peer: from,
                    rtt_ms: rtt,
                    promised_rtt_ms: ch.rec.edge.terms.latency_ms.saturating_mul(2),
                });
            }
        }
        // Requests this peer resolved before this sync was sent and still has not paid
        // for: its chance to settle has passed.
        let latency = self
            .channels
            .get(&channel)
            .map(|c| c.rec.edge.terms.latency_ms)
            .unwrap_or_default();
        let sent_at = now.minus(latency);
        let downs: Vec<RequestId> = self.ids_down(channel);
        for id in downs {
            self.maybe_finish_downstream(id, now);
            let stale = self
                .pending
                .get(&id)
                .and_then(|p| p.down.as_ref())
                .is_some_and(|d| {
                    !d.finished && d.resolved.is_some_and(|(t, _)| t.minus(latency) <= sent_at)
                });
            if stale {
                self.realize_loss(id, now);
            } else {
                self.finish_if_done(id);
            }
        }
        self.evaluate_heuristic(channel, now)?;
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Paper §5.4: sever an edge whose earnings minus losses (realized, plus late fees
    /// currently owed and unpaid) over the window is negative.
    fn evaluate_heuristic(&mut self, channel: ChannelId, now: Time) -> Result<(), ProtocolError> {
        let Some(h) = self.config.heuristic else {
            return Ok(());
        };
        let tol = self.config.fee_tolerance_ms;
        let mut outstanding = Amount::ZERO;
        for id in self.by_down.get(&channel).into_iter().flatten() {
            if let Some(p) = self.pending.get(id) {
                if let Some(d) = &p.down {
                    let exp = p.expected_from_downstream(now, tol)?;
                    outstanding = outstanding.checked_add(exp.saturating_sub(d.fees_received))?;
                }
            }
        }
        let Some(ch) = self.channels.get_mut(&channel) else {
            return Ok(());
        };
        if ch.rec.severed.is_some() {
            return Ok(());
        }
        ch.ledger.prune(now.minus(h.window_ms));
        let earned = Amount::checked_sum(ch.ledger.earnings.iter().map(|(_, a)| *a))?;
        let lost = Amount::checked_sum(ch.ledger.losses.iter().map(|(_, a)| *a))?
            .checked_add(outstanding)?;
        if lost > earned {
            self.sever_inner(channel, SeverReason::UnpaidFees, now, None)?;
        }
        Ok(())
    }

    fn on_reestablish(
        &mut self,
        from: NodeId,
        channel: ChannelId,
        received_seq: u64,
        sent_seq: u64,
        awaiting: &[RequestId],
    ) -> Result<(), ProtocolError> {
        let ch = self
            .channels
            .get_mut(&channel)
            .ok_or(ProtocolError::UnknownPeer(from))?;
        let again = ch.rec.retransmit_after(received_seq)?;
        // Re-ack our latest incoming update: the ack may have been lost.
        let reack = match &ch.rec.incoming.latest {
            Some(latest) if sent_seq >= ch.rec.incoming.seq => Some(latest.update.clone()),
            _ => None,
        };
        let closings: Vec<Message> = awaiting
            .iter()
            .filter_map(|id| ch.closings.get(id).cloned())
            .collect();
        // Held frames that carry updates or acks are superseded by the retransmission
        // and the re-ack; stale heartbeats are dropped. The rest still matter.
        let held: Vec<Message> = std::mem::take(&mut ch.held)
            .into_iter()
            .filter(|m| {
                !m.carries_update() && !matches!(m, Message::Ack { .. } | Message::Sync { .. })
            })
            .collect();
        ch.ready = true;
        for m in again {
            self.send(from, m);
        }
        if let Some(update) = reack {
            let sig = self
                .key
                .sign(&crate::types::AckOf(&update))
                .map_err(|source| ProtocolError::BadSignature {
                    what: "own ack",
                    source,
                })?;
            self.send(
                from,
                Message::Ack {
                    channel,
                    seq: update.seq,
                    sig,
                },
            );
        }
        for m in closings.into_iter().chain(held) {
            self.send(from, m);
        }
        Ok(())
    }

    // ----------------------------------------------------------------- timers

    /// Runs every timer due at or before `now`.
    pub fn handle_timeout(&mut self, now: Time) {
        while let Some(&(t, timer)) = self.timers.first() {
            if t > now {
                break;
            }
            self.timers.remove(&(t, timer));
            match timer {
                Timer::Sync(channel) => self.on_sync_due(channel, t),
                Timer::Overdue(id) => self.on_overdue(id, t),
                Timer::SeverAt(id) => self.sever_downstream_of(id, t, None),
            }
        }
    }

    fn on_overdue(&mut self, id: RequestId, now: Time) {
        let Some(d) = self.pending.get(&id).and_then(|p| p.down.as_ref()) else {
            return;
        };
        if d.resolved.is_some() {
            return;
        }
        match self.config.sever_policy {
            SeverPolicy::Immediate => self.sever_downstream_of(id, now, None),
            SeverPolicy::WaitMs(ms) => {
                self.timers.insert((now.plus(ms), Timer::SeverAt(id)));
            }
            SeverPolicy::WaitSyncs(_) | SeverPolicy::Never => {}
        }
    }

    fn sever_downstream_of(&mut self, id: RequestId, now: Time, in_sync_of: Option<ChannelId>) {
        let Some(d) = self.pending.get(&id).and_then(|p| p.down.as_ref()) else {
            return;
        };
        if d.resolved.is_some() {
            return;
        }
        let channel = d.channel;
        // Severing our own edge cannot fail except for an unknown channel, which the
        // pending record rules out.
        let _ = self.sever_inner(channel, SeverReason::Unresponsive, now, in_sync_of);
    }

    fn on_sync_due(&mut self, channel: ChannelId, now: Time) {
        let Some(ch) = self.channels.get_mut(&channel) else {
            return;
        };
        if ch.rec.severed.is_some() {
            return;
        }
        let peer = ch.rec.peer;
        let terms = ch.rec.edge.terms.clone();
        let next = Time(terms.next_sync_after(now.ms()));
        ch.next_sync = next;
        self.timers.insert((next, Timer::Sync(channel)));
        // Liveness.
        let silence = terms
            .sync_interval_ms
            .saturating_mul(u64::from(self.config.silence_syncs))
            .saturating_add(terms.latency_ms.saturating_mul(2));
        let heard = ch.last_heard.unwrap_or(Time::ZERO);
        if now.since(heard) > silence && !ch.silent_reported && now.ms() > silence {
            ch.silent_reported = true;
            self.events.push_back(Event::PeerSilent { peer });
        }
        let echo = ch.last_peer_sync.map(|(sent_at_ms, at)| Echo {
            sent_at_ms,
            held_ms: now.since(at),
        });

        // 1. Overdue downstreams waiting on syncs of this edge.
        if let SeverPolicy::WaitSyncs(n) = self.config.sever_policy {
            let mut sever: Vec<RequestId> = Vec::new();
            let candidates: Vec<RequestId> = self
                .by_up
                .get(&channel)
                .into_iter()
                .flatten()
                .chain(self.by_down.get(&channel).into_iter().flatten())
                .copied()
                .collect();
            for id in candidates {
                let Some(p) = self.pending.get_mut(&id) else {
                    continue;
                };
                let counts_here = match &p.up {
                    Some(u) => u.channel == channel && u.closed_at.is_none(),
                    None => p.down.as_ref().is_some_and(|d| d.channel == channel),
                };
                let Some(d) = p.down.as_mut() else { continue };
                if !counts_here || d.resolved.is_some() || now < d.expect_by {
                    continue;
                }
                d.overdue_syncs = d.overdue_syncs.saturating_add(1);
                if d.overdue_syncs >= n {
                    sever.push(id);
                }
            }
            for id in sever {
                self.sever_downstream_of(id, now, Some(channel));
            }
        }
        if self
            .channels
            .get(&channel)
            .is_none_or(|c| c.rec.severed.is_some())
        {
            return;
        }

        // 2. Proofs held for this sync close their obligations now.
        let ups: Vec<RequestId> = self.ids_up(channel);
        let mut proofs = Vec::new();
        for id in &ups {
            if let Some(u) = self.pending.get_mut(id).and_then(|p| p.up.as_mut()) {
                if let Some(n) = u.queued_proof.take() {
                    u.closed_at = Some(now);
                    proofs.push((*id, n));
                }
            }
        }
        // 3. Late fees owed to the peer up to now, carried by the sync itself.
        let sync = |fee| Message::Sync {
            channel,
            sent_at_ms: now.ms(),
            echo,
            fee,
            proofs: proofs.clone(),
        };
        let message = match self.with_fees(channel, &ups, now, sync) {
            Ok(m) => m,
            // Cannot pay (insolvent): send the heartbeat and proofs regardless; the
            // shortfall is the peer's to judge.
            Err(_) => Message::Sync {
                channel,
                sent_at_ms: now.ms(),
                echo,
                fee: None,
                proofs: proofs.clone(),
            },
        };
        for (id, n) in &proofs {
            self.note_proof_forwarded(*id, n.notice.channel);
            let copy = Message::Proof {
                request: *id,
                notice: n.clone(),
                fee: None,
            };
            self.remember_closing(channel, *id, &copy, now);
        }
        for (id, _) in &proofs {
            self.write_pending(*id);
        }
        self.send(peer, message);
        for id in ups {
            self.finish_if_done(id);
        }
    }
}
