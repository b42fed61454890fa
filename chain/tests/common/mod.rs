//! What the chain's integration tests share: the contract's wasm, and an embedded
//! chain in a scratch directory removed when the test ends, passed or failed.
#![allow(clippy::unwrap_used, dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use por_chain::local::{Clock, LocalChain, NEAR};
use serde_json::json;

const SEC: u64 = 1_000_000_000;

/// The contract's wasm, built (or found built) once per test binary.
pub(crate) fn wasm() -> &'static [u8] {
    static WASM: OnceLock<Vec<u8>> = OnceLock::new();
    WASM.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        std::fs::read(por_chain::wasm::build_contract(&root).unwrap()).unwrap()
    })
}

/// A scratch directory named after `name`, removed when dropped.
pub(crate) fn scratch(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("por-chain-{name}-"))
        .tempdir()
        .unwrap()
}

/// A fresh embedded chain with the contract deployed as `contract`, in a scratch
/// directory (returned, to keep until the test ends).
pub(crate) fn chain(name: &str, contract: &str, clock: Clock) -> (tempfile::TempDir, LocalChain) {
    let dir = scratch(name);
    let chain = open(dir.path(), contract, clock);
    (dir, chain)
}

/// The chain whose database is in `dir`.
pub(crate) fn open(dir: &Path, contract: &str, clock: Clock) -> LocalChain {
    LocalChain::open(&dir.join("chain.redb"), wasm(), contract, clock).unwrap()
}

/// Initialises the contract at `por.test` for the test deployment the engines sign
/// for (`Deployment::test`): stakes of 1 NEAR, a minute's challenge, and the given
/// severing penalty and partition slash.
pub(crate) fn init_test_contract(
    c: &mut LocalChain,
    sever_penalty: u128,
    partition_slash_bps: u32,
) {
    c.fund("por.test", 10 * NEAR).unwrap();
    c.call_json(
        "por.test",
        "new",
        json!({"config": {"min_stake": NEAR.to_string(), "min_deposit": "1",
            "unbonding_ns": "1", "challenge_ns": (60 * SEC).to_string(),
            "sever_penalty": sever_penalty.to_string(),
            "partition_slash_bps": partition_slash_bps, "network": "test"}}),
        0,
    )
    .unwrap();
}
