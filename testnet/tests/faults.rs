//! The simulator's fault kinds on the paper's topology: extra delay, message drop and a
//! forced sever, with their consequences asserted to the millisecond.
#![allow(clippy::unwrap_used)]

use por_testnet::{run_toml, Report};

const R: u128 = 1_000;

fn paper_5_1(bob_policy: &str, faults: &str) -> Report {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scenarios/paper-5.1-happy.toml"
    );
    let text =
        std::fs::read_to_string(path)
            .unwrap()
            .replacen("sever = \"immediate\"", bob_policy, 1);
    let report = run_toml(&format!("{text}\n{faults}")).unwrap();
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    report
}

fn one(r: &Report, kind: &str, node: &str) -> (u64, Option<u128>) {
    let x = r
        .of_kind(kind)
        .find(|x| x.node == node)
        .unwrap_or_else(|| panic!("no {kind} at {node}"));
    (x.t_ms, x.amount)
}

#[test]
fn a_slow_link_makes_its_relay_pay_and_record_the_loss() {
    // Carol -> Bob takes 150 ms instead of the promised 100: the response reaches Bob
    // 50 ms after his deadline. Bob pays Alice 50 r with it, Alice pays Alex 50 r, and
    // Bob, whom Carol owes for the lateness of their edge, records 50 r lost when
    // Carol's next sync arrives without it.
    let r = paper_5_1(
        "sever = \"never\"",
        "[[faults]]\nkind = \"delay\"\nfrom = \"Carol\"\nto = \"Bob\"\nextra_ms = 50\n",
    );
    assert_eq!(one(&r, "response_forwarded", "Bob"), (550, None));
    assert_eq!(one(&r, "late_fee_paid", "Bob"), (550, Some(50 * R)));
    assert_eq!(one(&r, "late_fee_paid", "Alice"), (750, Some(50 * R)));
    let d = r.of_kind("response_delivered").next().unwrap();
    assert_eq!(
        (d.t_ms, d.total, d.detail.as_deref()),
        (850, Some(50 * R), Some("late"))
    );
    // Carol's 1000 ms sync arrives at 1150.
    assert_eq!(one(&r, "loss_recorded", "Bob"), (1150, Some(50 * R)));
    assert_eq!(r.balances["Alex"], -30_240 + 50_000);
}

#[test]
fn a_forced_sever_answers_the_request_with_the_proof() {
    // Bob's operator severs Bob-Carol at 350, after forwarding at 300: Alex holds the
    // proof at 650, and Carol's response (sent at 400) is refused on the severed edge.
    let r = paper_5_1(
        "sever = \"never\"",
        "[[faults]]\nkind = \"sever\"\nnode = \"Bob\"\npeer = \"Carol\"\nat_ms = 350\n",
    );
    assert_eq!(one(&r, "sever_initiated", "Bob"), (350, None));
    assert_eq!(one(&r, "sever_proof_delivered", "Alex"), (650, None));
    assert_eq!(r.of_kind("response_delivered").count(), 0);
    let refused = r
        .of_kind("frame_refused")
        .find(|x| x.node == "Bob")
        .unwrap();
    assert_eq!(refused.t_ms, 500);
    assert!(refused.detail.as_deref().unwrap().contains("severed"));
}

#[test]
fn a_lost_request_trips_the_heuristic_at_the_first_unpaid_sync() {
    // Every frame Alice sends Bob before 1000 ms is lost, so Bob never sees the
    // request and owes nothing in his own view. Bob's 600 ms sync reaches Alice at 800
    // without the 100 r she expects (her deadline for him was 700): what she is owed
    // and unpaid on the edge now exceeds what she earned on it, so the §5.4 heuristic
    // severs Alice-Bob. Her own notice is the proof for Alex; it leaves at 800, 100 ms
    // past her deadline of 700, so it carries 100 r, and reaches Alex at 900.
    let r = paper_5_1(
        "sever = \"never\"",
        "[[faults]]\nkind = \"drop\"\nfrom = \"Alice\"\nto = \"Bob\"\nprobability = 1.0\nuntil_ms = 1000\n",
    );
    assert_eq!(
        r.of_kind("request_forwarded")
            .filter(|x| x.node == "Bob")
            .count(),
        0
    );
    assert_eq!(one(&r, "sever_initiated", "Alice"), (800, None));
    assert_eq!(one(&r, "late_fee_paid", "Alice"), (800, Some(100 * R)));
    let p = r.of_kind("sever_proof_delivered").next().unwrap();
    assert_eq!((p.t_ms, p.total), (900, Some(100 * R)));
    assert_eq!(r.balances["Alex"], -30_240 + 100_000);
    assert_eq!(r.balances["Bob"], 0, "Bob never received anything");
}
