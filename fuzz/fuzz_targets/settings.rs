//! Node settings (`por.toml`) over arbitrary text: parsing and validating never
//! panic, and a refusal names its key.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(settings) = toml::from_str::<por_node::Settings>(text) {
        if let Err(e) = settings.resolve() {
            assert!(!e.to_string().is_empty());
        }
    }
});
