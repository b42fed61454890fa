//! The real contract wasm on the embedded chain: every call goes through near-vm-runner
//! (wasmtime) with NEAR's host functions and gas metering.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;

use por_chain::local::{Clock, LocalChain};
use por_chain::ChainError;
use por_protocol::types::{
    ChannelId, ChannelUpdate, Memo, RequestId, SeverNotice, SeverReason, SignedSeverNotice,
    SignedUpdate,
};
use por_protocol::{wire, Amount, Deployment, Keypair};
use serde_json::{json, Value};

const NEAR: u128 = 1_000_000_000_000_000_000_000_000;
const SEC: u64 = 1_000_000_000;
const CONTRACT: &str = "por.local";

/// A scratch directory (removed when dropped) and the chain's database path in it.
fn tmp(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = common::scratch(name);
    let path = dir.path().join("chain.redb");
    (dir, path)
}

fn key(name: &str) -> Keypair {
    let mut seed = [0u8; 32];
    seed[..name.len()].copy_from_slice(name.as_bytes());
    Keypair::from_seed(seed)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn acc(n: &str) -> String {
    format!("{n}.local")
}

fn b64(bytes: &[u8]) -> String {
    por_chain::json::base64(bytes)
}

fn new_chain(path: &std::path::Path) -> LocalChain {
    let mut chain =
        LocalChain::open(path, common::wasm(), CONTRACT, Clock::Manual(1_000 * SEC)).unwrap();
    chain.fund(CONTRACT, 10 * NEAR).unwrap();
    let config = json!({"config": {
        "min_stake": (10 * NEAR).to_string(), "min_deposit": NEAR.to_string(),
        "unbonding_ns": (100 * SEC).to_string(), "challenge_ns": (60 * SEC).to_string(),
        "sever_penalty": (NEAR / 10).to_string(), "partition_slash_bps": 1000, "network": "test"}});
    chain.call_json(CONTRACT, "new", config, 0).unwrap();
    chain
}

fn register(chain: &mut LocalChain, n: &str, stake: u128) {
    chain.fund(&acc(n), 1_000 * NEAR).unwrap();
    // Callers pay for the storage they add: a balance for it first.
    chain
        .call_json(&acc(n), "storage_deposit", json!({}), NEAR / 10)
        .unwrap();
    chain
        .call_json(&acc(n), "register", json!({"key": hex(&key(n).id().0), "addresses": [format!("127.0.0.1:{}", 9000 + n.len())]}), stake)
        .unwrap();
}

fn open(chain: &mut LocalChain, x: &str, y: &str) -> u64 {
    let terms = json!({"latency_ms": 100, "base_cost": "10", "byte_cost": "1", "sync_interval_ms": 1000, "sync_phase_ms": 0, "max_late_fee_rate": "1000"});
    let id: String = chain
        .call_json(
            &acc(x),
            "propose_channel",
            json!({"peer": acc(y), "terms": terms}),
            5 * NEAR,
        )
        .unwrap()
        .json()
        .unwrap();
    chain
        .call_json(&acc(y), "confirm_channel", json!({"id": id}), 5 * NEAR)
        .unwrap();
    id.parse().unwrap()
}

fn update(payer: &str, payee: &str, channel: u64, seq: u64, cumulative: u128) -> String {
    let u = ChannelUpdate {
        channel: ChannelId(channel),
        payer: key(payer).id(),
        payee: key(payee).id(),
        seq,
        cumulative: Amount(cumulative),
        memo: Memo::Refund {
            request: RequestId([0; 16]),
            amount: Amount(1),
        },
    };
    b64(&wire::encode(&SignedUpdate::sign_alone(&key(payer), &dep(), u).unwrap()).unwrap())
}

/// The deployment the test contract binds signatures to.
fn dep() -> Deployment {
    Deployment::of("test", CONTRACT)
}

fn notice(severer: &str, peer: &str, channel: u64) -> String {
    let n = SeverNotice {
        channel: ChannelId(channel),
        severer: key(severer).id(),
        peer: key(peer).id(),
        reason: SeverReason::Unresponsive,
        at_ms: 0,
    };
    let sig = key(severer).sign(&dep(), &n).unwrap();
    b64(&wire::encode(&SignedSeverNotice { notice: n, sig }).unwrap())
}

fn stake(chain: &LocalChain, n: &str) -> u128 {
    let node: Value = chain
        .view_json("get_node", json!({"account": acc(n)}))
        .unwrap();
    node["stake"].as_str().unwrap().parse().unwrap()
}

#[test]
fn open_pay_close_adversarially_through_the_wasm() {
    let (_dir, path) = tmp("close");
    let mut chain = new_chain(&path);
    register(&mut chain, "alice", 100 * NEAR);
    register(&mut chain, "bob", 100 * NEAR);
    // 100 NEAR staked, 0.1 NEAR deposited for storage.
    assert_eq!(chain.balance(&acc("alice")), Some(900 * NEAR - NEAR / 10));
    let id = open(&mut chain, "alice", "bob");
    let start = chain
        .call_json(
            &acc("alice"),
            "start_close",
            json!({"id": id.to_string(), "updates": [update("bob", "alice", id, 2, NEAR)]}),
            0,
        )
        .unwrap();
    assert!(start.events().iter().any(|e| e["event"] == "close_started"));
    // Bob answers with Alice's newer payments; a stale one (paying Bob less) is
    // refused by the contract.
    chain
        .call_json(
            &acc("bob"),
            "challenge",
            json!({"id": id.to_string(), "updates": [update("alice", "bob", id, 5, 3 * NEAR)]}),
            0,
        )
        .unwrap();
    let err = chain
        .call_json(
            &acc("bob"),
            "challenge",
            json!({"id": id.to_string(), "updates": [update("alice", "bob", id, 4, 2 * NEAR)]}),
            0,
        )
        .unwrap_err();
    assert!(
        matches!(&err, ChainError::Aborted { message, .. } if message.contains("stale state")),
        "{err}"
    );
    let err = chain
        .call_json(
            &acc("bob"),
            "finalize_close",
            json!({"id": id.to_string()}),
            0,
        )
        .unwrap_err();
    assert!(err.to_string().contains("too early"), "{err}");
    chain.advance(61 * SEC);
    let fin = chain.call_json(
        &acc("carol"),
        "finalize_close",
        json!({"id": id.to_string()}),
        0,
    );
    assert!(
        matches!(fin, Err(ChainError::UnknownAccount(_))),
        "carol has no account"
    );
    let (a0, b0) = (
        chain.balance(&acc("alice")).unwrap(),
        chain.balance(&acc("bob")).unwrap(),
    );
    let fin = chain
        .call_json(
            &acc("bob"),
            "finalize_close",
            json!({"id": id.to_string()}),
            0,
        )
        .unwrap();
    // Alice: 5 + 1 - 3 = 3 NEAR; Bob: 5 + 3 - 1 = 7 NEAR, paid out of the contract.
    assert_eq!(
        fin.transfers,
        vec![(acc("alice"), 3 * NEAR), (acc("bob"), 7 * NEAR)]
    );
    assert_eq!(chain.balance(&acc("alice")).unwrap() - a0, 3 * NEAR);
    assert_eq!(chain.balance(&acc("bob")).unwrap() - b0, 7 * NEAR);
    assert!(fin.gas_burnt > 0 && fin.gas_burnt < 300_000_000_000_000);
}

#[test]
fn cooperative_close_pays_out_through_the_wasm() {
    let (_dir, path) = tmp("coop");
    let mut chain = new_chain(&path);
    register(&mut chain, "alice", 100 * NEAR);
    register(&mut chain, "bob", 100 * NEAR);
    let id = open(&mut chain, "alice", "bob");
    chain
        .call_json(
            &acc("alice"),
            "propose_close",
            json!({"id": id.to_string(), "updates": [update("bob", "alice", id, 2, NEAR)]}),
            0,
        )
        .unwrap();
    let (a0, b0) = (
        chain.balance(&acc("alice")).unwrap(),
        chain.balance(&acc("bob")).unwrap(),
    );
    let out = chain
        .call_json(
            &acc("bob"),
            "confirm_close",
            json!({"id": id.to_string(), "updates": [update("alice", "bob", id, 5, 3 * NEAR)]}),
            0,
        )
        .unwrap();
    // The method returns the payouts (a joint promise cannot be returned on NEAR).
    assert_eq!(
        out.json::<serde_json::Value>().unwrap(),
        json!([(3 * NEAR).to_string(), (7 * NEAR).to_string()])
    );
    assert_eq!(
        out.transfers,
        vec![(acc("alice"), 3 * NEAR), (acc("bob"), 7 * NEAR)]
    );
    assert_eq!(chain.balance(&acc("alice")).unwrap() - a0, 3 * NEAR);
    assert_eq!(chain.balance(&acc("bob")).unwrap() - b0, 7 * NEAR);
    assert!(out.events().iter().any(|e| e["event"] == "channel_closed"));
}

#[test]
fn refusals_change_nothing_and_say_why() {
    let (_dir, path) = tmp("refuse");
    let mut chain = new_chain(&path);
    chain.fund(&acc("alice"), 100 * NEAR).unwrap();
    let h = chain.height();
    let err = chain
        .call_json(
            &acc("alice"),
            "register",
            json!({"key": hex(&key("alice").id().0), "addresses": []}),
            NEAR,
        )
        .unwrap_err();
    assert!(err.to_string().contains("insufficient deposit"), "{err}");
    // Enough stake, but no storage balance for the records a registration adds.
    let err = chain
        .call_json(
            &acc("alice"),
            "register",
            json!({"key": hex(&key("alice").id().0), "addresses": []}),
            20 * NEAR,
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("call storage_deposit first"),
        "{err}"
    );
    assert_eq!(
        chain.balance(&acc("alice")),
        Some(100 * NEAR),
        "the deposit came back"
    );
    assert_eq!(chain.height(), h + 2, "a refused call still takes a block");
    let err = chain
        .call_json(&acc("alice"), "register", json!({}), 0)
        .unwrap_err();
    assert!(matches!(err, ChainError::Aborted { .. }), "{err}");
    let err = chain
        .call_json(
            &acc("alice"),
            "register",
            json!({"key": "00", "addresses": []}),
            200 * NEAR,
        )
        .unwrap_err();
    assert!(
        matches!(err, ChainError::InsufficientBalance { .. }),
        "{err}"
    );
}

#[test]
fn sever_and_partition_with_real_gas_and_events() {
    let (_dir, path) = tmp("sever");
    let mut chain = new_chain(&path);
    for n in ["alice", "bob"] {
        register(&mut chain, n, 100 * NEAR);
    }
    register(&mut chain, "carol", 20 * NEAR);
    open(&mut chain, "alice", "bob");
    let bc = open(&mut chain, "bob", "carol");
    // Anyone may submit Bob's notice: here Alice's transaction carries it.
    let out = chain
        .call_json(
            &acc("alice"),
            "sever",
            json!({"notice": notice("bob", "carol", bc)}),
            0,
        )
        .unwrap();
    let split: bool = out.json().unwrap();
    assert!(split, "carol is cut off");
    let events: Vec<String> = out
        .events()
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_string())
        .collect();
    for e in [
        "edge_severed",
        "node_disconnected",
        "penalties_reimbursed",
        "partition_checked",
    ] {
        assert!(events.contains(&e.to_string()), "{e} missing: {events:?}");
    }
    assert_eq!(stake(&chain, "bob"), 100 * NEAR, "bob was reimbursed");
    let after = 20 * NEAR - NEAR / 10;
    assert_eq!(stake(&chain, "carol"), after - after / 10 - NEAR / 10);
    println!(
        "sever + partition check on a 3-node graph: {} Tgas",
        out.gas_burnt as f64 / 1e12
    );
    // A notice for Alice-Bob claiming Alice severs, but signed by Bob: refused by the
    // contract's ed25519 check.
    let n = SeverNotice {
        channel: ChannelId(1),
        severer: key("alice").id(),
        peer: key("bob").id(),
        reason: SeverReason::Operator,
        at_ms: 0,
    };
    let forged = SignedSeverNotice {
        sig: key("bob").sign(&dep(), &n).unwrap(),
        notice: n,
    };
    let err = chain
        .call_json(
            &acc("bob"),
            "sever",
            json!({"notice": b64(&wire::encode(&forged).unwrap())}),
            0,
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("bad signature on sever notice"),
        "{err}"
    );
}

