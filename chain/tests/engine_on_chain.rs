//! What the engine signs, the contract settles: a real exchange between two engines,
//! then the channel closed adversarially and an engine's severing notice submitted,
//! all through the `Chain` trait on the embedded chain running the contract wasm.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};

use por_chain::local::{Clock, LocalChain};
use por_chain::{Chain, LocalClient};
use por_protocol::testing::Network;
use por_protocol::types::{EdgeTerms, Route, SeverReason};
use por_protocol::{Amount, ChainAction, ChainEvent, Event, Keypair, Time};

const NEAR: u128 = 1_000_000_000_000_000_000_000_000;
const SEC: u64 = 1_000_000_000;

/// The chain and its scratch directory, removed when dropped.
fn chain(name: &str) -> (tempfile::TempDir, Arc<Mutex<LocalChain>>) {
    let (dir, mut c) = common::chain(name, "por.test", Clock::Manual(0));
    common::init_test_contract(&mut c, NEAR / 100, 100);
    for who in ["alice.local", "bob.local"] {
        c.fund(who, 100 * NEAR).unwrap();
    }
    (dir, Arc::new(Mutex::new(c)))
}

/// Delivers every frame between the engines until quiet; every one must be accepted.
fn pump(net: &mut Network, now: Time) {
    let refused = net.pump(now);
    assert!(refused.is_empty(), "{refused:?}");
}

#[tokio::test]
async fn engine_payments_and_notices_settle_on_the_contract() {
    let (_dir, c) = chain("engine");
    let (alice, bob) = (
        LocalClient::new(c.clone(), "alice.local"),
        LocalClient::new(c.clone(), "bob.local"),
    );
    let (ka, kb) = (Keypair::from_seed([1; 32]), Keypair::from_seed([2; 32]));
    alice
        .register(ka.id(), vec!["127.0.0.1:7001".into()], Amount(10 * NEAR))
        .await
        .unwrap();
    bob.register(kb.id(), vec!["127.0.0.1:7002".into()], Amount(10 * NEAR))
        .await
        .unwrap();
    let terms = EdgeTerms {
        latency_ms: 10,
        base_cost: Amount(1_000),
        byte_cost: Amount(1),
        sync_interval_ms: 1000,
        sync_phase_ms: 0,
        max_late_fee_rate: Amount(10),
        bandwidth: EdgeTerms::DEFAULT_BANDWIDTH,
    };
    let id = alice
        .propose_channel("bob.local", &terms, Amount(5 * NEAR))
        .await
        .unwrap();
    bob.confirm_channel(id, Amount(5 * NEAR)).await.unwrap();

    // The engines learn the topology from the chain.
    let snap = alice.snapshot().await.unwrap();
    assert_eq!(snap.edges.len(), 1);
    assert_eq!((snap.edges[0].a, snap.edges[0].b), (ka.id(), kb.id()));
    let mut net = Network::with_keys(&[ka.clone(), kb.clone()], snap.edges.clone(), Time::ZERO);
    // Alice pays Bob for three requests; Bob answers them.
    for n in 0..3u64 {
        let route = Route {
            nodes: vec![ka.id(), kb.id()],
            channels: vec![id],
        };
        net.nodes[0]
            .engine
            .send_request(route, vec![7; 10], 2, Amount(1), Time(n))
            .unwrap();
        pump(&mut net, Time(n));
        let req = std::iter::from_fn(|| net.nodes[1].engine.poll_event())
            .find_map(|e| match e {
                Event::RequestReceived { request, .. } => Some(request),
                _ => None,
            })
            .unwrap();
        net.nodes[1]
            .engine
            .respond(req, b"ok".to_vec(), Time(n))
            .unwrap();
        pump(&mut net, Time(n));
    }
    let paid = net.nodes[0].engine.channel(id).unwrap().outgoing.cumulative;
    // Each: base 1_000 + 1 per byte of the 10-byte body and the 2 bytes bought.
    assert_eq!(paid, Amount(3 * 1_012));
    // Bob closes adversarially with the latest state Alice signed to him.
    let held = net.nodes[1]
        .engine
        .channel(id)
        .unwrap()
        .incoming
        .latest
        .clone()
        .unwrap();
    let until = bob.start_close(id, &[held]).await.unwrap();
    assert_eq!(until, c.lock().unwrap().now_ns() + 60 * SEC);
    let err = alice.finalize_close(id).await.unwrap_err();
    assert!(err.to_string().contains("too early"), "{err}");
    c.lock().unwrap().advance(61 * SEC);
    let (pa, pb) = alice.finalize_close(id).await.unwrap();
    assert_eq!(
        (pa, pb),
        (Amount(5 * NEAR - paid.0), Amount(5 * NEAR + paid.0))
    );

    // A second edge, severed by the engine: its notice is accepted as signed.
    let id2 = bob
        .propose_channel("alice.local", &terms, Amount(NEAR))
        .await
        .unwrap();
    alice.confirm_channel(id2, Amount(NEAR)).await.unwrap();
    let edge = alice
        .snapshot()
        .await
        .unwrap()
        .edges
        .into_iter()
        .find(|e| e.id == id2)
        .unwrap();
    net.nodes[1]
        .engine
        .handle_chain_event(ChainEvent::EdgeOpened(edge), Time(10));
    net.nodes[1]
        .engine
        .sever(id2, SeverReason::Operator, Time(10))
        .unwrap();
    let Some(ChainAction::Sever(notice)) = net.nodes[1].engine.poll_chain_action() else {
        panic!("the engine asks for its notice to be submitted")
    };
    // Anyone may submit it: here Alice does.
    let split = alice.sever(&notice).await.unwrap();
    assert!(split, "two nodes, one edge: severing it splits them");
    let page = alice.events_since(0).await.unwrap();
    // The event carries the notice itself, so nodes following the chain get the proof.
    let carried: Vec<_> = page
        .events
        .iter()
        .filter_map(|(_, e)| por_chain::json::sever_notice_of(e))
        .collect();
    assert_eq!(carried, vec![notice.clone()]);
    let events: Vec<String> = page
        .events
        .into_iter()
        .map(|(_, e)| e["event"].as_str().unwrap().to_string())
        .collect();
    assert!(events.contains(&"edge_severed".to_string()), "{events:?}");
    assert_eq!(alice.snapshot().await.unwrap().edges.len(), 0);
}
