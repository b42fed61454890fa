//! The signed types must build for `wasm32-unknown-unknown`, so that the contract
//! decodes and verifies exactly what nodes sign. This builds the crate for that target
//! both as the contract uses it (no default features: types, encoding, topology) and
//! with the whole engine.
//!
//! It installs the target with rustup first (a no-op when present), so the README's
//! test command needs nothing beyond the Rust toolchain.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

const TARGET: &str = "wasm32-unknown-unknown";

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn ensure_target() {
    let status = Command::new("rustup")
        .args(["target", "add", TARGET])
        .status()
        .unwrap_or_else(|e| panic!("cannot run rustup to add {TARGET}: {e}"));
    assert!(status.success(), "rustup target add {TARGET} failed");
}

fn build(extra: &[&str]) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = workspace_root();
    let out = Command::new(cargo)
        .current_dir(&root)
        .args(["build", "--quiet", "-p", "por-protocol", "--target", TARGET])
        .args(extra)
        .arg("--target-dir")
        .arg(root.join("target").join("wasm-check"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "building por-protocol {extra:?} for {TARGET} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn protocol_types_build_for_wasm32() {
    ensure_target();
    build(&["--no-default-features"]);
    build(&[]);
}
