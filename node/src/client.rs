//! The client side of requests: each SDK request waits here for its outcome. The
//! engine's events answer it (a response, a proof, a refusal); a proof re-routes it
//! when the caller allows; and a request still unanswered `late_after_ms` past its
//! deadline is answered `Late` with the fees received so far.

use std::collections::{BTreeSet, HashMap};

use por_protocol::engine::Event;
use por_protocol::types::{ChannelId, RequestId, Route};
use por_protocol::{Amount, Engine, NodeId, Time};
use tokio::sync::oneshot;
use tracing::{debug, info, info_span};

use crate::metrics::Metrics;
use crate::sdk::{Outcome, RequestOptions};
use crate::{now, NodeError};

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
    fees: Amount,
    /// Paid to the first hop over every attempt.
    paid: Amount,
}

impl Waiter {
    /// A request not yet sent.
    fn new(
        server: NodeId,
        body: Vec<u8>,
        options: RequestOptions,
        reply: oneshot::Sender<Result<Outcome, NodeError>>,
    ) -> Waiter {
        Waiter {
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
            fees: Amount::ZERO,
            paid: Amount::ZERO,
        }
    }

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

/// The requests this node sent as client and has not answered yet.
#[derive(Default)]
pub(crate) struct Client {
    waiters: HashMap<RequestId, Waiter>,
    /// When each request is to be answered `Late` if nothing else came.
    late_checks: BTreeSet<(Time, RequestId)>,
}

impl Client {
    /// When [`Client::on_timer`] must next run.
    pub(crate) fn next_check(&self) -> Option<Time> {
        self.late_checks.first().map(|(t, _)| *t)
    }

    /// A request from the SDK: finds a route (unless the caller named one) and sends.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn request(
        &mut self,
        engine: &mut Engine,
        metrics: &Metrics,
        server: NodeId,
        body: Vec<u8>,
        options: RequestOptions,
        reply: oneshot::Sender<Result<Outcome, NodeError>>,
        t: Time,
    ) {
        let waiter = Waiter::new(server, body, options, reply);
        self.send_attempt(engine, metrics, waiter, t);
    }

    /// Sends (or re-sends on a new route) a waiter's request.
    fn send_attempt(&mut self, engine: &mut Engine, metrics: &Metrics, mut w: Waiter, t: Time) {
        let route = match w.options.route.take() {
            Some(r) => Some(r),
            None => pick_route(engine, &w),
        };
        let Some(route) = route else {
            let err = NodeError::NoRoute {
                server: crate::key_hex(&w.server),
                body_len: w.body.len(),
                max_rtt_ms: w.options.max_rtt_ms,
            };
            return w.fail(err);
        };
        let sent = engine.send_request(
            route.clone(),
            w.body.clone(),
            w.options.response_limit,
            w.options.late_fee_rate,
            t,
        );
        match sent {
            Ok(id) => {
                w.route = route;
                metrics.requests_sent.inc();
                self.waiters.insert(id, w);
            }
            Err(e) => w.fail(e.into()),
        }
    }

    /// Answers `Late` every request whose late check is due.
    pub(crate) fn on_timer(&mut self, metrics: &Metrics, t: Time) {
        while let Some(&(at, id)) = self.late_checks.first() {
            if at > t {
                break;
            }
            self.late_checks.pop_first();
            if let Some(w) = self.waiters.get_mut(&id) {
                let overdue_ms = w.deadline.map_or(0, |d| t.ms().saturating_sub(d.ms()));
                metrics.outcome("late");
                w.answer(Ok(Outcome::Late {
                    request: id,
                    overdue_ms,
                    fees_received: w.fees,
                    paid: w.paid,
                }));
            }
        }
    }

