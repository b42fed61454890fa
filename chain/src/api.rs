//! The chain as a node sees it: one async trait over everything a node does on chain,
//! in por-protocol's types, and the values it returns. Implementations:
//! [`crate::LocalClient`] (the embedded chain in process), [`crate::RemoteClient`] (an
//! embedded chain served by another process), [`crate::NearClient`] (NEAR over RPC);
//! [`crate::AnyChain`] picks one at run time.

use std::future::Future;

use por_protocol::types::{ChannelId, EdgeInfo, EdgeTerms, Route, SignedSeverNotice, SignedUpdate};
use por_protocol::{topology::Topology, Amount, Deployment, NodeId};
use serde_json::{json, Value};

use crate::json::{channel_id, encoded, hex, payouts, states, terms_json};
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

    /// The route through `nodes` (client first) over the open edges listed here; the
    /// first consecutive pair with no edge between them when there is none.
    pub fn route_through(&self, nodes: Vec<NodeId>) -> Result<Route, (NodeId, NodeId)> {
        let mut channels = Vec::with_capacity(nodes.len().saturating_sub(1));
        for w in nodes.windows(2) {
            let e = self
                .edges
                .iter()
                .find(|e| (e.a == w[0] && e.b == w[1]) || (e.a == w[1] && e.b == w[0]))
                .ok_or((w[0], w[1]))?;
            channels.push(e.id);
        }
        Ok(Route { nodes, channels })
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

    /// This account's storage balance: what is left of its storage deposits after
    /// the storage its calls added (0 if it never deposited).
    fn storage_balance(&self) -> impl Future<Output = Result<Amount, ChainError>> + Send {
        async move {
            let v = self
                .view("storage_balance_of", json!({"account_id": self.account()}))
                .await?;
            if v.is_null() {
                return Ok(Amount::ZERO);
            }
            crate::json::amount(&v["total"])
        }
    }

    /// Adds `amount` to this account's storage balance.
    fn storage_deposit(
        &self,
        amount: Amount,
    ) -> impl Future<Output = Result<(), ChainError>> + Send {
        async move {
            self.call("storage_deposit", json!({}), amount.0)
                .await
                .map(|_| ())
        }
    }

    /// Tops this account's storage balance up to [`STORAGE_TOP_UP`] when it is below
    /// [`STORAGE_LOW`], before a call that adds storage (a node record, a channel):
    /// callers pay for the storage they add, and the contract refuses a call whose
    /// storage the balance does not cover.
    fn ensure_storage(&self) -> impl Future<Output = Result<(), ChainError>> + Send {
        async move {
            let have = self.storage_balance().await?;
            if have < STORAGE_LOW {
                let top_up = STORAGE_TOP_UP.checked_sub(have).unwrap_or(STORAGE_TOP_UP);
                self.storage_deposit(top_up).await?;
            }
            Ok(())
        }
    }

    /// Registers this node with its key, addresses and stake (topping its storage
    /// balance up first: see [`Chain::ensure_storage`]).
    fn register(
        &self,
        key: NodeId,
        addresses: Vec<String>,
        stake: Amount,
    ) -> impl Future<Output = Result<(), ChainError>> + Send {
        async move {
            self.ensure_storage().await?;
            self.call(
                "register",
                json!({"key": hex(&key.0), "addresses": addresses}),
                stake.0,
            )
            .await
            .map(|_| ())
        }
    }

    /// Adds `amount` to this node's stake.
    fn add_stake(&self, amount: Amount) -> impl Future<Output = Result<(), ChainError>> + Send {
        async move {
            self.call("add_stake", json!({}), amount.0)
                .await
                .map(|_| ())
        }
    }

    /// Starts unbonding `amount` of this node's stake.
    fn unstake(&self, amount: Amount) -> impl Future<Output = Result<(), ChainError>> + Send {
        async move {
            self.call("unstake", json!({"amount": amount.0.to_string()}), 0)
                .await
                .map(|_| ())
        }
    }

    /// Withdraws stake whose unbonding period is over; returns the amount sent.
    fn withdraw(&self) -> impl Future<Output = Result<Amount, ChainError>> + Send {
        async move {
            let v = self.call("withdraw", json!({}), 0).await?;
            crate::json::amount(&v)
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
            self.ensure_storage().await?;
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
            self.ensure_storage().await?;
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

    /// The deployment every signature on this chain must be made for: the contract's
    /// `get_deployment` view.
    fn deployment(&self) -> impl Future<Output = Result<Deployment, ChainError>> + Send {
        async move {
            let v = self.view("get_deployment", json!({})).await?;
            v.as_str()
                .and_then(Deployment::from_hex)
                .ok_or_else(|| ChainError::Decode(format!("get_deployment: {v}")))
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

/// Below this storage balance, [`Chain::ensure_storage`] tops it up (0.01 NEAR: a
/// node record or a channel costs a few thousandths).
pub const STORAGE_LOW: Amount = Amount(10_000_000_000_000_000_000_000);
/// What [`Chain::ensure_storage`] tops a storage balance up to (0.05 NEAR).
pub const STORAGE_TOP_UP: Amount = Amount(50_000_000_000_000_000_000_000);

/// Most events one `events_since` answer carries; ask again from the last height.
pub const EVENT_PAGE: usize = 10_000;
