// The one recipe for building the contract wasm, shared by the crate's build script
// (`include!`d there) and `wasm::build_contract`: the way cargo-near builds it.

/// Where the contract's build goes, under the workspace's target directory.
fn contract_target_dir(workspace: &std::path::Path) -> std::path::PathBuf {
    workspace.join("target").join("contract-wasm")
}

/// The built wasm, in `contract_target_dir`.
fn contract_wasm_path(target_dir: &std::path::Path) -> std::path::PathBuf {
    target_dir
        .join("wasm32-unknown-unknown")
        .join("contract")
        .join("por_contract.wasm")
}

/// `cargo build -p por-contract --target wasm32-unknown-unknown --profile contract`
/// with cargo-near's flags, in `workspace`, into `target_dir`. What an outer build set
/// for itself (its flags, wrappers, target directory) is not passed on.
fn contract_build_command(
    workspace: &std::path::Path,
    target_dir: &std::path::Path,
) -> std::process::Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.current_dir(workspace)
        .env("RUSTFLAGS", "--cfg near -C link-arg=-s")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_PRIMARY_PACKAGE")
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
        .arg(target_dir);
    cmd
}
