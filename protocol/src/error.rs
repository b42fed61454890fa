//! The engine's error type.

use crate::amount::{Amount, AmountOverflow};
use crate::crypto::{CryptoError, NodeId};
use crate::messages::RejectReason;
use crate::topology::RouteError;
use crate::types::{ChannelId, RequestId};
use crate::wire::WireError;

/// Everything the engine refuses. Every variant is a refusal of one input: the engine's
/// state is unchanged by the refused part, and [`ProtocolError::is_fatal`] says whether
/// the driver should drop the peer that sent it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The frame could not be decoded (malformed, oversized, wrong version).
    #[error("bad frame: {0}")]
    Wire(#[from] WireError),
    /// A signature did not verify.
    #[error("bad signature on {what}: {source}")]
    BadSignature {
        /// What was signed.
        what: &'static str,
        /// The underlying failure.
        source: CryptoError,
    },
    /// A message came from a node we share no channel with.
    #[error("unknown peer {0}")]
    UnknownPeer(NodeId),
    /// A message named a channel that is not ours with this peer.
    #[error("channel {channel} is not an edge between us and {peer}")]
    NotOurChannel {
        /// The named channel.
        channel: ChannelId,
        /// The sender.
        peer: NodeId,
    },
    /// The channel has been severed; nothing more moves on it.
    #[error("channel {0} is severed")]
    ChannelSevered(ChannelId),
    /// An update's sequence number is not newer than the one we hold.
    #[error("stale state on {channel}: have seq {have}, got {got}")]
    StaleState {
        /// The channel.
        channel: ChannelId,
        /// Our latest seq in that direction.
        have: u64,
        /// The offered seq.
        got: u64,
    },
    /// An update skips sequence numbers.
    #[error("sequence gap on {channel}: expected {expected}, got {got}")]
    SequenceGap {
        /// The channel.
        channel: ChannelId,
        /// The next seq we expect.
        expected: u64,
        /// The offered seq.
        got: u64,
    },
    /// An update's cumulative amount is not the previous one plus its memo's amount.
    #[error("cumulative amount on {channel} is {got}, expected {expected}")]
    CumulativeMismatch {
        /// The channel.
        channel: ChannelId,
        /// Previous cumulative + memo amount.
        expected: Amount,
        /// What the update says.
        got: Amount,
    },
    /// The payer would owe more than its deposit plus what it has received.
    #[error("payer on {channel} cannot cover cumulative {cumulative} (capacity {capacity})")]
    Insolvent {
        /// The channel.
        channel: ChannelId,
        /// The resulting cumulative.
        cumulative: Amount,
        /// Deposit + received.
        capacity: Amount,
    },
    /// An update names the wrong payer/payee or channel for where it arrived.
    #[error("update addressed wrongly: {0}")]
    Misaddressed(&'static str),
    /// A request arrived with a valid payment but was refused (and refunded).
    #[error("request {request} refused ({reason:?}): {detail}")]
    RequestRefused {
        /// The request.
        request: RequestId,
        /// The reason sent to the payer.
        reason: RejectReason,
        /// Human-readable detail for logs.
        detail: String,
    },
    /// A message referred to a request we do not track with this peer.
    #[error("unknown request {0}")]
    UnknownRequest(RequestId),
    /// An ack names an update we have no record of.
    #[error("ack for unknown update seq {seq} on {channel}")]
    UnknownAck {
        /// The channel.
        channel: ChannelId,
        /// The acked seq.
        seq: u64,
    },
    /// An ack for an update that was already acknowledged (replay).
    #[error("replayed ack for seq {seq} on {channel}")]
    ReplayedAck {
        /// The channel.
        channel: ChannelId,
        /// The acked seq.
        seq: u64,
    },
    /// A response whose body, request id or signer does not match.
    #[error("forged or mismatched response for {0}")]
    BadResponse(RequestId),
    /// A validly signed response longer than the request's `response_limit`: the
    /// server deviated (see `Event::ServerDeviated`).
    #[error("response for {request} is {len} bytes, over the {limit} bytes bought")]
    OversizedResponse {
        /// The request.
        request: RequestId,
        /// The signed length.
        len: u64,
        /// The limit the client bought.
        limit: u64,
    },
    /// A proof of severance that does not prove anything about this request.
    #[error("invalid sever proof for {request}: {detail}")]
    BadProof {
        /// The request.
        request: RequestId,
        /// What is wrong.
        detail: &'static str,
    },
    /// A late-fee payment whose items do not add up or go backwards.
    #[error("invalid late-fee payment on {channel}: {detail}")]
    BadFee {
        /// The channel.
        channel: ChannelId,
        /// What is wrong.
        detail: &'static str,
    },
    /// A reestablish message claims state we never signed.
    #[error("peer claims seq {claimed} on {channel} but we signed only up to {ours}")]
    ImpossibleReestablish {
        /// The channel.
        channel: ChannelId,
        /// What the peer claims to hold.
        claimed: u64,
        /// What we signed.
        ours: u64,
    },
    /// A second `Reestablish` on one connection (each resends every kept closing: a
    /// peer repeating it would make us send the same bytes again and again).
    #[error("repeated reestablish on {channel} within one connection")]
    RepeatedReestablish {
        /// The channel.
        channel: ChannelId,
    },
    /// A `Reestablish` names one request twice among those it awaits.
    #[error("reestablish on {channel} awaits request {request} more than once")]
    DuplicateAwaiting {
        /// The channel.
        channel: ChannelId,
        /// The repeated request.
        request: RequestId,
    },
    /// A `Reestablish` awaits more requests than any honest node keeps in flight over
    /// one channel (`messages::MAX_AWAITING`).
    #[error(
        "reestablish on {channel} awaits {count} requests, over the {max} a reestablish may name"
    )]
    TooManyAwaiting {
        /// The channel.
        channel: ChannelId,
        /// How many it named.
        count: usize,
        /// The bound (`messages::MAX_AWAITING`).
        max: usize,
    },
    /// We already have as many requests in flight over this channel as we keep there
    /// (the lesser of `max_in_flight_per_peer` and `messages::MAX_AWAITING`): the
    /// request is not sent (a relay refuses it upstream as `Overloaded`, refunded).
    #[error("{count} requests in flight over {channel} already (at most {max}): not sent")]
    ChannelBusy {
        /// The channel.
        channel: ChannelId,
        /// Requests in flight over it.
        count: usize,
        /// The bound.
        max: usize,
    },
    /// This node is shedding load ([`crate::Engine::set_overloaded`]): its driver
    /// measured a standing delay past its target, and new requests are refused until
    /// it drains.
    #[error("overloaded: work here waits {delay_ms} ms (standing), new requests are refused until it drains")]
    Overloaded {
        /// The standing delay the driver measured, in ms.
        delay_ms: u64,
    },
    /// A local API call was invalid (bad route, unknown request, body too large ...).
    #[error("invalid call: {0}")]
    InvalidCall(String),
    /// A route failed validation.
    #[error("route: {0}")]
    Route(#[from] RouteError),
    /// Amount arithmetic overflowed.
    #[error("amount overflow")]
    Overflow,
}

impl From<AmountOverflow> for ProtocolError {
    fn from(_: AmountOverflow) -> Self {
        ProtocolError::Overflow
    }
}

impl ProtocolError {
    /// Whether the peer that caused this should be disconnected.
    ///
    /// Forgeries, gaps, insolvency and undecodable frames are fatal: the peer is broken
    /// or hostile. Stale states, replays and refused requests are not: they are refused
    /// and the peer keeps being served.
    pub fn is_fatal(&self) -> bool {
        !matches!(
            self,
            ProtocolError::StaleState { .. }
                | ProtocolError::ReplayedAck { .. }
                | ProtocolError::RequestRefused { .. }
                | ProtocolError::UnknownRequest(_)
                | ProtocolError::ChannelSevered(_)
                | ProtocolError::InvalidCall(_)
                | ProtocolError::ChannelBusy { .. }
                | ProtocolError::Overloaded { .. }
        )
    }
}
