//! `por files` on real processes over loopback: a served chain, two relays and a
//! provider (`por node run --serve-files`), and the client side run by the `por files`
//! commands themselves. The provider is killed with SIGKILL mid-transfer and restarted:
//! the same `get` finishes, every byte verified once. A `get` killed itself resumes
//! from what it verified. Then the gateway, `ls` and `rm`; every channel's two ends
//! agree afterwards.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use por_chain::local::NEAR;
use por_protocol::types::EdgeTerms;
use por_protocol::Amount;
use serde_json::{json, Value};

use common::procs::{
    amount, control, ends_agree, init_funded, open_path, served_chain, settled, spawn,
    wait_connected, Proc, RESTARTABLE,
};

/// 12 MiB and a bit: 25 pieces of 512 KiB, the last one short.
const SIZE: usize = 12 * 1024 * 1024 + 4321;
const PIECE: u64 = 512 * 1024;

fn bytes(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

struct Net {
    dir: PathBuf,
    chain_addr: String,
    transport: String,
}

impl Net {
    fn conf(&self, name: &str) -> String {
        self.dir
            .join(name)
            .join("por.toml")
            .to_str()
            .unwrap()
            .into()
    }

    /// The flags every node of this network runs with, listening on a free port.
    fn flags(&self, name: &str) -> Vec<String> {
        self.flags_at(name, "127.0.0.1:0")
    }

    /// The flags every node of this network runs with, listening on `listen`.
    fn flags_at(&self, name: &str, listen: &str) -> Vec<String> {
        [
            "--config",
            &self.conf(name),
            "--chain",
            "served",
            "--chain-addr",
            &self.chain_addr,
            "--transport",
            &self.transport,
            "--listen",
            listen,
            "--control",
            "127.0.0.1:0",
        ]
        .iter()
        .chain(&RESTARTABLE)
        .map(|s| s.to_string())
        .collect()
    }

    fn node(&self, name: &str, extra: &[&str]) -> Proc {
        self.node_at(name, "127.0.0.1:0", extra)
    }

    fn node_at(&self, name: &str, listen: &str, extra: &[&str]) -> Proc {
        let mut args: Vec<String> = vec!["node".into(), "run".into()];
        args.extend(self.flags_at(name, listen));
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        spawn(&args, &self.dir.join(format!("{name}.log")))
    }

    /// `por files <args>` as the client; its stdout as JSON lines.
    fn files(&self, args: &[&str]) -> Vec<Value> {
        let out = Command::new(env!("CARGO_BIN_EXE_por"))
            .arg("files")
            .args(args)
            .args(self.flags("client"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        lines(&out.stdout)
    }

    /// `por files get` as the client, its JSON lines arriving on the receiver.
    fn get(&self, ticket: &str, out: &Path, log: &str) -> (Child, mpsc::Receiver<Value>) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_por"))
            .args(["files", "get", ticket, "--json", "--window", "1"])
            .args(["--late-after-ms", "5000", "--output", out.to_str().unwrap()])
            .args(self.flags("client"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(self.dir.join(log)).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        (child, rx)
    }
}

fn lines(out: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(out)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn por(args: &[&str]) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_por"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    lines(&out.stdout)
}

/// Reads `get`'s lines until `n` pieces were verified; returns them all.
fn until_pieces(rx: &mpsc::Receiver<Value>, n: usize) -> Vec<Value> {
    let mut seen = Vec::new();
    while seen
        .iter()
        .filter(|v: &&Value| v["event"] == "piece")
        .count()
        < n
    {
        let v = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("get went quiet");
        assert_ne!(v["event"], "done", "finished before the fault: {v}");
        seen.push(v);
    }
    seen
}

/// Reads `get`'s lines to its `done` line.
fn until_done(rx: &mpsc::Receiver<Value>) -> (Vec<Value>, Value) {
    let mut seen = Vec::new();
    loop {
        let v = rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("no done line ({e}) after {seen:?}"));
        if v["event"] == "done" {
            return (seen, v);
        }
        seen.push(v);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_over_processes_on_tcp() {
    files_over_processes("tcp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_over_processes_on_quic() {
    files_over_processes("quic").await;
}

/// One at a time: each run is up to six processes on two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn files_over_processes(transport: &str) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let dir = std::env::temp_dir().join(format!(
        "por-files-procs-{}-{transport}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("src")).unwrap();
    let (chain, chain_addr) = served_chain(&dir);
    let net = Net {
        dir: dir.clone(),
        chain_addr,
        transport: transport.to_string(),
    };
    let names = ["client", "relay1", "relay2", "provider"];
    init_funded(&dir, &net.chain_addr, &names, 100).await;
    // The provider's store, and the ticket `add` prints for it.
    let file = bytes(SIZE, 11);
    let src = dir.join("src/big.bin");
    std::fs::write(&src, &file).unwrap();
    let store = dir.join("provider/store");
    let store_s = store.to_str().unwrap();
    let added = por(&[
        "files",
        "add",
        "--store",
        store_s,
        "--config",
        &net.conf("provider"),
        src.to_str().unwrap(),
    ]);
    let ticket = added[0]["ticket"].as_str().unwrap().to_string();
    let root = added[0]["root"].as_str().unwrap().to_string();
    assert_eq!(added[0]["size"], SIZE);
    let listed = por(&["files", "ls", "--store", store_s]);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["root"], root.as_str());

    // The network: client — relay1 — relay2 — provider. The client runs once as a
    // node to register; from then on the `por files` commands run it.
    let client = net.node("client", &[]);
    let mut procs = vec![
        net.node("relay1", &[]),
        net.node("relay2", &[]),
        net.node("provider", &["--serve-files", store_s]),
    ];
    let terms = EdgeTerms {
        latency_ms: 5,
        base_cost: Amount(1_000),
        byte_cost: Amount(1),
        sync_interval_ms: 1_000,
        sync_phase_ms: 0,
        max_late_fee_rate: Amount(1_000),
        bandwidth: EdgeTerms::DEFAULT_BANDWIDTH,
    };
    open_path(&dir, &net.chain_addr, &names, &terms, Amount(NEAR)).await;
    wait_connected(&client, 1).await;
    wait_connected(&procs[1], 2).await;
    wait_connected(&procs[2], 1).await;
    control(&client, json!({"op": "shutdown"})).await.unwrap();
    drop(client);

    // The exact cost before anything is spent: 25 pieces over three hops.
    let quote = net.files(&["quote", &ticket]);
    assert_eq!(quote[0]["requests"], 25, "{quote:?}");
    assert_eq!(quote[0]["hops"], 3, "{quote:?}");
    let cost = amount(&quote[0]["cost"]);
    assert!(cost > 3 * 25 * 1_000 + 3 * SIZE as u128, "{cost}");

    // 1. The provider is killed mid-transfer and restarted: the same get finishes.
    let out = dir.join("got.bin");
    let (mut get, rx) = net.get(&ticket, &out, "get1.log");
    let before = until_pieces(&rx, 3);
    assert_eq!(before[0]["event"], "start");
    assert_eq!(before[0]["done"], 0);
    // Restarted where it was, as an operator's node is.
    let at = procs[2].ready["address"].as_str().unwrap().to_string();
    procs[2].child.kill().unwrap();
    procs[2].child.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    procs[2] = net.node_at("provider", &at, &["--serve-files", store_s]);
    let (seen, done) = until_done(&rx);
    assert!(get.wait().unwrap().success());
    assert_eq!(std::fs::read(&out).unwrap(), file, "byte-identical");
    assert_eq!(done["bytes"], SIZE, "every byte verified once: {done}");
    assert_eq!(done["wasted_pieces"], 0, "{done}");
    // At most the one piece in flight at the kill was asked for again (window 1):
    // its response may have died with the provider.
    let requested = done["bytes_requested"].as_u64().unwrap();
    assert!(
        requested >= SIZE as u64 && requested <= SIZE as u64 + PIECE,
        "{requested} bytes requested for {SIZE}: {seen:?}"
    );
    let spent = amount(&done["spent"]);
    assert!(spent >= cost, "{spent} vs the quote {cost}");

    // 2. The get itself is killed; run again, it resumes from what it verified.
    let out2 = dir.join("again.bin");
    let (mut get, rx) = net.get(&ticket, &out2, "get2.log");
    let first = until_pieces(&rx, 4);
    get.kill().unwrap();
    get.wait().unwrap();
    assert!(!out2.exists(), "no output before every byte is verified");
    let verified: u64 = first
        .iter()
        .filter(|v| v["event"] == "piece")
        .map(|v| v["bytes"].as_u64().unwrap())
        .sum();
    let (mut get, rx) = net.get(&ticket, &out2, "get3.log");
    let (seen, done) = until_done(&rx);
    assert!(get.wait().unwrap().success());
    assert_eq!(std::fs::read(&out2).unwrap(), file);
    assert!(
        seen[0]["done"].as_u64().unwrap() >= verified,
        "{seen:?} vs {verified}"
    );
    let resumed = seen[0]["done"].as_u64().unwrap();
    assert_eq!(
        done["bytes"].as_u64().unwrap(),
        SIZE as u64 - resumed,
        "only the missing bytes: {done}"
    );
    assert_eq!(
        done["bytes_requested"], done["bytes"],
        "nothing asked twice"
    );

    // 3. The gateway, read with curl.
    let provider_key = procs[2].ready["id"].as_str().unwrap().to_string();
    let mut args: Vec<String> = ["files", "gateway", "--listen", "127.0.0.1:0", "--provider"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(provider_key);
    // The gateway's `--listen` is its HTTP address; the node's is `--node-listen`.
    args.extend(net.flags("client").into_iter().map(|f| {
        if f == "--listen" {
            "--node-listen".to_string()
        } else {
            f
        }
    }));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let gateway = spawn(&args, &dir.join("gateway.log"));
    let url = format!("{}/{root}", gateway.ready["gateway"].as_str().unwrap());
    let got = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "60",
            "-H",
            "Range: bytes=700000-1700000",
            &url,
        ])
        .output()
        .unwrap();
    assert_eq!(got.stdout, &file[700_000..=1_700_000]);
    drop(gateway);

    // 4. A provider misconfigured to corrupt its file data (a testnet's
    // misbehaviour): the get refuses the bytes, writes nothing, and keeps the
    // provider's signed response as evidence.
    let at = procs[2].ready["address"].as_str().unwrap().to_string();
    procs[2].child.kill().unwrap();
    procs[2].child.wait().unwrap();
    procs[2] = net.node_at(
        "provider",
        &at,
        &["--serve-files", store_s, "--corrupt-files", "true"],
    );
    let bad_out = dir.join("corrupt.bin");
    let (mut get, rx) = net.get(&ticket, &bad_out, "get4.log");
    let status = get.wait().unwrap();
    let seen: Vec<Value> = rx.try_iter().collect();
    assert!(!status.success(), "{seen:?}");
    assert!(!bad_out.exists(), "no unverified byte reaches the output");
    let log4 = std::fs::read_to_string(dir.join("get4.log")).unwrap();
    assert!(log4.contains("sent bytes that do not verify"), "{log4}");
    let evidence = dir.join("corrupt.bin.por-evidence");
    assert!(
        std::fs::read_dir(&evidence).unwrap().count() >= 1,
        "evidence kept in {}",
        evidence.display()
    );
    // Back to honest for what follows.
    procs[2].child.kill().unwrap();
    procs[2].child.wait().unwrap();
    procs[2] = net.node_at("provider", &at, &["--serve-files", store_s]);

    // Every channel's two ends agree once nothing is in flight.
    let client = net.node("client", &[]);
    wait_connected(&client, 1).await;
    ends_agree(&settled(&[&client, &procs[0], &procs[1], &procs[2]]).await);

    // `rm` empties the store.
    let removed = por(&["files", "rm", "--store", store_s, &root]);
    assert_eq!(removed[0]["removed"], root.as_str());
    assert!(por(&["files", "ls", "--store", store_s]).is_empty());
    drop(client);
    drop(procs);
    drop(chain);
    let _ = std::fs::remove_dir_all(&dir);
}
