//! The node's two background duties besides connections: group commit of the
//! engine's writes, and following the chain.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use por_chain::{AnyChain, Chain};
use por_protocol::engine::{ChainAction, ChainEvent, WriteBatch};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::db::NodeDb;
use crate::metrics::Metrics;
use crate::NodeError;

const CURSOR: &str = "chain_cursor";

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

/// Where to follow the chain from: the stored cursor after a restart (so severances
/// that happened while we were down are replayed), else the chain's head.
pub(crate) async fn start_cursor(
    chain: &AnyChain,
    db: &Arc<Mutex<NodeDb>>,
) -> Result<u64, NodeError> {
    let stored = db.lock().map_err(|_| NodeError::Stopped)?.meta(CURSOR)?;
    match stored {
        Some(h) => Ok(h),
        None => {
            let head = chain.height().await?;
            db.lock()
                .map_err(|_| NodeError::Stopped)?
                .set_meta(CURSOR, head)?;
            Ok(head)
        }
    }
}

/// Follows the chain: new edges and stakes become engine events (after a fresh
/// snapshot), severances become [`ChainEvent::EdgeSevered`] with their notices; and
/// the engine's chain actions are submitted.
pub(crate) async fn follow_chain(
    chain: Arc<AnyChain>,
    db: Arc<Mutex<NodeDb>>,
    mut cursor: u64,
    every: Duration,
    events: mpsc::Sender<ChainEvent>,
    mut actions: mpsc::UnboundedReceiver<ChainAction>,
    addresses: Arc<std::sync::RwLock<std::collections::HashMap<por_protocol::NodeId, Vec<String>>>>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            Some(action) = actions.recv() => {
                let chain = chain.clone();
                tokio::spawn(async move { crate::runtime::submit(&chain, action).await });
            }
            _ = tick.tick() => {
                match poll(&chain, cursor, &events, &addresses).await {
                    Ok(through) if through != cursor => {
                        cursor = through;
                        if let Err(e) = db.lock().map_err(|_| NodeError::Stopped).and_then(|d| d.set_meta(CURSOR, cursor)) {
                            warn!("cannot store the chain cursor: {e}");
                        }
                    }
                    Ok(_) => {}
                    Err(e) => warn!("following the chain: {e}"),
                }
            }
        }
    }
}

async fn poll(
    chain: &AnyChain,
    cursor: u64,
    events: &mpsc::Sender<ChainEvent>,
    addresses: &std::sync::RwLock<std::collections::HashMap<por_protocol::NodeId, Vec<String>>>,
) -> Result<u64, NodeError> {
    let page = chain.events_since(cursor).await?;
    let mut resnapshot = false;
    for (height, event) in &page.events {
        debug!(height, event = %event["event"], "chain event");
        if let Some(notice) = por_chain::json::sever_notice_of(event) {
            let _ = events.send(ChainEvent::EdgeSevered(notice)).await;
        } else {
            resnapshot = true;
        }
    }
    if resnapshot {
        let snap = chain.snapshot().await?;
        if let Ok(mut a) = addresses.write() {
            for n in &snap.nodes {
                a.insert(n.key, n.addresses.clone());
            }
        }
        for n in &snap.nodes {
            let _ = events
                .send(ChainEvent::Stake {
                    node: n.key,
                    stake: n.stake,
                })
                .await;
        }
        for e in snap.edges {
            let _ = events.send(ChainEvent::EdgeOpened(e)).await;
        }
    }
    Ok(page.through)
}
