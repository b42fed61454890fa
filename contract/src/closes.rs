//! Closing channels: cooperatively (both sign), or adversarially (one side starts,
//! the other may challenge with later states within the period, then anyone finalizes).

use near_sdk::json_types::{Base64VecU8, U128, U64};
use near_sdk::serde_json::json;
use near_sdk::{env, near, AccountId};
use por_protocol::types::{ChannelUpdate, SignedUpdate};
use por_protocol::wire;

use crate::common::{emit, hex32, pay_out, verify};
use crate::error::{add, ok, sub, ContractError, R};
use crate::state::{Channel, ChannelState, PorContract, PorContractExt};

impl PorContract {
    /// Decodes and verifies signed updates for channel `id`; returns them by direction.
    pub(crate) fn verified_states(
        &self,
        ch: &Channel,
        updates: &[Base64VecU8],
    ) -> R<Vec<(bool, ChannelUpdate)>> {
        let (ka, kb) = (
            hex32(&self.node(&ch.a)?.key)?,
            hex32(&self.node(&ch.b)?.key)?,
        );
        let mut out = Vec::new();
        for raw in updates {
            let su: SignedUpdate = wire::decode(&raw.0).map_err(|e| ContractError::Malformed {
                what: "signed update",
                detail: e.to_string(),
            })?;
            // The payer signed the Merkle root of a batch of its updates; the proof
            // places this update in it.
            let batch = su.batch().ok_or(ContractError::Malformed {
                what: "signed update",
                detail: "malformed batch proof".into(),
            })?;
            let u = su.update;
            if u.channel.0 != ch.id.0 {
                return Err(ContractError::ForeignState(ch.id.0));
            }
            let a_pays = if u.payer.0 == ka && u.payee.0 == kb {
                true
            } else if u.payer.0 == kb && u.payee.0 == ka {
                false
            } else {
                return Err(ContractError::ForeignState(ch.id.0));
            };
            verify(
                &self.deployment,
                &batch,
                &su.sig,
                &u.payer.0,
                "channel update",
            )?;
            out.push((a_pays, u));
        }
        Ok(out)
    }

    /// Records the states that pay their payee more than those held.
    ///
    /// Only the payer signs an update, and an honest payer's cumulative total in one
    /// direction only ever grows. So the state that pays the payee most wins: a payer
    /// cannot revoke what it paid by signing a later sequence number with a smaller
    /// total (`seq = u64::MAX, cumulative = 0`), since that state pays less than the
    /// payee's. Between two states that pay the same, the later one is kept. With
    /// `strict`, a state that pays no more and is no later than the one held is
    /// refused (stale).
    pub(crate) fn record_states(
        &mut self,
        id: u64,
        states: Vec<(bool, ChannelUpdate)>,
        strict: bool,
    ) -> R<()> {
        let mut ch = self.channel(id)?.clone();
        for (a_pays, u) in states {
            let (slot, dir) = if a_pays {
                (&mut ch.paid_ab, "a->b")
            } else {
                (&mut ch.paid_ba, "b->a")
            };
            let (held_seq, held_total) = (slot.0 .0, slot.1 .0);
            if (u.cumulative.0, u.seq) > (held_total, held_seq) {
                *slot = (U64(u.seq), U128(u.cumulative.0));
            } else if strict {
                return Err(ContractError::StaleState {
                    direction: dir,
                    have: held_total,
                    got: u.cumulative.0,
                });
            }
        }
        self.channels.insert(id, ch);
        Ok(())
    }

    /// The payout: each side's deposit plus what it was paid minus what it paid,
    /// clamped to what the channel holds.
    pub(crate) fn payout(ch: &Channel) -> R<(u128, u128)> {
        let total = add(ch.deposit_a.0, ch.deposit_b.0)?;
        let (ab, ba) = (ch.paid_ab.1 .0, ch.paid_ba.1 .0);
        let a = ch
            .deposit_a
            .0
            .saturating_add(ba)
            .saturating_sub(ab)
            .min(total);
        Ok((a, sub(total, a)?))
    }

