//! Liveness of each edge: the periodic syncs (heartbeat, echo for latency, late fees
//! and queued proofs), the unprofitable-edge heuristic (paper §5.4), and
//! reestablishing a channel after a disconnect or restart.

use crate::amount::Amount;
use crate::config::SeverPolicy;
use crate::crypto::NodeId;
use crate::error::ProtocolError;
use crate::messages::{Echo, Message, MAX_AWAITING, MAX_SYNC_PROOFS};
use crate::time::Time;
use crate::types::{AckOf, ChannelId, FeePayment, RequestId, SeverReason, SignedSeverNotice};

use super::{Engine, Event, Timer, Transmit};

impl Engine {
    /// The connection to `peer` is down: hold frames for it until it reconnects and
    /// the channel is reestablished.
    ///
    /// Frames for it still waiting in the outbox (for their writes to become durable)
    /// were meant for the connection that dropped: they are held, or dropped where
    /// the reestablishment supersedes them, like frames made while it is away. Sent on
    /// the next connection ahead of its `Reestablish`, an update would arrive past a
    /// gap left by the lost connection, and an old `Reestablish` would be the second
    /// on the new one.
    pub fn peer_disconnected(&mut self, peer: NodeId, _now: Time) {
        let Some(ch) = self
            .by_peer
            .get(&peer)
            .and_then(|c| self.channels.get_mut(c))
        else {
            return;
        };
        ch.ready = false;
        ch.reestablished = false;
        let mut waiting = self.early.iter().chain(self.outbox.iter().map(|(_, t)| t));
        if waiting.all(|t| t.to != peer) {
            return;
        }
        let mut held = Vec::new();
        let mut keep = |t: &Transmit| {
            if t.to != peer {
                return true;
            }
            if !ch.supersedes(&t.message) {
                held.push(t.message.clone());
            }
            false
        };
        self.early.retain(|t| keep(t));
        self.outbox.retain(|(_, t)| keep(t));
        held.append(&mut ch.held);
        ch.held = held;
    }

