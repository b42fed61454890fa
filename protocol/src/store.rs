//! What the engine asks to persist, and an in-memory store that applies it.
//!
//! The engine emits [`Write`]s; the driver makes them durable (the node batches them
//! into one group commit) and then reports them with `Engine::writes_durable`. Only
//! then are the frames that depend on them released. [`Store::apply`] is the one
//! definition of how writes fold into state: the node's database uses it for its
//! records, and the simulator uses it to check crash recovery.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::amount::Amount;
use crate::channel::{ChannelRecord, CloseStage};
use crate::crypto::Signature;
use crate::messages::Message;
use crate::pending::Pending;
use crate::types::{ChannelId, RequestId, SignedSeverNotice, SignedUpdate};

/// One durable change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Write {
    /// A channel was opened (full record).
    Channel(Box<ChannelRecord>),
    /// We signed an update; the message carrying it is kept for retransmission.
    Outgoing {
        /// The channel.
        channel: ChannelId,
        /// Our signed update.
        update: Box<SignedUpdate>,
        /// The message that carries it.
        message: Box<Message>,
    },
    /// The peer acknowledged our updates up to `seq`.
    Acked {
        /// The channel.
        channel: ChannelId,
        /// Highest acknowledged seq.
        seq: u64,
        /// The peer's countersignature.
        sig: Signature,
    },
    /// We accepted a peer-signed update.
    Incoming {
        /// The channel.
        channel: ChannelId,
        /// The peer's signed update.
        update: Box<SignedUpdate>,
    },
    /// The channel was severed.
    Severed {
        /// The channel.
        channel: ChannelId,
        /// The notice.
        notice: Box<SignedSeverNotice>,
    },
    /// The chain took the channel's close this far (never backwards).
    Close {
        /// The channel.
        channel: ChannelId,
        /// The stage reached.
        stage: CloseStage,
    },
    /// A request's state (inserted or replaced).
    Pending(Box<Pending>),
    /// A request is finished here.
    PendingDone(RequestId),
    /// Late fees paid upstream: each request's new running total
    /// ([`crate::pending::Upstream::fee_paid`]). One write for a whole payment instead
    /// of a record per request: a sync pays every late request of its edge, and
    /// rewriting each one's full record at every sync is what made a path that fell
    /// behind unable to catch up.
    FeesPaid(Vec<(RequestId, Amount)>),
    /// Late fees received from downstream: each request's new running total
    /// ([`crate::pending::Downstream::fees_received`]), one write per payment.
    FeesReceived(Vec<(RequestId, Amount)>),
    /// A closing message (response or proof, without its fee) sent upstream on
    /// `channel`, kept to resend to a peer that reconnects still awaiting it. Durable
    /// because the request it closes is: a node that crashed after committing a close
    /// and before its frame left must still be able to deliver it.
    Closing {
        /// The upstream channel.
        channel: ChannelId,
        /// The request closed.
        request: RequestId,
        /// The closing message.
        message: Box<Message>,
    },
    /// A kept closing message was pruned (by age, count or bytes, or its channel was
    /// severed).
    ClosingDropped {
        /// The request.
        request: RequestId,
    },
    /// Every nonce our requests have taken, or will take before the next such write,
    /// is at most this. A restored engine numbers its requests from past it, so a
    /// request never gets the id of one before a restart, whatever the clock reads.
    NonceFloor(u64),
}

/// Why a write could not be applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The write names a channel the store has no record of.
    #[error("write for unknown channel {0}")]
    UnknownChannel(ChannelId),
    /// The write would move a channel's state backwards.
    #[error("write would move {channel} backwards (seq {have} -> {got})")]
    Backwards {
        /// The channel.
        channel: ChannelId,
        /// Seq held.
        have: u64,
        /// Seq offered.
        got: u64,
    },
}

/// Channel records and pending requests, as rebuilt from writes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Store {
    /// Channel records by id.
    pub channels: BTreeMap<ChannelId, ChannelRecord>,
    /// Requests in flight by id.
    pub pending: BTreeMap<RequestId, Pending>,
    /// Closing messages kept for resending, by request: the upstream channel and the
    /// message.
    pub closings: BTreeMap<RequestId, (ChannelId, Message)>,
    /// The highest [`Write::NonceFloor`] (0 if none).
    #[serde(default)]
    pub nonce_floor: u64,
}

impl Store {
    /// Folds one write into the store. Refuses writes that go backwards.
    pub fn apply(&mut self, w: &Write) -> Result<(), StoreError> {
        self.apply_owned(w.clone())
    }

