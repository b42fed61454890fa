//! The watchtower, end to end on the embedded chain (the contract's wasm, wall clock):
//! Bob serves Alice and Carol, who each then start an adversarial close with no state
//! at all (so that the chain would pay Bob nothing of what they paid him). Bob's node
//! challenges each close with the latest update its peer signed to him: Alice's while
//! he is running, Carol's after he was down when it began. Both payouts pay Bob in
//! full; the closing channels stop carrying requests at once; and after a restart the
//! closed channel stays closed.
#![allow(clippy::unwrap_used)]

#[path = "support/chain.rs"]
mod chain;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use por_chain::local::{LocalChain, NEAR};
use por_chain::{AnyChain, Chain, ChainError, LocalClient};
use por_node::{handler_fn, NodeBuilder, NodeHandle, Outcome, RequestOptions};
use por_protocol::channel::CloseStage;
use por_protocol::types::{ChannelId, EdgeTerms};
use por_protocol::{Amount, Keypair, NodeId};
use serde_json::json;

/// The challenge period: long enough for a node to see the close and answer it.
const CHALLENGE_NS: u64 = 6_000_000_000;

fn terms() -> EdgeTerms {
    EdgeTerms {
        latency_ms: 50,
        base_cost: Amount(100),
        byte_cost: Amount(1),
        sync_interval_ms: 500,
        sync_phase_ms: 0,
        max_late_fee_rate: Amount(10),
        bandwidth: EdgeTerms::DEFAULT_BANDWIDTH,
    }
}

type Shared = Arc<Mutex<LocalChain>>;

fn client(chain: &Shared, name: &str) -> AnyChain {
    AnyChain::Local(LocalClient::new(chain.clone(), &format!("{name}.local")))
}

async fn start(chain: &Shared, dir: &Path, name: &str, seed: u8) -> NodeHandle {
    NodeBuilder::new(
        Keypair::from_seed([seed; 32]),
        client(chain, name),
        dir.join(name),
    )
    .register(Amount(10 * NEAR))
    .chain_poll(Duration::from_millis(50))
    .handler(handler_fn(|req| async move { req.body }))
    .start()
    .await
    .unwrap()
}

