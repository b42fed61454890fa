//! One state channel as seen by one of its endpoints.
//!
//! Each direction is an independent, payer-signed, monotone stream of
//! [`ChannelUpdate`]s: `seq` grows by one per update and `cumulative` never shrinks.
//! A node's balance on the channel is `deposit + incoming.cumulative -
//! outgoing.cumulative`. The contract settles a channel from the highest-seq update
//! it is shown in each direction, so an older state always loses to a newer one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::amount::Amount;
use crate::crypto::{self, Deployment, Keypair, NodeId, Signature};
use crate::error::ProtocolError;
use crate::messages::Message;
use crate::types::{
    AckOf, ChannelId, ChannelUpdate, EdgeInfo, Memo, SignedSeverNotice, SignedUpdate,
};

/// Our payments to the peer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outgoing {
    /// Last seq we signed.
    pub seq: u64,
    /// Total we have paid.
    pub cumulative: Amount,
    /// Highest seq the peer has acknowledged.
    pub acked_seq: u64,
    /// The peer's countersignature on `acked_seq` (our receipt).
    pub last_ack: Option<Signature>,
    /// Signed updates not yet acknowledged, with the message that carried each, kept
    /// for retransmission after a reconnect.
    pub unacked: BTreeMap<u64, (ChannelUpdate, Message)>,
}

/// The peer's payments to us.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incoming {
    /// Last seq we accepted.
    pub seq: u64,
    /// Total the peer has paid us.
    pub cumulative: Amount,
    /// The peer-signed update at `seq`: what we would submit on chain.
    pub latest: Option<SignedUpdate>,
}

/// Where the chain says a channel is in its close. It only moves forward.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum CloseStage {
    /// Open (or a cooperative close proposed and not yet confirmed: the channel is
    /// out of the topology, but no money moves without our confirmation).
    #[default]
    Open,
    /// An adversarial close is in its challenge period: the states on chain decide the
    /// payout unless newer ones are submitted in time.
    Closing,
    /// Paid out on chain: the channel is gone for good.
    Closed,
}

/// The durable record of one channel. Written before any signature or ack that
/// depends on it leaves the node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelRecord {
    /// The edge as the contract records it.
    pub edge: EdgeInfo,
    /// This endpoint.
    pub me: NodeId,
    /// The other endpoint.
    pub peer: NodeId,
    /// Our direction.
    pub outgoing: Outgoing,
    /// Their direction.
    pub incoming: Incoming,
    /// Set once the edge is severed (by either side).
    pub severed: Option<SignedSeverNotice>,
    /// How far the chain has taken this channel's close.
    pub close: CloseStage,
}

impl ChannelRecord {
    /// A fresh channel record for `me` on `edge`.
    pub fn open(edge: EdgeInfo, me: NodeId) -> Option<ChannelRecord> {
        let peer = edge.peer_of(&me)?;
        Some(ChannelRecord {
            edge,
            me,
            peer,
            outgoing: Outgoing::default(),
            incoming: Incoming::default(),
            severed: None,
            close: CloseStage::Open,
        })
    }

    /// The channel id.
    pub fn id(&self) -> ChannelId {
        self.edge.id
    }

    /// Our current balance: deposit + received - paid.
    pub fn balance(&self) -> Result<Amount, ProtocolError> {
        let deposit = self.edge.deposit_of(&self.me).unwrap_or_default();
        Ok(deposit
            .checked_add(self.incoming.cumulative)?
            .checked_sub(self.outgoing.cumulative)?)
    }

    /// Net change since opening: received - paid, as a signed integer.
    pub fn net(&self) -> i128 {
        let inc = i128::try_from(self.incoming.cumulative.0).unwrap_or(i128::MAX);
        let out = i128::try_from(self.outgoing.cumulative.0).unwrap_or(i128::MAX);
        inc.saturating_sub(out)
    }

    fn live(&self) -> Result<(), ProtocolError> {
        match self.severed {
            Some(_) => Err(ProtocolError::ChannelSevered(self.id())),
            None => Ok(()),
        }
    }

