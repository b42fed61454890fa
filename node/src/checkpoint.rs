//! Checkpoints: a finished generation of the write-ahead log folded into the tables,
//! off the commit path.
//!
//! The database ([`crate::db`]) notes what every write touches ([`Dirty`]). When the
//! log passes its size it takes a [`Fold`]: each touched record as it stands at the
//! end of that log (clones sharing their large bodies: the only work done on the
//! commit path). It then rotates the log (the finished
//! one kept beside as `wal-prev`, a fresh one of the next generation taking the
//! commits) and hands the fold to a thread, which writes it into redb in one
//! transaction together with the next generation number. Commits go on meanwhile:
//! they touch only the new log and the in-memory store. Once the fold is in, the
//! finished log is deleted. When the closings still kept from it are a large share of
//! it, it is first hard-linked as a kept log and the tables refer into it instead of
//! taking a copy of each response body (see [`crate::kept`]).
//!
//! A crash while a fold runs leaves the tables one generation behind, with both logs
//! on disk: opening replays the two in order (see [`crate::db::NodeDb::open`]).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use por_protocol::channel::ChannelRecord;
use por_protocol::engine::Pending;
use por_protocol::messages::Message;
use por_protocol::store::{Store, Write};
use por_protocol::types::{ChannelId, ChannelUpdate, RequestId};
use redb::{Database, TableDefinition};

use crate::kept::{self, ClosingFold, Closings, CLOSINGS_IN_LOG};

/// Channel records without their unacknowledged updates (which are kept apart, so
/// that a checkpoint writes each update once instead of every record re-writing all
/// of them).
pub(crate) const CHANNELS: TableDefinition<u64, &[u8]> = TableDefinition::new("channels");
/// Our signed, not yet acknowledged updates, by (channel, seq): the update and the
/// message that carries it.
pub(crate) const UNACKED: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("unacked");
/// Requests in flight, by id.
pub(crate) const PENDING: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("pending");
/// Closing messages kept for resending, by request: (channel, message). Those whose
/// message is in a kept log are in [`CLOSINGS_IN_LOG`] instead (see `kept.rs`).
pub(crate) const CLOSINGS: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("closings");
/// Numbers kept beside the records (the log generation, the chain cursor).
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The generation of the write-ahead log whose records are not yet in the tables.
pub(crate) const WAL_GENERATION: &str = "wal_generation";
/// The store's nonce floor (`Write::NonceFloor`).
pub(crate) const NONCE_FLOOR: &str = "nonce_floor";

/// What the writes since the last checkpoint touched.
#[derive(Debug, Default)]
pub(crate) struct Dirty {
    channels: BTreeSet<ChannelId>,
    pending: BTreeSet<RequestId>,
    /// Unacknowledged updates added, by (channel, seq).
    added: BTreeSet<(u64, u64)>,
    /// Acknowledged up to, per channel.
    acked: BTreeMap<u64, u64>,
    /// Kept closings added or dropped.
    closings: BTreeSet<RequestId>,
    /// The nonce floor was raised.
    nonce_floor: bool,
}

impl Dirty {
    /// Notes what `w` touches.
    pub(crate) fn note(&mut self, w: &Write) {
        match w {
            Write::Channel(rec) => {
                self.channels.insert(rec.id());
            }
            Write::Outgoing {
                channel, update, ..
            } => {
                self.channels.insert(*channel);
                self.added.insert((channel.0, update.update.seq));
            }
            Write::Acked { channel, seq, .. } => {
                self.channels.insert(*channel);
                let slot = self.acked.entry(channel.0).or_default();
                *slot = (*slot).max(*seq);
            }
            Write::Incoming { channel, .. }
            | Write::Severed { channel, .. }
            | Write::Close { channel, .. } => {
                self.channels.insert(*channel);
            }
            Write::Pending(p) => {
                self.pending.insert(p.id);
            }
            Write::PendingDone(id) => {
                self.pending.insert(*id);
            }
            Write::FeesPaid(totals) | Write::FeesReceived(totals) => {
                self.pending.extend(totals.iter().map(|(id, _)| *id));
            }
            Write::Closing { request, .. } | Write::ClosingDropped { request } => {
                self.closings.insert(*request);
            }
            Write::NonceFloor(_) => self.nonce_floor = true,
        }
    }
}

