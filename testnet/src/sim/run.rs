//! The event loop: virtual time advances from one scheduled event to the next;
//! each node's outputs are drained after every input, its writes persisted before its
//! frames leave, and frames delivered over ordered links with their latency.

use std::cmp::Reverse;

use rand::Rng;

use por_protocol::types::{Route, SeverReason};
use por_protocol::{messages, ChainAction, ChainEvent, NodeId, Time};

use crate::scenario::FaultSpec;

/// How long a simulated node waits for a severing notice it did not sign to become
/// final on chain before submitting it itself (the node's default, `NodeBuilder::watch_after`).
const WATCH_MS: u64 = 10_000;

use super::{Ev, Record, Report, Sim};

impl Sim {
    /// Runs to the scenario's end and returns the report.
    pub fn run(mut self) -> Report {
        let end = Time(self.scenario.duration_ms);
        while let Some(Reverse((t, _, seq))) = self.queue.pop() {
            if t > end {
                break;
            }
            if let Some(ev) = self.pending_events.remove(&seq) {
                self.step(t, ev);
            }
        }
        self.finish()
    }

    pub(super) fn step(&mut self, now: Time, ev: Ev) {
        match ev {
            Ev::Wake(i) => {
                self.nodes[i].wakes.remove(&now);
                if self.nodes[i].online {
                    self.nodes[i].node.engine.handle_timeout(now);
                    self.drain(i, now);
                }
            }
            Ev::Deliver { from, to, frame } => {
                if !self.nodes[to].online {
                    return;
                }
                self.report.frames = self.report.frames.saturating_add(1);
                let from_id = self.nodes[from].node.key.id();
                if let Err(e) = self.nodes[to]
                    .node
                    .engine
                    .handle_frame(from_id, &frame, now)
                {
                    let mut r = Record::new(now, &self.nodes[to].name, "frame_refused");
                    r.peer = Some(self.nodes[from].name.clone());
                    r.detail = Some(e.to_string());
                    self.report.records.push(r);
                }
                self.drain(to, now);
            }
            Ev::SendRequest(k) => self.send_request(k, now),
            Ev::Respond {
                node,
                request,
                body,
            } => {
                if self.nodes[node].online {
                    // The request may have ended meanwhile (its upstream edge severed, or
                    // the node restarted): the answer is then refused, which is correct.
                    if let Err(e) = self.nodes[node].node.engine.respond(request, body, now) {
                        let mut r = Record::new(now, &self.nodes[node].name, "response_refused");
                        r.request = Some(self.label(&request));
                        r.detail = Some(e.to_string());
                        self.report.records.push(r);
                    }
                    self.drain(node, now);
                }
            }
            Ev::GoOffline(i) => {
                self.nodes[i].online = false;
                let r = Record::new(now, &self.nodes[i].name, "node_offline");
                self.report.records.push(r);
                // Its neighbours see the connection drop.
                let me = self.nodes[i].node.key.id();
                for j in self.neighbours(i) {
                    if self.nodes[j].online {
                        self.nodes[j].node.engine.peer_disconnected(me, now);
                        self.drain(j, now);
                    }
                }
            }
            Ev::GoOnline { node, restart } => self.go_online(node, restart, now),
            Ev::ForceSever { node, channel } => {
                if self.nodes[node].online {
                    if let Err(e) =
                        self.nodes[node]
                            .node
                            .engine
                            .sever(channel, SeverReason::Operator, now)
                    {
                        self.violation(now, format!("forced sever failed: {e}"));
                    }
                    self.drain(node, now);
                }
            }
            Ev::ChainSever(notice) => {
                if !self.chain_topology.sever(notice.notice.channel) {
                    return;
                }
                self.chain_severed.push((*notice).clone());
                let r = Record {
                    detail: Some(format!("edge {} severed on chain", notice.notice.channel)),
                    peer: Some(self.name_of(&notice.notice.peer)),
                    ..Record::new(
                        now,
                        &self.name_of(&notice.notice.severer),
                        "chain_sever_final",
                    )
                };
                self.report.records.push(r);
                for i in 0..self.nodes.len() {
                    if self.nodes[i].online {
                        let ev = ChainEvent::EdgeSevered((*notice).clone());
                        self.nodes[i].node.engine.handle_chain_event(ev, now);
                        self.drain(i, now);
                    }
                }
            }
        }
    }

