//! Bad input at a running node: a neighbour (Mallory, driven by hand over a real TCP
//! connection) sends a forged payment, a replayed state, garbage and an oversized
//! frame. The forgery, the garbage and the oversized frame cost her the connection;
//! the replay is refused and pays nothing twice. Alice, another neighbour, is served
//! throughout.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use por_chain::Chain;
use por_protocol::engine::Event;
use por_protocol::messages::{self, Message};
use por_protocol::types::{Route, SeverReason};
use por_protocol::Amount;
use por_transport::Connection;
use support::{alice_is_served, closed_by_peer, http_get, now, pump, received_from};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_neighbour_is_dropped_and_everyone_else_is_served() {
    let mut t = support::trio("bad-input", |b| b).await;
    alice_is_served(&t.alice, &t.bob).await;
    let (alice, bob, mkey, to_bob) = (t.alice.clone(), t.bob.clone(), t.mkey.clone(), t.to_bob);

    // 1. An honest request from Mallory is served and paid once.
    let conn = t.dial().await;
    t.mallory_node.engine.peer_connected(bob.id(), now());
    let route = Route {
        nodes: vec![mkey.id(), bob.id()],
        channels: vec![to_bob],
    };
    t.mallory_node
        .engine
        .send_request(route.clone(), b"hello".to_vec(), 64, Amount(1), now())
        .unwrap();
    let frames: Vec<Message> = t
        .mallory_node
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
        pump(&mut t.mallory_node, &conn, |e| matches!(
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
    t.mallory_node
        .engine
        .send_request(route.clone(), b"forged".to_vec(), 64, Amount(1), now())
        .unwrap();
    let mut forged = None;
    for t in t.mallory_node.flush() {
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
    let conn = t.dial().await;
    conn.send(0, Bytes::from_static(b"\x00\x01not a por frame at all"))
        .await
        .unwrap();
    assert!(
        closed_by_peer(&conn).await,
        "Bob drops a peer sending garbage"
    );
    alice_is_served(&alice, &bob).await;

    // 5. An oversized frame (Mallory's transport allows 4 MiB; Bob's does not).
    let conn = t.dial().await;
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
    let conn = t.dial().await;
    t.mallory_node.engine.peer_connected(bob.id(), now());
    t.mallory_node
        .engine
        .sever(to_bob, SeverReason::Operator, now())
        .unwrap();
    for t in t.mallory_node.flush() {
        let _ = conn
            .send(0, Bytes::from(messages::encode_frame(&t.message).unwrap()))
            .await;
    }
    let never_submitted = t.mallory_node.chain_actions();
    assert_eq!(never_submitted.len(), 1, "{never_submitted:?}");
    let mut severed = false;
    for _ in 0..200 {
        let snap = t.mallory.snapshot().await.unwrap();
        if !snap.edges.iter().any(|e| e.id == to_bob) {
            severed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(severed, "Bob submits the notice Mallory kept to herself");
    let events = t.mallory.events_since(0).await.unwrap();
    let notice = events
        .events
        .iter()
        .find_map(|(_, e)| por_chain::json::sever_notice_of(e))
        .unwrap();
    assert_eq!(
        (notice.notice.channel, notice.notice.severer),
        (to_bob, mkey.id())
    );

    t.stop().await;
}
