//! Bad input at a running node: a neighbour (Mallory, driven by hand over a real TCP
//! connection) sends a forged payment, a replayed state, garbage and an oversized
//! frame. The forgery, the garbage and the oversized frame cost her the connection;
//! the replay is refused and pays nothing twice. Alice, another neighbour, is served
//! throughout.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use por_chain::local::{dev_config, Clock, LocalChain, NEAR};
use por_chain::{AnyChain, Chain, LocalClient};
use por_node::{handler_fn, NodeBuilder, NodeHandle, Outcome, RequestOptions};
use por_protocol::engine::Event;
use por_protocol::messages::{self, Message};
use por_protocol::testing::TestNode;
use por_protocol::types::{EdgeTerms, Route, SeverReason};
use por_protocol::{Amount, EngineConfig, Keypair, Time};
use por_transport::tcp::TcpTransport;
use por_transport::{Connection, Transport, TransportConfig};

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

async fn alice_is_served(alice: &NodeHandle, bob: &NodeHandle) {
    let out = alice
        .request(
            bob.id(),
            b"still there?".to_vec(),
            RequestOptions::default(),
        )
        .await
        .unwrap();
    let Outcome::Response { body, .. } = out else {
        panic!("{out:?}")
    };
    assert_eq!(body, b"still there?");
}

async fn received_from(bob: &NodeHandle, peer: por_protocol::NodeId) -> Amount {
    let s = bob.status().await.unwrap();
    s.channels.iter().find(|c| c.peer == peer).unwrap().received
}

/// Waits until the connection is closed by the other side.
async fn closed_by_peer(conn: &impl Connection) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, conn.recv()).await {
            Ok(Ok(_)) => continue,
            Ok(Err(_)) => return true,
            Err(_) => return false,
        }
    }
}

