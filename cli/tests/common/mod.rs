//! Shared by the tests that run real processes (`procs`) and by those that run on a
//! real NEAR node: a sandbox `neard` in a home of its own (`NEAR_SANDBOX_BIN_PATH`),
//! and the contract deployed to it by `por contract deploy`.
#![allow(dead_code, clippy::unwrap_used)]

pub(crate) mod procs;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use por_chain::{Chain, NearClient, NearConfig};
use por_node::demo::DemoChain;
use serde_json::Value;

/// The challenge period of the contract deployed here: NEAR blocks are about a second
/// apart and a transaction is final a few blocks later.
pub(crate) const CHALLENGE_NS: u64 = 40_000_000_000;

/// A sandbox `neard` in a home of its own, killed when dropped.
pub(crate) struct Sandbox {
    child: Child,
    /// Its home directory (validator key, config, data, log).
    pub(crate) home: PathBuf,
    /// Its JSON-RPC endpoint.
    pub(crate) rpc_url: String,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `neard` with the open-file limit it insists on (65,535; this machine's default is
/// lower, and root may raise it).
fn neard(args: &[&str]) -> Command {
    let bin = std::env::var("NEAR_SANDBOX_BIN_PATH").unwrap();
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg("ulimit -n 65536 2>/dev/null || true; exec \"$0\" \"$@\"")
        .arg(bin)
        .args(args);
    c
}

impl Sandbox {
    pub(crate) async fn start(name: &str) -> Sandbox {
        let home = std::env::temp_dir().join(format!("por-neard-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&home);
        let h = home.to_str().unwrap().to_string();
        let init = neard(&["--home", &h, "init", "--fast"]).output().unwrap();
        assert!(
            init.status.success(),
            "neard init: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        // rocksdb's open files, doubled for state snapshots, must stay under the
        // machine's hard limit (20,000 here, and not raisable without privileges).
        let config = home.join("config.json");
        let mut c: Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
        c["store"]["max_open_files"] = 4_000.into();
        std::fs::write(&config, c.to_string()).unwrap();
        let (rpc, net) = (free_port(), free_port());
        let log = std::fs::File::create(home.join("neard.log")).unwrap();
        let child = neard(&[
            "--home",
            &h,
            "run",
            "--rpc-addr",
            &format!("127.0.0.1:{rpc}"),
            "--network-addr",
            &format!("127.0.0.1:{net}"),
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
        let sb = Sandbox {
            child,
            home,
            rpc_url: format!("http://127.0.0.1:{rpc}"),
        };
        // Up once it has a final block past genesis.
        let root = sb.root("por.test.near");
        for _ in 0..600 {
            if root.height().await.is_ok_and(|h| h > 1) {
                return sb;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "neard did not start: see {}",
            sb.home.join("neard.log").display()
        );
    }

    pub(crate) fn root_key(&self) -> PathBuf {
        self.home.join("validator_key.json")
    }

    /// A client signing as the root account (`test.near`), for `contract`.
    pub(crate) fn root(&self, contract: &str) -> NearClient {
        NearClient::new(
            &NearConfig {
                rpc_url: self.rpc_url.clone(),
                contract: contract.into(),
            },
            &self.root_key(),
        )
        .unwrap()
    }

    /// `por contract deploy` of the contract as `por.test.near`; returns its account.
    pub(crate) fn deploy(&self, dir: &Path) -> String {
        std::fs::create_dir_all(dir).unwrap();
        let mut config = por_chain::local::dev_config();
        config["min_deposit"] = "1".into();
        config["challenge_ns"] = CHALLENGE_NS.to_string().into();
        let file = dir.join("contract-config.json");
        std::fs::write(&file, config.to_string()).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_por"))
            .args([
                "contract",
                "deploy",
                "--near-rpc",
                &self.rpc_url,
                "--near-key-file",
                self.root_key().to_str().unwrap(),
                "--contract",
                "por.test.near",
                "--network",
                "sandbox",
                "--config",
                file.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "por contract deploy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let done: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(done["created"], true, "{done}");
        assert_eq!(done["code_sha256"], por_chain::wasm::CONTRACT_SHA256);
        done["deployed"].as_str().unwrap().to_string()
    }

    pub(crate) fn chain(&self, contract: &str) -> DemoChain {
        DemoChain::Near {
            rpc_url: self.rpc_url.clone(),
            contract: contract.into(),
            creator_key_file: self.root_key(),
        }
    }
}
