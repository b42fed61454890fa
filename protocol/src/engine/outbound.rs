//! Local API calls and what they send: requests, responses, severance, closing
//! messages and late fees.

use super::*;

impl Engine {
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
        let leaf = core.leaf()?;
        // Signed at the next poll of our outputs, with the payment that carries it.
        let header = RequestHeader {
            core: core.clone(),
            client_proof: crate::types::unsealed_proof(),
            client_sig: crypto::Signature([0; 64]),
            id,
            budget_ms: quote.rtt_ms,
        };
        self.unsealed.push((Unsealed::Core(id), leaf, channel));
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
    pub(super) fn forward(
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
        self.pending.insert(id, Box::new(p));
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
        let leaf = rb.leaf().map_err(|_| ProtocolError::BadSignature {
            what: "own response",
            source: crypto::CryptoError::Encoding,
        })?;
        // Signed when the engine's outputs are next polled, together with every other
        // response made by then (see `seal_responses`).
        let response = SignedResponse {
            body: rb.clone(),
            proof: MerkleProof {
                leaves: 0,
                index: 0,
                siblings: Vec::new(),
            },
            sig: crypto::Signature([0; 64]),
        };
        let channel = p.up.as_ref().map(|u| u.channel).unwrap_or_default();
        self.close_upstream(request, now, |fee| Message::Response {
            request,
            response,
            body,
            fee,
        })?;
        self.unsealed.push((Unsealed::Response(rb), leaf, channel));
        self.events.push_back(Event::ResponseSent { request });
        Ok(())
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
            let Ok(sig) = self.key.sign(&batch) else {
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
            if let Write::Outgoing {
                update, message, ..
            } = w
            {
                fill(update);
                patch(message);
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

    pub(super) fn sever_inner(
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
    pub(super) fn apply_severance(
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

    pub(super) fn resolve_with_proof(
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

    pub(super) fn note_proof_forwarded(&mut self, id: RequestId, channel: ChannelId) {
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
    pub(super) fn close_upstream(
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
        let retention = self.config.closing_retention_ms;
        if let Some(ch) = self.channels.get_mut(&channel) {
            ch.closings.insert(id, Box::new(copy));
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

    /// Builds the message `make` makes, with one late-fee payment attached covering
    /// what `ids` owe on `channel` up to `now` (none when nothing is owed or we
    /// withhold), and records the fees as paid.
    pub(super) fn with_fees(
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
}