    /// [`Store::apply`], moving what the write carries into the store instead of
    /// copying it.
    pub fn apply_owned(&mut self, w: Write) -> Result<(), StoreError> {
        match w {
            Write::Channel(rec) => {
                self.channels.entry(rec.id()).or_insert(*rec);
            }
            Write::Outgoing {
                channel,
                update,
                message,
            } => {
                let rec = self.channel(channel)?;
                let u = &update.update;
                if u.seq <= rec.outgoing.seq {
                    return Err(StoreError::Backwards {
                        channel,
                        have: rec.outgoing.seq,
                        got: u.seq,
                    });
                }
                rec.outgoing.seq = u.seq;
                rec.outgoing.cumulative = u.cumulative;
                let seq = u.seq;
                rec.outgoing.unacked.insert(seq, (update.update, *message));
            }
            Write::Acked { channel, seq, sig } => {
                let rec = self.channel(channel)?;
                if seq > rec.outgoing.acked_seq {
                    rec.outgoing.acked_seq = seq;
                    rec.outgoing.last_ack = Some(sig);
                    let rest = rec.outgoing.unacked.split_off(&seq.saturating_add(1));
                    rec.outgoing.unacked = rest;
                }
            }
            Write::Incoming { channel, update } => {
                let rec = self.channel(channel)?;
                let u = &update.update;
                if u.seq <= rec.incoming.seq {
                    return Err(StoreError::Backwards {
                        channel,
                        have: rec.incoming.seq,
                        got: u.seq,
                    });
                }
                rec.incoming.seq = u.seq;
                rec.incoming.cumulative = u.cumulative;
                rec.incoming.latest = Some(*update);
            }
            Write::Severed { channel, notice } => {
                let rec = self.channel(channel)?;
                rec.severed.get_or_insert(*notice);
            }
            Write::Close { channel, stage } => {
                let rec = self.channel(channel)?;
                rec.close = rec.close.max(stage);
            }
            Write::Pending(p) => {
                self.pending.insert(p.id, *p);
            }
            Write::PendingDone(id) => {
                self.pending.remove(&id);
            }
            // Running totals only go up; a request already finished here has no
            // record left to raise.
            Write::FeesPaid(totals) => {
                for (id, total) in totals {
                    if let Some(up) = self.pending.get_mut(&id).and_then(|p| p.up.as_mut()) {
                        up.fee_paid = up.fee_paid.max(total);
                    }
                }
            }
            Write::FeesReceived(totals) => {
                for (id, total) in totals {
                    if let Some(d) = self.pending.get_mut(&id).and_then(|p| p.down.as_mut()) {
                        d.fees_received = d.fees_received.max(total);
                    }
                }
            }
            Write::Closing {
                channel,
                request,
                message,
            } => {
                self.channel(channel)?;
                self.closings.insert(request, (channel, *message));
            }
            Write::ClosingDropped { request } => {
                self.closings.remove(&request);
            }
            Write::NonceFloor(floor) => {
                self.nonce_floor = self.nonce_floor.max(floor);
            }
        }
        Ok(())
    }

    fn channel(&mut self, id: ChannelId) -> Result<&mut ChannelRecord, StoreError> {
        self.channels
            .get_mut(&id)
            .ok_or(StoreError::UnknownChannel(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{Hash, NodeId};
    use crate::pending::{Downstream, Upstream};
    use crate::time::Time;
    use crate::types::{RequestCore, Route};

    fn pending(id: u8) -> Pending {
        let (a, b) = (NodeId([1; 32]), NodeId([2; 32]));
        let up = Upstream {
            peer: a,
            channel: ChannelId(1),
            received_at: Time(0),
            send_deadline: Time(10),
            amount_in: Amount(100),
            fee_paid: Amount::ZERO,
            closed_at: None,
            queued_proof: None,
        };
        let down = Downstream {
            peer: b,
            channel: ChannelId(2),
            sent_at: Time(1),
            expect_by: Time(9),
            amount_out: Amount(90),
            acked: true,
            fees_received: Amount::ZERO,
            resolved: None,
            overdue_syncs: 0,
            finished: false,
        };
        Pending {
            id: RequestId([id; 16]),
            core: RequestCore {
                client: a,
                server: b,
                nonce: 1,
                body_hash: Hash::of_body(b""),
                body_len: 0,
                response_limit: 0,
                late_fee_rate: Amount(1),
                route: Route {
                    nodes: vec![a, NodeId([3; 32]), b],
                    channels: vec![ChannelId(1), ChannelId(2)],
                },
            },
            position: 1,
            up: Some(up),
            down: Some(down),
            served_body: None,
        }
    }

    #[test]
    fn fee_totals_fold_into_their_requests_and_never_go_down() {
        let mut store = Store::default();
        store.apply(&Write::Pending(Box::new(pending(1)))).unwrap();
        store.apply(&Write::Pending(Box::new(pending(2)))).unwrap();
        let (one, two, gone) = (RequestId([1; 16]), RequestId([2; 16]), RequestId([9; 16]));
        store
            .apply(&Write::FeesPaid(vec![(one, Amount(5)), (gone, Amount(7))]))
            .unwrap();
        store
            .apply(&Write::FeesReceived(vec![(two, Amount(4))]))
            .unwrap();
        // A stale total (an older payment replayed) leaves the higher one.
        store
            .apply(&Write::FeesPaid(vec![(one, Amount(3))]))
            .unwrap();
        let fee_paid = |s: &Store, id| s.pending[&id].up.as_ref().unwrap().fee_paid;
        let received = |s: &Store, id| s.pending[&id].down.as_ref().unwrap().fees_received;
        assert_eq!(fee_paid(&store, one), Amount(5));
        assert_eq!(fee_paid(&store, two), Amount::ZERO);
        assert_eq!(received(&store, two), Amount(4));
        assert_eq!(received(&store, one), Amount::ZERO);
        // A finished request is not brought back by a total for it.
        assert!(!store.pending.contains_key(&gone));
    }
}
