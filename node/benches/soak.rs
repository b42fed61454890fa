//! A soak: a 3-hop path of real por nodes (client, two relays, server) on loopback,
//! first driven flat out to measure its capacity, then held at a share of it (open
//! loop, default 80 %) for an hour. Every sample (default 10 s) records the process's
//! resident memory, the requests sent and answered in it, their p50/p99/max round trip,
//! failed calls and outcomes other than a response, and the requests in flight.
//!
//! `cargo bench -p por-node --bench soak` runs it; the figures and curves are in
//! docs/benchmarks.md ("Soak"). `POR_SOAK_SECS` sets the soak's length (default 3600),
//! `POR_SOAK_CAPACITY_SECS` the capacity run's length (default 120; its last half counts),
//! `POR_SOAK_LOAD` the share of capacity in percent (default 80), `POR_SOAK_SAMPLE`
//! the sample length in seconds (default 10), `POR_SOAK_WARMUP` the samples left out of
//! the flatness figures (default: the first tenth), `POR_BENCH_TRANSPORT=tcp|quic` the
//! transport (default tcp), `POR_SOAK_OUT` a directory for `soak-<transport>.csv` and
//! `.svg` (default the current one), `POR_SOAK_MAX_IN_FLIGHT` the most requests the
//! load keeps in flight (default 20,000; past it a request is shed, not sent),
//! `POR_BENCH_ADMISSION_MS` the nodes' admission target (default the node's, 200 ms;
//! 0 turns shedding by delay off). The nodes' files go under `TMPDIR`.
//!
//! All four nodes and the load run in this one process, so the resident memory is the
//! four nodes' together plus the load's own (its requests in flight).
#![allow(clippy::unwrap_used)]

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use plotters::prelude::*;
use por_node::{handler_fn, NodeHandle, Outcome, RequestOptions, TransportKind};
use por_protocol::NodeId;

mod common;
use common::env;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Requests' body (echoed back).
const BODY: usize = 64;
/// The most requests the load keeps in flight by default (`POR_SOAK_MAX_IN_FLIGHT`);
/// past it a request is not sent but counted as shed, so a node that falls behind
/// shows as shed load, not as the load's own memory growing.
const MAX_IN_FLIGHT: usize = 20_000;

/// What the load has seen since the last sample.
#[derive(Default)]
struct Window {
    /// Round trips of the requests answered with a response.
    lat: Vec<Duration>,
    /// Calls that failed (an error from the node).
    errors: u64,
    /// Outcomes other than a response (a proof of a severed edge, a late notice).
    other: u64,
}

/// One sample's figures.
struct Sample {
    at_s: f64,
    sent: u64,
    answered: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    errors: u64,
    other: u64,
    shed: u64,
    in_flight: u64,
    rss_mib: f64,
}

fn quantile(lat: &[Duration], q: f64) -> f64 {
    let i = ((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1));
    lat.get(i).map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
}

/// This process's resident set (`VmRSS`), in MiB.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// Requests sent back to back, 256 in flight, for `secs`: answered per second in the
/// last half (the first brings the nodes to their steady state: kept closings at
/// their bound, checkpoints of full tables). Prints each 10 s's rate.
async fn capacity(client: &NodeHandle, server: NodeId, secs: u64) -> f64 {
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let bodies = futures::stream::iter(std::iter::repeat_with(|| vec![7u8; BODY]))
        .take_while(move |_| futures::future::ready(Instant::now() < end));
    let mut s = Box::pin(client.request_stream(server, bodies, 256, RequestOptions::default()));
    let (mut n, mut in_window, mut window_start) = (0u64, 0u64, start);
    let half = start + Duration::from_secs(secs / 2);
    while let Some((_, r)) = s.next().await {
        if !matches!(r, Ok(Outcome::Response { .. })) {
            continue;
        }
        in_window += 1;
        if Instant::now() >= half {
            n += 1;
        }
        if window_start.elapsed() >= Duration::from_secs(10) {
            eprintln!(
                "  capacity at {:>4.0} s: {:.0} req/s",
                start.elapsed().as_secs_f64(),
                in_window as f64 / window_start.elapsed().as_secs_f64()
            );
            (in_window, window_start) = (0, Instant::now());
        }
    }
    n as f64 / end.saturating_duration_since(half).as_secs_f64().max(1e-3)
}

