//! Re-routing after a proof, on real nodes over TCP: the cheapest route to the server
//! goes through a relay that is offline; the hop before it severs that edge and sends
//! the proof back; the client's SDK routes around it and gets the response.
#![allow(clippy::unwrap_used)]

use por_node::demo::Network;
use por_node::{Outcome, RequestOptions, TransportKind, DEFAULT_RESPONSE_LIMIT};
use por_protocol::NodeId;
use por_testnet::scenario::Scenario;

const TOPOLOGY: &str = r#"
name = "reroute"
description = "A reaches S cheaply through B and X, or dearly through C."
seed = 1
duration_ms = 1000

[[nodes]]
name = "A"
[[nodes]]
name = "B"
sever = "immediate"
[[nodes]]
name = "X"
[[nodes]]
name = "C"
[[nodes]]
name = "S"

[[edges]]
a = "A"
b = "B"
latency_ms = 30
base_cost = 100
sync_interval_ms = 1000
max_late_fee_rate = 1000
deposit_a = 1_000_000_000
deposit_b = 1_000_000_000
[[edges]]
a = "B"
b = "X"
latency_ms = 30
base_cost = 100
sync_interval_ms = 1000
max_late_fee_rate = 1000
deposit_a = 1_000_000_000
deposit_b = 1_000_000_000
[[edges]]
a = "X"
b = "S"
latency_ms = 30
base_cost = 100
sync_interval_ms = 1000
max_late_fee_rate = 1000
deposit_a = 1_000_000_000
deposit_b = 1_000_000_000
[[edges]]
a = "A"
b = "C"
latency_ms = 30
base_cost = 5000
sync_interval_ms = 1000
max_late_fee_rate = 1000
deposit_a = 1_000_000_000
deposit_b = 1_000_000_000
[[edges]]
a = "C"
b = "S"
latency_ms = 30
base_cost = 5000
sync_interval_ms = 1000
max_late_fee_rate = 1000
deposit_a = 1_000_000_000
deposit_b = 1_000_000_000
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_sends_the_client_around_the_severed_edge() {
    let dir = std::env::temp_dir().join(format!("por-reroute-{}", std::process::id()));
    let net = Network::start(
        Scenario::from_toml(TOPOLOGY).unwrap(),
        &dir,
        TransportKind::Tcp,
        90,
    )
    .await
    .unwrap();
    let id = |name: &str| -> NodeId {
        *net.names
            .iter()
            .find(|(_, n)| n.as_str() == name)
            .unwrap()
            .0
    };
    let a = net.node("A").unwrap();
    // The cheapest route is A–B–X–S.
    let quote = a
        .quote(id("S"), 4, DEFAULT_RESPONSE_LIMIT, 60_000, 2)
        .await
        .unwrap();
    assert_eq!(
        quote[0].route.nodes,
        vec![id("A"), id("B"), id("X"), id("S")]
    );
    let bx = net.route(&["B", "X"]).await.unwrap().channels[0];

    net.node("X").unwrap().shutdown().await.unwrap();
    let outcome = a
        .request(id("S"), b"ping".to_vec(), RequestOptions::default())
        .await
        .unwrap();
    let Outcome::Response {
        body,
        route,
        proofs,
        ..
    } = &outcome
    else {
        panic!("{outcome:?}")
    };
    assert_eq!(&body[..], b"S says: ping");
    assert_eq!(proofs, &vec![bx], "one proof, for B–X");
    assert_eq!(route.nodes, vec![id("A"), id("C"), id("S")]);

    // With re-routing off, a request pinned to the stale route gets the proof as
    // its outcome (or is refused before anything is paid, if B–X is already gone
    // from the client's topology).
    let stale = por_protocol::types::Route {
        nodes: vec![id("A"), id("B"), id("X"), id("S")],
        channels: vec![
            net.route(&["A", "B"]).await.unwrap().channels[0],
            bx,
            net.route(&["X", "S"]).await.unwrap().channels[0],
        ],
    };
    let outcome = a
        .request(
            id("S"),
            b"ping".to_vec(),
            RequestOptions {
                route: Some(stale),
                max_reroutes: 0,
                ..RequestOptions::default()
            },
        )
        .await;
    match outcome {
        Err(e) => assert!(e.to_string().contains("sever"), "{e}"),
        Ok(Outcome::Proof { channel, .. }) => assert_eq!(channel, bx),
        Ok(other) => panic!("{other:?}"),
    }
    net.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
