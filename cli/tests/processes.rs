//! Real `por` processes on loopback: a chain and four nodes (client, two relays,
//! server) on it. A relay is killed with SIGKILL under load and restarted: every
//! channel's two ends agree afterwards (money conserved), and the client paid for
//! each request exactly once. The chain is a served embedded chain (`por chain serve`),
//! or, when `NEAR_SANDBOX_BIN_PATH` names one, a sandbox `neard` with the contract put
//! there by `por contract deploy` (`--chain near`).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use por_chain::local::NEAR;
use por_chain::{AnyChain, Chain, NearClient, NearConfig, RemoteClient};
use por_protocol::types::EdgeTerms;
use por_protocol::Amount;
use serde_json::{json, Value};

use common::procs::{
    amount, control, ends_agree, node_run, served_chain, settled, token, wait_connected, Proc,
};

/// The chain the processes share.
enum Ground {
    /// `por chain serve`, with its faucet on.
    Served { _proc: Proc, chain_addr: String },
    /// A sandbox `neard` with the contract deployed.
    Near {
        sandbox: common::Sandbox,
        contract: String,
    },
}

impl Ground {
    /// The chain account of node `name`.
    fn account(&self, name: &str) -> String {
        match self {
            Ground::Served { .. } => format!("{name}.local"),
            Ground::Near { .. } => format!("{name}.test.near"),
        }
    }

    /// The `por` flags that point a command at this chain as node `name`.
    fn flags(&self, dir: &Path, name: &str) -> Vec<String> {
        match self {
            Ground::Served { chain_addr, .. } => {
                vec![
                    "--chain".into(),
                    "served".into(),
                    "--chain-addr".into(),
                    chain_addr.clone(),
                ]
            }
            Ground::Near { sandbox, contract } => vec![
                "--chain".into(),
                "near".into(),
                "--near-rpc".into(),
                sandbox.rpc_url.clone(),
                "--near-contract".into(),
                contract.clone(),
                "--near-key-file".into(),
                near_key(dir, name).to_str().unwrap().to_string(),
            ],
        }
    }

    /// A client signing as node `name`.
    fn client(&self, dir: &Path, name: &str) -> AnyChain {
        match self {
            Ground::Served { chain_addr, .. } => {
                let key =
                    por_node::config::read_key(&dir.join(format!("{name}/node.key"))).unwrap();
                AnyChain::Remote(RemoteClient::with_key(
                    chain_addr.parse().unwrap(),
                    &self.account(name),
                    key,
                ))
            }
            Ground::Near { sandbox, contract } => AnyChain::Near(
                NearClient::new(
                    &NearConfig {
                        rpc_url: sandbox.rpc_url.clone(),
                        contract: contract.clone(),
                    },
                    &near_key(dir, name),
                )
                .unwrap(),
            ),
        }
    }

    /// A client for views.
    fn viewer(&self) -> AnyChain {
        match self {
            Ground::Served { chain_addr, .. } => {
                AnyChain::Remote(RemoteClient::new(chain_addr.parse().unwrap(), "viewer"))
            }
            Ground::Near { sandbox, contract } => AnyChain::Near(sandbox.root(contract)),
        }
    }
}

fn near_key(dir: &Path, name: &str) -> std::path::PathBuf {
    dir.join(format!("{name}.near-key.json"))
}

fn node(dir: &Path, name: &str, ground: &Ground, transport: &str) -> Proc {
    let flags = ground.flags(dir, name);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    node_run(dir, name, transport, &flags)
}