/// What the tables hold rows for, beside the records themselves.
#[derive(Debug, Default)]
pub(crate) struct Rows {
    /// Requests with a row in PENDING.
    pub(crate) pending: HashSet<RequestId>,
    /// Kept closings' rows and the kept logs they refer to.
    pub(crate) closings: Closings,
}

/// A finished log a checkpoint folds in.
#[derive(Debug)]
pub(crate) struct Folded {
    /// Its generation.
    pub(crate) generation: u64,
    /// Its bytes.
    pub(crate) size: u64,
    /// Where it is.
    pub(crate) path: PathBuf,
}

/// The rows one checkpoint writes, as the store held them when it was taken (`None`
/// for a row to delete). Taking it copies no large body: responses and requests hold
/// theirs in shared buffers. They are encoded on the checkpoint's thread.
#[derive(Debug)]
pub(crate) struct Fold {
    /// The log generation the tables are at once this is in.
    next: u64,
    /// Channel records' heads (without their unacknowledged updates).
    channels: Vec<ChannelRecord>,
    unacked: Vec<((u64, u64), (ChannelUpdate, Message))>,
    /// Unacknowledged updates to delete: (channel, up to seq).
    acked: Vec<(u64, u64)>,
    pending: Vec<([u8; 16], Option<Pending>)>,
    closings: ClosingFold,
    /// The nonce floor, if raised since the last checkpoint.
    nonce_floor: Option<u64>,
    /// The database's path, beside which kept logs are linked.
    db: PathBuf,
    /// The folded logs to keep, linked before the tables refer to them.
    links: Vec<(PathBuf, u64)>,
}

impl Fold {
    /// Takes the rows `dirty` names as `store` holds them now, the logs `folded` being
    /// folded in. `rows` (what the tables hold rows for) is brought up to what the
    /// fold leaves.
    pub(crate) fn take(
        store: &mut Store,
        dirty: Dirty,
        rows: &mut Rows,
        folded: &[Folded],
        next: u64,
        db: &Path,
    ) -> Fold {
        let pending_rows = &mut rows.pending;
        let mut channels = Vec::with_capacity(dirty.channels.len());
        let mut unacked = Vec::new();
        for id in &dirty.channels {
            let Some(rec) = store.channels.get_mut(id) else {
                continue;
            };
            // The record's head: its unacknowledged updates live in UNACKED.
            let held = std::mem::take(&mut rec.outgoing.unacked);
            channels.push(rec.clone());
            rec.outgoing.unacked = held;
            // Updates added since the last checkpoint and still unacknowledged.
            for &(_, seq) in dirty.added.range((id.0, 0)..=(id.0, u64::MAX)) {
                if let Some(entry) = rec.outgoing.unacked.get(&seq) {
                    unacked.push(((id.0, seq), entry.clone()));
                }
            }
        }
        let mut pending = Vec::with_capacity(dirty.pending.len());
        for id in &dirty.pending {
            match store.pending.get(id) {
                Some(p) => {
                    pending.push((id.0, Some(p.clone())));
                    pending_rows.insert(*id);
                }
                None => {
                    if pending_rows.remove(id) {
                        pending.push((id.0, None));
                    }
                }
            }
        }
        let sizes: Vec<(u64, u64)> = folded.iter().map(|f| (f.generation, f.size)).collect();
        let closings = rows.closings.take(store, &dirty.closings, &sizes);
        let links = folded
            .iter()
            .filter(|f| closings.link.contains(&f.generation))
            .map(|f| (f.path.clone(), f.generation))
            .collect();
        Fold {
            next,
            channels,
            unacked,
            acked: dirty.acked.into_iter().collect(),
            pending,
            closings,
            nonce_floor: dirty.nonce_floor.then_some(store.nonce_floor),
            db: db.to_path_buf(),
            links,
        }
    }

