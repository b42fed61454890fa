//! The persister: group commit of the engine's writes on a thread of its own, and
//! the durability confirmations that release the frames depending on them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use por_protocol::engine::WriteBatch;
use tokio::sync::mpsc;

use crate::db::{NodeDb, CHAIN_CURSOR};
use crate::metrics::Metrics;
use crate::NodeError;

/// What the pump hands the persister: the engine's writes, and how far the chain has
/// been followed once those writes are durable.
#[derive(Debug, Default)]
pub(crate) struct Persist {
    /// The engine's next write batch, if it had one.
    pub(crate) batch: Option<WriteBatch>,
    /// The chain height every event up to which has been handed to the engine (and
    /// whose writes are in this batch or an earlier one): stored only after they are
    /// durable, so a crash can only make the node see an event again, never miss one.
    pub(crate) cursor: Option<u64>,
}

/// Starts the persister thread: it takes every batch queued so far, commits them in
/// one transaction (one fsync), then stores the chain cursor if one came with them,
/// and reports the highest write number durable. While a commit runs, new batches
/// queue up for the next one: group commit. Commits start at least `min_interval`
/// apart.
pub(crate) fn spawn_persister(
    db: Arc<Mutex<NodeDb>>,
    mut batches: mpsc::UnboundedReceiver<Persist>,
    durable: mpsc::UnboundedSender<Result<u64, NodeError>>,
    metrics: Arc<Metrics>,
    min_interval: Duration,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("por-persist".into())
        .spawn(move || {
            let mut last_start: Option<std::time::Instant> = None;
            let mut busy = false;
            while let Some(first) = batches.blocking_recv() {
                // Under load (the last commit found several batches waiting), commit
                // at most once per interval so that each commit carries more: a log
                // sync costs about the same for one write or a thousand. A node that
                // is not busy commits at once.
                if busy {
                    if let Some(wait) =
                        last_start.and_then(|t| min_interval.checked_sub(t.elapsed()))
                    {
                        std::thread::sleep(wait);
                    }
                }
                last_start = Some(std::time::Instant::now());
                let (mut up_to, mut writes, mut cursor) = (None::<u64>, Vec::new(), None);
                let mut merged = 0;
                for job in
                    std::iter::once(first).chain(std::iter::from_fn(|| batches.try_recv().ok()))
                {
                    if let Some(b) = job.batch {
                        up_to = Some(up_to.map_or(b.up_to, |u| u.max(b.up_to)));
                        writes.extend(b.writes);
                    }
                    cursor = job.cursor.or(cursor);
                    merged += 1;
                }
                busy = merged > 2;
                let result = match db.lock() {
                    Ok(mut db) => {
                        let committed = if up_to.is_some() {
                            db.commit(writes)
                        } else {
                            Ok(())
                        };
                        committed.and_then(|()| match cursor {
                            Some(c) => db.set_meta(CHAIN_CURSOR, c),
                            None => Ok(()),
                        })
                    }
                    Err(_) => Err(NodeError::Stopped),
                };
                metrics.commits.inc();
                let failed = result.is_err();
                let report = match result {
                    Ok(()) => up_to.map(Ok),
                    Err(e) => Some(Err(e)),
                };
                if let Some(r) = report {
                    if durable.send(r).is_err() {
                        return;
                    }
                }
                if failed {
                    return;
                }
            }
        })
        .unwrap_or_else(|e| {
            // Without a persister nothing could ever be released: fail loudly.
            panic!("cannot start the persister thread: {e}")
        })
}

#[cfg(test)]
mod tests {
    use por_protocol::channel::ChannelRecord;
    use por_protocol::store::Write;
    use por_protocol::types::{ChannelId, EdgeInfo, EdgeTerms, RequestId};
    use por_protocol::{Amount, Keypair};

    use super::*;

    fn record() -> ChannelRecord {
        let (a, b) = (Keypair::from_seed([1; 32]), Keypair::from_seed([2; 32]));
        let edge = EdgeInfo {
            id: ChannelId(1),
            a: a.id(),
            b: b.id(),
            terms: EdgeTerms {
                latency_ms: 10,
                base_cost: Amount(1),
                byte_cost: Amount(0),
                sync_interval_ms: 1000,
                sync_phase_ms: 0,
                max_late_fee_rate: Amount(1),
                bandwidth: EdgeTerms::DEFAULT_BANDWIDTH,
            },
            deposit_a: Amount(100),
            deposit_b: Amount(100),
        };
        ChannelRecord::open(edge, a.id()).unwrap()
    }

    /// The chain cursor is stored only with, and after, the writes of the events it
    /// covers: when they cannot be made durable, it does not move.
    #[test]
    fn the_chain_cursor_never_runs_ahead_of_the_writes() {
        let dir = std::env::temp_dir().join(format!("por-persist-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let db = Arc::new(Mutex::new(NodeDb::open(&dir.join("node.redb")).unwrap()));
        let (tx, rx) = mpsc::unbounded_channel();
        let (durable_tx, mut durable) = mpsc::unbounded_channel();
        let thread = spawn_persister(
            db.clone(),
            rx,
            durable_tx,
            Arc::new(Metrics::default()),
            Duration::ZERO,
        );
        // An event's writes and the height it was seen at: both durable, in order.
        let batch = |up_to, writes| Some(WriteBatch { up_to, writes });
        tx.send(Persist {
            batch: batch(1, vec![Write::Channel(Box::new(record()))]),
            cursor: Some(42),
        })
        .unwrap();
        assert_eq!(durable.blocking_recv().unwrap().unwrap(), 1);
        assert_eq!(db.lock().unwrap().meta(CHAIN_CURSOR).unwrap(), Some(42));
        // A cursor alone (the page had no event for us) moves without a log write.
        tx.send(Persist {
            batch: None,
            cursor: Some(43),
        })
        .unwrap();
        tx.send(Persist {
            batch: batch(2, vec![Write::PendingDone(RequestId([0; 16]))]),
            cursor: None,
        })
        .unwrap();
        assert_eq!(durable.blocking_recv().unwrap().unwrap(), 2);
        assert_eq!(db.lock().unwrap().meta(CHAIN_CURSOR).unwrap(), Some(43));
        // Writes the database refuses: the persister stops, the cursor stays.
        let refused = Write::Acked {
            channel: ChannelId(9),
            seq: 5,
            sig: por_protocol::Signature([0; 64]),
        };
        tx.send(Persist {
            batch: batch(3, vec![refused]),
            cursor: Some(99),
        })
        .unwrap();
        assert!(durable.blocking_recv().unwrap().is_err());
        thread.join().unwrap();
        assert_eq!(db.lock().unwrap().meta(CHAIN_CURSOR).unwrap(), Some(43));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
