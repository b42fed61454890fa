//! The consistency fuzzer (`por_protocol::testing::consistency`) as a bounded
//! proptest: random byte strings drive 3 to 5 engines through requests, reordered
//! deliveries, lost connections, crashes around durability, severs and time, and
//! every invariant is checked after every step and once everything settles. The
//! long runs are `cargo fuzz run consistency` (docs/fuzzing.md).
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

use por_protocol::testing::consistency::{parse_saved, random_input, Harness};

fn check(input: &[u8]) -> por_protocol::testing::consistency::Stats {
    match Harness::run(input) {
        Ok(h) => h.stats().clone(),
        Err(v) => panic!("{v}\ninput: {input:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_script_keeps_money_right(input in proptest::collection::vec(any::<u8>(), 0..1500)) {
        check(&input);
    }
}

/// A script that reaches what the random ones only sometimes do: many requests, a
/// crash with batches pending, and one with them committed but unheard.
#[test]
fn a_busy_script_with_crashes_settles() {
    // Three nodes on a path, none severing for lateness, deep deposits.
    let mut input = vec![0, 0, 0, 0, 0, 0, 0];
    // Opcodes (see `Action::from_bytes`): 0 send, 10 respond, 14 deliver (the next
    // byte picks among busy links), 34 persist (| 0x80: all batches), 50 crash
    // (| 0x80: batches committed), 52 connect, 54 advance.
    for k in 0..40u8 {
        input.extend([0, 0, 2, k, 16, 5]); // node 0 asks node 2
        input.extend([34 | 0x80, 0, 14, 0b1110_0000, 34 | 0x80, 0]);
        input.extend([14, 0b1110_0000, 34 | 0x80, 0]);
        input.extend([10, 0]); // node 2 answers
        input.extend([34 | 0x80, 0, 14, 0b1110_0000, 34 | 0x80, 0, 14, 0b1110_0000]);
        if k % 7 == 3 {
            input.extend([50, 1]); // node 1 crashes with its batches lost
            input.extend([52, 0, 52, 1]);
        }
        if k % 11 == 5 {
            input.extend([50 | 0x80, 2]); // node 2 crashes, batches committed
            input.extend([52, 1]);
        }
        input.extend([54, 2]);
    }
    let stats = check(&input);
    assert!(stats.sent >= 30, "{stats:?}");
    assert!(stats.crashes >= 8, "{stats:?}");
    assert!(stats.responses >= 10, "{stats:?}");
}

/// The random scripts are not vacuous: over a fixed set of them, every kind of
/// outcome and fault happens.
#[test]
fn random_scripts_reach_every_outcome_and_fault() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut total = por_protocol::testing::consistency::Stats::default();
    for _ in 0..200 {
        let input = random_input(&mut seed, 1200);
        let s = check(&input);
        total.sent += s.sent;
        total.acked += s.acked;
        total.responses += s.responses;
        total.proofs += s.proofs;
        total.rejected += s.rejected;
        total.late_fees += s.late_fees;
        total.crashes += s.crashes;
        total.severed += s.severed;
        total.frames += s.frames;
        total.refused += s.refused;
        for (k, v) in s.severs {
            *total.severs.entry(k).or_default() += v;
        }
        for (k, v) in s.refusals {
            let k: String = k
                .chars()
                .filter(|c| !c.is_ascii_hexdigit() || c.is_alphabetic())
                .collect();
            *total.refusals.entry(k).or_default() += v;
        }
    }
    eprintln!("{total:?}");
    assert!(
        total.acked > 0 && total.responses > 0 && total.proofs > 0,
        "{total:?}"
    );
    assert!(total.late_fees > 0, "{total:?}");
    assert!(total.crashes > 0 && total.severed > 0, "{total:?}");
}

/// Every input that once broke an invariant (in `tests/consistency/`, each named for
/// the bug it found) passes.
#[test]
fn the_inputs_that_found_bugs_pass() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/consistency");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let input = parse_saved(&std::fs::read(&path).unwrap());
        if let Err(v) = Harness::run(&input) {
            panic!("{}: {v}", path.display());
        }
        n += 1;
    }
    assert!(n >= 3, "the saved inputs are in {}", dir.display());
}

/// Replays an input saved in a file (`POR_CONSISTENCY_INPUT`): for a case a fuzzer or
/// proptest found. Set `POR_CONSISTENCY_TRACE=1` to see every step.
#[test]
fn replay_an_input_from_a_file() {
    let Some(path) = std::env::var_os("POR_CONSISTENCY_INPUT") else {
        eprintln!("skipped: POR_CONSISTENCY_INPUT is not set");
        return;
    };
    check(&parse_saved(&std::fs::read(path).unwrap()));
}
