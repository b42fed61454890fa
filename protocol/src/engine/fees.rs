//! Late fees: what each hop owes upstream once its send deadline passes, paid
//! in-band on the closing message or the edge's next sync; what it expects from
//! downstream, and the loss it records when a downstream's chance to settle passes.

use crate::amount::Amount;
use crate::crypto::NodeId;
use crate::error::ProtocolError;
use crate::messages::Message;
use crate::store::Write;
use crate::time::Time;
use crate::types::{fee_items_hash, ChannelId, FeeItem, FeePayment, Memo, RequestId};

use super::{Engine, Event};

impl Engine {
    /// Builds the message `make` makes, with one late-fee payment attached covering
    /// what `ids` owe on `channel` up to `now` (none when nothing is owed or we
    /// withhold, or cannot pay them on this edge), and records the fees as paid.
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
                let Some(p) = self.requests.get(id) else {
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
        // Cannot pay (insolvent on this edge): the message goes without its fee; the
        // shortfall is the peer's to judge (it records a loss and may sever for it).
        // Refusing to send it would leave a response or proof undelivered, and would
        // blame the frame being handled, often the downstream's, for our insolvency.
        if !self
            .channels
            .get(&channel)
            .is_some_and(|ch| ch.rec.affords(&memo))
        {
            return Ok(make(None));
        }
        let message = self.pay_with(channel, memo, |update| {
            make(Some(FeePayment { update, items }))
        })?;
        // A closing message's fee is kept for retransmission on its own: the closing
        // itself is kept (durably) among the closings and resent from there, so a
        // response body is never kept twice.
        if let Message::Response { fee: Some(fee), .. } | Message::Proof { fee: Some(fee), .. } =
            &message
        {
            let seq = fee.update.update.seq;
            let carrier = Message::LateFee {
                channel,
                fee: fee.clone(),
            };
            self.keep_for_retransmission(channel, seq, carrier);
        }
        let mut totals = Vec::with_capacity(increments.len());
        for (id, inc, peer, owed_since) in increments {
            if let Some(up) = self.requests.get_mut(&id).and_then(|p| p.up.as_mut()) {
                up.fee_paid = up.fee_paid.checked_add(inc)?;
                totals.push((id, up.fee_paid));
                self.events.push_back(Event::LateFeePaid {
                    request: id,
                    peer,
                    amount: inc,
                    total: up.fee_paid,
                    owed_since,
                });
            }
        }
        self.write(Write::FeesPaid(totals));
        Ok(message)
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
                .requests
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
        let mut totals = Vec::with_capacity(credits.len());
        for (id, inc, total) in credits {
            if let Some(d) = self.requests.get_mut(&id).and_then(|p| p.down.as_mut()) {
                d.fees_received = total;
                totals.push((id, total));
                self.events.push_back(Event::LateFeeReceived {
                    request: id,
                    peer: from,
                    amount: inc,
                    total,
                });
            }
        }
        if !totals.is_empty() {
            self.write(Write::FeesReceived(totals));
        }
        Ok(())
    }

    /// A resolved downstream is finished once its fees are settled in full.
    pub(super) fn maybe_finish_downstream(&mut self, id: RequestId, _now: Time) {
        let tol = self.config.fee_tolerance_ms;
        let Some(p) = self.requests.get(&id) else {
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
            if let Some(d) = self.requests.get_mut(&id).and_then(|p| p.down.as_mut()) {
                d.finished = true;
            }
        }
    }

    /// The downstream's last chance to settle has passed: record what is missing.
    pub(super) fn realize_loss(&mut self, id: RequestId, now: Time) {
        let tol = self.config.fee_tolerance_ms;
        let Some(p) = self.requests.get_mut(&id) else {
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
            if let (Some(ch), Some(h)) = (self.channels.get_mut(&channel), self.config.heuristic) {
                ch.ledger.lost(now, missing, h.window_ms);
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
}
