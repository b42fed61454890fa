//! The engine task: the one place the engine lives. It takes inputs (frames, timers,
//! SDK commands, chain events, durability confirmations), and after each one drains
//! the engine's outputs: writes to the persister, frames to the links, events to the
//! SDK, severs to the chain.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use por_chain::{AnyChain, Chain};
use por_protocol::engine::{ChainAction, ChainEvent, Event, WriteBatch};
use por_protocol::topology::Quote;
use por_protocol::types::{ChannelId, RequestId, Route, SeverReason};
use por_protocol::{messages, Engine, NodeId, Time};
use por_transport::{AnyTransport, Listener, Transport};
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::db::NodeDb;
use crate::links::{LinkEvent, Links};
use crate::metrics::Metrics;
use crate::sdk::{
    ChannelStatus, ErasedHandler, IncomingRequest, NodeBuilder, NodeEvent, NodeHandle, Outcome,
    RequestOptions, Status,
};
use crate::{now, NodeError};

/// SDK calls into the engine task.
pub(crate) enum Command {
    Request {
        server: NodeId,
        body: Vec<u8>,
        options: RequestOptions,
        reply: oneshot::Sender<Result<Outcome, NodeError>>,
    },
    Quote {
        server: NodeId,
        body_len: u64,
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

/// A client request waiting for its outcome.
struct Waiter {
    reply: Option<oneshot::Sender<Result<Outcome, NodeError>>>,
    server: NodeId,
    body: Vec<u8>,
    options: RequestOptions,
    route: Route,
    reroutes: u32,
    proofs: Vec<ChannelId>,
    deadline: Option<Time>,
    fees: por_protocol::Amount,
}

impl Waiter {
    fn answer(&mut self, outcome: Result<Outcome, NodeError>) {
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(outcome);
        }
    }

    /// A send attempt failed. On a first attempt that is the answer; on a re-route
    /// the waiter is dropped, and the proof that prompted it stands as the outcome.
    fn fail(mut self, err: NodeError) {
        if self.proofs.is_empty() {
            self.answer(Err(err));
        }
    }
}

pub(crate) async fn start(b: NodeBuilder) -> Result<NodeHandle, NodeError> {
    std::fs::create_dir_all(&b.data_dir).map_err(|e| NodeError::File {
        path: b.data_dir.clone(),
        detail: e.to_string(),
    })?;
    let id = b.key.id();
    let db = NodeDb::open(&b.data_dir.join("node.redb"))?;
    let transport = match b.transport {
        crate::TransportKind::Tcp => AnyTransport::Tcp(por_transport::tcp::TcpTransport::new(
            &b.key,
            b.transport_config.clone(),
        )?),
        crate::TransportKind::Quic => AnyTransport::Quic(por_transport::quic::QuicTransport::new(
            &b.key,
            b.transport_config.clone(),
        )?),
    };
    let listener = transport.listen(&b.listen).await?;
    let address = b.advertise.clone().unwrap_or_else(|| listener.local_addr());

    // The chain: registration, then the topology the engine starts from.
    let chain = b.chain.clone();
    let mut snapshot = chain.snapshot().await?;
    match snapshot.node(&id) {
        None => {
            let stake = b
                .register_stake
                .ok_or_else(|| NodeError::NotRegistered(crate::key_hex(&id)))?;
            info!(account = chain.account(), %address, "registering on chain");
            chain.register(id, vec![address.clone()], stake).await?;
            snapshot = chain.snapshot().await?;
        }
        Some(n) if n.addresses != [address.clone()] => {
            info!(%address, "publishing our address on chain");
            chain
                .call(
                    "update_addresses",
                    serde_json::json!({ "addresses": [address.clone()] }),
                    0,
                )
                .await?;
        }
        Some(_) => {}
    }
    let t = now();
    let mut engine = Engine::restore(
        b.engine.clone(),
        b.key.clone(),
        snapshot.topology(),
        db.store(),
        t,
    );
    for e in &snapshot.edges {
        engine.handle_chain_event(ChainEvent::EdgeOpened(e.clone()), t);
    }
    let db = Arc::new(Mutex::new(db));
    let cursor = crate::sync::start_cursor(&chain, &db).await?;

    let metrics = Arc::new(Metrics::default());
    let (cmd_tx, cmd_rx) = mpsc::channel(1024);
    let (events, _) = broadcast::channel(16_384);
    let (link_tx, link_rx) = mpsc::channel(4096);
    let (chain_ev_tx, chain_ev_rx) = mpsc::channel(1024);
    let (action_tx, action_rx) = mpsc::unbounded_channel();
    let (durable_tx, durable_rx) = mpsc::unbounded_channel();
    let (writes_tx, writes_rx) = mpsc::unbounded_channel();
    let done = Arc::new(tokio::sync::Notify::new());
    let stopped = Arc::new(AtomicBool::new(false));
    let span = info_span!("node", id = %id);

    let persister = crate::sync::spawn_persister(
        db.clone(),
        writes_rx,
        durable_tx,
        metrics.clone(),
        b.commit_interval,
    );
    let mut links = Links::new(
        id,
        transport,
        link_tx,
        b.shape.clone(),
        metrics.clone(),
        span.clone(),
    );
    links.set_addresses(&snapshot);
    let chain_task = tokio::spawn(
        crate::sync::follow_chain(
            chain.clone(),
            db.clone(),
            cursor,
            b.chain_poll,
            chain_ev_tx,
            action_rx,
            links.addresses(),
        )
        .instrument(span.clone()),
    );
    let accept_task = tokio::spawn(
        crate::links::accept_loop(listener, links.acceptor()).instrument(span.clone()),
    );
    let metrics_addr = match &b.metrics_addr {
        Some(addr) => Some(crate::metrics::serve(addr, metrics.clone()).await?),
        None => None,
    };

    let task = EngineTask {
        engine,
        links,
        waiters: HashMap::new(),
        late_checks: BTreeSet::new(),
        handler: b.handler.clone(),
        commands: cmd_tx.clone(),
        events: events.clone(),
        metrics: metrics.clone(),
        writes: writes_tx,
        actions: action_tx,
        chain_events_seen: 0,
        shutting_down: None,
        grace: b.shutdown_grace,
        address: address.clone(),
    };
    let handle = NodeHandle {
        id,
        address,
        commands: cmd_tx,
        events,
        metrics,
        metrics_addr,
        chain,
        done: done.clone(),
        stopped: stopped.clone(),
    };
    tokio::spawn(
        async move {
            let result = task.run(cmd_rx, link_rx, chain_ev_rx, durable_rx).await;
            if let Err(e) = &result {
                tracing::error!("node stopped: {e}");
            }
            accept_task.abort();
            chain_task.abort();
            // The persister ends once every write queued before this point is durable.
            let _ = tokio::task::spawn_blocking(move || persister.join()).await;
            stopped.store(true, Ordering::SeqCst);
            done.notify_waiters();
            info!("stopped");
        }
        .instrument(span),
    );
    Ok(handle)
}

/// Most inputs the engine task takes between two drains of the engine's outputs.
const INPUT_BATCH: usize = 64;

struct EngineTask {
    engine: Engine,
    links: Links,
    waiters: HashMap<RequestId, Waiter>,
    late_checks: BTreeSet<(Time, RequestId)>,
    handler: Option<Arc<dyn ErasedHandler>>,
    commands: mpsc::Sender<Command>,
    events: broadcast::Sender<NodeEvent>,
    metrics: Arc<Metrics>,
    writes: mpsc::UnboundedSender<WriteBatch>,
    actions: mpsc::UnboundedSender<ChainAction>,
    chain_events_seen: u64,
    /// Set once a shutdown began: when to give up waiting, and whom to tell.
    shutting_down: Option<(Time, Vec<oneshot::Sender<()>>)>,
    grace: Duration,
    address: String,
}

fn sleep_until(t: Option<Time>) -> tokio::time::Sleep {
    let wait = t.map_or(Duration::from_secs(3600), |t| {
        Duration::from_millis(t.ms().saturating_sub(now().ms()))
    });
    tokio::time::sleep(wait)
}

impl EngineTask {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut links: mpsc::Receiver<LinkEvent>,
        mut chain_events: mpsc::Receiver<ChainEvent>,
        mut durable: mpsc::UnboundedReceiver<Result<u64, NodeError>>,
    ) -> Result<(), NodeError> {
        self.links.update_neighbours(&self.engine);
        loop {
            self.drain()?;
            if self.finished_shutdown() {
                return Ok(());
            }
            let next = [
                self.engine.poll_timeout(),
                self.late_checks.first().map(|(t, _)| *t),
                self.shutting_down.as_ref().map(|(t, _)| *t),
            ]
            .into_iter()
            .flatten()
            .min();
            tokio::select! {
                biased;
                Some(d) = durable.recv() => {
                    let up_to = d?;
                    self.engine.writes_durable(up_to);
                }
                Some(ev) = links.recv() => self.on_link(ev),
                Some(ev) = chain_events.recv() => {
                    self.chain_events_seen += 1;
                    self.engine.handle_chain_event(ev, now());
                    self.links.update_neighbours(&self.engine);
                }
                Some(cmd) = commands.recv() => self.on_command(cmd),
                () = sleep_until(next) => self.on_timer(),
            }
            // Take what is already waiting before draining, so that one drain seals
            // one batch of responses, one ack per channel and one write batch for all
            // of it (bounded, so outputs never wait long behind a flood of inputs).
            for _ in 0..INPUT_BATCH {
                if let Ok(d) = durable.try_recv() {
                    self.engine.writes_durable(d?);
                } else if let Ok(ev) = links.try_recv() {
                    self.on_link(ev);
                } else if let Ok(cmd) = commands.try_recv() {
                    self.on_command(cmd);
                } else {
                    break;
                }
            }
            // The select is biased towards inputs: under a steady flood the sleep arm
            // would never be chosen, so due timers (syncs, overdue requests, late
            // checks) are run here too. Nothing happens when none is due.
            self.on_timer();
        }
    }

