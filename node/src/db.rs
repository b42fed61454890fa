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

#[cfg(test)]
mod tests {
    use super::*;
    use por_protocol::types::{EdgeInfo, EdgeTerms, Route};
    use por_protocol::{Amount, ChainEvent, Engine, EngineConfig, Keypair, NodeId, Time};

    /// Three engines (client, relay, server) exchange requests in memory; the relay's
    /// writes go through a real database in small batches, some requests left
    /// unanswered. Reopened, the database holds exactly the store the writes fold
    /// into (unacknowledged updates included), and an engine restored from it
    /// agrees with the live one.
    #[test]
    fn reopened_database_holds_what_was_committed() {
        let keys: Vec<Keypair> = (1u8..=3).map(|i| Keypair::from_seed([i; 32])).collect();
        let terms = EdgeTerms {
            latency_ms: 10,
            base_cost: Amount(100),
            byte_cost: Amount(1),
            sync_interval_ms: 1000,
            sync_phase_ms: 0,
            max_late_fee_rate: Amount(10),
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
                let mut e = Engine::new(EngineConfig::default(), k.clone(), Time::ZERO);
                for ed in &edges {
                    e.handle_chain_event(ChainEvent::EdgeOpened(ed.clone()), Time::ZERO);
                }
                e
            })
            .collect();
        let ids: Vec<NodeId> = keys.iter().map(|k| k.id()).collect();
        let dir = std::env::temp_dir().join(format!("por-db-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node.redb");
        let mut db = NodeDb::open(&path).unwrap();
        let mut mirror = Store::default();
        let route = Route {
            nodes: ids.clone(),
            channels: vec![ChannelId(1), ChannelId(2)],
        };
        let t = Time(1);
        for round in 0..20u64 {
            engines[0]
                .send_request(route.clone(), vec![round as u8; 10], Amount(1), t)
                .unwrap();
            // Deliver everything; the server answers only even rounds.
            for _ in 0..10 {
                for i in 0..3 {
                    while let Some(b) = engines[i].poll_writes() {
                        if i == 1 {
                            for w in &b.writes {
                                mirror.apply(w).unwrap();
                            }
                            db.commit(&b.writes).unwrap();
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
        drop(db);
        let reopened = NodeDb::open(&path).unwrap();
        assert_eq!(reopened.store(), &mirror);
        let live: Vec<_> = engines[1].channels().cloned().collect();
        let restored = Engine::restore(
            EngineConfig::default(),
            keys[1].clone(),
            por_protocol::topology::Topology::new(),
            reopened.store(),
            t,
        );
        assert_eq!(restored.channels().cloned().collect::<Vec<_>>(), live);
        assert_eq!(restored.in_flight(), engines[1].in_flight());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
