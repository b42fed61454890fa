//! Serving the embedded chain on loopback (`por chain serve`), so that several node
//! processes share one chain, and [`RemoteClient`], the [`Chain`] that talks to it.
//!
//! The protocol is one JSON object per line each way, request then answer, on plain
//! TCP. A served chain is a development chain, like a NEAR sandbox, but it may be
//! served to other hosts (the devnet), so it takes a call only signed by the calling
//! account's key: every account has one ed25519 key, set when the faucet creates it
//! (or, for an account made in process without one, by its first signed call), and
//! each call carries a nonce above the account's last, so a call cannot be replayed.
//! Views and events are open to all. The faucet answers only if the chain was served
//! with it on ([`ServeOptions::faucet`]). It binds to loopback unless told otherwise;
//! see docs/contract.md.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Framed, LinesCodec};

use por_protocol::crypto::{verify_bytes, Keypair};
use por_protocol::{NodeId, Signature};

use crate::api::{Chain, EventPage, EVENT_PAGE};
use crate::json::hex;
use crate::local::{LocalChain, DEFAULT_GAS};
use crate::ChainError;

/// Longest request or answer line: a page of events or a close with many states fits.
pub const MAX_LINE: usize = 16 << 20;

/// The domain tag of a served call's signature: the signed bytes are this tag
/// followed by the call's JSON payload, exactly as sent.
pub const CALL_DOMAIN: &[u8] = b"por/v1/served-call\0";

/// How a chain is served.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServeOptions {
    /// Answer `fund` requests (create and credit accounts). Off unless asked for:
    /// anyone who can reach a faucet can mint balance.
    pub faucet: bool,
}

/// Serves `chain` on `listener` until the future `shutdown` completes.
pub async fn serve(
    chain: Arc<Mutex<LocalChain>>,
    listener: TcpListener,
    options: ServeOptions,
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
                    if let Err(e) = connection(chain, stream, options).await {
                        tracing::debug!(%peer, "chain client dropped: {e}");
                    }
                });
            }
        }
    }
}

