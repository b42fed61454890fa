//! Deadlines and periodic syncs.

use super::*;

impl Engine {
    // ----------------------------------------------------------------- timers

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

    pub(super) fn on_overdue(&mut self, id: RequestId, now: Time) {
        let Some(d) = self.pending.get(&id).and_then(|p| p.down.as_ref()) else {
            return;
        };
        if d.resolved.is_some() {
            return;
        }
        match self.config.sever_policy {
            SeverPolicy::Immediate => self.sever_downstream_of(id, now, None),
            SeverPolicy::WaitMs(ms) => {
                self.timers.insert((now.plus(ms), Timer::SeverAt(id)));
            }
            SeverPolicy::WaitSyncs(_) | SeverPolicy::Never => {}
        }
    }

    pub(super) fn sever_downstream_of(
        &mut self,
        id: RequestId,
        now: Time,
        in_sync_of: Option<ChannelId>,
    ) {
        let Some(d) = self.pending.get(&id).and_then(|p| p.down.as_ref()) else {
            return;
        };
        if d.resolved.is_some() {
            return;
        }
        let channel = d.channel;
        // Severing our own edge cannot fail except for an unknown channel, which the
        // pending record rules out.
        let _ = self.sever_inner(channel, SeverReason::Unresponsive, now, in_sync_of);
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
                .by_up
                .get(&channel)
                .into_iter()
                .flatten()
                .chain(self.by_down.get(&channel).into_iter().flatten())
                .copied()
                .collect();
            for id in candidates {
                let Some(p) = self.pending.get_mut(&id) else {
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
        let ups: Vec<RequestId> = self.ids_up(channel);
        let mut proofs = Vec::new();
        for id in &ups {
            if let Some(u) = self.pending.get_mut(id).and_then(|p| p.up.as_mut()) {
                if let Some(n) = u.queued_proof.take() {
                    u.closed_at = Some(now);
                    proofs.push((*id, n));
                }
            }
        }
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
        for (id, n) in &proofs {
            self.note_proof_forwarded(*id, n.notice.channel);
            let copy = Message::Proof {
                request: *id,
                notice: n.clone(),
                fee: None,
            };
            self.remember_closing(channel, *id, &copy, now);
        }
        for (id, _) in &proofs {
            self.write_pending(*id);
        }
        self.send(peer, message);
        for id in ups {
            self.finish_if_done(id);
        }
    }
}
