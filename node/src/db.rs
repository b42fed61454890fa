//! The node's database: channel records and requests in flight, in redb.
//!
//! The engine emits [`Write`]s; [`NodeDb::commit`] folds a run of them into the
//! in-memory [`Store`] (which refuses anything that goes backwards) and writes every
//! record they touched in one transaction, with one fsync: group commit. Only after it
//! returns does the node tell the engine the writes are durable, releasing the frames
//! (acks, signed updates) that depend on them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use por_protocol::store::{Store, Write};
use por_protocol::types::{ChannelId, RequestId};
use por_protocol::wire;
use redb::{Database, ReadableTable, TableDefinition};

use crate::NodeError;

/// Channel records without their unacknowledged updates (which are kept apart, so
/// that a commit writes each update once instead of every record re-writing all of
/// them).
const CHANNELS: TableDefinition<u64, &[u8]> = TableDefinition::new("channels");
/// Our signed, not yet acknowledged updates, by (channel, seq): the update and the
/// message that carries it.
const UNACKED: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("unacked");
const PENDING: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("pending");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The node's durable state.
pub struct NodeDb {
    db: Database,
    path: PathBuf,
    store: Store,
}

impl std::fmt::Debug for NodeDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeDb({})", self.path.display())
    }
}

fn db_err(path: &Path) -> impl Fn(&dyn std::fmt::Display) -> NodeError + '_ {
    move |e| NodeError::Db {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}

impl NodeDb {
    /// Opens (or creates) the database at `path` and loads what it holds.
    pub fn open(path: &Path) -> Result<NodeDb, NodeError> {
        let err = db_err(path);
        let db = Database::create(path).map_err(|e| err(&e))?;
        let w = db.begin_write().map_err(|e| err(&e))?;
        w.open_table(CHANNELS).map_err(|e| err(&e))?;
        w.open_table(UNACKED).map_err(|e| err(&e))?;
        w.open_table(PENDING).map_err(|e| err(&e))?;
        w.open_table(META).map_err(|e| err(&e))?;
        w.commit().map_err(|e| err(&e))?;
        let mut store = Store::default();
        {
            let r = db.begin_read().map_err(|e| err(&e))?;
            for item in r
                .open_table(CHANNELS)
                .map_err(|e| err(&e))?
                .iter()
                .map_err(|e| err(&e))?
            {
                let (k, v) = item.map_err(|e| err(&e))?;
                let rec: por_protocol::channel::ChannelRecord = wire::decode(v.value())
                    .map_err(|e| err(&format!("channel {}: {e}", k.value())))?;
                store.channels.insert(rec.id(), rec);
            }
            for item in r
                .open_table(UNACKED)
                .map_err(|e| err(&e))?
                .iter()
                .map_err(|e| err(&e))?
            {
                let (k, v) = item.map_err(|e| err(&e))?;
                let (channel, seq) = k.value();
                let entry = wire::decode(v.value())
                    .map_err(|e| err(&format!("update {seq} of channel {channel}: {e}")))?;
                match store.channels.get_mut(&ChannelId(channel)) {
                    Some(rec) => {
                        rec.outgoing.unacked.insert(seq, entry);
                    }
                    None => return Err(err(&format!("update {seq} of unknown channel {channel}"))),
                }
            }
            for item in r
                .open_table(PENDING)
                .map_err(|e| err(&e))?
                .iter()
                .map_err(|e| err(&e))?
            {
                let (_, v) = item.map_err(|e| err(&e))?;
                let p: por_protocol::engine::Pending =
                    wire::decode(v.value()).map_err(|e| err(&format!("request: {e}")))?;
                store.pending.insert(p.id, p);
            }
        }
        Ok(NodeDb {
            db,
            path: path.to_path_buf(),
            store,
        })
    }