    pub(crate) fn settle(&mut self, id: u64) -> R<(AccountId, u128, AccountId, u128)> {
        let ch = self.channel(id)?.clone();
        let (pa, pb) = Self::payout(&ch)?;
        self.retire_channel(id, ChannelState::Closed);
        emit(
            "channel_closed",
            json!({"id": U64(id), "a": ch.a, "payout_a": U128(pa), "b": ch.b, "payout_b": U128(pb), "paid_ab": ch.paid_ab.1, "paid_ba": ch.paid_ba.1}),
        );
        Ok((ch.a, pa, ch.b, pb))
    }

    /// Emits a close event with what a watchtower needs to decide whether to challenge
    /// without a view: both endpoints and the cumulative totals now held per direction.
    fn emit_close(&self, event: &str, id: u64, by: &AccountId, until_ns: Option<u64>) {
        let Some(ch) = self.channels.get(&id) else {
            return;
        };
        let mut data = json!({"id": U64(id), "by": by, "a": ch.a, "b": ch.b,
            "paid_ab": ch.paid_ab.1, "paid_ba": ch.paid_ba.1});
        if let (Some(until), Some(map)) = (until_ns, data.as_object_mut()) {
            map.insert("until_ns".into(), json!(U64(until)));
        }
        emit(event, data);
    }

    /// An endpoint proposes a cooperative close with the latest states it holds. The
    /// edge leaves the topology at once, and, as for a sever, the partition check runs:
    /// a node cannot escape a split's slash and reimbursements by closing its last
    /// edge instead of being severed.
    pub fn do_propose_close(
        &mut self,
        caller: AccountId,
        id: u64,
        updates: Vec<Base64VecU8>,
        now: u64,
    ) -> R<()> {
        let ch = self.channel(id)?.clone();
        Self::endpoint(&ch, &caller)?;
        if ch.state != ChannelState::Open {
            return Err(ContractError::WrongState {
                id,
                state: ch.state.name(),
                action: "propose a close",
            });
        }
        let states = self.verified_states(&ch, &updates)?;
        self.record_states(id, states, false)?;
        self.unlink(&ch)?;
        if let Some(c) = self.channels.get_mut(&id) {
            c.state = ChannelState::ClosePending { by: caller.clone() };
        }
        self.emit_close("close_proposed", id, &caller, None);
        self.partition_check(&ch, now)?;
        Ok(())
    }

    /// The other endpoint confirms a cooperative close (optionally adding newer states
    /// it holds); paid out at once.
    pub fn do_confirm_close(
        &mut self,
        caller: AccountId,
        id: u64,
        updates: Vec<Base64VecU8>,
    ) -> R<(AccountId, u128, AccountId, u128)> {
        let ch = self.channel(id)?.clone();
        Self::endpoint(&ch, &caller)?;
        let ChannelState::ClosePending { by } = &ch.state else {
            return Err(ContractError::WrongState {
                id,
                state: ch.state.name(),
                action: "confirm a close",
            });
        };
        if *by == caller {
            return Err(ContractError::Unauthorized("the other endpoint confirms"));
        }
        let states = self.verified_states(&ch, &updates)?;
        self.record_states(id, states, false)?;
        self.settle(id)
    }

    /// An endpoint starts an adversarial close with the states it holds. If the edge
    /// was still open, it leaves the topology and the partition check runs (see
    /// [`PorContract::do_propose_close`]).
    pub fn do_start_close(
        &mut self,
        caller: AccountId,
        id: u64,
        updates: Vec<Base64VecU8>,
        now: u64,
    ) -> R<u64> {
        let ch = self.channel(id)?.clone();
        Self::endpoint(&ch, &caller)?;
        if !matches!(
            ch.state,
            ChannelState::Open | ChannelState::ClosePending { .. }
        ) {
            return Err(ContractError::WrongState {
                id,
                state: ch.state.name(),
                action: "start a close",
            });
        }
        let states = self.verified_states(&ch, &updates)?;
        self.record_states(id, states, false)?;
        let was_open = ch.state == ChannelState::Open;
        if was_open {
            self.unlink(&ch)?;
        }
        let until = now.saturating_add(self.config.challenge_ns.0);
        if let Some(c) = self.channels.get_mut(&id) {
            c.state = ChannelState::Closing {
                until_ns: U64(until),
            };
        }
        self.emit_close("close_started", id, &caller, Some(until));
        if was_open {
            self.partition_check(&ch, now)?;
        }
        Ok(until)
    }

