//! Evidence of a provider's deviation: the request we signed, the response it signed,
//! and why the bytes do not verify. A storage contract built on this layer slashes
//! with it: the server's signature binds it to the body's hash, and the body does not
//! verify against the root the request named.

use std::path::{Path, PathBuf};

use por_protocol::types::{RequestId, SignedResponse};
use por_protocol::NodeId;
use serde::Serialize;

use crate::blob::Root;
use crate::error::FilesError;

/// One deviation, as kept on disk (JSON).
#[derive(Clone, Debug, Serialize)]
pub struct Evidence {
    /// The provider (node key, hex).
    pub provider: String,
    /// The PoR request (its id, hex).
    pub request: String,
    /// The blob asked for.
    pub root: String,
    /// The chunk ranges asked for.
    pub ranges: Vec<(u64, u64)>,
    /// The request body we sent (hex).
    pub request_body: String,
    /// The server-signed response, canonical encoding (hex): body hash and length,
    /// batch proof and signature.
    pub signed_response: String,
    /// The response body (hex), whose hash the signature covers.
    pub response_body: String,
    /// Why it does not verify.
    pub mismatch: String,
}

impl Evidence {
    /// Builds the record.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        provider: &NodeId,
        request: &RequestId,
        root: &Root,
        ranges: &[(u64, u64)],
        request_body: &[u8],
        signed: &SignedResponse,
        response_body: &[u8],
        mismatch: &FilesError,
    ) -> Evidence {
        let hex = por_protocol::hex::encode;
        Evidence {
            provider: hex(&provider.0),
            request: hex(&request.0),
            root: root.to_hex(),
            ranges: ranges.to_vec(),
            request_body: hex(request_body),
            signed_response: por_protocol::wire::encode(signed)
                .map(|b| hex(&b))
                .unwrap_or_default(),
            response_body: hex(response_body),
            mismatch: mismatch.to_string(),
        }
    }

    /// Writes it as `<dir>/<request>.json`; returns the path.
    pub fn save(&self, dir: &Path) -> Result<PathBuf, FilesError> {
        std::fs::create_dir_all(dir).map_err(|e| FilesError::io(dir, e))?;
        let p = dir.join(format!("{}.json", self.request));
        let json = serde_json::to_vec_pretty(self).map_err(|e| FilesError::Io {
            path: p.clone(),
            detail: e.to_string(),
        })?;
        std::fs::write(&p, json).map_err(|e| FilesError::io(&p, e))?;
        Ok(p)
    }
}
