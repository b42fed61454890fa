//! Gas with a long history: the views a starting node pages through, and the calls an
//! operator makes, before and after 10,000 channels were proposed and cancelled
//! (`POR_HISTORY` to change it), on the embedded chain running the contract wasm.
//! Settled channels leave the paged collections, so the figures should not move with
//! the history. `cargo bench -p por-chain --bench history_gas`.
#![allow(missing_docs, clippy::unwrap_used)]

use std::path::PathBuf;

use por_chain::local::{Clock, LocalChain};
use por_protocol::Keypair;
use serde_json::{json, Value};

const NEAR: u128 = 1_000_000_000_000_000_000_000_000;
const NODES: usize = 20;

fn acc(i: usize) -> String {
    format!("n{i}.local")
}

fn terms() -> Value {
    json!({"latency_ms": 50, "base_cost": "1", "byte_cost": "0", "sync_interval_ms": 1000,
           "sync_phase_ms": 0, "max_late_fee_rate": "1"})
}

/// Gas of the views a node pages through at start, and of one propose + confirm.
fn measure(chain: &mut LocalChain, a: usize, b: usize) -> [u64; 4] {
    let page = json!({"from": 0, "limit": 200}).to_string();
    let (_, edges) = chain.view_with_gas("get_edges", page.as_bytes()).unwrap();
    let (_, channels) = chain
        .view_with_gas("get_channels", page.as_bytes())
        .unwrap();
    let out = chain
        .call_json(
            &acc(a),
            "propose_channel",
            json!({"peer": acc(b), "terms": terms()}),
            1,
        )
        .unwrap();
    let propose = out.gas_burnt;
    let id: String = out.json().unwrap();
    let confirm = chain
        .call_json(&acc(b), "confirm_channel", json!({"id": id}), 1)
        .unwrap()
        .gas_burnt;
    [edges, channels, propose, confirm]
}

fn main() {
    let history: usize = std::env::var("POR_HISTORY")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let wasm = std::fs::read(por_chain::wasm::build_contract(&root).unwrap()).unwrap();
    let dir = std::env::temp_dir().join(format!("por-history-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut chain = LocalChain::open(
        &dir.join("chain.redb"),
        &wasm,
        "por.local",
        Clock::Manual(0),
    )
    .unwrap();
    chain.fund("por.local", 50 * NEAR).unwrap();
    let config = json!({"config": {"min_stake": NEAR.to_string(), "min_deposit": "1",
        "unbonding_ns": "1", "challenge_ns": "1", "sever_penalty": "1",
        "partition_slash_bps": 100, "network": "bench"}});
    chain.call_json("por.local", "new", config, 0).unwrap();
    for i in 0..NODES {
        chain.fund(&acc(i), 1_000 * NEAR).unwrap();
        chain
            .call_json(&acc(i), "storage_deposit", json!({}), 10 * NEAR)
            .unwrap();
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
        let hex: String = Keypair::from_seed(seed)
            .id()
            .0
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        chain
            .call_json(
                &acc(i),
                "register",
                json!({"key": hex, "addresses": []}),
                2 * NEAR,
            )
            .unwrap();
    }
    // A ring of live edges, the topology a node starts from.
    for i in 0..NODES / 2 {
        measure(&mut chain, i, i + NODES / 2);
    }
    let before = measure(&mut chain, 0, 1);
    let started = std::time::Instant::now();
    for k in 0..history {
        let (a, b) = (2 + k % (NODES - 2), 2 + (k + 1) % (NODES - 2));
        let (a, b) = if a == b { (a, 1) } else { (a, b) };
        let out = chain
            .call_json(
                &acc(a),
                "propose_channel",
                json!({"peer": acc(b), "terms": terms()}),
                1,
            )
            .unwrap();
        let id: String = out.json().unwrap();
        chain
            .call_json(&acc(b), "cancel_channel", json!({"id": id}), 0)
            .unwrap();
    }
    eprintln!(
        "{history} proposals made and cancelled in {:?}",
        started.elapsed()
    );
    let after = measure(&mut chain, 1, 2);
    let names = [
        "get_edges (page of 200)",
        "get_channels (page of 200)",
        "propose_channel",
        "confirm_channel",
    ];
    println!("| call | 0 settled channels | {history} settled channels |");
    println!("|---|---:|---:|");
    for ((name, b), a) in names.iter().zip(before).zip(after) {
        println!(
            "| `{name}` | {:.2} Tgas | {:.2} Tgas |",
            b as f64 / 1e12,
            a as f64 / 1e12
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
