//! The SDK: an embeddable node. Build one with [`NodeBuilder`], then use the
//! [`NodeHandle`] as a client ([`NodeHandle::request`], [`NodeHandle::quote`],
//! [`NodeHandle::request_stream`]) or serve requests with a [`Handler`].

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{Stream, StreamExt};
use por_chain::AnyChain;
use por_protocol::engine::Event;
use por_protocol::topology::Quote;
use por_protocol::types::{ChannelId, RequestId, Route, SignedResponse};
use por_protocol::{Amount, EngineConfig, Keypair, NodeId, Time};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::config::TransportKind;
use crate::metrics::Metrics;
use crate::NodeError;

/// How to send one request.
#[derive(Clone, Debug)]
pub struct RequestOptions {
    /// Late-fee rate asked for, per ms late (capped by the route's edges).
    pub late_fee_rate: Amount,
    /// Only routes whose round trip fits this (ms).
    pub max_rtt_ms: u64,
    /// The largest response bought, in bytes (default [`DEFAULT_RESPONSE_LIMIT`]):
    /// every edge charges its per-byte cost on it and budgets its transmission, and a
    /// longer response is refused on the way.
    pub response_limit: u64,
    /// A fixed route instead of the cheapest one (starts here, ends at the server).
    pub route: Option<Route>,
    /// After a proof of a severed edge, try another route up to this many times.
    pub max_reroutes: u32,
    /// How long after the deadline, with neither response nor proof, `request`
    /// returns [`Outcome::Late`] (the request keeps earning fees; its end shows in
    /// [`NodeHandle::events`]).
    pub late_after_ms: u64,
}

/// The response size a request buys unless it says otherwise: 4 KiB.
pub const DEFAULT_RESPONSE_LIMIT: u64 = 4096;

impl Default for RequestOptions {
    fn default() -> Self {
        RequestOptions {
            late_fee_rate: Amount(1),
            max_rtt_ms: 60_000,
            response_limit: DEFAULT_RESPONSE_LIMIT,
            route: None,
            max_reroutes: 2,
            late_after_ms: 2_000,
        }
    }
}

/// How a request ended, as the client sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The server's signed response, verified by every hop and by us.
    Response {
        /// The request (the last attempt's id).
        request: RequestId,
        /// The response body, shared with the frame it arrived in (a file piece is
        /// not copied on its way to the caller).
        body: bytes::Bytes,
        /// The server's signed statement of the body (verified by every hop and by
        /// us): evidence against the server if the body is wrong for the request.
        response: SignedResponse,
        /// From sending to delivery.
        latency_ms: u64,
        /// Within the route's promised round trip.
        on_time: bool,
        /// Late fees received for it.
        fees_received: Amount,
        /// Paid to the first hop, over every attempt (re-routes included).
        paid: Amount,
        /// The route it took.
        route: Route,
        /// Proofs received on earlier attempts (re-routed around).
        proofs: Vec<ChannelId>,
    },
    /// A verified proof that an edge on the route was severed, and no re-route left.
    Proof {
        /// The request.
        request: RequestId,
        /// The severed edge.
        channel: ChannelId,
        /// The node that severed it.
        severer: NodeId,
        /// From sending to delivery.
        latency_ms: u64,
        /// Late fees received for it.
        fees_received: Amount,
        /// Paid to the first hop, over every attempt.
        paid: Amount,
        /// Every proof received, the last one included.
        proofs: Vec<ChannelId>,
    },
    /// The first hop refused the request (and refunded it).
    Rejected {
        /// The request.
        request: RequestId,
        /// Why.
        reason: String,
        /// The refund (of the last attempt's payment).
        refunded: Amount,
        /// Paid to the first hop, over every attempt (the refund came back on top).
        paid: Amount,
    },
    /// Past its deadline with neither a response nor a proof: it keeps earning late
    /// fees at every sync until one comes.
    Late {
        /// The request.
        request: RequestId,
        /// How far past the deadline (ms).
        overdue_ms: u64,
        /// Fees received so far.
        fees_received: Amount,
        /// Paid to the first hop, over every attempt.
        paid: Amount,
    },
}

/// A verified request for this node as server.
#[derive(Clone, Debug)]
pub struct IncomingRequest {
    /// The request.
    pub id: RequestId,
    /// The client (its signature checked).
    pub client: NodeId,
    /// The body.
    pub body: Vec<u8>,
    /// The largest response the client bought: a longer one is not sent.
    pub response_limit: u64,
    /// When the response must leave this node to be on time.
    pub send_deadline: Time,
}