    pub(super) fn go_online(&mut self, i: usize, restart: bool, now: Time) {
        if restart {
            // A crash: everything not durable is gone. Rebuild from the store and the
            // chain, then reconnect to every neighbour.
            let topology = self.chain_topology.clone();
            self.nodes[i].node.crash(topology, now);
            self.nodes[i].wakes.clear();
        }
        self.nodes[i].online = true;
        // Catch up with the chain: severances finalized while it was away.
        for notice in self.chain_severed.clone() {
            self.nodes[i]
                .node
                .engine
                .handle_chain_event(ChainEvent::EdgeSevered(notice), now);
        }
        let mut r = Record::new(now, &self.nodes[i].name, "node_online");
        r.detail = Some(
            if restart {
                "restarted from store"
            } else {
                "resumed"
            }
            .into(),
        );
        self.report.records.push(r);
        let me = self.nodes[i].node.key.id();
        for j in self.neighbours(i) {
            if !self.nodes[j].online {
                continue;
            }
            let pj = self.nodes[j].node.key.id();
            // A resumed node saw its connections drop too.
            self.nodes[i].node.engine.peer_disconnected(pj, now);
            self.nodes[i].node.engine.peer_connected(pj, now);
            self.nodes[j].node.engine.peer_connected(me, now);
            self.drain(j, now);
        }
        self.drain(i, now);
    }

    pub(super) fn send_request(&mut self, k: usize, now: Time) {
        let spec = self.scenario.requests[k].clone();
        let label = format!("r{}", k + 1);
        let (Ok(c), Ok(s)) = (self.lookup(&spec.client), self.lookup(&spec.server)) else {
            return;
        };
        if !self.nodes[c].online {
            let mut r = Record::new(now, &spec.client, "request_failed");
            r.request = Some(label);
            r.detail = Some("client offline".into());
            self.report.records.push(r);
            return;
        }
        let body = spec.body.clone().into_bytes();
        let response_limit = spec.response_limit.unwrap_or(body.len() as u64);
        let bytes = (body.len() as u64).saturating_add(response_limit);
        let route = match &spec.route {
            Some(names) => self.route_by_names(c, names),
            None => {
                let server = self.nodes[s].node.key.id();
                let max = spec.max_rtt_ms.unwrap_or(u64::MAX);
                self.nodes[c]
                    .node
                    .engine
                    .quote(&server, bytes, max, 1)
                    .into_iter()
                    .next()
                    .map(|q| q.route)
                    .ok_or_else(|| "no route within the bound".to_string())
            }
        };
        let result = route.and_then(|route| {
            self.nodes[c]
                .node
                .engine
                .send_request(route, body, response_limit, spec.late_fee_rate.into(), now)
                .map_err(|e| e.to_string())
        });
        match result {
            Ok(id) => {
                self.labels.insert(id, label);
            }
            Err(e) => {
                let mut r = Record::new(now, &spec.client, "request_failed");
                r.request = Some(label);
                r.detail = Some(e);
                self.report.records.push(r);
            }
        }
        self.drain(c, now);
    }

    pub(super) fn route_by_names(&self, client: usize, names: &[String]) -> Result<Route, String> {
        let mut nodes = Vec::new();
        for n in names {
            let i = self
                .by_name
                .get(n)
                .ok_or_else(|| format!("unknown node {n:?} in route"))?;
            nodes.push(self.nodes[*i].node.key.id());
        }
        if nodes.first() != Some(&self.nodes[client].node.key.id()) {
            return Err("route must start at the client".into());
        }
        let topo = self.nodes[client].node.engine.topology();
        let mut channels = Vec::new();
        for w in nodes.windows(2) {
            let e = topo.live_edge_between(&w[0], &w[1]).ok_or_else(|| {
                format!(
                    "no live edge {}-{}",
                    self.name_of(&w[0]),
                    self.name_of(&w[1])
                )
            })?;
            channels.push(e.id);
        }
        Ok(Route { nodes, channels })
    }

