//! What the contract stores: its parameters, nodes, channels and the graph, and the
//! records its views return.

use near_sdk::json_types::{U128, U64};
use near_sdk::store::{IterableMap, IterableSet, LazyOption, LookupMap};
use near_sdk::{near, AccountId, BorshStorageKey, PanicOnDefault};
use por_protocol::types::EdgeTerms;
use por_protocol::Amount;

use crate::error::{ContractError, R};
use crate::graph::{self, Graph};

/// Contract parameters, fixed at initialisation.
#[near(serializers = [borsh, json])]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The network this deployment is on (`mainnet`, `testnet`, `sandbox`, `embedded`,
    /// ...). With the contract's own account it names the deployment every signature
    /// is bound to (see `por_protocol::crypto::Deployment`).
    pub network: String,
    /// Minimum stake to register (yoctoNEAR).
    pub min_stake: U128,
    /// Minimum deposit per side to open a channel.
    pub min_deposit: U128,
    /// Delay between asking to unstake and withdrawing.
    pub unbonding_ns: U64,
    /// Challenge period of an adversarial close.
    pub challenge_ns: U64,
    /// Penalty each endpoint pays when an edge is severed.
    pub sever_penalty: U128,
    /// Share of stake (basis points) a node in the disconnected component loses.
    pub partition_slash_bps: u16,
}

/// Edge terms as JSON arguments.
#[near(serializers = [borsh, json])]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Terms {
    /// Promised one-way latency.
    pub latency_ms: u64,
    /// Base cost per message.
    pub base_cost: U128,
    /// Cost per body byte.
    pub byte_cost: U128,
    /// Sync interval.
    pub sync_interval_ms: u64,
    /// Sync phase.
    pub sync_phase_ms: u64,
    /// Highest late-fee rate accepted.
    pub max_late_fee_rate: U128,
    /// Promised bandwidth, bytes per second (absent in JSON: 125 MB/s).
    #[serde(default = "default_bandwidth")]
    pub bandwidth: u64,
}

fn default_bandwidth() -> u64 {
    EdgeTerms::DEFAULT_BANDWIDTH
}

impl From<&Terms> for EdgeTerms {
    fn from(t: &Terms) -> EdgeTerms {
        EdgeTerms {
            latency_ms: t.latency_ms,
            base_cost: Amount(t.base_cost.0),
            byte_cost: Amount(t.byte_cost.0),
            sync_interval_ms: t.sync_interval_ms,
            sync_phase_ms: t.sync_phase_ms,
            max_late_fee_rate: Amount(t.max_late_fee_rate.0),
            bandwidth: t.bandwidth,
        }
    }
}

/// A registered node as stored (its stake lives in the graph).
#[near(serializers = [borsh])]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Its NEAR account.
    pub account: AccountId,
    /// Its ed25519 node key, hex.
    pub key: String,
    /// Network addresses peers dial.
    pub addresses: Vec<String>,
    /// When the stake unbonding (held in the graph, where it stays slashable) can be
    /// withdrawn.
    pub unbonding_until: Option<U64>,
    /// Index in the graph.
    pub index: u32,
}

/// A node as the views show it.
#[near(serializers = [json])]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    /// Its NEAR account.
    pub account: AccountId,
    /// Its ed25519 node key, hex.
    pub key: String,
    /// Staked yoctoNEAR.
    pub stake: U128,
    /// Network addresses peers dial.
    pub addresses: Vec<String>,
    /// Amount unbonding (less what slashes and reimbursements took of it) and when it
    /// can be withdrawn.
    pub unbonding: Option<(U128, U64)>,
    /// Set once a partition check found it on the disconnected side.
    pub disconnected: bool,
    /// Live edges.
    pub degree: u32,
    /// Penalties this node would reimburse if a split left it on the smaller side.
    pub owed: U128,
}

/// Where a channel is in its life.
#[near(serializers = [borsh, json])]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChannelState {
    /// Proposed by `a`, awaiting `b`'s confirmation.
    Proposed,
    /// Confirmed: part of the topology.
    Open,
    /// One side proposed a cooperative close with the states held.
    ClosePending {
        /// Who proposed.
        by: AccountId,
    },
    /// Adversarial close (or after a sever): states may be challenged until `until_ns`.
    Closing {
        /// End of the challenge period.
        until_ns: U64,
    },
    /// Paid out.
    Closed,
    /// Cancelled before confirmation; the deposit was returned.
    Cancelled,
}

impl ChannelState {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            ChannelState::Proposed => "proposed",
            ChannelState::Open => "open",
            ChannelState::ClosePending { .. } => "close-pending",
            ChannelState::Closing { .. } => "closing",
            ChannelState::Closed => "closed",
            ChannelState::Cancelled => "cancelled",
        }
    }
}

/// Why and when an edge was severed.
#[near(serializers = [borsh, json])]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeverRecord {
    /// The severing node.
    pub by: AccountId,
    /// Block time.
    pub at_ns: U64,
    /// The notice's reason.
    pub reason: String,
    /// Penalty `a` paid.
    pub penalty_a: U128,
    /// Penalty `b` paid.
    pub penalty_b: U128,
}

