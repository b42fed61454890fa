//! # por-protocol
//!
//! The Proof of Response protocol as a sans-IO state machine, in the style of
//! `quinn-proto`: no sockets, threads or clocks. Time is an argument (`now`) of every
//! call; inputs go in (frames, timeouts, API calls, chain events) and outputs are
//! polled (frames, the next deadline, events, writes to persist).
//!
//! Without default features the crate is only the signed wire types, the topology
//! algorithms and the canonical encoding, and builds for `wasm32-unknown-unknown`, so
//! the contract verifies exactly the bytes the nodes sign.
//!
//! See `docs/protocol.md` for the specification this implements.
#![cfg_attr(not(test), deny(clippy::disallowed_methods, clippy::disallowed_types))]
#![cfg_attr(not(test), warn(clippy::arithmetic_side_effects))]

pub mod amount;
pub mod crypto;
pub mod fixed;
pub mod hex;
pub mod merkle;
pub mod messages;
pub mod time;
pub mod topology;
pub mod types;
pub mod wire;

#[cfg(feature = "engine")]
pub mod channel;
#[cfg(feature = "engine")]
pub mod config;
#[cfg(feature = "engine")]
pub mod engine;
#[cfg(feature = "engine")]
pub mod error;
#[cfg(feature = "engine")]
pub mod pending;
#[cfg(feature = "engine")]
pub mod store;
#[cfg(feature = "test-utils")]
pub mod testing;

pub use amount::Amount;
pub use crypto::{Deployment, Hash, NodeId, Signature};
pub use time::Time;
pub use types::*;

#[cfg(feature = "engine")]
pub use config::{
    EngineConfig, Heuristic, Misbehaviour, ProofForwarding, SeverPolicy, MAX_IN_FLIGHT_PER_PEER,
};
#[cfg(feature = "crypto")]
pub use crypto::Keypair;
#[cfg(feature = "engine")]
pub use engine::{
    ChainAction, ChainEvent, Engine, Event, Pending, Resolution, Transmit, WriteBatch,
};
#[cfg(feature = "engine")]
pub use error::ProtocolError;
