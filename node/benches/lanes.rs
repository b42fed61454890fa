//! Head-of-line blocking, measured: small requests through a 3-hop path of real por
//! nodes while a steady flow of 1 MiB responses shares every link, against the same
//! small flow alone; and the bulk flow's throughput against what it gets alone. Once
//! per transport (TCP, QUIC).
//!
//! `cargo bench -p por-node --bench lanes` prints the figures (recorded in
//! docs/benchmarks.md). `POR_BENCH_TRANSPORT=tcp|quic` runs one transport;
//! `POR_BENCH_SECS` sets each measurement's length (default 10 s);
//! `POR_BENCH_SMALL_RATE` the small requests sent per second, open loop (default 100);
//! `POR_BENCH_BULK_RATE` the 1 MiB responses asked for per second (default 30; 0 asks
//! back to back), `POR_BENCH_BULK` the most of them in flight (default 8),
//! `POR_BENCH_HOPS` the path's edges (default 3: the path),
//! `POR_BENCH_APART=1` sends the bulk flow over a second path of its own (a control:
//! the two flows then share only this host's cores). The nodes'
//! files go under `TMPDIR`. `POR_BENCH_TRACE=1` prints each small request slower than
//! 10 ms, with when it was sent.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use por_node::{handler_fn, NodeHandle, Outcome, RequestOptions, TransportKind};
use por_protocol::NodeId;

mod common;
use common::env;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// When the process started (for `POR_BENCH_TRACE`, which prints the small requests
/// slower than 10 ms and when they were sent).
fn start() -> Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// The large responses' size.
const BULK: usize = 1 << 20;
/// Small requests' body (echoed back).
const SMALL: usize = 64;

/// Small requests sent at `rate` per second for `secs`, open loop (each on its own
/// task, so a slow one does not delay the next); their round trips.
async fn small_flow(client: &NodeHandle, server: NodeId, rate: usize, secs: u64) -> Vec<Duration> {
    let mut tasks = tokio::task::JoinSet::new();
    let every = Duration::from_secs(1) / rate.max(1) as u32;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        tick.tick().await;
        let client = client.clone();
        tasks.spawn(async move {
            let t0 = Instant::now();
            let out = client
                .request(server, vec![7u8; SMALL], RequestOptions::default())
                .await
                .unwrap();
            assert!(matches!(out, Outcome::Response { .. }), "{out:?}");
            let took = t0.elapsed();
            if std::env::var("POR_BENCH_TRACE").is_ok() && took > Duration::from_millis(10) {
                eprintln!(
                    "slow: sent at {:?}, took {took:?}",
                    t0.duration_since(start())
                );
            }
            took
        });
    }
    let mut lat = Vec::new();
    while let Some(r) = tasks.join_next().await {
        lat.push(r.unwrap());
    }
    lat
}

