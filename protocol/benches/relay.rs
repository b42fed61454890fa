//! Relay CPU per request, against the signature operations it cannot avoid.
//!
//! Topology A (client) -- B (relay) -- C (server), 256-byte bodies both ways. Only B's
//! calls are timed: handling the paid request (verify A's update, sign the ack, sign
//! the payment to C), C's ack (verify) and C's response (verify the server's
//! signature), plus B's persistence bookkeeping. The baseline is those same five
//! ed25519 operations, 2 signs and 3 verifies, on messages of the same size.
//!
//! After criterion's own report, a summary line prints both per-request figures and
//! the overhead ratio (goal: the engine adds < 20% to the crypto).
// The benchmark itself reads the clock; the engine it measures does not.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::disallowed_methods,
    clippy::disallowed_types
)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use por_protocol::messages::Message;
use por_protocol::testing::Network;
use por_protocol::types::{ChannelId, EdgeInfo, EdgeTerms, Route};
use por_protocol::{crypto, Amount, Event, Keypair, Time};

const BODY: usize = 256;

struct Net {
    net: Network,
    route: Route,
    now: Time,
}

fn net() -> Net {
    let keys = [1u8, 2, 3].map(|i| Keypair::from_seed([i; 32]));
    let ids = keys.clone().map(|k| k.id());
    let terms = EdgeTerms {
        latency_ms: 10,
        base_cost: Amount(100),
        byte_cost: Amount(1),
        sync_interval_ms: 1_000_000,
        sync_phase_ms: 0,
        max_late_fee_rate: Amount(10),
        bandwidth: EdgeTerms::DEFAULT_BANDWIDTH,
    };
    let edge = |id, a: usize, b: usize| EdgeInfo {
        id: ChannelId(id),
        a: ids[a],
        b: ids[b],
        terms: terms.clone(),
        deposit_a: Amount(u128::MAX / 4),
        deposit_b: Amount(u128::MAX / 4),
    };
    let edges = vec![edge(1, 0, 1), edge(2, 1, 2)];
    Net {
        net: Network::with_keys(&keys, edges, Time::ZERO),
        route: Route {
            nodes: ids.to_vec(),
            channels: vec![ChannelId(1), ChannelId(2)],
        },
        now: Time(1),
    }
}

impl Net {
    /// Node `i`'s frames, with writes reported durable (no store: it is not measured).
    fn drain(&mut self, i: usize) -> Vec<(usize, Message)> {
        let node = &mut self.net.nodes[i];
        node.discard_writes();
        while node.engine.poll_event().is_some() {}
        let out = node.transmits();
        out.into_iter()
            .map(|t| (self.net.index(&t.to).unwrap(), t.message))
            .collect()
    }

    fn deliver(&mut self, from: usize, to: usize, m: Message) {
        self.net.deliver(from, to, m, self.now).unwrap();
    }

    /// B's work on frames from `from`: the only part that is measured. Not inlined, so
    /// that callgrind can count its instructions (`--toggle-collect=*relay_step*`).
    #[inline(never)]
    fn relay_step(&mut self, from: usize, msgs: Vec<Message>) -> Vec<(usize, Message)> {
        for m in msgs {
            self.deliver(from, 1, m);
        }
        self.drain(1)
    }

    /// One request through the relay; returns the time spent in B alone.
    fn one(&mut self) -> Duration {
        let now = self.now;
        self.net.nodes[0]
            .engine
            .send_request(self.route.clone(), vec![7u8; BODY], 64, Amount(1), now)
            .unwrap();
        let (_, req) = self.drain(0).pop().unwrap();

        let t0 = Instant::now();
        let out_b = self.relay_step(0, vec![req]);
        let mut spent = t0.elapsed();

        let mut to_c = Vec::new();
        for (to, m) in out_b {
            if to == 2 {
                to_c.push(m);
            } else {
                self.deliver(1, 0, m);
            }
        }
        for m in to_c {
            self.deliver(1, 2, m);
        }
        let id = std::iter::from_fn(|| self.net.nodes[2].engine.poll_event())
            .find_map(|e| match e {
                Event::RequestReceived { request, .. } => Some(request),
                _ => None,
            })
            .unwrap();
        self.net.nodes[2]
            .engine
            .respond(id, vec![9u8; BODY], now)
            .unwrap();
        let out_c = self.drain(2);

        let t1 = Instant::now();
        let out_b = self.relay_step(2, out_c.into_iter().map(|(_, m)| m).collect());
        spent += t1.elapsed();

        for (_, m) in out_b {
            self.deliver(1, 0, m);
        }
        self.drain(0);
        spent
    }
}

/// The crypto a relay must do per request: 2 signs, 3 verifies, on ~300-byte inputs.
#[inline(never)]
fn crypto_only(k: &Keypair, msgs: &[Vec<u8>; 3], sigs: &[crypto::Signature; 3]) {
    black_box(k.sign_bytes(&msgs[0]));
    black_box(k.sign_bytes(&msgs[1]));
    for (m, s) in msgs.iter().zip(sigs) {
        crypto::verify_bytes(&k.id(), m, s).unwrap();
    }
}

fn crypto_inputs() -> (Keypair, [Vec<u8>; 3], [crypto::Signature; 3]) {
    let k = Keypair::from_seed([5; 32]);
    let msgs = [vec![1u8; 300], vec![2u8; 300], vec![3u8; 300]];
    let sigs = [
        k.sign_bytes(&msgs[0]),
        k.sign_bytes(&msgs[1]),
        k.sign_bytes(&msgs[2]),
    ];
    (k, msgs, sigs)
}

fn per_op(total: Duration, n: u32) -> f64 {
    total.as_secs_f64() * 1e6 / f64::from(n)
}

fn main() {
    // POR_RELAY_SUMMARY_ONLY=1 skips criterion (for profilers: callgrind, perf).
    if std::env::var_os("POR_RELAY_SUMMARY_ONLY").is_none() {
        run_criterion();
    }
    summary();
}

fn run_criterion() {
    let mut c = Criterion::default().configure_from_args();
    let mut n = net();
    c.bench_function("relay/request+response (engine, 2 sign + 3 verify)", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| n.one()).sum())
    });
    let (k, msgs, sigs) = crypto_inputs();
    c.bench_function("crypto/2 sign + 3 verify", |b| {
        b.iter(|| crypto_only(&k, &msgs, &sigs))
    });
    c.final_summary();
}

/// A direct side-by-side figure for docs/benchmarks.md.
fn summary() {
    let n_iter: u32 = std::env::var("POR_RELAY_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000);
    let (k, msgs, sigs) = crypto_inputs();
    let mut n = net();
    for _ in 0..200 {
        n.one();
    }
    // Interleaved, so that a noisy machine slows both sides alike.
    let (mut relay, mut crypto) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..n_iter {
        relay += n.one();
        let t = Instant::now();
        crypto_only(&k, &msgs, &sigs);
        crypto += t.elapsed();
    }
    let (r, c) = (per_op(relay, n_iter), per_op(crypto, n_iter));
    println!(
        "summary: relay {r:.1} us/request, its signatures alone {c:.1} us, engine overhead {:.1}%",
        (r / c - 1.0) * 100.0
    );
}