    fn finished_shutdown(&mut self) -> bool {
        let Some((until, _)) = &self.shutting_down else {
            return false;
        };
        let in_flight = self.engine.in_flight();
        let idle = in_flight == 0 && self.engine.transmits_waiting() == 0;
        if idle || now() >= *until {
            if !idle {
                warn!(in_flight, "grace period over: requests in flight are left to the restart (they are durable)");
            }
            if let Some((_, replies)) = self.shutting_down.take() {
                for r in replies {
                    let _ = r.send(());
                }
            }
            self.links.close_all();
            return true;
        }
        false
    }

    fn on_timer(&mut self) {
        let t = now();
        if self.engine.poll_timeout().is_some_and(|d| d <= t) {
            self.engine.handle_timeout(t);
        }
        while let Some(&(at, id)) = self.late_checks.first() {
            if at > t {
                break;
            }
            self.late_checks.pop_first();
            if let Some(w) = self.waiters.get_mut(&id) {
                let overdue_ms = w.deadline.map_or(0, |d| t.ms().saturating_sub(d.ms()));
                self.metrics.outcome("late");
                w.answer(Ok(Outcome::Late {
                    request: id,
                    overdue_ms,
                    fees_received: w.fees,
                }));
            }
        }
    }

    fn on_link(&mut self, ev: LinkEvent) {
        let t = now();
        match ev {
            LinkEvent::Up { peer, conn, tx } => {
                if self.links.up(peer, conn, tx) {
                    self.engine.peer_disconnected(peer, t);
                }
                info!(%peer, "peer connected");
                self.engine.peer_connected(peer, t);
            }
            LinkEvent::Down { peer, conn } => {
                if self.links.down(peer, conn) {
                    info!(%peer, "peer disconnected");
                    self.engine.peer_disconnected(peer, t);
                }
            }
            LinkEvent::Frame { peer, conn, frame } => {
                if !self.links.is_current(peer, conn) {
                    return;
                }
                self.metrics.frames_in.inc();
                let result = match frame {
                    Ok(message) => self.engine.handle_message(peer, *message, t),
                    Err(raw) => self.engine.handle_frame(peer, &raw, t),
                };
                if let Err(e) = result {
                    if e.is_fatal() {
                        self.metrics.peers_dropped.inc();
                        warn!(%peer, "dropping peer: {e}");
                        self.links.drop_peer(peer);
                        self.engine.peer_disconnected(peer, t);
                    } else {
                        debug!(%peer, "refused: {e}");
                    }
                }
            }
        }
    }

