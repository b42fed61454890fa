//! The provider side: a [`por_node::Handler`] answering the file protocol from a
//! [`Store`].

use std::sync::Arc;

use por_node::{Handler, IncomingRequest};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::blob;
use crate::error::FilesError;
use crate::proto::{FilesRequest, FilesResponse, RESPONSE_OVERHEAD};
use crate::store::Store;

/// Serves a store: `get` with the verified encoding read from disk, `have` with the
/// blob's size. Answers never exceed the request's response limit (a request that
/// bought too little gets `Refused`, or an empty body if even that does not fit).
///
/// At most [`DISK_READERS`] answers are read and encoded at once, each on a blocking
/// thread; the rest wait their turn. However many requests a window keeps in flight,
/// the provider holds a few pieces being read, not one per request (and does not grow
/// a thread, with its allocator's caches, per request).
#[derive(Clone, Debug)]
pub struct FilesHandler {
    store: Arc<Store>,
    readers: Arc<Semaphore>,
}

/// Answers read from disk and encoded at once.
pub const DISK_READERS: usize = 4;

impl FilesHandler {
    /// Serves `store`.
    pub fn new(store: Store) -> FilesHandler {
        FilesHandler {
            store: Arc::new(store),
            readers: Arc::new(Semaphore::new(DISK_READERS)),
        }
    }

    /// The answer to one request body (the PoR response body, encoded), before the
    /// limit. A `Data` answer's encoding is written after its header into the one
    /// buffer the body is, never copied.
    pub fn answer(store: &Store, body: &[u8], limit: u64) -> Vec<u8> {
        let refused = |reason: String| FilesResponse::Refused { reason }.encode();
        let request = match FilesRequest::decode(body) {
            Ok(r) => r,
            Err(e) => return refused(e.to_string()),
        };
        match request {
            FilesRequest::Have { root } => match store.size_of(&root) {
                Some(size) => FilesResponse::Have {
                    size,
                    ranges: vec![(0, size)],
                }
                .encode(),
                None => FilesResponse::NotFound.encode(),
            },
            FilesRequest::Get { root, ranges } => {
                let Some(size) = store.size_of(&root) else {
                    return FilesResponse::NotFound.encode();
                };
                let chunks = bao_tree::ChunkNum::chunks(size).0.max(1);
                if ranges.iter().any(|&(s, _)| s >= chunks) {
                    return refused(format!("range past the blob's {chunks} chunks"));
                }
                let r = match blob::chunk_ranges(&ranges) {
                    Ok(r) => r,
                    Err(e) => return refused(e.to_string()),
                };
                let len = blob::encoded_len(size, &r);
                let need = len.saturating_add(RESPONSE_OVERHEAD);
                if need > limit {
                    return refused(format!("needs a response limit of {need}"));
                }
                // Within the limit, so within the frame limit: it fits a `usize`.
                let mut out = Vec::with_capacity(usize::try_from(need).unwrap_or(0));
                out.extend_from_slice(&FilesResponse::data_header(len));
                match store.encode_into(&root, &r, &mut out) {
                    Ok(()) if out.len() as u64 == need => out,
                    Ok(()) => {
                        warn!(
                            wrote = out.len(),
                            need, "the encoder's length is not the priced one"
                        );
                        refused(format!("encoded {} bytes, {need} expected", out.len()))
                    }
                    Err(e @ FilesError::Corrupt(_)) => {
                        warn!("not serving a corrupt blob: {e}");
                        refused("the provider's copy is corrupt".into())
                    }
                    Err(e) => refused(e.to_string()),
                }
            }
        }
    }
}

impl Handler for FilesHandler {
    async fn handle(&self, request: IncomingRequest) -> Vec<u8> {
        let store = self.store.clone();
        let limit = request.response_limit;
        let body = request.body;
        // The semaphore is never closed; were it, the answer is read without a turn.
        let _turn = self.readers.acquire().await.ok();
        let bytes = tokio::task::spawn_blocking(move || FilesHandler::answer(&store, &body, limit))
            .await
            .unwrap_or_else(|e| {
                FilesResponse::Refused {
                    reason: format!("provider failed: {e}"),
                }
                .encode()
            });
        debug!(id = %request.id, len = bytes.len(), "files answer");
        if bytes.len() as u64 > limit {
            // Not even the refusal fits what was bought.
            return Vec::new();
        }
        bytes
    }
}
