//! Following the chain: where to start after a restart, the events that become the
//! engine's chain events, and submitting the engine's chain actions.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use por_chain::json::{CloseKind, CloseNotice};
use por_chain::{AnyChain, Chain};
use por_protocol::engine::{ChainAction, ChainEvent};
use por_protocol::types::{ChannelId, SignedSeverNotice, SignedUpdate};
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
///
/// A notice someone else signed ([`ChainAction::Watch`]) is submitted only if no
/// `edge_severed` event for its channel has been seen `watch_after` later: its
/// severer should have made it final, and a repeat would cost gas for nothing (nor is
/// it for a channel whose close began: the contract only severs open edges).
///
/// The watchtower: close events of our own channels (`close_proposed`,
/// `close_started`, `close_challenged`, `channel_closed`) become
/// [`ChainEvent::CloseOnChain`] and [`ChainEvent::ChannelClosed`]; the engine decides
/// whether to challenge ([`ChainAction::Challenge`], submitted here). On start, the
/// closes of our channels already under way are handed over first, so a node that was
/// down when a close began still challenges it within its period.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn follow_chain(
    chain: Arc<AnyChain>,
    mut cursor: u64,
    every: Duration,
    watch_after: Duration,
    events: mpsc::Sender<ChainInput>,
    mut actions: mpsc::UnboundedReceiver<ChainAction>,
    addresses: Arc<std::sync::RwLock<std::collections::HashMap<por_protocol::NodeId, Vec<String>>>>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Notices of others, by channel, with when to submit them if still not final.
    let mut watched: BTreeMap<ChannelId, (tokio::time::Instant, SignedSeverNotice)> =
        BTreeMap::new();
    // Channels seen severed or closing: a notice for them is never submitted.
    let mut settled: BTreeSet<ChannelId> = BTreeSet::new();
    match closes_under_way(&chain).await {
        Ok(closes) => {
            for (channel, ev) in closes {
                settled.insert(channel);
                if events.send(ChainInput::Event(ev)).await.is_err() {
                    return;
                }
            }
        }
        Err(e) => warn!("reading the closes of our channels: {e}"),
    }
    loop {
        tokio::select! {
            Some(action) = actions.recv() => match action {
                ChainAction::Sever(notice) => {
                    let chain = chain.clone();
                    tokio::spawn(async move { submit(&chain, notice).await });
                }
                ChainAction::Watch(notice) => {
                    if !settled.contains(&notice.notice.channel) {
                        let due = tokio::time::Instant::now() + watch_after;
                        watched.entry(notice.notice.channel).or_insert((due, notice));
                    }
                }
                ChainAction::Challenge { channel, updates } => {
                    let chain = chain.clone();
                    tokio::spawn(async move { challenge(&chain, channel, updates).await });
                }
            },
            _ = tick.tick() => {
                match poll(&chain, cursor, &events, &addresses).await {
                    Ok((through, severed)) => {
                        for channel in severed {
                            watched.remove(&channel);
                            if settled.len() >= MAX_SETTLED {
                                settled.pop_first();
                            }
                            settled.insert(channel);
                        }
                        if through != cursor {
                            cursor = through;
                            if events.send(ChainInput::Through(through)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => warn!("following the chain: {e}"),
                }
                let now = tokio::time::Instant::now();
                let due: Vec<ChannelId> = watched
                    .iter()
                    .filter(|(_, (at, _))| *at <= now)
                    .map(|(c, _)| *c)
                    .collect();
                for channel in due {
                    if let Some((_, notice)) = watched.remove(&channel) {
                        warn!(%channel, severer = %notice.notice.severer,
                              "a peer's severing notice is not final on chain: submitting it");
                        let chain = chain.clone();
                        tokio::spawn(async move { submit(&chain, notice).await });
                    }
                }
            }
        }
    }
}

/// Most severed or closing channel ids remembered (the oldest ids go first).
const MAX_SETTLED: usize = 65_536;

/// Closes of our channels already under way on chain, as engine events.
async fn closes_under_way(chain: &AnyChain) -> Result<Vec<(ChannelId, ChainEvent)>, NodeError> {
    let mine = chain.channels_of(chain.account()).await?;
    Ok(mine
        .iter()
        .filter_map(por_chain::json::close_of_view)
        .map(|c| (c.channel, close_event(&c)))
        .collect())
}

/// The engine event for a close of one of our channels.
fn close_event(c: &CloseNotice) -> ChainEvent {
    match c.kind {
        CloseKind::Closed => ChainEvent::ChannelClosed(c.channel),
        kind => ChainEvent::CloseOnChain {
            channel: c.channel,
            adversarial: kind == CloseKind::Challengeable,
            paid_ab: c.paid_ab,
            paid_ba: c.paid_ba,
        },
    }
}

/// One page of events from `cursor`: returns the height it is complete through and the
/// channels it saw severed or closing.
async fn poll(
    chain: &AnyChain,
    cursor: u64,
    events: &mpsc::Sender<ChainInput>,
    addresses: &std::sync::RwLock<std::collections::HashMap<por_protocol::NodeId, Vec<String>>>,
) -> Result<(u64, Vec<ChannelId>), NodeError> {
    let page = chain.events_since(cursor).await?;
    let mut resnapshot = false;
    let mut severed = Vec::new();
    for (height, event) in &page.events {
        debug!(height, event = %event["event"], "chain event");
        if let Some(notice) = por_chain::json::sever_notice_of(event) {
            severed.push(notice.notice.channel);
            let _ = events
                .send(ChainInput::Event(ChainEvent::EdgeSevered(notice)))
                .await;
        } else if let Some(close) = por_chain::json::close_of(event) {
            severed.push(close.channel);
            resnapshot = true;
            let me = chain.account();
            if close.a == me || close.b == me {
                info!(channel = %close.channel, kind = ?close.kind, "a close of our channel on chain");
                let _ = events.send(ChainInput::Event(close_event(&close))).await;
            }
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
    Ok((page.through, severed))
}

/// How a submission ended.
enum Submitted<T> {
    /// The chain took it.
    Done(T),
    /// The contract refused it, for good (its message).
    Refused(String),
    /// The chain stayed unreachable through every retry.
    GaveUp,
}

/// Submits `what` for `channel` with `call`, retrying what may be passing (the chain
/// unreachable); a refusal by the contract is final. The submitter's account pays the
/// gas.
async fn submitted<T, F, Fut>(what: &str, channel: ChannelId, mut call: F) -> Submitted<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, por_chain::ChainError>>,
{
    let mut backoff = Duration::from_millis(200);
    for attempt in 1..=5 {
        match call().await {
            Ok(v) => return Submitted::Done(v),
            Err(por_chain::ChainError::Aborted { message, .. }) => {
                return Submitted::Refused(message)
            }
            Err(e) => {
                warn!(attempt, %channel, "submitting {what} failed: {e}");
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2);
            }
        }
    }
    Submitted::GaveUp
}

/// Challenges the close of `channel` with the states the engine chose.
async fn challenge(chain: &AnyChain, channel: ChannelId, updates: Vec<SignedUpdate>) {
    match submitted("a challenge", channel, || {
        chain.challenge(channel, &updates)
    })
    .await
    {
        Submitted::Done(()) => info!(%channel, "challenged the close with our latest state"),
        Submitted::Refused(message) => {
            warn!(%channel, "challenge refused by the contract: {message}")
        }
        Submitted::GaveUp => tracing::error!(%channel, "could not submit a challenge"),
    }
}

/// Submits a severing notice.
async fn submit(chain: &AnyChain, notice: SignedSeverNotice) {
    let channel = notice.notice.channel;
    match submitted("a sever", channel, || chain.sever(&notice)).await {
        Submitted::Done(split) => info!(%channel, split, "severed on chain"),
        // Refused for good (already severed, say): nothing to retry.
        Submitted::Refused(message) => {
            info!(%channel, "sever refused by the contract: {message}")
        }
        Submitted::GaveUp => tracing::error!(%channel, "could not submit a severing notice"),
    }
}
