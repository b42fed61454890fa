//! # por-node
//!
//! The por node: it drives the sans-IO [`por_protocol::Engine`] over a
//! [`por_transport`] transport (TCP or QUIC), persists what the engine asks to
//! persist in redb before anything that depends on it leaves, follows the chain, and
//! exposes the SDK ([`NodeBuilder`] → [`NodeHandle`]) and the `por` command line.
//!
//! See docs/architecture.md for the task structure and docs/guide-node.md for running
//! a node.
// The node is the edge of the system: it reads the clock.
#![allow(clippy::disallowed_methods)]

mod admission;
mod boot;
mod checkpoint;
mod client;
pub mod config;
pub mod control;
pub mod db;
#[cfg(feature = "demo")]
pub mod demo;
pub mod eventlog;
mod follower;
pub mod http;
mod kept;
pub mod limits;
mod links;
pub mod map;
pub mod metrics;
mod persister;
mod pump;
pub mod sdk;
mod status;
mod wal;

pub use config::{ChainChoice, NodeConfig, Settings, TransportKind};
pub use sdk::{
    handler_fn, Handler, IncomingRequest, NodeBuilder, NodeEvent, NodeHandle, Outcome,
    RequestOptions, Status, DEFAULT_RESPONSE_LIMIT,
};

use std::path::PathBuf;

/// Everything the node can fail at or refuse.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The node database failed (its path and the reason).
    #[error("database {path}: {detail}")]
    Db {
        /// The database file.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
    /// The write-ahead log is damaged before its last record: state that was
    /// reported durable cannot be read back, so the node refuses to start rather than
    /// forget it.
    #[error("write-ahead log {path}, byte {offset}: {detail}")]
    Log {
        /// The log file.
        path: PathBuf,
        /// Where the damage starts.
        offset: u64,
        /// What is wrong.
        detail: String,
    },
    /// The engine asked to persist a state the store refuses: a bug; the node stops.
    #[error("refusing to persist: {0}")]
    Store(#[from] por_protocol::store::StoreError),
    /// The chain refused or failed.
    #[error("chain: {0}")]
    Chain(#[from] por_chain::ChainError),
    /// The transport failed.
    #[error("transport: {0}")]
    Transport(#[from] por_transport::TransportError),
    /// The engine refused a call.
    #[error("{0}")]
    Protocol(#[from] por_protocol::ProtocolError),
    /// No route to the server fits the request.
    #[error("no route to {server} for a {body_len}-byte body within {max_rtt_ms} ms")]
    NoRoute {
        /// The server.
        server: String,
        /// Body size.
        body_len: usize,
        /// The round-trip limit asked for.
        max_rtt_ms: u64,
    },
    /// The node database holds channels signed for another contract deployment than
    /// the chain's (another contract account or network).
    #[error(
        "database {path} belongs to deployment {held}, but the chain's contract is \
         deployment {chain}: use a data directory of its own for each network"
    )]
    WrongDeployment {
        /// The database file.
        path: PathBuf,
        /// The deployment its records are for (hex).
        held: String,
        /// The chain contract's deployment (hex).
        chain: String,
    },
    /// This node is not registered on the chain.
    #[error("node key {0} is not registered on the chain")]
    NotRegistered(String),
    /// A configuration value is wrong (the file or flag, the key and why).
    #[error("config {source_name}: {key}: {detail}")]
    Config {
        /// The file, flag or variable it came from.
        source_name: String,
        /// The key.
        key: String,
        /// What is wrong.
        detail: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {detail}")]
    File {
        /// The file.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
    /// A running node refused a control request (its message).
    #[error("node: {0}")]
    Remote(String),
    /// The node is shutting down or has stopped.
    #[error("the node has stopped")]
    Stopped,
    /// An op a layer above the node serves on its control endpoint refused or failed.
    #[error("{op}: {detail}")]
    Op {
        /// The op.
        op: String,
        /// Why.
        detail: String,
    },
}

/// The node's clock: milliseconds since the Unix epoch, as the engine's [`por_protocol::Time`].
pub fn now() -> por_protocol::Time {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    por_protocol::Time(ms)
}

/// Full lowercase hex of a node key (the form the chain and config files use).
pub fn key_hex(id: &por_protocol::NodeId) -> String {
    por_protocol::hex::encode(&id.0)
}

/// Parses a node key from 64 hex digits.
pub fn parse_key(text: &str) -> Option<por_protocol::NodeId> {
    por_protocol::hex::decode(text.trim()).map(por_protocol::NodeId)
}
