//! Group-commit latency of the node database under a relay's load: every commit
//! keeps a 1 MiB response among the closings (and drops the oldest past 64 kept), as
//! a relay forwarding 1 MiB responses does, so the log passes its checkpoint size
//! every eight commits. What a commit costs, and above all its tail: a commit that
//! waits for a checkpoint holds back every frame of the node that waits for
//! durability, small requests' acks included.
//!
//! `cargo bench -p por-node --bench commits` prints the figures (recorded in
//! docs/benchmarks.md). `POR_BENCH_COMMITS` sets how many (default 2000),
//! `POR_BENCH_RATE` how many a second (default 100, a relay forwarding 100 MiB/s; 0:
//! back to back); the files go under `TMPDIR`.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use por_node::db::NodeDb;
use por_protocol::channel::ChannelRecord;
use por_protocol::merkle::MerkleProof;
use por_protocol::messages::Message;
use por_protocol::store::Write;
use por_protocol::types::{
    ChannelId, EdgeInfo, EdgeTerms, RequestId, ResponseBody, SignedResponse,
};
use por_protocol::{Amount, Hash, Keypair, Signature};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The responses' size.
const BODY: usize = 1 << 20;
/// Closings kept before the oldest is dropped.
const KEPT: u64 = 64;

fn id(n: u64) -> RequestId {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&n.to_le_bytes());
    RequestId(b)
}

/// A relay's commit: the response it forwarded, kept; the oldest kept one dropped.
fn commit_of(n: u64, body: &bytes::Bytes) -> Vec<Write> {
    let request = id(n);
    let message = Message::Response {
        request,
        response: SignedResponse {
            body: ResponseBody {
                request,
                body_hash: Hash([7; 32]),
                body_len: BODY as u64,
            },
            proof: MerkleProof {
                leaves: 1,
                index: 0,
                siblings: Vec::new(),
            },
            sig: Signature([1; 64]),
        },
        body: body.clone(),
        fee: None,
    };
    let mut writes = vec![Write::Closing {
        channel: ChannelId(1),
        request,
        message: Box::new(message),
    }];
    if n >= KEPT {
        writes.push(Write::ClosingDropped {
            request: id(n - KEPT),
        });
    }
    writes
}

/// The upstream channel the responses are kept for.
fn channel() -> ChannelRecord {
    let (a, b) = (Keypair::from_seed([1; 32]), Keypair::from_seed([2; 32]));
    let edge = EdgeInfo {
        id: ChannelId(1),
        a: a.id(),
        b: b.id(),
        terms: EdgeTerms {
            latency_ms: 10,
            base_cost: Amount(1),
            byte_cost: Amount(0),
            sync_interval_ms: 1000,
            sync_phase_ms: 0,
            max_late_fee_rate: Amount(1),
            bandwidth: EdgeTerms::DEFAULT_BANDWIDTH,
        },
        deposit_a: Amount(100),
        deposit_b: Amount(100),
    };
    ChannelRecord::open(edge, a.id()).unwrap()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let commits = env("POR_BENCH_COMMITS", 2000).max(1);
    let rate = env("POR_BENCH_RATE", 100);
    let dir = std::env::temp_dir().join(format!("por-bench-commits-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut db = NodeDb::open(&dir.join("node.redb")).unwrap();
    db.commit(vec![Write::Channel(Box::new(channel()))])
        .unwrap();
    let body = bytes::Bytes::from(vec![0x5a; BODY]);
    let mut took = Vec::with_capacity(commits as usize);
    let every = Duration::from_secs(1) / u32::try_from(rate.max(1)).unwrap_or(u32::MAX);
    let t0 = Instant::now();
    for n in 0..commits {
        if rate > 0 {
            // Paced from the start, as responses arrive: a slow commit is not
            // followed by a pause that would hide the next one's wait.
            let due = t0 + every * u32::try_from(n).unwrap_or(u32::MAX);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        let writes = commit_of(n, &body);
        let t = Instant::now();
        db.commit(writes).unwrap();
        took.push(t.elapsed());
    }
    let total = t0.elapsed();
    drop(db);
    took.sort();
    let q = |p: f64| ms(took[((took.len() as f64 * p) as usize).min(took.len() - 1)]);
    println!(
        "{commits} commits of a kept 1 MiB response, {} a second, log {} MiB per checkpoint, files under {}:",
        if rate == 0 { "back to back".to_string() } else { rate.to_string() },
        por_node::db::DEFAULT_CHECKPOINT_BYTES >> 20,
        std::env::temp_dir().display()
    );
    println!(
        "commit p50 {:.2} ms   p99 {:.2} ms   p99.9 {:.2} ms   max {:.2} ms   ({:.0} MiB/s in all)",
        q(0.5),
        q(0.99),
        q(0.999),
        ms(*took.last().unwrap()),
        (commits as f64 * BODY as f64 / f64::from(1u32 << 20)) / total.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
