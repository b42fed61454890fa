//! The embedded chain served on loopback and used by several clients, as `por chain
//! serve` does for several node processes; and NEAR's storage staking on the embedded
//! chain.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use por_chain::local::{dev_config, Clock, LocalChain, NEAR};
use por_chain::{Chain, ChainError, RemoteClient};
use por_protocol::types::EdgeTerms;
use por_protocol::{Amount, Keypair};
use tokio::io::AsyncWriteExt;

fn chain(name: &str) -> LocalChain {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let wasm = std::fs::read(por_chain::wasm::build_contract(&root).unwrap()).unwrap();
    let dir = std::env::temp_dir().join(format!("por-served-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    LocalChain::open(&dir.join("chain.redb"), &wasm, "por.local", Clock::Wall).unwrap()
}

fn terms() -> EdgeTerms {
    EdgeTerms {
        latency_ms: 100,
        base_cost: Amount(10),
        byte_cost: Amount(1),
        sync_interval_ms: 1000,
        sync_phase_ms: 0,
        max_late_fee_rate: Amount(1000),
    }
}

#[tokio::test]
async fn clients_share_a_served_chain() {
    let mut c = chain("share");
    assert!(c.ensure_initialised(dev_config()).unwrap());
    assert!(!c.ensure_initialised(dev_config()).unwrap(), "only once");
    let shared = Arc::new(Mutex::new(c));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(por_chain::serve::serve(shared.clone(), listener, async {
        let _ = stopped.await;
    }));

    let alice = RemoteClient::new(addr, "alice.local");
    let bob = RemoteClient::new(addr, "bob.local");
    assert_eq!(
        alice.fund("alice.local", 10 * NEAR).await.unwrap(),
        10 * NEAR
    );
    bob.fund("bob.local", 10 * NEAR).await.unwrap();
    let (ka, kb) = (Keypair::from_seed([1; 32]), Keypair::from_seed([2; 32]));
    alice
        .register(ka.id(), vec!["127.0.0.1:7001".into()], Amount(2 * NEAR))
        .await
        .unwrap();
    bob.register(kb.id(), vec![], Amount(2 * NEAR))
        .await
        .unwrap();
    let id = alice
        .propose_channel("bob.local", &terms(), Amount(NEAR))
        .await
        .unwrap();
    bob.confirm_channel(id, Amount(NEAR)).await.unwrap();
    // 10 NEAR, less 2 staked, 1 deposited in the channel, and the storage deposit the
    // client made before registering.
    assert_eq!(
        alice.balance("alice.local").await.unwrap(),
        Some(7 * NEAR - por_chain::STORAGE_TOP_UP.0)
    );

    // The contract's refusals come back as refusals, with its message.
    let err = alice.confirm_channel(id, Amount(NEAR)).await.unwrap_err();
    let ChainError::Aborted {
        method, message, ..
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(method, "confirm_channel");
    assert!(!message.is_empty());
    // The chain's own refusals too (no such account, not enough balance).
    let err = RemoteClient::new(addr, "nobody.local")
        .register(kb.id(), vec![], Amount(NEAR))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("unknown account nobody.local"),
        "{err}"
    );

    // Both clients see the same topology and events, as the in-process chain has them.
    let snap = bob.snapshot().await.unwrap();
    assert_eq!(snap.edges.len(), 1);
    assert_eq!(snap.edges[0].terms, terms());
    assert_eq!(snap.edges[0].deposit_a, Amount(NEAR));
    assert_eq!(
        snap.node(&ka.id()).unwrap().addresses,
        vec!["127.0.0.1:7001"]
    );
    let page = alice.events_since(0).await.unwrap();
    let names: Vec<&str> = page
        .events
        .iter()
        .filter_map(|(_, e)| e["event"].as_str())
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
    assert_eq!(page.through, shared.lock().unwrap().height());
    assert!(alice
        .events_since(page.through)
        .await
        .unwrap()
        .events
        .is_empty());
    let status = alice.status().await.unwrap();
    assert_eq!(status["contract"], "por.local");

    // Garbage and oversized lines cost the sender its connection, nobody else's; the
    // client reconnects on its next call.
    let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
    raw.write_all(b"not json\n").await.unwrap();
    let mut big = vec![b'x'; por_chain::serve::MAX_LINE + 10];
    big.push(b'\n');
    let _ = raw.write_all(&big).await;
    assert_eq!(bob.snapshot().await.unwrap().edges.len(), 1);

    // Stopping the server fails calls clearly; a new server on the same chain serves them.
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    drop(alice);
    let alice = RemoteClient::new(addr, "alice.local");
    let err = alice.snapshot().await.unwrap_err();
    assert!(matches!(err, ChainError::Remote(_)), "{err}");
}

#[test]
fn storage_staking_refuses_calls_the_contract_cannot_pay_for() {
    let mut c = chain("staking");
    // 1 NEAR pays for 100 kB; the code alone is several times that.
    c.fund("por.local", NEAR).unwrap();
    let before_height = c.height();
    let err = c
        .call_json(
            "por.local",
            "new",
            serde_json::json!({"config": dev_config()}),
            0,
        )
        .unwrap_err();
    let ChainError::LackBalanceForState { have, need, .. } = err else {
        panic!("{err}")
    };
    assert_eq!(have, NEAR);
    assert!(need > 3 * NEAR && need < 10 * NEAR, "{need}");
    assert!(!c.initialised(), "nothing was stored");
    assert_eq!(c.height(), before_height + 1);
    // Topped up, it initialises.
    assert!(c.ensure_initialised(dev_config()).unwrap());
    assert!(c.initialised());
}
