//! The provider side: a [`por_node::Handler`] answering the file protocol from a
//! [`Store`].

use std::sync::Arc;

use por_node::{Handler, IncomingRequest};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::blob;
use crate::error::FilesError;
use crate::proto::{FilesRequest, FilesResponse};
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

    /// The answer to one request body (the PoR response body), before the limit.
    pub fn answer(store: &Store, body: &[u8], limit: u64) -> FilesResponse {
        let refused = |reason: String| FilesResponse::Refused { reason };
        let request = match FilesRequest::decode(body) {
            Ok(r) => r,
            Err(e) => return refused(e.to_string()),
        };
        match request {
            FilesRequest::Have { root } => match store.size_of(&root) {
                Some(size) => FilesResponse::Have {
                    size,
                    ranges: vec![(0, size)],
                },
                None => FilesResponse::NotFound,
            },
            FilesRequest::Get { root, ranges } => {
                let Some(size) = store.size_of(&root) else {
                    return FilesResponse::NotFound;
                };
                let chunks = bao_tree::ChunkNum::chunks(size).0.max(1);
                if ranges.iter().any(|&(s, _)| s >= chunks) {
                    return refused(format!("range past the blob's {chunks} chunks"));
                }
                let r = match blob::chunk_ranges(&ranges) {
                    Ok(r) => r,
                    Err(e) => return refused(e.to_string()),
                };
                let need =
                    blob::encoded_len(size, &r).saturating_add(crate::proto::RESPONSE_OVERHEAD);
                if need > limit {
                    return refused(format!("needs a response limit of {need}"));
                }
                match store.encode(&root, &r) {
                    Ok(encoded) => FilesResponse::Data { encoded },
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
        let bytes = tokio::task::spawn_blocking(move || {
            FilesHandler::answer(&store, &body, limit).encode()
        })
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
