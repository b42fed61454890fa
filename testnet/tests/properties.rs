//! Property tests over random topologies, policies, requests and fault schedules.
//!
//! Each case is a scenario built from one seed (so a failure is reproduced by its
//! seed), run in the deterministic simulator. Invariants:
//! - money is conserved on every channel, and no payee holds more than its payer signed;
//! - channel states only move forward (the store refuses anything else);
//! - every acknowledged request ends in exactly one of response, proof or refusal
//!   when every node eventually severs an overdue downstream, and otherwise keeps
//!   receiving late fees for as long as it is late;
//! - no node pays late fees for time before its deadline;
//! - after a crash and restart no request is forwarded twice and no late fee is paid
//!   twice.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use por_protocol::{ProofForwarding, SeverPolicy};
use por_testnet::scenario::{AmountSpec, EdgeSpec, FaultSpec, NodeSpec, RequestSpec};
use por_testnet::{Report, Scenario, Sim};

const DURATION_MS: u64 = 40_000;

fn name(i: usize) -> String {
    format!("n{i}")
}

/// A random connected network. `eventually_sever` gives every node a policy that
/// severs an overdue downstream in bounded time.
fn scenario(seed: u64, eventually_sever: bool, crashes: bool) -> Scenario {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = rng.gen_range(3..=7usize);
    let nodes = (0..n)
        .map(|i| NodeSpec {
            name: name(i),
            stake: AmountSpec(rng.gen_range(1..1000)),
            sever: if eventually_sever {
                match rng.gen_range(0..3) {
                    0 => SeverPolicy::Immediate,
                    1 => SeverPolicy::WaitSyncs(rng.gen_range(1..=3)),
                    _ => SeverPolicy::WaitMs(rng.gen_range(0..2000)),
                }
            } else {
                SeverPolicy::Never
            },
            forward_proofs: if rng.gen_bool(0.5) {
                ProofForwarding::Immediate
            } else {
                ProofForwarding::NextSync
            },
            heuristic_window_ms: None,
            withhold_late_fees: false,
            respond: true,
            response_delay_ms: if rng.gen_bool(0.2) {
                rng.gen_range(0..300)
            } else {
                0
            },
        })
        .collect();
    let mut pairs = BTreeSet::new();
    // A random spanning tree, then a few extra edges.
    for i in 1..n {
        pairs.insert((rng.gen_range(0..i), i));
    }
    for _ in 0..rng.gen_range(0..n) {
        let (a, b) = (rng.gen_range(0..n), rng.gen_range(0..n));
        if a != b {
            pairs.insert((a.min(b), a.max(b)));
        }
    }
    let edges = pairs
        .into_iter()
        .map(|(a, b)| {
            let interval = [100u64, 250, 500, 1000][rng.gen_range(0..4)];
            EdgeSpec {
                a: name(a),
                b: name(b),
                latency_ms: rng.gen_range(1..=20) * 10,
                actual_latency_ms: None,
                base_cost: AmountSpec(rng.gen_range(1..1000)),
                byte_cost: AmountSpec(rng.gen_range(0..10)),
                sync_interval_ms: interval,
                sync_phase_ms: rng.gen_range(0..interval),
                max_late_fee_rate: AmountSpec(1_000),
                // Slow edges make the transmission term count in budgets.
                bandwidth: [1_000u64, 50_000, 125_000_000][rng.gen_range(0..3)],
                deposit_a: AmountSpec(1_000_000_000_000),
                deposit_b: AmountSpec(1_000_000_000_000),
            }
        })
        .collect();
    let clients: Vec<usize> = (0..n).filter(|_| rng.gen_bool(0.5)).collect();
    let clients = if clients.is_empty() { vec![0] } else { clients };
    let requests = (0..rng.gen_range(1..=25))
        .map(|_| {
            let c = clients[rng.gen_range(0..clients.len())];
            let mut s = rng.gen_range(0..n);
            if s == c {
                s = (s + 1) % n;
            }
            let body = "x".repeat(rng.gen_range(0..64));
            RequestSpec {
                at_ms: rng.gen_range(0..4000),
                client: name(c),
                server: name(s),
                // Simulated servers echo: at least the body's length is bought.
                response_limit: Some(body.len() as u64 + rng.gen_range(0..64)),
                body,
                late_fee_rate: AmountSpec(rng.gen_range(1..=1000)),
                route: None,
                max_rtt_ms: None,
            }
        })
        .collect();
    let mut faults = Vec::new();
    for i in 0..n {
        if clients.contains(&i) || !rng.gen_bool(0.35) {
            continue;
        }
        let from_ms = rng.gen_range(0..5000);
        if crashes && rng.gen_bool(0.6) {
            faults.push(FaultSpec::Offline {
                node: name(i),
                from_ms,
                until_ms: Some(from_ms + rng.gen_range(1..4000)),
                restart: true,
            });
        } else {
            faults.push(FaultSpec::Offline {
                node: name(i),
                from_ms,
                until_ms: None,
                restart: false,
            });
        }
    }
    Scenario {
        name: format!("random-{seed}"),
        description: String::new(),
        seed,
        duration_ms: DURATION_MS,
        chain_delay_ms: 2_000,
        nodes,
        edges,
        requests,
        faults,
        loads: Vec::new(),
        loads_expanded: false,
    }
}

