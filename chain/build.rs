//! Two things for por-chain:
//! - builds the contract wasm, the way cargo-near builds it (`--cfg near -C
//!   link-arg=-s`, profile `contract`), so that every binary carries the exact bytes its
//!   embedded chain runs (`por_chain::wasm::CONTRACT`), and a `por` binary copied to
//!   another machine needs no source tree;
//! - tells the tests whether a NEAR sandbox binary is available: the near-workspaces
//!   integration tests run only then, and are reported as ignored (never as passed)
//!   otherwise.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

include!("src/contract_build.rs");

use sha2::{Digest, Sha256};

fn main() {
    println!("cargo:rerun-if-env-changed=NEAR_SANDBOX_BIN_PATH");
    println!("cargo:rustc-check-cfg=cfg(near_sandbox)");
    if std::env::var_os("NEAR_SANDBOX_BIN_PATH").is_some_and(|p| !p.is_empty()) {
        println!("cargo:rustc-cfg=near_sandbox");
    }
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest.join("..");
    for p in [
        "contract/src",
        "contract/Cargo.toml",
        "protocol/src",
        "protocol/Cargo.toml",
        "Cargo.toml",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", workspace.join(p).display());
    }
    println!("cargo:rerun-if-changed=src/contract_build.rs");
    // Best effort: a toolchain without rustup may have the target already.
    let _ = Command::new("rustup")
        .args(["target", "add", "wasm32-unknown-unknown"])
        .output();
    let target_dir = contract_target_dir(&workspace);
    let out = contract_build_command(&workspace, &target_dir)
        .output()
        .unwrap_or_else(|e| panic!("running cargo to build the contract wasm: {e}"));
    if !out.status.success() {
        panic!(
            "building the contract wasm (rustup target add wasm32-unknown-unknown may be \
             needed):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let built = contract_wasm_path(&target_dir);
    let bytes =
        std::fs::read(&built).unwrap_or_else(|e| panic!("reading {}: {e}", built.display()));
    let dest = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("por_contract.wasm");
    std::fs::write(&dest, &bytes).unwrap_or_else(|e| panic!("writing {}: {e}", dest.display()));
    let hash: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    println!("cargo:rustc-env=POR_CONTRACT_SHA256={hash}");
}
