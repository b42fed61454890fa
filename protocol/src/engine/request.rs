//! A request's life, top to bottom: the client sends it and pays the first hop
//! (`send_request`, `forward`); each hop admits it against the route and its payment
//! and forwards it on (`on_request`, `validate_request`); the server answers
//! (`respond`); the response travels back, each hop closing its upstream obligation
//! (`on_response`, `close_upstream`); or a hop refuses it and the refund travels back
//! (`on_reject`, `refuse`). Proofs of severed edges end a request in `sever.rs`; late
//! fees accrue in `fees.rs`.

use bytes::Bytes;

use crate::amount::Amount;
use crate::crypto::{self, Hash, NodeId};
use crate::error::ProtocolError;
use crate::merkle::MerkleProof;
use crate::messages::{Message, RejectReason, RequestMsg, BULK_BODY, MAX_AWAITING};
use crate::pending::{Downstream, Pending, Resolution, Upstream};
use crate::time::Time;
use crate::types::{
    ChannelId, FeePayment, Memo, RequestCore, RequestHeader, RequestId, ResponseBody, Route,
    SignedResponse, SignedUpdate,
};
use crate::wire::MAX_BODY_LEN;

use super::seal::Unsealed;
use super::{Engine, Event, Timer};

impl Engine {
    /// Sends a request to the last node of `route` as client, buying a response of up
    /// to `response_limit` bytes and paying `C(P, m)` on the body plus that limit to
    /// the first hop. Returns the request id; the outcome arrives as events.
    pub fn send_request(
        &mut self,
        route: Route,
        body: Vec<u8>,
        response_limit: u64,
        late_fee_rate: Amount,
        now: Time,
    ) -> Result<RequestId, ProtocolError> {
        if body.len() > MAX_BODY_LEN {
            return Err(ProtocolError::InvalidCall(format!(
                "body of {} bytes exceeds {MAX_BODY_LEN}",
                body.len()
            )));
        }
        if response_limit > MAX_BODY_LEN as u64 {
            return Err(ProtocolError::InvalidCall(format!(
                "response limit of {response_limit} bytes exceeds {MAX_BODY_LEN}"
            )));
        }
        if route.nodes.first() != Some(&self.id) {
            return Err(ProtocolError::InvalidCall(
                "route does not start here".into(),
            ));
        }
        if let Some(delay_ms) = self.overloaded {
            return Err(ProtocolError::Overloaded { delay_ms });
        }
        let priced = (body.len() as u64).saturating_add(response_limit);
        let quote = self.topology.quote(&route, priced)?;
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
        self.room_on(channel)?;
        let nonce = self.take_nonce()?;
        let core = RequestCore {
            client: self.id,
            server: *route.nodes.last().unwrap_or(&self.id),
            nonce,
            body_hash: Hash::of_body(&body),
            body_len: body.len() as u64,
            response_limit,
            late_fee_rate,
            route,
        };
        let id = core.id()?;
        if self.requests.contains(&id) {
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
                served_body: None,
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

    /// Refuses (`ChannelBusy`) past the requests we keep in flight over one channel:
    /// the lesser of what we take from one peer and what a `Reestablish` may name, so
    /// that a peer away for a while (we go on sending; the updates are retransmitted
    /// when it is back) never gets a `Reestablish` it must refuse.
    fn room_on(&self, channel: ChannelId) -> Result<(), ProtocolError> {
        let max = self.config.per_peer_bound().min(MAX_AWAITING);
        let count = self.requests.load_down(channel);
        if count >= max {
            return Err(ProtocolError::ChannelBusy {
                channel,
                count,
                max,
            });
        }
        Ok(())
    }

    /// Pays `next` over `channel` and sends the request on; registers `p` as pending
    /// (if there is room on `channel`: [`Engine::room_on`]).
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
        self.room_on(channel)?;
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
        self.requests.insert(p);
        self.write_pending(id);
        self.send(next, msg);
        Ok(())
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
        // Our answer must leave in time to cross the edge it came over: its share of
        // the budget is its round trip for these bytes.
        let rt_in = self
            .channels
            .get(&channel)
            .and_then(|c| c.rec.edge.terms.round_trip_ms(header.core.priced_bytes()))
            .unwrap_or_default();
        let send_deadline = now.plus(budget_ms.saturating_sub(rt_in));
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
        let is_server = position.saturating_add(1) == header.core.route.nodes.len();
        let p = Pending {
            id,
            core: header.core.clone(),
            position,
            up: Some(up),
            down: None,
            served_body: is_server.then(|| body.clone()),
        };
        if is_server {
            self.requests.insert(p);
            self.write_pending(id);
            self.events.push_back(Event::RequestReceived {
                request: id,
                client: header.core.client,
                body,
                response_limit: header.core.response_limit,
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
            self.requests.insert(p);
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
                // Cannot pay downstream (insolvent) or too many in flight over
                // it already: refund upstream.
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
        // Only the unprofitable-edge heuristic reads the ledgers.
        if let Some(h) = self.config.heuristic {
            for c in [channel, down_channel] {
                if let Some(ch) = self.channels.get_mut(&c) {
                    ch.ledger.earned(now, kept, h.window_ms);
                }
            }
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
        if body.len() as u64 != core.body_len || Hash::of_body(body) != core.body_hash {
            return Err((R::BadRequest, "body does not match its hash".into()));
        }
        if core.response_limit > MAX_BODY_LEN as u64 {
            return Err((
                R::BadRequest,
                format!(
                    "response limit {} exceeds {MAX_BODY_LEN}",
                    core.response_limit
                ),
            ));
        }
        let bytes = core.priced_bytes();
        if self.requests.contains(&request) {
            return Err((R::Duplicate, "request already in flight here".into()));
        }
        if let Some(delay) = self.overloaded {
            return Err((
                R::Overloaded,
                format!("work here waits {delay} ms (standing): shedding new requests"),
            ));
        }
        if self.requests.len() >= self.config.max_in_flight {
            return Err((R::Overloaded, "in-flight limit reached".into()));
        }
        let (count, held) = self.requests.load_up(channel);
        if count >= self.config.per_peer_bound() {
            return Err((
                R::Overloaded,
                format!(
                    "{count} requests of this peer in flight (at most {})",
                    self.config.per_peer_bound()
                ),
            ));
        }
        if held.saturating_add(bytes) > self.config.max_in_flight_bytes_per_peer {
            return Err((
                R::Overloaded,
                format!(
                    "{held} bytes bought by this peer's requests in flight (at most {})",
                    self.config.max_in_flight_bytes_per_peer
                ),
            ));
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
            .cost_from(route, prev, bytes)
            .map_err(|e| (R::RouteInvalid, e.to_string()))?;
        if amount < cost_here {
            return Err((
                R::AmountTooSmall,
                format!("paid {amount}, path costs {cost_here}"),
            ));
        }
        let expect = self
            .topology
            .budget_from(route, prev, bytes)
            .map_err(|e| (R::RouteInvalid, e.to_string()))?;
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
                crypto::verify_cached(&self.deployment, &core.client, &batch, &header.client_sig)
                    .is_err()
            })
        {
            return Err((R::BadRequest, "client signature does not verify".into()));
        }
        let rest_cost = self
            .topology
            .cost_from(route, position, bytes)
            .map_err(|e| (R::RouteInvalid, e.to_string()))?;
        let budget_out = self
            .topology
            .budget_from(route, position, bytes)
            .map_err(|e| (R::RouteInvalid, e.to_string()))?;
        Ok((position, rest_cost, budget_out))
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
            .requests
            .get(&request)
            .ok_or(ProtocolError::UnknownRequest(request))?;
        if p.core.server != self.id || p.up.as_ref().is_none_or(|u| u.closed_at.is_some()) {
            return Err(ProtocolError::InvalidCall(
                "not an open request for us as server".into(),
            ));
        }
        if body.len() as u64 > p.core.response_limit {
            return Err(ProtocolError::InvalidCall(format!(
                "response of {} bytes exceeds the {} bytes the client bought",
                body.len(),
                p.core.response_limit
            )));
        }
        let rb = ResponseBody {
            request,
            body_hash: Hash::of_body(&body),
            body_len: body.len() as u64,
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
            body: body.into(),
            fee,
        })?;
        self.unsealed.push((Unsealed::Response(rb), leaf, channel));
        self.events.push_back(Event::ResponseSent { request });
        Ok(())
    }

    /// A response from downstream (its fee, if any, was taken already).
    pub(super) fn on_response(
        &mut self,
        from: NodeId,
        request: RequestId,
        response: SignedResponse,
        body: Bytes,
        now: Time,
    ) -> Result<(), ProtocolError> {
        let p = self.forwarded_to(from, request)?;
        if response.body.request != request
            || response.body.body_len != body.len() as u64
            || response.body.body_hash != Hash::of_body(&body)
        {
            return Err(ProtocolError::BadResponse(request));
        }
        let batch = response
            .batch()
            .ok_or(ProtocolError::BadResponse(request))?;
        crypto::verify_cached(&self.deployment, &p.core.server, &batch, &response.sig)
            .map_err(|_| ProtocolError::BadResponse(request))?;
        if response.body.body_len > p.core.response_limit {
            // The server signed more than the client bought: refused here, the first
            // hop to see it, and kept as signed evidence (the client's signed core
            // and the server's signed response together prove it).
            let (server, limit) = (p.core.server, p.core.response_limit);
            self.events.push_back(Event::ServerDeviated {
                request,
                server,
                core: p.core.clone(),
                response: response.clone(),
            });
            return Err(ProtocolError::OversizedResponse {
                request,
                len: response.body.body_len,
                limit,
            });
        }
        let Some(p) = self.requests.get_mut(&request) else {
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
                // A slice of the frame it arrived in (a short body is copied out of it).
                body,
                response,
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
    pub(super) fn forwarded_to(
        &self,
        from: NodeId,
        request: RequestId,
    ) -> Result<&Pending, ProtocolError> {
        self.requests
            .get(&request)
            .filter(|p| p.down.as_ref().is_some_and(|d| d.peer == from))
            .ok_or(ProtocolError::UnknownRequest(request))
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
            .requests
            .get_mut(&id)
            .ok_or(ProtocolError::UnknownRequest(id))?;
        let up = p.up.as_mut().ok_or(ProtocolError::UnknownRequest(id))?;
        if up.closed_at.is_some() {
            return Ok(());
        }
        up.closed_at = Some(now);
        up.queued_proof = None;
        p.served_body = None;
        let (peer, channel) = (up.peer, up.channel);
        // We relay it (we are not its server), so its signature is not ours.
        let relayed = p.down.is_some();
        let message = self.with_fees(channel, &[id], now, make)?;
        self.remember_closing(channel, id, &message, now);
        self.write_pending(id);
        // A response we relay with no fee of ours commits us to nothing: it goes at
        // once, not after our record of it is durable (see `send_now`).
        let at_once = relayed && matches!(message, Message::Response { fee: None, .. });
        // A large response goes on the bulk lane, which must carry no update: its
        // final fee goes ahead of it on the control lane, as the `LateFee` it is kept
        // as for retransmission anyway (see `Lane`).
        let message = match message {
            Message::Response {
                request,
                response,
                body,
                fee: Some(fee),
            } if body.len() >= BULK_BODY => {
                self.send(peer, Message::LateFee { channel, fee });
                Message::Response {
                    request,
                    response,
                    body,
                    fee: None,
                }
            }
            other => other,
        };
        if at_once {
            self.send_now(peer, message);
        } else {
            self.send(peer, message);
        }
        self.finish_if_done(id);
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
            .requests
            .get(&request)
            .and_then(|p| p.down.as_ref())
            .is_some_and(|d| d.peer == from && d.resolved.is_none() && d.amount_out <= amount);
        // Money is money: a valid refund is accepted even for a request we do not know.
        self.accept_update(from, channel, &refund)?;
        if !known {
            return Err(ProtocolError::UnknownRequest(request));
        }
        let Some(p) = self.requests.get_mut(&request) else {
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
}
