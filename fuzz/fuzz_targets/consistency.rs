//! The consistency fuzzer (`por_protocol::testing::consistency`, as LDK's
//! `chanmon_consistency`): the input sets up 3 to 5 engines and then drives them, a
//! step per few bytes, through requests, answers, deliveries in any order across
//! links, lost connections, writes made durable or lost in crashes (before or after
//! they reach the store), restarts, severs, chain finality and time; every invariant
//! is checked after every step and once everything has settled.
#![no_main]

use libfuzzer_sys::fuzz_target;
use por_protocol::testing::consistency::Harness;

fuzz_target!(|data: &[u8]| {
    if let Err(v) = Harness::run(data) {
        panic!("{v}");
    }
});