/// Sends `rate` requests a second, open loop (each on its own task), for `secs`,
/// sampling every `sample` seconds; prints each sample as a CSV row as it is taken.
async fn soak(
    client: &NodeHandle,
    server: NodeId,
    rate: f64,
    secs: u64,
    sample: u64,
) -> Vec<Sample> {
    let window = Arc::new(Mutex::new(Window::default()));
    let in_flight = Arc::new(AtomicU64::new(0));
    let max_in_flight = env("POR_SOAK_MAX_IN_FLIGHT", MAX_IN_FLIGHT) as u64;
    let (mut sent, mut shed) = (0u64, 0u64);
    let (mut sent_at_sample, mut shed_at_sample) = (0u64, 0u64);
    let mut samples = Vec::new();
    let start = Instant::now();
    let mut next_sample = start + Duration::from_secs(sample);
    let end = start + Duration::from_secs(secs);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    println!("at_s,sent,answered,p50_ms,p99_ms,max_ms,errors,other,shed,in_flight,rss_mib");
    while Instant::now() < end {
        tick.tick().await;
        // As many as the rate asks for by now, whatever the tick's jitter.
        let due = (start.elapsed().as_secs_f64() * rate) as u64;
        while sent + shed < due {
            if in_flight.load(Ordering::Relaxed) >= max_in_flight {
                shed += 1;
                continue;
            }
            sent += 1;
            in_flight.fetch_add(1, Ordering::Relaxed);
            let (client, window, in_flight) = (client.clone(), window.clone(), in_flight.clone());
            tokio::spawn(async move {
                let t0 = Instant::now();
                let r = client
                    .request(server, vec![7u8; BODY], RequestOptions::default())
                    .await;
                let took = t0.elapsed();
                {
                    let mut w = window.lock().unwrap();
                    match r {
                        Ok(Outcome::Response { .. }) => w.lat.push(took),
                        Ok(_) => w.other += 1,
                        Err(_) => w.errors += 1,
                    }
                }
                in_flight.fetch_sub(1, Ordering::Relaxed);
            });
        }
        if Instant::now() >= next_sample {
            next_sample += Duration::from_secs(sample);
            let mut w = std::mem::take(&mut *window.lock().unwrap());
            w.lat.sort();
            let s = Sample {
                at_s: start.elapsed().as_secs_f64(),
                sent: sent - sent_at_sample,
                answered: w.lat.len(),
                p50_ms: quantile(&w.lat, 0.5),
                p99_ms: quantile(&w.lat, 0.99),
                max_ms: w.lat.last().map_or(f64::NAN, |d| d.as_secs_f64() * 1e3),
                errors: w.errors,
                other: w.other,
                shed: shed - shed_at_sample,
                in_flight: in_flight.load(Ordering::Relaxed),
                rss_mib: rss_mib(),
            };
            (sent_at_sample, shed_at_sample) = (sent, shed);
            println!("{}", csv_row(&s));
            samples.push(s);
        }
    }
    // Let what is in flight finish before the nodes stop.
    while in_flight.load(Ordering::Relaxed) > 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    samples
}

fn csv_row(s: &Sample) -> String {
    format!(
        "{:.1},{},{},{:.3},{:.3},{:.3},{},{},{},{},{:.1}",
        s.at_s,
        s.sent,
        s.answered,
        s.p50_ms,
        s.p99_ms,
        s.max_ms,
        s.errors,
        s.other,
        s.shed,
        s.in_flight,
        s.rss_mib
    )
}

/// The median of `xs` (NaN when empty).
fn median(mut xs: Vec<f64>) -> f64 {
    xs.retain(|x| x.is_finite());
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len() / 2).copied().unwrap_or(f64::NAN)
}

/// What the soak shows: resident memory after warm-up (least, most, spread), p99 in
/// the first and last sixth after warm-up, and the totals.
fn summary(samples: &[Sample], warmup: usize) -> String {
    let kept = samples.get(warmup..).unwrap_or_default();
    let rss: Vec<f64> = kept.iter().map(|s| s.rss_mib).collect();
    let (lo, hi) = rss
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        });
    let sixth = (kept.len() / 6).max(1);
    let p99 = |part: &[Sample]| median(part.iter().map(|s| s.p99_ms).collect());
    let first = p99(kept.get(..sixth).unwrap_or_default());
    let last = p99(kept
        .get(kept.len().saturating_sub(sixth)..)
        .unwrap_or_default());
    let total = |f: fn(&Sample) -> u64| samples.iter().map(f).sum::<u64>();
    let answered: usize = samples.iter().map(|s| s.answered).sum();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "resident memory after warm-up ({} samples left out): {lo:.1}–{hi:.1} MiB, spread {:.1} %",
        warmup,
        (hi / lo - 1.0) * 100.0
    );
    let _ = writeln!(
        out,
        "p99 (median of samples): first sixth {first:.2} ms, last sixth {last:.2} ms"
    );
    let _ = writeln!(
        out,
        "sent {}, answered {answered}, failed calls {}, other outcomes {}, shed {}",
        total(|s| s.sent),
        total(|s| s.errors),
        total(|s| s.other),
        total(|s| s.shed)
    );
    out
}