    /// Persists writes, releases frames, maps events, schedules wakes for node `i`.
    pub(super) fn drain(&mut self, i: usize, now: Time) {
        loop {
            let mut progressed = false;
            let mut refused = Vec::new();
            if self.nodes[i].node.persist(|e| refused.push(e)) {
                progressed = true;
            }
            for e in refused {
                let name = self.nodes[i].name.clone();
                self.violation(now, format!("{name}: store refused a write: {e}"));
            }
            while let Some(t) = self.nodes[i].node.engine.poll_transmit() {
                progressed = true;
                self.transmit(i, t.to, &t.message, now);
            }
            while let Some(ev) = self.nodes[i].node.engine.poll_event() {
                progressed = true;
                self.on_event(i, ev, now);
            }
            while let Some(action) = self.nodes[i].node.engine.poll_chain_action() {
                progressed = true;
                // Our own notice goes on chain after the chain's delay; someone else's
                // only if it is still not final after the watch bound (then it is a
                // repeat the chain ignores, unless its severer never submitted it).
                let (notice, delay) = match action {
                    ChainAction::Sever(n) => (n, self.scenario.chain_delay_ms),
                    ChainAction::Watch(n) => {
                        (n, self.scenario.chain_delay_ms.saturating_add(WATCH_MS))
                    }
                    // The simulated chain closes no channels, so no close is ever
                    // challenged here; closes are tested on the embedded chain.
                    ChainAction::Challenge { .. } => continue,
                };
                self.push(now.plus(delay), Ev::ChainSever(Box::new(notice)));
            }
            if !progressed {
                break;
            }
        }
        if let Some(t) = self.nodes[i].node.engine.poll_timeout() {
            if self.nodes[i].wakes.insert(t) {
                self.push(t.max(now), Ev::Wake(i));
            }
        }
    }

    pub(super) fn transmit(
        &mut self,
        from: usize,
        to: NodeId,
        message: &por_protocol::messages::Message,
        now: Time,
    ) {
        let Some(&j) = self.index.get(&to) else {
            return;
        };
        if !self.nodes[from].online {
            return;
        }
        let frame = match messages::encode_frame(message) {
            Ok(f) => f,
            Err(e) => {
                self.violation(now, format!("encode failed: {e}"));
                return;
            }
        };
        let (from_name, to_name) = (self.nodes[from].name.clone(), self.nodes[j].name.clone());
        let mut extra = 0u64;
        for f in &self.scenario.faults {
            match f {
                FaultSpec::Drop {
                    from: a,
                    to: b,
                    probability,
                    from_ms,
                    until_ms,
                } if *a == from_name
                    && *b == to_name
                    && now.ms() >= *from_ms
                    && until_ms.is_none_or(|u| now.ms() < u)
                    && self.rng.gen_bool(*probability) =>
                {
                    return;
                }
                FaultSpec::Delay {
                    from: a,
                    to: b,
                    extra_ms,
                    from_ms,
                    until_ms,
                } if *a == from_name
                    && *b == to_name
                    && now.ms() >= *from_ms
                    && until_ms.is_none_or(|u| now.ms() < u) =>
                {
                    extra = extra.saturating_add(*extra_ms);
                }
                _ => {}
            }
        }
        let Some(link) = self.links.get_mut(&(from, j)) else {
            return;
        };
        // Links are ordered, like TCP: a delayed frame holds back the ones after it.
        let arrival = now
            .plus(link.latency_ms.saturating_add(extra))
            .max(link.last_arrival);
        link.last_arrival = arrival;
        self.push(arrival, Ev::Deliver { from, to: j, frame });
    }
}
