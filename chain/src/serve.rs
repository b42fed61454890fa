//! Serving the embedded chain on loopback (`por chain serve`), so that several node
//! processes share one chain, and [`RemoteClient`], the [`Chain`] that talks to it.
//!
//! The protocol is one JSON object per line each way, request then answer, on plain
//! TCP. A served chain is a development chain, like a NEAR sandbox: it trusts the
//! `signer` a request names (there are no account keys), and it has a faucet. It binds
//! to loopback unless told otherwise; see docs/contract.md.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Framed, LinesCodec};

use crate::api::{Chain, EventPage, EVENT_PAGE};
use crate::local::{LocalChain, DEFAULT_GAS};
use crate::ChainError;

/// Longest request or answer line: a page of events or a close with many states fits.
pub const MAX_LINE: usize = 16 << 20;

/// Serves `chain` on `listener` until the future `shutdown` completes.
pub async fn serve(
    chain: Arc<Mutex<LocalChain>>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => {
                let (stream, peer) = accepted?;
                let chain = chain.clone();
                tokio::spawn(async move {
                    if let Err(e) = connection(chain, stream).await {
                        tracing::debug!(%peer, "chain client dropped: {e}");
                    }
                });
            }
        }
    }
}

async fn connection(chain: Arc<Mutex<LocalChain>>, stream: TcpStream) -> Result<(), ChainError> {
    let _ = stream.set_nodelay(true);
    let mut lines = Framed::new(stream, LinesCodec::new_with_max_length(MAX_LINE));
    while let Some(line) = lines.next().await {
        let line = line.map_err(|e| ChainError::Remote(e.to_string()))?;
        let chain = chain.clone();
        let answer = tokio::task::spawn_blocking(move || answer(&chain, &line))
            .await
            .map_err(|e| ChainError::Remote(e.to_string()))?;
        let text = match answer {
            Ok(v) => json!({ "ok": v }),
            Err(e) => json!({ "err": error_json(&e) }),
        };
        lines
            .send(text.to_string())
            .await
            .map_err(|e| ChainError::Remote(e.to_string()))?;
    }
    Ok(())
}

fn str_field<'a>(req: &'a Value, k: &str) -> Result<&'a str, ChainError> {
    req[k]
        .as_str()
        .ok_or_else(|| ChainError::Remote(format!("request field {k:?} missing")))
}

fn u128_field(req: &Value, k: &str) -> Result<u128, ChainError> {
    str_field(req, k)?
        .parse()
        .map_err(|_| ChainError::Remote(format!("request field {k:?} is not an amount")))
}

fn answer(chain: &Mutex<LocalChain>, line: &str) -> Result<Value, ChainError> {
    let req: Value =
        serde_json::from_str(line).map_err(|e| ChainError::Remote(format!("bad request: {e}")))?;
    let mut chain = chain
        .lock()
        .map_err(|_| ChainError::Db("chain lock poisoned".into()))?;
    match str_field(&req, "op")? {
        "call" => {
            let out = chain.call(
                str_field(&req, "signer")?,
                str_field(&req, "method")?,
                req["args"].to_string().as_bytes(),
                u128_field(&req, "deposit")?,
                DEFAULT_GAS,
            )?;
            if out.value.is_empty() {
                Ok(Value::Null)
            } else {
                out.json()
            }
        }
        "view" => chain.view_json(str_field(&req, "method")?, req["args"].clone()),
        "events" => {
            let since = req["since"]
                .as_u64()
                .ok_or_else(|| ChainError::Remote("request field \"since\" missing".into()))?;
            let page = chain.event_page(since, EVENT_PAGE)?;
            let events: Vec<Value> = page
                .events
                .into_iter()
                .map(|(h, e)| json!([h, e]))
                .collect();
            Ok(json!({"events": events, "through": page.through}))
        }
        "fund" => {
            let account = str_field(&req, "account")?;
            chain.fund(account, u128_field(&req, "amount")?)?;
            Ok(json!(chain.balance(account).map(|b| b.to_string())))
        }
        "balance" => Ok(json!(chain
            .balance(str_field(&req, "account")?)
            .map(|b| b.to_string()))),
        "status" => Ok(json!({
            "contract": chain.contract(),
            "height": chain.height(),
            "now_ns": chain.now_ns().to_string(),
        })),
        other => Err(ChainError::Remote(format!("unknown op {other:?}"))),
    }
}

fn error_json(e: &ChainError) -> Value {
    match e {
        ChainError::Aborted {
            method,
            message,
            logs,
        } => json!({"kind": "aborted", "method": method, "message": message, "logs": logs}),
        other => json!({"kind": "other", "message": other.to_string()}),
    }
}

