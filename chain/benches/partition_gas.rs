//! Gas of `sever` (with its partition check) on large graphs, measured on the embedded
//! chain running the real contract wasm.
//!
//! Two halves of N/2 nodes each (a random tree plus N/4 extra edges per half) joined by
//! one bridge. Severing an edge inside a half leaves the graph connected (the search
//! meets early); severing the bridge splits it in two (the search must exhaust both
//! halves, and the lighter half is slashed). `cargo bench -p por-chain --bench
//! partition_gas` (env `POR_GAS_NODES`, default "100,1000").
#![allow(missing_docs, clippy::unwrap_used)]

use std::path::PathBuf;

use por_chain::local::{Clock, LocalChain};
use por_protocol::types::{ChannelId, SeverNotice, SeverReason, SignedSeverNotice};
use por_protocol::{wire, Deployment, Keypair};
use serde_json::json;

const NEAR: u128 = 1_000_000_000_000_000_000_000_000;

fn key(i: usize) -> Keypair {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
    Keypair::from_seed(seed)
}

fn acc(i: usize) -> String {
    format!("n{i}.local")
}

fn run(n: usize, wasm: &[u8]) {
    let dir = std::env::temp_dir().join(format!("por-gas-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut chain =
        LocalChain::open(&dir.join("chain.redb"), wasm, "por.local", Clock::Manual(0)).unwrap();
    chain.fund("por.local", 10 * NEAR).unwrap();
    let config = json!({"config": {"min_stake": NEAR.to_string(), "min_deposit": "1",
        "unbonding_ns": "1", "challenge_ns": "1", "sever_penalty": (NEAR / 100).to_string(),
        "partition_slash_bps": 100, "network": "test"}});
    chain.call_json("por.local", "new", config, 0).unwrap();
    let mut register_gas = 0;
    for i in 0..n {
        chain.fund(&acc(i), 1_000 * NEAR).unwrap();
        let hex: String = key(i).id().0.iter().map(|b| format!("{b:02x}")).collect();
        // Stakes differ so that the two halves do too.
        let stake = (2 + (i % 7) as u128) * NEAR;
        chain
            .call_json(&acc(i), "storage_deposit", json!({}), NEAR / 10)
            .unwrap();
        let out = chain
            .call_json(
                &acc(i),
                "register",
                json!({"key": hex, "addresses": [format!("10.0.0.{}:9000", i % 250)]}),
                stake,
            )
            .unwrap();
        register_gas = register_gas.max(out.gas_burnt);
    }
    let terms = json!({"latency_ms": 50, "base_cost": "1", "byte_cost": "0", "sync_interval_ms": 1000, "sync_phase_ms": 0, "max_late_fee_rate": "1"});
    let mut rng = 0x2545F4914F6CDD1Du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut edges = std::collections::BTreeSet::new();
    let half = n / 2;
    for (lo, hi) in [(0, half), (half, n)] {
        for i in lo + 1..hi {
            let j = lo + (next() as usize) % (i - lo);
            edges.insert((j, i));
        }
        for _ in 0..(hi - lo) / 2 {
            let (a, b) = (
                lo + (next() as usize) % (hi - lo),
                lo + (next() as usize) % (hi - lo),
            );
            if a != b {
                edges.insert((a.min(b), a.max(b)));
            }
        }
    }
    let bridge = (0, half);
    edges.insert(bridge);
    let mut ids = std::collections::BTreeMap::new();
    let mut confirm_gas = 0;
    for &(a, b) in &edges {
        let id: String = chain
            .call_json(
                &acc(a),
                "propose_channel",
                json!({"peer": acc(b), "terms": terms}),
                1,
            )
            .unwrap()
            .json()
            .unwrap();
        let out = chain
            .call_json(&acc(b), "confirm_channel", json!({"id": id}), 1)
            .unwrap();
        confirm_gas = confirm_gas.max(out.gas_burnt);
        ids.insert((a, b), id.parse::<u64>().unwrap());
    }
    let sever = |chain: &mut LocalChain, (a, b): (usize, usize)| {
        let n = SeverNotice {
            channel: ChannelId(ids[&(a, b)]),
            severer: key(a).id(),
            peer: key(b).id(),
            reason: SeverReason::Unresponsive,
            at_ms: 0,
        };
        let sig = key(a)
            .sign(&Deployment::of("test", "por.local"), &n)
            .unwrap();
        let bytes = wire::encode(&SignedSeverNotice { notice: n, sig }).unwrap();
        let out = chain
            .call_json(&acc(a), "sever", json!({"notice": b64(&bytes)}), 0)
            .unwrap();
        (out.json::<bool>().unwrap(), out.gas_burnt)
    };
    // An extra (non-tree) edge inside the first half: no split.
    let inner = *edges
        .iter()
        .find(|(a, b)| {
            *b < half && edges.iter().filter(|(x, y)| x == a || y == a).count() > 1 && *a != 0
        })
        .unwrap();
    let (split_inner, gas_inner) = sever(&mut chain, inner);
    let (split_bridge, gas_bridge) = sever(&mut chain, bridge);
    println!(
        "{n:>5} nodes, {:>5} edges: register <= {:.2} Tgas, confirm <= {:.2} Tgas | sever, still connected: {:.2} Tgas (split: {split_inner}) | sever the bridge, {n}/2 nodes cut off: {:.2} Tgas (split: {split_bridge})",
        edges.len(),
        register_gas as f64 / 1e12,
        confirm_gas as f64 / 1e12,
        gas_inner as f64 / 1e12,
        gas_bridge as f64 / 1e12,
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn b64(bytes: &[u8]) -> String {
    por_chain::json::base64(bytes)
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let wasm = std::fs::read(por_chain::wasm::build_contract(&root).unwrap()).unwrap();
    let sizes = std::env::var("POR_GAS_NODES").unwrap_or_else(|_| "100,1000".into());
    for n in sizes.split(',').filter_map(|s| s.trim().parse().ok()) {
        run(n, &wasm);
    }
}