/// A channel (edge).
#[near(serializers = [borsh, json])]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Channel {
    /// Id (never reused).
    pub id: U64,
    /// Proposer.
    pub a: AccountId,
    /// Confirmer.
    pub b: AccountId,
    /// Terms.
    pub terms: Terms,
    /// `a`'s deposit.
    pub deposit_a: U128,
    /// `b`'s deposit.
    pub deposit_b: U128,
    /// State.
    pub state: ChannelState,
    /// Highest state seen, a → b: (seq, cumulative).
    pub paid_ab: (U64, U128),
    /// Highest state seen, b → a.
    pub paid_ba: (U64, U128),
    /// Set if severed.
    pub severed: Option<SeverRecord>,
}

/// Storage prefixes of the contract's collections.
#[derive(BorshStorageKey)]
#[near]
pub(crate) enum Key {
    Nodes,
    Keys,
    Channels,
    Graph,
    Pairs,
    Settled,
    Open,
    Storage,
}

/// The contract.
#[near(contract_state)]
#[derive(PanicOnDefault)]
pub struct PorContract {
    pub(crate) config: Config,
    pub(crate) nodes: IterableMap<AccountId, Node>,
    pub(crate) keys: LookupMap<String, AccountId>,
    /// Channels not yet settled: proposed, open, or closing. Only these are paged.
    pub(crate) channels: IterableMap<u64, Channel>,
    /// Settled channels (closed or cancelled), out of every paged view: looked up by
    /// id only, so history never slows the views down.
    pub(crate) settled: LookupMap<u64, Channel>,
    /// Ids of the open channels: the live edges, paged in O(page).
    pub(crate) open: IterableSet<u64>,
    /// Each account's storage balance: what it deposited for the storage its calls
    /// add, less what they added (see `storage.rs`).
    pub(crate) storage: LookupMap<AccountId, u128>,
    /// Live or proposed channel per unordered pair of accounts.
    pub(crate) pairs: LookupMap<(AccountId, AccountId), u64>,
    pub(crate) graph: LazyOption<Graph>,
    pub(crate) next_channel: u64,
    /// Penalties and slashes collected and not reimbursed.
    pub(crate) pool: u128,
    /// `Deployment::of(config.network, current_account_id)`, fixed at `new`: the only
    /// deployment whose signatures this contract accepts.
    pub(crate) deployment: [u8; 32],
}

impl PorContract {
    pub(crate) fn node(&self, a: &AccountId) -> R<&Node> {
        self.nodes
            .get(a)
            .ok_or_else(|| ContractError::UnknownNode(a.to_string()))
    }

    pub(crate) fn channel(&self, id: u64) -> R<&Channel> {
        self.channels
            .get(&id)
            .or_else(|| self.settled.get(&id))
            .ok_or(ContractError::UnknownChannel(id))
    }

    /// Moves a paid-out or cancelled channel out of the paged collections. It is not
    /// in `open`: a proposal never was, and a close or sever unlinked it first.
    pub(crate) fn retire_channel(&mut self, id: u64, state: ChannelState) {
        if let Some(mut c) = self.channels.remove(&id) {
            c.state = state;
            self.settled.insert(id, c);
        }
    }

    pub(crate) fn graph_mut(&mut self) -> &mut Graph {
        self.graph.get_or_insert_with(Graph::default)
    }

    pub(crate) fn gnode(&mut self, index: u32) -> R<&mut graph::GNode> {
        self.graph_mut()
            .node_mut(index)
            .ok_or_else(|| ContractError::UnknownNode(format!("index {index}")))
    }

    pub(crate) fn stake_of(&mut self, account: &AccountId) -> R<u128> {
        let index = self.node(account)?.index;
        Ok(self.gnode(index)?.stake)
    }

    pub(crate) fn set_stake(&mut self, account: &AccountId, stake: u128) -> R<()> {
        let index = self.node(account)?.index;
        self.gnode(index)?.stake = stake;
        Ok(())
    }

    pub(crate) fn view(&self, n: &Node) -> NodeView {
        let g = self.graph.get().as_ref().and_then(|g| g.node(n.index));
        NodeView {
            account: n.account.clone(),
            key: n.key.clone(),
            stake: U128(g.map_or(0, |g| g.stake)),
            addresses: n.addresses.clone(),
            unbonding: n
                .unbonding_until
                .map(|until| (U128(g.map_or(0, |g| g.unbonding)), until)),
            disconnected: g.is_some_and(|g| g.disconnected),
            degree: g.map_or(0, |g| u32::try_from(g.edges.len()).unwrap_or(u32::MAX)),
            owed: U128(g.map_or(0, |g| {
                g.owed
                    .iter()
                    .fold(0u128, |sum, (_, amount, _)| sum.saturating_add(*amount))
            })),
        }
    }
}
