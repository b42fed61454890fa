//! # por-chain
//!
//! The chain behind a por node: the [`Chain`] trait a node uses, and
//! [`local::LocalChain`], an embedded chain that executes the compiled `por-contract`
//! wasm on near-vm-runner (wasmtime) with NEAR's host functions and gas metering,
//! persisted in redb ([`LocalClient`] implements [`Chain`] on it).
// The embedded chain reads the wall clock for block times (`Clock::Wall`).
#![allow(clippy::disallowed_methods)]

mod any;
pub mod api;
pub mod json;
pub mod local;
mod local_client;
pub mod near;
pub mod serve;
pub mod wasm;

pub use any::AnyChain;
pub use api::{Chain, ChainNode, EventPage, Snapshot, EVENT_PAGE, STORAGE_LOW, STORAGE_TOP_UP};
pub use local_client::LocalClient;
pub use near::{NearClient, NearConfig};
pub use serve::RemoteClient;

/// Everything the chain can refuse or fail at.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The embedded database failed.
    #[error("chain database: {0}")]
    Db(String),
    /// A served chain refused the request: an unsigned or wrongly signed call, a
    /// replayed nonce, or the faucet off.
    #[error("refused by the served chain: {0}")]
    Unauthorized(String),
    /// The VM could not run the contract at all (not a contract panic).
    #[error("vm: {0}")]
    Vm(String),
    /// The contract refused the call (it panicked): its message and logs.
    #[error("{method} refused: {message}")]
    Aborted {
        /// The method called.
        method: String,
        /// The contract's panic message.
        message: String,
        /// Logs emitted before the panic.
        logs: Vec<String>,
    },
    /// The account id is not valid.
    #[error("invalid account id {0}")]
    BadAccount(String),
    /// The signer has no account on this chain.
    #[error("unknown account {0}")]
    UnknownAccount(String),
    /// The signer cannot cover the deposit.
    #[error("{account} has {have} yoctoNEAR, needs {need}")]
    InsufficientBalance {
        /// The signer.
        account: String,
        /// Its balance.
        have: u128,
        /// What the call needs.
        need: u128,
    },
    /// The call would leave the contract without the balance its storage needs
    /// (NEAR's storage staking).
    #[error("{account} would hold {have} yoctoNEAR, its storage needs {need}")]
    LackBalanceForState {
        /// The contract account.
        account: String,
        /// Its balance after the call.
        have: u128,
        /// What its storage costs.
        need: u128,
    },
    /// A return value could not be decoded.
    #[error("cannot decode the return value: {0}")]
    Decode(String),
    /// Balance arithmetic overflowed.
    #[error("balance overflow")]
    Overflow,
    /// A served chain could not be reached, or answered something that is not the
    /// protocol (its message).
    #[error("chain server: {0}")]
    Remote(String),
    /// A NEAR account key file could not be read (its path and the reason).
    #[error("key file {0}")]
    Key(String),
    /// The contract wasm could not be built.
    #[error("building the contract: {0}")]
    Build(String),
}
