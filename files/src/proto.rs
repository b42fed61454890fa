//! The file protocol's messages: what a PoR request body and its response body carry.
//!
//! Both are a version byte followed by the canonical PoR encoding
//! (`por_protocol::wire`: bincode, fixed-width little-endian integers, bounded). See
//! `docs/files.md` for the byte layout.

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
        /// Parent pairs and data, pre-order.
        #[serde(with = "serde_bytes")]
        encoded: Vec<u8>,
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

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, FilesError> {
    match bytes.split_first() {
        Some((&VERSION, rest)) => {
            por_protocol::wire::decode(rest).map_err(|e| FilesError::Malformed(e.to_string()))
        }
        Some((v, _)) => Err(FilesError::Malformed(format!("unknown version {v}"))),
        None => Err(FilesError::Malformed("empty message".into())),
    }
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

    /// Parses a response body.
    pub fn decode(bytes: &[u8]) -> Result<FilesResponse, FilesError> {
        decode(bytes)
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
            encoded: vec![7; 1000],
        };
        let bytes = data.encode();
        assert_eq!(bytes.len() as u64, 1000 + RESPONSE_OVERHEAD);
        assert_eq!(FilesResponse::decode(&bytes).unwrap(), data);
        let have = FilesResponse::Have {
            size: 5,
            ranges: vec![(0, 5)],
        };
        assert!(have.encode().len() <= 64);
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
