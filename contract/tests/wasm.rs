//! Builds the contract for `wasm32-unknown-unknown` the way cargo-near does
//! (`--cfg near -C link-arg=-s`, profile `contract`: opt-level z, lto, panic abort) and
//! reports its size. Installs the target with rustup first, so the README's test
//! command needs nothing beyond the Rust toolchain.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

#[test]
fn contract_builds_to_a_small_wasm_with_every_method_exported() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let status = Command::new("rustup")
        .args(["target", "add", "wasm32-unknown-unknown"])
        .status()
        .unwrap_or_else(|e| panic!("cannot run rustup: {e}"));
    assert!(
        status.success(),
        "rustup target add wasm32-unknown-unknown failed"
    );
    let target_dir = root.join("target").join("contract-wasm");
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(&root)
        .env("RUSTFLAGS", "--cfg near -C link-arg=-s")
        .args([
            "build",
            "--quiet",
            "-p",
            "por-contract",
            "--target",
            "wasm32-unknown-unknown",
            "--profile",
            "contract",
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "contract build failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let wasm = target_dir.join("wasm32-unknown-unknown/contract/por_contract.wasm");
    let bytes = std::fs::read(&wasm).unwrap();
    println!(
        "por_contract.wasm: {} bytes ({:.1} KiB) at {}",
        bytes.len(),
        bytes.len() as f64 / 1024.0,
        wasm.display()
    );
    assert_eq!(&bytes[..4], b"\0asm");
    for export in [
        "new",
        "register",
        "add_stake",
        "unstake",
        "withdraw",
        "update_addresses",
        "propose_channel",
        "confirm_channel",
        "cancel_channel",
        "propose_close",
        "confirm_close",
        "start_close",
        "challenge",
        "finalize_close",
        "sever",
        "get_config",
        "get_node",
        "get_nodes",
        "get_channel",
        "get_channels",
        "get_edges",
        "get_center",
        "get_pool",
        "get_account_of_key",
    ] {
        let found = bytes.windows(export.len()).any(|w| w == export.as_bytes());
        assert!(found, "export {export} missing from the wasm");
    }
    assert!(
        bytes.len() < 600 * 1024,
        "contract grew to {} bytes",
        bytes.len()
    );
}
