//! `por devnet` end to end, as an operator runs it: `up` a chain and hosts as real
//! processes (each host in its own network namespace, joined by emulated internet
//! links, where this test may make them; else on its own loopback address), load, a kill -9 under load and a restart, a
//! partition and its healing, `check` that both ends of every channel agree, and
//! `down` leaving no process, namespace or link behind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/netns.rs"]
mod netns;
use netns::netns_possible;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// One devnet at a time: each is a dozen processes on a 2-core machine.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `por devnet <args> --dir <dir>`: its JSON lines, or its error.
fn devnet(dir: &Path, args: &[&str]) -> Result<Vec<Value>, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_por"))
        .arg("devnet")
        .args(args)
        .arg("--dir")
        .arg(dir)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect())
}

/// The one JSON line of a command that must succeed.
fn ok(dir: &Path, args: &[&str]) -> Value {
    let mut lines = devnet(dir, args).unwrap_or_else(|e| panic!("por devnet {args:?}: {e}"));
    assert_eq!(lines.len(), 1, "{lines:?}");
    lines.remove(0)
}

fn n(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"))
}

fn namespaces(name: &str) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output();
    out.map(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| l.starts_with(&format!("{name}-h")))
            .map(str::to_string)
            .collect()
    })
    .unwrap_or_default()
}

/// A devnet torn down when the test ends, passing or not.
struct Devnet {
    dir: PathBuf,
    name: String,
}

