//! Connections to neighbours: one per edge, dialled by the endpoint with the smaller
//! key (with backoff) and accepted by the other; a reader and a writer task per
//! connection. Everything received goes to the engine task as [`LinkEvent`]s; the
//! engine task decides who is connected.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use por_chain::Snapshot;
use por_protocol::messages::Lane;
use por_protocol::{Deployment, Engine, NodeId};
use por_transport::shaped::Shaped;
use por_transport::{
    AnyConnection, AnyListener, AnyTransport, Connection, Frame, Listener, Transport,
};
use tokio::sync::mpsc;
use tracing::{debug, info, info_span, warn, Instrument, Span};

use crate::metrics::Metrics;

/// Frames a connection's writer may have queued on one lane before the peer counts as
/// too slow (it is dropped; the engine retransmits on reconnection). Their bytes are
/// the real bound (`Limits::queued_bytes_per_peer`); this one only caps the per-frame
/// overhead, so it is set past what those bytes hold of small frames in a busy
/// second: at 8,192 a path loaded to 80 % of its capacity dropped a neighbour whose
/// engine fell behind for half a second (the soak bench).
const WRITE_QUEUE: usize = 65_536;
/// Most queued frames written to a peer at once.
const WRITE_BURST: usize = 256;
/// The most bytes of frames handed to the transport in one write (one larger frame
/// goes alone).
const WRITE_BURST_BYTES: usize = 256 * 1024;
/// The control lane's stream: every frame whose order matters (see
/// [`por_protocol::messages::Lane`]). Large responses go round robin on streams
/// `1..=bulk_lanes`, each with its own writer, so they interleave with each other
/// and never hold this one back.
const CONTROL: u32 = 0;
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What connection tasks tell the engine task.
pub(crate) enum LinkEvent {
    /// A connection to `peer` is up.
    Up { peer: NodeId, conn: u64, tx: Outbox },
    /// A frame arrived, decoded, its stateless signatures checked ahead of the
    /// engine (on this reader's thread), or left raw if it does not decode (the
    /// engine then refuses it with the wire error).
    Frame {
        peer: NodeId,
        conn: u64,
        frame: Result<Box<por_protocol::messages::Message>, Bytes>,
        /// When it was read off the connection (ms): what it then waited for the
        /// engine is the node's inbound queueing delay (admission by delay).
        at: u64,
    },
    /// The connection ended.
    Down { peer: NodeId, conn: u64 },
}

type Shape = Arc<dyn Fn(NodeId) -> Option<Duration> + Send + Sync>;

/// What the accept loop and the dialers share with the engine task.
#[derive(Clone)]
pub(crate) struct Shared {
    me: NodeId,
    /// What signatures are checked ahead of the engine for.
    deployment: Deployment,
    transport: AnyTransport,
    events: mpsc::Sender<LinkEvent>,
    neighbours: Arc<RwLock<HashSet<NodeId>>>,
    addresses: Arc<RwLock<HashMap<NodeId, Vec<String>>>>,
    shape: Option<Shape>,
    next_conn: Arc<AtomicU64>,
    accepting: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    span: Span,
    /// Most bytes of frames queued for one peer before it counts as too slow.
    max_queued_bytes: usize,
    /// Lanes large responses spread over.
    bulk_lanes: u32,
}

/// A connection's write queues, as the engine task fills them: one per lane (the
/// control lane first, then the bulk lanes), and the bytes of the frames their
/// writers have not yet handed to the transport, all lanes together.
pub(crate) struct Outbox {
    /// Each lane's queue: frames, with when they were queued (ms).
    lanes: Vec<mpsc::Sender<(Frame, u64)>>,
    /// Each lane's least queueing delay (ms) since [`Links::take_out_delay`] last
    /// looked (`u64::MAX`: nothing written).
    delays: Vec<Arc<AtomicU64>>,
    queued: Arc<AtomicUsize>,
    /// The bulk lane the next large response goes on.
    next_bulk: usize,
}

impl Outbox {
    /// The queue of a frame on `lane`: control on its own, bulk round robin.
    fn queue(&mut self, lane: Lane) -> Option<&mpsc::Sender<(Frame, u64)>> {
        let i = match lane {
            Lane::Control => 0,
            Lane::Bulk => {
                let bulk = self.lanes.len().saturating_sub(1).max(1);
                self.next_bulk = (self.next_bulk + 1) % bulk;
                1 + self.next_bulk
            }
        };
        self.lanes.get(i).or_else(|| self.lanes.first())
    }
}

