//! Inputs from peers and the chain: decoding a frame, checking who sent it, and
//! dispatching each message to the part of the engine that owns it.

use crate::channel::ChannelRecord;
use crate::crypto::{self, NodeId};
use crate::error::ProtocolError;
use crate::messages::Message;
use crate::store::Write;
use crate::time::Time;
use crate::types::ChannelId;

use crate::messages::decode_frame;

use super::{ChainEvent, Engine, Timer};

impl Engine {
    /// Decodes and handles one frame from `from` (an authenticated neighbour).
    pub fn handle_frame(
        &mut self,
        from: NodeId,
        frame: &[u8],
        now: Time,
    ) -> Result<(), ProtocolError> {
        let message = decode_frame(frame)?;
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
            } => {
                // The fee first, whatever becomes of the response (a request we no
                // longer hold, a deviation): a valid payment is money, as with proofs
                // and refunds, and refusing it would leave a gap in the payer's
                // sequence that fails every update after it.
                if let Some(f) = &fee {
                    self.on_fee(from, channel, f, now)?;
                }
                self.on_response(from, request, response, body, now)
            }
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
            Message::LateFee { channel: c, fee } => {
                self.check_channel(c, channel, from)?;
                self.on_fee(from, channel, &fee, now)
            }
            Message::Severed { notice } => {
                if notice.notice.channel != channel || notice.notice.severer != from {
                    return Err(ProtocolError::Misaddressed("sever notice"));
                }
                crypto::verify(&self.deployment, &from, &notice.notice, &notice.sig).map_err(
                    |source| ProtocolError::BadSignature {
                        what: "sever notice",
                        source,
                    },
                )?;
                self.watch(&notice);
                self.apply_severance(&notice, now, None);
                Ok(())
            }
        }
    }

    pub(super) fn check_channel(
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
                if crypto::verify(
                    &self.deployment,
                    &notice.notice.severer,
                    &notice.notice,
                    &notice.sig,
                )
                .is_err()
                {
                    return;
                }
                self.apply_severance(&notice, now, None);
            }
            ChainEvent::CloseOnChain {
                channel,
                adversarial,
                paid_ab,
                paid_ba,
            } => self.on_close_on_chain(channel, adversarial, paid_ab, paid_ba, now),
            ChainEvent::ChannelClosed(channel) => self.on_channel_closed(channel, now),
        }
    }
}