/// The control endpoint answers nobody without the node's token: a browser's
/// cross-origin POST (a simple request: `text/plain`, no `Authorization`) is refused
/// and does nothing, and so is a request with the token but not `application/json`,
/// or one larger than the endpoint takes.
async fn control_endpoint_trusts_only_its_token(p: &Proc) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = p.ready["control"].as_str().unwrap();
    let token = std::fs::read_to_string(p.ready["token_file"].as_str().unwrap()).unwrap();
    let body = "{\"op\":\"shutdown\"}";
    for auth in [
        String::new(),
        format!("Authorization: Bearer {}\r\n", token.trim()),
    ] {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "POST /v1 HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://evil.example\r\n{auth}Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got))
            .await
            .unwrap()
            .unwrap();
        let got = String::from_utf8_lossy(&got);
        let want = if auth.is_empty() {
            "HTTP/1.1 401"
        } else {
            "HTTP/1.1 415"
        };
        assert!(got.starts_with(want), "{got}");
    }
    for wrong in ["", "00"] {
        let err = por_node::control::call(addr, wrong, json!({"op": "shutdown"}))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("unauthorized"), "{err}");
    }
    // A body over the endpoint's 4 MiB, with the token: refused as too large (413),
    // in the endpoint's JSON, while the body is still being sent.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let len = (4 << 20) + 1;
    let head = format!(
        "POST /v1 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n",
        token.trim()
    );
    let (mut rd, mut wr) = s.split();
    let send = async {
        // The endpoint may answer and close before it has read it all.
        let _ = wr.write_all(head.as_bytes()).await;
        let _ = wr.write_all(&vec![b' '; len]).await;
    };
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut got));
    let ((), read) = tokio::join!(send, read);
    let _ = read.unwrap();
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 413"), "{got}");
    assert!(
        got.contains("larger than the control endpoint takes (4 MiB)"),
        "{got}"
    );
    // Still running, and answering its owner.
    control(p, json!({"op": "status"})).await.unwrap();
}

/// Whether none of these nodes has a request in flight.
async fn s_in_flight_zero(procs: &[Proc]) -> bool {
    for p in procs {
        match control(p, json!({"op": "status"})).await {
            Ok(s) if s["in_flight"] == 0 => {}
            _ => return false,
        }
    }
    true
}