    /// What an engine event means for the requests waiting here.
    pub(crate) fn on_event(&mut self, engine: &mut Engine, metrics: &Metrics, event: &Event) {
        match event {
            Event::RequestSent {
                request,
                deadline,
                amount,
                ..
            } => {
                let _span = info_span!("request", id = %request).entered();
                debug!(%deadline, "sent");
                if let Some(w) = self.waiters.get_mut(request) {
                    w.deadline = Some(*deadline);
                    w.paid = w.paid.checked_add(*amount).unwrap_or(Amount(u128::MAX));
                    let check = Time(deadline.ms().saturating_add(w.options.late_after_ms));
                    self.late_checks.insert((check, *request));
                }
            }
            Event::ResponseDelivered {
                request,
                body,
                response,
                latency_ms,
                on_time,
                fees_received,
            } => {
                if let Some(mut w) = self.waiters.remove(request) {
                    metrics.outcome("response");
                    metrics.latency(*latency_ms);
                    w.answer(Ok(Outcome::Response {
                        request: *request,
                        body: body.clone(),
                        response: response.clone(),
                        latency_ms: *latency_ms,
                        on_time: *on_time,
                        fees_received: *fees_received,
                        paid: w.paid,
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
                    metrics.outcome("proof");
                    w.proofs.push(*channel);
                    let proof = Outcome::Proof {
                        request: *request,
                        channel: *channel,
                        severer: *severer,
                        latency_ms: *latency_ms,
                        fees_received: *fees_received,
                        paid: w.paid,
                        proofs: w.proofs.clone(),
                    };
                    if w.reply.is_some() && w.reroutes < w.options.max_reroutes {
                        w.reroutes += 1;
                        info!(%request, %channel, "proof received: re-routing");
                        let reply = w.reply.take();
                        let (tx, rx) = oneshot::channel();
                        w.reply = Some(tx);
                        self.send_attempt(engine, metrics, w, now());
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
                    metrics.outcome("rejected");
                    w.answer(Ok(Outcome::Rejected {
                        request: *request,
                        reason: format!("{reason:?}"),
                        refunded: *refunded,
                        paid: w.paid,
                    }));
                }
            }
            Event::LateFeeReceived {
                request, amount, ..
            } => {
                if let Some(w) = self.waiters.get_mut(request) {
                    w.fees = w.fees.checked_add(*amount).unwrap_or(w.fees);
                }
            }
            _ => {}
        }
    }
}

/// How many routes a request looks through for one whose first hop is connected.
const ROUTE_CHOICES: usize = 4;

/// The cheapest route for `w` whose first hop is connected now; else the cheapest
/// (its request waits for the reconnection, its deadline running). A request held for
/// a reconnection reaches its downstream late, which answers late by our clock
/// without knowing it: the shortfall in late fees would count against an honest edge.
fn pick_route(engine: &Engine, w: &Waiter) -> Option<Route> {
    let bytes = (w.body.len() as u64).saturating_add(w.options.response_limit);
    let first_ready = |r: &Route| r.channels.first().is_some_and(|c| engine.channel_ready(*c));
    let cheapest = engine
        .quote(&w.server, bytes, w.options.max_rtt_ms, 1)
        .into_iter()
        .next()?
        .route;
    if first_ready(&cheapest) {
        return Some(cheapest);
    }
    Some(
        engine
            .quote(&w.server, bytes, w.options.max_rtt_ms, ROUTE_CHOICES)
            .into_iter()
            .map(|q| q.route)
            .find(|r| first_ready(r))
            .unwrap_or(cheapest),
    )
}

#[cfg(test)]
mod tests {
    use por_protocol::messages::RejectReason;
    use por_protocol::{Deployment, EngineConfig, Keypair};

    use super::*;

    /// A client with one request waiting, sent for `amount` with its deadline at
    /// 100 ms; and the engine its events come from.
    fn sent(
        amount: Amount,
    ) -> (
        Client,
        Engine,
        RequestId,
        oneshot::Receiver<Result<Outcome, NodeError>>,
    ) {
        let mut engine = Engine::new(
            EngineConfig::default(),
            Keypair::from_seed([1; 32]),
            Deployment::of("testnet", "por.testnet"),
            Time(0),
        );
        let mut client = Client::default();
        let (tx, rx) = oneshot::channel();
        let id = RequestId([7; 16]);
        let options = RequestOptions {
            late_after_ms: 50,
            ..RequestOptions::default()
        };
        let server = Keypair::from_seed([2; 32]).id();
        client
            .waiters
            .insert(id, Waiter::new(server, b"x".to_vec(), options, tx));
        client.on_event(
            &mut engine,
            &Metrics::default(),
            &Event::RequestSent {
                request: id,
                first_hop: server,
                amount,
                deadline: Time(100),
            },
        );
        (client, engine, id, rx)
    }

    #[test]
    fn a_refused_request_says_what_it_paid_and_what_came_back() {
        let (mut client, mut engine, id, mut rx) = sent(Amount(700));
        client.on_event(
            &mut engine,
            &Metrics::default(),
            &Event::RequestRejected {
                request: id,
                reason: RejectReason::Overloaded,
                refunded: Amount(700),
            },
        );
        match rx.try_recv() {
            Ok(Ok(Outcome::Rejected {
                paid,
                refunded,
                reason,
                ..
            })) => {
                assert_eq!((paid, refunded), (Amount(700), Amount(700)));
                assert_eq!(reason, "Overloaded");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_late_request_says_what_it_paid() {
        let (mut client, _engine, _id, mut rx) = sent(Amount(700));
        client.on_timer(&Metrics::default(), Time(149));
        assert!(rx.try_recv().is_err(), "not late before its check");
        client.on_timer(&Metrics::default(), Time(160));
        match rx.try_recv() {
            Ok(Ok(Outcome::Late {
                paid, overdue_ms, ..
            })) => assert_eq!((paid, overdue_ms), (Amount(700), 60)),
            other => panic!("{other:?}"),
        }
    }
}