async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// `promtool check metrics` on an exposition (its HTTP head cut off), where promtool
/// is installed (`.ci/run` installs it; `POR_REQUIRE_PROMTOOL=1` makes its absence
/// a failure).
fn promtool_accepts(response: &str) {
    use std::io::Write as _;
    let body = response.split_once("\r\n\r\n").map_or(response, |(_, b)| b);
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        assert!(
            std::env::var_os("POR_REQUIRE_PROMTOOL").is_none(),
            "promtool is required (POR_REQUIRE_PROMTOOL) but not installed"
        );
        eprintln!(
            "SKIPPED promtool check metrics: promtool not installed (apt-get install prometheus)"
        );
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn now() -> Time {
    por_node::now()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_neighbour_is_dropped_and_everyone_else_is_served() {
    let dir = std::env::temp_dir().join(format!("por-bad-input-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let wasm = std::fs::read(por_chain::wasm::build_contract(&workspace).unwrap()).unwrap();
    let mut local =
        LocalChain::open(&dir.join("chain.redb"), &wasm, "por.local", Clock::Wall).unwrap();
    let mut config = dev_config();
    config["min_deposit"] = "1".into();
    local.ensure_initialised(config).unwrap();
    for a in ["alice.local", "bob.local", "mallory.local"] {
        local.fund(a, 100 * NEAR).unwrap();
    }
    let chain = std::sync::Arc::new(std::sync::Mutex::new(local));
    let client = |a: &str| AnyChain::Local(LocalClient::new(chain.clone(), a));
    let start = |name: &str, seed: u8| {
        NodeBuilder::new(
            Keypair::from_seed([seed; 32]),
            client(&format!("{name}.local")),
            dir.join(name),
        )
        .register(Amount(10 * NEAR))
        .chain_poll(Duration::from_millis(50))
        .watch_after(Duration::from_millis(300))
        .metrics("127.0.0.1:0")
        .handler(handler_fn(|req| async move { req.body }))
        .start()
    };
    let bob = start("bob", 2).await.unwrap();

    let alice = start("alice", 1).await.unwrap();
    let mkey = Keypair::from_seed([3; 32]);
    let mallory = LocalClient::new(chain.clone(), "mallory.local");
    mallory
        .register(mkey.id(), vec![], Amount(10 * NEAR))
        .await
        .unwrap();
    for c in [client("alice.local"), client("mallory.local")] {
        let id = c
            .propose_channel("bob.local", &terms(), Amount(NEAR))
            .await
            .unwrap();
        client("bob.local")
            .confirm_channel(id, Amount(NEAR))
            .await
            .unwrap();
    }
    // Mallory's own engine, knowing the edges.
    let snap = mallory.snapshot().await.unwrap();
    let mut mallory_node = TestNode::for_deployment(
        EngineConfig::default(),
        mkey.clone(),
        mallory.deployment().await.unwrap(),
        now(),
    );
    mallory_node.open(&snap.edges, now());
    let to_bob = snap
        .edges
        .iter()
        .find(|e| e.a == mkey.id() || e.b == mkey.id())
        .unwrap()
        .id;
    // Wait for Alice and Bob to connect, then check Alice is served.
    for _ in 0..100 {
        if alice
            .status()
            .await
            .unwrap()
            .channels
            .iter()
            .any(|c| c.connected)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    alice_is_served(&alice, &bob).await;

    let big = TransportConfig {
        max_frame_len: 4 << 20,
        ..TransportConfig::default()
    };
    let transport = TcpTransport::new(&mkey, big).unwrap();
    let dial = || async {
        let bob_has_mallory = || async {
            bob.status()
                .await
                .unwrap()
                .channels
                .iter()
                .any(|c| c.peer == mkey.id() && c.connected)
        };
        for _ in 0..100 {
            // Bob keeps Mallory's connection once he has seen the channel on chain (a
            // handshake can complete before he has, and he then closes it): wait until
            // he reports her connected.
            if let Ok(c) = transport.dial(bob.address(), bob.id()).await {
                for _ in 0..20 {
                    if bob_has_mallory().await {
                        return c;
                    }
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("Bob never kept a connection from Mallory")
    };
    // Pumps Mallory's engine over `conn` until `done` sees an event it wants.
    async fn pump(
        node: &mut TestNode,
        conn: &impl Connection,
        mut done: impl FnMut(&Event) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            for t in node.flush() {
                conn.send(0, Bytes::from(messages::encode_frame(&t.message).unwrap()))
                    .await
                    .unwrap();
            }
            while let Some(e) = node.engine.poll_event() {
                if done(&e) {
                    return true;
                }
            }
            match tokio::time::timeout_at(deadline, conn.recv()).await {
                Ok(Ok((_, frame))) => {
                    let _ = node
                        .engine
                        .handle_frame(conn.peer(), &frame, por_node::now());
                }
                _ => return false,
            }
        }
    }

    // 1. An honest request from Mallory is served and paid once.
    let conn = dial().await;
    mallory_node.engine.peer_connected(bob.id(), now());
    let route = Route {
        nodes: vec![mkey.id(), bob.id()],
        channels: vec![to_bob],
    };
    mallory_node
        .engine
        .send_request(route.clone(), b"hello".to_vec(), 64, Amount(1), now())
        .unwrap();
    let frames: Vec<Message> = mallory_node
        .flush()
        .into_iter()
        .map(|t| t.message)
        .collect();
    let valid = frames
        .iter()
        .find(|m| matches!(m, Message::Request(_)))
        .unwrap()
        .clone();
    for m in &frames {
        conn.send(0, Bytes::from(messages::encode_frame(m).unwrap()))
            .await
            .unwrap();
    }
    assert!(
        pump(&mut mallory_node, &conn, |e| matches!(
            e,
            Event::ResponseDelivered { .. }
        ))
        .await
    );
    let paid_once = received_from(&bob, mkey.id()).await;
    // 100 + 1 per byte of the 5-byte body and the 64 bytes bought.
    assert_eq!(paid_once, Amount(169));

    // 2. Replaying that payment: refused, nothing paid twice, the connection stays.
    conn.send(0, Bytes::from(messages::encode_frame(&valid).unwrap()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(received_from(&bob, mkey.id()).await, paid_once);
    alice_is_served(&alice, &bob).await;

    // 3. A forged payment (signature altered): Mallory is dropped.
    mallory_node
        .engine
        .send_request(route.clone(), b"forged".to_vec(), 64, Amount(1), now())
        .unwrap();
    let mut forged = None;
    for t in mallory_node.flush() {
        if let Message::Request(mut r) = t.message {
            r.payment.sig.0[7] ^= 0x40;
            forged = Some(Message::Request(r));
        }
    }
    let dropped_before = bob.metrics().peers_dropped.get();
    conn.send(
        0,
        Bytes::from(messages::encode_frame(&forged.unwrap()).unwrap()),
    )
    .await
    .unwrap();
    assert!(closed_by_peer(&conn).await, "Bob drops a forger");
    assert_eq!(bob.metrics().peers_dropped.get(), dropped_before + 1);
    assert_eq!(received_from(&bob, mkey.id()).await, paid_once);
    alice_is_served(&alice, &bob).await;

    // 4. Garbage: dropped.
    let conn = dial().await;
    conn.send(0, Bytes::from_static(b"\x00\x01not a por frame at all"))
        .await
        .unwrap();
    assert!(
        closed_by_peer(&conn).await,
        "Bob drops a peer sending garbage"
    );
    alice_is_served(&alice, &bob).await;

    // 5. An oversized frame (Mallory's transport allows 4 MiB; Bob's does not).
    let conn = dial().await;
    let _ = conn.send(0, Bytes::from(vec![0u8; 2 << 20])).await;
    assert!(
        closed_by_peer(&conn).await,
        "Bob drops a peer sending oversized frames"
    );
    alice_is_served(&alice, &bob).await;
    assert_eq!(received_from(&bob, mkey.id()).await, paid_once);

    // The metrics endpoint tells the operator what happened.
    let metrics = http_get(bob.metrics_address().unwrap(), "/metrics").await;
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    // The forgery and the garbage (the transport refuses the oversized frame before
    // the engine sees it); five requests from Alice and one from Mallory.
    assert!(metrics.contains("por_peers_dropped_total 2"), "{metrics}");
    assert!(metrics.contains("por_requests_served_total 6"), "{metrics}");
    assert!(
        metrics.contains("# TYPE por_client_latency_seconds histogram"),
        "{metrics}"
    );
    promtool_accepts(&metrics);
    // The map of Bob's neighbourhood: Bob, Alice and Mallory, and their channels.
    let map = http_get(bob.metrics_address().unwrap(), "/map/state").await;
    let (head, body) = map.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{map}");
    let state: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(state["scope"], "node");
    assert_eq!(state["nodes"].as_array().unwrap().len(), 3, "{state}");
    assert!(state["channels"].as_array().unwrap().len() >= 2, "{state}");
    assert!(http_get(bob.metrics_address().unwrap(), "/map")
        .await
        .contains("por network map"));
    assert!(http_get(bob.metrics_address().unwrap(), "/nope")
        .await
        .starts_with("HTTP/1.1 404"));

    // 6. Mallory severs her edge and tells Bob, but never submits her notice: Bob, who
    // holds it, makes it final on chain himself once it is overdue there.
    let conn = dial().await;
    mallory_node.engine.peer_connected(bob.id(), now());
    mallory_node
        .engine
        .sever(to_bob, SeverReason::Operator, now())
        .unwrap();
    for t in mallory_node.flush() {
        let _ = conn
            .send(0, Bytes::from(messages::encode_frame(&t.message).unwrap()))
            .await;
    }
    let never_submitted = mallory_node.chain_actions();
    assert_eq!(never_submitted.len(), 1, "{never_submitted:?}");
    let mut severed = false;
    for _ in 0..200 {
        let snap = mallory.snapshot().await.unwrap();
        if !snap.edges.iter().any(|e| e.id == to_bob) {
            severed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(severed, "Bob submits the notice Mallory kept to herself");
    let events = mallory.events_since(0).await.unwrap();
    let notice = events
        .events
        .iter()
        .find_map(|(_, e)| por_chain::json::sever_notice_of(e))
        .unwrap();
    assert_eq!(
        (notice.notice.channel, notice.notice.severer),
        (to_bob, mkey.id())
    );

    alice.shutdown().await.unwrap();
    bob.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
