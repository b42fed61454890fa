//! Everything the contract refuses, and the checked arithmetic it refuses overflow with.

use near_sdk::env;

use crate::common::{MAX_ADDRESSES, MAX_ADDRESS_LEN};

/// Everything the contract refuses, with the message it panics with.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ContractError {
    /// The caller is not allowed to do this.
    #[error("unauthorized: {0}")]
    Unauthorized(&'static str),
    /// The account is already registered, or the key is taken.
    #[error("already registered: {0}")]
    AlreadyRegistered(String),
    /// The address list is too long, or an address is.
    #[error("addresses: at most {MAX_ADDRESSES} of at most {MAX_ADDRESS_LEN} bytes each")]
    BadAddresses,
    /// No such node.
    #[error("unknown node {0}")]
    UnknownNode(String),
    /// No such channel.
    #[error("unknown channel {0}")]
    UnknownChannel(u64),
    /// The attached deposit is below what the call needs.
    #[error("insufficient deposit: attached {attached}, need at least {needed}")]
    InsufficientDeposit {
        /// Attached yoctoNEAR.
        attached: u128,
        /// Required yoctoNEAR.
        needed: u128,
    },
    /// The caller's storage balance does not cover the storage its call adds.
    #[error(
        "storage: {account} has {have} yoctoNEAR of storage deposit, this call adds \
         storage costing {need}: call storage_deposit first"
    )]
    StorageDeposit {
        /// The account that pays.
        account: String,
        /// What the added storage costs.
        need: u128,
        /// Its storage balance.
        have: u128,
    },
    /// Not enough stake for the request.
    #[error("insufficient stake: {0}")]
    InsufficientStake(String),
    /// The channel is not in a state that allows this.
    #[error("channel {id} is {state}: cannot {action}")]
    WrongState {
        /// The channel.
        id: u64,
        /// Its state.
        state: &'static str,
        /// What was attempted.
        action: &'static str,
    },
    /// A signature does not verify.
    #[error("bad signature on {0}")]
    BadSignature(&'static str),
    /// A signed value could not be decoded.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// What was being decoded.
        what: &'static str,
        /// The decoder's message.
        detail: String,
    },
    /// A submitted state pays its payee no more than the one held (and is no later).
    #[error("stale state for {direction}: it pays {got} yoctoNEAR, the state held pays {have}")]
    StaleState {
        /// Which direction.
        direction: &'static str,
        /// What the state held pays the payee (yoctoNEAR, cumulative).
        have: u128,
        /// What the submitted state pays.
        got: u128,
    },
    /// A signed state belongs to another channel or other parties.
    #[error("state does not belong to channel {0}")]
    ForeignState(u64),
    /// Not yet: a challenge period or an unbonding delay is still running.
    #[error("too early: {what} ends at {at_ns} ns")]
    TooEarly {
        /// What is running.
        what: &'static str,
        /// When it ends.
        at_ns: u64,
    },
    /// Arithmetic would overflow.
    #[error("amount overflow")]
    Overflow,
    /// An argument is invalid.
    #[error("invalid argument: {0}")]
    Invalid(String),
}

pub(crate) type R<T> = Result<T, ContractError>;

pub(crate) fn ok<T>(r: R<T>) -> T {
    r.unwrap_or_else(|e| env::panic_str(&e.to_string()))
}

pub(crate) fn add(a: u128, b: u128) -> R<u128> {
    a.checked_add(b).ok_or(ContractError::Overflow)
}

pub(crate) fn sub(a: u128, b: u128) -> R<u128> {
    a.checked_sub(b).ok_or(ContractError::Overflow)
}
