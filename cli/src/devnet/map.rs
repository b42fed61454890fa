//! `por devnet map`: the live map of the whole devnet (the node's page,
//! [`por_node::map::PAGE`]), its state built from the chain's snapshot and every
//! host's status, at most once a second however many browsers watch.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::extract::State as AxumState;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use por_chain::Chain as _;
use serde_json::{json, Value};
use tokio::sync::Mutex;

use super::state::State;

/// How long one state is served before it is built again.
const FRESH_FOR: Duration = Duration::from_millis(500);
/// How long a host has to answer its status before it counts as down.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

struct Map {
    devnet: State,
    chain: por_chain::RemoteClient,
    last: Mutex<Option<(Instant, Value)>>,
}

impl Map {
    /// The devnet's map state, built again when older than [`FRESH_FOR`].
    async fn state(&self) -> Result<Value> {
        let mut last = self.last.lock().await;
        if let Some((at, v)) = last.as_ref() {
            if at.elapsed() < FRESH_FOR {
                return Ok(v.clone());
            }
        }
        let snapshot = self
            .chain
            .snapshot()
            .await
            .context("reading the chain's snapshot")?;
        // Every host at once: a dead one costs its timeout, not everyone's.
        let asks = self.devnet.hosts.iter().map(|h| async move {
            let status = if h.node.alive() {
                tokio::time::timeout(STATUS_TIMEOUT, super::control(h, json!({"op": "status"})))
                    .await
                    .ok()
                    .and_then(Result::ok)
            } else {
                None
            };
            (h.id().to_string(), status)
        });
        let reports: BTreeMap<_, _> = futures::future::join_all(asks)
            .await
            .into_iter()
            .filter_map(|(id, s)| por_node::parse_key(&id).map(|k| (k, s)))
            .collect();
        let v = por_node::map::state("devnet", &snapshot, None, &reports, por_node::map::now_ms());
        *last = Some((Instant::now(), v.clone()));
        Ok(v)
    }
}

async fn page() -> Html<&'static str> {
    Html(por_node::map::PAGE)
}

async fn state(AxumState(map): AxumState<Arc<Map>>) -> Response {
    match map.state().await {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")).into_response(),
    }
}

/// Serves the map of the devnet in `devnet` on `listen` until the process ends;
/// prints `{"map": "http://…/map"}` once listening.
pub(crate) async fn serve(devnet: State, listen: &str) -> Result<()> {
    let chain_addr: std::net::SocketAddr =
        devnet.chain_addr.parse().context("the chain's address")?;
    let map = Arc::new(Map {
        chain: por_chain::RemoteClient::new(chain_addr, "map"),
        devnet,
        last: Mutex::new(None),
    });
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/", get(page))
        .route("/map", get(page))
        .route("/map/state", get(state))
        .with_state(map);
    println!("{}", json!({"map": format!("http://{bound}/map")}));
    por_node::http::serve(
        listener,
        app,
        por_node::http::HttpLimits::default(),
        "devnet map",
    )
    .await
    .context("serving the map")?;
    Ok(())
}
