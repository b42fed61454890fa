//! The contract wasm on a real NEAR sandbox node, through near-workspaces: open → pay →
//! adversarial close → sever → partition.
//!
//! Runs only when `NEAR_SANDBOX_BIN_PATH` points to a `neard` sandbox binary (it cannot
//! be downloaded on this machine); otherwise it is reported as ignored, with the reason.
//! It always compiles.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use near_workspaces::types::NearToken;
use por_protocol::types::{
    ChannelId, ChannelUpdate, Memo, RequestId, SeverNotice, SeverReason, SignedSeverNotice,
    SignedUpdate,
};
use por_protocol::{wire, Amount, Deployment, Keypair};
use serde_json::{json, Value};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A sandbox with the workspace's contract deployed and initialised.
async fn deploy() -> (
    near_workspaces::Worker<near_workspaces::network::Sandbox>,
    near_workspaces::Contract,
) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let wasm = std::fs::read(por_chain::wasm::build_contract(&root).unwrap()).unwrap();
    let worker = near_workspaces::sandbox().await.unwrap();
    let contract = worker.dev_deploy(&wasm).await.unwrap();
    let near = NearToken::from_near(1).as_yoctonear();
    contract
        .call("new")
        .args_json(
            json!({"config": {"min_stake": near.to_string(), "min_deposit": "1",
            "unbonding_ns": "1", "challenge_ns": "1", "sever_penalty": (near / 100).to_string(),
            "partition_slash_bps": 1000, "network": "test"}}),
        )
        .transact()
        .await
        .unwrap()
        .into_result()
        .unwrap();
    (worker, contract)
}

#[tokio::test]
#[cfg_attr(
    not(near_sandbox),
    ignore = "NEAR_SANDBOX_BIN_PATH is not set: no NEAR sandbox binary on this machine (it cannot be downloaded here)"
)]
async fn open_pay_close_sever_partition_on_a_near_sandbox() {
    let (worker, contract) = deploy().await;
    let near = NearToken::from_near(1).as_yoctonear();
    let (alice, bob) = (
        worker.dev_create_account().await.unwrap(),
        worker.dev_create_account().await.unwrap(),
    );
    let (ka, kb) = (Keypair::from_seed([1; 32]), Keypair::from_seed([2; 32]));
    for (acc, k) in [(&alice, &ka), (&bob, &kb)] {
        acc.call(contract.id(), "storage_deposit")
            .args_json(json!({}))
            .deposit(NearToken::from_millinear(100))
            .transact()
            .await
            .unwrap()
            .into_result()
            .unwrap();
        acc.call(contract.id(), "register")
            .args_json(json!({"key": hex(&k.id().0), "addresses": []}))
            .deposit(NearToken::from_near(2))
            .transact()
            .await
            .unwrap()
            .into_result()
            .unwrap();
    }
    let terms = json!({"latency_ms": 10, "base_cost": "1", "byte_cost": "0", "sync_interval_ms": 1000, "sync_phase_ms": 0, "max_late_fee_rate": "1"});
    let id: String = alice
        .call(contract.id(), "propose_channel")
        .args_json(json!({"peer": bob.id(), "terms": terms}))
        .deposit(NearToken::from_near(1))
        .transact()
        .await
        .unwrap()
        .json()
        .unwrap();
    bob.call(contract.id(), "confirm_channel")
        .args_json(json!({"id": id}))
        .deposit(NearToken::from_near(1))
        .transact()
        .await
        .unwrap()
        .into_result()
        .unwrap();
    let channel: u64 = id.parse().unwrap();
    // Alice paid Bob 0.25 NEAR (seq 3): Bob closes with it.
    let u = ChannelUpdate {
        channel: ChannelId(channel),
        payer: ka.id(),
        payee: kb.id(),
        seq: 3,
        cumulative: Amount(near / 4),
        memo: Memo::Refund {
            request: RequestId([0; 16]),
            amount: Amount(1),
        },
    };
    let su =
        SignedUpdate::sign_alone(&ka, &Deployment::of("test", contract.id().as_str()), u).unwrap();
    let b64 = por_chain::json::base64(&wire::encode(&su).unwrap());
    bob.call(contract.id(), "start_close")
        .args_json(json!({"id": id, "updates": [b64]}))
        .transact()
        .await
        .unwrap()
        .into_result()
        .unwrap();
    worker.fast_forward(5).await.unwrap();
    let payouts: Value = alice
        .call(contract.id(), "finalize_close")
        .args_json(json!({"id": id}))
        .transact()
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        payouts,
        json!([(near - near / 4).to_string(), (near + near / 4).to_string()])
    );
    // A new edge, severed by Bob's notice submitted by Alice: the two are split.
    let id2: String = bob
        .call(contract.id(), "propose_channel")
        .args_json(json!({"peer": alice.id(), "terms": terms}))
        .deposit(NearToken::from_near(1))
        .transact()
        .await
        .unwrap()
        .json()
        .unwrap();
    alice
        .call(contract.id(), "confirm_channel")
        .args_json(json!({"id": id2}))
        .deposit(NearToken::from_near(1))
        .transact()
        .await
        .unwrap()
        .into_result()
        .unwrap();
    let n = SeverNotice {
        channel: ChannelId(id2.parse().unwrap()),
        severer: kb.id(),
        peer: ka.id(),
        reason: SeverReason::Unresponsive,
        at_ms: 0,
    };
    let notice = SignedSeverNotice {
        sig: kb
            .sign(&Deployment::of("test", contract.id().as_str()), &n)
            .unwrap(),
        notice: n,
    };
    let split: bool = alice
        .call(contract.id(), "sever")
        .args_json(json!({"notice": por_chain::json::base64(&wire::encode(&notice).unwrap())}))
        .max_gas()
        .transact()
        .await
        .unwrap()
        .json()
        .unwrap();
    assert!(split);
    // The first close split the two as well (closes run the partition check): Bob,
    // on the losing side of the tie, was slashed then. So Bob is the lighter side now:
    // slashed again, and he pays Alice's penalty back.
    let stake = |who: &near_workspaces::Account| {
        let account = who.id().clone();
        let contract = contract.clone();
        async move {
            let node: Value = contract
                .view("get_node")
                .args_json(json!({"account": account}))
                .await
                .unwrap()
                .json()
                .unwrap();
            node["stake"].as_str().unwrap().parse::<u128>().unwrap()
        }
    };
    assert_eq!(stake(&alice).await, 2 * near, "made whole");
    assert!(stake(&bob).await < 2 * near);
}