    /// Writes the rows and the next generation into `db` in one transaction, each
    /// row encoded into `buf` (given back for the next checkpoint, so that one
    /// allocation serves them all).
    pub(crate) fn write(self, db: &Database, mut buf: Vec<u8>) -> Result<Vec<u8>, String> {
        let next = self.next;
        let e = |e: &dyn std::fmt::Display| format!("checkpoint to generation {next}: {e}");
        for (from, generation) in &self.links {
            kept::link(from, &self.db, *generation)
                .map_err(|x| e(&format!("keeping log {generation}: {x}")))?;
        }
        let tx = db.begin_write().map_err(|x| e(&x))?;
        {
            let mut t = tx.open_table(CHANNELS).map_err(|x| e(&x))?;
            for rec in &self.channels {
                t.insert(rec.id().0, encode(&mut buf, rec).map_err(|x| e(&x))?)
                    .map_err(|x| e(&x))?;
            }
            let mut t = tx.open_table(UNACKED).map_err(|x| e(&x))?;
            for (key, entry) in &self.unacked {
                t.insert(*key, encode(&mut buf, entry).map_err(|x| e(&x))?)
                    .map_err(|x| e(&x))?;
            }
            for &(channel, up_to) in &self.acked {
                t.retain_in((channel, 0)..=(channel, up_to), |_, _| false)
                    .map_err(|x| e(&x))?;
            }
            let mut t = tx.open_table(PENDING).map_err(|x| e(&x))?;
            put_or_remove(&mut t, &self.pending, &mut buf).map_err(|x| e(&x))?;
            let mut t = tx.open_table(CLOSINGS).map_err(|x| e(&x))?;
            put_or_remove(&mut t, &self.closings.inline, &mut buf).map_err(|x| e(&x))?;
            let mut t = tx.open_table(CLOSINGS_IN_LOG).map_err(|x| e(&x))?;
            put_or_remove(&mut t, &self.closings.in_log, &mut buf).map_err(|x| e(&x))?;
            let mut t = tx.open_table(META).map_err(|x| e(&x))?;
            t.insert(WAL_GENERATION, next).map_err(|x| e(&x))?;
            if let Some(floor) = self.nonce_floor {
                t.insert(NONCE_FLOOR, floor).map_err(|x| e(&x))?;
            }
        }
        tx.commit().map_err(|x| e(&x))?;
        Ok(buf)
    }

    /// Rows the fold writes or deletes.
    pub(crate) fn rows(&self) -> usize {
        self.channels.len()
            + self.unacked.len()
            + self.acked.len()
            + self.pending.len()
            + self.closings.inline.len()
            + self.closings.in_log.len()
            + usize::from(self.nonce_floor.is_some())
    }

    /// The kept logs no row refers to once this is in.
    pub(crate) fn releases(&self) -> Vec<u64> {
        self.closings.release.clone()
    }
}

/// `v` encoded into `buf` (cleared first).
fn encode<'b, T: serde::Serialize>(buf: &'b mut Vec<u8>, v: &T) -> Result<&'b [u8], String> {
    buf.clear();
    por_protocol::wire::encode_into(v, buf).map_err(|x| x.to_string())?;
    Ok(buf.as_slice())
}

/// Writes each row that is `Some` into `t` by its request id, and deletes each `None`.
fn put_or_remove<T: serde::Serialize>(
    t: &mut redb::Table<&[u8; 16], &[u8]>,
    rows: &[([u8; 16], Option<T>)],
    buf: &mut Vec<u8>,
) -> Result<(), String> {
    for (id, row) in rows {
        match row {
            Some(v) => t.insert(id, encode(buf, v)?).map(drop),
            None => t.remove(id).map(drop),
        }
        .map_err(|x| x.to_string())?;
    }
    Ok(())
}