    /// What the database holds.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Folds `writes` into the store and makes every record they touch durable in one
    /// transaction. On error nothing is written and the node must stop: the engine
    /// asked for something the store refuses (a state going backwards).
    pub fn commit(&mut self, writes: &[Write]) -> Result<(), NodeError> {
        // Applied in place: if a write is refused the node stops without writing, so a
        // half-applied in-memory store is never persisted or used again.
        let next = &mut self.store;
        let mut channels: BTreeSet<ChannelId> = BTreeSet::new();
        let mut pending: BTreeSet<RequestId> = BTreeSet::new();
        // Unacknowledged updates added, and acknowledged up to, per channel.
        let mut added: BTreeSet<(u64, u64)> = BTreeSet::new();
        let mut acked: BTreeMap<u64, u64> = BTreeMap::new();
        for w in writes {
            next.apply(w).map_err(NodeError::Store)?;
            match w {
                Write::Channel(rec) => {
                    channels.insert(rec.id());
                }
                Write::Outgoing {
                    channel, update, ..
                } => {
                    channels.insert(*channel);
                    added.insert((channel.0, update.update.seq));
                }
                Write::Acked { channel, seq, .. } => {
                    channels.insert(*channel);
                    let slot = acked.entry(channel.0).or_default();
                    *slot = (*slot).max(*seq);
                }
                Write::Incoming { channel, .. } | Write::Severed { channel, .. } => {
                    channels.insert(*channel);
                }
                Write::Pending(p) => {
                    pending.insert(p.id);
                }
                Write::PendingDone(id) => {
                    pending.insert(*id);
                }
            }
        }
        let err = db_err(&self.path);
        let tx = self.db.begin_write().map_err(|e| err(&e))?;
        {
            let mut t = tx.open_table(CHANNELS).map_err(|e| err(&e))?;
            let mut u = tx.open_table(UNACKED).map_err(|e| err(&e))?;
            for id in &channels {
                if let Some(rec) = next.channels.get_mut(id) {
                    // The record's head: its unacknowledged updates live in UNACKED.
                    let unacked = std::mem::take(&mut rec.outgoing.unacked);
                    let bytes = wire::encode(&*rec);
                    rec.outgoing.unacked = unacked;
                    let bytes = bytes.map_err(|e| err(&e))?;
                    t.insert(id.0, bytes.as_slice()).map_err(|e| err(&e))?;
                    // Updates added in this batch and still unacknowledged.
                    for &(_, seq) in added.range((id.0, 0)..=(id.0, u64::MAX)) {
                        if let Some(entry) = rec.outgoing.unacked.get(&seq) {
                            let bytes = wire::encode(entry).map_err(|e| err(&e))?;
                            u.insert((id.0, seq), bytes.as_slice())
                                .map_err(|e| err(&e))?;
                        }
                    }
                }
            }
            for (channel, up_to) in acked {
                u.retain_in((channel, 0)..=(channel, up_to), |_, _| false)
                    .map_err(|e| err(&e))?;
            }
            let mut t = tx.open_table(PENDING).map_err(|e| err(&e))?;
            for id in &pending {
                match next.pending.get(id) {
                    Some(p) => {
                        let bytes = wire::encode(p).map_err(|e| err(&e))?;
                        t.insert(&id.0, bytes.as_slice()).map_err(|e| err(&e))?;
                    }
                    None => {
                        t.remove(&id.0).map_err(|e| err(&e))?;
                    }
                }
            }
        }
        tx.commit().map_err(|e| err(&e))?;
        Ok(())
    }

    /// A number kept beside the records (the chain cursor, say).
    pub fn meta(&self, key: &str) -> Result<Option<u64>, NodeError> {
        let err = db_err(&self.path);
        let r = self.db.begin_read().map_err(|e| err(&e))?;
        let t = r.open_table(META).map_err(|e| err(&e))?;
        Ok(t.get(key).map_err(|e| err(&e))?.map(|v| v.value()))
    }

    /// Sets a number kept beside the records, durably.
    pub fn set_meta(&self, key: &str, value: u64) -> Result<(), NodeError> {
        let err = db_err(&self.path);
        let w = self.db.begin_write().map_err(|e| err(&e))?;
        w.open_table(META)
            .map_err(|e| err(&e))?
            .insert(key, value)
            .map_err(|e| err(&e))?;
        w.commit().map_err(|e| err(&e))
    }
}
