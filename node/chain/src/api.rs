//! The chain as a node sees it: one async trait over everything a node does on chain,
//! in por-protocol's types. [`LocalClient`] implements it on the embedded chain; the
//! NEAR RPC implementation is to come (issue 4).

use std::future::Future;
use std::sync::{Arc, Mutex};

use por_protocol::types::{ChannelId, EdgeInfo, EdgeTerms, SignedSeverNotice, SignedUpdate};
use por_protocol::{topology::Topology, wire, Amount, NodeId};
use serde_json::{json, Value};

use crate::local::{LocalChain, DEFAULT_GAS};
use crate::ChainError;

/// A node as the chain records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainNode {
    /// NEAR account.
    pub account: String,
    /// Node key.
    pub key: NodeId,
    /// Stake.
    pub stake: Amount,
    /// Addresses peers dial.
    pub addresses: Vec<String>,
    /// Cut off by a partition check.
    pub disconnected: bool,
}

/// Nodes and live edges at one height.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Nodes.
    pub nodes: Vec<ChainNode>,
    /// Open channels, with node keys as endpoints.
    pub edges: Vec<EdgeInfo>,
}

impl Snapshot {
    /// The topology the engine routes on.
    pub fn topology(&self) -> Topology {
        let mut t = Topology::new();
        for n in &self.nodes {
            t.set_stake(n.key, n.stake);
        }
        for e in &self.edges {
            t.insert_edge(e.clone());
        }
        t
    }

    /// A node by key.
    pub fn node(&self, key: &NodeId) -> Option<&ChainNode> {
        self.nodes.iter().find(|n| n.key == *key)
    }
}

/// Events of a run of blocks.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EventPage {
    /// `(height, NEP-297 event)`, oldest first.
    pub events: Vec<(u64, Value)>,
    /// Every event up to this height is in this page or an earlier one.
    pub through: u64,
}