/// The engine task's view of the connections.
pub(crate) struct Links {
    shared: Shared,
    current: HashMap<NodeId, (u64, Outbox)>,
    dialing: HashMap<NodeId, tokio::task::JoinHandle<()>>,
}

/// A connection, shaped or not.
enum Link {
    Plain(AnyConnection),
    Shaped(Shaped<AnyConnection>),
}

impl Link {
    async fn send_frames(
        &self,
        stream: u32,
        frames: Vec<Frame>,
    ) -> Result<(), por_transport::TransportError> {
        match self {
            Link::Plain(c) => c.send_frames(stream, frames).await,
            Link::Shaped(c) => c.send_frames(stream, frames).await,
        }
    }

    async fn recv(&self) -> Result<(u32, Bytes), por_transport::TransportError> {
        match self {
            Link::Plain(c) => c.recv().await,
            Link::Shaped(c) => c.recv().await,
        }
    }

    fn close(&self) {
        match self {
            Link::Plain(c) => c.close(),
            Link::Shaped(c) => c.close(),
        }
    }
}

impl Links {
    pub(crate) fn new(
        me: NodeId,
        deployment: Deployment,
        transport: AnyTransport,
        events: mpsc::Sender<LinkEvent>,
        shape: Option<Shape>,
        metrics: Arc<Metrics>,
        span: Span,
    ) -> Links {
        Links {
            shared: Shared {
                me,
                deployment,
                transport,
                events,
                neighbours: Arc::default(),
                addresses: Arc::default(),
                shape,
                next_conn: Arc::new(AtomicU64::new(1)),
                accepting: Arc::new(AtomicBool::new(true)),
                metrics,
                span,
                max_queued_bytes: crate::limits::Limits::default().queued_bytes_per_peer,
                bulk_lanes: crate::limits::Limits::default().bulk_lanes,
            },
            current: HashMap::new(),
            dialing: HashMap::new(),
        }
    }

    pub(crate) fn acceptor(&self) -> Shared {
        self.shared.clone()
    }

    /// Records where nodes can be reached.
    pub(crate) fn set_addresses(&mut self, snapshot: &Snapshot) {
        if let Ok(mut a) = self.shared.addresses.write() {
            for n in &snapshot.nodes {
                a.insert(n.key, n.addresses.clone());
            }
        }
    }

    /// Shared address book, for the chain follower to update.
    pub(crate) fn addresses(&self) -> Arc<RwLock<HashMap<NodeId, Vec<String>>>> {
        self.shared.addresses.clone()
    }

    /// Brings the neighbour set in line with the engine's live channels; starts
    /// dialling the new neighbours we dial.
    pub(crate) fn update_neighbours(&mut self, engine: &Engine) {
        let live: HashSet<NodeId> = engine
            .channels()
            .filter(|c| c.severed.is_none())
            .map(|c| c.peer)
            .collect();
        if let Ok(mut n) = self.shared.neighbours.write() {
            n.clone_from(&live);
        }
        for peer in &live {
            if self.shared.me < *peer && !self.dialing.contains_key(peer) {
                let shared = self.shared.clone();
                let peer = *peer;
                let span = info_span!(parent: &self.shared.span, "peer", peer = %peer);
                let task = tokio::spawn(dial_loop(shared, peer).instrument(span));
                self.dialing.insert(peer, task);
            }
        }
        let gone: Vec<NodeId> = self
            .dialing
            .keys()
            .filter(|p| !live.contains(p))
            .copied()
            .collect();
        for p in gone {
            if let Some(t) = self.dialing.remove(&p) {
                t.abort();
            }
            self.drop_peer(p);
        }
    }

    /// Sets the bytes of frames one peer may have queued before it is dropped, and
    /// the lanes large responses spread over.
    pub(crate) fn bound_queues(&mut self, max_queued_bytes: usize, bulk_lanes: u32) {
        self.shared.max_queued_bytes = max_queued_bytes;
        self.shared.bulk_lanes = bulk_lanes.max(1);
    }

    /// A connection came up; returns whether it replaced another.
    pub(crate) fn up(&mut self, peer: NodeId, conn: u64, tx: Outbox) -> bool {
        self.shared.metrics.peers_connected.inc();
        self.current.insert(peer, (conn, tx)).is_some()
    }

    /// A connection went down; returns whether it was the current one.
    pub(crate) fn down(&mut self, peer: NodeId, conn: u64) -> bool {
        if self.is_current(peer, conn) {
            self.current.remove(&peer);
            self.shared.metrics.peers_connected.dec();
            return true;
        }
        false
    }

