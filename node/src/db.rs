//! The node's database: channel records and requests in flight, in a write-ahead log
//! in front of redb.
//!
//! The engine emits [`Write`]s; [`NodeDb::commit`] folds a run of them into the
//! in-memory [`Store`] (which refuses anything that goes backwards) and appends them to
//! the log as one record with one `fdatasync`: group commit. Only after it returns does
//! the node tell the engine the writes are durable, releasing the frames (acks, signed
//! updates) that depend on them.
//!
//! Once the log passes a size, a checkpoint writes every record the writes since the
//! last checkpoint touched into redb in one transaction, together with the log's next
//! generation number, while a fresh log under that number takes the commits: the
//! checkpoint runs on a thread of its own (see `checkpoint.rs`), so a commit never
//! waits for the B-tree. Opening loads redb and replays the log of the same generation
//! and, if a checkpoint was cut short, the one after it (a log of an older generation
//! was already checkpointed). A request that is forwarded and answered between two
//! checkpoints never touches the B-tree at all.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use por_protocol::store::{Store, StoreError, Write};
use por_protocol::types::{ChannelId, RequestId};
use por_protocol::{wire, Deployment};
use redb::{Database, ReadableTable, TableDefinition};

use crate::checkpoint::{
    Dirty, Fold, Folded, Rows, CHANNELS, CLOSINGS, META, NONCE_FLOOR, PENDING, UNACKED,
    WAL_GENERATION,
};
use crate::kept::{self, InLog, CLOSINGS_IN_LOG};
use crate::wal::{Wal, RECORD_HEADER};
use crate::NodeError;

/// The contract deployment the records were signed for (one row, key `deployment`).
const DEPLOYMENT: TableDefinition<&str, &[u8; 32]> = TableDefinition::new("deployment");
/// The meta key of the chain height the node has followed to (see `follower.rs`).
pub(crate) const CHAIN_CURSOR: &str = "chain_cursor";

/// Checkpoint once the log holds this many bytes (about a second of a busy relay's
/// commits; replaying it on start takes milliseconds).
pub const DEFAULT_CHECKPOINT_BYTES: u64 = 8 << 20;

/// While a checkpoint is still being written, the new log may grow to this many
/// times the checkpoint size before a commit waits for it: the bound on what a
/// restart replays.
const CHECKPOINT_LAG: u64 = 4;

/// Folds one write into the store and notes what it touched: the one path for a
/// commit and for a replay of the log.
fn fold(store: &mut Store, dirty: &mut Dirty, w: Write) -> Result<(), StoreError> {
    dirty.note(&w);
    store.apply_owned(w)
}

/// A checkpoint being written on its thread: the buffer back, or what failed.
type Folding = std::thread::JoinHandle<Result<Vec<u8>, String>>;

/// The node's durable state.
pub struct NodeDb {
    db: Arc<Database>,
    path: PathBuf,
    store: Store,
    wal: Wal,
    generation: u64,
    dirty: Dirty,
    /// What the tables hold rows for.
    rows: Rows,
    checkpoint_bytes: u64,
    /// The log record being built, kept between commits.
    record: Vec<u8>,
    /// The large bodies the record being built is written with, uncopied.
    shared: Vec<(usize, bytes::Bytes)>,
    /// The checkpoint of the previous log generation, while its thread writes it.
    folding: Option<Folding>,
    /// The buffer a checkpoint's rows are encoded into, back from the last one.
    fold_buf: Vec<u8>,
    /// The kept logs to delete once the running checkpoint is in.
    releasing: Vec<u64>,
    /// Numbers set while a checkpoint held the tables, stored once it is in.
    deferred: BTreeMap<String, u64>,
}

/// Largest record (and checkpoint) buffer kept for the next one.
const RECORD_BUFFER_KEEP: usize = 16 << 20;

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

/// Appends a log record's payload to `out`: each write, wire-encoded, behind its u32
/// LE length. A response body of [`wire::SHARE_MIN`] bytes or more that a kept closing
/// carries is not copied: it goes into `shared` with the offset in `out` where it
/// belongs (the record is written with it spliced in, [`Wal::append_parts`]). Returns
/// where each write's bytes are in the record so spliced, and their length.
fn encode_writes(
    writes: &[Write],
    out: &mut Vec<u8>,
    shared: &mut Vec<(usize, bytes::Bytes)>,
) -> Result<Vec<(u32, u32)>, wire::WireError> {
    let oversized = |len: usize| wire::WireError::Oversized {
        len,
        max: u32::MAX as usize,
    };
    let mut bodies: std::collections::VecDeque<bytes::Bytes> = writes
        .iter()
        .filter_map(|w| match w {
            Write::Closing { message, .. } => message.large_body().cloned(),
            _ => None,
        })
        .collect();
    let mut spliced = 0usize;
    let mut at = Vec::with_capacity(writes.len());
    for w in writes {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        let from = start + 4 + spliced;
        wire::encode_splicing(w, &mut bodies, out, &mut |out, body| {
            spliced += body.len();
            shared.push((out.len(), body));
        })?;
        let len = out.len() + spliced - from;
        let len32 = u32::try_from(len).map_err(|_| oversized(len))?;
        let from32 = u32::try_from(from).map_err(|_| oversized(from))?;
        out[start..start + 4].copy_from_slice(&len32.to_le_bytes());
        at.push((from32, len32));
    }
    Ok(at)
}