async fn connected(node: &NodeHandle, peer: NodeId) {
    for _ in 0..200 {
        let s = node.status().await.unwrap();
        if s.channels.iter().any(|c| c.peer == peer && c.connected) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("never connected to {peer}");
}

async fn serve(client: &NodeHandle, server: &NodeHandle, n: usize) {
    for i in 0..n {
        let out = client
            .request(
                server.id(),
                format!("request {i}").into_bytes(),
                RequestOptions::default(),
            )
            .await
            .unwrap();
        assert!(matches!(out, Outcome::Response { .. }), "{out:?}");
    }
}

/// `node`'s channel with `peer`: its id, what it received on it and its balance
/// (deposit + received - paid: what a close on the latest states pays it).
async fn held(node: &NodeHandle, peer: NodeId) -> (ChannelId, Amount, Amount) {
    let s = node.status().await.unwrap();
    let c = s.channels.iter().find(|c| c.peer == peer).unwrap();
    (c.id, c.received, c.balance)
}

async fn close_stage(node: &NodeHandle, channel: ChannelId) -> CloseStage {
    let s = node.status().await.unwrap();
    s.channels.iter().find(|c| c.id == channel).unwrap().close
}

/// The contract's record of what `channel`'s `a` paid its `b`.
async fn held_ab(chain: &AnyChain, channel: ChannelId) -> Amount {
    let c = chain
        .view("get_channel", json!({"id": channel.0.to_string()}))
        .await
        .unwrap();
    Amount(c["paid_ab"][1].as_str().unwrap().parse().unwrap())
}

/// Waits until the contract holds `want` as paid on `channel`, as Bob's challenge
/// makes it; panics if the challenge period ends first.
async fn challenged_to(chain: &AnyChain, channel: ChannelId, want: Amount) {
    let deadline = tokio::time::Instant::now() + Duration::from_nanos(CHALLENGE_NS)
        - Duration::from_millis(500);
    while held_ab(chain, channel).await != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{channel} was not challenged within its period"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Finalizes `channel` once its period is over; returns the payouts `(a, b)`.
async fn finalized(chain: &AnyChain, channel: ChannelId) -> (Amount, Amount) {
    loop {
        match chain.finalize_close(channel).await {
            Ok(paid) => return paid,
            Err(ChainError::Aborted { message, .. }) if message.contains("challenge period") => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("finalizing {channel}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closes_holding_old_states_are_challenged_live_and_after_a_restart() {
    let dir = std::env::temp_dir().join(format!("por-watchtower-{}", std::process::id()));
    let chain: Shared = chain::local_chain(
        &dir,
        &["alice.local", "bob.local", "carol.local"],
        100 * NEAR,
        |config| config["challenge_ns"] = CHALLENGE_NS.to_string().into(),
    );

    let bob = start(&chain, &dir, "bob", 2).await;
    let alice = start(&chain, &dir, "alice", 1).await;
    let carol = start(&chain, &dir, "carol", 3).await;
    for name in ["alice", "carol"] {
        let id = client(&chain, name)
            .propose_channel("bob.local", &terms(), Amount(NEAR))
            .await
            .unwrap();
        client(&chain, "bob")
            .confirm_channel(id, Amount(NEAR))
            .await
            .unwrap();
    }
    connected(&alice, bob.id()).await;
    connected(&carol, bob.id()).await;
    serve(&alice, &bob, 3).await;
    serve(&carol, &bob, 2).await;
    let (with_alice, from_alice, owed_by_alice) = held(&bob, alice.id()).await;
    let (with_carol, from_carol, owed_by_carol) = held(&bob, carol.id()).await;
    assert!(from_alice > Amount::ZERO && from_carol > Amount::ZERO);

    // Alice closes with no state: the chain holds 0 paid to Bob until he challenges.
    client(&chain, "alice")
        .start_close(with_alice, &[])
        .await
        .unwrap();
    let anyone = client(&chain, "carol");
    challenged_to(&anyone, with_alice, from_alice).await;
    assert_eq!(close_stage(&bob, with_alice).await, CloseStage::Closing);
    // The closing channel carries no more requests.
    let after = alice
        .request(bob.id(), b"more".to_vec(), RequestOptions::default())
        .await;
    assert!(!matches!(after, Ok(Outcome::Response { .. })), "{after:?}");
    // Bob is paid everything Alice paid him, less what he paid her (late fees, whose
    // latest state Alice's own watchtower submits).
    let (to_alice, to_bob) = finalized(&anyone, with_alice).await;
    assert_eq!(to_bob, owed_by_alice);
    assert_eq!(to_alice.0 + to_bob.0, 2 * NEAR);
    for _ in 0..200 {
        if close_stage(&bob, with_alice).await == CloseStage::Closed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(close_stage(&bob, with_alice).await, CloseStage::Closed);

    // Bob is down when Carol closes with no state; back up, he challenges in time.
    bob.shutdown().await.unwrap();
    drop(bob);
    client(&chain, "carol")
        .start_close(with_carol, &[])
        .await
        .unwrap();
    assert_eq!(held_ab(&anyone, with_carol).await, Amount::ZERO);
    let bob = start(&chain, &dir, "bob", 2).await;
    challenged_to(&anyone, with_carol, from_carol).await;
    let (_, to_bob) = finalized(&anyone, with_carol).await;
    assert_eq!(to_bob, owed_by_carol);
    // After the restart, Alice's closed channel is still closed and carries nothing.
    assert_eq!(close_stage(&bob, with_alice).await, CloseStage::Closed);
    let s = bob.status().await.unwrap();
    assert!(s
        .channels
        .iter()
        .filter(|c| c.id == with_alice)
        .all(|c| c.severed));
    bob.shutdown().await.unwrap();
    alice.shutdown().await.unwrap();
    carol.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