    pub(crate) fn is_current(&self, peer: NodeId, conn: u64) -> bool {
        self.current.get(&peer).is_some_and(|(c, _)| *c == conn)
    }

    pub(crate) fn is_connected(&self, peer: &NodeId) -> bool {
        self.current.contains_key(peer)
    }

    /// Drops the connection to `peer` (its writer ends and closes it).
    pub(crate) fn drop_peer(&mut self, peer: NodeId) {
        if self.current.remove(&peer).is_some() {
            self.shared.metrics.peers_connected.dec();
        }
    }

    /// Queues a frame for `peer` on `lane`. A peer that is not connected gets nothing
    /// (the engine resends what matters after reconnection); one too slow to drain its
    /// queues (more than `WRITE_QUEUE` frames on a lane or `max_queued_bytes` waiting
    /// on all) is dropped, and this returns true: the engine must be told it is gone.
    pub(crate) fn send(&mut self, peer: NodeId, lane: Lane, frame: Frame) -> bool {
        let Some((_, out)) = self.current.get_mut(&peer) else {
            debug!(%peer, "not connected: frame dropped");
            return false;
        };
        let len = frame.len();
        let queued = out.queued.fetch_add(len, Ordering::Relaxed);
        let too_slow = if queued.saturating_add(len) > self.shared.max_queued_bytes {
            warn!(
                %peer,
                queued,
                max = self.shared.max_queued_bytes,
                "peer is not draining its frames (bytes queued): dropping it"
            );
            true
        } else {
            let Some(tx) = out.queue(lane) else {
                return false;
            };
            match tx.try_send((frame, crate::now().ms())) {
                Ok(()) => false,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    warn!(%peer, "peer is not draining its frames: dropping it");
                    true
                }
                // The writer has ended: the connection is going down anyway.
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        };
        if too_slow {
            self.shared.metrics.peers_dropped.inc();
            self.drop_peer(peer);
        }
        too_slow
    }

    /// How long frames waited for their connections since the last call: the
    /// slowest lane's least wait (each lane is a queue of its own, and a quiet one
    /// must not hide a standing one), or `None` if nothing was written.
    ///
    /// The slowest of all peers' lanes, not the quickest peer's: in the soak bench
    /// the relays' standing queues were towards one peer only, and counting by the
    /// quickest peer left them taking work they could not pass on (the path did not
    /// recover; counted so, it did). A peer that stops reading gives no samples (its
    /// writer waits) and is dropped past its queue's bound; one that reads a trickle
    /// makes the node shed until it is dropped or catches up (docs/limits.md).
    pub(crate) fn take_out_delay(&self) -> Option<u64> {
        self.current
            .values()
            .flat_map(|(_, out)| &out.delays)
            .map(|d| d.swap(u64::MAX, Ordering::Relaxed))
            .filter(|&d| d != u64::MAX)
            .max()
    }

    pub(crate) fn stop_accepting(&self) {
        self.shared.accepting.store(false, Ordering::SeqCst);
        for t in self.dialing.values() {
            t.abort();
        }
    }

    pub(crate) fn close_all(&mut self) {
        for (_, t) in self.dialing.drain() {
            t.abort();
        }
        self.current.clear();
    }
}

/// Accepts connections from neighbours; others are refused.
pub(crate) async fn accept_loop(mut listener: AnyListener, shared: Shared) {
    info!(address = %listener.local_addr(), "listening");
    loop {
        let conn = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                debug!("handshake failed: {e}");
                continue;
            }
        };
        if !shared.accepting.load(Ordering::SeqCst) {
            conn.close();
            continue;
        }
        let peer = conn.peer();
        let known = shared
            .neighbours
            .read()
            .map(|n| n.contains(&peer))
            .unwrap_or(false);
        if !known {
            shared.metrics.peers_refused.inc();
            warn!(%peer, "refusing a connection from a node we have no channel with");
            conn.close();
            continue;
        }
        let span = info_span!(parent: &shared.span, "peer", peer = %peer);
        tokio::spawn(run_link(shared.clone(), conn, None).instrument(span));
    }
}

