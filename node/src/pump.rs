//! The pump: the engine task, the one place the engine lives. It takes inputs
//! (durability confirmations, frames, chain events, SDK commands, timers), and after
//! each batch of them drains the engine's outputs: writes to the persister, frames to
//! the links, events to the client and the SDK, chain actions to the follower.

use std::sync::Arc;
use std::time::Duration;

use por_protocol::engine::{ChainAction, Event};
use por_protocol::types::SeverReason;
use por_protocol::{messages, Engine, Time};
use por_transport::Frame;
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::admission::Admission;
use crate::client::Client;
use crate::follower::ChainInput;
use crate::links::{LinkEvent, Links};
use crate::metrics::Metrics;
use crate::persister::Persist;
use crate::sdk::{Command, ErasedHandler, IncomingRequest, NodeEvent};
use crate::{now, NodeError};

/// Most inputs the engine task takes between two drains of the engine's outputs.
const INPUT_BATCH: usize = 64;

/// The engine task's state: the engine and whatever serves it.
pub(crate) struct Pump {
    pub(crate) engine: Engine,
    pub(crate) links: Links,
    pub(crate) client: Client,
    pub(crate) handler: Option<Arc<dyn ErasedHandler>>,
    pub(crate) commands: mpsc::Sender<Command>,
    pub(crate) events: broadcast::Sender<NodeEvent>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) writes: mpsc::UnboundedSender<Persist>,
    /// How far the chain has been followed, to store with the next writes.
    pub(crate) cursor_due: Option<u64>,
    pub(crate) actions: mpsc::UnboundedSender<ChainAction>,
    pub(crate) chain_events_seen: u64,
    /// Set once a shutdown began: when to give up waiting, and whom to tell.
    pub(crate) shutting_down: Option<(Time, Vec<oneshot::Sender<()>>)>,
    pub(crate) grace: Duration,
    pub(crate) address: String,
    /// Admission by delay: whether the node sheds new requests.
    pub(crate) admission: Admission,
}

fn sleep_until(t: Option<Time>) -> tokio::time::Sleep {
    let wait = t.map_or(Duration::from_secs(3600), |t| {
        Duration::from_millis(t.ms().saturating_sub(now().ms()))
    });
    tokio::time::sleep(wait)
}

