//! The `por` binary as a user runs it.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn por(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_por"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .unwrap()
}

#[test]
fn simulate_prints_json_lines_ending_in_final_balances() {
    let out = por(&["simulate", "testnet/scenarios/paper-5.1-happy.toml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let delivered = lines
        .iter()
        .find(|v| v["kind"] == "response_delivered")
        .unwrap();
    assert_eq!(delivered["t_ms"], 800);
    assert_eq!(delivered["node"], "Alex");
    let last = lines.last().unwrap();
    assert_eq!(last["kind"], "final");
    // 3 edges × (10_000 + 10 per byte of "ping" and the 4-byte echo bought).
    assert_eq!(last["balances"]["Alex"], -30240);
    assert_eq!(last["balances"]["Carol"], 10080);
}

#[test]
fn simulate_a_directory_runs_every_scenario() {
    let out = por(&["simulate", "--strict", "testnet/scenarios"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    // The five of §5 and the loads scenario.
    assert_eq!(text.matches(r#""kind":"scenario""#).count(), 6);
    assert_eq!(text.matches(r#""kind":"final""#).count(), 6);
    // Its file load is not simulated, and it says so.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "loads-requests-and-files.toml: its 2 file transfers run on real processes only"
        ),
        "{err}"
    );
}

#[test]
fn errors_name_the_file_and_the_fault() {
    let out = por(&["simulate", "no/such/file.toml"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no/such/file.toml"), "{err}");

    let dir = std::env::temp_dir().join(format!("por-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // `por contract deploy`: a missing key file is named; an unreachable node names
    // the contract it was deploying.
    let out = por(&[
        "contract",
        "deploy",
        "--near-rpc",
        "http://127.0.0.1:9",
        "--contract",
        "por.test.near",
        "--near-key-file",
        "no/such/key.json",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no/such/key.json"),
        "{err}"
    );
    let key = dir.join("deployer.json");
    std::fs::write(
        &key,
        r#"{"account_id":"test.near","public_key":"ed25519:57AdtrNKn5KrfHV3FqQNv8NavJM6jMLDfyszTv1epQRL","private_key":"ed25519:5mpzKvoRMTQMppBGTuiaYBU9p35zhsVczm3bdFqSA815Sh9obfKMy6MszRhvALuzmfmFEk2UNAGGNmCtGv13Rz5U"}"#,
    )
    .unwrap();
    let out = por(&[
        "contract",
        "deploy",
        "--near-rpc",
        "http://127.0.0.1:9",
        "--contract",
        "por.test.near",
        "--near-key-file",
        key.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("deploying the contract to por.test.near"),
        "{err}"
    );

    let bad_key = dir.join("bad-key.toml");
    std::fs::write(
        &bad_key,
        "name = \"x\"\nduration_ms = 1\nnodes = []\nedges = []\nbogus = 1\n",
    )
    .unwrap();
    let out = por(&["simulate", bad_key.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("bad-key.toml") && err.contains("bogus"),
        "{err}"
    );

    let bad_node = dir.join("bad-node.toml");
    std::fs::write(
        &bad_node,
        "name = \"x\"\nduration_ms = 1\n[[nodes]]\nname = \"A\"\n[[edges]]\na = \"A\"\nb = \"Zed\"\nlatency_ms = 1\nsync_interval_ms = 1\nmax_late_fee_rate = 1\ndeposit_a = 1\ndeposit_b = 1\n",
    )
    .unwrap();
    let out = por(&["simulate", bad_node.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("bad-node.toml") && err.contains("Zed"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn demo_runs_the_paper_network_on_real_sockets() {
    let dir = std::env::temp_dir().join(format!("por-cli-demo-{}", std::process::id()));
    // Links at 75 % of their promise: this test shares two cores with the others in
    // this binary, and the demo is a real-time system.
    let out = por(&[
        "demo",
        "--dir",
        dir.to_str().unwrap(),
        "--link-percent",
        "75",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("outcome at Alex: response \"Carol says: ping\""),
        "{text}"
    );
    assert!(text.contains("outcome at Alex: proof that edge"), "{text}");
    assert!(text.contains("Bob    severs its edge with Eve"), "{text}");
    assert!(text.contains("channel nets sum to 0"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn version_names_the_contract_wasm_the_binary_carries() {
    let out = por(&["--version"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(por_chain::wasm::CONTRACT_SHA256),
        "{text} should name {}",
        por_chain::wasm::CONTRACT_SHA256
    );
    assert_eq!(por_chain::wasm::CONTRACT_SHA256.len(), 64);
    assert_eq!(&por_chain::wasm::CONTRACT[..4], b"\0asm");
}

#[test]
fn every_command_has_help() {
    for args in [
        &["--help"][..],
        &["demo", "--help"],
        &["init", "--help"],
        &["node", "run", "--help"],
        &["node", "stop", "--help"],
        &["request", "--help"],
        &["quote", "--help"],
        &["status", "--help"],
        &["channel", "open", "--help"],
        &["channel", "confirm", "--help"],
        &["channel", "close", "--help"],
        &["channel", "list", "--help"],
        &["channel", "challenge", "--help"],
        &["stake", "add", "--help"],
        &["stake", "unstake", "--help"],
        &["stake", "withdraw", "--help"],
        &["topology", "--help"],
        &["chain", "serve", "--help"],
        &["chain", "fund", "--help"],
        &["contract", "deploy", "--help"],
        &["files", "add", "--help"],
        &["files", "ls", "--help"],
        &["files", "rm", "--help"],
        &["files", "get", "--help"],
        &["files", "quote", "--help"],
        &["files", "gateway", "--help"],
    ] {
        let out = por(args);
        assert!(out.status.success(), "{args:?}");
        assert!(!out.stdout.is_empty(), "{args:?}");
    }
    let out = por(&["node", "run", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("--sever-policy") && help.contains("POR_SEVER_POLICY"),
        "{help}"
    );
}

#[test]
fn init_then_run_errors_name_what_is_wrong() {
    let dir = std::env::temp_dir().join(format!("por-cli-init-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().unwrap();
    let out = por(&["init", "--dir", d, "--account", "me.local"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.join("node.key").exists() && dir.join("por.toml").exists());
    // Never overwrites.
    let out = por(&["init", "--dir", d, "--account", "me.local"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not overwriting"));
    // A missing setting names its key, flag and variable.
    let out = por(&["node", "run", "--key-file", "x"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("account") && err.contains("POR_ACCOUNT"),
        "{err}"
    );
    // A bad key in the file names the file and key.
    let conf = dir.join("por.toml");
    let text = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(&conf, format!("{text}\nlisen = \"x\"\n")).unwrap();
    let out = por(&["node", "run", "--config", conf.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("por.toml") && err.contains("lisen"), "{err}");
    // No control token: the command says where it is found.
    let out = por(&["status", "--control", "127.0.0.1:1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("--token-file") && err.contains("control.token"),
        "{err}"
    );
    // No node answering: the endpoint is named.
    let token = dir.join("control.token");
    std::fs::write(&token, "00").unwrap();
    let out = por(&[
        "status",
        "--control",
        "127.0.0.1:1",
        "--token-file",
        token.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("127.0.0.1:1"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A reader that goes away (`por simulate … | head`) ends `por` quietly and
/// successfully, not with a panic about a broken pipe.
#[test]
fn a_closed_pipe_ends_the_output_quietly() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_por"))
        .args(["simulate", "testnet/scenarios"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Closed before anything is written: the first write meets a broken pipe.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}
