//! The control endpoint of a running node (loopback, JSON lines): what `por status`,
//! `por request`, `por quote`, `por channel close` and `por node stop` talk to.

use std::net::SocketAddr;

use futures::{SinkExt, StreamExt};
use por_chain::Chain;
use por_protocol::{Amount, NodeId};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Framed, LinesCodec};

use crate::sdk::{NodeHandle, Outcome, RequestOptions, Status};
use crate::NodeError;

const MAX_LINE: usize = 4 << 20;

/// Serves the control endpoint on `addr` (must be loopback: it needs no credentials).
pub async fn serve(addr: &str, node: NodeHandle) -> Result<SocketAddr, NodeError> {
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
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let node = node.clone();
            tokio::spawn(async move {
                let mut lines = Framed::new(stream, LinesCodec::new_with_max_length(MAX_LINE));
                while let Some(Ok(line)) = lines.next().await {
                    let answer = match answer(&node, &line).await {
                        Ok(v) => json!({ "ok": v }),
                        Err(e) => json!({ "err": e.to_string() }),
                    };
                    if lines.send(answer.to_string()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(bound)
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

async fn answer(node: &NodeHandle, line: &str) -> Result<Value, NodeError> {
    let req: Value = serde_json::from_str(line).map_err(|e| NodeError::Config {
        source_name: "control".into(),
        key: "request".into(),
        detail: e.to_string(),
    })?;
    let text = |k: &str| -> Result<String, NodeError> {
        Ok(field(&req, k)?.as_str().unwrap_or_default().to_string())
    };
    match field(&req, "op")?.as_str().unwrap_or_default() {
        "status" => Ok(status_json(&node.status().await?)),
        "quote" => {
            let server = resolve(node, &text("server")?).await?;
            let body_len = req["body_len"].as_u64().unwrap_or(0);
            let max_rtt = req["max_rtt_ms"].as_u64().unwrap_or(60_000);
            let quotes = node.quote(server, body_len, max_rtt, 3).await?;
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
        "shutdown" => {
            let node = node.clone();
            tokio::spawn(async move { node.shutdown().await });
            Ok(Value::Null)
        }
        other => Err(NodeError::Config {
            source_name: "control".into(),
            key: "op".into(),
            detail: format!("unknown op {other:?}"),
        }),
    }
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
            route,
            proofs,
        } => json!({"kind": "response", "request": request.to_string(),
            "body": String::from_utf8_lossy(body), "latency_ms": latency_ms, "on_time": on_time,
            "fees_received": fees_received.0.to_string(), "hops": route.nodes.len().saturating_sub(1),
            "proofs": proofs.iter().map(|c| c.0).collect::<Vec<_>>()}),
        Outcome::Proof {
            request,
            channel,
            severer,
            latency_ms,
            fees_received,
            proofs,
        } => json!({"kind": "proof", "request": request.to_string(), "channel": channel.0,
            "severer": crate::key_hex(severer), "latency_ms": latency_ms,
            "fees_received": fees_received.0.to_string(),
            "proofs": proofs.iter().map(|c| c.0).collect::<Vec<_>>()}),
        Outcome::Rejected {
            request,
            reason,
            refunded,
        } => json!({"kind": "rejected", "request": request.to_string(), "reason": reason,
            "refunded": refunded.0.to_string()}),
        Outcome::Late {
            request,
            overdue_ms,
            fees_received,
        } => json!({"kind": "late", "request": request.to_string(), "overdue_ms": overdue_ms,
            "fees_received": fees_received.0.to_string()}),
    }
}

/// Sends one control request to the node at `addr` and returns its answer.
pub async fn call(addr: &str, request: Value) -> Result<Value, NodeError> {
    let unreachable = |e: String| NodeError::Config {
        source_name: "control".into(),
        key: "control".into(),
        detail: format!("no node answering at {addr}: {e}"),
    };
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let mut lines = Framed::new(stream, LinesCodec::new_with_max_length(MAX_LINE));
    lines
        .send(request.to_string())
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let line = lines
        .next()
        .await
        .ok_or_else(|| unreachable("connection closed".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    let v: Value = serde_json::from_str(&line).map_err(|e| unreachable(e.to_string()))?;
    match v.get("ok") {
        Some(ok) => Ok(ok.clone()),
        None => Err(NodeError::Remote(
            v["err"].as_str().unwrap_or("error").to_string(),
        )),
    }
}
