//! # por-contract
//!
//! The NEAR contract behind a Proof of Response network: registered nodes with their
//! stakes, keys and addresses; edges (state channels) with their terms and deposits;
//! cooperative and adversarial channel close; severing with penalties; partition
//! checks with slashing and reimbursements; views; NEP-297 events for every change.
//!
//! Signed values are `por_protocol` types, passed as base64 of their canonical wire
//! encoding, decoded with `por_protocol::wire::decode` and checked with
//! `env::ed25519_verify` over exactly `Signable::signing_bytes()` — the bytes the nodes
//! sign. The logic is plain Rust (`Result<_, ContractError>`); the `#[near]` methods
//! only turn errors into panics with their message.
// The near-sdk macros generate public items (the wasm exports, the state struct's
// helpers) that cannot carry doc comments; every item written here has one.
#![allow(missing_docs)]

use near_sdk::store::{IterableMap, IterableSet, LazyOption, LookupMap};
use near_sdk::{env, near};

mod channels;
mod closes;
mod common;
mod error;
pub mod graph;
mod nodes;
mod sever;
mod state;
mod storage;
mod views;

pub use common::{MAX_ADDRESSES, MAX_ADDRESS_LEN};
pub use error::ContractError;
pub use state::{Channel, ChannelState, Config, Node, NodeView, PorContract, SeverRecord, Terms};

use graph::Graph;
use state::{Key, PorContractExt};

#[near]
impl PorContract {
    /// Initialises the contract.
    #[init]
    pub fn new(config: Config) -> Self {
        if config.partition_slash_bps > 10_000 {
            env::panic_str("invalid argument: partition_slash_bps above 10000");
        }
        if config.network.is_empty() || config.network.len() > 64 {
            env::panic_str("invalid argument: network must be 1 to 64 characters");
        }
        let deployment =
            por_protocol::Deployment::of(&config.network, env::current_account_id().as_str());
        PorContract {
            deployment: deployment.0 .0,
            config,
            nodes: IterableMap::new(Key::Nodes),
            keys: LookupMap::new(Key::Keys),
            channels: IterableMap::new(Key::Channels),
            settled: LookupMap::new(Key::Settled),
            open: IterableSet::new(Key::Open),
            storage: LookupMap::new(Key::Storage),
            pairs: LookupMap::new(Key::Pairs),
            graph: LazyOption::new(Key::Graph, Some(Graph::default())),
            next_channel: 0,
            pool: 0,
        }
    }
}

#[cfg(test)]
mod tests;
