//! Lower-case hex, the form node keys, deployments and signatures take in JSON, config
//! files and the contract's views. One implementation for the nodes, the chain clients
//! and the contract (it builds for wasm).

/// `bytes` as lower-case hex.
pub fn encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Exactly `N` bytes from `2 * N` hex digits (either case); `None` otherwise.
pub fn decode<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N.checked_mul(2)? || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (slot, i) in out.iter_mut().zip((0usize..).step_by(2)) {
        *slot = u8::from_str_radix(s.get(i..i.checked_add(2)?)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_what_is_not_exactly_n_bytes_of_hex() {
        let bytes = [0x00, 0x7f, 0xab, 0xff];
        assert_eq!(encode(&bytes), "007fabff");
        assert_eq!(decode::<4>("007fabff"), Some(bytes));
        assert_eq!(decode::<4>("007FABFF"), Some(bytes));
        for bad in ["007fab", "007fabff00", "007fabfg", "007fab\u{e9}"] {
            assert_eq!(decode::<4>(bad), None, "{bad:?}");
        }
    }
}