/// One at a time: each run is five processes on two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_killed_under_load_over_tcp() {
    relay_killed_under_load_loses_and_duplicates_nothing("tcp", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_killed_under_load_over_quic() {
    relay_killed_under_load_loses_and_duplicates_nothing("quic", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(near_sandbox),
    ignore = "NEAR_SANDBOX_BIN_PATH is not set: no NEAR sandbox neard on this machine (docs/guide-node.md says how to build one)"
)]
async fn relay_killed_under_load_on_a_near_sandbox() {
    relay_killed_under_load_loses_and_duplicates_nothing("tcp", true).await;
}

async fn relay_killed_under_load_loses_and_duplicates_nothing(transport: &str, near: bool) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let tag = if near { "near" } else { "served" };
    let dir = std::env::temp_dir().join(format!(
        "por-procs-{}-{transport}-{tag}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let names = ["client", "relay1", "relay2", "server"];
    let ground = if near {
        let sandbox = common::Sandbox::start("procs").await;
        let contract = sandbox.deploy(&dir);
        let root = sandbox.root(&contract);
        for n in names {
            root.create_account_with_key_file(
                &format!("{n}.test.near"),
                100 * NEAR,
                &near_key(&dir, n),
            )
            .await
            .unwrap();
        }
        Ground::Near { sandbox, contract }
    } else {
        let (proc, chain_addr) = served_chain(&dir);
        Ground::Served {
            _proc: proc,
            chain_addr,
        }
    };
    for n in names {
        let out = Command::new(env!("CARGO_BIN_EXE_por"))
            .args([
                "init",
                "--dir",
                dir.join(n).to_str().unwrap(),
                "--account",
                &ground.account(n),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if let Ground::Served { chain_addr, .. } = &ground {
        for n in names {
            let key = por_node::config::read_key(&dir.join(format!("{n}/node.key"))).unwrap();
            RemoteClient::new(chain_addr.parse().unwrap(), "faucet")
                .fund(&ground.account(n), &key.id(), 100 * NEAR)
                .await
                .unwrap();
        }
    }
    let mut procs: Vec<Proc> = names
        .iter()
        .map(|n| node(&dir, n, &ground, transport))
        .collect();
    // Channels client–relay1–relay2–server, 20 ms each.
    let terms = EdgeTerms {
        latency_ms: 20,
        base_cost: Amount(10_000),
        byte_cost: Amount(10),
        sync_interval_ms: 200,
        sync_phase_ms: 0,
        max_late_fee_rate: Amount(1_000),
        bandwidth: EdgeTerms::DEFAULT_BANDWIDTH,
    };
    for w in names.windows(2) {
        let (a, b) = (ground.client(&dir, w[0]), ground.client(&dir, w[1]));
        let id = a
            .propose_channel(&ground.account(w[1]), &terms, Amount(NEAR))
            .await
            .unwrap();
        b.confirm_channel(id, Amount(NEAR)).await.unwrap();
    }
    for (i, p) in procs.iter().enumerate() {
        wait_connected(p, if i == 0 || i == 3 { 1 } else { 2 }).await;
    }
    control_endpoint_trusts_only_its_token(&procs[0]).await;
    let server = procs[3].ready["id"].as_str().unwrap().to_string();
    // The client learns the far edges from the chain shortly after they open.
    let mut quote = Value::Null;
    for _ in 0..100 {
        quote = control(
            &procs[0],
            json!({"op": "quote", "server": server, "body_len": 4, "response_limit": 4}),
        )
        .await
        .unwrap();
        if quote.as_array().is_some_and(|q| !q.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cost = amount(&quote[0]["cost"]);
    // 3 edges × (10_000 + 10 × (4 + 4 bytes)).
    assert_eq!(cost, 3 * 10_080);

    // Load: four workers sending requests back to back through the control endpoint.
    let client_control = procs[0].ready["control"].as_str().unwrap().to_string();
    let client_token = token(&procs[0]);
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, responses, other) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (c, s, stop) = (client_control.clone(), server.clone(), stop.clone());
        let t = client_token.clone();
        let (sent, responses, other) = (sent.clone(), responses.clone(), other.clone());
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let r = por_node::control::call(
                    &c,
                    &t,
                    json!({"op": "request", "server": s, "body": "ping", "late_fee_rate": "1",
                        "response_limit": 4}),
                )
                .await;
                match r {
                    Ok(v) if v["kind"] == "response" => {
                        sent.fetch_add(1, Ordering::SeqCst);
                        responses.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(_) => {
                        sent.fetch_add(1, Ordering::SeqCst);
                        other.fetch_add(1, Ordering::SeqCst);
                    }
                    // Refused before anything was paid (no route while relay1 is down).
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before_kill = responses.load(Ordering::SeqCst);
    assert!(before_kill > 0, "requests flow before the kill");
    // SIGKILL relay1 mid-flight, then restart it on the same data.
    procs[1].child.kill().unwrap();
    procs[1].child.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    procs[1] = node(&dir, "relay1", &ground, transport);
    wait_connected(&procs[1], 2).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    assert!(
        responses.load(Ordering::SeqCst) > before_kill,
        "requests flow after the restart"
    );

    // Let everything in flight settle; then both ends of every channel agree on what
    // was paid each way.
    let statuses = settled(&procs.iter().collect::<Vec<_>>()).await;
    ends_agree(&statuses);
    // The client paid once per request it sent, no more.
    let client_paid = amount(&statuses[0]["channels"][0]["paid"]);
    let n = sent.load(Ordering::SeqCst);
    assert_eq!(client_paid, u128::from(n) * cost, "{n} requests");
    eprintln!(
        "{transport}: {n} requests: {} responses, {} other outcomes; client paid {client_paid}",
        responses.load(Ordering::SeqCst),
        other.load(Ordering::SeqCst)
    );
    // The command line sees the same network.
    // `por` with a node's config, the chain and the node's control endpoint.
    let cli_out = |name: &str, p: &Proc, args: &[&str]| {
        let conf = dir.join(format!("{name}/por.toml"));
        Command::new(env!("CARGO_BIN_EXE_por"))
            .args(args)
            .args(["--config", conf.to_str().unwrap()])
            .args(ground.flags(&dir, name))
            .args(["--control", p.ready["control"].as_str().unwrap()])
            .output()
            .unwrap()
    };
    let cli = |name: &str, p: &Proc, args: &[&str]| {
        let out = cli_out(name, p, args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let topo = cli("client", &procs[0], &["topology"]);
    assert_eq!(topo["nodes"].as_array().unwrap().len(), 4);
    assert_eq!(topo["edges"].as_array().unwrap().len(), 3);
    let mine = cli("client", &procs[0], &["channel", "list"]);
    assert_eq!(mine.as_array().unwrap().len(), 1);
    // And `por request` through the client's control endpoint.
    let out = Command::new(env!("CARGO_BIN_EXE_por"))
        .args([
            "request",
            "--control",
            &client_control,
            "--token-file",
            procs[0].ready["token_file"].as_str().unwrap(),
            "--server",
            &ground.account("server"),
            "over the CLI",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["kind"], "response", "{answer}");
    assert_eq!(answer["body"], "over the CLI");
    assert_eq!(answer["hops"], 3);

    // A cooperative close through the command line: the client proposes with the states
    // it holds, relay1 confirms with the ones it holds (`--confirm`), and the contract
    // pays both out at once, by the states: what each was paid less what it paid.
    let mut ends = Vec::new();
    for _ in 0..100 {
        ends.clear();
        for p in &procs[..2] {
            let s = control(p, json!({"op": "status"})).await.unwrap();
            let peer = if ends.is_empty() {
                &procs[1]
            } else {
                &procs[0]
            };
            let c = s["channels"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["peer"] == peer.ready["id"])
                .unwrap()
                .clone();
            ends.push(c);
        }
        if ends.iter().all(|c| c["unacked"] == "0") && s_in_flight_zero(&procs[..2]).await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (client_end, relay_end) = (&ends[0], &ends[1]);
    assert_eq!(amount(&client_end["paid"]), amount(&relay_end["received"]));
    let id = client_end["id"].as_u64().unwrap().to_string();
    let proposed = cli("client", &procs[0], &["channel", "close", "--id", &id]);
    assert_eq!(proposed["close_proposed"].to_string(), id, "{proposed}");
    let closed = cli(
        "relay1",
        &procs[1],
        &["channel", "close", "--id", &id, "--confirm"],
    );
    let want_client = NEAR + amount(&client_end["received"]) - amount(&client_end["paid"]);
    let want_relay = NEAR + amount(&relay_end["received"]) - amount(&relay_end["paid"]);
    assert_eq!(amount(&closed["paid_a"]), want_client, "{closed}");
    assert_eq!(amount(&closed["paid_b"]), want_relay, "{closed}");
    // Settled: out of the paged views, still there by id.
    let on_chain = ground.viewer();
    assert!(!on_chain
        .channels_of(&ground.account("client"))
        .await
        .unwrap()
        .iter()
        .any(|c| c["id"].to_string().trim_matches('"') == id));
    let rec = on_chain
        .view("get_channel", serde_json::json!({"id": id}))
        .await
        .unwrap();
    assert_eq!(rec["state"], "Closed", "{rec}");

    // An adversarial close: relay2 starts it with what it holds (`--force`), the
    // server's watchtower answers with the states relay2 signed to it, and the chain
    // keeps what pays the server. `por channel challenge` by hand then has nothing
    // newer to submit, and says so.
    let server_end = {
        let s = control(&procs[3], json!({"op": "status"})).await.unwrap();
        s["channels"][0].clone()
    };
    let id2 = server_end["id"].as_u64().unwrap().to_string();
    let started = cli(
        "relay2",
        &procs[2],
        &["channel", "close", "--id", &id2, "--force"],
    );
    assert!(started["challenge_ends_ns"].is_string(), "{started}");
    let held = || async {
        ground
            .viewer()
            .view("get_channel", json!({"id": id2}))
            .await
            .unwrap()
    };
    // a = relay2 (it proposed the channel): what it paid the server is on chain once
    // the watchtower has challenged (the challenge period is a minute).
    let mut rec = held().await;
    for _ in 0..400 {
        if amount(&rec["paid_ab"][1]) == amount(&server_end["received"]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        rec = held().await;
    }
    assert!(rec["state"]["Closing"].is_object(), "{rec}");
    assert_eq!(
        amount(&rec["paid_ab"][1]),
        amount(&server_end["received"]),
        "{rec}"
    );
    let again = cli_out("server", &procs[3], &["channel", "challenge", "--id", &id2]);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        !again.status.success() && stderr.contains("stale state"),
        "{stderr}"
    );

    // Stake added from the command line.
    let client_stake = || async {
        let snap = ground.viewer().snapshot().await.unwrap();
        snap.nodes
            .into_iter()
            .find(|n| n.account == ground.account("client"))
            .unwrap()
            .stake
    };
    let before = client_stake().await;
    let added = cli("client", &procs[0], &["stake", "add", "--amount", "1000"]);
    assert_eq!(added["account"], ground.account("client"), "{added}");
    assert_eq!(client_stake().await.0, before.0 + 1000);
    drop(procs);
    drop(ground);
    let _ = std::fs::remove_dir_all(&dir);
}
