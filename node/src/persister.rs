//! The persister: group commit of the engine's writes on a thread of its own, and
//! the durability confirmations that release the frames depending on them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use por_protocol::engine::WriteBatch;
use tokio::sync::mpsc;

use crate::db::NodeDb;
use crate::metrics::Metrics;
use crate::NodeError;

/// Starts the persister thread: it takes every batch queued so far, commits them in
/// one transaction (one fsync), then reports the highest write number durable. While
/// a commit runs, new batches queue up for the next one: group commit. Commits start
/// at least `min_interval` apart.
pub(crate) fn spawn_persister(
    db: Arc<Mutex<NodeDb>>,
    mut batches: mpsc::UnboundedReceiver<WriteBatch>,
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
                let mut up_to = first.up_to;
                let mut writes = first.writes;
                let mut merged = 1;
                while let Ok(more) = batches.try_recv() {
                    up_to = up_to.max(more.up_to);
                    writes.extend(more.writes);
                    merged += 1;
                }
                busy = merged > 2;
                let result = match db.lock() {
                    Ok(mut db) => db.commit(writes),
                    Err(_) => Err(NodeError::Stopped),
                };
                metrics.commits.inc();
                let failed = result.is_err();
                if durable.send(result.map(|()| up_to)).is_err() || failed {
                    return;
                }
            }
        })
        .unwrap_or_else(|e| {
            // Without a persister nothing could ever be released: fail loudly.
            panic!("cannot start the persister thread: {e}")
        })
}
