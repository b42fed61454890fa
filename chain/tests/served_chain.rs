//! The embedded chain served on loopback and used by several clients, as `por chain
//! serve` does for several node processes; and NEAR's storage staking on the embedded
//! chain.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};

use por_chain::local::{dev_config, Clock, LocalChain, NEAR};
use por_chain::serve::{ServeOptions, CALL_DOMAIN};
use por_chain::{Chain, ChainError, RemoteClient};
use por_protocol::types::EdgeTerms;
use por_protocol::{Amount, Keypair};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The chain and its scratch directory, removed when dropped.
fn chain(name: &str) -> (tempfile::TempDir, LocalChain) {
    common::chain(&format!("served-{name}"), "por.local", Clock::Wall)
}

fn terms() -> EdgeTerms {
    EdgeTerms {
        latency_ms: 100,
        base_cost: Amount(10),
        byte_cost: Amount(1),
        sync_interval_ms: 1000,
        sync_phase_ms: 0,
        max_late_fee_rate: Amount(1000),
        bandwidth: EdgeTerms::DEFAULT_BANDWIDTH,
    }
}

#[tokio::test]
async fn clients_share_a_served_chain() {
    let (_dir, mut c) = chain("share");
    assert!(c.ensure_initialised(dev_config()).unwrap());
    assert!(!c.ensure_initialised(dev_config()).unwrap(), "only once");
    let shared = Arc::new(Mutex::new(c));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let faucet = ServeOptions { faucet: true };
    let server = tokio::spawn(por_chain::serve::serve(
        shared.clone(),
        listener,
        faucet,
        async {
            let _ = stopped.await;
        },
    ));

    let (ka, kb) = (Keypair::from_seed([1; 32]), Keypair::from_seed([2; 32]));
    let alice = RemoteClient::with_key(addr, "alice.local", ka.clone());
    let bob = RemoteClient::with_key(addr, "bob.local", kb.clone());
    assert_eq!(
        alice
            .fund("alice.local", &ka.id(), 10 * NEAR)
            .await
            .unwrap(),
        10 * NEAR
    );
    bob.fund("bob.local", &kb.id(), 10 * NEAR).await.unwrap();
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
    let err = RemoteClient::with_key(addr, "nobody.local", Keypair::from_seed([9; 32]))
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

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One raw request line and its answer.
async fn raw(addr: std::net::SocketAddr, req: &Value) -> Value {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("{req}\n").as_bytes()).await.unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).await.unwrap();
    serde_json::from_str(&line).unwrap()
}

#[tokio::test]
async fn a_served_chain_takes_only_calls_signed_by_the_account_and_no_faucet_unless_asked() {
    let (_dir, mut c) = chain("signed");
    c.ensure_initialised(dev_config()).unwrap();
    c.fund("alice.local", 10 * NEAR).unwrap();
    let shared = Arc::new(Mutex::new(c));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(por_chain::serve::serve(
        shared.clone(),
        listener,
        ServeOptions::default(),
        std::future::pending(),
    ));
    let ka = Keypair::from_seed([1; 32]);
    // The faucet is off.
    let err = RemoteClient::new(addr, "mallory.local")
        .fund("mallory.local", &ka.id(), NEAR)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ChainError::Unauthorized(m) if m.contains("faucet is off")),
        "{err}"
    );
    // An unsigned call, as before, is refused.
    let unsigned = raw(
        addr,
        &json!({"op": "call", "signer": "alice.local", "method": "storage_deposit",
                "args": {}, "deposit": NEAR.to_string()}),
    )
    .await;
    assert_eq!(unsigned["err"]["kind"], "unauthorized", "{unsigned}");
    // Alice's first signed call binds her key; the next must carry a higher nonce.
    let signed = |key: &Keypair, nonce: u64| {
        let payload = json!({"signer": "alice.local", "method": "storage_deposit",
            "args": {}, "deposit": (NEAR / 10).to_string(), "nonce": nonce})
        .to_string();
        let mut bytes = CALL_DOMAIN.to_vec();
        bytes.extend_from_slice(payload.as_bytes());
        json!({"op": "call", "payload": payload, "key": hex(&key.id().0),
               "sig": hex(&key.sign_bytes(&bytes).0)})
    };
    let first = signed(&ka, 5);
    assert!(raw(addr, &first).await.get("ok").is_some());
    let balance = || shared.lock().unwrap().balance("alice.local").unwrap();
    let after_one = balance();
    // Replayed: refused, nothing spent.
    let replay = raw(addr, &first).await;
    assert_eq!(replay["err"]["kind"], "unauthorized", "{replay}");
    assert!(replay["err"]["message"].as_str().unwrap().contains("nonce"));
    // Another key signing as Alice: refused.
    let mallory = Keypair::from_seed([7; 32]);
    let forged = raw(addr, &signed(&mallory, 6)).await;
    assert_eq!(forged["err"]["kind"], "unauthorized", "{forged}");
    // A tampered payload: the signature no longer verifies.
    let mut tampered = signed(&ka, 7);
    tampered["payload"] = tampered["payload"]
        .as_str()
        .unwrap()
        .replace("alice.local", "bob.local")
        .into();
    let t = raw(addr, &tampered).await;
    assert_eq!(t["err"]["kind"], "unauthorized", "{t}");
    assert_eq!(balance(), after_one);
    // Alice's client, with her key, calls as usual; views need no key.
    let alice = RemoteClient::with_key(addr, "alice.local", ka.clone());
    alice.storage_deposit(Amount(NEAR / 10)).await.unwrap();
    assert_eq!(balance(), after_one - NEAR / 10);
    assert!(RemoteClient::new(addr, "anyone").snapshot().await.is_ok());
}

#[test]
fn storage_staking_refuses_calls_the_contract_cannot_pay_for() {
    let (_dir, mut c) = chain("staking");
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
