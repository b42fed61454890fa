//! Severing edges: the sever policies that cut an overdue downstream, signed sever
//! notices (ours, a peer's, or one from the chain), and the proofs that end every
//! request whose remaining route crossed the severed edge.

use crate::config::{ProofForwarding, SeverPolicy};
use crate::crypto::{self, NodeId};
use crate::error::ProtocolError;
use crate::messages::Message;
use crate::pending::{Pending, Resolution};
use crate::store::Write;
use crate::time::Time;
use crate::types::{ChannelId, RequestId, SeverNotice, SeverReason, SignedSeverNotice};

use super::{ChainAction, Engine, Event, Timer};

impl Engine {
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
        self.sever_signed(channel, reason, now, in_sync_of, true)
    }

    /// Signs a notice severing `channel`, applies it and tells the peer; asks for it
    /// to be submitted on chain if `submit` (not for a channel whose close already
    /// took it out of the topology on chain).
    pub(super) fn sever_signed(
        &mut self,
        channel: ChannelId,
        reason: SeverReason,
        now: Time,
        in_sync_of: Option<ChannelId>,
        submit: bool,
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
        let sig = self.key.sign(&self.deployment, &notice).map_err(|source| {
            ProtocolError::BadSignature {
                what: "own notice",
                source,
            }
        })?;
        let signed = SignedSeverNotice { notice, sig };
        self.events.push_back(Event::SeverInitiated {
            channel,
            peer,
            reason,
        });
        if submit {
            self.chain_actions
                .push_back(ChainAction::Sever(signed.clone()));
        }
        self.apply_severance(&signed, now, in_sync_of);
        self.send(peer, Message::Severed { notice: signed });
        Ok(())
    }

    pub(super) fn on_overdue(&mut self, id: RequestId, now: Time) {
        let Some(d) = self.requests.get(&id).and_then(|p| p.down.as_ref()) else {
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
        let Some(d) = self.requests.get(&id).and_then(|p| p.down.as_ref()) else {
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
                // Nothing more goes over the edge: its kept closings are dead weight.
                self.drop_closings(channel);
                // Obligations towards that peer can no longer be met: the notice itself
                // proves the edge gone to them.
                let ups: Vec<RequestId> = self.requests.ids_up(channel);
                for id in ups {
                    if let Some(u) = self.requests.get_mut(&id).and_then(|p| p.up.as_mut()) {
                        u.closed_at.get_or_insert(now);
                        u.queued_proof = None;
                    }
                    self.write_pending(id);
                    self.finish_if_done(id);
                }
                // Whatever the peer still owed us on finished requests is lost now.
                let downs: Vec<RequestId> = self.requests.ids_down(channel);
                for id in downs {
                    let resolved = self
                        .requests
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
            .requests
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
        // Requests sent over the severed edge itself, which the proof just resolved,
        // are finished: nothing more comes over that edge. Left for a sync that never
        // comes, they would stay in flight for ever.
        if self.channels.contains_key(&channel) {
            let downs: Vec<RequestId> = self.requests.ids_down(channel);
            for id in downs {
                let Some(d) = self.requests.get_mut(&id).and_then(|p| p.down.as_mut()) else {
                    continue;
                };
                if d.resolved.is_some() && !d.finished {
                    d.finished = true;
                    self.write_pending(id);
                    self.finish_if_done(id);
                }
            }
        }
    }

    pub(super) fn on_proof(
        &mut self,
        from: NodeId,
        request: RequestId,
        notice: SignedSeverNotice,
        now: Time,
    ) -> Result<(), ProtocolError> {
        // A proof for a request we no longer hold, of an edge we already know is
        // severed: an honest duplicate. The first proof of that severance ended every
        // request of ours that crossed the edge, and the peer sends one per request
        // (some after a sync that carried the first). Nothing in it is taken.
        if !self.requests.contains(&request) && self.topology.is_severed(notice.notice.channel) {
            return Ok(());
        }
        let p = self.forwarded_to(from, request)?;
        self.check_proof(p, &notice)?;
        if p.down.as_ref().is_some_and(|d| d.resolved.is_some()) {
            return Ok(());
        }
        self.watch(&notice);
        self.apply_severance(&notice, now, None);
        Ok(())
    }

    /// A verified notice someone else signed, for an edge not yet severed as far as we
    /// know: ask for it to be watched on chain (see [`ChainAction::Watch`]).
    pub(super) fn watch(&mut self, notice: &SignedSeverNotice) {
        if notice.notice.severer != self.id && !self.topology.is_severed(notice.notice.channel) {
            self.chain_actions
                .push_back(ChainAction::Watch(notice.clone()));
        }
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
        crypto::verify(&self.deployment, &n.severer, n, &notice.sig).map_err(|source| {
            ProtocolError::BadSignature {
                what: "sever notice",
                source,
            }
        })
    }

    pub(super) fn resolve_with_proof(
        &mut self,
        id: RequestId,
        notice: SignedSeverNotice,
        now: Time,
        in_sync_of: Option<ChannelId>,
    ) {
        let channel = notice.notice.channel;
        let Some(p) = self.requests.get_mut(&id) else {
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
                } else if let Some(u) = self.requests.get_mut(&id).and_then(|p| p.up.as_mut()) {
                    u.queued_proof = Some(notice);
                }
            }
        }
        self.maybe_finish_downstream(id, now);
        self.write_pending(id);
        self.finish_if_done(id);
    }

    pub(super) fn note_proof_forwarded(&mut self, id: RequestId, channel: ChannelId) {
        if let Some(u) = self.requests.get(&id).and_then(|p| p.up.as_ref()) {
            self.events.push_back(Event::SeverProofForwarded {
                request: id,
                to: u.peer,
                channel,
            });
        }
    }
}