impl Drop for Devnet {
    fn drop(&mut self) {
        let _ = devnet(&self.dir, &["down", "--name", &self.name]);
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn start(
    tag: &str,
    hosts: usize,
    transport: &str,
    isolation: &str,
    extra: &[&str],
) -> (Devnet, Value) {
    let name = format!("t{tag}{}", std::process::id() % 100_000);
    let dir = std::env::temp_dir().join(format!("por-devnet-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    let d = Devnet { dir, name };
    let up = ok(
        &d.dir,
        &[
            "up",
            "--hosts",
            &hosts.to_string(),
            "--transport",
            transport,
            "--isolation",
            isolation,
            "--name",
            &d.name,
        ]
        .into_iter()
        .chain(extra.iter().copied())
        .collect::<Vec<_>>(),
    );
    assert_eq!(n(&up, "hosts"), hosts as u64, "{up}");
    (d, up)
}

/// `por devnet files <args>` fetching one file: its summary, with the transfer's own
/// line as `transfer`.
fn files(dir: &Path, args: &[&str]) -> Value {
    let all: Vec<&str> = ["files"].into_iter().chain(args.iter().copied()).collect();
    let mut lines = devnet(dir, &all).unwrap_or_else(|e| panic!("por devnet {all:?}: {e}"));
    assert_eq!(lines.len(), 2, "{lines:?}");
    let mut summary = lines.pop().unwrap();
    summary["transfer"] = lines.pop().unwrap();
    summary
}

/// Every request sent has exactly one outcome.
fn outcomes(load: &Value) -> u64 {
    ["responses", "proofs", "late", "rejected", "refused"]
        .iter()
        .map(|k| n(load, k))
        .sum()
}

#[test]
fn twelve_hosts_survive_a_kill_under_load_and_a_partition_and_leave_nothing_behind() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let isolation = if netns_possible() {
        "netns"
    } else {
        eprintln!("no network namespaces here (not root, or no iproute2): hosts on loopback addresses, partitions skipped");
        "loopback"
    };
    let (d, up) = start("a", 12, "tcp", isolation, &[]);
    assert_eq!(up["isolation"], isolation);
    // A ring of 12 with three chords.
    assert_eq!(n(&up, "channels"), 15);
    let status = devnet(&d.dir, &["status"]).unwrap();
    assert_eq!(status.len(), 12);
    for s in &status {
        assert_eq!(s["running"], true, "{s}");
        assert_eq!(s["connected"], s["channels"], "{s}");
        if isolation == "netns" {
            assert!(s["ip"].as_str().unwrap().starts_with("10.77."), "{s}");
            assert!(s["netns"].as_str().unwrap().starts_with(&d.name), "{s}");
        }
    }

    // A connection reset (RSTs, as a middlebox sends them): the nodes redial and
    // serve (first, while every channel is up).
    let reset = ok(&d.dir, &["reset", "h01", "h02"]);
    assert!(n(&reset, "connections") >= 1, "{reset}");
    let after = ok(
        &d.dir,
        &["load", "--from", "h01", "--to", "h02", "--requests", "5"],
    );
    assert_eq!(outcomes(&after), 5, "{after}");
    assert_eq!(n(&after, "responses"), 5, "{after}");

    // A file through the file layer: a MiB (two pieces) from two providers across
    // the emulated internet, verified and byte-identical, paid for (while every
    // channel is up).
    let files = files(
        &d.dir,
        &[
            "--from",
            "h01",
            "--provider",
            "h04",
            "--provider",
            "h08",
            "--size",
            "1048576",
        ],
    );
    assert_eq!(n(&files, "identical"), 1, "{files}");

    if isolation == "netns" {
        assert_eq!(up["emulated_links"], true, "{up}");
        // h01 (us-east-1) and h02 (us-west-2) are 67 ms apart: no request between
        // them comes back sooner (a lower bound: the emulator delays; not a speed
        // check).
        let near = ok(
            &d.dir,
            &[
                "load",
                "--from",
                "h01",
                "--to",
                "h02",
                "--requests",
                "5",
                "--concurrency",
                "1",
            ],
        );
        // Each outcome (a response, or the proof of a channel its lateness got cut)
        // comes no sooner than the round trip.
        assert_eq!(outcomes(&near), 5, "{near}");
        assert_eq!(n(&near, "refused"), 0, "{near}");
        assert!(near["secs"].as_f64().unwrap() >= 5.0 * 0.067, "{near}");
    }

    // h02 → h08 is three hops either way round (h01–h07 or h03–h09).
    let load = ok(
        &d.dir,
        &[
            "load",
            "--from",
            "h02",
            "--to",
            "h08",
            "--requests",
            "40",
            "--concurrency",
            "8",
        ],
    );
    // Over emulated internet links a lost packet's retransmission can make a
    // request late (its client earns late fees) and its channel cut (a proof):
    // every request has one outcome, and most are responses.
    assert_eq!(outcomes(&load), 40, "{load}");
    assert_eq!(n(&load, "refused"), 0, "{load}");
    assert!(n(&load, "responses") >= 20, "{load}");

    // kill -9 a relay of one of the two routes while requests flow.
    let dir = d.dir.clone();
    let under_load = std::thread::spawn(move || {
        ok(
            &dir,
            &[
                "load",
                "--from",
                "h02",
                "--to",
                "h08",
                "--requests",
                "150",
                "--concurrency",
                "8",
            ],
        )
    });
    std::thread::sleep(std::time::Duration::from_millis(1000));
    let killed = ok(&d.dir, &["kill", "h03"]);
    assert_eq!(killed["killed"], "h03");
    let load = under_load.join().unwrap();
    assert_eq!(
        outcomes(&load),
        150,
        "every request has one outcome: {load}"
    );
    assert!(n(&load, "responses") > 0, "{load}");
    let status = devnet(&d.dir, &["status"]).unwrap();
    assert_eq!(status[2]["running"], false, "{}", status[2]);

    // Restarted on its data, it rejoins: running, and connected to a neighbour.
    ok(&d.dir, &["restart", "h03"]);
    let mut rejoined = Value::Null;
    for _ in 0..100 {
        rejoined = devnet(&d.dir, &["status"]).unwrap().remove(2);
        if rejoined["running"] == true && n(&rejoined, "connected") > 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(
        n(&rejoined, "connected") > 0,
        "h03 did not rejoin: {rejoined}"
    );

    if isolation == "netns" {
        // h10–h12 cut off: nothing from h01 reaches h11 until healed.
        ok(&d.dir, &["partition", "h10", "h11", "h12"]);
        let cut = ok(
            &d.dir,
            &["load", "--from", "h01", "--to", "h11", "--requests", "10"],
        );
        assert_eq!(outcomes(&cut), 10, "{cut}");
        assert_eq!(
            n(&cut, "responses"),
            0,
            "a response crossed the partition: {cut}"
        );
        ok(&d.dir, &["heal"]);
        // A blackhole on one emulated link, then its default back.
        let cut = ok(&d.dir, &["link", "h05", "h06", "--down"]);
        assert_eq!(cut["now"]["down"], true, "{cut}");
        let around = ok(
            &d.dir,
            &["load", "--from", "h05", "--to", "h06", "--requests", "5"],
        );
        assert_eq!(outcomes(&around), 5, "{around}");
        let back = ok(&d.dir, &["link", "h05", "h06", "--restore"]);
        assert_eq!(back["now"]["down"], false, "{back}");
        let err = devnet(&d.dir, &["link", "h05", "h06", "--loss", "2"]).unwrap_err();
        assert!(err.contains("probability"), "{err}");
    } else {
        let err = devnet(&d.dir, &["partition", "h10"]).unwrap_err();
        assert!(err.contains("partitions need network namespaces"), "{err}");
    }

    // Money: both ends of every channel hold the same acknowledged state.
    let check = ok(&d.dir, &["check"]);
    assert_eq!(check["agree"], true, "{check}");
    assert_eq!(n(&check, "channels_checked"), 15, "{check}");

    // The report: every request recorded, latency by path length, money conserved
    // against the chain's deposits on every channel, relays in profit.
    let plots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts/devnet-plots");
    let report = ok(&d.dir, &["report", "--plots", plots.to_str().unwrap()]);
    for p in report["plots"].as_array().unwrap() {
        let svg = std::fs::read_to_string(p.as_str().unwrap()).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("<polyline"), "{p}");
    }
    let sent = if isolation == "netns" {
        5 + 40 + 150 + 10 + 5 + 5
    } else {
        40 + 150 + 5
    };
    assert_eq!(n(&report, "requests"), sent, "{report}");
    assert!(
        !report["latency_by_hops"].as_array().unwrap().is_empty(),
        "{report}"
    );
    assert_eq!(report["conservation"]["conserved"], true, "{report}");
    assert_eq!(report["relays_profit"], true, "{report}");
    let f = &report["files"];
    assert_eq!(
        (n(f, "transfers"), n(f, "identical"), n(f, "bytes")),
        (1, 1, 1 << 20),
        "{f}"
    );
    assert!(f["mib_per_s"]["p50"].as_f64().unwrap() > 0.0, "{f}");
    assert_eq!(
        n(&report["conservation"], "channels_checked"),
        15,
        "{report}"
    );
    let md = Command::new(env!("CARGO_BIN_EXE_por"))
        .args(["devnet", "report", "--format", "markdown", "--dir"])
        .arg(&d.dir)
        .output()
        .unwrap();
    let md = String::from_utf8_lossy(&md.stdout);
    assert!(
        md.contains("| hops | responses |")
            && md.contains("Money conserved")
            && md.contains("File transfers: 1 (1 fetched, 1 identical, 0 failed)"),
        "{md}"
    );

    let pids: Vec<u64> = devnet(&d.dir, &["status"])
        .unwrap()
        .iter()
        .map(|s| n(s, "pid"))
        .collect();
    let down = ok(&d.dir, &["down"]);
    assert!(!down["removed"].as_array().unwrap().is_empty(), "{down}");
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            stat.is_empty() || stat.contains(") Z "),
            "pid {pid} still runs after down"
        );
    }
    assert!(namespaces(&d.name).is_empty(), "{:?}", namespaces(&d.name));
    let bridge = Command::new("ip")
        .args(["link", "show", &format!("{}0", d.name)])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(!bridge, "the bridge is still there");
    // The devnet is gone, and commands say so.
    let err = devnet(&d.dir, &["status"]).unwrap_err();
    assert!(err.contains("no devnet in"), "{err}");
}

#[test]
fn six_hosts_over_quic_on_loopback_addresses_refuse_a_partition_and_agree_after_a_kill() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (d, up) = start(
        "q",
        6,
        "quic",
        "loopback",
        &["--misbehave", "h05=corrupt-files"],
    );
    assert_eq!(up["isolation"], "loopback");
    assert_eq!(up["transport"], "quic");
    let status = devnet(&d.dir, &["status"]).unwrap();
    assert!(status
        .iter()
        .all(|s| s["ip"].as_str().unwrap().starts_with("127.77.")));
    let load = ok(
        &d.dir,
        &["load", "--from", "h01", "--to", "h03", "--requests", "30"],
    );
    assert_eq!(n(&load, "responses"), 30, "{load}");
    // A file from two providers, one of which (h05) corrupts what it serves: caught,
    // dropped, its evidence kept, and the file finished from the other, identical.
    let files = files(
        &d.dir,
        &[
            "--from",
            "h01",
            "--provider",
            "h03",
            "--provider",
            "h05",
            "--size",
            "2097152",
        ],
    );
    assert_eq!(n(&files, "identical"), 1, "{files}");
    // h03 may finish every piece before h05's answers are checked; whatever of h05
    // was checked is caught, and nothing is held against h03.
    let transfer = &files["transfer"];
    let deviated = transfer["deviated"].as_array().unwrap();
    assert!(deviated.iter().all(|h| h == "h05"), "{transfer}");
    assert_eq!(
        n(transfer, "evidence") > 0,
        !deviated.is_empty(),
        "{transfer}"
    );
    // From h05 alone the file cannot be had: it is caught and nothing is accepted.
    let err = devnet(
        &d.dir,
        &[
            "files",
            "--from",
            "h01",
            "--provider",
            "h05",
            "--size",
            "1048576",
        ],
    )
    .unwrap_err();
    assert!(err.contains("no provider left"), "{err}");
    // Bad input is refused before anything is added or spent.
    let err = devnet(&d.dir, &["files", "--from", "h01", "--provider", "h01"]).unwrap_err();
    assert!(err.contains("also a --provider"), "{err}");
    let err = devnet(
        &d.dir,
        &["files", "--from", "h01", "--provider", "h03", "--size", "0"],
    )
    .unwrap_err();
    assert!(err.contains("--size 0"), "{err}");
    ok(&d.dir, &["kill", "h02"]);
    let after = ok(
        &d.dir,
        &["load", "--from", "h01", "--to", "h03", "--requests", "20"],
    );
    assert_eq!(outcomes(&after), 20, "{after}");
    ok(&d.dir, &["restart", "h02"]);
    let err = devnet(&d.dir, &["partition", "h05"]).unwrap_err();
    assert!(err.contains("partitions need network namespaces"), "{err}");
    // A reset is TCP's: over QUIC it is refused, saying what cuts a connection.
    let err = devnet(&d.dir, &["reset", "h01", "h02"]).unwrap_err();
    assert!(err.contains("TCP's") && err.contains("--down"), "{err}");
    // Bad input: an unknown host, a second up in the same directory.
    let err = devnet(&d.dir, &["kill", "h99"]).unwrap_err();
    assert!(err.contains("no host \"h99\""), "{err}");
    let err = devnet(&d.dir, &["up", "--hosts", "2", "--name", &d.name]).unwrap_err();
    assert!(err.contains("a devnet is up in"), "{err}");
    let check = ok(&d.dir, &["check"]);
    assert_eq!(check["agree"], true, "{check}");
    ok(&d.dir, &["down"]);
}

