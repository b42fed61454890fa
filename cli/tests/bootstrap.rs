//! The boot script cloud-init runs on every testnet VM (`testnet/terraform/modules/cloud-init/bootstrap.sh`),
//! run for real: inside a network namespace of its own, joined to a devnet's bridge
//! as a VM joins the internet. It installs the built `por`, writes the key and the
//! config, funds the account from the devnet chain's faucet and starts the node; a
//! channel to a devnet host is opened and connects, and a request crosses it.
//! Needs root and iproute2 (network namespaces); says so and passes when absent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/netns.rs"]
mod netns;
use netns::netns_possible;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip(args: &[&str]) {
    run(Command::new("ip").args(args));
}

/// Everything the test made, removed when it ends.
struct Cleanup {
    dir: std::path::PathBuf,
    name: String,
    vm_ns: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("vm/node/pid")) {
            let _ = Command::new("kill").args(["-9", pid.trim()]).status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.vm_ns])
            .status();
        let _ = Command::new(env!("CARGO_BIN_EXE_por"))
            .args(["devnet", "down", "--name", &self.name, "--dir"])
            .arg(&self.dir)
            .output();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[test]
fn the_vm_boot_script_installs_a_node_that_joins_a_devnet() {
    if !netns_possible() {
        eprintln!("SKIPPED: the boot script test needs root and iproute2 (network namespaces)");
        return;
    }
    let name = format!("tb{}", std::process::id() % 100_000);
    let dir = std::env::temp_dir().join(format!("por-bootstrap-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    let c = Cleanup {
        dir: dir.clone(),
        name: name.clone(),
        vm_ns: format!("{name}-vm"),
    };
    let por = env!("CARGO_BIN_EXE_por");
    run(Command::new(por)
        .args([
            "devnet", "up", "--hosts", "2", "--links", "bridge", "--name", &name, "--dir",
        ])
        .arg(&dir));
    let state: Value =
        serde_json::from_slice(&std::fs::read(dir.join("devnet.json")).unwrap()).unwrap();
    let chain_addr = state["chain_addr"].as_str().unwrap().to_string();
    let prefix = state["net"]["prefix"].as_str().unwrap().to_string();

    // The "VM": a namespace on the devnet's bridge, address .100.
    let vm_ip = format!("{prefix}.100");
    ip(&["netns", "add", &c.vm_ns]);
    ip(&[
        "link", "add", &c.vm_ns, "type", "veth", "peer", "name", "eth0", "netns", &c.vm_ns,
    ]);
    ip(&["link", "set", &c.vm_ns, "master", &format!("{name}0"), "up"]);
    ip(&[
        "-n",
        &c.vm_ns,
        "addr",
        "add",
        &format!("{vm_ip}/24"),
        "dev",
        "eth0",
    ]);
    ip(&["-n", &c.vm_ns, "link", "set", "eth0", "up"]);
    ip(&["-n", &c.vm_ns, "link", "set", "lo", "up"]);

    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testnet/terraform/modules/cloud-init/bootstrap.sh");
    let account = format!("vm.{name}");
    let vm = dir.join("vm");
    let said = run(Command::new("ip")
        .args(["netns", "exec", &c.vm_ns, "bash"])
        .arg(&script)
        .env("POR_BINARY_PATH", por)
        .env("POR_PREFIX", &vm)
        .env("POR_ACCOUNT", &account)
        .env("POR_CHAIN", "served")
        .env("POR_CHAIN_ADDR", &chain_addr)
        .env("POR_FAUCET_NEAR", "100")
        .env("POR_LISTEN", format!("{vm_ip}:7000"))
        .env("POR_SYSTEMD", "0"));
    assert!(said.contains("started (pid"), "{said}");

    // What it installed and wrote.
    assert!(vm.join("bin/por").exists());
    assert!(vm.join("node/node.key").exists());
    let config = std::fs::read_to_string(vm.join("node/por.toml")).unwrap();
    assert!(
        config.contains("chain = \"served\"") && config.contains(&chain_addr),
        "{config}"
    );
    assert!(
        config.contains("metrics_listen = \"127.0.0.1:9100\""),
        "metrics stay private: {config}"
    );
    let command = std::fs::read_to_string(vm.join("node/command")).unwrap();
    assert!(command.contains("node run --config"), "{command}");
    let mut ready = String::new();
    for _ in 0..300 {
        ready = std::fs::read_to_string(vm.join("node/ready")).unwrap_or_default();
        if ready.contains('\n') {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let ready: Value = serde_json::from_str(ready.lines().next().unwrap_or_default())
        .unwrap_or_else(|e| {
            panic!(
                "no ready line ({e}); the node's log: {}",
                std::fs::read_to_string(vm.join("node/node.log")).unwrap_or_default()
            )
        });
    assert_eq!(ready["address"], format!("{vm_ip}:7000"), "{ready}");
    let vm_id = ready["id"].as_str().unwrap().to_string();

    // A channel from h01 to the VM, on the devnet's chain, from h01's side and the
    // VM's (its key is the one the script made).
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use por_chain::Chain;
        let addr: std::net::SocketAddr = chain_addr.parse().unwrap();
        let key = |p: &Path| por_node::config::read_key(p).unwrap();
        let h01 = por_chain::RemoteClient::with_key(
            addr,
            &format!("h01.{name}"),
            key(&dir.join("hosts/h01/node.key")),
        );
        let vmc = por_chain::RemoteClient::with_key(addr, &account, key(&vm.join("node/node.key")));
        let terms = por_protocol::types::EdgeTerms {
            latency_ms: 50,
            base_cost: por_protocol::Amount(10_000),
            byte_cost: por_protocol::Amount(10),
            sync_interval_ms: 500,
            sync_phase_ms: 0,
            max_late_fee_rate: por_protocol::Amount(1_000),
            bandwidth: por_protocol::types::EdgeTerms::DEFAULT_BANDWIDTH,
        };
        let deposit = por_protocol::Amount(por_chain::local::NEAR);
        let id = h01
            .propose_channel(&account, &terms, deposit)
            .await
            .unwrap();
        vmc.confirm_channel(id, deposit).await.unwrap();
    });

    // h01 reaches the VM's node: a request over the new channel is answered.
    let mut answer = String::new();
    for _ in 0..100 {
        let out = Command::new("ip")
            .args(["netns", "exec", &format!("{name}-h01"), por, "request"])
            .args(["--control", "127.0.0.1:7100", "--token-file"])
            .arg(dir.join("hosts/h01/data/control.token"))
            .args(["--server", &vm_id, "hello vm"])
            .output()
            .unwrap();
        answer = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && answer.contains("\"response\"") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        answer.contains("hello vm"),
        "no answer from the VM's node: {answer}"
    );
}
