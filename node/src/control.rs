//! The control endpoint of a running node (loopback, HTTP with axum on hyper): what
//! `por status`, `por request`, `por quote`, `por channel close`, `por node stop` and
//! `por devnet` talk to. One route, `POST /v1`, a JSON object `{"op": ..., ...}` in,
//! `{"ok": ...}` or `{"err": "..."}` out.
//!
//! Loopback is not a credential: any local process, and a browser page posting to
//! `127.0.0.1`, can reach it. So every request carries the node's control token as
//! `Authorization: Bearer <token>`; the node writes it at start to `control.token` in
//! its data directory, readable by its owner only (mode 0600). A request without it is
//! answered 401. A browser cannot send that header, nor `Content-Type:
//! application/json` (also required), to another origin without a CORS preflight, and
//! the endpoint answers no preflight.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use futures::future::BoxFuture;
use http_body_util::BodyExt as _;
use por_chain::Chain;
use por_protocol::types::Route;
use por_protocol::{Amount, NodeId};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};

use crate::sdk::{NodeHandle, Outcome, RequestOptions, Status};
use crate::NodeError;

/// The largest request or answer body.
const MAX_BODY: usize = 4 << 20;

/// The control token's file name in a node's data directory.
pub const TOKEN_FILE: &str = "control.token";

/// Writes a fresh control token to `data_dir/control.token` (mode 0600, replacing any
/// older one atomically) and returns it.
pub fn write_token(data_dir: &Path) -> Result<String, NodeError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let path = data_dir.join(TOKEN_FILE);
    let tmp = data_dir.join(format!("{TOKEN_FILE}.tmp"));
    let file_err = |p: &Path, e: std::io::Error| NodeError::File {
        path: p.to_path_buf(),
        detail: e.to_string(),
    };
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| file_err(&tmp, e))?;
    f.write_all(token.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| file_err(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| file_err(&path, e))?;
    Ok(token)
}

/// Reads a node's control token from its file.
pub fn read_token(path: &Path) -> Result<String, NodeError> {
    let text = std::fs::read_to_string(path).map_err(|e| NodeError::File {
        path: path.to_path_buf(),
        detail: format!("cannot read the node's control token: {e}"),
    })?;
    Ok(text.trim().to_string())
}

/// Where a node with this data directory keeps its control token.
pub fn token_path(data_dir: &Path) -> PathBuf {
    data_dir.join(TOKEN_FILE)
}

/// Compares two tokens in time independent of where they differ.
fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// An op that a layer above the node adds to its control endpoint (the `por` CLI
/// adds the file layer's `files_get`): the node and the request's JSON object in,
/// the answer's JSON, or why it was refused, out.
pub type ExtraOp =
    Arc<dyn Fn(NodeHandle, Value) -> BoxFuture<'static, Result<Value, String>> + Send + Sync>;

/// The ops added to a control endpoint beside its own, by name. An added op never
/// replaces one of the endpoint's own: those are looked up first.
#[derive(Clone, Default)]
pub struct ExtraOps(BTreeMap<String, ExtraOp>);

impl ExtraOps {
    /// These ops and `op`, served as `name`.
    pub fn with(mut self, name: &str, op: ExtraOp) -> ExtraOps {
        self.0.insert(name.to_string(), op);
        self
    }
}

/// The control endpoint's state: the node, its token and the ops added to it.
struct Control {
    node: NodeHandle,
    token: String,
    extra: ExtraOps,
}

/// `{"err": why}` with `status`.
fn refusal(status: StatusCode, why: String) -> Response {
    (status, axum::Json(json!({ "err": why }))).into_response()
}

async fn handle(
    State(c): State<Arc<Control>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !same_token(given, &c.token) {
        return refusal(
            StatusCode::UNAUTHORIZED,
            "unauthorized: this request does not carry the node's control token (control.token in its data directory)".into(),
        );
    }
    let json_body = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json_body {
        return refusal(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be application/json".into(),
        );
    }
    // Read past the token check, so a stranger learns nothing about the endpoint. A
    // body over MAX_BODY is refused with its own status (413), in the endpoint's JSON.
    let body = match body {
        Ok(body) => body,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return refusal(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the request is larger than the control endpoint takes ({} MiB)",
                    MAX_BODY >> 20
                ),
            )
        }
        Err(e) => return refusal(e.status(), e.body_text()),
    };
    let Ok(Value::Object(req)) = serde_json::from_slice::<Value>(&body) else {
        return refusal(
            StatusCode::BAD_REQUEST,
            "the body is not a JSON object".into(),
        );
    };
    match answer(&c.node, &c.extra, &Value::Object(req)).await {
        Ok(v) => axum::Json(json!({ "ok": v })).into_response(),
        Err(e) => refusal(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
    }
}