async fn dial_loop(shared: Shared, peer: NodeId) {
    let mut backoff = FIRST_BACKOFF;
    let mut attempt: u32 = 0;
    loop {
        let addrs = shared
            .addresses
            .read()
            .ok()
            .and_then(|a| a.get(&peer).cloned())
            .unwrap_or_default();
        let mut outcome = Dialled::Unreachable;
        for addr in &addrs {
            match shared.transport.dial(addr, peer).await {
                Ok(conn) => {
                    attempt = 0;
                    let started = tokio::time::Instant::now();
                    run_link(shared.clone(), conn, Some(addr)).await;
                    outcome = Dialled::Lived(started.elapsed());
                    break;
                }
                Err(e) => {
                    attempt = attempt.saturating_add(1);
                    // Loud once, then quietly: a neighbour that is down is normal.
                    if attempt == 1 || attempt.is_multiple_of(20) {
                        info!(%addr, attempt, "cannot reach peer: {e}");
                    } else {
                        debug!(%addr, attempt, "cannot reach peer: {e}");
                    }
                }
            }
        }
        if addrs.is_empty() {
            debug!("no address known for peer");
        }
        if !shared.accepting.load(Ordering::SeqCst) {
            return;
        }
        let (wait, next) = next_wait(outcome, backoff);
        backoff = next;
        // Jitter from the key and attempt, so that restarts do not dial in lockstep.
        let jitter = u64::from(peer.0[0] ^ (attempt as u8)) % 50;
        tokio::time::sleep(wait + Duration::from_millis(jitter)).await;
    }
}

/// The first wait before dialling again, doubled after each failure.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// A connection that ended sooner than this counts as a failed dial: the peer took
/// the handshake and then hung up (it does not know our channel yet, or refuses us).
const SHORT_LINK: Duration = Duration::from_secs(2);

/// The longest wait after connections that the peer keeps ending at once: a new
/// channel still connects within about a second of both ends knowing it.
const MAX_SHORT_LINK_BACKOFF: Duration = Duration::from_secs(1);

/// What one round of dialling came to.
#[derive(Clone, Copy, Debug)]
enum Dialled {
    /// No address answered.
    Unreachable,
    /// A connection was made, and ran this long.
    Lived(Duration),
}

/// How long to wait before dialling again, and the backoff after that. A connection
/// that lived is redialled at once (the peer restarted, say); one the peer ended at
/// once backs off as a failure does, up to a second, so that a peer refusing us is
/// not handshaken with twenty times a second.
fn next_wait(outcome: Dialled, backoff: Duration) -> (Duration, Duration) {
    match outcome {
        Dialled::Lived(lived) if lived >= SHORT_LINK => (FIRST_BACKOFF, FIRST_BACKOFF),
        Dialled::Lived(_) => (
            backoff.min(MAX_SHORT_LINK_BACKOFF),
            (backoff * 2).min(MAX_SHORT_LINK_BACKOFF),
        ),
        Dialled::Unreachable => (backoff, (backoff * 2).min(MAX_BACKOFF)),
    }
}

/// How often a dialled connection checks that its peer still publishes the address
/// it was dialled at.
const MOVED_CHECK: Duration = Duration::from_millis(500);

/// Completes once `peer` publishes addresses on chain, none of them `addr`: it
/// restarted elsewhere, and the connection to `addr` is dead however quiet it looks (over QUIC
/// nothing else would say so before the idle timeout).
async fn moved(shared: &Shared, peer: NodeId, addr: &str) {
    loop {
        tokio::time::sleep(MOVED_CHECK).await;
        let gone = shared
            .addresses
            .read()
            .ok()
            .and_then(|a| {
                a.get(&peer)
                    .map(|list| !list.is_empty() && !list.iter().any(|x| x == addr))
            })
            .unwrap_or(false);
        if gone {
            return;
        }
    }
}