    fn on_command(&mut self, cmd: Command) {
        let t = now();
        match cmd {
            Command::Request {
                server,
                body,
                options,
                reply,
            } => {
                if self.shutting_down.is_some() {
                    let _ = reply.send(Err(NodeError::Stopped));
                    return;
                }
                let waiter = Waiter {
                    reply: Some(reply),
                    server,
                    body,
                    route: Route {
                        nodes: Vec::new(),
                        channels: Vec::new(),
                    },
                    options,
                    reroutes: 0,
                    proofs: Vec::new(),
                    deadline: None,
                    fees: por_protocol::Amount::ZERO,
                };
                self.send_attempt(waiter, t);
            }
            Command::Quote {
                server,
                body_len,
                max_rtt_ms,
                k,
                reply,
            } => {
                let _ = reply.send(self.engine.quote(&server, body_len, max_rtt_ms, k));
            }
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::Sever { channel, reply } => {
                let r = self
                    .engine
                    .sever(channel, SeverReason::Operator, t)
                    .map_err(NodeError::from);
                let _ = reply.send(r);
            }
            Command::CloseStates { channel, reply } => {
                let r = match self.engine.channel(channel) {
                    Some(c) => Ok(c.incoming.latest.iter().cloned().collect()),
                    None => Err(NodeError::Protocol(
                        por_protocol::ProtocolError::InvalidCall(format!("{channel} is not ours")),
                    )),
                };
                let _ = reply.send(r);
            }
            Command::Respond { request, body } => {
                if let Err(e) = self.engine.respond(request, body, t) {
                    warn!(%request, "response not sent: {e}");
                }
            }
            Command::Shutdown { reply } => {
                info!("shutting down");
                match &mut self.shutting_down {
                    Some((_, replies)) => replies.push(reply),
                    None => {
                        self.links.stop_accepting();
                        let until = Time(t.ms().saturating_add(self.grace.as_millis() as u64));
                        self.shutting_down = Some((until, vec![reply]));
                    }
                }
            }
        }
    }

