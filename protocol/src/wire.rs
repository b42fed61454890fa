//! The canonical encoding: bincode with fixed-width integers, bounded decoding.
//! The versioned frame envelope around a [`crate::messages::Message`] lives with
//! the message.
//!
//! Encoding is bincode 2 with fixed-width little-endian integers, so every value has
//! exactly one encoding: signatures are computed over `DOMAIN || encode(value)` and
//! verified by re-encoding the decoded value. Decoding is bounded by [`MAX_FRAME_LEN`]
//! (no allocation beyond it, whatever a length prefix claims) and refuses trailing bytes.

use serde::{de::DeserializeOwned, Serialize};

/// The wire protocol version carried in every envelope.
pub const PROTOCOL_VERSION: u16 = 1;

/// The hard upper bound on an encoded frame, envelope included (1 MiB + 64 KiB).
pub const MAX_FRAME_LEN: usize = 1024 * 1024 + 64 * 1024;

/// The largest request or response body a frame can carry.
pub const MAX_BODY_LEN: usize = 1024 * 1024;

type Config = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Fixint,
    bincode::config::Limit<MAX_FRAME_LEN>,
>;

const fn config() -> Config {
    bincode::config::standard()
        .with_little_endian()
        .with_fixed_int_encoding()
        .with_limit::<MAX_FRAME_LEN>()
}

/// Why bytes could not be turned into a value or back.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The frame is longer than [`MAX_FRAME_LEN`].
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    Oversized {
        /// Length of the offending frame.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes are not a valid encoding of the expected type.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The bytes decode, but more bytes follow the value.
    #[error("{0} trailing bytes after the value")]
    TrailingBytes(usize),
    /// The envelope names a protocol version this build does not speak.
    #[error("unsupported protocol version {got} (this node speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion {
        /// The version found in the envelope.
        got: u16,
    },
    /// The value could not be encoded (it would exceed the frame limit).
    #[error("value cannot be encoded: {0}")]
    Encode(String),
}

/// Encodes a value canonically.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, WireError> {
    // Sized first, so a message carrying a large body is written into one allocation
    // rather than copied each time a growing buffer doubles.
    let mut out = Vec::with_capacity(encoded_len(value)?);
    encode_into(value, &mut out)?;
    Ok(out)
}

/// The length of a value's canonical encoding, computed without writing it.
pub fn encoded_len<T: Serialize + ?Sized>(value: &T) -> Result<usize, WireError> {
    struct Count<'a>(&'a mut usize);
    impl bincode::enc::write::Writer for Count<'_> {
        fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
            *self.0 = self.0.saturating_add(bytes.len());
            Ok(())
        }
    }
    let mut n = 0;
    bincode::serde::encode_into_writer(value, Count(&mut n), config())
        .map_err(|e| WireError::Encode(e.to_string()))?;
    Ok(n)
}

/// Encodes a value canonically, appending it to `out` (no intermediate buffer).
pub fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), WireError> {
    struct Append<'a>(&'a mut Vec<u8>);
    impl bincode::enc::write::Writer for Append<'_> {
        fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
            self.0.extend_from_slice(bytes);
            Ok(())
        }
    }
    bincode::serde::encode_into_writer(value, Append(out), config())
        .map_err(|e| WireError::Encode(e.to_string()))
}

/// Encodes a value canonically, handing each piece of the encoding to `sink` in order.
/// A byte string is one piece, the slice as it lies in the value: a caller can tell a
/// large body it holds elsewhere by its address and write it from there, uncopied.
pub fn encode_with<T: Serialize + ?Sized>(
    value: &T,
    sink: &mut dyn FnMut(&[u8]),
) -> Result<(), WireError> {
    struct Sink<'a>(&'a mut dyn FnMut(&[u8]));
    impl bincode::enc::write::Writer for Sink<'_> {
        fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
            (self.0)(bytes);
            Ok(())
        }
    }
    bincode::serde::encode_into_writer(value, Sink(sink), config())
        .map_err(|e| WireError::Encode(e.to_string()))
}

/// Encodes a value canonically into `out`, except for the byte strings of `bodies`: each
/// one the encoding meets (in order, known by its address and length, so only the very
/// buffer the value holds) goes to `splice` with `out` as it stands, uncopied, to be
/// placed there. Bodies the encoding does not meet stay in `bodies`.
pub fn encode_splicing<T: Serialize + ?Sized>(
    value: &T,
    bodies: &mut std::collections::VecDeque<bytes::Bytes>,
    out: &mut Vec<u8>,
    splice: &mut dyn FnMut(&mut Vec<u8>, bytes::Bytes),
) -> Result<(), WireError> {
    encode_with(value, &mut |piece: &[u8]| {
        let is_body = bodies
            .front()
            .is_some_and(|b| b.len() == piece.len() && b.as_ptr() == piece.as_ptr());
        match is_body.then(|| bodies.pop_front()).flatten() {
            Some(body) => splice(out, body),
            None => out.extend_from_slice(piece),
        }
    })
}

/// Decodes a value, refusing oversized input and trailing bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    if bytes.len() > MAX_FRAME_LEN {
        return Err(WireError::Oversized {
            len: bytes.len(),
            max: MAX_FRAME_LEN,
        });
    }
    // The borrowing decoder, so that `decode_shared` is this same path with a frame
    // set; owned types copy what they borrow, so the value is the same.
    let (value, used): (T, usize) = bincode::serde::borrow_decode_from_slice(bytes, config())
        .map_err(|e| WireError::Malformed(e.to_string()))?;
    if used != bytes.len() {
        return Err(WireError::TrailingBytes(bytes.len().saturating_sub(used)));
    }
    Ok(value)
}

