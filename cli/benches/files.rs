//! File transfers through por on real processes over loopback TCP: a blob fetched with
//! `por files get` over 3 hops and over 1 hop, against the same bytes through plain
//! forwarding over the same authenticated TCP transport (the `hops` bench's baseline:
//! relays pass frames on, no payments, signatures, verification or disk). Reports
//! MiB/s, CPU per MiB (every process of the path), and each node's peak resident
//! memory, after a 256 MiB and after a 1 GiB blob. Beside them, the floor: plain
//! forwarding plus only the per-byte work por cannot skip (see [`floor`]).
//!
//! `cargo bench -p por-cli --bench files` prints the figures (recorded in
//! docs/benchmarks.md). `POR_BENCH_MIB` sets the first blob's size (default 256),
//! `POR_BENCH_BIG_MIB` the second's (default 1024; 0 skips it), `POR_BENCH_ONLY=por3` runs only the 3-hop por transfer of the first blob
//! (`POR_BENCH_ONLY=floor`: plain forwarding and the floor), `POR_BENCH_WINDOW`
//! the requests in flight per provider (default 8).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../node/benches/common/plain.rs"]
mod plain;
#[path = "../tests/common/procs.rs"]
#[allow(dead_code)]
mod procs;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use por_chain::local::NEAR;
use por_protocol::types::EdgeTerms;
use por_protocol::Amount;
use por_transport::{Connection, Listener, Transport};
use procs::{spawn, wait_connected, Proc};

const MIB: u64 = 1024 * 1024;
/// The transfer engine's piece: one request, one response.
const PIECE: usize = 512 * 1024;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A process's CPU time so far (user + system), from `/proc/<pid>/stat`.
fn cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces), from field 3 on.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10) // USER_HZ = 100 on Linux
}

/// A process's peak resident memory so far (`VmHWM`), in MiB.
fn peak_mib(pid: u32) -> f64 {
    status_mib(pid, "VmHWM:")
}

/// A memory figure of `/proc/<pid>/status` (`VmHWM:`, `VmRSS:`), in MiB.
fn status_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Follows a child to its exit: its CPU time (read from its zombie, before it is
/// reaped) and its peak memory (`VmHWM`, sampled while it runs), and whether it
/// succeeded.
fn follow(mut child: std::process::Child) -> (bool, Duration, f64) {
    let pid = child.id();
    let mut peak: f64 = 0.0;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().next())
            .unwrap_or("Z");
        if state == "Z" {
            break;
        }
        peak = peak.max(peak_mib(pid));
        std::thread::sleep(Duration::from_millis(20));
    }
    let used = cpu(pid);
    let ok = child.wait().is_ok_and(|s| s.success());
    (ok, used, peak)
}

/// When the `get`'s transfer started and finished, from its `--json` progress lines
/// (`start`, then `finish`) as they arrive: the transfer's own time, without starting
/// the client's node and finding routes, as the plain baseline's excludes connecting.
fn transfer_times(
    out: std::process::ChildStdout,
) -> std::thread::JoinHandle<Option<(Instant, Instant)>> {
    std::thread::spawn(move || {
        let (mut start, mut finish) = (None, None);
        for line in std::io::BufRead::lines(std::io::BufReader::new(out)).map_while(Result::ok) {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            match v["event"].as_str() {
                Some("start") if start.is_none() => start = Some(Instant::now()),
                Some("finish") => finish = Some(Instant::now()),
                _ => {}
            }
        }
        start.zip(finish)
    })
}

fn write_blob(path: &Path, mib: u64) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut buf = vec![0u8; MIB as usize];
    for _ in 0..mib {
        for c in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&buf).unwrap();
    }
    f.flush().unwrap();
}

/// A served chain and a path of `por node run` processes ending at a provider that
/// serves its store; the client side runs as `por files get`.
struct Network {
    dir: PathBuf,
    chain: Proc,
    nodes: Vec<(String, Proc)>,
    store: PathBuf,
}