/// The writes of a log record's payload, each with where its bytes are in `bytes`
/// and their length.
fn decode_writes(bytes: &[u8]) -> Result<Vec<(Write, u32, u32)>, String> {
    let mut writes = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let (len, tail) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| format!("write {}: truncated length", writes.len()))?;
        let len = u32::from_le_bytes(*len);
        let n = len as usize;
        if tail.len() < n {
            return Err(format!("write {}: truncated", writes.len()));
        }
        let (w, tail) = tail.split_at(n);
        let at = u32::try_from(bytes.len() - tail.len() - n)
            .map_err(|_| format!("write {}: past 4 GiB", writes.len()))?;
        let w = wire::decode(w).map_err(|e| format!("write {}: {e}", writes.len()))?;
        writes.push((w, at, len));
        rest = tail;
    }
    Ok(writes)
}

/// Every row of a table keyed by request id, decoded; `what` names a row in errors.
fn id_rows<T: serde::de::DeserializeOwned>(
    path: &Path,
    r: &redb::ReadTransaction,
    table: TableDefinition<&[u8; 16], &[u8]>,
    what: &str,
) -> Result<Vec<(RequestId, T)>, NodeError> {
    let err = db_err(path);
    let mut out = Vec::new();
    for item in r
        .open_table(table)
        .map_err(|e| err(&e))?
        .iter()
        .map_err(|e| err(&e))?
    {
        let (k, v) = item.map_err(|e| err(&e))?;
        let id = RequestId(*k.value());
        let row = wire::decode(v.value()).map_err(|e| err(&format!("{what} {id}: {e}")))?;
        out.push((id, row));
    }
    Ok(out)
}

impl NodeDb {
    /// Opens (or creates) the database at `path` (its log beside it, with the
    /// extension `wal`) and loads what they hold.
    pub fn open(path: &Path) -> Result<NodeDb, NodeError> {
        NodeDb::open_with(path, DEFAULT_CHECKPOINT_BYTES)
    }

