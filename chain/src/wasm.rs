//! The contract wasm. The crate's build script builds it the way cargo-near does
//! (`--cfg near -C link-arg=-s`, profile `contract`) and the bytes are carried in the
//! binary: [`CONTRACT`] is what the embedded chain runs and `por contract deploy`
//! deploys, and [`CONTRACT_SHA256`] (printed by `por --version`) names it. Nothing is
//! downloaded or checked in. [`build_contract`] builds the same from a source tree at
//! run time, for tools that want the file.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::ChainError;

include!("contract_build.rs");

/// The contract wasm, built with this crate from the sources beside it.
pub const CONTRACT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/por_contract.wasm"));

/// SHA-256 of [`CONTRACT`], hex.
pub const CONTRACT_SHA256: &str = env!("POR_CONTRACT_SHA256");

/// Builds `por-contract` for `wasm32-unknown-unknown` (installing the target with
/// rustup if needed) and returns the path of the wasm.
pub fn build_contract(workspace: &Path) -> Result<PathBuf, ChainError> {
    let build = |what: &str, e: String| ChainError::Build(format!("{what}: {e}"));
    let status = Command::new("rustup")
        .args(["target", "add", "wasm32-unknown-unknown"])
        .output()
        .map_err(|e| build("running rustup", e.to_string()))?;
    if !status.status.success() {
        return Err(build(
            "rustup target add wasm32-unknown-unknown",
            String::from_utf8_lossy(&status.stderr).into_owned(),
        ));
    }
    let target_dir = contract_target_dir(workspace);
    let out = contract_build_command(workspace, &target_dir)
        .output()
        .map_err(|e| build("running cargo", e.to_string()))?;
    if !out.status.success() {
        return Err(build(
            "cargo build of por-contract",
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    Ok(contract_wasm_path(&target_dir))
}