impl Pump {
    /// Runs until shut down (or the persister fails): each turn drains the engine's
    /// outputs, waits for one input, then takes what else is already waiting.
    pub(crate) async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut links: mpsc::Receiver<LinkEvent>,
        mut chain_events: mpsc::Receiver<ChainInput>,
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
                self.client.next_check(),
                self.shutting_down.as_ref().map(|(t, _)| *t),
                self.admission.next_tick().map(Time),
            ]
            .into_iter()
            .flatten()
            .min();
            tokio::select! {
                biased;
                Some(d) = durable.recv() => self.on_durable(d?),
                Some(ev) = links.recv() => self.on_link(ev),
                Some(input) = chain_events.recv() => match input {
                    ChainInput::Event(ev) => {
                        self.chain_events_seen += 1;
                        self.engine.handle_chain_event(ev, now());
                        self.links.update_neighbours(&self.engine);
                    }
                    ChainInput::Through(height) => self.cursor_due = Some(height),
                },
                Some(cmd) = commands.recv() => self.on_command(cmd),
                () = sleep_until(next) => self.on_timer(),
            }
            // Take what is already waiting before draining, so that one drain seals
            // one batch of responses, one ack per channel and one write batch for all
            // of it (bounded, so outputs never wait long behind a flood of inputs).
            for _ in 0..INPUT_BATCH {
                if let Ok(d) = durable.try_recv() {
                    self.on_durable(d?);
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
        self.client.on_timer(&self.metrics, t);
        if let Some(d) = self.links.take_out_delay() {
            self.admission.written(d);
        }
        if let Some(verdict) = self.admission.tick(t.ms()) {
            match verdict {
                Some(delay_ms) => warn!(
                    delay_ms,
                    "commits wait past the admission target: refusing new requests until they drain"
                ),
                None => info!("commits drained: taking new requests again"),
            }
            self.metrics.shedding.set(i64::from(verdict.is_some()));
        }
        // Kept current while shedding, so refusals say what the delay is now.
        self.engine.set_overloaded(self.admission.shedding());
    }

    /// Writes up to `up_to` are durable: the frames and events waiting on them go.
    fn on_durable(&mut self, up_to: u64) {
        self.engine.writes_durable(up_to);
        self.admission.durable(up_to, now().ms());
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
            LinkEvent::Frame {
                peer,
                conn,
                frame,
                at,
            } => {
                if !self.links.is_current(peer, conn) {
                    return;
                }
                self.admission.arrived(t.ms().saturating_sub(at));
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
                at,
            } => {
                self.admission.arrived(t.ms().saturating_sub(at));
                if self.shutting_down.is_some() {
                    let _ = reply.send(Err(NodeError::Stopped));
                    return;
                }
                self.client.request(
                    &mut self.engine,
                    &self.metrics,
                    server,
                    body,
                    options,
                    reply,
                    t,
                );
            }
            Command::Quote {
                server,
                bytes,
                max_rtt_ms,
                k,
                reply,
            } => {
                let _ = reply.send(self.engine.quote(&server, bytes, max_rtt_ms, k));
            }
            Command::Status { reply } => {
                let _ = reply.send(crate::status::status(
                    &self.engine,
                    &self.links,
                    &self.address,
                ));
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

    /// Drains every engine output.
    fn drain(&mut self) -> Result<(), NodeError> {
        let batch = self.engine.poll_writes();
        if let Some(b) = &batch {
            self.metrics.writes.inc_by(b.writes.len() as u64);
            self.admission.handed(b.up_to, now().ms());
        }
        // The cursor goes with (after) the writes of the events it covers.
        let cursor = self.cursor_due.take();
        if batch.is_some() || cursor.is_some() {
            self.writes
                .send(Persist { batch, cursor })
                .map_err(|_| NodeError::Stopped)?;
        }
        while let Some(tx) = self.engine.poll_transmit() {
            // A large response body goes out as its own part, uncopied.
            match messages::encode_frame_parts(&tx.message) {
                Ok(parts) => {
                    self.metrics.frames_out.inc();
                    if self
                        .links
                        .send(tx.to, tx.message.lane(), Frame::from_parts(parts))
                    {
                        self.engine.peer_disconnected(tx.to, now());
                    }
                }
                Err(e) => warn!(peer = %tx.to, "cannot encode a frame: {e}"),
            }
        }
        while let Some(action) = self.engine.poll_chain_action() {
            match &action {
                ChainAction::Sever(n) => {
                    info!(channel = %n.notice.channel, "submitting a severing notice to the chain");
                }
                ChainAction::Watch(n) => {
                    info!(channel = %n.notice.channel, "watching for a peer's severing notice on chain");
                }
                ChainAction::Challenge { channel, .. } => {
                    warn!(%channel, "a close on chain holds an older state than ours: challenging");
                }
            }
            let _ = self.actions.send(action);
        }
        while let Some(event) = self.engine.poll_event() {
            self.on_event(&event);
            let _ = self.events.send(NodeEvent { at: now(), event });
        }
        self.metrics.in_flight.set(self.engine.in_flight() as i64);
        self.metrics
            .transmits_waiting
            .set(self.engine.transmits_waiting() as i64);
        Ok(())
    }

    /// Serves an engine event: the client's waiters, the handler, metrics and logs.
    fn on_event(&mut self, event: &Event) {
        self.client.on_event(&mut self.engine, &self.metrics, event);
        let m = &self.metrics;
        match event {
            Event::RequestForwarded { request, kept, .. } => {
                m.requests_relayed.inc();
                m.fees_earned.inc_by(crate::metrics::yocto(*kept));
                debug!(%request, "forwarded");
            }
            Event::RequestReceived {
                request,
                client,
                body,
                response_limit,
                send_deadline,
            } => {
                m.requests_served.inc();
                let id = *request;
                let incoming = IncomingRequest {
                    id: *request,
                    client: *client,
                    body: body.clone(),
                    response_limit: *response_limit,
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
            Event::LateFeeReceived { amount, .. } => {
                m.late_fees_received.inc_by(crate::metrics::yocto(*amount));
            }
            Event::LateFeePaid { amount, .. } => {
                m.late_fees_paid.inc_by(crate::metrics::yocto(*amount));
            }
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