/// Everything a node does on chain.
///
/// An implementation supplies four primitives: who it signs as, a signed call with a
/// deposit, a view, and the event feed. Every contract method a node uses is built on
/// them here, once, so the embedded chain, a served embedded chain and NEAR over RPC
/// send the contract exactly the same arguments.
pub trait Chain: Send + Sync + 'static {
    /// The account this client signs as.
    fn account(&self) -> &str;

    /// Calls `method` with JSON `args` and `deposit` yoctoNEAR attached, signed as
    /// [`Chain::account`]; returns the method's JSON value (`null` if it returns none).
    fn call(
        &self,
        method: &str,
        args: Value,
        deposit: u128,
    ) -> impl Future<Output = Result<Value, ChainError>> + Send;

    /// A read-only call.
    fn view(
        &self,
        method: &str,
        args: Value,
    ) -> impl Future<Output = Result<Value, ChainError>> + Send;

    /// The latest height whose events [`Chain::events_since`] can report.
    fn height(&self) -> impl Future<Output = Result<u64, ChainError>> + Send;

    /// Events of the blocks after `height`, oldest first. Ask again from
    /// [`EventPage::through`] to follow the chain.
    fn events_since(
        &self,
        height: u64,
    ) -> impl Future<Output = Result<EventPage, ChainError>> + Send;

    /// Registers this node with its key, addresses and stake.
    fn register(
        &self,
        key: NodeId,
        addresses: Vec<String>,
        stake: Amount,
    ) -> impl Future<Output = Result<(), ChainError>> + Send {
        async move {
            self.call(
                "register",
                json!({"key": hex(&key.0), "addresses": addresses}),
                stake.0,
            )
            .await
            .map(|_| ())
        }
    }

    /// Proposes an edge to `peer` (an account) with our deposit.
    fn propose_channel(
        &self,
        peer: &str,
        terms: &EdgeTerms,
        deposit: Amount,
    ) -> impl Future<Output = Result<ChannelId, ChainError>> + Send {
        let args = json!({"peer": peer, "terms": terms_json(terms)});
        async move {
            let v = self.call("propose_channel", args, deposit.0).await?;
            channel_id(&v)
        }
    }

    /// Confirms an edge proposed to us, with our deposit.
    fn confirm_channel(
        &self,
        id: ChannelId,
        deposit: Amount,
    ) -> impl Future<Output = Result<(), ChainError>> + Send {
        async move {
            self.call(
                "confirm_channel",
                json!({"id": id.0.to_string()}),
                deposit.0,
            )
            .await
            .map(|_| ())
        }
    }

    /// Cancels a proposal.
    fn cancel_channel(&self, id: ChannelId) -> impl Future<Output = Result<(), ChainError>> + Send {
        async move {
            self.call("cancel_channel", json!({"id": id.0.to_string()}), 0)
                .await
                .map(|_| ())
        }
    }

    /// Proposes a cooperative close with the states we hold.
    fn propose_close(
        &self,
        id: ChannelId,
        list: &[SignedUpdate],
    ) -> impl Future<Output = Result<(), ChainError>> + Send {
        let args = states(list).map(|u| json!({"id": id.0.to_string(), "updates": u}));
        async move { self.call("propose_close", args?, 0).await.map(|_| ()) }
    }

    /// Confirms the peer's cooperative close; returns the payouts `(a, b)`.
    fn confirm_close(
        &self,
        id: ChannelId,
        list: &[SignedUpdate],
    ) -> impl Future<Output = Result<(Amount, Amount), ChainError>> + Send {
        let args = states(list).map(|u| json!({"id": id.0.to_string(), "updates": u}));
        async move { payouts(&self.call("confirm_close", args?, 0).await?) }
    }

    /// Starts an adversarial close; returns the end of the challenge period (ns).
    fn start_close(
        &self,
        id: ChannelId,
        list: &[SignedUpdate],
    ) -> impl Future<Output = Result<u64, ChainError>> + Send {
        let args = states(list).map(|u| json!({"id": id.0.to_string(), "updates": u}));
        async move {
            let v = self.call("start_close", args?, 0).await?;
            v.as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| ChainError::Decode(format!("challenge end {v}")))
        }
    }

    /// Answers a close with newer states.
    fn challenge(
        &self,
        id: ChannelId,
        list: &[SignedUpdate],
    ) -> impl Future<Output = Result<(), ChainError>> + Send {
        let args = states(list).map(|u| json!({"id": id.0.to_string(), "updates": u}));
        async move { self.call("challenge", args?, 0).await.map(|_| ()) }
    }

    /// Pays out a channel whose challenge period is over; returns `(a, b)`.
    fn finalize_close(
        &self,
        id: ChannelId,
    ) -> impl Future<Output = Result<(Amount, Amount), ChainError>> + Send {
        async move {
            payouts(
                &self
                    .call("finalize_close", json!({"id": id.0.to_string()}), 0)
                    .await?,
            )
        }
    }

    /// Submits a severing notice (ours or one we were given); returns whether the graph split.
    fn sever(
        &self,
        notice: &SignedSeverNotice,
    ) -> impl Future<Output = Result<bool, ChainError>> + Send {
        let args = encoded(notice).map(|n| json!({ "notice": n }));
        async move {
            let v = self.call("sever", args?, 0).await?;
            v.as_bool()
                .ok_or_else(|| ChainError::Decode(format!("sever result {v}")))
        }
    }

    /// Nodes and live edges now.
    fn snapshot(&self) -> impl Future<Output = Result<Snapshot, ChainError>> + Send {
        async move {
            let nodes = paged(self, "get_nodes").await?;
            let edges = paged(self, "get_edges").await?;
            Snapshot::from_views(&nodes, &edges)
        }
    }

    /// Channels (proposed, open or closing) that `account` is an endpoint of, as the
    /// contract's JSON views.
    fn channels_of(
        &self,
        account: &str,
    ) -> impl Future<Output = Result<Vec<Value>, ChainError>> + Send {
        let account = account.to_string();
        async move {
            Ok(paged(self, "get_channels")
                .await?
                .into_iter()
                .filter(|c| c["a"] == account.as_str() || c["b"] == account.as_str())
                .collect())
        }
    }
}

async fn paged<C: Chain + ?Sized>(chain: &C, method: &str) -> Result<Vec<Value>, ChainError> {
    const PAGE: usize = 200;
    let mut out = Vec::new();
    loop {
        let page = chain
            .view(method, json!({"from": out.len(), "limit": PAGE}))
            .await?;
        let items = match page {
            Value::Array(items) => items,
            other => return Err(ChainError::Decode(format!("{method}: {other}"))),
        };
        let n = items.len();
        out.extend(items);
        if n < PAGE {
            return Ok(out);
        }
    }
}

