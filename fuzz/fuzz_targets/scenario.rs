//! Simulator scenarios over arbitrary text: parsing never panics, and every parsed
//! node's engine configuration can be built.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(scenario) = por_testnet::scenario::Scenario::from_toml(text) {
        for node in &scenario.nodes {
            let _ = node.engine_config();
        }
    }
});