    /// Signs the next outgoing update for `memo`, checking that we can afford it, and
    /// records it (with the message that will carry it) as unacknowledged.
    ///
    /// Our capacity is our deposit plus what we *hold* from the peer; the peer checks
    /// against what it has *signed*, which is never less, so we never produce an update
    /// the peer must refuse.
    pub fn pay(
        &mut self,
        key: &Keypair,
        deployment: &Deployment,
        memo: Memo,
        carrier: impl FnOnce(SignedUpdate) -> Message,
    ) -> Result<SignedUpdate, ProtocolError> {
        let update = self.next_update(memo)?;
        let signed = SignedUpdate::sign_alone(key, deployment, update).map_err(|source| {
            ProtocolError::BadSignature {
                what: "own update",
                source,
            }
        })?;
        Ok(self.commit_outgoing(signed, carrier))
    }

    /// Like [`ChannelRecord::pay`], but leaves the update unsigned (see
    /// [`crate::types::unsealed_proof`]): the engine signs every update it makes between
    /// two polls of its outputs with one signature over their batch, and fills it in
    /// wherever the update is held before anything is persisted or sent.
    pub fn pay_unsealed(
        &mut self,
        memo: Memo,
        carrier: impl FnOnce(SignedUpdate) -> Message,
    ) -> Result<SignedUpdate, ProtocolError> {
        let update = self.next_update(memo)?;
        let signed = SignedUpdate {
            update,
            proof: crate::types::unsealed_proof(),
            sig: Signature([0; 64]),
        };
        Ok(self.commit_outgoing(signed, carrier))
    }

    /// Whether we can pay `memo` now (the channel is live and our capacity covers it).
    pub fn affords(&self, memo: &Memo) -> bool {
        self.next_update(memo.clone()).is_ok()
    }

    /// The next outgoing update paying `memo`, if we can afford it.
    fn next_update(&self, memo: Memo) -> Result<ChannelUpdate, ProtocolError> {
        self.live()?;
        let cumulative = self.outgoing.cumulative.checked_add(memo.amount())?;
        let capacity = self
            .edge
            .deposit_of(&self.me)
            .unwrap_or_default()
            .checked_add(self.incoming.cumulative)?;
        if cumulative > capacity {
            return Err(ProtocolError::Insolvent {
                channel: self.id(),
                cumulative,
                capacity,
            });
        }
        let seq = self
            .outgoing
            .seq
            .checked_add(1)
            .ok_or(ProtocolError::Overflow)?;
        Ok(ChannelUpdate {
            channel: self.id(),
            payer: self.me,
            payee: self.peer,
            seq,
            cumulative,
            memo,
        })
    }

    fn commit_outgoing(
        &mut self,
        signed: SignedUpdate,
        carrier: impl FnOnce(SignedUpdate) -> Message,
    ) -> SignedUpdate {
        self.outgoing.seq = signed.update.seq;
        self.outgoing.cumulative = signed.update.cumulative;
        let msg = carrier(signed.clone());
        self.outgoing
            .unacked
            .insert(signed.update.seq, (signed.update.clone(), msg));
        signed
    }

    /// Checks an update from the peer without applying it.
    pub fn check_incoming(
        &self,
        deployment: &Deployment,
        su: &SignedUpdate,
    ) -> Result<(), ProtocolError> {
        self.live()?;
        let u = &su.update;
        if u.channel != self.id() {
            return Err(ProtocolError::Misaddressed("channel"));
        }
        if u.payer != self.peer || u.payee != self.me {
            return Err(ProtocolError::Misaddressed("payer/payee"));
        }
        if u.seq <= self.incoming.seq {
            return Err(ProtocolError::StaleState {
                channel: self.id(),
                have: self.incoming.seq,
                got: u.seq,
            });
        }
        let expected_seq = self.incoming.seq.saturating_add(1);
        if u.seq != expected_seq {
            return Err(ProtocolError::SequenceGap {
                channel: self.id(),
                expected: expected_seq,
                got: u.seq,
            });
        }
        let expected = self.incoming.cumulative.checked_add(u.memo.amount())?;
        if u.cumulative != expected {
            return Err(ProtocolError::CumulativeMismatch {
                channel: self.id(),
                expected,
                got: u.cumulative,
            });
        }
        let capacity = self
            .edge
            .deposit_of(&self.peer)
            .unwrap_or_default()
            .checked_add(self.outgoing.cumulative)?;
        if u.cumulative > capacity {
            return Err(ProtocolError::Insolvent {
                channel: self.id(),
                cumulative: u.cumulative,
                capacity,
            });
        }
        let batch = su.batch().ok_or(ProtocolError::BadSignature {
            what: "channel update proof",
            source: crypto::CryptoError::BadSignature,
        })?;
        crypto::verify_cached(deployment, &self.peer, &batch, &su.sig).map_err(|source| {
            ProtocolError::BadSignature {
                what: "channel update",
                source,
            }
        })
    }

