//! # por-testnet
//!
//! The deterministic simulator that runs Proof of Response engines over virtual links
//! (virtual clock, seeded randomness, no sleeps), and the scenario files that encode
//! the paper's section 5 examples.

pub mod scenario;
pub mod sim;

pub use scenario::Scenario;
pub use sim::{run_toml, Record, Report, Sim, SimError};