/// Resident memory and p99 against time, one SVG.
fn plot(samples: &[Sample], title: &str, path: &std::path::Path) -> Result<(), String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let root = SVGBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let (top, bottom) = root.split_vertically(300);
    let minutes = samples.last().map_or(1.0, |s| s.at_s / 60.0).max(1.0);
    let series = [
        (
            &top,
            "resident memory (MiB)",
            samples
                .iter()
                .map(|s| (s.at_s / 60.0, s.rss_mib))
                .collect::<Vec<_>>(),
            RGBColor(59, 111, 212),
        ),
        (
            &bottom,
            "p99 round trip per sample (ms)",
            samples.iter().map(|s| (s.at_s / 60.0, s.p99_ms)).collect(),
            RGBColor(224, 138, 43),
        ),
    ];
    for (i, (area, desc, points, colour)) in series.into_iter().enumerate() {
        let ymax = points
            .iter()
            .map(|p| p.1)
            .filter(|y| y.is_finite())
            .fold(1.0f64, f64::max)
            * 1.15;
        let mut chart = ChartBuilder::on(area)
            .caption(if i == 0 { title } else { "" }, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..minutes, 0.0..ymax)
            .map_err(|x| e(&x))?;
        chart
            .configure_mesh()
            .x_desc("minutes")
            .y_desc(desc)
            .draw()
            .map_err(|x| e(&x))?;
        chart
            .draw_series(LineSeries::new(
                points.into_iter().filter(|p| p.1.is_finite()),
                &colour,
            ))
            .map_err(|x| e(&x))?;
    }
    root.present().map_err(|x| e(&x))
}

fn main() {
    // `RUST_LOG` (e.g. `warn`) prints the nodes' logs to stderr.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init();
    }
    let secs = env("POR_SOAK_SECS", 3600) as u64;
    let load = env("POR_SOAK_LOAD", 80) as f64 / 100.0;
    let sample = (env("POR_SOAK_SAMPLE", 10) as u64).max(1);
    let warmup = env("POR_SOAK_WARMUP", (secs / sample / 10) as usize);
    let transport = match std::env::var("POR_BENCH_TRANSPORT").as_deref() {
        Ok("quic") => TransportKind::Quic,
        _ => TransportKind::Tcp,
    };
    let out = std::path::PathBuf::from(std::env::var("POR_SOAK_OUT").unwrap_or(".".into()));
    let name = format!("soak-{}", format!("{transport:?}").to_lowercase());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let path = common::Path::start(&name, 3, transport, || {
            handler_fn(|req| async move { req.body })
        })
        .await;
        let (client, server) = (path.client().clone(), path.server());
        let cap = capacity(&client, server, env("POR_SOAK_CAPACITY_SECS", 120) as u64).await;
        let rate = cap * load;
        eprintln!(
            "3 hops, {transport:?}, loopback, {} cores: capacity {cap:.0} req/s; \
             soaking at {:.0} % = {rate:.0} req/s for {secs} s, samples of {sample} s",
            std::thread::available_parallelism().map_or(0, |p| p.get()),
            load * 100.0
        );
        let samples = soak(&client, server, rate, secs, sample).await;
        let text = summary(&samples, warmup);
        eprint!("{text}");
        let mut csv = String::from(
            "at_s,sent,answered,p50_ms,p99_ms,max_ms,errors,other,shed,in_flight,rss_mib\n",
        );
        for s in &samples {
            let _ = writeln!(csv, "{}", csv_row(s));
        }
        std::fs::write(out.join(format!("{name}.csv")), csv).unwrap();
        let title = format!(
            "{transport:?}, 3 hops: {rate:.0} req/s ({:.0} % of {cap:.0}), {} min",
            load * 100.0,
            secs / 60
        );
        if let Err(e) = plot(&samples, &title, &out.join(format!("{name}.svg"))) {
            eprintln!("drawing the curves: {e}");
        }
        path.stop().await;
    });
}
