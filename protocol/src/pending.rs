//! The state of one request in flight, as client, relay or server: the record the
//! engine persists for it (like [`crate::channel::ChannelRecord`] for a channel) and
//! the fee arithmetic both ends of each of its edges agree on.

use serde::{Deserialize, Serialize};

use crate::amount::Amount;
use crate::crypto::NodeId;
use crate::error::ProtocolError;
use crate::time::Time;
use crate::types::{ChannelId, RequestCore, RequestId, SignedSeverNotice};

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
    /// Syncs counted since it went overdue (for [`crate::config::SeverPolicy::WaitSyncs`]).
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
    /// The request body, kept by the server until it answers: a server restarted
    /// between acknowledging a request and answering it hands the body to its handler
    /// again instead of leaving a paid request unanswered (relays forward at once, and
    /// their forwarded request is kept with its payment).
    pub served_body: Option<Vec<u8>>,
}

impl Pending {
    pub(crate) fn rate(&self) -> Amount {
        self.core.late_fee_rate
    }

    /// Late fee owed upstream at `t`: `rate * (min(t, closed_at) - send_deadline)`.
    pub(crate) fn owed_upstream(&self, t: Time) -> Result<Amount, ProtocolError> {
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
    pub(crate) fn expected_from_downstream(
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

    pub(crate) fn done(&self) -> bool {
        let up_done = self.up.as_ref().is_none_or(|u| u.closed_at.is_some());
        let down_done = self.down.as_ref().is_none_or(|d| d.finished);
        up_done && down_done
    }
}
