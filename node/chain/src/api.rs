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

/// Everything a node does on chain.
pub trait Chain: Send + Sync + 'static {
    /// Registers this node with its key, addresses and stake.
    fn register(
        &self,
        key: NodeId,
        addresses: Vec<String>,
        stake: Amount,
    ) -> impl Future<Output = Result<(), ChainError>> + Send;
    /// Proposes an edge to `peer` (an account) with our deposit.
    fn propose_channel(
        &self,
        peer: &str,
        terms: &EdgeTerms,
        deposit: Amount,
    ) -> impl Future<Output = Result<ChannelId, ChainError>> + Send;
    /// Confirms an edge proposed to us, with our deposit.
    fn confirm_channel(
        &self,
        id: ChannelId,
        deposit: Amount,
    ) -> impl Future<Output = Result<(), ChainError>> + Send;
    /// Cancels a proposal.
    fn cancel_channel(&self, id: ChannelId) -> impl Future<Output = Result<(), ChainError>> + Send;
    /// Proposes a cooperative close with the states we hold.
    fn propose_close(
        &self,
        id: ChannelId,
        states: &[SignedUpdate],
    ) -> impl Future<Output = Result<(), ChainError>> + Send;
    /// Confirms the peer's cooperative close; returns the payouts `(a, b)`.
    fn confirm_close(
        &self,
        id: ChannelId,
        states: &[SignedUpdate],
    ) -> impl Future<Output = Result<(Amount, Amount), ChainError>> + Send;
    /// Starts an adversarial close; returns the end of the challenge period (ns).
    fn start_close(
        &self,
        id: ChannelId,
        states: &[SignedUpdate],
    ) -> impl Future<Output = Result<u64, ChainError>> + Send;
    /// Answers a close with newer states.
    fn challenge(
        &self,
        id: ChannelId,
        states: &[SignedUpdate],
    ) -> impl Future<Output = Result<(), ChainError>> + Send;
    /// Pays out a channel whose challenge period is over; returns `(a, b)`.
    fn finalize_close(
        &self,
        id: ChannelId,
    ) -> impl Future<Output = Result<(Amount, Amount), ChainError>> + Send;
    /// Submits a severing notice (ours or one we were given); returns whether the graph split.
    fn sever(
        &self,
        notice: &SignedSeverNotice,
    ) -> impl Future<Output = Result<bool, ChainError>> + Send;
    /// Nodes and live edges now.
    fn snapshot(&self) -> impl Future<Output = Result<Snapshot, ChainError>> + Send;
    /// Events after `height`, oldest first, as `(height, NEP-297 event)`.
    fn events_since(
        &self,
        height: u64,
    ) -> impl Future<Output = Result<Vec<(u64, Value)>, ChainError>> + Send;
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

    fn call(&self, method: &str, args: Value, deposit: u128) -> Result<Value, ChainError> {
        let mut chain = self
            .chain
            .lock()
            .map_err(|_| ChainError::Db("chain lock poisoned".into()))?;
        let out = chain.call(
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

    fn view(&self, method: &str, args: Value) -> Result<Value, ChainError> {
        let chain = self
            .chain
            .lock()
            .map_err(|_| ChainError::Db("chain lock poisoned".into()))?;
        chain.view_json(method, args)
    }

    fn paged(&self, method: &str) -> Result<Vec<Value>, ChainError> {
        let mut out = Vec::new();
        loop {
            let page = self.view(method, json!({"from": out.len(), "limit": 200}))?;
            let items = page.as_array().cloned().unwrap_or_default();
            let n = items.len();
            out.extend(items);
            if n < 200 {
                return Ok(out);
            }
        }
    }
}

impl Chain for LocalClient {
    async fn register(
        &self,
        key: NodeId,
        addresses: Vec<String>,
        stake: Amount,
    ) -> Result<(), ChainError> {
        self.call(
            "register",
            json!({"key": hex(&key.0), "addresses": addresses}),
            stake.0,
        )
        .map(|_| ())
    }

    async fn propose_channel(
        &self,
        peer: &str,
        terms: &EdgeTerms,
        deposit: Amount,
    ) -> Result<ChannelId, ChainError> {
        let v = self.call(
            "propose_channel",
            json!({"peer": peer, "terms": terms_json(terms)}),
            deposit.0,
        )?;
        v.as_str()
            .and_then(|s| s.parse().ok())
            .map(ChannelId)
            .ok_or_else(|| ChainError::Decode(format!("channel id {v}")))
    }

    async fn confirm_channel(&self, id: ChannelId, deposit: Amount) -> Result<(), ChainError> {
        self.call(
            "confirm_channel",
            json!({"id": id.0.to_string()}),
            deposit.0,
        )
        .map(|_| ())
    }

    async fn cancel_channel(&self, id: ChannelId) -> Result<(), ChainError> {
        self.call("cancel_channel", json!({"id": id.0.to_string()}), 0)
            .map(|_| ())
    }

    async fn propose_close(&self, id: ChannelId, list: &[SignedUpdate]) -> Result<(), ChainError> {
        self.call(
            "propose_close",
            json!({"id": id.0.to_string(), "updates": states(list)?}),
            0,
        )
        .map(|_| ())
    }

    async fn confirm_close(
        &self,
        id: ChannelId,
        list: &[SignedUpdate],
    ) -> Result<(Amount, Amount), ChainError> {
        payouts(&self.call(
            "confirm_close",
            json!({"id": id.0.to_string(), "updates": states(list)?}),
            0,
        )?)
    }

    async fn start_close(&self, id: ChannelId, list: &[SignedUpdate]) -> Result<u64, ChainError> {
        let v = self.call(
            "start_close",
            json!({"id": id.0.to_string(), "updates": states(list)?}),
            0,
        )?;
        v.as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ChainError::Decode(format!("challenge end {v}")))
    }

    async fn challenge(&self, id: ChannelId, list: &[SignedUpdate]) -> Result<(), ChainError> {
        self.call(
            "challenge",
            json!({"id": id.0.to_string(), "updates": states(list)?}),
            0,
        )
        .map(|_| ())
    }

    async fn finalize_close(&self, id: ChannelId) -> Result<(Amount, Amount), ChainError> {
        payouts(&self.call("finalize_close", json!({"id": id.0.to_string()}), 0)?)
    }

    async fn sever(&self, notice: &SignedSeverNotice) -> Result<bool, ChainError> {
        let v = self.call("sever", json!({"notice": encoded(notice)?}), 0)?;
        v.as_bool()
            .ok_or_else(|| ChainError::Decode(format!("sever result {v}")))
    }

    async fn snapshot(&self) -> Result<Snapshot, ChainError> {
        let mut snap = Snapshot::default();
        for n in self.paged("get_nodes")? {
            snap.nodes.push(ChainNode {
                account: n["account"].as_str().unwrap_or_default().to_string(),
                key: key_of(n["key"].as_str().unwrap_or_default())?,
                stake: amount(&n["stake"])?,
                addresses: serde_json::from_value(n["addresses"].clone()).unwrap_or_default(),
                disconnected: n["disconnected"].as_bool().unwrap_or(false),
            });
        }
        for e in self.paged("get_edges")? {
            let key = |field: &str| {
                let account = e[field].as_str().unwrap_or_default();
                snap.nodes
                    .iter()
                    .find(|n| n.account == account)
                    .map(|n| n.key)
                    .ok_or_else(|| {
                        ChainError::Decode(format!("edge endpoint {account} is not a node"))
                    })
            };
            let id = e["id"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| ChainError::Decode("edge id".into()))?;
            snap.edges.push(EdgeInfo {
                id: ChannelId(id),
                a: key("a")?,
                b: key("b")?,
                terms: terms_of(&e["terms"])?,
                deposit_a: amount(&e["deposit_a"])?,
                deposit_b: amount(&e["deposit_b"])?,
            });
        }
        Ok(snap)
    }

    async fn events_since(&self, height: u64) -> Result<Vec<(u64, Value)>, ChainError> {
        let chain = self
            .chain
            .lock()
            .map_err(|_| ChainError::Db("chain lock poisoned".into()))?;
        chain.events_since(height, 10_000)
    }
}
