//! Following the chain: where to start after a restart, the events that become the
//! engine's chain events, and submitting the engine's chain actions.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use por_chain::{AnyChain, Chain};
use por_protocol::engine::{ChainAction, ChainEvent};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::db::{NodeDb, CHAIN_CURSOR as CURSOR};
use crate::NodeError;

/// What the follower hands the pump.
#[derive(Debug)]
pub(crate) enum ChainInput {
    /// An event for the engine.
    Event(ChainEvent),
    /// Every event up to this height has been handed over. The pump passes it to the
    /// persister with the writes those events caused, and the persister stores it as
    /// the cursor only once they are durable: the cursor never runs ahead of the state.
    Through(u64),
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
/// snapshot), severances become [`ChainEvent::EdgeSevered`] with their notices, each
/// page ends with [`ChainInput::Through`]; and the engine's chain actions are
/// submitted. It never stores the cursor itself (see [`ChainInput::Through`]).
pub(crate) async fn follow_chain(
    chain: Arc<AnyChain>,
    mut cursor: u64,
    every: Duration,
    events: mpsc::Sender<ChainInput>,
    mut actions: mpsc::UnboundedReceiver<ChainAction>,
    addresses: Arc<std::sync::RwLock<std::collections::HashMap<por_protocol::NodeId, Vec<String>>>>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            Some(action) = actions.recv() => {
                let chain = chain.clone();
                tokio::spawn(async move { submit(&chain, action).await });
            }
            _ = tick.tick() => {
                match poll(&chain, cursor, &events, &addresses).await {
                    Ok(through) if through != cursor => {
                        cursor = through;
                        if events.send(ChainInput::Through(through)).await.is_err() {
                            return;
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
    events: &mpsc::Sender<ChainInput>,
    addresses: &std::sync::RwLock<std::collections::HashMap<por_protocol::NodeId, Vec<String>>>,
) -> Result<u64, NodeError> {
    let page = chain.events_since(cursor).await?;
    let mut resnapshot = false;
    for (height, event) in &page.events {
        debug!(height, event = %event["event"], "chain event");
        if let Some(notice) = por_chain::json::sever_notice_of(event) {
            let _ = events
                .send(ChainInput::Event(ChainEvent::EdgeSevered(notice)))
                .await;
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
                .send(ChainInput::Event(ChainEvent::Stake {
                    node: n.key,
                    stake: n.stake,
                }))
                .await;
        }
        for e in snap.edges {
            let _ = events
                .send(ChainInput::Event(ChainEvent::EdgeOpened(e)))
                .await;
        }
    }
    Ok(page.through)
}

/// Submits the engine's chain actions.
async fn submit(chain: &AnyChain, action: ChainAction) {
    let ChainAction::Sever(notice) = action;
    let mut backoff = Duration::from_millis(200);
    for attempt in 1..=5 {
        match chain.sever(&notice).await {
            Ok(split) => {
                info!(channel = %notice.notice.channel, split, "severed on chain");
                return;
            }
            Err(por_chain::ChainError::Aborted { message, .. }) => {
                // Refused for good (already severed, say): nothing to retry.
                info!(channel = %notice.notice.channel, "sever refused by the contract: {message}");
                return;
            }
            Err(e) => {
                warn!(attempt, "submitting a sever failed: {e}");
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2);
            }
        }
    }
    tracing::error!(channel = %notice.notice.channel, "could not submit a severing notice");
}