fn channel_id(v: &Value) -> Result<ChannelId, ChainError> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .map(ChannelId)
        .ok_or_else(|| ChainError::Decode(format!("channel id {v}")))
}

impl Snapshot {
    /// Builds a snapshot from the contract's `get_nodes` and `get_edges` views.
    pub fn from_views(nodes: &[Value], edges: &[Value]) -> Result<Snapshot, ChainError> {
        let mut snap = Snapshot::default();
        for n in nodes {
            let field = |k: &str| {
                n[k].as_str()
                    .ok_or_else(|| ChainError::Decode(format!("node.{k} in {n}")))
            };
            snap.nodes.push(ChainNode {
                account: field("account")?.to_string(),
                key: key_of(field("key")?)?,
                stake: amount(&n["stake"])?,
                addresses: serde_json::from_value(n["addresses"].clone())
                    .map_err(|e| ChainError::Decode(format!("node.addresses: {e}")))?,
                disconnected: n["disconnected"].as_bool().unwrap_or(false),
            });
        }
        for e in edges {
            let key = |field: &str| {
                let account = e[field].as_str().unwrap_or_default();
                snap.nodes
                    .iter()
                    .find(|n| n.account == account)
                    .map(|n| n.key)
                    .ok_or_else(|| {
                        ChainError::Decode(format!("edge endpoint {account:?} is not a node"))
                    })
            };
            let edge = EdgeInfo {
                id: channel_id(&e["id"])?,
                a: key("a")?,
                b: key("b")?,
                terms: terms_of(&e["terms"])?,
                deposit_a: amount(&e["deposit_a"])?,
                deposit_b: amount(&e["deposit_b"])?,
            };
            snap.edges.push(edge);
        }
        Ok(snap)
    }
}

