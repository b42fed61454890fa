//! The node suite on a real NEAR node: a sandbox `neard` (`NEAR_SANDBOX_BIN_PATH`),
//! the contract put there by `por contract deploy`, and nodes whose chain is
//! `NearClient` over JSON-RPC, each with a NEAR account of its own created under the
//! sandbox's root account. The paper's §5.1 and §5.2 run on it, and so does the
//! watchtower. Without the variable these tests are reported as ignored, with the
//! reason; `docs/guide-node.md` says how a sandbox `neard` is built.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use por_chain::{AnyChain, Chain, ChainError, NearClient, NearConfig};
use por_node::demo::{Network, PAPER_TOPOLOGY};
use por_node::{Outcome, RequestOptions, TransportKind};
use por_protocol::types::ChannelId;
use por_protocol::Amount;
use por_testnet::scenario::Scenario;
use serde_json::{json, Value};

use common::Sandbox;

fn dir(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("por-near-{}-{name}", std::process::id()))
}

/// Waits (up to a minute: NEAR finality) until `check` holds.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..600 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not within a minute");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(near_sandbox),
    ignore = "NEAR_SANDBOX_BIN_PATH is not set: no NEAR sandbox neard on this machine (docs/guide-node.md says how to build one)"
)]
async fn paper_5_1_and_5_2_on_a_near_sandbox() {
    let sb = Sandbox::start("paper").await;
    let d = dir("paper");
    let contract = sb.deploy(&d);
    let net = Network::start_on(
        &sb.chain(&contract),
        Scenario::from_toml(PAPER_TOPOLOGY).unwrap(),
        &d.join("nodes"),
        TransportKind::Tcp,
        85,
    )
    .await
    .unwrap();
    // §5.1: Alex → Carol, answered within the path's 800 ms round trip.
    let (outcome, _) = net
        .run_request(
            &["Alex", "Alice", "Bob", "Carol"],
            "ping",
            Amount(1_000),
            Duration::from_millis(200),
        )
        .await
        .unwrap();
    let Outcome::Response {
        body, latency_ms, ..
    } = &outcome
    else {
        panic!("{outcome:?}")
    };
    assert_eq!(&body[..], b"Carol says: ping");
    assert!((640..=900).contains(latency_ms), "{latency_ms} ms");
    let b = net.balances(&Default::default()).await.unwrap();
    let get = |n: &str| b.iter().find(|x| x.name == n).unwrap().clone();
    assert_eq!(get("Alex").net, -30_600);
    assert_eq!(get("Alice").net, 10_200);
    assert_eq!(b.iter().map(|x| x.net).sum::<i128>(), 0);

    // §5.2: Eve offline; Bob severs Bob–Eve and the proof reaches Alex in time.
    net.node("Eve").unwrap().shutdown().await.unwrap();
    let bob_eve = net.route(&["Bob", "Eve"]).await.unwrap().channels[0];
    let (outcome, _) = net
        .run_request(
            &["Alex", "Alice", "Bob", "Eve", "Dave"],
            "ping",
            Amount(1_000),
            Duration::from_millis(500),
        )
        .await
        .unwrap();
    let Outcome::Proof {
        channel,
        latency_ms,
        ..
    } = &outcome
    else {
        panic!("{outcome:?}")
    };
    assert_eq!(*channel, bob_eve);
    assert!((600..=1100).contains(latency_ms), "{latency_ms} ms");
    // Bob's notice becomes final on NEAR: the edge leaves the topology, both endpoints
    // pay the penalty, and the split it makes ({Eve, Dave} against the rest) slashes
    // the smaller side, whose Eve pays Bob's penalty back (paper §2).
    eventually("the sever final on chain", || async {
        net.route(&["Bob", "Eve"]).await.is_err()
    })
    .await;
    let b = net.balances(&Default::default()).await.unwrap();
    let stake = |n: &str| b.iter().find(|x| x.name == n).unwrap().stake;
    let penalty: u128 = por_chain::local::dev_config()["sever_penalty"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let near = por_chain::local::NEAR;
    assert_eq!(stake("Bob"), 10 * near, "made whole by Eve");
    let eve = 10 * near - penalty;
    assert_eq!(stake("Eve"), eve - eve / 10 - penalty);
    assert_eq!(stake("Dave"), 10 * near - near);
    assert_eq!(b.iter().map(|x| x.net).sum::<i128>(), 0);
    net.shutdown().await;
    let _ = std::fs::remove_dir_all(&d);
}

/// Two nodes, one edge.
const PAIR: &str = r#"
name = "pair"
duration_ms = 1000
[[nodes]]
name = "Alice"
[[nodes]]
name = "Bob"
[[edges]]
a = "Alice"
b = "Bob"
latency_ms = 50
base_cost = 100
byte_cost = 1
sync_interval_ms = 500
max_late_fee_rate = 10
deposit_a = 1_000_000_000_000
deposit_b = 1_000_000_000_000
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(near_sandbox),
    ignore = "NEAR_SANDBOX_BIN_PATH is not set: no NEAR sandbox neard on this machine (docs/guide-node.md says how to build one)"
)]
async fn the_watchtower_challenges_an_old_close_on_a_near_sandbox() {
    let sb = Sandbox::start("watchtower").await;
    let d = dir("watchtower");
    let contract = sb.deploy(&d);
    let net = Network::start_on(
        &sb.chain(&contract),
        Scenario::from_toml(PAIR).unwrap(),
        &d.join("nodes"),
        TransportKind::Quic,
        100,
    )
    .await
    .unwrap();
    let (alice, bob) = (net.node("Alice").unwrap(), net.node("Bob").unwrap());
    for i in 0..3 {
        let out = alice
            .request(
                bob.id(),
                format!("request {i}").into_bytes(),
                RequestOptions::default(),
            )
            .await
            .unwrap();
        assert!(matches!(out, Outcome::Response { .. }), "{out:?}");
    }
    let s = bob.status().await.unwrap();
    let held = s.channels.iter().find(|c| c.peer == alice.id()).unwrap();
    let (channel, received, owed) = (held.id, held.received, held.balance);
    assert!(received > Amount::ZERO);
    // Alice closes with no state at all, with her own NEAR account's key.
    let config = NearConfig {
        rpc_url: sb.rpc_url.clone(),
        contract: contract.clone(),
    };
    let alice_chain = NearClient::new(&config, &d.join("nodes/alice.near-key.json")).unwrap();
    alice_chain.start_close(channel, &[]).await.unwrap();
    // Bob's watchtower challenges with what Alice signed to him.
    let viewer = AnyChain::Near(sb.root(&contract));
    let paid_ab = |c: Value| Amount(c["paid_ab"][1].as_str().unwrap().parse().unwrap());
    let view = |id: ChannelId| {
        let viewer = &viewer;
        async move {
            viewer
                .view("get_channel", json!({"id": id.0.to_string()}))
                .await
                .unwrap()
        }
    };
    eventually("Bob's challenge on chain", || async {
        paid_ab(view(channel).await) == received
    })
    .await;
    // After the period, the payout pays Bob everything he holds.
    let paid = loop {
        match viewer.finalize_close(channel).await {
            Ok(p) => break p,
            Err(ChainError::Aborted { message, .. }) if message.contains("challenge period") => {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => panic!("finalize: {e}"),
        }
    };
    assert_eq!(paid.1, owed);
    net.shutdown().await;
    let _ = std::fs::remove_dir_all(&d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(near_sandbox),
    ignore = "NEAR_SANDBOX_BIN_PATH is not set: no NEAR sandbox neard on this machine (docs/guide-node.md says how to build one)"
)]
async fn two_clients_of_one_key_do_not_lose_calls_to_each_others_nonces() {
    // A node and the CLI beside it sign with the same NEAR key: each client counts
    // nonces on its own, so their transactions collide. A collision is refused by
    // NEAR before it is applied, and the client sends it again with a fresh nonce.
    let sb = Sandbox::start("nonces").await;
    let d = dir("nonces");
    let contract = sb.deploy(&d);
    let key = d.join("shared.near-key.json");
    sb.root(&contract)
        .create_account_with_key_file("shared.test.near", 10 * por_chain::local::NEAR, &key)
        .await
        .unwrap();
    let config = NearConfig {
        rpc_url: sb.rpc_url.clone(),
        contract: contract.clone(),
    };
    let (a, b) = (
        NearClient::new(&config, &key).unwrap(),
        NearClient::new(&config, &key).unwrap(),
    );
    // Different amounts, so that the two clients never sign the very same
    // transaction (NEAR would take two identical transactions for one).
    let unit = por_chain::local::NEAR / 100;
    let each = |c: NearClient, amount: u128| async move {
        for _ in 0..4 {
            c.storage_deposit(Amount(amount)).await.unwrap();
        }
        c
    };
    let (a, _) = tokio::join!(each(a, unit), each(b, 2 * unit));
    // Eight deposits, none lost: the balance is their sum less the record's cost.
    let balance = a.storage_balance().await.unwrap();
    let total = 4 * unit + 4 * 2 * unit;
    assert!(
        balance.0 < total && balance.0 > total - unit,
        "{balance:?} of {total}"
    );
    let _ = std::fs::remove_dir_all(&d);
}
