//! Prometheus metrics: counters and gauges kept with atomics, served as the text
//! exposition format on `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use por_protocol::{Amount, NodeId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::NodeError;

/// A counter or gauge.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// Subtracts one (gauges), not below zero.
    pub fn dec(&self) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(1))
            });
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// Adds an amount (saturating at `u64::MAX` yocto per update).
    pub fn add_amount(&self, a: Amount) {
        self.add(u64::try_from(a.0).unwrap_or(u64::MAX));
    }
    /// Sets the value (gauges).
    pub fn set(&self, n: u64) {
        self.0.store(n, Ordering::Relaxed);
    }
    /// The value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Everything a node counts.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Requests sent as client.
    pub requests_sent: Counter,
    /// Requests relayed.
    pub requests_relayed: Counter,
    /// Requests served.
    pub requests_served: Counter,
    /// Outcomes delivered to the client, by kind.
    outcomes: Mutex<BTreeMap<&'static str, u64>>,
    /// Fees kept for relaying (yocto).
    pub fees_earned: Counter,
    /// Late fees paid upstream (yocto).
    pub late_fees_paid: Counter,
    /// Late fees received from downstream (yocto).
    pub late_fees_received: Counter,
    /// Frames received.
    pub frames_in: Counter,
    /// Frames sent.
    pub frames_out: Counter,
    /// Engine writes persisted.
    pub writes: Counter,
    /// Group commits.
    pub commits: Counter,
    /// Peers connected now.
    pub peers_connected: Counter,
    /// Peers dropped for bad input.
    pub peers_dropped: Counter,
    /// Connections refused (no channel with that node).
    pub peers_refused: Counter,
    /// Edges we severed.
    pub severs: Counter,
    /// Requests in flight here.
    pub in_flight: Counter,
    /// Frames waiting for durability.
    pub transmits_waiting: Counter,
    /// Client latency: sum and count (ms).
    latency_sum: Counter,
    latency_count: Counter,
    /// Observed and promised round trip per peer (ms).
    edges: Mutex<BTreeMap<NodeId, (u64, u64)>>,
}

impl Metrics {
    /// Counts an outcome.
    pub fn outcome(&self, kind: &'static str) {
        if let Ok(mut o) = self.outcomes.lock() {
            *o.entry(kind).or_default() += 1;
        }
    }

    /// Outcomes so far by kind.
    pub fn outcomes(&self) -> BTreeMap<&'static str, u64> {
        self.outcomes.lock().map(|o| o.clone()).unwrap_or_default()
    }

    /// Records a client latency.
    pub fn latency(&self, ms: u64) {
        self.latency_sum.add(ms);
        self.latency_count.inc();
    }

    /// Records a measured round trip on an edge.
    pub fn edge_latency(&self, peer: NodeId, rtt_ms: u64, promised_rtt_ms: u64) {
        if let Ok(mut e) = self.edges.lock() {
            e.insert(peer, (rtt_ms, promised_rtt_ms));
        }
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let mut one = |name: &str, help: &str, kind: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        one(
            "por_requests_sent_total",
            "Requests sent as client.",
            "counter",
            self.requests_sent.get(),
        );
        one(
            "por_requests_relayed_total",
            "Requests relayed.",
            "counter",
            self.requests_relayed.get(),
        );
        one(
            "por_requests_served_total",
            "Requests served.",
            "counter",
            self.requests_served.get(),
        );
        one(
            "por_fees_earned_yocto_total",
            "Fees kept for relaying.",
            "counter",
            self.fees_earned.get(),
        );
        one(
            "por_late_fees_paid_yocto_total",
            "Late fees paid upstream.",
            "counter",
            self.late_fees_paid.get(),
        );
        one(
            "por_late_fees_received_yocto_total",
            "Late fees received.",
            "counter",
            self.late_fees_received.get(),
        );
        one(
            "por_frames_in_total",
            "Frames received.",
            "counter",
            self.frames_in.get(),
        );
        one(
            "por_frames_out_total",
            "Frames sent.",
            "counter",
            self.frames_out.get(),
        );
        one(
            "por_writes_total",
            "Engine writes persisted.",
            "counter",
            self.writes.get(),
        );
        one(
            "por_commits_total",
            "Group commits.",
            "counter",
            self.commits.get(),
        );
        one(
            "por_peers_connected",
            "Peers connected.",
            "gauge",
            self.peers_connected.get(),
        );
        one(
            "por_peers_dropped_total",
            "Peers dropped for bad input.",
            "counter",
            self.peers_dropped.get(),
        );
        one(
            "por_peers_refused_total",
            "Connections refused.",
            "counter",
            self.peers_refused.get(),
        );
        one(
            "por_severs_total",
            "Edges severed by this node.",
            "counter",
            self.severs.get(),
        );
        one(
            "por_in_flight",
            "Requests in flight here.",
            "gauge",
            self.in_flight.get(),
        );
        one(
            "por_transmits_waiting",
            "Frames waiting for durability.",
            "gauge",
            self.transmits_waiting.get(),
        );
        one(
            "por_client_latency_ms_sum",
            "Client latency sum.",
            "counter",
            self.latency_sum.get(),
        );
        one(
            "por_client_latency_ms_count",
            "Client latency count.",
            "counter",
            self.latency_count.get(),
        );
        let _ = writeln!(s, "# HELP por_outcomes_total Outcomes delivered to the client.\n# TYPE por_outcomes_total counter");
        for (k, v) in self.outcomes() {
            let _ = writeln!(s, "por_outcomes_total{{kind=\"{k}\"}} {v}");
        }
        let _ = writeln!(s, "# HELP por_edge_rtt_ms Round trip measured on an edge at its last sync.\n# TYPE por_edge_rtt_ms gauge");
        let edges = self.edges.lock().map(|e| e.clone()).unwrap_or_default();
        for (peer, (rtt, _)) in &edges {
            let _ = writeln!(
                s,
                "por_edge_rtt_ms{{peer=\"{}\"}} {rtt}",
                crate::key_hex(peer)
            );
        }
        let _ = writeln!(s, "# HELP por_edge_promised_rtt_ms Round trip the edge promises.\n# TYPE por_edge_promised_rtt_ms gauge");
        for (peer, (_, promised)) in &edges {
            let _ = writeln!(
                s,
                "por_edge_promised_rtt_ms{{peer=\"{}\"}} {promised}",
                crate::key_hex(peer)
            );
        }
        s
    }
}

/// Serves `metrics` over HTTP on `addr`; returns the bound address.
pub async fn serve(addr: &str, metrics: Arc<Metrics>) -> Result<String, NodeError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| NodeError::Config {
            source_name: "metrics".into(),
            key: "metrics_listen".into(),
            detail: format!("cannot listen on {addr}: {e}"),
        })?;
    let bound = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| addr.to_string());
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                continue;
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let n = match tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    sock.read(&mut buf),
                )
                .await
                {
                    Ok(Ok(n)) => n,
                    _ => return,
                };
                let req = String::from_utf8_lossy(&buf[..n]);
                let (status, body) = if req.starts_with("GET /metrics") {
                    ("200 OK", metrics.render())
                } else {
                    ("404 Not Found", "not found\n".to_string())
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    Ok(bound)
}
