//! Nodes: registration, stake (add, unstake, withdraw after unbonding), addresses.

use near_sdk::json_types::{U128, U64};
use near_sdk::serde_json::json;
use near_sdk::{env, near, AccountId};

use crate::common::{check_addresses, emit, hex32, to_hex, transfer};
use crate::error::{add, ok, sub, ContractError, R};
use crate::state::{Node, PorContract, PorContractExt};

impl PorContract {
    /// Registers the caller with `deposit` as stake.
    pub fn do_register(
        &mut self,
        caller: AccountId,
        deposit: u128,
        key: String,
        addresses: Vec<String>,
    ) -> R<()> {
        let min = self.config.min_stake.0;
        if deposit < min {
            return Err(ContractError::InsufficientDeposit {
                attached: deposit,
                needed: min,
            });
        }
        check_addresses(&addresses)?;
        let key = to_hex(&hex32(&key)?);
        if self.nodes.contains_key(&caller) {
            return Err(ContractError::AlreadyRegistered(caller.to_string()));
        }
        if self.keys.contains_key(&key) {
            return Err(ContractError::AlreadyRegistered(format!("key {key}")));
        }
        let index = self.graph_mut().add_node(caller.clone(), deposit);
        self.keys.insert(key.clone(), caller.clone());
        emit(
            "node_registered",
            json!({"account": caller, "key": key, "stake": U128(deposit), "addresses": addresses}),
        );
        self.nodes.insert(
            caller.clone(),
            Node {
                account: caller,
                key,
                addresses,
                unbonding_until: None,
                index,
            },
        );
        Ok(())
    }

    /// Adds `deposit` to the caller's stake. It counts at once for everything but the
    /// weighing of a split, where it counts once `unbonding_ns` has passed (so that
    /// stake added just before a split cannot decide which side is lighter).
    pub fn do_add_stake(&mut self, caller: AccountId, deposit: u128, now: u64) -> R<()> {
        let stake = add(self.stake_of(&caller)?, deposit)?;
        self.set_stake(&caller, stake)?;
        let index = self.node(&caller)?.index;
        let until = now.saturating_add(self.config.unbonding_ns.0);
        let g = self.gnode(index)?;
        g.recent = if now < g.recent_until_ns {
            add(g.recent, deposit)?
        } else {
            deposit
        };
        g.recent_until_ns = until;
        emit(
            "stake_added",
            json!({"account": caller, "amount": U128(deposit), "stake": U128(stake)}),
        );
        Ok(())
    }

    /// Starts unbonding `amount` of the caller's stake.
    pub fn do_unstake(&mut self, caller: AccountId, amount: u128, now: u64) -> R<()> {
        let node = self.node(&caller)?.clone();
        if node.unbonding_until.is_some() {
            return Err(ContractError::Invalid(
                "an unbonding is already in progress".into(),
            ));
        }
        let stake = self.stake_of(&caller)?;
        let left = sub(stake, amount)
            .map_err(|_| ContractError::InsufficientStake(format!("stake is {stake}")))?;
        let (live, proposals) = self
            .graph
            .get()
            .as_ref()
            .and_then(|g| g.node(node.index))
            .map_or((0, 0), |g| (g.edges.len(), g.proposals));
        if left < self.config.min_stake.0 && (live > 0 || proposals > 0) {
            return Err(ContractError::InsufficientStake(format!(
                "{live} live and {proposals} proposed edges need at least {} staked",
                self.config.min_stake.0
            )));
        }
        let release = now.saturating_add(self.config.unbonding_ns.0);
        self.set_stake(&caller, left)?;
        // The unbonding amount stays in the graph, slashable until withdrawn.
        let g = self.gnode(node.index)?;
        g.unbonding = amount;
        g.recent = g.recent.min(left);
        if let Some(n) = self.nodes.get_mut(&caller) {
            n.unbonding_until = Some(U64(release));
        }
        emit(
            "unstake_started",
            json!({"account": caller, "amount": U128(amount), "release_ns": U64(release)}),
        );
        Ok(())
    }

    /// Completes an unbonding; returns the amount to transfer.
    /// What a slash or a reimbursement took of the unbonding stake is not sent.
    pub fn do_withdraw(&mut self, caller: AccountId, now: u64) -> R<u128> {
        let node = self.node(&caller)?;
        let index = node.index;
        let release = node
            .unbonding_until
            .ok_or_else(|| ContractError::Invalid("nothing is unbonding".into()))?;
        if now < release.0 {
            return Err(ContractError::TooEarly {
                what: "unbonding",
                at_ns: release.0,
            });
        }
        let g = self.gnode(index)?;
        let amount = std::mem::take(&mut g.unbonding);
        if let Some(n) = self.nodes.get_mut(&caller) {
            n.unbonding_until = None;
        }
        emit(
            "stake_withdrawn",
            json!({"account": caller, "amount": U128(amount)}),
        );
        Ok(amount)
    }

    /// Replaces the caller's addresses.
    pub fn do_update_addresses(&mut self, caller: AccountId, addresses: Vec<String>) -> R<()> {
        check_addresses(&addresses)?;
        let node = self
            .nodes
            .get_mut(&caller)
            .ok_or_else(|| ContractError::UnknownNode(caller.to_string()))?;
        node.addresses = addresses.clone();
        emit(
            "addresses_updated",
            json!({"account": caller, "addresses": addresses}),
        );
        Ok(())
    }
}

#[near]
impl PorContract {
    /// Registers the caller as a node: the attached deposit is its stake.
    #[payable]
    pub fn register(&mut self, key: String, addresses: Vec<String>) {
        let dep = env::attached_deposit().as_yoctonear();
        ok(self.charged(&env::predecessor_account_id(), |c| {
            c.do_register(env::predecessor_account_id(), dep, key, addresses)
        }));
    }

    /// Adds the attached deposit to the caller's stake.
    #[payable]
    pub fn add_stake(&mut self) {
        let dep = env::attached_deposit().as_yoctonear();
        ok(self.charged(&env::predecessor_account_id(), |c| {
            c.do_add_stake(env::predecessor_account_id(), dep, env::block_timestamp())
        }));
    }

    /// Starts unbonding part of the caller's stake.
    pub fn unstake(&mut self, amount: U128) {
        ok(self.charged(&env::predecessor_account_id(), |c| {
            c.do_unstake(
                env::predecessor_account_id(),
                amount.0,
                env::block_timestamp(),
            )
        }));
    }

    /// Withdraws unbonded stake. Returns the amount sent.
    pub fn withdraw(&mut self) -> U128 {
        let caller = env::predecessor_account_id();
        let amount = ok(self.charged(&env::predecessor_account_id(), |c| {
            c.do_withdraw(caller.clone(), env::block_timestamp())
        }));
        transfer(&caller, amount);
        U128(amount)
    }

    /// Replaces the caller's network addresses.
    pub fn update_addresses(&mut self, addresses: Vec<String>) {
        ok(self.charged(&env::predecessor_account_id(), |c| {
            c.do_update_addresses(env::predecessor_account_id(), addresses)
        }));
    }
}
