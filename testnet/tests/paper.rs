//! The paper's section 5 examples, asserted to the millisecond, with final balances.
#![allow(clippy::unwrap_used)]

use por_testnet::{run_toml, Report};

const R: u128 = 1_000; // late-fee rate in the scenario files (yocto per ms)
                       // Base + per-byte cost for the 4-byte body "ping" and the 4-byte echo it buys (the
                       // paper prices the request only; por also prices the response bought). The paper's
                       // timings and late fees are unchanged.
const EDGE: i128 = 10_000 + 10 * (4 + 4);

fn run(file: &str) -> Report {
    let path = format!("{}/scenarios/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    let report = run_toml(&text).unwrap();
    assert!(
        report.violations.is_empty(),
        "{file}: {:?}",
        report.violations
    );
    report
}

/// `(t_ms, peer, amount)` of every record of `kind` at `node`.
fn at(r: &Report, kind: &str, node: &str) -> Vec<(u64, Option<String>, Option<u128>)> {
    r.of_kind(kind)
        .filter(|x| x.node == node)
        .map(|x| (x.t_ms, x.peer.clone(), x.amount))
        .collect()
}

fn times(r: &Report, kind: &str, node: &str) -> Vec<u64> {
    at(r, kind, node).into_iter().map(|x| x.0).collect()
}

fn fees(r: &Report, node: &str) -> Vec<(u64, u128)> {
    at(r, "late_fee_paid", node)
        .into_iter()
        .map(|(t, _, a)| (t, a.unwrap()))
        .collect()
}

fn balances(r: &Report) -> [i128; 6] {
    ["Alex", "Alice", "Bob", "Carol", "Dave", "Eve"].map(|n| r.balances[n])
}

/// The part common to 5.2 to 5.5: request at 0, Alice forwards at 100 with 800 ms,
/// Bob at 300 with 400 ms (send deadlines 900 and 700).
fn common_part(r: &Report) {
    assert_eq!(times(r, "request_sent", "Alex"), vec![0]);
    let alice = r
        .of_kind("request_forwarded")
        .find(|x| x.node == "Alice")
        .unwrap();
    assert_eq!(
        (alice.t_ms, alice.ms, alice.deadline_ms),
        (100, Some(800), Some(900))
    );
    let bob = r
        .of_kind("request_forwarded")
        .find(|x| x.node == "Bob")
        .unwrap();
    assert_eq!(
        (bob.t_ms, bob.ms, bob.deadline_ms),
        (300, Some(400), Some(700))
    );
    assert_eq!(bob.peer.as_deref(), Some("Eve"));
    assert_eq!(times(r, "request_acked", "Alex"), vec![200]);
}

#[test]
fn p5_1_happy_case_response_at_exactly_800ms() {
    let r = run("paper-5.1-happy.toml");
    let sent = r.of_kind("request_sent").next().unwrap();
    assert_eq!((sent.t_ms, sent.deadline_ms), (0, Some(800)));
    let fwd: Vec<_> = r
        .of_kind("request_forwarded")
        .map(|x| (x.t_ms, x.node.as_str(), x.ms.unwrap()))
        .collect();
    // Alice forwards at 100 with 600 ms, Bob at 300 with 200 ms.
    assert_eq!(fwd, vec![(100, "Alice", 600), (300, "Bob", 200)]);
    assert_eq!(times(&r, "request_received", "Carol"), vec![400]);
    assert_eq!(times(&r, "response_forwarded", "Bob"), vec![500]);
    // From Alice's perspective exactly 600 ms after she forwarded it.
    assert_eq!(times(&r, "response_forwarded", "Alice"), vec![700]);
    let d = r.of_kind("response_delivered").next().unwrap();
    assert_eq!(
        (d.t_ms, d.ms, d.detail.as_deref()),
        (800, Some(800), Some("on time"))
    );
    assert_eq!(r.of_kind("late_fee_paid").count(), 0);
    assert_eq!(r.of_kind("sever_initiated").count(), 0);
    assert_eq!(balances(&r), [-3 * EDGE, EDGE, EDGE, EDGE, 0, 0]);
}

#[test]
fn p5_2_bob_severs_at_once_proof_at_1000ms() {
    let r = run("paper-5.2-sever-at-once.toml");
    common_part(&r);
    assert_eq!(
        at(&r, "sever_initiated", "Bob"),
        vec![(700, Some("Eve".into()), None)]
    );
    assert_eq!(times(&r, "sever_proof_forwarded", "Bob"), vec![700]);
    assert_eq!(times(&r, "sever_proof_forwarded", "Alice"), vec![900]);
    let p = r.of_kind("sever_proof_delivered").next().unwrap();
    assert_eq!(
        (p.t_ms, p.node.as_str(), p.peer.as_deref()),
        (1000, "Alex", Some("Bob"))
    );
    assert_eq!(r.of_kind("late_fee_paid").count(), 0, "nobody is late");
    assert_eq!(r.of_kind("response_delivered").count(), 0);
    // Eve never received Bob's payment, so nothing moved on Bob-Eve.
    assert_eq!(balances(&r), [-4 * EDGE, EDGE, 3 * EDGE, 0, 0, 0]);
}

#[test]
fn p5_3_bob_waits_a_sync_and_pays() {
    let r = run("paper-5.3-wait-and-pay.toml");
    common_part(&r);
    // Alice pays Alex 100 r at 1000 and 500 r at 1500, out of pocket.
    assert_eq!(fees(&r, "Alice")[..2], [(1000, 100 * R), (1500, 500 * R)]);
    // Bob pays Alice 900 r with the proof at 1600 and severs then.
    assert_eq!(fees(&r, "Bob"), vec![(1600, 900 * R)]);
    assert_eq!(times(&r, "sever_initiated", "Bob"), vec![1600]);
    assert_eq!(times(&r, "sever_proof_forwarded", "Bob"), vec![1600]);
    // Alice forwards the proof with the remaining fee at her next sync with Alex.
    assert_eq!(fees(&r, "Alice")[2..], [(2000, 500 * R)]);
    assert_eq!(times(&r, "sever_proof_forwarded", "Alice"), vec![2000]);
    assert_eq!(times(&r, "sever_proof_delivered", "Alex"), vec![2100]);
    // Accrual stops at the proof: nothing is paid after it.
    assert!(r.of_kind("late_fee_paid").all(|x| x.t_ms <= 2000));
    let alex_fees: u128 = at(&r, "late_fee_received", "Alex")
        .iter()
        .map(|x| x.2.unwrap())
        .sum();
    assert_eq!(alex_fees, 1_100 * R);
    let (r_, e) = (R as i128, EDGE);
    assert_eq!(
        balances(&r),
        [
            -4 * e + 1_100 * r_,
            e - 1_100 * r_ + 900 * r_,
            3 * e - 900 * r_,
            0,
            0,
            0
        ]
    );
    assert_eq!(r.of_kind("loss_recorded").count(), 0, "Bob paid in full");
}

#[test]
fn p5_4_bob_does_not_pay_and_alice_severs_him() {
    let r = run("paper-5.4-unpaid-fee.toml");
    common_part(&r);
    assert_eq!(
        fees(&r, "Alice"),
        vec![(1000, 100 * R), (1500, 500 * R), (2000, 500 * R)]
    );
    assert!(fees(&r, "Bob").is_empty(), "Bob withholds");
    assert_eq!(times(&r, "sever_initiated", "Bob"), vec![1599]);
    assert_eq!(times(&r, "sever_proof_forwarded", "Bob"), vec![1599]);
    // Bob's 1600 sync reaches Alice at 1800 without the fee: 899 ms unpaid.
    assert_eq!(
        at(&r, "loss_recorded", "Alice"),
        vec![(1800, Some("Bob".into()), Some(899 * R))]
    );
    // Her earnings on the edge (one relay fee) minus that loss is negative: she severs.
    assert_eq!(
        at(&r, "sever_initiated", "Alice"),
        vec![(1800, Some("Bob".into()), None)]
    );
    // Nothing differs for Alex.
    assert_eq!(times(&r, "sever_proof_delivered", "Alex"), vec![2100]);
    let (r_, e) = (R as i128, EDGE);
    assert_eq!(
        balances(&r),
        [-4 * e + 1_100 * r_, e - 1_100 * r_, 3 * e, 0, 0, 0]
    );
}

#[test]
fn p5_5_bob_waits_longer_and_keeps_paying() {
    let r = run("paper-5.5-wait-longer.toml");
    common_part(&r);
    // Bob pays every second: 900 r at 1600, then 1000 r at 2600 ... 9600.
    let mut bob = vec![(1600, 900 * R)];
    bob.extend((2600..=9600).step_by(1000).map(|t| (t, 1000 * R)));
    assert_eq!(fees(&r, "Bob"), bob);
    assert_eq!(times(&r, "sever_initiated", "Bob"), vec![9600]);
    // Alice pays Alex twice a second: 100 r at 1000, then 500 r every 500 ms to 10000.
    let mut alice = vec![(1000, 100 * R)];
    alice.extend((1500..=10_000).step_by(500).map(|t| (t, 500 * R)));
    assert_eq!(fees(&r, "Alice"), alice);
    assert_eq!(times(&r, "sever_proof_forwarded", "Alice"), vec![10_000]);
    assert_eq!(times(&r, "sever_proof_delivered", "Alex"), vec![10_100]);
    // Alex is paid for every ms past his 1000 ms bound until Alice sent the proof
    // (10000 - 900 on her clock); Bob for every ms past his own deadline.
    let (r_, e) = (R as i128, EDGE);
    assert_eq!(
        balances(&r),
        [
            -4 * e + 9_100 * r_,
            e - 9_100 * r_ + 8_900 * r_,
            3 * e - 8_900 * r_,
            0,
            0,
            0
        ]
    );
    assert_eq!(
        r.of_kind("sever_initiated").count(),
        1,
        "Alice never severs Bob"
    );
}

#[test]
fn output_is_deterministic_json_lines() {
    let a = run("paper-5.3-wait-and-pay.toml").to_json_lines();
    let b = run("paper-5.3-wait-and-pay.toml").to_json_lines();
    assert_eq!(a, b);
    let last = a.lines().last().unwrap();
    assert!(
        last.starts_with(r#"{"kind":"final","balances":{"Alex":"#),
        "{last}"
    );
    for line in a.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v.get("kind").is_some());
    }
}