/// Serves the control endpoint on `addr` (must be loopback), answering requests that
/// carry `token` (see [`write_token`]).
pub async fn serve(
    addr: &str,
    node: NodeHandle,
    token: String,
    limits: crate::http::HttpLimits,
) -> Result<SocketAddr, NodeError> {
    serve_with(addr, node, token, limits, ExtraOps::default()).await
}

/// [`serve`], with the ops in `extra` served beside the endpoint's own.
pub async fn serve_with(
    addr: &str,
    node: NodeHandle,
    token: String,
    limits: crate::http::HttpLimits,
    extra: ExtraOps,
) -> Result<SocketAddr, NodeError> {
    let bad = |detail: String| NodeError::Config {
        source_name: "settings".into(),
        key: "control".into(),
        detail,
    };
    let sock: SocketAddr = addr.parse().map_err(|e| bad(format!("{addr:?}: {e}")))?;
    if !sock.ip().is_loopback() {
        return Err(bad(format!("{addr} is not a loopback address")));
    }
    let listener = TcpListener::bind(sock)
        .await
        .map_err(|e| bad(format!("cannot listen on {addr}: {e}")))?;
    let bound = listener.local_addr().map_err(|e| bad(e.to_string()))?;
    let app = Router::new()
        .route("/v1", post(handle))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(Arc::new(Control { node, token, extra }));
    tokio::spawn(async move {
        if let Err(e) = crate::http::serve(listener, app, limits, "control").await {
            tracing::warn!("control endpoint stopped: {e}");
        }
    });
    Ok(bound)
}

/// The route through `hops` (node keys or accounts, client first), over the edges the
/// chain lists.
async fn route_through(node: &NodeHandle, hops: &[Value]) -> Result<Route, NodeError> {
    let bad = |detail: String| NodeError::Config {
        source_name: "control".into(),
        key: "route".into(),
        detail,
    };
    let mut nodes = Vec::with_capacity(hops.len());
    for h in hops {
        let who = h
            .as_str()
            .ok_or_else(|| bad(format!("{h} is not a node")))?;
        nodes.push(resolve(node, who).await?);
    }
    if nodes.len() < 2 || nodes[0] != node.id() {
        return Err(bad("a route starts at this node and has a next hop".into()));
    }
    let snapshot = node.chain().snapshot().await?;
    snapshot
        .route_through(nodes)
        .map_err(|(a, b)| bad(format!("no open edge between {a} and {b}")))
}

/// Resolves a node given as 64 hex digits or as a NEAR account.
async fn resolve(node: &NodeHandle, who: &str) -> Result<NodeId, NodeError> {
    if let Some(k) = crate::parse_key(who) {
        return Ok(k);
    }
    let snap = node.chain().snapshot().await?;
    snap.nodes
        .iter()
        .find(|n| n.account == who)
        .map(|n| n.key)
        .ok_or_else(|| NodeError::Config {
            source_name: "request".into(),
            key: "server".into(),
            detail: format!("{who:?} is neither a node key nor a registered account"),
        })
}

fn field<'a>(req: &'a Value, k: &str) -> Result<&'a Value, NodeError> {
    match &req[k] {
        Value::Null => Err(NodeError::Config {
            source_name: "control".into(),
            key: k.into(),
            detail: "missing".into(),
        }),
        v => Ok(v),
    }
}

