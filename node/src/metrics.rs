//! Prometheus metrics, kept with `prometheus-client` and encoded as OpenMetrics text on
//! `/metrics` (base units: seconds, bytes; money in yoctoNEAR, the chain's base unit).
//! The same listener serves the node's live map (`/map`, [`crate::map`]).

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use por_protocol::{Amount, NodeId};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter as PromCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge as PromGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::{NodeError, NodeHandle};

/// A counter of events (requests, frames, commits).
pub type Counter = PromCounter<u64>;
/// A counter of money, in yoctoNEAR (`f64`: sums past `u64::MAX` yocto, 18 µNEAR, are
/// common).
pub type MoneyCounter = PromCounter<f64, AtomicU64>;
/// A gauge of a count (peers, requests in flight).
pub type Gauge = PromGauge<i64>;
/// A gauge in seconds.
type SecondsGauge = PromGauge<f64, AtomicU64>;

/// Labels of an outcome counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    kind: &'static str,
}

/// Labels of a per-peer gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    peer: String,
}

/// Everything a node counts, registered once in its registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Requests sent as client.
    pub requests_sent: Counter,
    /// Requests relayed.
    pub requests_relayed: Counter,
    /// Requests served.
    pub requests_served: Counter,
    outcomes: Family<OutcomeLabels, Counter>,
    /// Fees kept for relaying (yoctoNEAR).
    pub fees_earned: MoneyCounter,
    /// Late fees paid upstream (yoctoNEAR).
    pub late_fees_paid: MoneyCounter,
    /// Late fees received from downstream (yoctoNEAR).
    pub late_fees_received: MoneyCounter,
    /// Frames received.
    pub frames_in: Counter,
    /// Frames sent.
    pub frames_out: Counter,
    /// Engine writes persisted.
    pub writes: Counter,
    /// Group commits.
    pub commits: Counter,
    /// Peers connected now.
    pub peers_connected: Gauge,
    /// Peers dropped for bad input.
    pub peers_dropped: Counter,
    /// Connections refused (no channel with that node).
    pub peers_refused: Counter,
    /// Edges we severed.
    pub severs: Counter,
    /// Requests in flight here.
    pub in_flight: Gauge,
    /// Frames waiting for durability.
    pub transmits_waiting: Gauge,
    /// 1 while the node sheds load (admission by delay), else 0.
    pub shedding: Gauge,
    latency: Histogram,
    edge_rtt: Family<PeerLabels, SecondsGauge>,
    edge_promised_rtt: Family<PeerLabels, SecondsGauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut r = Registry::with_prefix("por");
        let m = Metrics {
            requests_sent: Counter::default(),
            requests_relayed: Counter::default(),
            requests_served: Counter::default(),
            outcomes: Family::default(),
            fees_earned: MoneyCounter::default(),
            late_fees_paid: MoneyCounter::default(),
            late_fees_received: MoneyCounter::default(),
            frames_in: Counter::default(),
            frames_out: Counter::default(),
            writes: Counter::default(),
            commits: Counter::default(),
            peers_connected: Gauge::default(),
            peers_dropped: Counter::default(),
            peers_refused: Counter::default(),
            severs: Counter::default(),
            in_flight: Gauge::default(),
            transmits_waiting: Gauge::default(),
            shedding: Gauge::default(),
            // 1 ms to 65 s.
            latency: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            edge_rtt: Family::default(),
            edge_promised_rtt: Family::default(),
            registry: Registry::default(),
        };
        let yocto = || Unit::Other("yoctonear".into());
        r.register(
            "requests_sent",
            "Requests sent as client",
            m.requests_sent.clone(),
        );
        r.register(
            "requests_relayed",
            "Requests relayed",
            m.requests_relayed.clone(),
        );
        r.register(
            "requests_served",
            "Requests served",
            m.requests_served.clone(),
        );
        r.register(
            "outcomes",
            "Outcomes delivered to the client, by kind",
            m.outcomes.clone(),
        );
        r.register_with_unit(
            "fees_earned",
            "Fees kept for relaying",
            yocto(),
            m.fees_earned.clone(),
        );
        r.register_with_unit(
            "late_fees_paid",
            "Late fees paid upstream",
            yocto(),
            m.late_fees_paid.clone(),
        );
        r.register_with_unit(
            "late_fees_received",
            "Late fees received from downstream",
            yocto(),
            m.late_fees_received.clone(),
        );
        r.register("frames_in", "Frames received", m.frames_in.clone());
        r.register("frames_out", "Frames sent", m.frames_out.clone());
        r.register("writes", "Engine writes persisted", m.writes.clone());
        r.register("commits", "Group commits", m.commits.clone());
        r.register(
            "peers_connected",
            "Peers connected now",
            m.peers_connected.clone(),
        );
        r.register(
            "peers_dropped",
            "Peers dropped for bad input",
            m.peers_dropped.clone(),
        );
        r.register(
            "peers_refused",
            "Connections refused (no channel with that node)",
            m.peers_refused.clone(),
        );
        r.register("severs", "Edges severed by this node", m.severs.clone());
        r.register("in_flight", "Requests in flight here", m.in_flight.clone());
        r.register(
            "transmits_waiting",
            "Frames waiting for their writes to be durable",
            m.transmits_waiting.clone(),
        );
        r.register(
            "shedding",
            "1 while commits wait past the admission target and new requests are refused",
            m.shedding.clone(),
        );
        r.register_with_unit(
            "client_latency",
            "Time from sending a request to its response, as client",
            Unit::Seconds,
            m.latency.clone(),
        );
        r.register_with_unit(
            "edge_rtt",
            "Round trip measured on an edge at its last sync",
            Unit::Seconds,
            m.edge_rtt.clone(),
        );
        r.register_with_unit(
            "edge_promised_rtt",
            "Round trip the edge promises",
            Unit::Seconds,
            m.edge_promised_rtt.clone(),
        );
        Metrics { registry: r, ..m }
    }
}