/// Bodies this long or longer are taken by [`decode_shared`] as slices of the frame;
/// shorter ones are copied, so that a small body kept for minutes (a kept closing)
/// never holds a whole receive buffer alive.
pub const SHARE_MIN: usize = 16 * 1024;

std::thread_local! {
    /// The frame [`decode_shared`] is decoding on this thread, for [`shared`] to slice.
    static FRAME: std::cell::RefCell<Option<bytes::Bytes>> = const { std::cell::RefCell::new(None) };
}

/// [`decode`] from a shared buffer: every `Bytes` field marked
/// `#[serde(with = "crate::wire::shared")]` of [`SHARE_MIN`] bytes or more is a slice of
/// `frame` (sharing its allocation) instead of a copy. A relay hands a response body
/// from the frame it arrived in to the frame it leaves in, and keeps it, without a copy.
pub fn decode_shared<T: DeserializeOwned>(frame: &bytes::Bytes) -> Result<T, WireError> {
    /// Clears the frame however decoding ends.
    struct Clear;
    impl Drop for Clear {
        fn drop(&mut self) {
            FRAME.with(|f| f.borrow_mut().take());
        }
    }
    FRAME.with(|f| *f.borrow_mut() = Some(frame.clone()));
    let _clear = Clear;
    decode(frame)
}

/// Serde for a `Bytes` field that [`decode_shared`] slices from its frame. The
/// encoding is that of `Bytes` itself (a byte string), so marking a field changes no
/// byte on the wire; every other decoder copies, as for a plain `Bytes`.
pub mod shared {
    use bytes::Bytes;
    use serde::de::{Deserializer, Error, SeqAccess, Visitor};
    use serde::Serializer;

    /// Writes the bytes as a byte string.
    pub fn serialize<S: Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(b)
    }

    /// Reads a byte string: a slice of the frame being decoded when it lies in it and
    /// is at least [`super::SHARE_MIN`] long, else a copy.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        d.deserialize_bytes(Shared)
    }

    struct Shared;

    impl<'de> Visitor<'de> for Shared {
        type Value = Bytes;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_borrowed_bytes<E: Error>(self, v: &'de [u8]) -> Result<Bytes, E> {
            if v.len() >= super::SHARE_MIN {
                let sliced = super::FRAME.with(|f| {
                    f.borrow().as_ref().and_then(|frame| {
                        let start = frame.as_ptr() as usize;
                        let at = v.as_ptr() as usize;
                        let ends = (at.checked_add(v.len()), start.checked_add(frame.len()));
                        let inside =
                            matches!(ends, (Some(end), Some(limit)) if at >= start && end <= limit);
                        inside.then(|| frame.slice_ref(v))
                    })
                });
                if let Some(b) = sliced {
                    return Ok(b);
                }
            }
            Ok(Bytes::copy_from_slice(v))
        }

        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Bytes, E> {
            Ok(Bytes::copy_from_slice(v))
        }

        fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
            Ok(Bytes::from(v))
        }

        fn visit_str<E: Error>(self, v: &str) -> Result<Bytes, E> {
            Ok(Bytes::copy_from_slice(v.as_bytes()))
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(b) = seq.next_element::<u8>()? {
                out.push(b);
            }
            Ok(Bytes::from(out))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shared decode that fails (trailing bytes, malformed) leaves no frame behind
    /// for a later decode on the thread to slice.
    #[test]
    fn a_failed_shared_decode_leaves_no_frame_behind() {
        for bytes in [vec![1u8, 2, 3], vec![1u8]] {
            let frame = bytes::Bytes::from(bytes);
            assert!(decode_shared::<u16>(&frame).is_err());
            assert!(FRAME.with(|f| f.borrow().is_none()));
        }
        assert_eq!(
            decode_shared::<u16>(&bytes::Bytes::from(vec![1u8, 2])),
            Ok(513)
        );
        assert!(FRAME.with(|f| f.borrow().is_none()));
    }

    #[test]
    fn encoded_len_is_the_length_of_the_encoding() {
        let value = (7u32, vec![1u8; 1000], "por".to_string());
        let bytes = encode(&value).unwrap();
        assert_eq!(encoded_len(&value).unwrap(), bytes.len());
        assert_eq!(bytes.capacity(), bytes.len());
    }

    #[test]
    fn trailing_bytes_and_oversize_are_refused() {
        let mut b = encode(&7u32).unwrap();
        assert_eq!(decode::<u32>(&b), Ok(7));
        b.push(0);
        assert_eq!(decode::<u32>(&b), Err(WireError::TrailingBytes(1)));
        let big = vec![0u8; MAX_FRAME_LEN + 1];
        assert!(matches!(
            decode::<Vec<u8>>(&big),
            Err(WireError::Oversized { .. })
        ));
    }

    #[test]
    fn encode_into_appends_exactly_what_encode_makes() {
        let value = (7u32, vec![1u8, 2, 3], [9u8; 32], String::from("por"));
        let mut out = b"prefix".to_vec();
        encode_into(&value, &mut out).unwrap();
        let mut want = b"prefix".to_vec();
        want.extend(encode(&value).unwrap());
        assert_eq!(out, want);
    }

    #[test]
    fn huge_length_prefix_does_not_allocate() {
        // A Vec<u8> claiming u64::MAX elements must fail fast on the limit.
        let bytes = u64::MAX.to_le_bytes();
        assert!(matches!(
            decode::<Vec<u8>>(&bytes),
            Err(WireError::Malformed(_))
        ));
    }
}
