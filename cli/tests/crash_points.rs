//! Crash points under load, on real processes: a served chain and a 4-node path
//! (client, two relays, server). Each round sends requests back to back through the
//! client, kills a node chosen at random with SIGKILL at a random moment, restarts it
//! on its data directory, stops the load and lets everything in flight settle. After
//! every round both ends of every channel agree on what was paid each way (nothing
//! acknowledged was lost), and the client has paid once for each request it sent
//! (nothing twice). At the end every channel is closed cooperatively on the chain,
//! each end submitting the states it holds, and the contract pays each what its node
//! says it is owed.
//!
//! A long run, not part of the suite (figures in docs/fuzzing.md):
//! `cargo test -p por-cli --test crash_points -- --ignored --nocapture`, with
//! `POR_CRASH_ROUNDS` (default 100) and `POR_CRASH_SEED` (default 1).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use por_protocol::types::EdgeTerms;
use por_protocol::Amount;
use serde_json::{json, Value};

use common::procs::{
    amount, control, end_with, ends_agree, init_funded, node_run, open_path, served_chain, settled,
    token, wait_connected, Proc,
};

const NAMES: [&str; 4] = ["client", "relay1", "relay2", "server"];

/// A small deterministic generator (xorshift64*), so a failing run can be replayed
/// by its seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn node(dir: &Path, name: &str, chain: &str, transport: &str) -> Proc {
    node_run(
        dir,
        name,
        transport,
        &["--chain", "served", "--chain-addr", chain],
    )
}

/// Channels each node of the path holds.
fn degree(i: usize) -> usize {
    if i == 0 || i == NAMES.len() - 1 {
        1
    } else {
        2
    }
}