/// The node's own NEAR client ([`por_chain::NearClient`], key files, nonces, views and
/// the event scan) against the same sandbox: register, open a channel, read it back.
#[tokio::test]
#[cfg_attr(
    not(near_sandbox),
    ignore = "NEAR_SANDBOX_BIN_PATH is not set: no NEAR sandbox binary on this machine (it cannot be downloaded here)"
)]
async fn near_rpc_client_opens_a_channel_on_a_near_sandbox() {
    use por_chain::{Chain, NearClient, NearConfig};
    use por_protocol::types::EdgeTerms;

    let (worker, contract) = deploy().await;
    let near = NearToken::from_near(1).as_yoctonear();
    let dir = std::env::temp_dir().join(format!("por-sandbox-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = NearConfig {
        rpc_url: worker.rpc_addr(),
        contract: contract.id().to_string(),
    };
    let mut clients = Vec::new();
    for name in ["alice", "bob"] {
        let acc = worker.dev_create_account().await.unwrap();
        let sk = acc.secret_key().to_string();
        let pk: near_crypto::SecretKey = sk.parse().unwrap();
        let file = dir.join(format!("{name}.json"));
        std::fs::write(
            &file,
            json!({"account_id": acc.id(), "public_key": pk.public_key().to_string(),
                   "private_key": sk})
            .to_string(),
        )
        .unwrap();
        clients.push(NearClient::new(&config, &file).unwrap());
    }
    let (alice, bob) = (&clients[0], &clients[1]);
    let (ka, kb) = (Keypair::from_seed([1; 32]), Keypair::from_seed([2; 32]));
    alice
        .register(ka.id(), vec!["127.0.0.1:1".into()], Amount(2 * near))
        .await
        .unwrap();
    bob.register(kb.id(), vec![], Amount(2 * near))
        .await
        .unwrap();
    let terms = EdgeTerms {
        latency_ms: 10,
        base_cost: Amount(1),
        byte_cost: Amount(0),
        sync_interval_ms: 1000,
        sync_phase_ms: 0,
        max_late_fee_rate: Amount(1),
        bandwidth: EdgeTerms::DEFAULT_BANDWIDTH,
    };
    let id = alice
        .propose_channel(bob.account(), &terms, Amount(near))
        .await
        .unwrap();
    bob.confirm_channel(id, Amount(near)).await.unwrap();
    // A stale or unauthorised call is refused with the contract's message.
    let err = alice.confirm_channel(id, Amount(near)).await.unwrap_err();
    assert!(
        matches!(err, por_chain::ChainError::Aborted { .. }),
        "{err}"
    );
    let snap = alice.snapshot().await.unwrap();
    assert_eq!(snap.edges.len(), 1);
    assert_eq!(snap.edges[0].id, id);
    assert_eq!(snap.edges[0].terms, terms);
    assert_eq!(snap.node(&ka.id()).unwrap().addresses, vec!["127.0.0.1:1"]);
    let mut events = Vec::new();
    let mut from = 0;
    loop {
        let page = alice.events_since(from).await.unwrap();
        events.extend(page.events);
        if page.through == from {
            break;
        }
        from = page.through;
    }
    assert!(
        events.iter().any(|(_, e)| e["event"] == "channel_opened"),
        "{events:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
