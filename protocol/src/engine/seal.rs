//! Signing what the engine makes: channel updates carrying payments, batch-signed
//! with responses and request cores under one signature per poll; acknowledgements
//! of durable peer updates; and the closing messages kept for resending.

use std::collections::{BTreeMap, BTreeSet};

use crate::crypto::{self, Hash, NodeId};
use crate::error::ProtocolError;
use crate::merkle::MerkleProof;
use crate::messages::Message;
use crate::store::Write;
use crate::time::Time;
use crate::types::{
    AckOf, BatchRoot, ChannelId, Memo, RequestId, ResponseBody, SignedResponse, SignedUpdate,
};

use super::{Engine, Event, Transmit};

/// A value made by the engine and signed at the next poll of its outputs.
#[derive(Clone, Debug)]
pub(super) enum Unsealed {
    /// Our channel update with this seq (on the entry's channel).
    Update(u64),
    /// As client, the core of this request.
    Core(RequestId),
    /// As server, this response.
    Response(ResponseBody),
}

/// At most this many closing messages are kept per channel for resending.
pub(super) const MAX_CLOSINGS: usize = 65_536;

impl Engine {
    /// Signs the next update on `channel` for `memo`, carried by the message `make`
    /// builds; records it for retransmission and queues it for persistence.
    pub(super) fn pay_with(
        &mut self,
        channel: ChannelId,
        memo: Memo,
        make: impl FnOnce(SignedUpdate) -> Message,
    ) -> Result<Message, ProtocolError> {
        let ch = self
            .channels
            .get_mut(&channel)
            .ok_or(ProtocolError::InvalidCall(format!("{channel} is not ours")))?;
        let signed = ch.rec.pay_unsealed(memo, make)?;
        let leaf = signed
            .update
            .leaf()
            .map_err(|_| ProtocolError::BadSignature {
                what: "own update",
                source: crypto::CryptoError::Encoding,
            })?;
        self.unsealed
            .push((Unsealed::Update(signed.update.seq), leaf, channel));
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

    /// Replaces the message kept (and about to be persisted) for retransmitting our
    /// update `seq` on `channel` with `carrier`, which must carry the same update.
    pub(super) fn keep_for_retransmission(
        &mut self,
        channel: ChannelId,
        seq: u64,
        carrier: Message,
    ) {
        if let Some((_, m)) = self
            .channels
            .get_mut(&channel)
            .and_then(|ch| ch.rec.outgoing.unacked.get_mut(&seq))
        {
            *m = carrier.clone();
        }
        for w in self.writes.iter_mut().rev() {
            if let Write::Outgoing {
                channel: c,
                update,
                message,
            } = w
            {
                if *c == channel && update.update.seq == seq {
                    **message = carrier;
                    return;
                }
            }
        }
    }

    /// Signs everything made since the last call — our channel updates and, as server,
    /// our responses — with one signature over the Merkle root of the batch, and fills
    /// the signature and each value's proof in wherever the value is held: writes not
    /// yet handed out, queued and held frames, unacknowledged updates kept for
    /// retransmission, and closing messages kept for resending. It runs before any
    /// write or frame leaves the engine, so nothing unsigned is ever persisted or
    /// sent. A burst of requests handled between two polls costs the node one
    /// signature, and each peer one verification.
    pub(super) fn seal(&mut self) {
        if self.unsealed.is_empty() {
            return;
        }
        let made = std::mem::take(&mut self.unsealed);
        let leaves: Vec<Hash> = made.iter().map(|(_, leaf, _)| *leaf).collect();
        let mut signed: Vec<(MerkleProof, crypto::Signature)> = Vec::with_capacity(leaves.len());
        for chunk in leaves.chunks(crate::merkle::MAX_LEAVES as usize) {
            let Some((root, proofs)) = crate::merkle::build(chunk) else {
                continue;
            };
            let batch = BatchRoot {
                root,
                leaves: proofs.first().map_or(0, |p| p.leaves),
            };
            // Encoding a root and a count cannot fail; were it to, the values would
            // stay unsigned and peers would refuse them.
            let Ok(sig) = self.key.sign(&self.deployment, &batch) else {
                continue;
            };
            signed.extend(proofs.into_iter().map(|p| (p, sig)));
        }
        if signed.len() != leaves.len() {
            return;
        }
        let mut updates = BTreeMap::new();
        let mut cores = BTreeMap::new();
        let mut responses = BTreeMap::new();
        for ((kind, _, channel), s) in made.iter().zip(&signed) {
            match kind {
                Unsealed::Update(seq) => {
                    updates.insert((*channel, *seq), s);
                }
                Unsealed::Core(id) => {
                    cores.insert(*id, s);
                }
                Unsealed::Response(body) => {
                    let (proof, sig) = s.clone();
                    let response = SignedResponse {
                        body: body.clone(),
                        proof,
                        sig,
                    };
                    responses.insert(body.request, response);
                }
            }
        }
        let fill = |su: &mut SignedUpdate| {
            if !su.is_sealed() {
                if let Some((proof, sig)) = updates.get(&(su.update.channel, su.update.seq)) {
                    su.proof = proof.clone();
                    su.sig = *sig;
                }
            }
        };
        let patch = |m: &mut Message| {
            m.for_each_update_mut(fill);
            match m {
                Message::Request(r) if r.header.client_proof.leaves == 0 => {
                    if let Some((proof, sig)) = cores.get(&r.header.id) {
                        r.header.client_proof = proof.clone();
                        r.header.client_sig = *sig;
                    }
                }
                Message::Response { response, .. } if response.proof.leaves == 0 => {
                    if let Some(s) = responses.get(&response.body.request) {
                        *response = s.clone();
                    }
                }
                _ => {}
            }
        };
        for w in &mut self.writes {
            match w {
                Write::Outgoing {
                    update, message, ..
                } => {
                    fill(update);
                    patch(message);
                }
                Write::Closing { message, .. } => patch(message),
                _ => {}
            }
        }
        self.outbox
            .iter_mut()
            .for_each(|(_, t)| patch(&mut t.message));
        // Kept copies: only those of what was just made, on its channels.
        let channels: BTreeSet<ChannelId> = made.iter().map(|(_, _, c)| *c).collect();
        for channel in channels {
            let Some(ch) = self.channels.get_mut(&channel) else {
                continue;
            };
            ch.held.iter_mut().for_each(patch);
            for (kind, _, c) in &made {
                if *c != channel {
                    continue;
                }
                match kind {
                    Unsealed::Update(seq) => {
                        if let Some((_, m)) = ch.rec.outgoing.unacked.get_mut(seq) {
                            patch(m);
                        }
                    }
                    Unsealed::Response(body) => {
                        if let Some(m) = ch.closings.get_mut(&body.request) {
                            patch(m);
                        }
                    }
                    // A request core travels in the message of its payment update.
                    Unsealed::Core(_) => {}
                }
            }
        }
    }

    /// Accepts a peer-signed update into the channel and owes the peer an ack of it,
    /// signed once the state is durable (see [`Engine::poll_transmit`]).
    pub(super) fn accept_update(
        &mut self,
        from: NodeId,
        channel: ChannelId,
        su: &SignedUpdate,
    ) -> Result<(), ProtocolError> {
        let ch = self
            .channels
            .get_mut(&channel)
            .ok_or(ProtocolError::UnknownPeer(from))?;
        ch.rec.accept(&self.deployment, su)?;
        self.write(Write::Incoming {
            channel,
            update: Box::new(su.clone()),
        });
        let needs = self.write_seq;
        if let Some(ch) = self.channels.get_mut(&channel) {
            ch.acks_due.push_back((needs, su.update.clone()));
            self.ack_channels.insert(channel);
        }
        Ok(())
    }

    /// One ack of the latest durable update of some channel that owes its peer one.
    pub(super) fn next_ack(&mut self) -> Option<Transmit> {
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
            let Ok(sig) = self.key.sign(&self.deployment, &AckOf(&update)) else {
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

    pub(super) fn on_ack(
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
        let memos = ch.rec.acked(&self.deployment, seq, sig)?;
        self.write(Write::Acked {
            channel,
            seq,
            sig: *sig,
        });
        for memo in memos {
            if let Memo::Request { request, .. } = memo {
                let Some(p) = self.requests.get_mut(&request) else {
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

    /// Keeps a fee-less copy of a closing message for resending after a reconnect.
    pub(super) fn remember_closing(
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
        if !self.channels.contains_key(&channel) {
            return;
        }
        // Durable with the close it belongs to (see `Write::Closing`); the copy is
        // sealed with the response signature like every write not yet handed out.
        self.write(Write::Closing {
            channel,
            request: id,
            message: Box::new(copy.clone()),
        });
        self.keep_closing(channel, id, copy, now);
    }

    /// Keeps a closing message in memory and prunes the channel's kept closings by
    /// age, count and bytes, recording each pruned one.
    pub(super) fn keep_closing(
        &mut self,
        channel: ChannelId,
        id: RequestId,
        copy: Message,
        now: Time,
    ) {
        let retention = self.config.closing_retention_ms;
        let max_bytes = self.config.closing_retention_bytes;
        let mut dropped = Vec::new();
        if let Some(ch) = self.channels.get_mut(&channel) {
            ch.closing_bytes = ch.closing_bytes.saturating_add(closing_size(&copy));
            if let Some(old) = ch.closings.insert(id, Box::new(copy)) {
                ch.closing_bytes = ch.closing_bytes.saturating_sub(closing_size(&old));
            }
            ch.closing_order.push_back((now, id));
            while let Some(&(t, old)) = ch.closing_order.front() {
                if now.since(t) <= retention
                    && ch.closing_order.len() <= MAX_CLOSINGS
                    && ch.closing_bytes <= max_bytes
                {
                    break;
                }
                ch.closing_order.pop_front();
                if let Some(m) = ch.closings.remove(&old) {
                    ch.closing_bytes = ch.closing_bytes.saturating_sub(closing_size(&m));
                    dropped.push(old);
                }
            }
        }
        for request in dropped {
            self.write(Write::ClosingDropped { request });
        }
    }

    /// Forgets every closing kept for `channel` (it was severed: nothing more goes
    /// over it), recording each.
    pub(super) fn drop_closings(&mut self, channel: ChannelId) {
        let Some(ch) = self.channels.get_mut(&channel) else {
            return;
        };
        let dropped: Vec<RequestId> = std::mem::take(&mut ch.closings).into_keys().collect();
        ch.closing_order.clear();
        ch.closing_bytes = 0;
        for request in dropped {
            self.write(Write::ClosingDropped { request });
        }
    }
}

/// What a kept closing message counts against `closing_retention_bytes`.
fn closing_size(m: &Message) -> u64 {
    match m {
        Message::Response { body, .. } => (body.len() as u64).max(256),
        _ => 256,
    }
}
