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
//! generation number, and the log starts again under that number. Opening loads redb
//! and replays the log of the same generation (a log of an older one was already
//! checkpointed). A request that is forwarded and answered between two checkpoints
//! never touches the B-tree at all.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use por_protocol::store::{Store, StoreError, Write};
use por_protocol::types::{ChannelId, RequestId};
use por_protocol::{wire, Deployment};
use redb::{Database, ReadableTable, TableDefinition};

use crate::wal::Wal;
use crate::NodeError;

/// Channel records without their unacknowledged updates (which are kept apart, so
/// that a checkpoint writes each update once instead of every record re-writing all
/// of them).
const CHANNELS: TableDefinition<u64, &[u8]> = TableDefinition::new("channels");
/// Our signed, not yet acknowledged updates, by (channel, seq): the update and the
/// message that carries it.
const UNACKED: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("unacked");
const PENDING: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("pending");
/// Closing messages kept for resending, by request: (channel, message).
const CLOSINGS: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("closings");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The contract deployment the records were signed for (one row, key `deployment`).
const DEPLOYMENT: TableDefinition<&str, &[u8; 32]> = TableDefinition::new("deployment");
/// The generation of the write-ahead log whose records are not yet in the tables.
const WAL_GENERATION: &str = "wal_generation";
/// The meta key of the chain height the node has followed to (see `follower.rs`).
pub(crate) const CHAIN_CURSOR: &str = "chain_cursor";

/// Checkpoint once the log holds this many bytes (about a second of a busy relay's
/// commits; replaying it on start takes milliseconds).
pub const DEFAULT_CHECKPOINT_BYTES: u64 = 8 << 20;

/// What the writes since the last checkpoint touched.
#[derive(Debug, Default)]
struct Dirty {
    channels: BTreeSet<ChannelId>,
    pending: BTreeSet<RequestId>,
    /// Unacknowledged updates added, by (channel, seq).
    added: BTreeSet<(u64, u64)>,
    /// Acknowledged up to, per channel.
    acked: BTreeMap<u64, u64>,
    /// Kept closings added or dropped.
    closings: BTreeSet<RequestId>,
}

/// Folds one write into the store and notes what it touched: the one path for a
/// commit and for a replay of the log.
fn fold(store: &mut Store, dirty: &mut Dirty, w: Write) -> Result<(), StoreError> {
    dirty.note(&w);
    store.apply_owned(w)
}

impl Dirty {
    fn note(&mut self, w: &Write) {
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
            Write::Closing { request, .. } | Write::ClosingDropped { request } => {
                self.closings.insert(*request);
            }
        }
    }
}

/// The node's durable state.
pub struct NodeDb {
    db: Database,
    path: PathBuf,
    store: Store,
    wal: Wal,
    generation: u64,
    dirty: Dirty,
    /// Requests with a row in PENDING.
    pending_rows: HashSet<RequestId>,
    checkpoint_bytes: u64,
    /// The log record being built, kept between commits.
    record: Vec<u8>,
}

/// Largest record buffer kept between commits.
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
/// LE length.
fn encode_writes(writes: &[Write], out: &mut Vec<u8>) -> Result<(), wire::WireError> {
    for w in writes {
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        wire::encode_into(w, out)?;
        let len = out.len() - at - 4;
        let len = u32::try_from(len).map_err(|_| wire::WireError::Oversized {
            len,
            max: u32::MAX as usize,
        })?;
        out[at..at + 4].copy_from_slice(&len.to_le_bytes());
    }
    Ok(())
}

