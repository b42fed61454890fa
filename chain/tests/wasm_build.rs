//! The contract wasm, built the way cargo-near builds it (`por_chain::wasm`): it exists,
//! is small, exports every method, and is accepted by near-vm-runner under the oldest
//! protocol this project supports.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

#[test]
fn contract_wasm_is_built_small_with_every_method_exported() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = por_chain::wasm::build_contract(&root).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    println!(
        "por_contract.wasm: {} bytes ({:.1} KiB) at {}",
        bytes.len(),
        bytes.len() as f64 / 1024.0,
        path.display()
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