fn error_of(v: &Value) -> ChainError {
    let text = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    match v["kind"].as_str() {
        Some("aborted") => ChainError::Aborted {
            method: text("method"),
            message: text("message"),
            logs: serde_json::from_value(v["logs"].clone()).unwrap_or_default(),
        },
        _ => ChainError::Remote(text("message")),
    }
}

/// A [`Chain`] on an embedded chain served by another process.
#[derive(Debug)]
pub struct RemoteClient {
    addr: SocketAddr,
    signer: String,
    conn: tokio::sync::Mutex<Option<Framed<TcpStream, LinesCodec>>>,
}

impl RemoteClient {
    /// A client of the chain served at `addr`, signing as `signer`. Connects lazily
    /// and reconnects after a failure.
    pub fn new(addr: SocketAddr, signer: &str) -> RemoteClient {
        RemoteClient {
            addr,
            signer: signer.to_string(),
            conn: tokio::sync::Mutex::new(None),
        }
    }

    /// Sends one request and waits for its answer.
    pub async fn request(&self, req: Value) -> Result<Value, ChainError> {
        let mut conn = self.conn.lock().await;
        if conn.is_none() {
            let stream = TcpStream::connect(self.addr)
                .await
                .map_err(|e| ChainError::Remote(format!("connecting to {}: {e}", self.addr)))?;
            let _ = stream.set_nodelay(true);
            *conn = Some(Framed::new(
                stream,
                LinesCodec::new_with_max_length(MAX_LINE),
            ));
        }
        let result = match conn.as_mut() {
            Some(lines) => exchange(lines, req).await,
            None => Err(ChainError::Remote("not connected".into())),
        };
        if matches!(result, Err(ChainError::Remote(_))) {
            // The stream may be out of step: start afresh next time.
            *conn = None;
        }
        let answer = result?;
        match answer.get("ok") {
            Some(v) => Ok(v.clone()),
            None => Err(error_of(&answer["err"])),
        }
    }

    /// Credits `amount` to `account` from the served chain's faucet; returns its balance.
    pub async fn fund(&self, account: &str, amount: u128) -> Result<u128, ChainError> {
        let v = self
            .request(json!({"op": "fund", "account": account, "amount": amount.to_string()}))
            .await?;
        v.as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ChainError::Decode(format!("balance {v}")))
    }

    /// An account's balance on the served chain.
    pub async fn balance(&self, account: &str) -> Result<Option<u128>, ChainError> {
        let v = self
            .request(json!({"op": "balance", "account": account}))
            .await?;
        Ok(v.as_str().and_then(|s| s.parse().ok()))
    }

    /// The served chain's contract, height and time.
    pub async fn status(&self) -> Result<Value, ChainError> {
        self.request(json!({"op": "status"})).await
    }
}

async fn exchange(
    lines: &mut Framed<TcpStream, LinesCodec>,
    req: Value,
) -> Result<Value, ChainError> {
    lines
        .send(req.to_string())
        .await
        .map_err(|e| ChainError::Remote(e.to_string()))?;
    let line = lines
        .next()
        .await
        .ok_or_else(|| ChainError::Remote("the chain closed the connection".into()))?
        .map_err(|e| ChainError::Remote(e.to_string()))?;
    serde_json::from_str(&line).map_err(|e| ChainError::Remote(format!("bad answer: {e}")))
}

impl Chain for RemoteClient {
    fn account(&self) -> &str {
        &self.signer
    }

    async fn call(&self, method: &str, args: Value, deposit: u128) -> Result<Value, ChainError> {
        self.request(
            json!({"op": "call", "signer": self.signer, "method": method,
                            "args": args, "deposit": deposit.to_string()}),
        )
        .await
    }

    async fn view(&self, method: &str, args: Value) -> Result<Value, ChainError> {
        self.request(json!({"op": "view", "method": method, "args": args}))
            .await
    }

    async fn height(&self) -> Result<u64, ChainError> {
        let v = self.status().await?;
        v["height"]
            .as_u64()
            .ok_or_else(|| ChainError::Decode(format!("status {v}")))
    }

    async fn events_since(&self, height: u64) -> Result<EventPage, ChainError> {
        let v = self
            .request(json!({"op": "events", "since": height}))
            .await?;
        let bad = || ChainError::Decode(format!("events {v}"));
        let items = v["events"].as_array().ok_or_else(bad)?;
        let events = items
            .iter()
            .map(|item| Ok((item[0].as_u64().ok_or_else(bad)?, item[1].clone())))
            .collect::<Result<_, ChainError>>()?;
        let through = v["through"].as_u64().ok_or_else(bad)?;
        Ok(EventPage { events, through })
    }
}