fn decode_writes(mut bytes: &[u8]) -> Result<Vec<Write>, String> {
    let mut writes = Vec::new();
    while !bytes.is_empty() {
        let (len, rest) = bytes
            .split_first_chunk::<4>()
            .ok_or_else(|| format!("write {}: truncated length", writes.len()))?;
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            return Err(format!("write {}: truncated", writes.len()));
        }
        let (w, rest) = rest.split_at(len);
        writes.push(wire::decode(w).map_err(|e| format!("write {}: {e}", writes.len()))?);
        bytes = rest;
    }
    Ok(writes)
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
        w.open_table(META).map_err(|e| err(&e))?;
        w.commit().map_err(|e| err(&e))?;
        let mut store = Store::default();
        let mut pending_rows = HashSet::new();
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
            for item in r
                .open_table(PENDING)
                .map_err(|e| err(&e))?
                .iter()
                .map_err(|e| err(&e))?
            {
                let (_, v) = item.map_err(|e| err(&e))?;
                let p: por_protocol::engine::Pending =
                    wire::decode(v.value()).map_err(|e| err(&format!("request: {e}")))?;
                pending_rows.insert(p.id);
                store.pending.insert(p.id, p);
            }
            for item in r
                .open_table(CLOSINGS)
                .map_err(|e| err(&e))?
                .iter()
                .map_err(|e| err(&e))?
            {
                let (k, v) = item.map_err(|e| err(&e))?;
                let kept: (ChannelId, por_protocol::messages::Message) =
                    wire::decode(v.value()).map_err(|e| err(&format!("closing: {e}")))?;
                store.closings.insert(RequestId(*k.value()), kept);
            }
            generation = r
                .open_table(META)
                .map_err(|e| err(&e))?
                .get(WAL_GENERATION)
                .map_err(|e| err(&e))?
                .map(|v| v.value())
                .unwrap_or(0);
        }
        let log_path = path.with_extension("wal");
        let (wal, records) = Wal::open(&log_path, generation)?;
        let mut dirty = Dirty::default();
        let replayed = records.len();
        for (offset, payload) in records {
            let damaged = |detail: String| NodeError::Log {
                path: log_path.clone(),
                offset,
                detail,
            };
            for w in decode_writes(&payload).map_err(damaged)? {
                fold(&mut store, &mut dirty, w)
                    .map_err(|e| damaged(format!("replay refused: {e}")))?;
            }
        }
        if replayed > 0 {
            tracing::info!(db = %path.display(), records = replayed, "replayed the write-ahead log");
        }
        Ok(NodeDb {
            db,
            path: path.to_path_buf(),
            store,
            wal,
            generation,
            dirty,
            pending_rows,
            checkpoint_bytes,
            record: Vec::new(),
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
        encode_writes(&writes, &mut record).map_err(|e| db_err(&self.path)(&e))?;
        // Applied in place: if a write is refused the node stops without logging, so a
        // half-applied in-memory store is never persisted or used again.
        for w in writes {
            fold(&mut self.store, &mut self.dirty, w)?;
        }
        self.wal.append(&mut record)?;
        // Keep the buffer for the next commit, unless one huge commit grew it.
        if record.capacity() <= RECORD_BUFFER_KEEP {
            self.record = record;
        }
        if self.wal.len() >= self.checkpoint_bytes {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Writes every record touched since the last checkpoint into the tables, with the
    /// next log generation, in one transaction; then starts the log again.
    pub fn checkpoint(&mut self) -> Result<(), NodeError> {
        let err = db_err(&self.path);
        let next = self.generation + 1;
        let dirty = std::mem::take(&mut self.dirty);
        let tx = self.db.begin_write().map_err(|e| err(&e))?;
        {
            let mut t = tx.open_table(CHANNELS).map_err(|e| err(&e))?;
            let mut u = tx.open_table(UNACKED).map_err(|e| err(&e))?;
            for id in &dirty.channels {
                if let Some(rec) = self.store.channels.get_mut(id) {
                    // The record's head: its unacknowledged updates live in UNACKED.
                    let unacked = std::mem::take(&mut rec.outgoing.unacked);
                    let bytes = wire::encode(&*rec);
                    rec.outgoing.unacked = unacked;
                    let bytes = bytes.map_err(|e| err(&e))?;
                    t.insert(id.0, bytes.as_slice()).map_err(|e| err(&e))?;
                    // Updates added since the last checkpoint and still unacknowledged.
                    for &(_, seq) in dirty.added.range((id.0, 0)..=(id.0, u64::MAX)) {
                        if let Some(entry) = rec.outgoing.unacked.get(&seq) {
                            let bytes = wire::encode(entry).map_err(|e| err(&e))?;
                            u.insert((id.0, seq), bytes.as_slice())
                                .map_err(|e| err(&e))?;
                        }
                    }
                }
            }
            for (&channel, &up_to) in &dirty.acked {
                u.retain_in((channel, 0)..=(channel, up_to), |_, _| false)
                    .map_err(|e| err(&e))?;
            }
            let mut t = tx.open_table(PENDING).map_err(|e| err(&e))?;
            for id in &dirty.pending {
                match self.store.pending.get(id) {
                    Some(p) => {
                        let bytes = wire::encode(p).map_err(|e| err(&e))?;
                        t.insert(&id.0, bytes.as_slice()).map_err(|e| err(&e))?;
                        self.pending_rows.insert(*id);
                    }
                    None => {
                        if self.pending_rows.remove(id) {
                            t.remove(&id.0).map_err(|e| err(&e))?;
                        }
                    }
                }
            }
            let mut t = tx.open_table(CLOSINGS).map_err(|e| err(&e))?;
            for id in &dirty.closings {
                match self.store.closings.get(id) {
                    Some(kept) => {
                        let bytes = wire::encode(kept).map_err(|e| err(&e))?;
                        t.insert(&id.0, bytes.as_slice()).map_err(|e| err(&e))?;
                    }
                    None => {
                        t.remove(&id.0).map_err(|e| err(&e))?;
                    }
                }
            }
            tx.open_table(META)
                .map_err(|e| err(&e))?
                .insert(WAL_GENERATION, next)
                .map_err(|e| err(&e))?;
        }
        tx.commit().map_err(|e| err(&e))?;
        // The tables now hold everything the log does: a crash from here on finds
        // the old log's generation behind the tables' and discards it.
        self.generation = next;
        self.wal.restart(next)
    }

    /// A number kept beside the records (the chain cursor, say).
    pub fn meta(&self, key: &str) -> Result<Option<u64>, NodeError> {
        let err = db_err(&self.path);
        let r = self.db.begin_read().map_err(|e| err(&e))?;
        let t = r.open_table(META).map_err(|e| err(&e))?;
        Ok(t.get(key).map_err(|e| err(&e))?.map(|v| v.value()))
    }

    /// Binds the records to `deployment` the first time, and refuses a database whose
    /// records were signed for another: its channel ids and states mean nothing on
    /// this chain (ids restart at 1 in every deployment).
    pub fn bind_deployment(&self, deployment: &Deployment) -> Result<(), NodeError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use por_protocol::types::{EdgeInfo, EdgeTerms, Route};
    use por_protocol::{Amount, ChainEvent, Engine, EngineConfig, Keypair, NodeId, Time};

    #[test]
    fn a_database_stays_with_the_deployment_it_was_first_bound_to() {
        let dir = std::env::temp_dir().join(format!("por-db-{}-deployment", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let db = NodeDb::open(&dir.join("node.redb")).unwrap();
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
        let dir = std::env::temp_dir().join(format!("por-db-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
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
        let dir = std::env::temp_dir().join(format!("por-db-{}-stale", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
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

    /// Garbage after the last record (a torn write) is cut off; what was committed
    /// before it is all there.
    #[test]
    fn a_torn_commit_is_dropped_and_the_rest_kept() {
        let dir = std::env::temp_dir().join(format!("por-db-{}-torn", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
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
}
