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