/// Four workers sending requests back to back through the client's control endpoint
/// until stopped; the requests that got an outcome, and those whose call failed
/// after it reached the client (it may have paid for them: the client was killed).
struct Load {
    stop: Arc<AtomicBool>,
    outcomes: Arc<AtomicU64>,
    lost_calls: Arc<AtomicU64>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(client: &Proc, server: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let (outcomes, lost_calls) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let addr = client.ready["control"].as_str().unwrap().to_string();
        let tok = token(client);
        let workers = (0..4)
            .map(|_| {
                let (addr, tok, server) = (addr.clone(), tok.clone(), server.to_string());
                let (stop, outcomes, lost_calls) =
                    (stop.clone(), outcomes.clone(), lost_calls.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::SeqCst) {
                        // Nothing is sent when the client is down; a refusal by the
                        // client (no route while a relay is down) pays nothing; a
                        // connection broken by the client's kill may have paid.
                        let Ok(stream) = tokio::net::TcpStream::connect(&addr).await else {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        };
                        let r = por_node::control::call_on(
                            stream,
                            &addr,
                            &tok,
                            json!({"op": "request", "server": server, "body": "ping",
                                "late_fee_rate": "1", "response_limit": 4}),
                        )
                        .await;
                        match r {
                            Ok(_) => {
                                outcomes.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(e) => {
                                if !matches!(e, por_node::NodeError::Remote(_)) {
                                    lost_calls.fetch_add(1, Ordering::SeqCst);
                                }
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            outcomes,
            lost_calls,
            workers,
        }
    }

    async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        for w in self.workers {
            w.await.unwrap();
        }
        (
            self.outcomes.load(Ordering::SeqCst),
            self.lost_calls.load(Ordering::SeqCst),
        )
    }
}

async fn crash_points(transport: &str) {
    let rounds = env("POR_CRASH_ROUNDS", 100);
    let mut rng = Rng(env("POR_CRASH_SEED", 1).max(1));
    let dir = std::env::temp_dir().join(format!("por-crash-{}-{transport}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (_chain, chain) = served_chain(&dir);
    init_funded(&dir, &chain, &NAMES, 100).await;
    let mut procs: Vec<Proc> = NAMES
        .iter()
        .map(|n| node(&dir, n, &chain, transport))
        .collect();
    let terms = EdgeTerms {
        latency_ms: 20,
        base_cost: Amount(10_000),
        byte_cost: Amount(10),
        sync_interval_ms: 200,
        sync_phase_ms: 0,
        max_late_fee_rate: Amount(1_000),
        bandwidth: EdgeTerms::DEFAULT_BANDWIDTH,
    };
    let deposit = Amount(por_chain::local::NEAR);
    open_path(&dir, &chain, &NAMES, &terms, deposit).await;
    for (i, p) in procs.iter().enumerate() {
        wait_connected(p, degree(i)).await;
    }
    let server = procs[3].ready["id"].as_str().unwrap().to_string();
    // 3 edges × (10_000 + 10 × (4 + 4 bytes)).
    let cost = 3 * 10_080u128;
    // The client learns the far edges from the chain shortly after they open.
    for _ in 0..100 {
        let q = control(
            &procs[0],
            json!({"op": "quote", "server": server, "body_len": 4, "response_limit": 4}),
        )
        .await
        .unwrap();
        if q.as_array().is_some_and(|q| !q.is_empty()) {
            assert_eq!(amount(&q[0]["cost"]), cost);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = Instant::now();
    let (mut outcomes, mut lost_calls) = (0u64, 0u64);
    let mut kills = [0u32; 4];
    for round in 0..rounds {
        let load = Load::start(&procs[0], &server);
        tokio::time::sleep(Duration::from_millis(100 + rng.below(900))).await;
        let victim = rng.below(4) as usize;
        procs[victim].child.kill().unwrap();
        procs[victim].child.wait().unwrap();
        kills[victim] += 1;
        tokio::time::sleep(Duration::from_millis(rng.below(300))).await;
        procs[victim] = node(&dir, NAMES[victim], &chain, transport);
        // Its neighbours reconnect to it, and it to them.
        for (i, p) in procs.iter().enumerate() {
            wait_connected(p, degree(i)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (done, lost) = load.stop().await;
        outcomes += done;
        lost_calls += lost;
        let statuses = settled(&procs.iter().collect::<Vec<_>>()).await;
        ends_agree(&statuses);
        // Once per request: each one with an outcome was paid, each lost with a
        // killed client maybe; nothing more, and never a part of a payment.
        let paid = amount(&statuses[0]["channels"][0]["paid"]);
        assert_eq!(
            paid % cost,
            0,
            "round {round}: {paid} is not whole requests"
        );
        let n = u64::try_from(paid / cost).unwrap();
        assert!(
            (outcomes..=outcomes + lost_calls).contains(&n),
            "round {round} (killed {}): paid for {n} requests, {outcomes} with an outcome, \
             {lost_calls} calls lost",
            NAMES[victim]
        );
        eprintln!(
            "{transport} round {round}: killed {}, {n} requests paid in all ({outcomes} answered, {lost_calls} calls lost)",
            NAMES[victim]
        );
    }
    // Settle on chain: each channel closed cooperatively, each end submitting what it
    // holds; the contract pays each what its node says it is owed.
    let statuses = settled(&procs.iter().collect::<Vec<_>>()).await;
    ends_agree(&statuses);
    for (i, w) in statuses.windows(2).enumerate() {
        let (a, b) = (end_with(&w[0], &w[1]["id"]), end_with(&w[1], &w[0]["id"]));
        let id = a["id"].as_u64().unwrap().to_string();
        let close = |name: &str, p: &Proc, confirm: bool| {
            let conf = dir.join(format!("{name}/por.toml"));
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_por"));
            cmd.args(["channel", "close", "--id", &id])
                .args(["--config", conf.to_str().unwrap()])
                .args(["--chain", "served", "--chain-addr", &chain])
                .args(["--control", p.ready["control"].as_str().unwrap()]);
            if confirm {
                cmd.arg("--confirm");
            }
            let out = cmd.output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            serde_json::from_slice::<Value>(&out.stdout).unwrap()
        };
        close(NAMES[i], &procs[i], false);
        let closed = close(NAMES[i + 1], &procs[i + 1], true);
        let owed = |c: &Value| deposit.0 + amount(&c["received"]) - amount(&c["paid"]);
        assert_eq!(amount(&closed["paid_a"]), owed(&a), "{closed}");
        assert_eq!(amount(&closed["paid_b"]), owed(&b), "{closed}");
    }
    eprintln!(
        "{transport}: {rounds} kill -9 rounds in {:.0} s (client {}, relay1 {}, relay2 {}, \
         server {}): {outcomes} requests answered, every round's channels agreed, \
         the chain paid every end what it held",
        started.elapsed().as_secs_f64(),
        kills[0],
        kills[1],
        kills[2],
        kills[3]
    );
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a long run: cargo test -p por-cli --test crash_points -- --ignored"]
async fn crash_points_over_tcp() {
    crash_points("tcp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a long run: cargo test -p por-cli --test crash_points -- --ignored"]
async fn crash_points_over_quic() {
    crash_points("quic").await;
}
