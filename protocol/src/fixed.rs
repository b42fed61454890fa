//! Serde for fixed-size byte arrays (keys, hashes, request ids) that is fast in binary
//! formats and unchanged in human-readable ones.
//!
//! Derived serde writes `[u8; N]` as a tuple of N one-byte elements, which bincode
//! encodes and decodes one call per byte: about a fifth of a node's CPU went there.
//! In a binary format this writes the same array as a tuple of N/8 `u64`s made from
//! little-endian chunks. Under the wire's little-endian fixed-width integer encoding
//! those are the very same N bytes, so the canonical encoding — and every signature
//! over it — is unchanged; only the number of calls drops eightfold. Human-readable
//! formats (JSON) keep the array of N numbers.

use serde::de::{self, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserializer, Serializer};

/// Serializes `[u8; N]` (N a multiple of 8).
pub fn serialize<S: Serializer, const N: usize>(v: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
    if s.is_human_readable() || !N.is_multiple_of(8) {
        let mut t = s.serialize_tuple(N)?;
        for b in v {
            t.serialize_element(b)?;
        }
        return t.end();
    }
    let mut t = s.serialize_tuple(N / 8)?;
    for chunk in v.chunks_exact(8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        t.serialize_element(&u64::from_le_bytes(word))?;
    }
    t.end()
}

struct Bytes<const N: usize>;

impl<'de, const N: usize> Visitor<'de> for Bytes<N> {
    type Value = [u8; N];
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{N} bytes")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<[u8; N], A::Error> {
        let mut out = [0u8; N];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = seq
                .next_element()?
                .ok_or_else(|| de::Error::invalid_length(i, &self))?;
        }
        Ok(out)
    }
}

struct Words<const N: usize>;

impl<'de, const N: usize> Visitor<'de> for Words<N> {
    type Value = [u8; N];
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{N} bytes as {} little-endian u64s", N / 8)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<[u8; N], A::Error> {
        let mut out = [0u8; N];
        for (i, chunk) in out.chunks_exact_mut(8).enumerate() {
            let word: u64 = seq
                .next_element()?
                .ok_or_else(|| de::Error::invalid_length(i.saturating_mul(8), &self))?;
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        Ok(out)
    }
}

/// Deserializes what [`serialize`] wrote.
pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(d: D) -> Result<[u8; N], D::Error> {
    if d.is_human_readable() || !N.is_multiple_of(8) {
        d.deserialize_tuple(N, Bytes::<N>)
    } else {
        d.deserialize_tuple(N / 8, Words::<N>)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Derived([u8; 32], [u8; 16]);

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Fast(
        #[serde(with = "super")] [u8; 32],
        #[serde(with = "super")] [u8; 16],
    );

    fn sample() -> ([u8; 32], [u8; 16]) {
        let mut a = [0u8; 32];
        let mut b = [0u8; 16];
        for (i, x) in a.iter_mut().enumerate() {
            *x = (i as u8).wrapping_mul(37).wrapping_add(1);
        }
        for (i, x) in b.iter_mut().enumerate() {
            *x = 255 - i as u8;
        }
        (a, b)
    }

    #[test]
    fn the_wire_bytes_are_those_of_the_derived_encoding() {
        let (a, b) = sample();
        let derived = crate::wire::encode(&Derived(a, b)).unwrap();
        let fast = crate::wire::encode(&Fast(a, b)).unwrap();
        assert_eq!(fast, derived);
        assert_eq!(&fast[..32], &a);
        let back: Fast = crate::wire::decode(&derived).unwrap();
        assert_eq!(back, Fast(a, b));
        // Too short is refused, not padded.
        assert!(crate::wire::decode::<Fast>(&derived[..40]).is_err());
    }

    #[test]
    fn json_keeps_arrays_of_numbers() {
        let (a, b) = sample();
        let derived = serde_json::to_string(&Derived(a, b)).unwrap();
        let fast = serde_json::to_string(&Fast(a, b)).unwrap();
        assert_eq!(fast, derived);
        let back: Fast = serde_json::from_str(&derived).unwrap();
        assert_eq!(back, Fast(a, b));
    }
}