/// An amount as the `f64` a money counter adds.
pub fn yocto(a: Amount) -> f64 {
    // Exact to 2^53 yocto; beyond, to f64's 53 bits, which is what Prometheus keeps.
    a.0 as f64
}

impl Metrics {
    /// Counts an outcome.
    pub fn outcome(&self, kind: &'static str) {
        self.outcomes.get_or_create(&OutcomeLabels { kind }).inc();
    }

    /// Outcomes so far of one kind.
    pub fn outcomes_of(&self, kind: &'static str) -> u64 {
        self.outcomes.get_or_create(&OutcomeLabels { kind }).get()
    }

    /// Records a client latency.
    pub fn latency(&self, ms: u64) {
        self.latency.observe(ms as f64 / 1000.0);
    }

    /// Records a measured round trip on an edge.
    pub fn edge_latency(&self, peer: NodeId, rtt_ms: u64, promised_rtt_ms: u64) {
        let l = PeerLabels {
            peer: crate::key_hex(&peer),
        };
        self.edge_rtt.get_or_create(&l).set(rtt_ms as f64 / 1000.0);
        self.edge_promised_rtt
            .get_or_create(&l)
            .set(promised_rtt_ms as f64 / 1000.0);
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut s = String::new();
        // Writing into a String cannot fail; an encoder error would be a bug of ours.
        if let Err(e) = encode(&mut s, &self.registry) {
            tracing::error!("encoding metrics: {e}");
        }
        s
    }
}

/// The content type of [`Metrics::render`].
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of [`prometheus_text`].
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// An OpenMetrics exposition in the Prometheus text format (0.0.4), for scrapers that
/// do not ask for OpenMetrics, `promtool check metrics` among them. The two differ,
/// for what we expose, in three things only: a counter's family is named with its
/// `_total` suffix, and there are no `# UNIT` or `# EOF` lines. prometheus-client
/// encodes OpenMetrics alone, so this small rewrite is ours.
pub fn prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::BTreeSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta.and_then(|(p, rest)| rest.split_once(' ').map(|(n, tail)| (p, n, tail))) {
            Some((p, name, tail)) if counters.contains(name) => {
                out.push_str(&format!("{p}{name}_total {tail}\n"));
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

async fn metrics_page(State(node): State<NodeHandle>, headers: HeaderMap) -> Response {
    let wants_openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    let text = node.metrics().render();
    if wants_openmetrics {
        ([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response()
    } else {
        (
            [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
            prometheus_text(&text),
        )
            .into_response()
    }
}

async fn map_page() -> Html<&'static str> {
    Html(crate::map::PAGE)
}

async fn map_state(State(node): State<NodeHandle>) -> Response {
    match crate::map::neighbourhood(&node).await {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

/// Binds the metrics listener on `addr` (before the node starts, so a bad address is
/// a configuration error).
pub(crate) async fn bind(addr: &str) -> Result<tokio::net::TcpListener, NodeError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| NodeError::Config {
            source_name: "metrics".into(),
            key: "metrics_listen".into(),
            detail: format!("cannot listen on {addr}: {e}"),
        })
}

/// Serves `/metrics`, `/map` and `/map/state` for `node` on `listener` (axum on hyper).
pub(crate) fn serve(
    listener: tokio::net::TcpListener,
    node: NodeHandle,
    limits: crate::http::HttpLimits,
) {
    let app = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/map", get(map_page))
        .route("/map/state", get(map_state))
        .with_state(node);
    tokio::spawn(async move {
        if let Err(e) = crate::http::serve(listener, app, limits, "metrics").await {
            tracing::warn!("metrics listener stopped: {e}");
        }
    });
}

/// The address a bound listener is on, as text.
pub(crate) fn bound(listener: &tokio::net::TcpListener, asked: &str) -> String {
    listener
        .local_addr()
        .map(|a: SocketAddr| a.to_string())
        .unwrap_or_else(|_| asked.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_base_units_and_a_histogram() {
        let m = Metrics::default();
        m.requests_sent.inc();
        m.fees_earned
            .inc_by(yocto(Amount(3_000_000_000_000_000_000_000)));
        m.latency(250);
        m.outcome("response");
        m.edge_latency(NodeId([7; 32]), 120, 200);
        let s = m.render();
        assert!(s.contains("por_requests_sent_total 1"), "{s}");
        assert!(
            s.contains("por_fees_earned_yoctonear_total 3e21")
                || s.contains("por_fees_earned_yoctonear_total 3000000000000000000000"),
            "{s}"
        );
        assert!(
            s.contains("por_client_latency_seconds_bucket{le=\"0.256\"} 1"),
            "{s}"
        );
        assert!(
            s.contains("por_client_latency_seconds_bucket{le=\"0.128\"} 0"),
            "{s}"
        );
        assert!(s.contains("por_outcomes_total{kind=\"response\"} 1"), "{s}");
        assert!(s.contains("por_edge_promised_rtt_seconds{peer=\""), "{s}");
        assert!(s.ends_with("# EOF\n"), "{s}");
        assert_eq!(m.outcomes_of("response"), 1);
        let t = prometheus_text(&s);
        assert!(
            t.contains("# TYPE por_requests_sent_total counter\n"),
            "{t}"
        );
        assert!(
            t.contains("# HELP por_requests_sent_total Requests sent as client.\n"),
            "{t}"
        );
        assert!(
            t.contains("# TYPE por_client_latency_seconds histogram\n"),
            "{t}"
        );
        assert!(!t.contains("# UNIT") && !t.contains("# EOF"), "{t}");
    }
}