    /// Checks and applies an update from the peer; returns our ack signature.
    pub fn receive(
        &mut self,
        key: &Keypair,
        deployment: &Deployment,
        su: &SignedUpdate,
    ) -> Result<Signature, ProtocolError> {
        self.accept(deployment, su)?;
        key.sign(deployment, &AckOf(&su.update))
            .map_err(|source| ProtocolError::BadSignature {
                what: "own ack",
                source,
            })
    }

    /// Checks and applies an update from the peer without acknowledging it yet: the
    /// engine acknowledges a run of updates with one ack of the last (an ack of `seq`
    /// acknowledges every update up to it).
    pub fn accept(
        &mut self,
        deployment: &Deployment,
        su: &SignedUpdate,
    ) -> Result<(), ProtocolError> {
        self.check_incoming(deployment, su)?;
        self.incoming.seq = su.update.seq;
        self.incoming.cumulative = su.update.cumulative;
        self.incoming.latest = Some(su.clone());
        Ok(())
    }

    /// Applies the peer's ack of our update `seq`; returns the acked update's memos in
    /// seq order (every update up to `seq` is acknowledged by it).
    pub fn acked(
        &mut self,
        deployment: &Deployment,
        seq: u64,
        sig: &Signature,
    ) -> Result<Vec<Memo>, ProtocolError> {
        if seq <= self.outgoing.acked_seq {
            return Err(ProtocolError::ReplayedAck {
                channel: self.id(),
                seq,
            });
        }
        let (update, _) = self
            .outgoing
            .unacked
            .get(&seq)
            .ok_or(ProtocolError::UnknownAck {
                channel: self.id(),
                seq,
            })?;
        crypto::verify(deployment, &self.peer, &AckOf(update), sig).map_err(|source| {
            ProtocolError::BadSignature {
                what: "ack",
                source,
            }
        })?;
        self.outgoing.acked_seq = seq;
        self.outgoing.last_ack = Some(*sig);
        let rest = self.outgoing.unacked.split_off(&seq.saturating_add(1));
        let done = std::mem::replace(&mut self.outgoing.unacked, rest);
        Ok(done.into_values().map(|(u, _)| u.memo).collect())
    }