    /// [`NodeDb::open`], checkpointing whenever the log passes `checkpoint_bytes`.
    pub fn open_with(path: &Path, checkpoint_bytes: u64) -> Result<NodeDb, NodeError> {
        let err = db_err(path);
        let db = Database::create(path).map_err(|e| err(&e))?;
        let w = db.begin_write().map_err(|e| err(&e))?;
        w.open_table(CHANNELS).map_err(|e| err(&e))?;
        w.open_table(UNACKED).map_err(|e| err(&e))?;
        w.open_table(PENDING).map_err(|e| err(&e))?;
        w.open_table(CLOSINGS).map_err(|e| err(&e))?;
        w.open_table(CLOSINGS_IN_LOG).map_err(|e| err(&e))?;
        w.open_table(META).map_err(|e| err(&e))?;
        w.commit().map_err(|e| err(&e))?;
        let mut store = Store::default();
        let mut rows = Rows::default();
        let mut in_log = Vec::new();
        let generation;
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
            for (_, p) in id_rows::<por_protocol::engine::Pending>(path, &r, PENDING, "request")? {
                rows.pending.insert(p.id);
                store.pending.insert(p.id, p);
            }
            for (id, kept) in id_rows(path, &r, CLOSINGS, "closing")? {
                store.closings.insert(id, kept);
                rows.closings.loaded_inline(id);
            }
            for (id, (channel, at)) in
                id_rows::<(ChannelId, InLog)>(path, &r, CLOSINGS_IN_LOG, "closing in a log")?
            {
                in_log.push((id, channel, at));
            }
            let meta = r.open_table(META).map_err(|e| err(&e))?;
            let number = |key: &str| -> Result<u64, NodeError> {
                Ok(meta
                    .get(key)
                    .map_err(|e| err(&e))?
                    .map(|v| v.value())
                    .unwrap_or(0))
            };
            generation = number(WAL_GENERATION)?;
            store.nonce_floor = number(NONCE_FLOOR)?;
        }
        // The closings whose messages are in kept logs, read back from there.
        let mut sizes: HashMap<u64, u64> = HashMap::new();
        for (id, channel, l, message) in kept::read(path, in_log)? {
            let size = match sizes.get(&l.generation) {
                Some(s) => *s,
                None => {
                    let p = kept::path(path, l.generation);
                    let s = std::fs::metadata(&p).map_err(|e| err(&e))?.len();
                    sizes.insert(l.generation, s);
                    s
                }
            };
            store.closings.insert(id, (channel, message));
            rows.closings.loaded_in_log(id, l, size);
        }
        // Kept logs the tables do not refer to: left by a checkpoint cut short, or
        // released by one that finished just before the node stopped.
        let referred: HashSet<u64> = rows.closings.kept().collect();
        let stale: Vec<u64> = kept::on_disk(path)?
            .into_iter()
            .filter(|g| !referred.contains(g))
            .collect();
        kept::remove(path, &stale)?;
        let log_path = path.with_extension("wal");
        let prev_path = Wal::prev_path(&log_path);
        // The logs whose records are not in the tables yet, oldest first: the one of
        // the tables' generation and, if a checkpoint was being written when the node
        // stopped, the next one after it. A log of an older generation was folded in
        // already (the node stopped before deleting or replacing it).
        let mut logs = Vec::new();
        for p in [&prev_path, &log_path] {
            let Some(loaded) = Wal::load(p)? else {
                continue;
            };
            if loaded.generation < generation {
                if *p == prev_path {
                    Wal::remove_prev(&log_path)?;
                }
                continue;
            }
            if loaded.generation != generation + logs.len() as u64 {
                return Err(NodeError::Log {
                    path: p.clone(),
                    offset: 8,
                    detail: format!(
                        "log generation {} is newer than the database's {generation}{}: \
                         the database is older than its log",
                        loaded.generation,
                        if logs.is_empty() {
                            ""
                        } else {
                            " and its first log's"
                        },
                    ),
                });
            }
            logs.push((p.clone(), loaded));
        }
        let mut dirty = Dirty::default();
        let mut replayed = 0;
        for (p, loaded) in &logs {
            for (offset, payload) in &loaded.records {
                let damaged = |detail: String| NodeError::Log {
                    path: p.clone(),
                    offset: *offset,
                    detail,
                };
                for (w, at, len) in decode_writes(payload).map_err(damaged)? {
                    let place = InLog {
                        generation: loaded.generation,
                        record: *offset,
                        at,
                        len,
                    };
                    rows.closings.logged(&w, place);
                    fold(&mut store, &mut dirty, w)
                        .map_err(|e| damaged(format!("replay refused: {e}")))?;
                }
                replayed += 1;
            }
        }
        if replayed > 0 {
            tracing::info!(db = %path.display(), records = replayed, logs = logs.len(), "replayed the write-ahead log");
        }
        let db = Arc::new(db);
        let (wal, generation) = match logs.as_slice() {
            [] => (Wal::create(&log_path, generation)?, generation),
            [(p, loaded)] if *p == log_path => (Wal::resume(&log_path, loaded)?, generation),
            _ => {
                // A checkpoint was cut short: fold both logs in now, so that the node
                // starts from one log again.
                let next = generation + logs.len() as u64;
                let folded: Vec<Folded> = logs
                    .iter()
                    .map(|(p, loaded)| Folded {
                        generation: loaded.generation,
                        size: loaded.end,
                        path: p.clone(),
                    })
                    .collect();
                let taken = Fold::take(
                    &mut store,
                    std::mem::take(&mut dirty),
                    &mut rows,
                    &folded,
                    next,
                    path,
                );
                let release = taken.releases();
                taken.write(&db, Vec::new()).map_err(|e| err(&e))?;
                let wal = Wal::create(&log_path, next)?;
                Wal::remove_prev(&log_path)?;
                kept::remove(path, &release)?;
                (wal, next)
            }
        };
        Ok(NodeDb {
            db,
            path: path.to_path_buf(),
            store,
            wal,
            generation,
            dirty,
            rows,
            checkpoint_bytes,
            record: Vec::new(),
            shared: Vec::new(),
            folding: None,
            fold_buf: Vec::new(),
            releasing: Vec::new(),
            deferred: BTreeMap::new(),
        })
    }

    /// What the database holds.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Folds `writes` into the store and makes them durable: one log record, one
    /// sync (and, now and then, a checkpoint). On error the node must stop: the engine
    /// asked for something the store refuses (a state going backwards), or the disk
    /// failed; either way nothing more may be reported durable.
    pub fn commit(&mut self, writes: Vec<Write>) -> Result<(), NodeError> {
        let mut record = std::mem::take(&mut self.record);
        Wal::start_record(&mut record);
        let mut shared = std::mem::take(&mut self.shared);
        let places =
            encode_writes(&writes, &mut record, &mut shared).map_err(|e| db_err(&self.path)(&e))?;
        let header = RECORD_HEADER as u32;
        for (w, (at, len)) in writes.iter().zip(places) {
            let place = InLog {
                generation: self.generation,
                record: self.wal.len(),
                at: at.saturating_sub(header),
                len,
            };
            self.rows.closings.logged(w, place);
        }
        // Applied in place: if a write is refused the node stops without logging, so a
        // half-applied in-memory store is never persisted or used again.
        for w in writes {
            fold(&mut self.store, &mut self.dirty, w)?;
        }
        self.wal.append_parts(&mut record, &shared)?;
        // Let the bodies go; keep the list's room for the next commit.
        shared.clear();
        self.shared = shared;
        // Keep the buffer for the next commit, unless one huge commit grew it.
        if record.capacity() <= RECORD_BUFFER_KEEP {
            self.record = record;
        }
        self.reap(false)?;
        if self.wal.len() >= self.checkpoint_bytes {
            if self.folding.is_some()
                && self.wal.len() >= self.checkpoint_bytes.saturating_mul(CHECKPOINT_LAG)
            {
                // The last checkpoint is still being written and the log has run far
                // ahead of it: wait, so a restart never replays more than this.
                self.reap(true)?;
            }
            if self.folding.is_none() {
                self.start_checkpoint()?;
            }
        }
        Ok(())
    }

    /// Checkpoints now and waits until it is in: every record the log holds is
    /// written into the tables, and the log starts again, empty.
    pub fn checkpoint(&mut self) -> Result<(), NodeError> {
        self.reap(true)?;
        self.start_checkpoint()?;
        self.reap(true)
    }

    /// Takes the rows the current log touched, sets the log aside for a fresh one of
    /// the next generation, and starts writing the rows into the tables on a thread
    /// of their own (see `checkpoint.rs`). Only one runs at a time.
    fn start_checkpoint(&mut self) -> Result<(), NodeError> {
        let err = db_err(&self.path);
        let next = self.generation + 1;
        let log_path = self.path.with_extension("wal");
        let folded = [Folded {
            generation: self.generation,
            size: self.wal.len(),
            path: Wal::prev_path(&log_path),
        }];
        let fold = Fold::take(
            &mut self.store,
            std::mem::take(&mut self.dirty),
            &mut self.rows,
            &folded,
            next,
            &self.path,
        );
        tracing::debug!(db = %self.path.display(), generation = next, rows = fold.rows(), "checkpoint");
        self.releasing = fold.releases();
        self.wal.rotate(next)?;
        self.generation = next;
        let (db, buf) = (self.db.clone(), std::mem::take(&mut self.fold_buf));
        let thread = std::thread::Builder::new()
            .name("por-checkpoint".into())
            .spawn(move || fold.write(&db, buf))
            .map_err(|e| err(&format!("cannot start the checkpoint thread: {e}")))?;
        self.folding = Some(thread);
        Ok(())
    }

    /// Finishes the running checkpoint if it is done (or, with `wait`, once it is):
    /// deletes the log it folded in and stores the numbers set meanwhile. A checkpoint
    /// that failed is reported here; nothing was lost (both logs are still on disk),
    /// but the node must stop.
    fn reap(&mut self, wait: bool) -> Result<(), NodeError> {
        let Some(thread) = self.folding.take() else {
            return Ok(());
        };
        if !wait && !thread.is_finished() {
            self.folding = Some(thread);
            return Ok(());
        }
        let err = db_err(&self.path);
        let mut buf = thread
            .join()
            .map_err(|_| err(&"the checkpoint thread panicked"))?
            .map_err(|e| err(&e))?;
        if buf.capacity() <= RECORD_BUFFER_KEEP {
            buf.clear();
            self.fold_buf = buf;
        }
        Wal::remove_prev(&self.path.with_extension("wal"))?;
        kept::remove(&self.path, &std::mem::take(&mut self.releasing))?;
        for (key, value) in std::mem::take(&mut self.deferred) {
            self.write_meta(&key, value)?;
        }
        Ok(())
    }

    /// A number kept beside the records (the chain cursor, say).
    pub fn meta(&self, key: &str) -> Result<Option<u64>, NodeError> {
        if let Some(v) = self.deferred.get(key) {
            return Ok(Some(*v));
        }
        let err = db_err(&self.path);
        let r = self.db.begin_read().map_err(|e| err(&e))?;
        let t = r.open_table(META).map_err(|e| err(&e))?;
        Ok(t.get(key).map_err(|e| err(&e))?.map(|v| v.value()))
    }

    /// Binds the records to `deployment` the first time, and refuses a database whose
    /// records were signed for another: its channel ids and states mean nothing on
    /// this chain (ids restart at 1 in every deployment).
    pub fn bind_deployment(&mut self, deployment: &Deployment) -> Result<(), NodeError> {
        self.reap(true)?;
        let err = db_err(&self.path);
        let w = self.db.begin_write().map_err(|e| err(&e))?;
        {
            let mut t = w.open_table(DEPLOYMENT).map_err(|e| err(&e))?;
            let held = t
                .get("deployment")
                .map_err(|e| err(&e))?
                .map(|v| *v.value());
            match held {
                Some(held) if held != deployment.0 .0 => {
                    return Err(NodeError::WrongDeployment {
                        path: self.path.clone(),
                        held: Deployment(por_protocol::Hash(held)).to_hex(),
                        chain: deployment.to_hex(),
                    });
                }
                Some(_) => {}
                None => {
                    t.insert("deployment", &deployment.0 .0)
                        .map_err(|e| err(&e))?;
                }
            }
        }
        w.commit().map_err(|e| err(&e))
    }

    /// Sets a number kept beside the records: durably at once, or, while a
    /// checkpoint is being written, once it is in (the tables take one writer at a
    /// time, and a commit must not wait for it). Meant for numbers that may lag, as
    /// the chain cursor may (a crash then replays a few chain events, harmlessly);
    /// [`NodeDb::meta`] reads the latest set.
    pub fn set_meta(&mut self, key: &str, value: u64) -> Result<(), NodeError> {
        self.reap(false)?;
        if self.folding.is_some() {
            self.deferred.insert(key.to_string(), value);
            return Ok(());
        }
        self.write_meta(key, value)
    }

    fn write_meta(&self, key: &str, value: u64) -> Result<(), NodeError> {
        let err = db_err(&self.path);
        let w = self.db.begin_write().map_err(|e| err(&e))?;
        w.open_table(META)
            .map_err(|e| err(&e))?
            .insert(key, value)
            .map_err(|e| err(&e))?;
        w.commit().map_err(|e| err(&e))
    }
}