/// The server role: answers verified requests; the node signs and sends the answer.
pub trait Handler: Send + Sync + 'static {
    /// The response body for `request`.
    fn handle(&self, request: IncomingRequest) -> impl Future<Output = Vec<u8>> + Send;
}

pub(crate) type BoxFuture = Pin<Box<dyn Future<Output = Vec<u8>> + Send>>;

/// A handler with its type erased, for the runtime.
pub(crate) trait ErasedHandler: Send + Sync {
    fn call(self: Arc<Self>, request: IncomingRequest) -> BoxFuture;
}

impl<H: Handler> ErasedHandler for H {
    fn call(self: Arc<Self>, request: IncomingRequest) -> BoxFuture {
        Box::pin(async move { self.handle(request).await })
    }
}

/// A [`Handler`] from an async closure.
pub fn handler_fn<F, Fut>(f: F) -> impl Handler
where
    F: Fn(IncomingRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Vec<u8>> + Send + 'static,
{
    struct FnHandler<F>(F);
    impl<F, Fut> Handler for FnHandler<F>
    where
        F: Fn(IncomingRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<u8>> + Send + 'static,
    {
        fn handle(&self, request: IncomingRequest) -> impl Future<Output = Vec<u8>> + Send {
            (self.0)(request)
        }
    }
    FnHandler(f)
}

/// An engine event, with the node's clock when it happened.
#[derive(Clone, Debug)]
pub struct NodeEvent {
    /// When (ms since the Unix epoch).
    pub at: Time,
    /// What.
    pub event: Event,
}

/// One channel as this node holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelStatus {
    /// The edge.
    pub id: ChannelId,
    /// The other endpoint.
    pub peer: NodeId,
    /// Our balance: deposit + received − paid.
    pub balance: Amount,
    /// Received from the peer so far.
    pub received: Amount,
    /// Paid to the peer so far (signed by us).
    pub paid: Amount,
    /// The part of `paid` the peer has not acknowledged yet (an offline peer never
    /// received it; it is resent when the peer is back).
    pub unacked: Amount,
    /// Connected right now.
    pub connected: bool,
    /// Severed (by either side).
    pub severed: bool,
    /// How far the chain has taken its close.
    pub close: por_protocol::channel::CloseStage,
}

/// What the node holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// This node.
    pub id: NodeId,
    /// The address peers reach it at.
    pub address: String,
    /// Its channels.
    pub channels: Vec<ChannelStatus>,
    /// Requests in flight here (as client, relay or server).
    pub in_flight: usize,
    /// Frames waiting for their writes to be durable.
    pub transmits_waiting: usize,
}

/// Builds and starts a node.
pub struct NodeBuilder {
    pub(crate) key: Keypair,
    pub(crate) chain: Arc<AnyChain>,
    pub(crate) data_dir: PathBuf,
    pub(crate) listen: String,
    pub(crate) advertise: Option<String>,
    pub(crate) transport: TransportKind,
    pub(crate) transport_config: por_transport::TransportConfig,
    pub(crate) engine: EngineConfig,
    pub(crate) handler: Option<Arc<dyn ErasedHandler>>,
    pub(crate) shape: Option<Arc<dyn Fn(NodeId) -> Option<Duration> + Send + Sync>>,
    pub(crate) metrics_addr: Option<String>,
    pub(crate) register_stake: Option<Amount>,
    pub(crate) chain_poll: Duration,
    pub(crate) watch_after: Duration,
    pub(crate) shutdown_grace: Duration,
    pub(crate) commit_interval: Duration,
    pub(crate) event_log: usize,
    pub(crate) limits: crate::limits::Limits,
}

impl NodeBuilder {
    /// A node with `key`, on `chain`, keeping its state in `data_dir`.
    pub fn new(key: Keypair, chain: AnyChain, data_dir: impl Into<PathBuf>) -> NodeBuilder {
        NodeBuilder {
            key,
            chain: Arc::new(chain),
            data_dir: data_dir.into(),
            listen: "127.0.0.1:0".into(),
            advertise: None,
            transport: TransportKind::Tcp,
            transport_config: por_transport::TransportConfig::default(),
            engine: EngineConfig::default(),
            handler: None,
            shape: None,
            metrics_addr: None,
            register_stake: None,
            chain_poll: Duration::from_millis(250),
            watch_after: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(10),
            commit_interval: Duration::from_millis(2),
            event_log: 0,
            limits: crate::limits::Limits::default(),
        }
    }