/// Standard base64 (padded), as near-sdk's `Base64VecU8` expects.
pub fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3).saturating_mul(4));
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let v = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                A[((v >> (18 - 6 * i)) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

fn encoded<T: serde::Serialize>(v: &T) -> Result<String, ChainError> {
    wire::encode(v)
        .map(|b| base64(&b))
        .map_err(|e| ChainError::Decode(e.to_string()))
}

fn states(list: &[SignedUpdate]) -> Result<Vec<String>, ChainError> {
    list.iter().map(encoded).collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn key_of(s: &str) -> Result<NodeId, ChainError> {
    let bad = || ChainError::Decode(format!("node key {s:?}"));
    if s.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = s
            .get(i * 2..i * 2 + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .ok_or_else(bad)?;
    }
    Ok(NodeId(out))
}

fn amount(v: &Value) -> Result<Amount, ChainError> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .map(Amount)
        .ok_or_else(|| ChainError::Decode(format!("amount {v}")))
}

fn terms_json(t: &EdgeTerms) -> Value {
    json!({"latency_ms": t.latency_ms, "base_cost": t.base_cost.0.to_string(),
           "byte_cost": t.byte_cost.0.to_string(), "sync_interval_ms": t.sync_interval_ms,
           "sync_phase_ms": t.sync_phase_ms, "max_late_fee_rate": t.max_late_fee_rate.0.to_string()})
}

fn terms_of(v: &Value) -> Result<EdgeTerms, ChainError> {
    let ms = |k: &str| {
        v[k].as_u64()
            .ok_or_else(|| ChainError::Decode(format!("terms.{k}")))
    };
    Ok(EdgeTerms {
        latency_ms: ms("latency_ms")?,
        base_cost: amount(&v["base_cost"])?,
        byte_cost: amount(&v["byte_cost"])?,
        sync_interval_ms: ms("sync_interval_ms")?,
        sync_phase_ms: ms("sync_phase_ms")?,
        max_late_fee_rate: amount(&v["max_late_fee_rate"])?,
    })
}

fn payouts(v: &Value) -> Result<(Amount, Amount), ChainError> {
    Ok((amount(&v[0])?, amount(&v[1])?))
}

/// The embedded chain, shared by the node (and whoever else holds the handle), signing
/// as `signer`. Calls run synchronously under a lock: each is a few milliseconds.
#[derive(Clone, Debug)]
pub struct LocalClient {
    chain: Arc<Mutex<LocalChain>>,
    signer: String,
}

impl LocalClient {
    /// A client of `chain` acting as `signer`.
    pub fn new(chain: Arc<Mutex<LocalChain>>, signer: &str) -> LocalClient {
        LocalClient {
            chain,
            signer: signer.to_string(),
        }
    }

    /// The shared chain.
    pub fn chain(&self) -> &Arc<Mutex<LocalChain>> {
        &self.chain
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, LocalChain>, ChainError> {
        self.chain
            .lock()
            .map_err(|_| ChainError::Db("chain lock poisoned".into()))
    }
}

impl Chain for LocalClient {
    fn account(&self) -> &str {
        &self.signer
    }

    async fn call(&self, method: &str, args: Value, deposit: u128) -> Result<Value, ChainError> {
        let out = self.lock()?.call(
            &self.signer,
            method,
            args.to_string().as_bytes(),
            deposit,
            DEFAULT_GAS,
        )?;
        if out.value.is_empty() {
            return Ok(Value::Null);
        }
        out.json()
    }

    async fn view(&self, method: &str, args: Value) -> Result<Value, ChainError> {
        self.lock()?.view_json(method, args)
    }

    async fn height(&self) -> Result<u64, ChainError> {
        Ok(self.lock()?.height())
    }

    async fn events_since(&self, height: u64) -> Result<EventPage, ChainError> {
        self.lock()?.event_page(height, EVENT_PAGE)
    }
}

/// Most events one `events_since` answer carries; ask again from the last height.
pub const EVENT_PAGE: usize = 10_000;

/// A [`Chain`] chosen at run time: the embedded chain in this process, one served by
/// another process, or NEAR.
#[derive(Debug)]
pub enum AnyChain {
    /// The embedded chain, in process.
    Local(LocalClient),
    /// An embedded chain served by `por chain serve`.
    Remote(crate::RemoteClient),
    /// NEAR over RPC.
    Near(crate::NearClient),
}

impl Chain for AnyChain {
    fn account(&self) -> &str {
        match self {
            AnyChain::Local(c) => c.account(),
            AnyChain::Remote(c) => c.account(),
            AnyChain::Near(c) => c.account(),
        }
    }

    async fn call(&self, method: &str, args: Value, deposit: u128) -> Result<Value, ChainError> {
        match self {
            AnyChain::Local(c) => c.call(method, args, deposit).await,
            AnyChain::Remote(c) => c.call(method, args, deposit).await,
            AnyChain::Near(c) => c.call(method, args, deposit).await,
        }
    }

    async fn view(&self, method: &str, args: Value) -> Result<Value, ChainError> {
        match self {
            AnyChain::Local(c) => c.view(method, args).await,
            AnyChain::Remote(c) => c.view(method, args).await,
            AnyChain::Near(c) => c.view(method, args).await,
        }
    }

    async fn height(&self) -> Result<u64, ChainError> {
        match self {
            AnyChain::Local(c) => c.height().await,
            AnyChain::Remote(c) => c.height().await,
            AnyChain::Near(c) => c.height().await,
        }
    }

    async fn events_since(&self, height: u64) -> Result<EventPage, ChainError> {
        match self {
            AnyChain::Local(c) => c.events_since(height).await,
            AnyChain::Remote(c) => c.events_since(height).await,
            AnyChain::Near(c) => c.events_since(height).await,
        }
    }
}

/// Decodes the severing notice carried by an `edge_severed` event.
pub fn sever_notice_of(event: &Value) -> Option<SignedSeverNotice> {
    if event["event"] != "edge_severed" {
        return None;
    }
    let text = event["data"][0]["notice"].as_str()?;
    wire::decode(&unbase64(text)?).ok()
}

/// Decodes standard padded base64; `None` if malformed.
pub fn unbase64(text: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        })
    };
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for chunk in bytes.chunks(4) {
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 {
            return None;
        }
        let mut v = 0u32;
        for &c in &chunk[..4 - pad] {
            v = (v << 6) | val(c)?;
        }
        v <<= 6 * pad as u32;
        let b = v.to_be_bytes();
        out.extend_from_slice(&b[1..4 - pad]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for n in 0..40u8 {
            let bytes: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37)).collect();
            assert_eq!(unbase64(&base64(&bytes)).as_deref(), Some(bytes.as_slice()));
        }
        assert_eq!(unbase64("abc"), None);
        assert_eq!(unbase64("a==="), None);
        assert_eq!(unbase64("ab!="), None);
    }
}
