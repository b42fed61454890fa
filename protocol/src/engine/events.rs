//! What the engine reports: frames, chain actions, application events.

use crate::amount::Amount;
use crate::crypto::NodeId;
use crate::messages::{Message, RejectReason};
use crate::time::Time;
use crate::types::{ChannelId, EdgeInfo, RequestId, SeverReason, SignedSeverNotice, SignedUpdate};

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
    /// Submit this severing notice to the contract: we severed the edge.
    Sever(SignedSeverNotice),
    /// A severing notice someone else signed reached us (from the severer, or as the
    /// proof that answered a request). Its severer should submit it; if the edge is
    /// not severed on chain within a bound, submit it ourselves (anyone may), so that
    /// a node cannot answer with a notice it never makes final and keep the edge open.
    Watch(SignedSeverNotice),
    /// An adversarial close of our channel holds an older state for what the peer paid
    /// us than we do: submit ours (the contract's `challenge`) before the period ends.
    Challenge {
        /// The closing channel.
        channel: ChannelId,
        /// The latest update the peer signed to us.
        updates: Vec<SignedUpdate>,
    },
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
    /// A close of the channel began on chain (`close_proposed`, `close_started`) or its
    /// states were challenged (`close_challenged`). `paid_ab` and `paid_ba` are the
    /// cumulative totals the contract holds for each direction of the edge (`a` is
    /// the proposing endpoint of [`EdgeInfo`]).
    CloseOnChain {
        /// The channel.
        channel: ChannelId,
        /// Whether it is an adversarial close in its challenge period (otherwise a
        /// cooperative close awaiting the other endpoint's confirmation).
        adversarial: bool,
        /// What the contract holds as paid from `a` to `b`.
        paid_ab: Amount,
        /// What the contract holds as paid from `b` to `a`.
        paid_ba: Amount,
    },
    /// The channel was paid out on chain (`channel_closed`).
    ChannelClosed(ChannelId),
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
    /// A request arrived for us as server; answer it with [`Engine::respond`](crate::Engine::respond).
    RequestReceived {
        /// The request.
        request: RequestId,
        /// The verified client.
        client: NodeId,
        /// The body.
        body: Vec<u8>,
        /// The largest response the client bought (a longer one is refused).
        response_limit: u64,
        /// When the response must leave.
        send_deadline: Time,
    },
    /// We answered a request as server.
    ResponseSent {
        /// The request.
        request: RequestId,
    },
    /// A server signed a response longer than its request's `response_limit`; we
    /// refused it. `core` (signed by the client) and `response` (signed by the server)
    /// are the evidence.
    ServerDeviated {
        /// The request.
        request: RequestId,
        /// The server.
        server: NodeId,
        /// The client-signed request core, with its `response_limit`.
        core: crate::types::RequestCore,
        /// The server-signed response, with its `body_len`.
        response: crate::types::SignedResponse,
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
        /// The response body: a slice of the frame it arrived in, shared, not copied.
        body: bytes::Bytes,
        /// The server's signed statement of it (its signature verified): what a layer
        /// above keeps as evidence if the body turns out wrong for what was asked.
        response: crate::types::SignedResponse,
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
    /// A close of one of our channels began on chain; the channel no longer carries
    /// requests or payments.
    CloseSeen {
        /// The channel.
        channel: ChannelId,
        /// The other endpoint.
        peer: NodeId,
        /// An adversarial close (else a cooperative one awaiting confirmation).
        adversarial: bool,
        /// Whether we asked to challenge it with newer states.
        challenged: bool,
    },
    /// One of our channels was paid out on chain.
    ChannelClosed {
        /// The channel.
        channel: ChannelId,
        /// The other endpoint.
        peer: NodeId,
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

/// An [`Event`] as a timeline line: its kind (`request_sent`, `sever_initiated`, ...)
/// and the fields a reader compares. The simulator's timeline and a real node's event
/// log (`por devnet run` sets one beside the other) are both made of these.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Described {
    /// What happened, in snake case.
    pub kind: &'static str,
    /// The other node involved.
    pub peer: Option<NodeId>,
    /// The request.
    pub request: Option<RequestId>,
    /// An amount (yoctoNEAR).
    pub amount: Option<Amount>,
    /// A running total (late fees).
    pub total: Option<Amount>,
    /// A latency or budget in ms.
    pub ms: Option<u64>,
    /// A deadline.
    pub deadline: Option<Time>,
    /// Free-form detail.
    pub detail: Option<String>,
}

impl Event {
    /// This event as a timeline line; `None` for what a timeline leaves out (round
    /// trips measured at syncs).
    pub fn describe(&self) -> Option<Described> {
        let mut d = Described::default();
        match self {
            Event::RequestSent {
                request,
                first_hop,
                amount,
                deadline,
            } => {
                d.kind = "request_sent";
                d.request = Some(*request);
                d.peer = Some(*first_hop);
                d.amount = Some(*amount);
                d.deadline = Some(*deadline);
            }
            Event::RequestAcked { request } => {
                d.kind = "request_acked";
                d.request = Some(*request);
            }
            Event::RequestForwarded {
                request,
                downstream,
                budget_ms,
                send_deadline,
                kept,
                ..
            } => {
                d.kind = "request_forwarded";
                d.request = Some(*request);
                d.peer = Some(*downstream);
                d.amount = Some(*kept);
                d.ms = Some(*budget_ms);
                d.deadline = Some(*send_deadline);
            }
            Event::RequestReceived {
                request,
                client,
                send_deadline,
                ..
            } => {
                d.kind = "request_received";
                d.request = Some(*request);
                d.peer = Some(*client);
                d.deadline = Some(*send_deadline);
            }
            Event::ResponseSent { request } => {
                d.kind = "response_sent";
                d.request = Some(*request);
            }
            Event::ResponseForwarded { request, to } => {
                d.kind = "response_forwarded";
                d.request = Some(*request);
                d.peer = Some(*to);
            }
            Event::ResponseDelivered {
                request,
                latency_ms,
                on_time,
                fees_received,
                ..
            } => {
                d.kind = "response_delivered";
                d.request = Some(*request);
                d.ms = Some(*latency_ms);
                d.total = Some(*fees_received);
                d.detail = Some(if *on_time { "on time" } else { "late" }.into());
            }
            Event::RequestRejected {
                request,
                reason,
                refunded,
            } => {
                d.kind = "request_rejected";
                d.request = Some(*request);
                d.amount = Some(*refunded);
                d.detail = Some(format!("{reason:?}"));
            }
            Event::LateFeePaid {
                request,
                peer,
                amount,
                total,
                owed_since,
            } => {
                d.kind = "late_fee_paid";
                d.request = Some(*request);
                d.peer = Some(*peer);
                d.amount = Some(*amount);
                d.total = Some(*total);
                d.deadline = Some(*owed_since);
            }
            Event::LateFeeReceived {
                request,
                peer,
                amount,
                total,
            } => {
                d.kind = "late_fee_received";
                d.request = Some(*request);
                d.peer = Some(*peer);
                d.amount = Some(*amount);
                d.total = Some(*total);
            }
            Event::SeverInitiated {
                channel,
                peer,
                reason,
            } => {
                d.kind = "sever_initiated";
                d.peer = Some(*peer);
                d.detail = Some(format!("{channel} {reason:?}"));
            }
            Event::CloseSeen {
                channel,
                peer,
                adversarial,
                challenged,
            } => {
                d.kind = "close_seen";
                d.peer = Some(*peer);
                d.detail = Some(format!(
                    "{channel} adversarial={adversarial} challenged={challenged}"
                ));
            }
            Event::ChannelClosed { channel, peer } => {
                d.kind = "channel_closed";
                d.peer = Some(*peer);
                d.detail = Some(channel.to_string());
            }
            Event::SeverProofForwarded {
                request,
                to,
                channel,
            } => {
                d.kind = "sever_proof_forwarded";
                d.request = Some(*request);
                d.peer = Some(*to);
                d.detail = Some(channel.to_string());
            }
            Event::SeverProofDelivered {
                request,
                channel,
                severer,
                latency_ms,
                fees_received,
            } => {
                d.kind = "sever_proof_delivered";
                d.request = Some(*request);
                d.peer = Some(*severer);
                d.ms = Some(*latency_ms);
                d.total = Some(*fees_received);
                d.detail = Some(channel.to_string());
            }
            Event::LossRecorded {
                request,
                peer,
                amount,
            } => {
                d.kind = "loss_recorded";
                d.request = Some(*request);
                d.peer = Some(*peer);
                d.amount = Some(*amount);
            }
            Event::ResponseDiscarded { request } => {
                d.kind = "response_discarded";
                d.request = Some(*request);
            }
            Event::ServerDeviated {
                request, server, ..
            } => {
                d.kind = "server_deviated";
                d.request = Some(*request);
                d.peer = Some(*server);
            }
            Event::PeerSilent { peer } => {
                d.kind = "peer_silent";
                d.peer = Some(*peer);
            }
            Event::LatencyObserved { .. } => return None,
        }
        Some(d)
    }
}