    /// The node's bounds on what peers and HTTP clients can make it hold (the
    /// engine's are in [`NodeBuilder::engine_config`]).
    pub fn limits(mut self, limits: crate::limits::Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The address to listen on (default `127.0.0.1:0`).
    pub fn listen(mut self, addr: impl Into<String>) -> Self {
        self.listen = addr.into();
        self
    }

    /// The address to publish on chain (default: the address listened on).
    pub fn advertise(mut self, addr: impl Into<String>) -> Self {
        self.advertise = Some(addr.into());
        self
    }

    /// TCP or QUIC.
    pub fn transport(mut self, kind: TransportKind) -> Self {
        self.transport = kind;
        self
    }

    /// Transport limits and timeouts.
    pub fn transport_config(mut self, config: por_transport::TransportConfig) -> Self {
        self.transport_config = config;
        self
    }

    /// Engine policies.
    pub fn engine_config(mut self, config: EngineConfig) -> Self {
        self.engine = config;
        self
    }

    /// Serve requests with `handler`. Without one, requests for this node are
    /// answered with an empty body.
    pub fn handler(mut self, handler: impl Handler) -> Self {
        self.handler = Some(Arc::new(handler));
        self
    }

    /// Delay what this node sends to a peer by the returned one-way latency (links
    /// shaped in user space, for demos and tests; the kernel here has no netem).
    pub fn shape(mut self, f: impl Fn(NodeId) -> Option<Duration> + Send + Sync + 'static) -> Self {
        self.shape = Some(Arc::new(f));
        self
    }

    /// Serve Prometheus metrics on this address.
    pub fn metrics(mut self, addr: impl Into<String>) -> Self {
        self.metrics_addr = Some(addr.into());
        self
    }

    /// Register on chain with this stake if not registered yet.
    pub fn register(mut self, stake: Amount) -> Self {
        self.register_stake = Some(stake);
        self
    }

    /// How long to wait for a severing notice someone else signed (a peer's, or a
    /// proof that answered a request) to become final on chain before submitting it
    /// ourselves, paying the gas (default 10 s).
    pub fn watch_after(mut self, after: Duration) -> Self {
        self.watch_after = after;
        self
    }

    /// How often to poll the chain for events (default 250 ms).
    pub fn chain_poll(mut self, every: Duration) -> Self {
        self.chain_poll = every;
        self
    }

    /// How long a graceful shutdown waits for requests in flight (default 10 s).
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// The least time between the starts of two group commits (default 2 ms). A node
    /// that is not busy commits at once; under load, each commit carries more writes,
    /// which costs each request up to this much latency per durable step and saves CPU.
    pub fn commit_interval(mut self, interval: Duration) -> Self {
        self.commit_interval = interval;
        self
    }

    /// Keeps the last `capacity` engine events for [`NodeHandle::recent_events`]
    /// (default 0: none kept, and none copied).
    pub fn event_log(mut self, capacity: usize) -> Self {
        self.event_log = capacity;
        self
    }
}

/// A running node.
#[derive(Clone, Debug)]
pub struct NodeHandle {
    pub(crate) id: NodeId,
    pub(crate) address: String,
    pub(crate) commands: mpsc::Sender<Command>,
    pub(crate) events: broadcast::Sender<NodeEvent>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) metrics_addr: Option<String>,
    pub(crate) chain: Arc<AnyChain>,
    pub(crate) done: Arc<tokio::sync::Notify>,
    pub(crate) stopped: Arc<std::sync::atomic::AtomicBool>,
    pub(crate) event_log: Option<Arc<std::sync::Mutex<crate::eventlog::EventLog>>>,
}

impl NodeHandle {
    /// This node's key.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The address peers reach it at.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The kept engine events from sequence number `since` on, the next sequence
    /// number, and how many since `since` are no longer kept; `None` when the node
    /// keeps no event log ([`NodeBuilder::event_log`]).
    pub fn recent_events(&self, since: u64) -> Option<(Vec<crate::eventlog::Logged>, u64, u64)> {
        let log = self.event_log.as_ref()?;
        log.lock().ok().map(|l| l.since(since))
    }

    /// The metrics endpoint's address, if serving.
    pub fn metrics_address(&self) -> Option<&str> {
        self.metrics_addr.as_deref()
    }

    /// The chain this node uses.
    pub fn chain(&self) -> &AnyChain {
        &self.chain
    }

