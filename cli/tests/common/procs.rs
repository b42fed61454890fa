//! Real `por` processes: spawning them (each prints one JSON ready line), and their
//! control endpoints.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

/// A `por` process, killed when dropped, with the ready line it printed.
pub(crate) struct Proc {
    pub(crate) child: Child,
    pub(crate) ready: Value,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `por <args>` with its log in `log`; waits for its ready line.
pub(crate) fn spawn(args: &[&str], log: &Path) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_por"))
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let ready: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
        panic!(
            "{args:?}: no ready line ({e}): {line:?}; see {}",
            log.display()
        )
    });
    Proc { child, ready }
}

/// The node's control token, from the file its ready line names.
pub(crate) fn token(p: &Proc) -> String {
    por_node::control::read_token(Path::new(p.ready["token_file"].as_str().unwrap())).unwrap()
}

/// One control call to the node.
pub(crate) async fn control(p: &Proc, req: Value) -> Result<Value, String> {
    por_node::control::call(p.ready["control"].as_str().unwrap(), &token(p), req)
        .await
        .map_err(|e| e.to_string())
}

/// Waits until the node holds `n` channels, all connected.
pub(crate) async fn wait_connected(p: &Proc, n: usize) {
    for _ in 0..300 {
        if let Ok(s) = control(p, json!({"op": "status"})).await {
            let c = s["channels"].as_array().unwrap();
            if c.len() == n && c.iter().all(|c| c["connected"] == true) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("node {} not connected", p.ready["id"]);
}

/// A yoctoNEAR amount in a JSON string.
pub(crate) fn amount(v: &Value) -> u128 {
    v.as_str().unwrap().parse().unwrap()
}

/// `por chain serve` on a fresh file in `dir`, its faucet on; and its address.
pub(crate) fn served_chain(dir: &Path) -> (Proc, String) {
    let chain = spawn(
        &[
            "chain",
            "serve",
            "--path",
            dir.join("chain.redb").to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--faucet",
        ],
        &dir.join("chain.log"),
    );
    let addr = chain.ready["chain"].as_str().unwrap().to_string();
    (chain, addr)
}

/// `por init` of each node in `dir/<name>` as account `<name>.local`, funded with
/// `near` NEAR from the served chain's faucet.
pub(crate) async fn init_funded(dir: &Path, chain_addr: &str, names: &[&str], near: u128) {
    for n in names {
        let out = Command::new(env!("CARGO_BIN_EXE_por"))
            .args(["init", "--dir", dir.join(n).to_str().unwrap()])
            .args(["--account", &format!("{n}.local")])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let key = por_node::config::read_key(&dir.join(format!("{n}/node.key"))).unwrap();
        por_chain::RemoteClient::new(chain_addr.parse().unwrap(), "faucet")
            .fund(
                &format!("{n}.local"),
                &key.id(),
                near * por_chain::local::NEAR,
            )
            .await
            .unwrap();
    }
}

/// Opens a channel on `terms` along each consecutive pair of `names` (the first
/// proposes), depositing `deposit` on each side, on the served chain.
pub(crate) async fn open_path(
    dir: &Path,
    chain_addr: &str,
    names: &[&str],
    terms: &por_protocol::types::EdgeTerms,
    deposit: por_protocol::Amount,
) {
    use por_chain::Chain;
    let signer = |n: &str| {
        let key = por_node::config::read_key(&dir.join(format!("{n}/node.key"))).unwrap();
        por_chain::RemoteClient::with_key(chain_addr.parse().unwrap(), &format!("{n}.local"), key)
    };
    for w in names.windows(2) {
        let id = signer(w[0])
            .propose_channel(&format!("{}.local", w[1]), terms, deposit)
            .await
            .unwrap();
        signer(w[1]).confirm_channel(id, deposit).await.unwrap();
    }
}

/// The nodes' statuses once none has a request in flight or an unacknowledged
/// payment (or after ten seconds).
pub(crate) async fn settled(procs: &[&Proc]) -> Vec<Value> {
    let mut statuses = Vec::new();
    for _ in 0..100 {
        statuses.clear();
        for p in procs {
            statuses.push(control(p, json!({"op": "status"})).await.unwrap());
        }
        let quiet = statuses.iter().all(|s| {
            s["in_flight"] == 0
                && s["channels"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|c| c["unacked"] == "0")
        });
        if quiet {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    statuses
}

/// A restartable `por node run` of `name` over `transport`, from its `por.toml` in
/// `dir/name`, with the chain given by `chain_flags`, listening and controlled on
/// loopback ports of its choosing; it logs to `dir/name.log`.
pub(crate) fn node_run(dir: &Path, name: &str, transport: &str, chain_flags: &[&str]) -> Proc {
    let conf = dir.join(name).join("por.toml");
    let mut args = vec![
        "--log-format",
        "json",
        "node",
        "run",
        "--transport",
        transport,
        "--config",
        conf.to_str().unwrap(),
    ];
    args.extend(chain_flags);
    args.extend(["--listen", "127.0.0.1:0", "--control", "127.0.0.1:0"]);
    args.extend(RESTARTABLE);
    spawn(&args, &dir.join(format!("{name}.log")))
}

/// Flags for nodes that are killed and restarted: no severing for what a dead node
/// could not do (a node dead at a sync pays that sync's late fees only once it is
/// back; with a sever policy or the §5.4 heuristic its peers would rightly sever it),
/// and the chain followed closely. These tests are about what a restart keeps.
pub(crate) const RESTARTABLE: [&str; 6] = [
    "--sever-policy",
    "never",
    "--heuristic-window-ms",
    "0",
    "--chain-poll-ms",
    "100",
];

/// A node's end of its channel with `peer` (a node id), from the node's status.
pub(crate) fn end_with(status: &Value, peer: &Value) -> Value {
    status["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| &c["peer"] == peer)
        .unwrap()
        .clone()
}

/// Along a path of nodes' statuses, both ends of every channel agree on what was
/// paid each way.
pub(crate) fn ends_agree(statuses: &[Value]) {
    let end = end_with;
    for w in statuses.windows(2) {
        let (ab, ba) = (end(&w[0], &w[1]["id"]), end(&w[1], &w[0]["id"]));
        assert_eq!(ab["unacked"], "0", "{ab}");
        assert_eq!(amount(&ab["paid"]), amount(&ba["received"]), "{ab} vs {ba}");
        assert_eq!(amount(&ba["paid"]), amount(&ab["received"]), "{ba} vs {ab}");
    }
}
