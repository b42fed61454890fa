//! Everything the file layer can fail at or refuse.

use std::path::PathBuf;

use por_protocol::Amount;

use crate::blob::Root;

/// A file-layer error.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// A root is not 64 hex digits.
    #[error("not a blob root (64 hex digits): {0:?}")]
    BadRoot(String),
    /// A ticket does not parse.
    #[error("bad ticket: {0}")]
    BadTicket(String),
    /// Ranges asked for are empty, unsorted, overlapping, too many or past the blob.
    #[error("bad ranges: {0}")]
    BadRanges(String),
    /// Bytes do not verify against the root (wrong, truncated, oversized, or for
    /// another range): the provider deviated.
    #[error("data does not verify: {0}")]
    Mismatch(String),
    /// A response does not decode as the file protocol.
    #[error("malformed file-protocol message: {0}")]
    Malformed(String),
    /// The local store's data no longer matches its outboard.
    #[error("store is corrupt: {0}")]
    Corrupt(String),
    /// The store does not hold this blob.
    #[error("blob {0} is not in the store")]
    NotFound(Root),
    /// A provider answered that it does not hold the blob.
    #[error("provider {provider} does not hold {root}")]
    NotProvided {
        /// The provider (node key, hex).
        provider: String,
        /// The blob.
        root: Root,
    },
    /// A provider refused the request.
    #[error("provider {provider} refused: {reason}")]
    Refused {
        /// The provider (node key, hex).
        provider: String,
        /// Its reason.
        reason: String,
    },
    /// A file or directory could not be read or written.
    #[error("{path}: {detail}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// The disk is full.
    #[error("{0}: no space left on the device")]
    DiskFull(PathBuf),
    /// The output path exists already (the transfer never overwrites).
    #[error("{0} exists already: choose another output or remove it")]
    OutputExists(PathBuf),
    /// A collection names a path that would leave the output directory.
    #[error("collection entry {0:?} is not a safe relative path")]
    BadPath(String),
    /// The next request would take spending past the cap; nothing more was sent.
    #[error("spend cap {cap} yoctoNEAR reached: spent {spent}, the next request costs {next}; {missing} bytes still missing (resume with a higher cap)")]
    SpendCap {
        /// The cap.
        cap: Amount,
        /// Spent so far.
        spent: Amount,
        /// What the next request would cost.
        next: Amount,
        /// Bytes not fetched yet.
        missing: u64,
    },
    /// No provider is left to ask (all failed or deviated).
    #[error("no provider left: {missing} bytes still missing ({detail}); the partial download is kept for a resume")]
    NoProviders {
        /// Bytes not fetched yet.
        missing: u64,
        /// What happened to the providers.
        detail: String,
    },
    /// No route reaches a provider.
    #[error("no route to provider {0}")]
    NoRoute(String),
    /// The transfer was interrupted; what was verified is kept for a resume.
    #[error("interrupted: {missing} bytes still missing; run the same get again to resume")]
    Interrupted {
        /// Bytes not fetched yet.
        missing: u64,
    },
    /// The node failed or refused.
    #[error("node: {0}")]
    Node(#[from] por_node::NodeError),
    /// An HTTP surface could not start.
    #[error("gateway: {0}")]
    Gateway(String),
}

impl FilesError {
    /// The error for an I/O failure on `path`, telling a full disk apart.
    pub fn io(path: impl Into<PathBuf>, e: std::io::Error) -> FilesError {
        let path = path.into();
        if e.kind() == std::io::ErrorKind::StorageFull {
            FilesError::DiskFull(path)
        } else {
            FilesError::Io {
                path,
                detail: e.to_string(),
            }
        }
    }
}