/// The page a browser test drives, and where its screenshots are kept.
const MAP_SCRIPT: &str = include_str!("map/map.mjs");

/// Chromium and playwright-core for the map test: `None` (and why) where they cannot
/// be had. `.ci/run` installs Chromium and sets `POR_REQUIRE_BROWSER`, which makes
/// their absence a failure.
fn browser_setup() -> Result<PathBuf, String> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        return Err(format!(
            "no Chromium at {chromium} (apt-get install chromium)"
        ));
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/browser");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    if !dir.join("node_modules/playwright-core").exists() {
        let npm = Command::new("npm")
            .args([
                "install",
                "--no-audit",
                "--no-fund",
                "--silent",
                "playwright-core@1",
            ])
            .current_dir(&dir)
            .output()
            .map_err(|e| format!("npm: {e}"))?;
        if !npm.status.success() {
            return Err(format!(
                "npm install playwright-core: {}",
                String::from_utf8_lossy(&npm.stderr)
            ));
        }
    }
    // An ES module resolves its imports beside itself.
    std::fs::write(dir.join("map.mjs"), MAP_SCRIPT).map_err(|e| e.to_string())?;
    Ok(dir)
}

#[test]
fn the_live_map_shows_every_node_and_a_sever_within_seconds_in_chromium() {
    let browser = match browser_setup() {
        Ok(dir) => dir,
        Err(why) => {
            assert!(
                std::env::var_os("POR_REQUIRE_BROWSER").is_none(),
                "the map test needs a browser (POR_REQUIRE_BROWSER): {why}"
            );
            eprintln!("SKIPPED the live map test: {why}");
            return;
        }
    };
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (d, _) = start("m", 5, "tcp", "loopback", &[]);
    let mut map = Command::new(env!("CARGO_BIN_EXE_por"))
        .args(["devnet", "map", "--listen", "127.0.0.1:0", "--dir"])
        .arg(&d.dir)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(map.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    let url = serde_json::from_str::<Value>(&first).unwrap()["map"]
        .as_str()
        .unwrap()
        .to_string();
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let (before, after) = (
        artifacts.join("map-loaded.png"),
        artifacts.join("map-severed.png"),
    );
    let out = Command::new("node")
        .arg(browser.join("map.mjs"))
        .arg(&url)
        .arg(env!("CARGO_BIN_EXE_por"))
        .arg(&d.dir)
        .arg("5")
        .arg(&before)
        .arg(&after)
        .current_dir(&browser)
        .output()
        .unwrap();
    let _ = map.kill();
    let _ = map.wait();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("map test: {seen}");
    let names: Vec<&str> = seen["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    let expected: Vec<String> = (1..=5).map(|i| format!("h{i:02}.{}", d.name)).collect();
    assert_eq!(names, expected, "{seen}");
    assert_eq!(seen["centers"], 1, "one stake-weighted center: {seen}");
    assert_eq!(seen["severedBefore"], 0, "{seen}");
    // (Once the chain drops the severed edge, its ends are named in report order.)
    let log = seen["log"].as_str().unwrap();
    let line = |x: &str, y: &str| {
        format!(
            "channel {} {x}.{}–{y}.{} severed",
            seen["channel"], d.name, d.name
        )
    };
    assert!(
        log.contains(&line("h01", "h02")) || log.contains(&line("h02", "h01")),
        "{seen}"
    );
    assert!(seen["row"].as_str().unwrap().contains("severed"), "{seen}");
    assert_eq!(seen["errors"].as_array().unwrap().len(), 0, "{seen}");
    // Both screenshots were taken (PNG signature).
    for shot in [&before, &after] {
        let png = std::fs::read(shot).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{}", shot.display());
    }
}

/// `por devnet run <scenario>`: its comparison of the simulated and the real run.
fn run_scenario(file: &str, transport: &str, tag: &str) -> Value {
    let name = format!("r{tag}{}", std::process::id() % 100_000);
    let dir = std::env::temp_dir().join(format!("por-devnet-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testnet/scenarios")
        .join(file);
    let d = Devnet { dir, name };
    let lines = devnet(
        &d.dir,
        &[
            "run",
            scenario.to_str().unwrap(),
            "--transport",
            transport,
            "--name",
            &d.name,
        ],
    )
    .unwrap_or_else(|e| panic!("por devnet run {file}: {e}"));
    // `up`'s line, then the comparison.
    let r = lines.last().unwrap().clone();
    assert!(
        namespaces(&d.name).is_empty(),
        "the run leaves nothing behind"
    );
    r
}

#[test]
fn the_papers_scenarios_run_on_real_processes_as_in_the_simulator() {
    if !netns_possible() {
        eprintln!("SKIPPED por devnet run: no network namespaces here (not root, or no iproute2)");
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for (file, transport) in [
        ("paper-5.1-happy.toml", "tcp"),
        ("paper-5.2-sever-at-once.toml", "quic"),
    ] {
        let r = run_scenario(file, transport, &transport[..1]);
        eprintln!("{file}: {}", r["timeline"]);
        assert_eq!(r["same_outcomes"], true, "{r}");
        // Every engine event of the simulation happened on the real processes too.
        assert_eq!(r["only_sim"].as_array().unwrap().len(), 0, "{r}");
        let timeline = r["timeline"].as_array().unwrap();
        let matched = timeline.iter().filter(|t| !t["real_ms"].is_null()).count();
        assert_eq!(matched as u64, n(&r, "matched"));
        let request = &r["requests"][0];
        let latency = request["real"]["latency_ms"].as_u64().unwrap();
        if file.contains("5.1") {
            // Alex's response, within the path's promised 800 ms, hop by hop.
            assert_eq!(request["real"]["kind"], "response", "{r}");
            assert!(latency <= 800, "{r}");
            assert_eq!(matched, 9, "{r}");
        } else {
            // Eve offline: Bob's proof, within Alex's 1000 ms bound, and the money
            // moves as in the paper (Alex pays 40320; Alice keeps 10080, Bob 30240).
            assert_eq!(request["real"]["kind"], "proof", "{r}");
            assert!(latency <= 1000, "{r}");
            assert_eq!(r["same_balances"], true, "{r}");
            assert_eq!(r["balances"]["Alex"]["real"], "-40320", "{r}");
            assert_eq!(r["balances"]["Bob"]["real"], "30240", "{r}");
        }
    }
}

#[test]
fn a_scenarios_request_and_file_loads_run_on_real_processes() {
    if !netns_possible() {
        eprintln!("SKIPPED por devnet run with loads: no network namespaces here (not root, or no iproute2)");
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let r = run_scenario("loads-requests-and-files.toml", "tcp", "l");
    // The request flow (50 Poisson arrivals from the scenario's seed, as the
    // simulator draws them): every request answered both ways.
    let requests = r["requests"].as_array().unwrap();
    assert_eq!(requests.len(), 50, "{r}");
    assert_eq!(r["same_outcomes"], true, "{r}");
    assert!(
        requests.iter().all(|q| q["real"]["kind"] == "response"),
        "{r}"
    );
    // The file load: a transfer at 1 s and one at 3 s (its window ends at 5 s), each
    // 1 MiB fetched from Pia and Pavel, byte for byte, and paid for.
    let t = &r["transfer_totals"];
    assert_eq!(n(t, "files"), 2, "{r}");
    assert_eq!(n(t, "identical"), 2, "{r}");
    assert_eq!(n(t, "bytes"), 2 << 20, "{r}");
    assert!(
        t["spent"].as_str().unwrap().parse::<u128>().unwrap() > 0,
        "{r}"
    );
    let starts: Vec<u64> = r["transfers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| n(x, "t_ms"))
        .collect();
    assert!(
        starts[0] >= 1000 && starts[1] >= 3000 && starts[1] < 4000,
        "{starts:?}"
    );
    // The transfers' own requests are counted beside the timeline, and the balances
    // are not compared with a simulation that has no transfers.
    assert!(n(&r, "file_events") > 0, "{r}");
    assert!(r["same_balances"].is_null(), "{r}");
}