async fn connection(
    chain: Arc<Mutex<LocalChain>>,
    stream: TcpStream,
    options: ServeOptions,
) -> Result<(), ChainError> {
    let _ = stream.set_nodelay(true);
    let mut lines = Framed::new(stream, LinesCodec::new_with_max_length(MAX_LINE));
    while let Some(line) = lines.next().await {
        let line = line.map_err(|e| ChainError::Remote(e.to_string()))?;
        let chain = chain.clone();
        let answer = tokio::task::spawn_blocking(move || answer(&chain, &line, options))
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

fn hex32(s: &str, what: &str) -> Result<[u8; 32], ChainError> {
    por_protocol::hex::decode(s)
        .ok_or_else(|| ChainError::Remote(format!("{what} is not 64 hex digits")))
}

/// The bytes a served call's signature is over: [`CALL_DOMAIN`], then the payload
/// exactly as sent.
fn call_signing_bytes(payload: &str) -> Vec<u8> {
    let mut bytes = CALL_DOMAIN.to_vec();
    bytes.extend_from_slice(payload.as_bytes());
    bytes
}

fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Checks a signed call: the signature over [`CALL_DOMAIN`] and the payload, by the
/// key of the account the payload names, with a nonce above its last (recorded as its
/// new last). Returns the payload.
fn checked_call(chain: &mut LocalChain, req: &Value) -> Result<Value, ChainError> {
    let refuse = |why: String| ChainError::Unauthorized(why);
    let payload_text = str_field(req, "payload")
        .map_err(|_| refuse("the served chain takes calls only signed by the calling account's key (a `payload` with `key` and `sig`)".into()))?;
    let payload: Value = serde_json::from_str(payload_text)
        .map_err(|e| ChainError::Remote(format!("bad call payload: {e}")))?;
    let signer = str_field(&payload, "signer")?;
    let key = hex32(str_field(req, "key")?, "key")?;
    let sig = por_protocol::hex::decode(str_field(req, "sig")?)
        .map(Signature)
        .ok_or_else(|| ChainError::Remote("sig is not 128 hex digits".into()))?;
    let nonce = payload["nonce"]
        .as_u64()
        .ok_or_else(|| ChainError::Remote("call payload field \"nonce\" missing".into()))?;
    verify_bytes(&NodeId(key), &call_signing_bytes(payload_text), &sig).map_err(|_| {
        refuse(format!(
            "the signature of the call as {signer} does not verify"
        ))
    })?;
    match chain.account_key(signer)? {
        Some((held, _)) if held != key => {
            return Err(refuse(format!(
                "{signer}'s calls are signed with key {}, not {}",
                hex(&held),
                hex(&key)
            )))
        }
        Some((_, last)) if nonce <= last => {
            return Err(refuse(format!(
                "replayed or stale call as {signer}: nonce {nonce} is not above {last}"
            )))
        }
        _ => {}
    }
    // An account made without a key (in process) takes the key of its first call.
    chain.set_account_key(signer, key, nonce)?;
    Ok(payload)
}

fn answer(
    chain: &Mutex<LocalChain>,
    line: &str,
    options: ServeOptions,
) -> Result<Value, ChainError> {
    let req: Value =
        serde_json::from_str(line).map_err(|e| ChainError::Remote(format!("bad request: {e}")))?;
    let mut chain = chain
        .lock()
        .map_err(|_| ChainError::Db("chain lock poisoned".into()))?;
    match str_field(&req, "op")? {
        "call" => {
            let payload = checked_call(&mut chain, &req)?;
            let out = chain.call(
                str_field(&payload, "signer")?,
                str_field(&payload, "method")?,
                payload["args"].to_string().as_bytes(),
                u128_field(&payload, "deposit")?,
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
        "fund" if !options.faucet => Err(ChainError::Unauthorized(
            "the faucet is off (serve the chain with `por chain serve --faucet`)".into(),
        )),
        "fund" => {
            let account = str_field(&req, "account")?;
            let key = hex32(str_field(&req, "public_key")?, "public_key")?;
            match chain.account_key(account)? {
                Some((held, _)) if held != key => {
                    return Err(ChainError::Unauthorized(format!(
                        "{account} already exists with another key"
                    )))
                }
                Some(_) => {}
                None => chain.set_account_key(account, key, 0)?,
            }
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
        ChainError::Unauthorized(why) => json!({"kind": "unauthorized", "message": why}),
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
        Some("unauthorized") => ChainError::Unauthorized(text("message")),
        _ => ChainError::Remote(text("message")),
    }
}

/// A [`Chain`] on an embedded chain served by another process.
#[derive(Debug)]
pub struct RemoteClient {
    addr: SocketAddr,
    signer: String,
    key: Option<Keypair>,
    /// The last nonce used.
    nonce: std::sync::atomic::AtomicU64,
    conn: tokio::sync::Mutex<Option<Framed<TcpStream, LinesCodec>>>,
}

impl RemoteClient {
    /// A client of the chain served at `addr`, as `signer`, without a key: views and
    /// events only (the served chain refuses its calls). Connects lazily and
    /// reconnects after a failure.
    pub fn new(addr: SocketAddr, signer: &str) -> RemoteClient {
        RemoteClient {
            addr,
            signer: signer.to_string(),
            key: None,
            nonce: std::sync::atomic::AtomicU64::new(0),
            conn: tokio::sync::Mutex::new(None),
        }
    }

    /// A client that signs its calls as `signer` with `key` (the account's key: for
    /// a node, its node key).
    pub fn with_key(addr: SocketAddr, signer: &str, key: Keypair) -> RemoteClient {
        RemoteClient {
            key: Some(key),
            ..RemoteClient::new(addr, signer)
        }
    }

    /// Sends one request and waits for its answer.
    pub async fn request(&self, req: Value) -> Result<Value, ChainError> {
        self.request_with(|| Ok(req)).await
    }

    /// Sends the request `build` makes once the connection is ours (so that calls
    /// leave in the order of their nonces), and waits for its answer.
    async fn request_with(
        &self,
        build: impl FnOnce() -> Result<Value, ChainError>,
    ) -> Result<Value, ChainError> {
        let mut conn = self.conn.lock().await;
        let req = build()?;
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

    /// Credits `amount` to `account` from the served chain's faucet, creating it with
    /// `public_key` as the key its calls must be signed with; returns its balance.
    pub async fn fund(
        &self,
        account: &str,
        public_key: &NodeId,
        amount: u128,
    ) -> Result<u128, ChainError> {
        let v = self
            .request(
                json!({"op": "fund", "account": account, "public_key": hex(&public_key.0),
                            "amount": amount.to_string()}),
            )
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

/// How long a served chain may take to answer one request before the connection is
/// given up (and made afresh by the next request): a stalled connection must not
/// stall its caller, a node's chain follower, for good.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

async fn exchange(
    lines: &mut Framed<TcpStream, LinesCodec>,
    req: Value,
) -> Result<Value, ChainError> {
    let round_trip = async {
        lines
            .send(req.to_string())
            .await
            .map_err(|e| ChainError::Remote(e.to_string()))?;
        lines
            .next()
            .await
            .ok_or_else(|| ChainError::Remote("the chain closed the connection".into()))?
            .map_err(|e| ChainError::Remote(e.to_string()))
    };
    let line = tokio::time::timeout(REQUEST_TIMEOUT, round_trip)
        .await
        .map_err(|_| {
            ChainError::Remote(format!("no answer from the chain in {REQUEST_TIMEOUT:?}"))
        })??;
    serde_json::from_str(&line).map_err(|e| ChainError::Remote(format!("bad answer: {e}")))
}

impl Chain for RemoteClient {
    fn account(&self) -> &str {
        &self.signer
    }

    async fn call(&self, method: &str, args: Value, deposit: u128) -> Result<Value, ChainError> {
        let key = self.key.as_ref().ok_or_else(|| {
            ChainError::Unauthorized(format!(
                "no key to sign calls as {} with (RemoteClient::with_key)",
                self.signer
            ))
        })?;
        self.request_with(|| {
            // Above the last one and at least the clock (in µs), so that calls from
            // another process signing as the same account (the CLI beside a node) and
            // a restart never reuse or undercut a nonce.
            let nonce = self
                .nonce
                .load(std::sync::atomic::Ordering::SeqCst)
                .saturating_add(1)
                .max(now_micros());
            self.nonce.store(nonce, std::sync::atomic::Ordering::SeqCst);
            let payload = json!({"signer": self.signer, "method": method, "args": args,
                                 "deposit": deposit.to_string(), "nonce": nonce})
            .to_string();
            let sig = key.sign_bytes(&call_signing_bytes(&payload));
            Ok(
                json!({"op": "call", "payload": payload, "key": hex(&key.id().0),
                      "sig": hex(&sig.0)}),
            )
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A chain that takes the connection and never answers: the request fails after
    /// `REQUEST_TIMEOUT` (virtual time here) instead of waiting for ever, and the next
    /// one connects afresh.
    #[tokio::test(start_paused = true)]
    async fn a_chain_that_never_answers_fails_the_request_in_time() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let client = RemoteClient::new(addr, "someone");
        let started = tokio::time::Instant::now();
        let err = client
            .request(serde_json::json!({"op": "height"}))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("no answer from the chain"),
            "{err}"
        );
        assert!(started.elapsed() >= REQUEST_TIMEOUT);
        assert!(
            client.conn.lock().await.is_none(),
            "the stalled connection is dropped"
        );
        held.abort();
    }
}