impl Drop for NodeDb {
    /// Waits for a running checkpoint (it would be safe to leave it cut short, but a
    /// reopen then has two logs to replay).
    fn drop(&mut self) {
        if let Err(e) = self.reap(true) {
            tracing::warn!(db = %self.path.display(), error = %e, "the last checkpoint did not finish");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use por_protocol::types::{EdgeInfo, EdgeTerms, Route};
    use por_protocol::{Amount, ChainEvent, Engine, EngineConfig, Keypair, NodeId, Time};

    /// A fresh, empty directory for one test's database.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("por-db-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_database_stays_with_the_deployment_it_was_first_bound_to() {
        let dir = scratch("deployment");
        let mut db = NodeDb::open(&dir.join("node.redb")).unwrap();
        let ours = Deployment::of("testnet", "por.testnet");
        db.bind_deployment(&ours).unwrap();
        db.bind_deployment(&ours).unwrap();
        let other = Deployment::of("mainnet", "por.near");
        let err = db.bind_deployment(&other).unwrap_err();
        assert!(
            matches!(&err, NodeError::WrongDeployment { held, chain, .. }
                if *held == ours.to_hex() && *chain == other.to_hex()),
            "{err}"
        );
        drop(db);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Three engines (client, relay, server) exchange requests in memory; the relay's
    /// writes go through a real database in small batches, some requests left
    /// unanswered. Reopened, the database holds exactly the store the writes fold
    /// into (unacknowledged updates included), and an engine restored from it
    /// agrees with the live one. `checkpoint_bytes` decides whether that state comes
    /// from the log alone, the tables alone, or both.
    fn reopened_database_holds_what_was_committed(name: &str, checkpoint_bytes: u64) -> u64 {
        let keys: Vec<Keypair> = (1u8..=3).map(|i| Keypair::from_seed([i; 32])).collect();
        let terms = EdgeTerms {
            latency_ms: 10,
            base_cost: Amount(100),
            byte_cost: Amount(1),
            sync_interval_ms: 1000,
            sync_phase_ms: 0,
            max_late_fee_rate: Amount(10),
            bandwidth: EdgeTerms::DEFAULT_BANDWIDTH,
        };
        let edges: Vec<EdgeInfo> = [(1, 0, 1), (2, 1, 2)]
            .iter()
            .map(|&(id, a, b)| EdgeInfo {
                id: ChannelId(id),
                a: keys[a].id(),
                b: keys[b].id(),
                terms: terms.clone(),
                deposit_a: Amount(1_000_000),
                deposit_b: Amount(1_000_000),
            })
            .collect();
        let mut engines: Vec<Engine> = keys
            .iter()
            .map(|k| {
                let mut e = Engine::new(
                    EngineConfig::default(),
                    k.clone(),
                    Deployment::test(),
                    Time::ZERO,
                );
                for ed in &edges {
                    e.handle_chain_event(ChainEvent::EdgeOpened(ed.clone()), Time::ZERO);
                }
                e
            })
            .collect();
        let ids: Vec<NodeId> = keys.iter().map(|k| k.id()).collect();
        let dir = scratch(name);
        let path = dir.join("node.redb");
        let mut db = NodeDb::open_with(&path, checkpoint_bytes).unwrap();
        let mut mirror = Store::default();
        let route = Route {
            nodes: ids.clone(),
            channels: vec![ChannelId(1), ChannelId(2)],
        };
        let t = Time(1);
        for round in 0..20u64 {
            engines[0]
                .send_request(route.clone(), vec![round as u8; 10], 64, Amount(1), t)
                .unwrap();
            // Deliver everything; the server answers only even rounds.
            for _ in 0..10 {
                for i in 0..3 {
                    while let Some(b) = engines[i].poll_writes() {
                        if i == 1 {
                            for w in &b.writes {
                                mirror.apply(w).unwrap();
                            }
                            db.commit(b.writes.clone()).unwrap();
                        }
                        engines[i].writes_durable(b.up_to);
                    }
                    while let Some(tx) = engines[i].poll_transmit() {
                        let to = ids.iter().position(|id| *id == tx.to).unwrap();
                        // The last request never reaches the server: its payment
                        // stays unacknowledged at the relay.
                        if round == 19 && i == 1 && to == 2 {
                            continue;
                        }
                        let _ = engines[to].handle_message(ids[i], tx.message, t);
                    }
                    while let Some(ev) = engines[i].poll_event() {
                        if let por_protocol::Event::RequestReceived { request, .. } = ev {
                            if round % 2 == 0 {
                                engines[2].respond(request, b"ok".to_vec(), t).unwrap();
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(db.store(), &mirror);
        assert!(
            !mirror.pending.is_empty(),
            "unanswered requests stay in flight"
        );
        assert!(
            !mirror.channels[&ChannelId(2)].outgoing.unacked.is_empty(),
            "an unacknowledged payment is held"
        );
        let generation = db.generation;
        drop(db);
        let reopened = NodeDb::open(&path).unwrap();
        assert_eq!(reopened.generation, generation);
        // The relay's kept closings (its forwarded responses) are durable too.
        assert!(!mirror.closings.is_empty(), "closings were written");
        assert_eq!(reopened.store(), &mirror);
        let live: Vec<_> = engines[1].channels().cloned().collect();
        let restored = Engine::restore(
            EngineConfig::default(),
            keys[1].clone(),
            Deployment::test(),
            por_protocol::topology::Topology::new(),
            reopened.store(),
            t,
        );
        assert_eq!(restored.channels().cloned().collect::<Vec<_>>(), live);
        assert_eq!(restored.in_flight(), engines[1].in_flight());
        // Checkpointed now, the tables alone hold it: the log is empty.
        drop(reopened);
        let mut db = NodeDb::open(&path).unwrap();
        db.checkpoint().unwrap();
        drop(db);
        let log = std::fs::metadata(path.with_extension("wal")).unwrap().len();
        assert_eq!(log, 16, "header only");
        assert_eq!(NodeDb::open(&path).unwrap().store(), &mirror);
        std::fs::remove_dir_all(&dir).unwrap();
        generation
    }

    #[test]
    fn reopened_database_replays_its_log() {
        let generation = reopened_database_holds_what_was_committed("log", u64::MAX);
        assert_eq!(generation, 0, "never checkpointed");
    }

    #[test]
    fn reopened_database_holds_what_many_checkpoints_wrote() {
        let generation = reopened_database_holds_what_was_committed("checkpoints", 4096);
        assert!(generation > 5, "{generation} checkpoints");
    }

    #[test]
    fn the_nonce_floor_survives_a_reopen_from_the_log_and_from_the_tables() {
        let dir = scratch("nonce-floor");
        let path = dir.join("node.redb");
        let mut db = NodeDb::open(&path).unwrap();
        db.commit(vec![Write::NonceFloor(5), Write::NonceFloor(3)])
            .unwrap();
        drop(db);
        // From the log: the highest floor, not the last.
        let mut db = NodeDb::open(&path).unwrap();
        assert_eq!(db.store().nonce_floor, 5);
        db.checkpoint().unwrap();
        drop(db);
        // From the tables alone.
        assert_eq!(
            std::fs::metadata(path.with_extension("wal")).unwrap().len(),
            16,
            "header only"
        );
        let mut db = NodeDb::open(&path).unwrap();
        assert_eq!(db.store().nonce_floor, 5);
        // A checkpoint that touched no floor keeps the one in the tables.
        open_channel(&mut db, 1);
        db.checkpoint().unwrap();
        drop(db);
        let mut db = NodeDb::open(&path).unwrap();
        assert_eq!(db.store().nonce_floor, 5);
        db.commit(vec![Write::NonceFloor(9)]).unwrap();
        drop(db);
        assert_eq!(NodeDb::open(&path).unwrap().store().nonce_floor, 9);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn open_channel(db: &mut NodeDb, id: u64) -> Write {
        let a = Keypair::from_seed([1; 32]);
        let b = Keypair::from_seed([2; 32]);
        let edge = EdgeInfo {
            id: ChannelId(id),
            a: a.id(),
            b: b.id(),
            terms: EdgeTerms {
                latency_ms: 10,
                base_cost: Amount(1),
                byte_cost: Amount(1),
                sync_interval_ms: 1000,
                sync_phase_ms: 0,
                max_late_fee_rate: Amount(1),
                bandwidth: EdgeTerms::DEFAULT_BANDWIDTH,
            },
            deposit_a: Amount(10),
            deposit_b: Amount(10),
        };
        let rec = por_protocol::channel::ChannelRecord::open(edge, a.id()).unwrap();
        let w = Write::Channel(Box::new(rec));
        db.commit(vec![w.clone()]).unwrap();
        w
    }

    /// A crash after a checkpoint's transaction but before the new log replaced the
    /// old one leaves the old log behind: its records are in the tables already, and
    /// are not applied twice.
    #[test]
    fn an_old_log_left_by_a_crash_mid_checkpoint_is_not_replayed() {
        let dir = scratch("stale");
        let path = dir.join("node.redb");
        let log = path.with_extension("wal");
        let mut db = NodeDb::open(&path).unwrap();
        open_channel(&mut db, 1);
        let old_log = std::fs::read(&log).unwrap();
        db.checkpoint().unwrap();
        let want = db.store().clone();
        drop(db);
        std::fs::write(&log, &old_log).unwrap();
        let db = NodeDb::open(&path).unwrap();
        assert_eq!(db.store(), &want);
        assert_eq!(db.generation, 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A crash while a checkpoint is being written leaves the tables one generation
    /// behind, the finished log set aside and the next one taking commits: opening
    /// replays both, in order, folds them in and starts from one log again. A crash
    /// between setting the finished log aside and renaming the fresh one into place
    /// leaves only the finished one: that too.
    #[test]
    fn a_checkpoint_cut_short_is_finished_from_both_logs() {
        let dir = scratch("cut");
        let path = dir.join("node.redb");
        let log = path.with_extension("wal");
        let prev = Wal::prev_path(&log);
        let mut db = NodeDb::open(&path).unwrap();
        open_channel(&mut db, 1);
        // The state on disk when the checkpoint of generation 0 began: tables at 0,
        // the log of 0 holding channel 1.
        let tables_at_0 = std::fs::read(&path).unwrap();
        let log_0 = std::fs::read(&log).unwrap();
        let only_1 = db.store().clone();
        db.checkpoint().unwrap();
        open_channel(&mut db, 2);
        let both = db.store().clone();
        drop(db);
        let log_1 = std::fs::read(&log).unwrap();
        for (fresh_in_place, want) in [(true, &both), (false, &only_1)] {
            std::fs::write(&path, &tables_at_0).unwrap();
            std::fs::write(&prev, &log_0).unwrap();
            if fresh_in_place {
                std::fs::write(&log, &log_1).unwrap();
            } else {
                std::fs::remove_file(&log).unwrap();
            }
            let mut db = NodeDb::open(&path).unwrap();
            assert_eq!(db.store(), want, "fresh log in place: {fresh_in_place}");
            assert!(!prev.exists(), "the finished log is folded in and deleted");
            assert_eq!(std::fs::metadata(&log).unwrap().len(), 16, "one empty log");
            // And the database goes on from there.
            open_channel(&mut db, 3);
            let now = db.store().clone();
            drop(db);
            assert_eq!(NodeDb::open(&path).unwrap().store(), &now);
        }
        // The log after the finished one without it: something was lost, refused.
        std::fs::write(&path, &tables_at_0).unwrap();
        std::fs::write(&log, &log_1).unwrap();
        let e = NodeDb::open(&path).unwrap_err();
        assert!(e.to_string().contains("newer"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Checkpoints run beside the commits: the numbers set while one is written are
    /// read back at once and stored once it is in, and commits go on into the next
    /// log meanwhile.
    #[test]
    fn commits_and_numbers_go_on_while_a_checkpoint_is_written() {
        let dir = scratch("beside");
        let path = dir.join("node.redb");
        // A checkpoint after every commit.
        let mut db = NodeDb::open_with(&path, 0).unwrap();
        let mut saw_running = false;
        for id in 1..=50 {
            open_channel(&mut db, id);
            saw_running |= db.folding.is_some();
            db.set_meta(CHAIN_CURSOR, id).unwrap();
            assert_eq!(db.meta(CHAIN_CURSOR).unwrap(), Some(id));
        }
        assert!(
            saw_running,
            "commits came back before their checkpoint was in"
        );
        let want = db.store().clone();
        assert_eq!(want.channels.len(), 50);
        drop(db);
        let db = NodeDb::open(&path).unwrap();
        assert_eq!(db.store(), &want);
        assert_eq!(db.meta(CHAIN_CURSOR).unwrap(), Some(50));
        assert!(!Wal::prev_path(&path.with_extension("wal")).exists());
        drop(db);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Garbage after the last record (a torn write) is cut off; what was committed
    /// before it is all there.
    #[test]
    fn a_torn_commit_is_dropped_and_the_rest_kept() {
        let dir = scratch("torn");
        let path = dir.join("node.redb");
        let mut db = NodeDb::open(&path).unwrap();
        open_channel(&mut db, 1);
        open_channel(&mut db, 2);
        let want = db.store().clone();
        drop(db);
        let log = path.with_extension("wal");
        let mut bytes = std::fs::read(&log).unwrap();
        bytes.extend_from_slice(&[200, 1, 0, 0, 9, 9]);
        std::fs::write(&log, &bytes).unwrap();
        let mut db = NodeDb::open(&path).unwrap();
        assert_eq!(db.store(), &want);
        // The log goes on after the cut.
        open_channel(&mut db, 3);
        let want = db.store().clone();
        drop(db);
        assert_eq!(NodeDb::open(&path).unwrap().store(), &want);
        assert_eq!(want.channels.len(), 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A kept closing of request `id` on channel 1: a response with `body` bytes.
    fn closing(id: u8, body: usize) -> Write {
        use por_protocol::merkle::MerkleProof;
        use por_protocol::types::{ResponseBody, SignedResponse};
        let request = RequestId([id; 16]);
        let message = por_protocol::messages::Message::Response {
            request,
            response: SignedResponse {
                body: ResponseBody {
                    request,
                    body_hash: por_protocol::Hash([id; 32]),
                    body_len: body as u64,
                },
                proof: MerkleProof {
                    leaves: 1,
                    index: 0,
                    siblings: Vec::new(),
                },
                sig: por_protocol::crypto::Signature([id; 64]),
            },
            body: vec![id; body].into(),
            fee: None,
        };
        Write::Closing {
            channel: ChannelId(1),
            request,
            message: Box::new(message),
        }
    }

    fn dropped(id: u8) -> Write {
        Write::ClosingDropped {
            request: RequestId([id; 16]),
        }
    }

    /// A response body a relay keeps (a closing) is written once: in the log. When
    /// the log is folded, the tables refer to it there and the log is kept
    /// (`<db>.wal-<generation>`); once those closings are dropped it is deleted. A
    /// log whose live closings are under a quarter of it is not kept: those few are
    /// copied into the tables, as are those of an older kept log that falls under its
    /// quarter, so the kept logs never hold much more than the closings they serve.
    #[test]
    fn a_kept_response_body_is_written_once_and_its_log_kept_while_it_is() {
        let dir = scratch("kept");
        let path = dir.join("node.redb");
        let mut db = NodeDb::open_with(&path, u64::MAX).unwrap();
        open_channel(&mut db, 1);
        // Generation 0: four closings of 64 KiB, one commit each.
        for id in 1..=4 {
            db.commit(vec![closing(id, 64 << 10)]).unwrap();
        }
        db.checkpoint().unwrap();
        assert_eq!(kept::on_disk(&path).unwrap(), vec![0], "log 0 is kept");
        assert_eq!(rows_of_open(&mut db, CLOSINGS_IN_LOG), vec![1, 2, 3, 4]);
        assert!(rows_of_open(&mut db, CLOSINGS).is_empty(), "no body copied");
        let want = db.store().clone();
        drop(db);
        // Reopened, the closings are read back from the kept log.
        let mut db = NodeDb::open_with(&path, u64::MAX).unwrap();
        assert_eq!(db.store(), &want);
        // Generation 1: two of them dropped (log 0 still holds half its size of
        // live closings) and one more closing written, with small writes after it
        // that make it less than a quarter of log 1.
        db.commit(vec![dropped(1), dropped(2), closing(5, 16 << 10)])
            .unwrap();
        for _ in 0..12 {
            db.commit(vec![closing(9, 8 << 10), dropped(9)]).unwrap();
        }
        db.checkpoint().unwrap();
        assert_eq!(kept::on_disk(&path).unwrap(), vec![0], "log 1 is not kept");
        assert_eq!(rows_of_open(&mut db, CLOSINGS_IN_LOG), vec![3, 4]);
        assert_eq!(rows_of_open(&mut db, CLOSINGS), vec![5], "copied in");
        // Generation 2: a third dropped; log 0 falls under its quarter and what is
        // left of it is copied into the tables.
        db.commit(vec![dropped(3)]).unwrap();
        db.checkpoint().unwrap();
        assert!(kept::on_disk(&path).unwrap().is_empty(), "log 0 deleted");
        assert!(rows_of_open(&mut db, CLOSINGS_IN_LOG).is_empty());
        assert_eq!(rows_of_open(&mut db, CLOSINGS), vec![4, 5]);
        let want = db.store().clone();
        assert_eq!(want.closings.len(), 2);
        drop(db);
        assert_eq!(NodeDb::open(&path).unwrap().store(), &want);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A kept closing's large body goes into the log from the buffer it arrived in:
    /// the record is built without it and written with it spliced in, and the bytes
    /// are those of the plain encoding, with every write where the encoder says.
    #[test]
    fn a_large_kept_body_is_logged_from_its_buffer_not_copied() {
        let writes = vec![
            closing(1, 64 << 10),
            dropped(9),
            closing(2, 100),
            closing(3, wire::SHARE_MIN),
        ];
        let mut record = Vec::new();
        Wal::start_record(&mut record);
        let mut shared = Vec::new();
        let at = encode_writes(&writes, &mut record, &mut shared).unwrap();
        assert_eq!(shared.len(), 2, "the two large bodies");
        assert!(record.len() < 4096, "{} bytes copied", record.len());
        let mut whole = Vec::new();
        let mut from = 0;
        for (offset, body) in &shared {
            whole.extend_from_slice(&record[from..*offset]);
            whole.extend_from_slice(body);
            from = *offset;
        }
        whole.extend_from_slice(&record[from..]);
        let header = RECORD_HEADER as usize;
        let back = decode_writes(&whole[header..]).unwrap();
        assert_eq!(
            back.iter().map(|(w, _, _)| w.clone()).collect::<Vec<_>>(),
            writes
        );
        for ((_, pos, len), (pos2, len2)) in back.iter().zip(&at) {
            assert_eq!((*pos as usize + header, len), (*pos2 as usize, len2));
        }
        let mut plain = Vec::new();
        for w in &writes {
            let bytes = wire::encode(w).unwrap();
            plain.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            plain.extend_from_slice(&bytes);
        }
        assert_eq!(&whole[header..], plain.as_slice());
    }

    /// The rows of a table of an open database (its checkpoint done).
    fn rows_of_open(db: &mut NodeDb, table: TableDefinition<&[u8; 16], &[u8]>) -> Vec<u8> {
        db.reap(true).unwrap();
        let r = db.db.begin_read().unwrap();
        let t = r.open_table(table).unwrap();
        t.iter().unwrap().map(|i| i.unwrap().0.value()[0]).collect()
    }

    /// A crash around a checkpoint that keeps a log: linked but not committed (the
    /// link is stale and deleted on opening; the checkpoint is redone from both logs,
    /// keeping the log again), and committed but the finished log not yet deleted.
    /// And a kept log that is gone is damage: the node does not start.
    #[test]
    fn kept_logs_survive_a_crash_at_any_step_of_their_checkpoint() {
        let dir = scratch("keptcut");
        let path = dir.join("node.redb");
        let log = path.with_extension("wal");
        let prev = Wal::prev_path(&log);
        let mut db = NodeDb::open_with(&path, u64::MAX).unwrap();
        open_channel(&mut db, 1);
        db.commit(vec![closing(1, 64 << 10), closing(2, 64 << 10)])
            .unwrap();
        let tables_at_0 = std::fs::read(&path).unwrap();
        let log_0 = std::fs::read(&log).unwrap();
        db.checkpoint().unwrap();
        db.commit(vec![closing(3, 64 << 10)]).unwrap();
        let want = db.store().clone();
        drop(db);
        let log_1 = std::fs::read(&log).unwrap();
        let kept_0 = kept::path(&path, 0);
        assert!(kept_0.exists());
        // Linked, not committed: the tables at 0, both logs, a stale link that is
        // not what the redone checkpoint links (a different file).
        std::fs::remove_file(&kept_0).unwrap();
        std::fs::write(&kept_0, b"stale").unwrap();
        std::fs::write(&path, &tables_at_0).unwrap();
        std::fs::write(&prev, &log_0).unwrap();
        std::fs::write(&log, &log_1).unwrap();
        let db = NodeDb::open_with(&path, u64::MAX).unwrap();
        assert_eq!(db.store(), &want);
        drop(db);
        // Both logs were folded at once: each kept, the tables referring to both.
        assert_eq!(kept::on_disk(&path).unwrap(), vec![0, 1]);
        assert!(!prev.exists());
        let mut db = NodeDb::open_with(&path, u64::MAX).unwrap();
        assert_eq!(db.store(), &want);
        // Committed, the finished log not yet deleted: it is not replayed.
        db.commit(vec![dropped(1)]).unwrap();
        let want = db.store().clone();
        let log_2 = std::fs::read(&log).unwrap();
        db.checkpoint().unwrap();
        drop(db);
        std::fs::write(&prev, &log_2).unwrap();
        let db = NodeDb::open_with(&path, u64::MAX).unwrap();
        assert_eq!(db.store(), &want);
        assert!(!prev.exists());
        drop(db);
        // A kept log the tables refer to, gone: refused, naming it.
        std::fs::remove_file(&kept_0).unwrap();
        let e = NodeDb::open_with(&path, u64::MAX).unwrap_err();
        assert!(e.to_string().contains("wal-0"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
