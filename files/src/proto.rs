//! The file protocol's messages: what a PoR request body and its response body carry.
//!
//! Both are a version byte followed by the canonical PoR encoding
//! (`por_protocol::wire`: bincode, fixed-width little-endian integers, bounded). See
//! `docs/files.md` for the byte layout.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::blob::{self, Root};
use crate::error::FilesError;

/// The file protocol's version, the first byte of every message.
pub const VERSION: u8 = 1;

/// Bytes a response carries around its encoding: version, enum tag, length prefix.
pub const RESPONSE_OVERHEAD: u64 = 1 + 4 + 8;

/// A request to a provider.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FilesRequest {
    /// The verified encoding of `ranges` (in 1 KiB chunks, sorted, disjoint) of `root`.
    Get {
        /// The blob.
        root: Root,
        /// `(start, end)` chunk ranges.
        ranges: Vec<(u64, u64)>,
    },
    /// Which ranges of `root` the provider holds, and the blob's size.
    Have {
        /// The blob.
        root: Root,
    },
}

/// A provider's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FilesResponse {
    /// The encoding asked for (see [`crate::blob::decode`]).
    Data {
        /// Parent pairs and data, pre-order. Decoded from a response body it is a
        /// slice of that body, not a copy ([`FilesResponse::decode`]).
        #[serde(with = "por_protocol::wire::shared")]
        encoded: Bytes,
    },
    /// What the provider holds of a blob.
    Have {
        /// The blob's size.
        size: u64,
        /// `(start, end)` byte ranges held.
        ranges: Vec<(u64, u64)>,
    },
    /// The provider does not hold the blob.
    NotFound,
    /// The request was refused (malformed, over its response limit, store failure).
    Refused {
        /// Why.
        reason: String,
    },
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    let len = por_protocol::wire::encoded_len(v).unwrap_or(0);
    let mut out = Vec::with_capacity(len.saturating_add(1));
    out.push(VERSION);
    // The values here are small and bounded: encoding cannot exceed the frame limit
    // except for a `Data` the caller sized to fit.
    if por_protocol::wire::encode_into(v, &mut out).is_err() {
        out.truncate(1);
    }
    out
}

/// The message after its version byte, or why there is none.
fn unversioned(bytes: &[u8]) -> Result<&[u8], FilesError> {
    match bytes.split_first() {
        Some((&VERSION, rest)) => Ok(rest),
        Some((v, _)) => Err(FilesError::Malformed(format!("unknown version {v}"))),
        None => Err(FilesError::Malformed("empty message".into())),
    }
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, FilesError> {
    por_protocol::wire::decode(unversioned(bytes)?)
        .map_err(|e| FilesError::Malformed(e.to_string()))
}

impl FilesRequest {
    /// The request body.
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// Parses a request body.
    pub fn decode(bytes: &[u8]) -> Result<FilesRequest, FilesError> {
        decode(bytes)
    }

    /// The response size to buy for this request of a blob of `size` bytes: exactly
    /// the largest answer an honest provider sends.
    pub fn response_limit(&self, size: u64) -> Result<u64, FilesError> {
        match self {
            FilesRequest::Get { ranges, .. } => {
                let r = blob::chunk_ranges(ranges)?;
                Ok(blob::encoded_len(size, &r).saturating_add(RESPONSE_OVERHEAD))
            }
            // A `Have` of a whole blob: one range.
            FilesRequest::Have { .. } => Ok(64),
        }
    }
}

impl FilesResponse {
    /// The response body.
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// Parses a response body. A `Data` encoding of 16 KiB or more
    /// (`por_protocol::wire::SHARE_MIN`) is a slice of `bytes`, shared, not copied.
    pub fn decode(bytes: &Bytes) -> Result<FilesResponse, FilesError> {
        let rest = unversioned(bytes)?;
        por_protocol::wire::decode_shared(&bytes.slice_ref(rest))
            .map_err(|e| FilesError::Malformed(e.to_string()))
    }

    /// What a `Data` response of an `len`-byte encoding starts with: the version, the
    /// variant and the length (docs/files.md), [`RESPONSE_OVERHEAD`] bytes. A provider
    /// writes the encoding after it into the same buffer instead of encoding the
    /// response around a copy of it.
    pub fn data_header(len: u64) -> [u8; RESPONSE_OVERHEAD as usize] {
        let mut h = [0u8; RESPONSE_OVERHEAD as usize];
        h[0] = VERSION;
        // Variant 0 (`Data`) as a little-endian u32, then the length as a u64.
        h[5..].copy_from_slice(&len.to_le_bytes());
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_data_is_one_run() {
        let get = FilesRequest::Get {
            root: Root([3; 32]),
            ranges: vec![(0, 512)],
        };
        assert_eq!(FilesRequest::decode(&get.encode()).unwrap(), get);
        let data = FilesResponse::Data {
            encoded: Bytes::from(vec![7; 1000]),
        };
        let bytes = Bytes::from(data.encode());
        assert_eq!(bytes.len() as u64, 1000 + RESPONSE_OVERHEAD);
        assert_eq!(FilesResponse::decode(&bytes).unwrap(), data);
        let have = FilesResponse::Have {
            size: 5,
            ranges: vec![(0, 5)],
        };
        assert!(have.encode().len() <= 64);
    }

    /// A provider's header with the encoding written after it is exactly the `Data`
    /// response, at any length; and an encoding of 16 KiB or more decodes as a slice of
    /// the body it arrived in.
    #[test]
    fn the_data_header_then_the_encoding_is_the_data_response() {
        for n in [0usize, 1, 1000, 16 * 1024, 512 * 1024 + 2112] {
            let encoded: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
            let mut built = FilesResponse::data_header(n as u64).to_vec();
            built.extend_from_slice(&encoded);
            let whole = FilesResponse::Data {
                encoded: Bytes::from(encoded),
            }
            .encode();
            assert_eq!(built, whole, "{n} bytes");
            let body = Bytes::from(built);
            let Ok(FilesResponse::Data { encoded }) = FilesResponse::decode(&body) else {
                panic!("{n} bytes do not decode as data");
            };
            let after = &body[RESPONSE_OVERHEAD as usize..];
            assert_eq!(&encoded[..], after);
            assert_eq!(
                encoded.as_ptr() == after.as_ptr(),
                n >= por_protocol::wire::SHARE_MIN,
                "{n} bytes: shared exactly when large"
            );
        }
    }

    #[test]
    fn garbage_and_unknown_versions_are_refused() {
        assert!(FilesRequest::decode(&[]).is_err());
        assert!(FilesRequest::decode(&[2, 0, 0]).is_err());
        assert!(FilesRequest::decode(&[VERSION, 9, 9, 9, 9]).is_err());
        let mut b = FilesRequest::Have {
            root: Root([1; 32]),
        }
        .encode();
        b.push(0);
        assert!(FilesRequest::decode(&b).is_err(), "trailing bytes");
    }
}
