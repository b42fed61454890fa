//! Channels: proposing, confirming and cancelling edges, with their deposits.

use near_sdk::json_types::{U128, U64};
use near_sdk::serde_json::json;
use near_sdk::{env, near, AccountId};

use crate::common::{emit, pair, transfer, MAX_LISTED};
use crate::error::{ok, ContractError, R};
use crate::state::{Channel, ChannelState, PorContract, PorContractExt, Terms};

impl PorContract {
    /// The caller proposes an edge to `peer` with `deposit`.
    pub fn do_propose(
        &mut self,
        caller: AccountId,
        deposit: u128,
        peer: AccountId,
        terms: Terms,
    ) -> R<u64> {
        self.node(&caller)?;
        self.node(&peer)?;
        if caller == peer {
            return Err(ContractError::Invalid("an edge needs two nodes".into()));
        }
        let min = self.config.min_deposit.0;
        if deposit < min {
            return Err(ContractError::InsufficientDeposit {
                attached: deposit,
                needed: min,
            });
        }
        if terms.bandwidth == 0 {
            return Err(ContractError::Invalid("bandwidth must be positive".into()));
        }
        if terms.sync_interval_ms == 0 {
            return Err(ContractError::Invalid(
                "sync interval must be positive".into(),
            ));
        }
        if let Some(existing) = self.pairs.get(&pair(&caller, &peer)) {
            return Err(ContractError::Invalid(format!(
                "channel {existing} already joins these nodes"
            )));
        }
        self.next_channel = self
            .next_channel
            .checked_add(1)
            .ok_or(ContractError::Overflow)?;
        let id = self.next_channel;
        self.pairs.insert(pair(&caller, &peer), id);
        self.count_proposal(&caller, &peer, true)?;
        emit(
            "channel_proposed",
            json!({"id": U64(id), "a": caller, "b": peer, "deposit": U128(deposit), "terms": terms}),
        );
        self.channels.insert(
            id,
            Channel {
                id: U64(id),
                a: caller,
                b: peer,
                terms,
                deposit_a: U128(deposit),
                deposit_b: U128(0),
                state: ChannelState::Proposed,
                paid_ab: (U64(0), U128(0)),
                paid_ba: (U64(0), U128(0)),
                severed: None,
            },
        );
        Ok(id)
    }

    /// `b` confirms a proposed edge with its deposit.
    pub fn do_confirm(&mut self, caller: AccountId, deposit: u128, id: u64) -> R<()> {
        let ch = self.channel(id)?.clone();
        if ch.b != caller {
            return Err(ContractError::Unauthorized(
                "only the proposed peer confirms",
            ));
        }
        if ch.state != ChannelState::Proposed {
            return Err(ContractError::WrongState {
                id,
                state: ch.state.name(),
                action: "confirm",
            });
        }
        let min = self.config.min_deposit.0;
        if deposit < min {
            return Err(ContractError::InsufficientDeposit {
                attached: deposit,
                needed: min,
            });
        }
        self.count_proposal(&ch.a, &ch.b, false)?;
        let (ia, ib) = (self.node(&ch.a)?.index, self.node(&ch.b)?.index);
        let g = self.graph_mut();
        g.add_edge(ia, ib, id);
        let rejoined = g.rejoin(ia, ib);
        if !rejoined.is_empty() {
            let listed: Vec<AccountId> = rejoined
                .iter()
                .take(MAX_LISTED)
                .filter_map(|i| g.node(*i).map(|n| n.account.clone()))
                .collect();
            emit(
                "node_reconnected",
                json!({"channel": U64(id), "count": rejoined.len(), "accounts": listed,
                       "truncated": rejoined.len() > MAX_LISTED}),
            );
        }
        if let Some(c) = self.channels.get_mut(&id) {
            c.deposit_b = U128(deposit);
            c.state = ChannelState::Open;
        }
        self.open.insert(id);
        emit(
            "channel_opened",
            json!({"id": U64(id), "a": ch.a, "b": ch.b, "deposit_a": ch.deposit_a, "deposit_b": U128(deposit), "terms": ch.terms}),
        );
        Ok(())
    }

    /// Either side cancels a proposal; returns `(a, refund)`.
    pub fn do_cancel(&mut self, caller: AccountId, id: u64) -> R<(AccountId, u128)> {
        let ch = self.channel(id)?.clone();
        if caller != ch.a && caller != ch.b {
            return Err(ContractError::Unauthorized("only an endpoint cancels"));
        }
        if ch.state != ChannelState::Proposed {
            return Err(ContractError::WrongState {
                id,
                state: ch.state.name(),
                action: "cancel",
            });
        }
        self.pairs.remove(&pair(&ch.a, &ch.b));
        self.count_proposal(&ch.a, &ch.b, false)?;
        self.retire_channel(id, ChannelState::Cancelled);
        emit(
            "channel_cancelled",
            json!({"id": U64(id), "by": caller, "refund": ch.deposit_a}),
        );
        Ok((ch.a, ch.deposit_a.0))
    }

    pub(crate) fn endpoint(ch: &Channel, caller: &AccountId) -> R<()> {
        if *caller == ch.a || *caller == ch.b {
            Ok(())
        } else {
            Err(ContractError::Unauthorized(
                "only an endpoint of the channel",
            ))
        }
    }

    /// Removes an edge from the live topology.
    pub(crate) fn unlink(&mut self, ch: &Channel) -> R<()> {
        let (ia, ib) = (self.node(&ch.a)?.index, self.node(&ch.b)?.index);
        self.graph_mut().remove_edge(ia, ib, ch.id.0);
        self.pairs.remove(&pair(&ch.a, &ch.b));
        self.open.remove(&ch.id.0);
        Ok(())
    }

    /// Counts a proposal in (or out) for both endpoints: while one is pending, neither
    /// may unstake below the minimum.
    fn count_proposal(&mut self, a: &AccountId, b: &AccountId, up: bool) -> R<()> {
        for account in [a, b] {
            let index = self.node(account)?.index;
            let g = self.gnode(index)?;
            g.proposals = if up {
                g.proposals.checked_add(1).ok_or(ContractError::Overflow)?
            } else {
                g.proposals.saturating_sub(1)
            };
        }
        Ok(())
    }
}

#[near]
impl PorContract {
    /// Proposes an edge to `peer`; the attached deposit is the caller's side.
    #[payable]
    pub fn propose_channel(&mut self, peer: AccountId, terms: Terms) -> U64 {
        let dep = env::attached_deposit().as_yoctonear();
        U64(ok(self.charged(&env::predecessor_account_id(), |c| {
            c.do_propose(env::predecessor_account_id(), dep, peer, terms)
        })))
    }

    /// Confirms a proposed edge with the attached deposit.
    #[payable]
    pub fn confirm_channel(&mut self, id: U64) {
        let dep = env::attached_deposit().as_yoctonear();
        ok(self.charged(&env::predecessor_account_id(), |c| {
            c.do_confirm(env::predecessor_account_id(), dep, id.0)
        }));
    }

    /// Cancels a proposal; the proposer's deposit is returned. Returns the refund.
    pub fn cancel_channel(&mut self, id: U64) -> U128 {
        let (a, refund) = ok(self.charged(&env::predecessor_account_id(), |c| {
            c.do_cancel(env::predecessor_account_id(), id.0)
        }));
        transfer(&a, refund);
        U128(refund)
    }
}
