//! Simulator scenarios over arbitrary text: parsing never panics, every parsed node's
//! engine configuration can be built, and a scenario's loads either expand within
//! their bounds (every arrival inside the scenario, at most `MAX_LOAD_EVENTS` of
//! them, the same when expanded again) or are refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use por_testnet::scenario::{Scenario, MAX_LOAD_BODY_TOTAL, MAX_LOAD_EVENTS};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(scenario) = Scenario::from_toml(text) else {
        return;
    };
    for node in &scenario.nodes {
        let _ = node.engine_config();
    }
    let explicit = scenario.requests.len();
    let duration = scenario.duration_ms;
    let Ok(expanded) = scenario.expand_loads() else {
        return;
    };
    let made = &expanded.requests[explicit.min(expanded.requests.len())..];
    assert!(expanded.requests.len() <= MAX_LOAD_EVENTS.max(explicit));
    assert!(made.iter().all(|r| r.at_ms < duration));
    let bodies: u64 = made.iter().map(|r| r.body.len() as u64).sum();
    assert!(bodies <= MAX_LOAD_BODY_TOTAL);
    let n = expanded.requests.len();
    let Ok(transfers) = expanded.file_transfers() else {
        panic!("file loads that expanded are refused on the second look");
    };
    assert!(transfers.windows(2).all(|w| w[0] <= w[1]));
    assert!(transfers.iter().all(|(t, _)| *t < duration));
    let again = expanded.expand_loads();
    assert!(again.is_ok_and(|a| a.requests.len() == n), "expanding twice adds requests");
});