#[test]
fn state_survives_a_restart() {
    let (_dir, path) = tmp("restart");
    {
        let mut chain = new_chain(&path);
        register(&mut chain, "alice", 100 * NEAR);
        register(&mut chain, "bob", 100 * NEAR);
        open(&mut chain, "alice", "bob");
        // new, two storage deposits and registrations, propose, confirm: one block
        // each (funding is free).
        assert_eq!(chain.height(), 7);
    }
    let chain = LocalChain::open(&path, common::wasm(), CONTRACT, Clock::Manual(0)).unwrap();
    assert!(chain.initialised());
    assert_eq!(chain.height(), 7);
    assert_eq!(stake(&chain, "alice"), 100 * NEAR);
    let edges: Vec<Value> = chain
        .view_json("get_edges", json!({"from": 0, "limit": 10}))
        .unwrap();
    assert_eq!(edges.len(), 1);
    assert_eq!(
        chain.balance(&acc("alice")),
        Some(1_000 * NEAR - 100 * NEAR - 5 * NEAR - NEAR / 10)
    );
    let center: Option<String> = chain.view_json("get_center", json!({})).unwrap();
    assert!(center.is_some());
    // The events are durable too, in block order, and can be followed from a height.
    let all = chain.events_since(0, 100).unwrap();
    let names: Vec<&str> = all
        .iter()
        .map(|(_, e)| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "node_registered",
            "node_registered",
            "channel_proposed",
            "channel_opened"
        ]
    );
    assert!(all.windows(2).all(|w| w[0].0 <= w[1].0));
    let later = chain.events_since(all[2].0, 100).unwrap();
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].1["event"], "channel_opened");
}

/// Views of one state are answered once: the contract runs a view again only after a
/// call changed the state, and then the answer is the new state's.
#[test]
fn views_of_one_state_run_once_and_a_call_makes_them_fresh() {
    let (_dir, path) = tmp("view-cache");
    let mut chain = new_chain(&path);
    register(&mut chain, "alice", 10 * NEAR);
    let nodes = |c: &LocalChain| -> Vec<serde_json::Value> {
        c.view_json("get_nodes", json!({"from": 0, "limit": 100}))
            .unwrap()
    };
    let before = chain.views_executed();
    assert_eq!(nodes(&chain).len(), 1);
    assert_eq!(nodes(&chain).len(), 1);
    assert_eq!(
        chain.views_executed(),
        before + 1,
        "the second view ran the contract again"
    );
    // Other arguments are another view.
    let none: Vec<serde_json::Value> = chain
        .view_json("get_nodes", json!({"from": 1, "limit": 100}))
        .unwrap();
    assert!(none.is_empty());
    assert_eq!(chain.views_executed(), before + 2);
    register(&mut chain, "bob", 10 * NEAR);
    assert_eq!(nodes(&chain).len(), 2, "a stale answer after a call");
    assert_eq!(chain.views_executed(), before + 3);
}
