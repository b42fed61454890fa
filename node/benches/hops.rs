//! Throughput and latency through a 3-hop path (client, two relays, server) of real
//! por nodes on loopback TCP, against plain forwarding over the same topology (the
//! same authenticated transport, no PoR), and the added latency per relay.
//!
//! `cargo bench -p por-node --bench hops` prints the figures (recorded in
//! docs/benchmarks.md). `POR_BENCH_N` sets the requests per measurement (default
//! 20000), `POR_BENCH_CONCURRENCY` the requests in flight (default 256);
//! `POR_BENCH_ONLY=por3` runs only the 3-hop por path (for profiling);
//! `POR_BENCH_COMMIT_MS` sets the nodes' busy commit interval (default 2).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use por_node::{handler_fn, Outcome, RequestOptions, TransportKind};
use por_transport::{Connection, Listener, Transport};

mod common;
use common::env;
#[path = "common/plain.rs"]
mod plain;

/// mimalloc: the node allocates and frees a frame, a write and a few small records per
/// request on several threads; glibc's allocator cost about a sixth of the CPU.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn summary(name: &str, n: usize, elapsed: Duration, mut lat: Vec<Duration>) -> (f64, f64) {
    lat.sort();
    let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)].as_secs_f64() * 1e3;
    let rps = n as f64 / elapsed.as_secs_f64();
    println!(
        "{name:<34} {rps:>9.0} req/s   p50 {:>7.2} ms   p99 {:>7.2} ms",
        p(0.5),
        p(0.99)
    );
    (rps, p(0.5))
}

async fn por_path(hops: usize, n: usize, conc: usize) -> (f64, f64) {
    let path = common::Path::start(&format!("hops-{hops}"), hops, TransportKind::Tcp, || {
        handler_fn(|req| async move { req.body })
    })
    .await;
    let (client, server) = (path.client().clone(), path.server());
    // Warm up, then measure.
    let run = |count: usize| {
        let client = client.clone();
        async move {
            let bodies = futures::stream::iter((0..count).map(|_| vec![7u8; 64]));
            let started = Instant::now();
            let mut lat = Vec::with_capacity(count);
            let mut s =
                Box::pin(client.request_stream(server, bodies, conc, RequestOptions::default()));
            while let Some((_, r)) = s.next().await {
                match r.unwrap() {
                    Outcome::Response { latency_ms, .. } => {
                        lat.push(Duration::from_millis(latency_ms))
                    }
                    other => panic!("{other:?}"),
                }
            }
            (started.elapsed(), lat)
        }
    };
    let _ = run(n / 10).await;
    let (elapsed, lat) = run(n).await;
    let out = summary(&format!("por, {hops} hop(s), TCP"), n, elapsed, lat);
    path.stop().await;
    out
}

/// The same path with plain forwarding: each relay passes frames on over the same
/// authenticated TCP transport; no payments, no signatures, no persistence.
async fn plain_path(hops: usize, n: usize, conc: usize) -> (f64, f64) {
    let (keys, t) = plain::transports(hops, 100);
    // Server: echo.
    let mut l = t[hops].listen("127.0.0.1:0").await.unwrap();
    let server = l.local_addr();
    tokio::spawn(async move {
        while let Ok(c) = l.accept().await {
            tokio::spawn(async move {
                while let Ok((s, f)) = c.recv().await {
                    if c.send(s, f).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    // Relays, from the server back to the client.
    let first = plain::relays(&t, &keys, server, |_| |_: &Bytes| {}).await;
    let conn = Arc::new(t[0].dial(&first, keys[1].id()).await.unwrap());
    // Requests carry their index; responses are matched to send times.
    let sent: Arc<std::sync::Mutex<Vec<Option<Instant>>>> =
        Arc::new(std::sync::Mutex::new(vec![None; n]));
    let sem = Arc::new(tokio::sync::Semaphore::new(conc));
    let reader = {
        let (conn, sent, sem) = (conn.clone(), sent.clone(), sem.clone());
        tokio::spawn(async move {
            let mut lat = Vec::with_capacity(n);
            while lat.len() < n {
                let (_, f) = conn.recv().await.unwrap();
                let i = u64::from_le_bytes(f[..8].try_into().unwrap()) as usize;
                let t0 = sent.lock().unwrap()[i].unwrap();
                lat.push(t0.elapsed());
                sem.add_permits(1);
            }
            lat
        })
    };
    let started = Instant::now();
    for i in 0..n {
        sem.acquire().await.unwrap().forget();
        let mut frame = vec![7u8; 64];
        frame[..8].copy_from_slice(&(i as u64).to_le_bytes());
        sent.lock().unwrap()[i] = Some(Instant::now());
        conn.send(0, Bytes::from(frame)).await.unwrap();
    }
    let lat = reader.await.unwrap();
    summary(
        &format!("plain forwarding, {hops} hop(s), TCP"),
        n,
        started.elapsed(),
        lat,
    )
}

fn main() {
    let n = env("POR_BENCH_N", 20_000);
    let conc = env("POR_BENCH_CONCURRENCY", 256);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        println!(
            "{n} requests of 64 bytes, {conc} in flight, loopback, {} cores",
            std::thread::available_parallelism().map_or(0, |p| p.get())
        );
        if std::env::var("POR_BENCH_ONLY").is_ok_and(|v| v == "por3") {
            // One measurement alone, for profiling.
            por_path(3, n, conc).await;
            return;
        }
        let (plain3, plain3_p50) = plain_path(3, n, conc).await;
        let (_, plain1_p50) = plain_path(1, n, conc).await;
        let (por3, por3_p50) = por_path(3, n, conc).await;
        let (_, por1_p50) = por_path(1, n, conc).await;
        println!("por / plain throughput, 3 hops: {:.2}", por3 / plain3);
        println!(
            "added latency per relay at p50: por {:.2} ms, plain {:.2} ms",
            (por3_p50 - por1_p50) / 2.0,
            (plain3_p50 - plain1_p50) / 2.0
        );
    });
}