/// Runs one connection until it fails, the engine task drops it, or (a connection
/// we dialled, to `dialled`) the peer publishes another address.
async fn run_link(shared: Shared, conn: AnyConnection, dialled: Option<&str>) {
    let peer = conn.peer();
    let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let link = Arc::new(match shared.shape.as_ref().and_then(|f| f(peer)) {
        Some(delay) => Link::Shaped(Shaped::new(
            conn,
            delay,
            por_protocol::wire::MAX_FRAME_LEN,
            WRITE_QUEUE,
        )),
        None => Link::Plain(conn),
    });
    let queued = Arc::new(AtomicUsize::new(0));
    let lanes = 1 + shared.bulk_lanes as usize;
    let mut senders = Vec::with_capacity(lanes);
    let mut delays = Vec::with_capacity(lanes);
    let mut writers = Vec::with_capacity(lanes);
    for stream in 0..lanes {
        let (tx, rx) = mpsc::channel::<(Frame, u64)>(WRITE_QUEUE);
        senders.push(tx);
        let delay = Arc::new(AtomicU64::new(u64::MAX));
        delays.push(delay.clone());
        let stream = u32::try_from(stream).unwrap_or(CONTROL);
        writers.push(tokio::spawn(write_lane(
            link.clone(),
            stream,
            rx,
            queued.clone(),
            delay,
        )));
    }
    let out = Outbox {
        lanes: senders,
        delays,
        queued,
        next_bulk: 0,
    };
    if shared
        .events
        .send(LinkEvent::Up {
            peer,
            conn: id,
            tx: out,
        })
        .await
        .is_err()
    {
        link.close();
        return;
    }
    let moved = async {
        match dialled {
            Some(addr) => moved(&shared, peer, addr).await,
            None => std::future::pending().await,
        }
    };
    let mut moved = std::pin::pin!(moved);
    loop {
        let received = tokio::select! {
            r = link.recv() => r,
            () = &mut moved => {
                info!("peer published a new address: reconnecting");
                break;
            }
        };
        match received {
            Ok((_, frame)) => {
                let at = crate::now().ms();
                let frame = match por_protocol::messages::decode_frame_shared(&frame) {
                    Ok(message) => {
                        // Spread signature work over the cores: the engine task
                        // finds these already checked.
                        message.preverify(&shared.deployment, &shared.me);
                        Ok(Box::new(message))
                    }
                    Err(_) => Err(frame),
                };
                let ev = LinkEvent::Frame {
                    peer,
                    conn: id,
                    frame,
                    at,
                };
                if shared.events.send(ev).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                debug!("connection ended: {e}");
                break;
            }
        }
    }
    for w in writers {
        w.abort();
    }
    link.close();
    let _ = shared.events.send(LinkEvent::Down { peer, conn: id }).await;
}

/// One lane's writer: what the engine task queued on it goes out in few writes (a
/// TLS record and a syscall per burst of up to `WRITE_BURST_BYTES` rather than per
/// frame), while the other lanes' writers run beside it.
async fn write_lane(
    link: Arc<Link>,
    stream: u32,
    mut rx: mpsc::Receiver<(Frame, u64)>,
    queued: Arc<AtomicUsize>,
    delay: Arc<AtomicU64>,
) {
    let mut burst = Vec::with_capacity(WRITE_BURST);
    'writing: while rx.recv_many(&mut burst, WRITE_BURST).await > 0 {
        // In writes of at most WRITE_BURST_BYTES (or one larger frame): the transport
        // copies a write into one buffer, and a burst of MiB responses would
        // otherwise be copied whole.
        // The burst's last frame waited least: what this lane's queue costs now.
        if let Some((_, at)) = burst.last() {
            delay.fetch_min(crate::now().ms().saturating_sub(*at), Ordering::Relaxed);
        }
        let mut group = Vec::new();
        let mut bytes = 0;
        // The queue's bytes count until the transport has taken them.
        for (frame, _) in burst.drain(..) {
            if !group.is_empty() && bytes + frame.len() > WRITE_BURST_BYTES {
                if let Err(e) = link.send_frames(stream, std::mem::take(&mut group)).await {
                    debug!(stream, "send failed: {e}");
                    break 'writing;
                }
                queued.fetch_sub(bytes, Ordering::Relaxed);
                bytes = 0;
            }
            bytes += frame.len();
            group.push(frame);
        }
        if let Err(e) = link.send_frames(stream, group).await {
            debug!(stream, "send failed: {e}");
            break;
        }
        queued.fetch_sub(bytes, Ordering::Relaxed);
    }
    // The engine task dropped us, or the connection failed.
    link.close();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_that_hangs_up_at_once_is_redialled_with_backoff_and_a_lived_link_at_once() {
        // Refused right after each handshake: 50, 100, ... ms, then every second.
        let mut backoff = FIRST_BACKOFF;
        let mut waits = Vec::new();
        for _ in 0..8 {
            let (wait, next) = next_wait(Dialled::Lived(Duration::from_millis(5)), backoff);
            waits.push(wait.as_millis());
            backoff = next;
        }
        assert_eq!(waits, vec![50, 100, 200, 400, 800, 1000, 1000, 1000]);
        // Then a link that lived: redialled at once, backoff reset.
        assert_eq!(
            next_wait(Dialled::Lived(Duration::from_secs(30)), backoff),
            (FIRST_BACKOFF, FIRST_BACKOFF)
        );
        // Unreachable: up to MAX_BACKOFF.
        let mut backoff = FIRST_BACKOFF;
        for _ in 0..20 {
            backoff = next_wait(Dialled::Unreachable, backoff).1;
        }
        assert_eq!(backoff, MAX_BACKOFF);
    }
}