impl Network {
    fn flags(&self, name: &str) -> Vec<String> {
        let chain = self.chain.ready["chain"].as_str().unwrap();
        [
            "--config",
            self.dir.join(name).join("por.toml").to_str().unwrap(),
            "--chain",
            "served",
            "--chain-addr",
            chain,
            "--listen",
            "127.0.0.1:0",
            "--control",
            "127.0.0.1:0",
            "--sever-policy",
            "never",
            "--heuristic-window-ms",
            "0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    async fn start(tag: &str, hops: usize) -> Network {
        let dir =
            std::env::temp_dir().join(format!("por-bench-files-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (chain, chain_addr) = procs::served_chain(&dir);
        let mut names = vec!["client".to_string()];
        names.extend((1..hops).map(|i| format!("relay{i}")));
        names.push("provider".into());
        let names_s: Vec<&str> = names.iter().map(String::as_str).collect();
        procs::init_funded(&dir, &chain_addr, &names_s, 1_000).await;
        let store = dir.join("provider/store");
        let mut path = Network {
            dir: dir.clone(),
            chain,
            nodes: Vec::new(),
            store: store.clone(),
        };
        for n in &names {
            let mut args: Vec<String> = vec!["node".into(), "run".into()];
            args.extend(path.flags(n));
            if n == "provider" {
                args.extend(["--serve-files".into(), store.to_str().unwrap().into()]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let p = spawn(&args, &dir.join(format!("{n}.log")));
            path.nodes.push((n.clone(), p));
        }
        let terms = EdgeTerms {
            latency_ms: 5,
            base_cost: Amount(1_000),
            byte_cost: Amount(1),
            sync_interval_ms: 1_000,
            sync_phase_ms: 0,
            max_late_fee_rate: Amount(1_000),
            bandwidth: EdgeTerms::DEFAULT_BANDWIDTH,
        };
        procs::open_path(&dir, &chain_addr, &names_s, &terms, Amount(100 * NEAR)).await;
        for (i, (_, p)) in path.nodes.iter().enumerate() {
            wait_connected(p, if i == 0 || i == hops { 1 } else { 2 }).await;
        }
        // From here the client runs as `por files get`.
        let (_, client) = path.nodes.remove(0);
        let _ = procs::control(&client, serde_json::json!({"op": "shutdown"})).await;
        drop(client);
        path
    }

    /// Adds a blob of `mib` MiB to the provider's store; returns its ticket.
    fn add(&self, mib: u64) -> String {
        let src = self.dir.join(format!("blob-{mib}.bin"));
        write_blob(&src, mib);
        let out = Command::new(env!("CARGO_BIN_EXE_por"))
            .args(["files", "add", "--store", self.store.to_str().unwrap()])
            .args([
                "--config",
                self.dir.join("provider/por.toml").to_str().unwrap(),
            ])
            .arg(&src)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = std::fs::remove_file(&src);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["ticket"].as_str().unwrap().to_string()
    }

    /// `por files get` of `ticket`: throughput (from the transfer's first request to its
    /// last piece, and with the node's start), and CPU per MiB over every process.
    fn get(&self, label: &str, ticket: &str, mib: u64, window: u64) -> f64 {
        let out = self.dir.join(format!("got-{mib}.bin"));
        let before: Vec<Duration> = self.nodes.iter().map(|(_, p)| cpu(p.child.id())).collect();
        let idle: Vec<String> = self
            .nodes
            .iter()
            .map(|(name, p)| format!("{name} {:.0}", status_mib(p.child.id(), "VmRSS:")))
            .collect();
        let started = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_por"))
            .args(["files", "get", ticket, "--json"])
            .args([
                "--window",
                &window.to_string(),
                "--output",
                out.to_str().unwrap(),
            ])
            .args(self.flags("client"))
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(self.dir.join(format!("get-{mib}.log"))).unwrap())
            .spawn()
            .unwrap();
        let progress = transfer_times(child.stdout.take().unwrap());
        let (ok, client_cpu, client_peak) = follow(child);
        let elapsed = started.elapsed();
        let transfer = progress
            .join()
            .ok()
            .flatten()
            .map_or(elapsed, |(start, finish)| finish.duration_since(start));
        assert!(ok, "get failed: see {}", self.dir.display());
        assert_eq!(std::fs::metadata(&out).unwrap().len(), mib * MIB);
        let _ = std::fs::remove_file(&out);
        let per_mib = |d: Duration| d.as_secs_f64() * 1e3 / mib as f64;
        let mut total = client_cpu;
        let mut peaks = vec![format!("client {client_peak:.0}")];
        let mut cpus = vec![format!("client {:.1}", per_mib(client_cpu))];
        for ((name, p), b) in self.nodes.iter().zip(before) {
            let used = cpu(p.child.id()).saturating_sub(b);
            total += used;
            cpus.push(format!("{name} {:.1}", per_mib(used)));
            peaks.push(format!("{name} {:.0}", peak_mib(p.child.id())));
        }
        let wall = mib as f64 / elapsed.as_secs_f64();
        let rate = mib as f64 / transfer.as_secs_f64();
        println!(
            "{label:<30} {rate:>7.1} MiB/s ({wall:.1} with the node's start)   CPU {:>6.1} ms/MiB \
             ({})   peak RSS (MiB): {} (before: {})",
            per_mib(total),
            cpus.join(", "),
            peaks.join(", "),
            idle.join(", ")
        );
        rate
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.nodes.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The baseline: `hops` hops of plain forwarding over authenticated TCP (por's TLS
/// transport), the client asking for `PIECE`-byte frames with `window` in flight.
async fn plain(hops: usize, mib: u64, window: u64) -> f64 {
    let (keys, t) = plain::transports(hops, 100);
    // The server answers each small request with a piece.
    let mut l = t[hops].listen("127.0.0.1:0").await.unwrap();
    let server = l.local_addr();
    tokio::spawn(async move {
        let piece = Bytes::from(vec![7u8; PIECE]);
        while let Ok(c) = l.accept().await {
            let piece = piece.clone();
            tokio::spawn(async move {
                while let Ok((s, _)) = c.recv().await {
                    if c.send(s, piece.clone()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let first = plain::relays(&t, &keys, server, |_| |_: &Bytes| {}).await;
    let conn = Arc::new(t[0].dial(&first, keys[1].id()).await.unwrap());
    let pieces = mib * MIB / PIECE as u64;
    let cpu0 = self_cpu();
    let started = Instant::now();
    let sender = {
        let conn = conn.clone();
        let sem = Arc::new(tokio::sync::Semaphore::new(window as usize));
        let s2 = sem.clone();
        let reader = tokio::spawn(async move {
            let mut bytes = 0u64;
            for _ in 0..pieces {
                let (_, f) = conn.recv().await.unwrap();
                bytes += f.len() as u64;
                s2.add_permits(1);
            }
            bytes
        });
        (reader, sem)
    };
    for _ in 0..pieces {
        sender.1.acquire().await.unwrap().forget();
        conn.send(0, Bytes::from_static(b"get piece"))
            .await
            .unwrap();
    }
    let bytes = sender.0.await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(bytes, pieces * PIECE as u64);
    in_process(
        &format!("plain forwarding, {hops} hop(s)"),
        hops,
        mib,
        elapsed,
        cpu0,
    )
}

/// Prints and returns the throughput of a path run in this process, with the CPU it
/// used since `cpu0`.
fn in_process(label: &str, hops: usize, mib: u64, elapsed: Duration, cpu0: Duration) -> f64 {
    let rate = mib as f64 / elapsed.as_secs_f64();
    println!(
        "{label:<30} {rate:>7.1} MiB/s   CPU {:>6.1} ms/MiB   (all {hops} hops in this process)",
        (self_cpu() - cpu0).as_secs_f64() * 1e3 / mib as f64,
    );
    rate
}

/// The floor: plain forwarding over the same transport plus the work por must do for
/// each byte of a file, whatever else it costs (docs/benchmarks.md, "How far 0.5× is").
/// The provider reads each piece from its store and checks it against the outboard
/// (`Store::encode`, as a node serving files does, at most `DISK_READERS` at once) and
/// hashes the encoding it would sign; each relay hashes it (the check of the server's
/// signature) and appends it to a log; the client hashes it, verifies the encoding
/// and writes the data into the output file. No signatures, payments, engine, records
/// or separate processes: what por spends beyond this is all it could still win back.
async fn floor(hops: usize, mib: u64, window: u64) -> f64 {
    use por_files::{blob, server::DISK_READERS, Store};
    use por_protocol::crypto::Hash;
    use por_transport::Frame;
    use std::os::unix::fs::FileExt;

    let dir = std::env::temp_dir().join(format!("por-bench-floor-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = Arc::new(Store::open(dir.join("store")).unwrap());
    let src = dir.join("blob.bin");
    write_blob(&src, mib);
    let tag = store.add(&src).unwrap();
    std::fs::remove_file(&src).unwrap();
    let (root, size) = (tag.root, tag.size);
    let ranges = |i: u64| {
        let (a, b) = blob::piece_chunks(i);
        blob::chunk_ranges(&[(a, b)]).unwrap()
    };

    let (keys, t) = plain::transports(hops, 120);
    // The provider: a request is a piece's index; its answer is the index, then the
    // piece's verified encoding.
    let mut l = t[hops].listen("127.0.0.1:0").await.unwrap();
    let server = l.local_addr();
    tokio::spawn(async move {
        let readers = Arc::new(tokio::sync::Semaphore::new(DISK_READERS));
        while let Ok(c) = l.accept().await {
            let c = Arc::new(c);
            while let Ok((s, req)) = c.recv().await {
                let i = u64::from_le_bytes(req[..8].try_into().unwrap());
                let turn = readers.clone().acquire_owned().await.unwrap();
                let (c, store) = (c.clone(), store.clone());
                tokio::spawn(async move {
                    let encoded = tokio::task::spawn_blocking(move || {
                        let e = store.encode(&root, &ranges(i)).unwrap();
                        std::hint::black_box(Hash::of_body(&e));
                        e
                    })
                    .await
                    .unwrap();
                    drop(turn);
                    let frame = Frame::from_parts(vec![
                        Bytes::copy_from_slice(&i.to_le_bytes()),
                        Bytes::from(encoded),
                    ]);
                    let _ = c.send_frames(s, vec![frame]).await;
                });
            }
        }
    });
    // Each answer is checked and logged before it goes on; a relay's log starts again
    // every 8 MiB, as a node's is folded away.
    let logs = dir.clone();
    let first = plain::relays(&t, &keys, server, move |i| {
        let mut log = std::fs::File::create(logs.join(format!("relay{i}.log"))).unwrap();
        let mut logged = 0usize;
        move |f: &Bytes| {
            std::hint::black_box(Hash::of_body(&f[8..]));
            log.write_all(f).unwrap();
            logged += f.len();
            if logged >= 8 << 20 {
                log.set_len(0).unwrap();
                std::io::Seek::rewind(&mut log).unwrap();
                logged = 0;
            }
        }
    })
    .await;
    let conn = Arc::new(t[0].dial(&first, keys[1].id()).await.unwrap());
    let pieces = blob::pieces(size);
    let out = std::fs::File::create(dir.join("out.bin")).unwrap();
    out.set_len(size).unwrap();
    let cpu0 = self_cpu();
    let started = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(window as usize));
    let reader = {
        let (conn, sem) = (conn.clone(), sem.clone());
        tokio::spawn(async move {
            let mut bytes = 0u64;
            for _ in 0..pieces {
                let (_, f) = conn.recv().await.unwrap();
                let i = u64::from_le_bytes(f[..8].try_into().unwrap());
                let body = f.slice(8..);
                std::hint::black_box(Hash::of_body(&body));
                for run in blob::decode(root, size, &ranges(i), &body).unwrap() {
                    out.write_all_at(&run.data, run.offset).unwrap();
                    bytes += run.data.len() as u64;
                }
                sem.add_permits(1);
            }
            bytes
        })
    };
    for i in 0..pieces {
        sem.acquire().await.unwrap().forget();
        conn.send(0, Bytes::copy_from_slice(&i.to_le_bytes()))
            .await
            .unwrap();
    }
    let bytes = reader.await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(bytes, size);
    let rate = in_process(&format!("floor, {hops} hop(s)"), hops, mib, elapsed, cpu0);
    let _ = std::fs::remove_dir_all(&dir);
    rate
}

fn self_cpu() -> Duration {
    cpu(std::process::id())
}

fn main() {
    let mib = env("POR_BENCH_MIB", 256);
    let big = env("POR_BENCH_BIG_MIB", 1024);
    let window = env("POR_BENCH_WINDOW", 8);
    let only = std::env::var("POR_BENCH_ONLY").unwrap_or_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        println!(
            "files over por: {mib} MiB (then {big} MiB), {window} pieces of 512 KiB in flight, \
             loopback TCP, {} cores",
            std::thread::available_parallelism().map_or(0, |p| p.get())
        );
        if only == "floor" {
            let plain3 = plain(3, mib, window).await;
            let floor3 = floor(3, mib, window).await;
            println!("floor / plain throughput, 3 hops: {:.2}", floor3 / plain3);
            return;
        }
        if only == "por3" {
            let three = Network::start("3", 3).await;
            let ticket = three.add(mib);
            three.get(&format!("por, 3 hops, {mib} MiB"), &ticket, mib, window);
            return;
        }
        let plain3 = plain(3, mib, window).await;
        plain(1, mib, window).await;
        let floor3 = floor(3, mib, window).await;
        let three = Network::start("3", 3).await;
        let ticket = three.add(mib);
        let por3 = three.get(&format!("por, 3 hops, {mib} MiB"), &ticket, mib, window);
        if big > 0 {
            let ticket = three.add(big);
            three.get(&format!("por, 3 hops, {big} MiB"), &ticket, big, window);
        }
        drop(three);
        let one = Network::start("1", 1).await;
        let ticket = one.add(mib);
        one.get(&format!("por, 1 hop, {mib} MiB"), &ticket, mib, window);
        drop(one);
        println!(
            "floor / plain throughput, 3 hops: {:.2}; por / plain: {:.2}; por / floor: {:.2}",
            floor3 / plain3,
            por3 / plain3,
            por3 / floor3
        );
    });
}