    /// Messages to retransmit to a peer that holds our updates up to `peer_has`.
    pub fn retransmit_after(&self, peer_has: u64) -> Result<Vec<Message>, ProtocolError> {
        if peer_has > self.outgoing.seq {
            return Err(ProtocolError::ImpossibleReestablish {
                channel: self.id(),
                claimed: peer_has,
                ours: self.outgoing.seq,
            });
        }
        Ok(self
            .outgoing
            .unacked
            .range(peer_has.saturating_add(1)..)
            .map(|(_, (_, m))| m.clone())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{EdgeTerms, RequestId};

    const D: Deployment = Deployment(crate::crypto::Hash([5; 32]));

    fn setup() -> (Keypair, Keypair, ChannelRecord, ChannelRecord) {
        let a = Keypair::from_seed([1; 32]);
        let b = Keypair::from_seed([2; 32]);
        let edge = EdgeInfo {
            id: ChannelId(9),
            a: a.id(),
            b: b.id(),
            terms: EdgeTerms {
                latency_ms: 10,
                base_cost: Amount(1),
                byte_cost: Amount(0),
                sync_interval_ms: 100,
                sync_phase_ms: 0,
                max_late_fee_rate: Amount(10),
                bandwidth: EdgeTerms::DEFAULT_BANDWIDTH,
            },
            deposit_a: Amount(100),
            deposit_b: Amount(50),
        };
        let ca = ChannelRecord::open(edge.clone(), a.id()).unwrap();
        let cb = ChannelRecord::open(edge, b.id()).unwrap();
        (a, b, ca, cb)
    }

    fn memo(amount: u128) -> Memo {
        Memo::Refund {
            request: RequestId([0; 16]),
            amount: Amount(amount),
        }
    }

    #[test]
    fn pay_receive_ack_roundtrip() {
        let (a, b, mut ca, mut cb) = setup();
        let u1 = ca
            .pay(&a, &D, memo(30), |_| Message::Ping { nonce: 1 })
            .unwrap();
        let u2 = ca
            .pay(&a, &D, memo(20), |_| Message::Ping { nonce: 2 })
            .unwrap();
        assert_eq!(u2.update.cumulative, Amount(50));
        let ack1 = cb.receive(&b, &D, &u1).unwrap();
        // Replaying the same update is a stale state, refused without change.
        assert!(matches!(
            cb.receive(&b, &D, &u1),
            Err(ProtocolError::StaleState { .. })
        ));
        let ack2 = cb.receive(&b, &D, &u2).unwrap();
        assert_eq!(cb.incoming.cumulative, Amount(50));
        assert_eq!(cb.balance().unwrap(), Amount(100));
        assert_eq!(ca.balance().unwrap(), Amount(50));
        // Acks are cumulative; an older ack after a newer one is a replay.
        assert_eq!(ca.acked(&D, 2, &ack2).unwrap().len(), 2);
        assert!(matches!(
            ca.acked(&D, 1, &ack1),
            Err(ProtocolError::ReplayedAck { .. })
        ));
        assert!(ca.outgoing.unacked.is_empty());
    }

    #[test]
    fn forged_gapped_and_insolvent_updates_are_refused() {
        let (a, b, mut ca, mut cb) = setup();
        let mut forged = ca
            .pay(&a, &D, memo(10), |_| Message::Ping { nonce: 0 })
            .unwrap();
        forged.update.cumulative = Amount(11);
        forged.update.memo = memo(11);
        assert!(matches!(
            cb.receive(&b, &D, &forged),
            Err(ProtocolError::BadSignature { .. })
        ));
        // A signature by the wrong key (b signs as if a).
        let mut by_b = forged.clone();
        by_b.sig = b.sign(&D, &by_b.batch().unwrap()).unwrap();
        assert!(matches!(
            cb.receive(&b, &D, &by_b),
            Err(ProtocolError::BadSignature { .. })
        ));
        // An unsealed update (no proof) and a proof that does not lead to the root
        // that was signed.
        let mut unsealed = forged.clone();
        unsealed.proof = crate::types::unsealed_proof();
        let mut misplaced = SignedUpdate::sign_alone(&a, &D, forged.update.clone()).unwrap();
        misplaced.proof.leaves = 2;
        misplaced.proof.siblings.push(crate::crypto::Hash::of(b"x"));
        for bad in [unsealed, misplaced] {
            assert!(matches!(
                cb.receive(&b, &D, &bad),
                Err(ProtocolError::BadSignature { .. })
            ));
        }
        let _u2 = ca
            .pay(&a, &D, memo(10), |_| Message::Ping { nonce: 0 })
            .unwrap();
        let u3 = ca
            .pay(&a, &D, memo(10), |_| Message::Ping { nonce: 0 })
            .unwrap();
        assert!(matches!(
            cb.receive(&b, &D, &u3),
            Err(ProtocolError::SequenceGap { .. })
        ));
        // a's deposit is 100: paying 71 more (total 101) is refused locally.
        assert!(matches!(
            ca.pay(&a, &D, memo(71), |_| Message::Ping { nonce: 0 }),
            Err(ProtocolError::Insolvent { .. })
        ));
        assert_eq!(ca.outgoing.seq, 3, "a refused payment leaves no trace");
        assert!(cb.incoming.latest.is_none());
    }

    #[test]
    fn retransmit_and_impossible_claims() {
        let (a, _b, mut ca, _cb) = setup();
        for n in 0..3 {
            ca.pay(&a, &D, memo(1), |_| Message::Ping { nonce: n })
                .unwrap();
        }
        let again = ca.retransmit_after(1).unwrap();
        assert_eq!(
            again,
            vec![Message::Ping { nonce: 1 }, Message::Ping { nonce: 2 }]
        );
        assert!(matches!(
            ca.retransmit_after(4),
            Err(ProtocolError::ImpossibleReestablish { .. })
        ));
    }
}
