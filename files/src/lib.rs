//! File sharing on PoR, as HTTP is on TCP: content-addressed blobs and directories,
//! fetched with paid, verified, resumable requests from several providers at once.
//!
//! - Content addressing ([`blob`]): a blob is named by its BLAKE3 root; ranges are
//!   verified against it with `bao-tree` in 16 KiB chunk groups. A directory is a
//!   [`collection::Collection`], a manifest blob of names → roots and sizes.
//! - The protocol ([`proto`]): `get(root, ranges)` answered with the verified encoding
//!   of those ranges, `have(root)` answered with its size and the ranges held. Each
//!   answer is a server-signed PoR response, so wrong bytes are signed evidence
//!   ([`evidence`]).
//! - The store ([`store`]): blobs on disk with their outboards; the server
//!   ([`server::FilesHandler`]) answers from it, streaming from disk.
//! - The client ([`transfer`]): pipelined requests over several providers, slow ones
//!   raced, a spend cap, resume from what was verified; [`ticket::Ticket`]s name what
//!   to fetch and from whom; [`gateway`] serves it all over HTTP.
//!
//! Everything here uses the por SDK ([`por_node::NodeHandle`]) only. The wire format is
//! in `docs/files.md`.

pub mod blob;
pub mod collection;
pub mod error;
pub mod evidence;
pub mod gateway;
pub mod progress;
pub mod proto;
pub mod server;
pub mod store;
pub mod ticket;
pub mod transfer;

pub use blob::Root;
pub use error::FilesError;
pub use server::FilesHandler;
pub use store::Store;
pub use ticket::{Kind, Ticket};
pub use transfer::{Transfer, TransferOptions, TransferReport};
