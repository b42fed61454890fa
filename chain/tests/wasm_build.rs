//! The contract wasm, built the way cargo-near builds it (`por_chain::wasm`): it exists,
//! is small, exports every method, and is accepted by near-vm-runner under the oldest
//! protocol this project supports.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use por_chain::local::{Clock, LocalChain, DEFAULT_GAS, NEAR, PROTOCOL_VERSION};

/// The host functions the contract imports. Each exists in every protocol from
/// `PROTOCOL_VERSION` (84) on; the embedded chain, which links imports under that
/// protocol's configuration, proves it by running the contract. Importing another one
/// means checking when NEAR added it (near-vm-runner's `imports.rs` gates the newer
/// ones: gas keys from 85, universal accounts from 88), then extending this list.
const IMPORTS: &[&str] = &[
    "attached_deposit",
    "block_timestamp",
    "current_account_id",
    "ed25519_verify",
    "input",
    "log_utf8",
    "panic_utf8",
    "predecessor_account_id",
    "promise_batch_action_transfer",
    "promise_batch_create",
    "read_register",
    "register_len",
    "sha256",
    "storage_has_key",
    "storage_read",
    "storage_remove",
    "storage_usage",
    "storage_write",
    "value_return",
];

fn imports(wasm: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        if let wasmparser::Payload::ImportSection(reader) = payload.unwrap() {
            for import in reader {
                let import = import.unwrap();
                out.push(format!("{}.{}", import.module, import.name));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn contract_imports_only_host_functions_of_the_oldest_protocol_claimed() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let wasm = std::fs::read(por_chain::wasm::build_contract(&root).unwrap()).unwrap();
    let got = imports(&wasm);
    let unexpected: Vec<&String> = got
        .iter()
        .filter(|i| !IMPORTS.iter().any(|a| **i == format!("env.{a}")))
        .collect();
    assert!(
        unexpected.is_empty(),
        "the contract imports host functions not checked against protocol {PROTOCOL_VERSION}: {unexpected:?}"
    );
}

/// A module importing one host function, `promise_batch_action_transfer_to_gas_key`
/// (NEAR protocol 85 on), with an exported `new` that does nothing.
fn module_importing_a_gas_key_function() -> Vec<u8> {
    let name = b"promise_batch_action_transfer_to_gas_key";
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    // Types: (i64, i64, i64, i64) -> () and () -> ().
    m.extend([1, 11, 2, 0x60, 4, 0x7e, 0x7e, 0x7e, 0x7e, 0, 0x60, 0, 0]);
    let mut import = vec![1, 3, b'e', b'n', b'v', name.len() as u8];
    import.extend(name);
    import.extend([0, 0]);
    m.extend([2, import.len() as u8]);
    m.extend(import);
    m.extend([3, 2, 1, 1]); // one function of type 1
    m.extend([5, 3, 1, 0, 1]); // one memory of one page
    m.extend([7, 7, 1, 3, b'n', b'e', b'w', 0, 1]); // export "new" = function 1
    m.extend([10, 4, 1, 2, 0, 0x0b]); // its body: end
    m
}

#[test]
fn the_embedded_chain_refuses_what_the_claimed_protocol_refuses() {
    let wasm = module_importing_a_gas_key_function();
    let run = |protocol: u32| {
        let dir =
            std::env::temp_dir().join(format!("por-wasm-link-{}-{protocol}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut c = LocalChain::open_at(
            &dir.join("chain.redb"),
            &wasm,
            "t.local",
            Clock::Manual(0),
            protocol,
        )
        .unwrap();
        c.fund("t.local", 10 * NEAR).unwrap();
        let out = c.call("t.local", "new", b"{}", 0, DEFAULT_GAS);
        let _ = std::fs::remove_dir_all(&dir);
        out
    };
    let err = run(PROTOCOL_VERSION).unwrap_err();
    assert!(
        err.to_string().contains("import"),
        "protocol {PROTOCOL_VERSION} must refuse the import: {err}"
    );
    run(88).unwrap();
}

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
        "get_deployment",
        "storage_deposit",
        "storage_withdraw",
        "storage_balance_of",
        "storage_balance_bounds",
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
