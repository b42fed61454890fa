//! A fresh embedded chain for node tests and benchmarks: the contract wasm built from
//! this workspace, initialised, accounts funded. Included by `tests/support/mod.rs`,
//! by tests that need nothing else of the support module, and by `benches/common`.
#![allow(clippy::unwrap_used, dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use por_chain::local::{dev_config, Clock, LocalChain};

/// `dir`, emptied, holding a chain with `accounts` funded `funds` each; `configure`
/// adjusts the contract's init config (on top of `dev_config` and a 1-yocto minimum
/// deposit) before it is initialised.
pub fn local_chain(
    dir: &Path,
    accounts: &[&str],
    funds: u128,
    configure: impl FnOnce(&mut serde_json::Value),
) -> Arc<Mutex<LocalChain>> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let wasm = std::fs::read(por_chain::wasm::build_contract(&workspace).unwrap()).unwrap();
    let mut local =
        LocalChain::open(&dir.join("chain.redb"), &wasm, "por.local", Clock::Wall).unwrap();
    let mut config = dev_config();
    config["min_deposit"] = "1".into();
    configure(&mut config);
    local.ensure_initialised(config).unwrap();
    for a in accounts {
        local.fund(a, funds).unwrap();
    }
    Arc::new(Mutex::new(local))
}
