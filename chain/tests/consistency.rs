//! The consistency fuzzer's last check, on the contract: after a run of 3 to 5
//! engines through crashes, reorders, severs and time
//! (`por_protocol::testing::consistency`), every channel is settled on the embedded
//! chain running the contract wasm, each end submitting the latest state it holds, and
//! each node is paid exactly what it holds (a payee's proof of payment wins), never
//! less than its engine says it is owed, and the two payouts add up to the deposits.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use por_chain::local::{Clock, LocalChain};
use por_chain::{Chain, LocalClient};
use por_protocol::testing::consistency::{parse_saved, random_input, Bytes, Harness, Setup};
use por_protocol::Amount;

const NEAR: u128 = 1_000_000_000_000_000_000_000_000;
const SEC: u64 = 1_000_000_000;

/// The chain and its scratch directory, removed when dropped.
fn chain() -> (tempfile::TempDir, Arc<Mutex<LocalChain>>) {
    let (dir, mut c) = common::chain("consistency", "por.test", Clock::Manual(0));
    common::init_test_contract(&mut c, 0, 0);
    for i in 0..5 {
        c.fund(&account(i), 1_000 * NEAR).unwrap();
    }
    (dir, Arc::new(Mutex::new(c)))
}

fn account(i: usize) -> String {
    format!("n{i}.local")
}

/// The inputs: the ones that once found bugs, and seeded random ones.
fn inputs() -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../protocol/tests/consistency");
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| parse_saved(&std::fs::read(e.unwrap().path()).unwrap()))
        .collect();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for k in 0..32 {
        let mut input = random_input(&mut seed, 1500);
        // Half of them with nodes that never sever for lateness, so that many
        // channels are still live at the end and settle exactly.
        if k % 2 == 0 {
            input[1..6].fill(0);
        }
        out.push(input);
    }
    out
}

#[tokio::test]
async fn settling_every_channel_pays_each_node_what_it_holds() {
    let (_dir, c) = chain();
    let clients: Vec<LocalClient> = (0..5)
        .map(|i| LocalClient::new(c.clone(), &account(i)))
        .collect();
    let mut registered = 0;
    let (mut channels, mut severed, mut moved) = (0usize, 0usize, 0u128);
    for input in inputs() {
        let mut bytes = Bytes::new(&input);
        let setup = Setup::from_bytes(&mut bytes);
        // The same keys every run (by index): register each once.
        while registered < setup.keys.len() {
            let i = registered;
            clients[i]
                .register(
                    setup.keys[i].id(),
                    vec![format!("127.0.0.1:{}", 7000 + i)],
                    Amount(10 * NEAR),
                )
                .await
                .unwrap();
            registered += 1;
        }
        // Open this run's edges on the contract; the harness runs on what it assigned.
        let mut ids = Vec::new();
        for e in &setup.edges {
            let id = clients[e.a]
                .propose_channel(&account(e.b), &e.terms, e.deposit_a)
                .await
                .unwrap();
            clients[e.b].confirm_channel(id, e.deposit_b).await.unwrap();
            ids.push(id);
        }
        let snapshot = clients[0].snapshot().await.unwrap();
        let edges: Vec<_> = ids
            .iter()
            .map(|id| snapshot.edges.iter().find(|e| e.id == *id).unwrap().clone())
            .collect();
        let mut h = Harness::new(&setup.keys, &setup.configs, edges).unwrap();
        h.run_actions(&mut bytes).unwrap();
        h.settle().unwrap_or_else(|v| panic!("{v}"));
        // The severs the run made final go on chain too (anyone may submit them).
        for notice in h.severed_on_chain() {
            clients[0].sever(notice).await.unwrap();
            severed += 1;
        }
        let ends = h.ends().unwrap();
        for end in &ends {
            let e = &end.edge;
            let a = setup.keys.iter().position(|k| k.id() == e.a).unwrap();
            let b = setup.keys.iter().position(|k| k.id() == e.b).unwrap();
            let held =
                |u: &Option<por_protocol::SignedUpdate>| u.iter().cloned().collect::<Vec<_>>();
            if end.severed {
                for (who, list) in [(a, held(&end.a_holds)), (b, held(&end.b_holds))] {
                    if !list.is_empty() {
                        clients[who].challenge(e.id, &list).await.unwrap();
                    }
                }
            } else {
                clients[a]
                    .start_close(e.id, &held(&end.a_holds))
                    .await
                    .unwrap();
                if end.b_holds.is_some() {
                    clients[b]
                        .challenge(e.id, &held(&end.b_holds))
                        .await
                        .unwrap();
                }
            }
        }
        c.lock().unwrap().advance(61 * SEC);
        for end in &ends {
            let e = &end.edge;
            let a = setup.keys.iter().position(|k| k.id() == e.a).unwrap();
            let (pa, pb) = clients[a].finalize_close(e.id).await.unwrap();
            let got_ab = end.b_holds.as_ref().map_or(0, |u| u.update.cumulative.0);
            let got_ba = end.a_holds.as_ref().map_or(0, |u| u.update.cumulative.0);
            // What each holds wins, exactly.
            assert_eq!(
                pa.0,
                e.deposit_a.0 + got_ba - got_ab,
                "{}: a's payout",
                e.id
            );
            assert_eq!(
                pb.0,
                e.deposit_b.0 + got_ab - got_ba,
                "{}: b's payout",
                e.id
            );
            assert_eq!(
                pa.0 + pb.0,
                e.deposit_a.0 + e.deposit_b.0,
                "{}: conserved",
                e.id
            );
            // Never less than an engine says its node is owed (its own payments
            // counted in full, acknowledged or not), and on a live channel, which
            // settled, exactly that.
            assert!(
                pa >= end.a_balance && pb >= end.b_balance,
                "{}: {end:?}",
                e.id
            );
            if !end.severed {
                assert_eq!((pa, pb), (end.a_balance, end.b_balance), "{}", e.id);
            }
            channels += 1;
            moved += got_ab + got_ba;
        }
    }
    eprintln!("settled {channels} channels ({severed} severed), {moved} yocto paid across them");
    assert!(channels > 50 && severed > 0 && moved > 0);
    assert!(
        channels > severed,
        "some channels are still live and settle exactly"
    );
}