    /// A (re)connection to `peer` is up: tell it what we hold and what we still await,
    /// so that it retransmits the rest.
    pub fn peer_connected(&mut self, peer: NodeId, now: Time) {
        let Some(&channel) = self.by_peer.get(&peer) else {
            return;
        };
        let awaiting: Vec<RequestId> = self
            .requests
            .down_of(channel)
            .filter(|id| {
                self.requests
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
            ch.reestablished = false;
            let msg = Message::Reestablish {
                channel,
                received_seq: ch.rec.incoming.seq,
                sent_seq: ch.rec.outgoing.seq,
                awaiting,
            };
            self.send(peer, msg);
        }
    }

    pub(super) fn on_reestablish(
        &mut self,
        from: NodeId,
        channel: ChannelId,
        received_seq: u64,
        sent_seq: u64,
        awaiting: &[RequestId],
    ) -> Result<(), ProtocolError> {
        let max = MAX_AWAITING;
        let ch = self
            .channels
            .get_mut(&channel)
            .ok_or(ProtocolError::UnknownPeer(from))?;
        // Each reestablish resends what the peer awaits: bound it to one per
        // connection, one mention per request, and the most requests an honest node
        // keeps in flight over a channel. Not to our `max_in_flight_per_peer`: while
        // the connection was down the peer may have sent more than we will take, and
        // our refusals of the rest are among what it awaits (held for it here).
        if ch.reestablished {
            return Err(ProtocolError::RepeatedReestablish { channel });
        }
        if awaiting.len() > max {
            return Err(ProtocolError::TooManyAwaiting {
                channel,
                count: awaiting.len(),
                max,
            });
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(request) = awaiting.iter().find(|id| !seen.insert(**id)) {
            return Err(ProtocolError::DuplicateAwaiting {
                channel,
                request: *request,
            });
        }
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
        ch.reestablished = true;
        for m in again {
            self.send(from, m);
        }
        if let Some(update) = reack {
            let sig = self
                .key
                .sign(&self.deployment, &AckOf(&update))
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

    pub(super) fn on_sync_due(&mut self, channel: ChannelId, now: Time) {
        let Some(ch) = self.channels.get_mut(&channel) else {
            return;
        };
        if ch.rec.severed.is_some() {
            return;
        }
        let peer = ch.rec.peer;
        let terms = ch.rec.edge.terms.clone();
        let next = Time(terms.next_sync_after(now.ms()));
        ch.next_sync = next;
        self.timers.insert((next, Timer::Sync(channel)));
        // Liveness.
        let silence = terms
            .sync_interval_ms
            .saturating_mul(u64::from(self.config.silence_syncs))
            .saturating_add(terms.latency_ms.saturating_mul(2));
        let heard = ch.last_heard.unwrap_or(Time::ZERO);
        if now.since(heard) > silence && !ch.silent_reported && now.ms() > silence {
            ch.silent_reported = true;
            self.events.push_back(Event::PeerSilent { peer });
        }
        let echo = ch.last_peer_sync.map(|(sent_at_ms, at)| Echo {
            sent_at_ms,
            held_ms: now.since(at),
        });

        // 1. Overdue downstreams waiting on syncs of this edge.
        if let SeverPolicy::WaitSyncs(n) = self.config.sever_policy {
            let mut sever: Vec<RequestId> = Vec::new();
            let candidates: Vec<RequestId> = self
                .requests
                .up_of(channel)
                .chain(self.requests.down_of(channel))
                .copied()
                .collect();
            for id in candidates {
                let Some(p) = self.requests.get_mut(&id) else {
                    continue;
                };
                let counts_here = match &p.up {
                    Some(u) => u.channel == channel && u.closed_at.is_none(),
                    None => p.down.as_ref().is_some_and(|d| d.channel == channel),
                };
                let Some(d) = p.down.as_mut() else { continue };
                if !counts_here || d.resolved.is_some() || now < d.expect_by {
                    continue;
                }
                d.overdue_syncs = d.overdue_syncs.saturating_add(1);
                if d.overdue_syncs >= n {
                    sever.push(id);
                }
            }
            for id in sever {
                self.sever_downstream_of(id, now, Some(channel));
            }
        }
        if self
            .channels
            .get(&channel)
            .is_none_or(|c| c.rec.severed.is_some())
        {
            return;
        }

        // 2. Proofs held for this sync close their obligations now.
        let ups: Vec<RequestId> = self.requests.ids_up(channel);
        let mut proofs = Vec::new();
        for id in &ups {
            if let Some(u) = self.requests.get_mut(id).and_then(|p| p.up.as_mut()) {
                if let Some(n) = u.queued_proof.take() {
                    u.closed_at = Some(now);
                    proofs.push((*id, n));
                }
            }
        }
        // A sync carries at most MAX_SYNC_PROOFS of them; the rest follow it, each on
        // its own, in the same order the sync's would be handled (its fee first).
        let rest = proofs.split_off(proofs.len().min(MAX_SYNC_PROOFS));
        // 3. Late fees owed to the peer up to now, carried by the sync itself.
        let sync = |fee| Message::Sync {
            channel,
            sent_at_ms: now.ms(),
            echo,
            fee,
            proofs: proofs.clone(),
        };
        let message = match self.with_fees(channel, &ups, now, sync) {
            Ok(m) => m,
            // Cannot pay (insolvent): send the heartbeat and proofs regardless; the
            // shortfall is the peer's to judge.
            Err(_) => Message::Sync {
                channel,
                sent_at_ms: now.ms(),
                echo,
                fee: None,
                proofs: proofs.clone(),
            },
        };
        for (id, n) in proofs.iter().chain(&rest) {
            self.note_proof_forwarded(*id, n.notice.channel);
            let copy = Message::Proof {
                request: *id,
                notice: n.clone(),
                fee: None,
            };
            self.remember_closing(channel, *id, &copy, now);
        }
        for (id, _) in proofs.iter().chain(&rest) {
            self.write_pending(*id);
        }
        self.send(peer, message);
        for (request, notice) in rest {
            self.send(
                peer,
                Message::Proof {
                    request,
                    notice,
                    fee: None,
                },
            );
        }
        for id in ups {
            self.finish_if_done(id);
        }
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
        let downs: Vec<RequestId> = self.requests.ids_down(channel);
        for id in downs {
            self.maybe_finish_downstream(id, now);
            let stale = self
                .requests
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
        for id in self.requests.down_of(channel) {
            if let Some(p) = self.requests.get(id) {
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
}