    /// During the challenge period an endpoint submits newer states; a state that is
    /// not newer than the one held is refused.
    pub fn do_challenge(
        &mut self,
        caller: AccountId,
        id: u64,
        updates: Vec<Base64VecU8>,
        now: u64,
    ) -> R<()> {
        let ch = self.channel(id)?.clone();
        Self::endpoint(&ch, &caller)?;
        let ChannelState::Closing { until_ns } = ch.state else {
            return Err(ContractError::WrongState {
                id,
                state: ch.state.name(),
                action: "challenge",
            });
        };
        if now >= until_ns.0 {
            return Err(ContractError::WrongState {
                id,
                state: "past its challenge period",
                action: "challenge",
            });
        }
        let states = self.verified_states(&ch, &updates)?;
        self.record_states(id, states, true)?;
        self.emit_close("close_challenged", id, &caller, None);
        Ok(())
    }

    /// After the challenge period anyone finalizes; paid out.
    pub fn do_finalize_close(
        &mut self,
        id: u64,
        now: u64,
    ) -> R<(AccountId, u128, AccountId, u128)> {
        let ch = self.channel(id)?.clone();
        let ChannelState::Closing { until_ns } = ch.state else {
            return Err(ContractError::WrongState {
                id,
                state: ch.state.name(),
                action: "finalize",
            });
        };
        if now < until_ns.0 {
            return Err(ContractError::TooEarly {
                what: "challenge period",
                at_ns: until_ns.0,
            });
        }
        self.settle(id)
    }
}

#[near]
impl PorContract {
    /// Proposes a cooperative close with the caller's latest signed states.
    pub fn propose_close(&mut self, id: U64, updates: Vec<Base64VecU8>) {
        ok(self.charged(&env::predecessor_account_id(), |c| {
            c.do_propose_close(
                env::predecessor_account_id(),
                id.0,
                updates,
                env::block_timestamp(),
            )
        }));
    }

    /// Confirms a cooperative close: paid out at once. Returns the payouts `[a, b]`
    /// (two transfers are scheduled; NEAR does not allow returning a joint promise).
    pub fn confirm_close(&mut self, id: U64, updates: Vec<Base64VecU8>) -> [U128; 2] {
        let (a, pa, b, pb) = ok(self.charged(&env::predecessor_account_id(), |c| {
            c.do_confirm_close(env::predecessor_account_id(), id.0, updates)
        }));
        pay_out(a, pa, b, pb)
    }

    /// Starts an adversarial close with the caller's latest signed states.
    pub fn start_close(&mut self, id: U64, updates: Vec<Base64VecU8>) -> U64 {
        U64(ok(self.charged(&env::predecessor_account_id(), |c| {
            c.do_start_close(
                env::predecessor_account_id(),
                id.0,
                updates,
                env::block_timestamp(),
            )
        })))
    }

    /// Submits newer states during the challenge period.
    pub fn challenge(&mut self, id: U64, updates: Vec<Base64VecU8>) {
        ok(self.charged(&env::predecessor_account_id(), |c| {
            c.do_challenge(
                env::predecessor_account_id(),
                id.0,
                updates,
                env::block_timestamp(),
            )
        }));
    }

    /// Pays out a channel whose challenge period is over. Returns the payouts `[a, b]`.
    pub fn finalize_close(&mut self, id: U64) -> [U128; 2] {
        let (a, pa, b, pb) = ok(self.charged(&env::predecessor_account_id(), |c| {
            c.do_finalize_close(id.0, env::block_timestamp())
        }));
        pay_out(a, pa, b, pb)
    }
}
