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
    assert_eq!(last["balances"]["Alex"], -30120);
    assert_eq!(last["balances"]["Carol"], 10040);
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
    assert_eq!(text.matches(r#""kind":"scenario""#).count(), 5);
    assert_eq!(text.matches(r#""kind":"final""#).count(), 5);
}

#[test]
fn errors_name_the_file_and_the_fault() {
    let out = por(&["simulate", "no/such/file.toml"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no/such/file.toml"), "{err}");

    let dir = std::env::temp_dir().join(format!("por-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
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
