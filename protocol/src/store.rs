//! What the engine asks to persist, and an in-memory store that applies it.
//!
//! The engine emits [`Write`]s; the driver makes them durable (the node batches them
//! into one group commit) and then reports them with `Engine::writes_durable`. Only
//! then are the frames that depend on them released. [`Store::apply`] is the one
//! definition of how writes fold into state: the node's database uses it for its
//! records, and the simulator uses it to check crash recovery.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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
        }
        Ok(())
    }

    fn channel(&mut self, id: ChannelId) -> Result<&mut ChannelRecord, StoreError> {
        self.channels
            .get_mut(&id)
            .ok_or(StoreError::UnknownChannel(id))
    }
}
