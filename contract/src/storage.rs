//! Storage payment, in the manner of NEP-145: callers pay for the storage they add.
//!
//! Every account deposits a storage balance (`storage_deposit`); every call that
//! changes state measures the contract's storage before and after (the collections
//! flushed, so the figures are exact) and charges the growth to the caller's balance
//! at the network's price per byte, or credits it what the call freed. A call whose
//! growth the balance does not cover is refused with how much it needs, and nothing
//! of it happens. Stakes and channel deposits are never used for storage, and the
//! contract's own balance (which holds users' funds) never pays for anyone's state.

use near_sdk::json_types::U128;
use near_sdk::{env, near, AccountId};

use crate::common::transfer;
use crate::error::{ok, ContractError, R};
use crate::state::{PorContract, PorContractExt};

/// An account's storage balance (NEP-145's shape: all of it is available, since
/// what calls add is charged as they add it).
#[near(serializers = [json])]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageBalance {
    /// Deposited and not yet used or withdrawn.
    pub total: U128,
    /// What `storage_withdraw` can send back.
    pub available: U128,
}

/// What a storage balance must at least be deposited with.
#[near(serializers = [json])]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageBalanceBounds {
    /// The cost of the balance's own record.
    pub min: U128,
    /// No upper bound.
    pub max: Option<U128>,
}

/// Bytes a storage balance's own record takes (key prefix, account id of up to 64
/// bytes, the amount, and NEAR's per-record overhead of 40 bytes).
const BALANCE_RECORD_BYTES: u128 = 1 + 4 + 64 + 16 + 40;

fn price() -> u128 {
    env::storage_byte_cost().as_yoctonear()
}

impl PorContract {
    /// Writes every collection's cached changes, so that `env::storage_usage` counts
    /// them.
    fn flush_all(&mut self) {
        self.nodes.flush();
        self.keys.flush();
        self.channels.flush();
        self.settled.flush();
        self.open.flush();
        self.pairs.flush();
        self.graph.flush();
        self.storage.flush();
    }

    /// Runs `f`, charging the storage it adds to `payer`'s balance (or crediting what
    /// it frees).
    pub(crate) fn charged<T>(
        &mut self,
        payer: &AccountId,
        f: impl FnOnce(&mut Self) -> R<T>,
    ) -> R<T> {
        self.flush_all();
        let before = env::storage_usage();
        let out = f(self)?;
        self.flush_all();
        let after = env::storage_usage();
        let have = self.storage.get(payer).copied().unwrap_or(0);
        let left = if after >= before {
            let need = u128::from(after.saturating_sub(before))
                .checked_mul(price())
                .ok_or(ContractError::Overflow)?;
            have.checked_sub(need)
                .ok_or_else(|| ContractError::StorageDeposit {
                    account: payer.to_string(),
                    need,
                    have,
                })?
        } else {
            let freed = u128::from(before.saturating_sub(after)).saturating_mul(price());
            have.saturating_add(freed)
        };
        if left != have {
            self.storage.insert(payer.clone(), left);
        }
        Ok(out)
    }

    /// Credits `deposit` to `account`'s storage balance, paying its record from it
    /// the first time.
    pub fn do_storage_deposit(&mut self, account: AccountId, deposit: u128) -> R<u128> {
        let have = match self.storage.get(&account) {
            Some(have) => *have,
            None => {
                let record = BALANCE_RECORD_BYTES.saturating_mul(price());
                if deposit < record {
                    return Err(ContractError::InsufficientDeposit {
                        attached: deposit,
                        needed: record,
                    });
                }
                return self.credit(account, deposit.saturating_sub(record));
            }
        };
        self.credit(
            account,
            have.checked_add(deposit).ok_or(ContractError::Overflow)?,
        )
    }

    fn credit(&mut self, account: AccountId, balance: u128) -> R<u128> {
        self.storage.insert(account, balance);
        Ok(balance)
    }

    /// Takes `amount` (all if `None`) out of the caller's storage balance; returns
    /// what to send.
    pub fn do_storage_withdraw(&mut self, caller: &AccountId, amount: Option<u128>) -> R<u128> {
        let have = self.storage.get(caller).copied().unwrap_or(0);
        let amount = amount.unwrap_or(have);
        let left = have
            .checked_sub(amount)
            .ok_or(ContractError::StorageDeposit {
                account: caller.to_string(),
                need: amount,
                have,
            })?;
        self.storage.insert(caller.clone(), left);
        Ok(amount)
    }

    fn balance_of(&self, account: &AccountId) -> Option<StorageBalance> {
        self.storage.get(account).map(|b| StorageBalance {
            total: U128(*b),
            available: U128(*b),
        })
    }
}

#[near]
impl PorContract {
    /// Adds the attached deposit to the storage balance of `account_id` (the caller
    /// if `None`). The first deposit pays for the balance's own record.
    #[payable]
    pub fn storage_deposit(
        &mut self,
        account_id: Option<AccountId>,
        registration_only: Option<bool>,
    ) -> StorageBalance {
        let _ = registration_only;
        let account = account_id.unwrap_or_else(env::predecessor_account_id);
        let deposit = env::attached_deposit().as_yoctonear();
        let balance = ok(self.do_storage_deposit(account, deposit));
        StorageBalance {
            total: U128(balance),
            available: U128(balance),
        }
    }

    /// Sends back `amount` of the caller's storage balance (all of it if `None`).
    pub fn storage_withdraw(&mut self, amount: Option<U128>) -> StorageBalance {
        let caller = env::predecessor_account_id();
        let sent = ok(self.do_storage_withdraw(&caller, amount.map(|a| a.0)));
        transfer(&caller, sent);
        self.balance_of(&caller).unwrap_or(StorageBalance {
            total: U128(0),
            available: U128(0),
        })
    }

    /// An account's storage balance.
    pub fn storage_balance_of(&self, account_id: AccountId) -> Option<StorageBalance> {
        self.balance_of(&account_id)
    }

    /// The least a first storage deposit must be.
    pub fn storage_balance_bounds(&self) -> StorageBalanceBounds {
        StorageBalanceBounds {
            min: U128(BALANCE_RECORD_BYTES.saturating_mul(price())),
            max: None,
        }
    }
}