/// The timeline lines about one request, for failure messages.
fn story(r: &Report, req: &str) -> String {
    r.to_json_lines()
        .lines()
        .filter(|l| {
            l.contains(&format!("\"{req}\""))
                || l.contains("offline")
                || l.contains("online")
                || l.contains("sever")
                || l.contains("refused")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn outcomes(r: &Report) -> BTreeMap<String, Vec<&'static str>> {
    let mut out: BTreeMap<String, Vec<&'static str>> = BTreeMap::new();
    for x in &r.records {
        if matches!(
            x.kind,
            "response_delivered" | "sever_proof_delivered" | "request_rejected"
        ) {
            out.entry(x.request.clone().unwrap())
                .or_default()
                .push(x.kind);
        }
    }
    out
}

fn no_duplicates(r: &Report) -> Result<(), String> {
    let mut forwarded = BTreeSet::new();
    let mut fee_totals: BTreeMap<(String, String), u128> = BTreeMap::new();
    for x in &r.records {
        let key = (x.node.clone(), x.request.clone().unwrap_or_default());
        match x.kind {
            "request_forwarded" if !forwarded.insert(key.clone()) => {
                return Err(format!("{key:?} forwarded twice"));
            }
            "late_fee_paid" => {
                let total = x.total.unwrap();
                let prev = fee_totals.insert(key.clone(), total).unwrap_or(0);
                if total <= prev || total - prev != x.amount.unwrap() {
                    return Err(format!("{key:?} paid a fee twice: total {prev} -> {total}"));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48),
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_acked_request_ends_in_exactly_one_outcome(seed in any::<u64>()) {
        let sc = scenario(seed, true, true);
        let r = Sim::new(sc).unwrap().run();
        prop_assert!(r.violations.is_empty(), "seed {seed}: {:?}", r.violations);
        let out = outcomes(&r);
        for (req, kinds) in &out {
            prop_assert_eq!(kinds.len(), 1, "seed {}: {} ended {:?}\n{}", seed, req, kinds, story(&r, req));
        }
        for req in &r.acked {
            prop_assert!(out.contains_key(req), "seed {seed}: acked {req} never resolved\n{}", story(&r, req));
        }
        prop_assert_eq!(no_duplicates(&r), Ok(()), "seed {}", seed);
    }

    #[test]
    fn unresolved_requests_keep_earning_late_fees(seed in any::<u64>()) {
        // Nobody severs: a request that meets a dead node is never answered, and its
        // client must be paid for every sync interval of lateness.
        let sc = scenario(seed, false, false);
        let rates: BTreeMap<String, u128> = sc
            .requests
            .iter()
            .enumerate()
            .map(|(k, q)| (format!("r{}", k + 1), q.late_fee_rate.0))
            .collect();
        let r = Sim::new(sc).unwrap().run();
        prop_assert!(r.violations.is_empty(), "seed {seed}: {:?}", r.violations);
        let out = outcomes(&r);
        for req in &r.acked {
            if out.contains_key(req) {
                continue;
            }
            let sent = r.of_kind("request_sent").find(|x| x.request.as_ref() == Some(req)).unwrap();
            let deadline = sent.deadline_ms.unwrap();
            let received: u128 = r
                .of_kind("late_fee_received")
                .filter(|x| x.request.as_ref() == Some(req))
                .map(|x| x.amount.unwrap())
                .sum();
            // The first hop syncs at least every 1000 ms and its fees lag its own clock by
            // at most its deadline offset: a generous lower bound that still fails if fees
            // stop flowing.
            // Only an online first hop can pay: count lateness until it went down.
            let first_hop = sent.peer.clone().unwrap();
            let until = r
                .of_kind("node_offline")
                .find(|x| x.node == first_hop)
                .map_or(DURATION_MS, |x| x.t_ms);
            let late_ms = until.saturating_sub(deadline).saturating_sub(3_000);
            prop_assert!(
                received >= rates[req] * u128::from(late_ms),
                "seed {seed}: {req} late {late_ms} ms but received only {received}\n{}", story(&r, req)
            );
        }
    }
}

/// Guards against vacuous properties: the generator must actually produce every
/// outcome, crashes with restarts, late fees and proofs relayed by intermediate nodes.
#[test]
fn generator_covers_every_outcome() {
    let mut kinds: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut restarts = 0;
    let mut acked = 0;
    for seed in 0..40 {
        let r = Sim::new(scenario(seed, true, true)).unwrap().run();
        acked += r.acked.len();
        for x in &r.records {
            *kinds.entry(x.kind).or_default() += 1;
            if x.detail.as_deref() == Some("restarted from store") {
                restarts += 1;
            }
        }
    }
    eprintln!("acked {acked}, restarts {restarts}, kinds {kinds:?}");
    for k in [
        "response_delivered",
        "sever_proof_delivered",
        "sever_proof_forwarded",
        "late_fee_paid",
        "late_fee_received",
        "request_forwarded",
        "sever_initiated",
    ] {
        assert!(kinds.get(k).copied().unwrap_or(0) > 0, "no {k} in 40 seeds");
    }
    assert!(restarts > 5, "only {restarts} restarts");
    assert!(acked > 200, "only {acked} acked requests");
}