    /// Sends (or re-sends on a new route) a waiter's request.
    fn send_attempt(&mut self, mut w: Waiter, t: Time) {
        let route = match w.options.route.take() {
            Some(r) => Some(r),
            None => self
                .engine
                .quote(&w.server, w.body.len() as u64, w.options.max_rtt_ms, 1)
                .into_iter()
                .next()
                .map(|q| q.route),
        };
        let Some(route) = route else {
            let err = NodeError::NoRoute {
                server: crate::key_hex(&w.server),
                body_len: w.body.len(),
                max_rtt_ms: w.options.max_rtt_ms,
            };
            return w.fail(err);
        };
        match self
            .engine
            .send_request(route.clone(), w.body.clone(), w.options.late_fee_rate, t)
        {
            Ok(id) => {
                w.route = route;
                self.metrics.requests_sent.inc();
                self.waiters.insert(id, w);
            }
            Err(e) => w.fail(e.into()),
        }
    }

    fn status(&self) -> Status {
        let channels = self
            .engine
            .channels()
            .map(|c| ChannelStatus {
                id: c.id(),
                peer: c.peer,
                balance: c.balance().unwrap_or_default(),
                received: c.incoming.cumulative,
                paid: c.outgoing.cumulative,
                unacked: c.outgoing.unacked.first_key_value().map_or(
                    por_protocol::Amount::ZERO,
                    |(_, (u, _))| {
                        c.outgoing
                            .cumulative
                            .checked_sub(
                                u.cumulative
                                    .checked_sub(u.memo.amount())
                                    .unwrap_or_default(),
                            )
                            .unwrap_or_default()
                    },
                ),
                connected: self.links.is_connected(&c.peer),
                severed: c.severed.is_some(),
            })
            .collect();
        Status {
            id: self.engine.id(),
            address: self.address.clone(),
            channels,
            in_flight: self.engine.in_flight(),
            transmits_waiting: self.engine.transmits_waiting(),
        }
    }

    /// Drains every engine output.
    fn drain(&mut self) -> Result<(), NodeError> {
        if let Some(batch) = self.engine.poll_writes() {
            self.metrics.writes.add(batch.writes.len() as u64);
            self.writes.send(batch).map_err(|_| NodeError::Stopped)?;
        }
        while let Some(tx) = self.engine.poll_transmit() {
            match messages::encode_frame(&tx.message) {
                Ok(frame) => {
                    self.metrics.frames_out.inc();
                    self.links.send(tx.to, Bytes::from(frame));
                }
                Err(e) => warn!(peer = %tx.to, "cannot encode a frame: {e}"),
            }
        }
        while let Some(action) = self.engine.poll_chain_action() {
            let ChainAction::Sever(notice) = &action;
            info!(channel = %notice.notice.channel, "submitting a severing notice to the chain");
            let _ = self.actions.send(action);
        }
        while let Some(event) = self.engine.poll_event() {
            self.on_event(&event);
            let _ = self.events.send(NodeEvent { at: now(), event });
        }
        self.metrics.in_flight.set(self.engine.in_flight() as u64);
        self.metrics
            .transmits_waiting
            .set(self.engine.transmits_waiting() as u64);
        Ok(())
    }

