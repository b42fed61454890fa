//! Connections and frames from peers.

use super::*;

impl Engine {
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
        ch.rec.accept(su)?;
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

    pub(super) fn refuse(
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

    pub(super) fn on_request(
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
            self.pending.insert(id, Box::new(p));
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
            self.pending.insert(id, Box::new(p));
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
    pub(super) fn validate_request(
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
            && header.client_batch().is_none_or(|batch| {
                crypto::verify_cached(&core.client, &batch, &header.client_sig).is_err()
            })
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

    pub(super) fn on_reject(
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
    pub(super) fn on_response(
        &mut self,
        from: NodeId,
        channel: ChannelId,
        request: RequestId,
        response: SignedResponse,
        body: Vec<u8>,
        fee: Option<FeePayment>,
        now: Time,
    ) -> Result<(), ProtocolError> {
        let p = self.forwarded_to(from, request)?;
        if response.body.request != request || response.body.body_hash != Hash::of(&body) {
            return Err(ProtocolError::BadResponse(request));
        }
        let batch = response
            .batch()
            .ok_or(ProtocolError::BadResponse(request))?;
        crypto::verify_cached(&p.core.server, &batch, &response.sig)
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

    /// The request we sent `from` (as our downstream), or `UnknownRequest`.
    fn forwarded_to(&self, from: NodeId, request: RequestId) -> Result<&Pending, ProtocolError> {
        self.pending
            .get(&request)
            .filter(|p| p.down.as_ref().is_some_and(|d| d.peer == from))
            .map(|p| &**p)
            .ok_or(ProtocolError::UnknownRequest(request))
    }

    pub(super) fn on_proof(
        &mut self,
        from: NodeId,
        request: RequestId,
        notice: SignedSeverNotice,
        now: Time,
    ) -> Result<(), ProtocolError> {
        let p = self.forwarded_to(from, request)?;
        self.check_proof(p, &notice)?;
        if p.down.as_ref().is_some_and(|d| d.resolved.is_some()) {
            return Ok(());
        }
        self.apply_severance(&notice, now, None);
        Ok(())
    }

    /// A proof is valid for a request when the notice is signed by an endpoint of an
    /// edge on the route at or after our downstream edge.
    pub(super) fn check_proof(
        &self,
        p: &Pending,
        notice: &SignedSeverNotice,
    ) -> Result<(), ProtocolError> {
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
    pub(super) fn on_fee(
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
    pub(super) fn maybe_finish_downstream(&mut self, id: RequestId, _now: Time) {
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
    pub(super) fn realize_loss(&mut self, id: RequestId, now: Time) {
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
    pub(super) fn on_sync_received(
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
    pub(super) fn evaluate_heuristic(
        &mut self,
        channel: ChannelId,
        now: Time,
    ) -> Result<(), ProtocolError> {
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

    pub(super) fn on_reestablish(
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
            .filter_map(|id| ch.closings.get(id).map(|m| (**m).clone()))
            .collect();
        let held = std::mem::take(&mut ch.held);
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
}