async fn answer(node: &NodeHandle, extra: &ExtraOps, req: &Value) -> Result<Value, NodeError> {
    let text = |k: &str| -> Result<String, NodeError> {
        Ok(field(req, k)?.as_str().unwrap_or_default().to_string())
    };
    match field(req, "op")?.as_str().unwrap_or_default() {
        "status" => status_with_counters(node).await,
        "quote" => {
            let server = resolve(node, &text("server")?).await?;
            let body_len = req["body_len"].as_u64().unwrap_or(0);
            let response_limit = req["response_limit"]
                .as_u64()
                .unwrap_or(crate::sdk::DEFAULT_RESPONSE_LIMIT);
            let max_rtt = req["max_rtt_ms"].as_u64().unwrap_or(60_000);
            let quotes = node
                .quote(server, body_len, response_limit, max_rtt, 3)
                .await?;
            Ok(Value::Array(
                quotes
                    .iter()
                    .map(|q| {
                        json!({"cost": q.cost.0.to_string(), "rtt_ms": q.rtt_ms,
                               "route": q.route.nodes.iter().map(crate::key_hex).collect::<Vec<_>>()})
                    })
                    .collect(),
            ))
        }
        "request" => {
            let server = resolve(node, &text("server")?).await?;
            let mut options = RequestOptions::default();
            if let Some(r) = req["late_fee_rate"].as_str().and_then(|s| s.parse().ok()) {
                options.late_fee_rate = Amount(r);
            }
            if let Some(m) = req["max_rtt_ms"].as_u64() {
                options.max_rtt_ms = m;
            }
            if let Some(l) = req["response_limit"].as_u64() {
                options.response_limit = l;
            }
            if let Some(hops) = req["route"].as_array() {
                options.route = Some(route_through(node, hops).await?);
                options.max_reroutes = 0;
            }
            let body = text("body")?.into_bytes();
            Ok(outcome_json(&node.request(server, body, options).await?))
        }
        "sever" => {
            let id = req["channel"].as_u64().ok_or_else(|| NodeError::Config {
                source_name: "control".into(),
                key: "channel".into(),
                detail: "expected a channel number".into(),
            })?;
            node.sever(por_protocol::types::ChannelId(id)).await?;
            Ok(Value::Null)
        }
        "close_states" => {
            let id = req["channel"].as_u64().unwrap_or(u64::MAX);
            let states = node
                .close_states(por_protocol::types::ChannelId(id))
                .await?;
            Ok(Value::Array(
                states
                    .iter()
                    .map(|s| {
                        por_protocol::wire::encode(s)
                            .map(|b| Value::String(por_chain::json::base64(&b)))
                            .unwrap_or(Value::Null)
                    })
                    .collect(),
            ))
        }
        "events" => {
            let since = req["since"].as_u64().unwrap_or(0);
            let (events, next, dropped) =
                node.recent_events(since).ok_or_else(|| NodeError::Config {
                    source_name: "control".into(),
                    key: "event_log".into(),
                    detail: "this node keeps no event log (set event_log)".into(),
                })?;
            Ok(json!({"next": next, "dropped": dropped,
                      "events": events.iter().map(crate::eventlog::Logged::to_json).collect::<Vec<_>>()}))
        }
        "shutdown" => {
            let node = node.clone();
            tokio::spawn(async move { node.shutdown().await });
            Ok(Value::Null)
        }
        other => match extra.0.get(other) {
            Some(op) => op(node.clone(), req.clone())
                .await
                .map_err(|detail| NodeError::Op {
                    op: other.to_string(),
                    detail,
                }),
            None => Err(NodeError::Config {
                source_name: "control".into(),
                key: "op".into(),
                detail: format!("unknown op {other:?}"),
            }),
        },
    }
}

/// The node's status ([`status_json`]) with what it has counted (`counters`): fees
/// earned, late fees paid and received (yoctoNEAR, as the metrics keep them), and the
/// outcomes of its requests as client.
pub async fn status_with_counters(node: &NodeHandle) -> Result<Value, NodeError> {
    let mut v = status_json(&node.status().await?);
    let m = node.metrics();
    v["counters"] = json!({
        "fees_earned": m.fees_earned.get(),
        "late_fees_paid": m.late_fees_paid.get(),
        "late_fees_received": m.late_fees_received.get(),
        "requests_sent": m.requests_sent.get(),
        "requests_relayed": m.requests_relayed.get(),
        "requests_served": m.requests_served.get(),
        "responses": m.outcomes_of("response"),
        "proofs": m.outcomes_of("proof"),
        "late": m.outcomes_of("late"),
        "severs": m.severs.get(),
    });
    Ok(v)
}