    fn on_event(&mut self, event: &Event) {
        let m = &self.metrics;
        match event {
            Event::RequestSent {
                request, deadline, ..
            } => {
                let _span = info_span!("request", id = %request).entered();
                debug!(%deadline, "sent");
                if let Some(w) = self.waiters.get_mut(request) {
                    w.deadline = Some(*deadline);
                    let check = Time(deadline.ms().saturating_add(w.options.late_after_ms));
                    self.late_checks.insert((check, *request));
                }
            }
            Event::RequestForwarded { request, kept, .. } => {
                m.requests_relayed.inc();
                m.fees_earned.add_amount(*kept);
                debug!(%request, "forwarded");
            }
            Event::RequestReceived {
                request,
                client,
                body,
                send_deadline,
            } => {
                m.requests_served.inc();
                let id = *request;
                let incoming = IncomingRequest {
                    id: *request,
                    client: *client,
                    body: body.clone(),
                    send_deadline: *send_deadline,
                };
                let commands = self.commands.clone();
                let handler = self.handler.clone();
                let span = info_span!("request", id = %request);
                tokio::spawn(
                    async move {
                        let body = match handler {
                            Some(h) => h.call(incoming).await,
                            None => Vec::new(),
                        };
                        let _ = commands.send(Command::Respond { request: id, body }).await;
                    }
                    .instrument(span),
                );
            }
            Event::ResponseDelivered {
                request,
                body,
                latency_ms,
                on_time,
                fees_received,
            } => {
                if let Some(mut w) = self.waiters.remove(request) {
                    m.outcome("response");
                    m.latency(*latency_ms);
                    w.answer(Ok(Outcome::Response {
                        request: *request,
                        body: body.clone(),
                        latency_ms: *latency_ms,
                        on_time: *on_time,
                        fees_received: *fees_received,
                        route: w.route.clone(),
                        proofs: w.proofs.clone(),
                    }));
                }
            }
            Event::SeverProofDelivered {
                request,
                channel,
                severer,
                latency_ms,
                fees_received,
            } => {
                if let Some(mut w) = self.waiters.remove(request) {
                    m.outcome("proof");
                    w.proofs.push(*channel);
                    let proof = Outcome::Proof {
                        request: *request,
                        channel: *channel,
                        severer: *severer,
                        latency_ms: *latency_ms,
                        fees_received: *fees_received,
                        proofs: w.proofs.clone(),
                    };
                    if w.reply.is_some() && w.reroutes < w.options.max_reroutes {
                        w.reroutes += 1;
                        info!(%request, %channel, "proof received: re-routing");
                        let reply = w.reply.take();
                        let (tx, rx) = oneshot::channel();
                        w.reply = Some(tx);
                        self.send_attempt(w, now());
                        // If no new route could be sent, the proof is the outcome.
                        tokio::spawn(async move {
                            let outcome = rx.await.unwrap_or(Ok(proof));
                            if let Some(reply) = reply {
                                let _ = reply.send(outcome);
                            }
                        });
                    } else {
                        w.answer(Ok(proof));
                    }
                }
            }
            Event::RequestRejected {
                request,
                reason,
                refunded,
            } => {
                if let Some(mut w) = self.waiters.remove(request) {
                    m.outcome("rejected");
                    w.answer(Ok(Outcome::Rejected {
                        request: *request,
                        reason: format!("{reason:?}"),
                        refunded: *refunded,
                    }));
                }
            }
            Event::LateFeeReceived {
                request, amount, ..
            } => {
                m.late_fees_received.add_amount(*amount);
                if let Some(w) = self.waiters.get_mut(request) {
                    w.fees = w.fees.checked_add(*amount).unwrap_or(w.fees);
                }
            }
            Event::LateFeePaid { amount, .. } => m.late_fees_paid.add_amount(*amount),
            Event::LatencyObserved {
                peer,
                rtt_ms,
                promised_rtt_ms,
            } => m.edge_latency(*peer, *rtt_ms, *promised_rtt_ms),
            Event::SeverInitiated {
                channel,
                peer,
                reason,
            } => {
                m.severs.inc();
                warn!(%channel, %peer, ?reason, "severed");
            }
            Event::LossRecorded { peer, amount, .. } => {
                warn!(%peer, %amount, "loss recorded: unpaid late fees");
            }
            Event::PeerSilent { peer } => warn!(%peer, "peer silent"),
            _ => {}
        }
    }
}

/// Submits the engine's chain actions.
pub(crate) async fn submit(chain: &AnyChain, action: ChainAction) {
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