/// 1 MiB responses asked for until `stop`, at most `conc` in flight: back to back
/// (`rate` 0), or `rate` a second (open loop, a steady flow); counts the bytes
/// received while `counting`.
fn bulk_flow(
    client: &NodeHandle,
    server: NodeId,
    (conc, rate): (usize, usize),
    stop: Arc<AtomicBool>,
    counting: Arc<AtomicBool>,
    bytes: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    let client = client.clone();
    tokio::spawn(async move {
        let slots = Arc::new(tokio::sync::Semaphore::new(conc.max(1)));
        let mut tick = tokio::time::interval(Duration::from_secs(1) / rate.max(1) as u32);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tasks = tokio::task::JoinSet::new();
        while !stop.load(Ordering::Relaxed) {
            let slot = slots.clone().acquire_owned().await.unwrap();
            if rate > 0 {
                tick.tick().await;
            }
            let (client, counting, bytes) = (client.clone(), counting.clone(), bytes.clone());
            tasks.spawn(async move {
                let _slot = slot;
                let options = RequestOptions {
                    response_limit: BULK as u64,
                    ..RequestOptions::default()
                };
                let out = client
                    .request(server, b"B".to_vec(), options)
                    .await
                    .unwrap();
                let Outcome::Response { body, .. } = out else {
                    panic!("{out:?}")
                };
                assert_eq!(body.len(), BULK);
                if counting.load(Ordering::Relaxed) {
                    bytes.fetch_add(BULK as u64, Ordering::Relaxed);
                }
            });
            while let Some(r) = tasks.try_join_next() {
                r.unwrap();
            }
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
    })
}

fn quantile(lat: &mut [Duration], q: f64) -> f64 {
    lat.sort();
    let i = ((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1));
    lat.get(i).map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
}

/// The bulk flow (over `bulk_path`) alone for `secs` after a second's ramp (MiB/s),
/// or beside a small flow (over `small_path`) measured over the same window (then
/// also its round trips).
async fn with_bulk(
    bulk_path: (&NodeHandle, NodeId),
    small_path: (&NodeHandle, NodeId),
    bulk: (usize, usize),
    secs: u64,
    small_rate: Option<usize>,
) -> (f64, Vec<Duration>) {
    let (client, server) = bulk_path;
    let (stop, counting, bytes) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let flow = bulk_flow(
        client,
        server,
        bulk,
        stop.clone(),
        counting.clone(),
        bytes.clone(),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    counting.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    let lat = match small_rate {
        Some(rate) => small_flow(small_path.0, small_path.1, rate, secs).await,
        None => {
            tokio::time::sleep(Duration::from_secs(secs)).await;
            Vec::new()
        }
    };
    counting.store(false, Ordering::Relaxed);
    let elapsed = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    flow.await.unwrap();
    let mib = bytes.load(Ordering::Relaxed) as f64 / (1u64 << 20) as f64;
    (mib / elapsed, lat)
}

async fn run(transport: TransportKind, secs: u64, rate: usize, bulk: (usize, usize)) {
    let hops = env("POR_BENCH_HOPS", 3);
    let path = common::Path::start(&format!("lanes-{transport:?}"), hops, transport, || {
        handler_fn(|req| async move {
            if req.body == b"B" {
                vec![0x5a; BULK]
            } else {
                req.body
            }
        })
    })
    .await;
    // The control experiment: the bulk flow over a path of its own, sharing only
    // the host's cores with the small requests' path.
    let apart = match std::env::var("POR_BENCH_APART").is_ok_and(|v| v == "1") {
        true => Some(
            common::Path::start(
                &format!("lanes-{transport:?}-bulk"),
                hops,
                transport,
                || handler_fn(|_| async move { vec![0x5a; BULK] }),
            )
            .await,
        ),
        false => None,
    };
    let small = (path.client(), path.server());
    let big = apart.as_ref().map_or(small, |p| (p.client(), p.server()));
    // Warm up both flows.
    let _ = with_bulk(big, small, bulk, 1, Some(rate)).await;
    let mut alone = small_flow(small.0, small.1, rate, secs).await;
    let (bulk_alone, _) = with_bulk(big, small, bulk, secs, None).await;
    let (bulk_loaded, mut loaded) = with_bulk(big, small, bulk, secs, Some(rate)).await;
    let (a50, a99) = (quantile(&mut alone, 0.5), quantile(&mut alone, 0.99));
    let (l50, l99) = (quantile(&mut loaded, 0.5), quantile(&mut loaded, 0.99));
    println!(
        "{transport:?}: small alone       p50 {a50:>7.2} ms   p99 {a99:>7.2} ms   ({} requests)",
        alone.len()
    );
    println!(
        "{transport:?}: small beside bulk p50 {l50:>7.2} ms   p99 {l99:>7.2} ms   ({} requests)   p99 ×{:.2}",
        loaded.len(),
        l99 / a99
    );
    println!(
        "{transport:?}: bulk alone {bulk_alone:>7.1} MiB/s, beside small {bulk_loaded:>7.1} MiB/s   ({:+.1} %)",
        (bulk_loaded / bulk_alone - 1.0) * 100.0
    );
    path.stop().await;
    if let Some(p) = apart {
        p.stop().await;
    }
}

fn main() {
    start();
    let secs = env("POR_BENCH_SECS", 10) as u64;
    let rate = env("POR_BENCH_SMALL_RATE", 100);
    let conc = env("POR_BENCH_BULK", 8);
    let bulk_rate = env("POR_BENCH_BULK_RATE", 30);
    let only = std::env::var("POR_BENCH_TRANSPORT").unwrap_or_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        println!(
            "{} hops, loopback, {} cores: {rate} small ({SMALL}-byte) requests/s, open loop, \
             beside {} 1 MiB responses (at most {conc} in flight); {secs} s per measurement",
            env("POR_BENCH_HOPS", 3),
            std::thread::available_parallelism().map_or(0, |p| p.get()),
            if bulk_rate == 0 {
                "back-to-back".to_string()
            } else {
                format!("{bulk_rate}/s of")
            }
        );
        for (name, kind) in [("tcp", TransportKind::Tcp), ("quic", TransportKind::Quic)] {
            if only.is_empty() || only == name {
                run(kind, secs, rate, (conc, bulk_rate)).await;
            }
        }
    });
}