/// A status as JSON.
pub fn status_json(s: &Status) -> Value {
    json!({
        "id": crate::key_hex(&s.id),
        "address": s.address,
        "in_flight": s.in_flight,
        "transmits_waiting": s.transmits_waiting,
        "channels": s.channels.iter().map(|c| json!({
            "id": c.id.0, "peer": crate::key_hex(&c.peer), "balance": c.balance.0.to_string(),
            "received": c.received.0.to_string(), "paid": c.paid.0.to_string(),
            "unacked": c.unacked.0.to_string(), "connected": c.connected, "severed": c.severed,
            "close": format!("{:?}", c.close).to_lowercase(),
        })).collect::<Vec<_>>(),
    })
}

/// An outcome as JSON.
pub fn outcome_json(o: &Outcome) -> Value {
    match o {
        Outcome::Response {
            request,
            body,
            latency_ms,
            on_time,
            fees_received,
            paid,
            route,
            proofs,
            ..
        } => json!({"kind": "response", "request": request.to_string(),
            "body": String::from_utf8_lossy(body), "latency_ms": latency_ms, "on_time": on_time,
            "fees_received": fees_received.0.to_string(), "paid": paid.0.to_string(),
            "hops": route.nodes.len().saturating_sub(1),
            "proofs": proofs.iter().map(|c| c.0).collect::<Vec<_>>()}),
        Outcome::Proof {
            request,
            channel,
            severer,
            latency_ms,
            fees_received,
            paid,
            proofs,
        } => json!({"kind": "proof", "request": request.to_string(), "channel": channel.0,
            "severer": crate::key_hex(severer), "latency_ms": latency_ms,
            "fees_received": fees_received.0.to_string(), "paid": paid.0.to_string(),
            "proofs": proofs.iter().map(|c| c.0).collect::<Vec<_>>()}),
        Outcome::Rejected {
            request,
            reason,
            refunded,
            paid,
        } => json!({"kind": "rejected", "request": request.to_string(), "reason": reason,
            "refunded": refunded.0.to_string(), "paid": paid.0.to_string()}),
        Outcome::Late {
            request,
            overdue_ms,
            fees_received,
            paid,
        } => json!({"kind": "late", "request": request.to_string(), "overdue_ms": overdue_ms,
            "fees_received": fees_received.0.to_string(), "paid": paid.0.to_string()}),
    }
}

/// Sends one control request to the node at `addr` and returns its answer.
pub async fn call(addr: &str, token: &str, request: Value) -> Result<Value, NodeError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| NodeError::Config {
            source_name: "control".into(),
            key: "control".into(),
            detail: format!("no node answering at {addr}: {e}"),
        })?;
    call_on(stream, addr, token, request).await
}

/// [`call`] over a stream already connected to the endpoint at `addr` (say, one
/// connected from inside another network namespace).
pub async fn call_on(
    stream: TcpStream,
    addr: &str,
    token: &str,
    request: Value,
) -> Result<Value, NodeError> {
    let unreachable = |e: String| NodeError::Config {
        source_name: "control".into(),
        key: "control".into(),
        detail: format!("no node answering at {addr}: {e}"),
    };
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
    let driver = tokio::spawn(conn);
    let req = hyper::Request::post("/v1")
        .header(header::HOST, addr)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(http_body_util::Full::new(Bytes::from(request.to_string())))
        .map_err(|e| unreachable(e.to_string()))?;
    let response = send
        .send_request(req)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let response_status = response.status();
    let body = http_body_util::Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| unreachable(e.to_string()))?
        .to_bytes();
    driver.abort();
    let status = response_status;
    let v: Value = serde_json::from_slice(&body).map_err(|e| {
        // Something answered, but not the endpoint's JSON: say what it answered.
        NodeError::Remote(format!(
            "{addr} answered {status} without the control endpoint's JSON ({e}): {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ))
    })?;
    match v.get("ok") {
        Some(ok) => Ok(ok.clone()),
        None => Err(NodeError::Remote(
            v["err"].as_str().unwrap_or("error").to_string(),
        )),
    }
}