    /// The node's counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// Sends `body` to `server` and waits for the outcome: the verified response, a
    /// proof of a severed edge (after re-routing as allowed), a refusal, or
    /// [`Outcome::Late`].
    ///
    /// While this node sheds load (its queues stand past `admission_delay_ms`), the
    /// call fails at once, costing nothing, with
    /// `NodeError::Protocol(ProtocolError::Overloaded { .. })`: try again later.
    pub async fn request(
        &self,
        server: NodeId,
        body: Vec<u8>,
        options: RequestOptions,
    ) -> Result<Outcome, NodeError> {
        let at = crate::now().ms();
        self.ask(|reply| Command::Request {
            server,
            body,
            options,
            reply,
            at,
        })
        .await?
    }

    /// Up to `k` priced routes to `server` for a body of `body_len` bytes buying a
    /// response of up to `response_limit` bytes, cheapest first, with their deadlines.
    pub async fn quote(
        &self,
        server: NodeId,
        body_len: u64,
        response_limit: u64,
        max_rtt_ms: u64,
        k: usize,
    ) -> Result<Vec<Quote>, NodeError> {
        self.ask(|reply| Command::Quote {
            server,
            bytes: body_len.saturating_add(response_limit),
            max_rtt_ms,
            k,
            reply,
        })
        .await
    }

    /// A stream of requests to `server`: bodies from `bodies`, at most `concurrency`
    /// in flight, outcomes in completion order, tagged with the body's index.
    pub fn request_stream<S>(
        &self,
        server: NodeId,
        bodies: S,
        concurrency: usize,
        options: RequestOptions,
    ) -> impl Stream<Item = (usize, Result<Outcome, NodeError>)> + Send + 'static
    where
        S: Stream<Item = Vec<u8>> + Send + 'static,
    {
        let node = self.clone();
        bodies
            .enumerate()
            .map(move |(i, body)| {
                let node = node.clone();
                let options = options.clone();
                async move { (i, node.request(server, body, options).await) }
            })
            .buffer_unordered(concurrency.max(1))
    }

    /// Channels, balances and requests in flight.
    pub async fn status(&self) -> Result<Status, NodeError> {
        self.ask(|reply| Command::Status { reply }).await
    }

    /// Severs one of our edges (the notice goes to the chain and to the peer).
    pub async fn sever(&self, channel: ChannelId) -> Result<(), NodeError> {
        self.ask(|reply| Command::Sever { channel, reply }).await?
    }

    /// The states to close `channel` with: the latest update the peer signed to us.
    pub async fn close_states(
        &self,
        channel: ChannelId,
    ) -> Result<Vec<por_protocol::types::SignedUpdate>, NodeError> {
        self.ask(|reply| Command::CloseStates { channel, reply })
            .await?
    }

    /// Every engine event from now on.
    pub fn events(&self) -> broadcast::Receiver<NodeEvent> {
        self.events.subscribe()
    }

    /// Stops gracefully: refuses new requests, waits (up to the grace period) for those
    /// in flight, flushes the database, closes connections.
    pub async fn shutdown(&self) -> Result<(), NodeError> {
        if self.ask(|reply| Command::Shutdown { reply }).await.is_err() {
            // Already stopped.
            return Ok(());
        }
        self.stopped().await;
        Ok(())
    }

    /// Waits until the node has stopped.
    pub async fn stopped(&self) {
        loop {
            let notified = self.done.notified();
            if self.stopped.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }
}

/// What the SDK asks of the engine task (see `pump.rs`).
pub(crate) enum Command {
    Request {
        server: NodeId,
        body: Vec<u8>,
        options: RequestOptions,
        reply: oneshot::Sender<Result<Outcome, NodeError>>,
        /// When the caller asked (ms): what it then waited for the engine is queueing
        /// delay (admission by delay).
        at: u64,
    },
    Quote {
        server: NodeId,
        bytes: u64,
        max_rtt_ms: u64,
        k: usize,
        reply: oneshot::Sender<Vec<Quote>>,
    },
    Status {
        reply: oneshot::Sender<Status>,
    },
    Sever {
        channel: ChannelId,
        reply: oneshot::Sender<Result<(), NodeError>>,
    },
    Respond {
        request: RequestId,
        body: Vec<u8>,
    },
    CloseStates {
        channel: ChannelId,
        reply: oneshot::Sender<Result<Vec<por_protocol::types::SignedUpdate>, NodeError>>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}
