//! # por-contract
//!
//! The NEAR contract behind a Proof of Response network: registered nodes with their
//! stakes, keys and addresses; edges (state channels) with their terms and deposits;
//! cooperative and adversarial channel close; severing with penalties; partition
//! checks with slashing and reimbursements; views; NEP-297 events for every change.
//!
//! Signed values are `por_protocol` types, passed as base64 of their canonical wire
//! encoding, decoded with `por_protocol::wire::decode` and checked with
//! `env::ed25519_verify` over exactly `Signable::signing_bytes()` — the bytes the nodes
//! sign. The logic is plain Rust (`Result<_, ContractError>`); the `#[near]` methods
//! only turn errors into panics with their message.
// The near-sdk macros generate public items (the wasm exports, the state struct's
// helpers) that cannot carry doc comments; every item written here has one.
#![allow(missing_docs)]

use near_sdk::json_types::{Base64VecU8, U128, U64};
use near_sdk::serde_json::{self, json};
use near_sdk::store::{IterableMap, LazyOption, LookupMap};
use near_sdk::{env, near, AccountId, BorshStorageKey, NearToken, PanicOnDefault, Promise};
use por_protocol::crypto::Signable;
use por_protocol::types::{ChannelUpdate, EdgeTerms, SignedSeverNotice, SignedUpdate};
use por_protocol::{wire, Amount};

pub mod graph;

use graph::{Graph, Split};

/// Everything the contract refuses, with the message it panics with.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ContractError {
    /// The caller is not allowed to do this.
    #[error("unauthorized: {0}")]
    Unauthorized(&'static str),
    /// The account is already registered, or the key is taken.
    #[error("already registered: {0}")]
    AlreadyRegistered(String),
    /// The address list is too long, or an address is.
    #[error("addresses: at most {MAX_ADDRESSES} of at most {MAX_ADDRESS_LEN} bytes each")]
    BadAddresses,
    /// No such node.
    #[error("unknown node {0}")]
    UnknownNode(String),
    /// No such channel.
    #[error("unknown channel {0}")]
    UnknownChannel(u64),
    /// The attached deposit is below what the call needs.
    #[error("insufficient deposit: attached {attached}, need at least {needed}")]
    InsufficientDeposit {
        /// Attached yoctoNEAR.
        attached: u128,
        /// Required yoctoNEAR.
        needed: u128,
    },
    /// Not enough stake for the request.
    #[error("insufficient stake: {0}")]
    InsufficientStake(String),
    /// The channel is not in a state that allows this.
    #[error("channel {id} is {state}: cannot {action}")]
    WrongState {
        /// The channel.
        id: u64,
        /// Its state.
        state: &'static str,
        /// What was attempted.
        action: &'static str,
    },
    /// A signature does not verify.
    #[error("bad signature on {0}")]
    BadSignature(&'static str),
    /// A signed value could not be decoded.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// What was being decoded.
        what: &'static str,
        /// The decoder's message.
        detail: String,
    },
    /// A submitted state is not newer than the one held.
    #[error("stale state for {direction}: have seq {have}, got {got}")]
    StaleState {
        /// Which direction.
        direction: &'static str,
        /// Seq held.
        have: u64,
        /// Seq submitted.
        got: u64,
    },
    /// A signed state belongs to another channel or other parties.
    #[error("state does not belong to channel {0}")]
    ForeignState(u64),
    /// Not yet: a challenge period or an unbonding delay is still running.
    #[error("too early: {what} ends at {at_ns} ns")]
    TooEarly {
        /// What is running.
        what: &'static str,
        /// When it ends.
        at_ns: u64,
    },
    /// Arithmetic would overflow.
    #[error("amount overflow")]
    Overflow,
    /// An argument is invalid.
    #[error("invalid argument: {0}")]
    Invalid(String),
}

type R<T> = Result<T, ContractError>;

fn ok<T>(r: R<T>) -> T {
    r.unwrap_or_else(|e| env::panic_str(&e.to_string()))
}

fn add(a: u128, b: u128) -> R<u128> {
    a.checked_add(b).ok_or(ContractError::Overflow)
}

fn sub(a: u128, b: u128) -> R<u128> {
    a.checked_sub(b).ok_or(ContractError::Overflow)
}

/// Contract parameters, fixed at initialisation.
#[near(serializers = [borsh, json])]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
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
    /// Amount unbonding and when it can be withdrawn.
    pub unbonding: Option<(U128, U64)>,
    /// Index in the graph.
    pub index: u32,
    /// Severed channels it was an endpoint of.
    pub severed: Vec<u64>,
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
    /// Amount unbonding and when it can be withdrawn.
    pub unbonding: Option<(U128, U64)>,
    /// Set once a partition check found it on the disconnected side.
    pub disconnected: bool,
    /// Live edges.
    pub degree: u32,
    /// Severed channels it was an endpoint of.
    pub severed: Vec<U64>,
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
    fn name(&self) -> &'static str {
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
    /// Whether the penalties have been reimbursed by an isolated node.
    pub reimbursed: bool,
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

#[derive(BorshStorageKey)]
#[near]
enum Key {
    Nodes,
    Keys,
    Channels,
    Graph,
    Pairs,
}

/// The contract.
#[near(contract_state)]
#[derive(PanicOnDefault)]
pub struct PorContract {
    config: Config,
    nodes: IterableMap<AccountId, Node>,
    keys: LookupMap<String, AccountId>,
    channels: IterableMap<u64, Channel>,
    /// Live or proposed channel per unordered pair of accounts.
    pairs: LookupMap<(AccountId, AccountId), u64>,
    graph: LazyOption<Graph>,
    next_channel: u64,
    /// Penalties and slashes collected and not reimbursed.
    pool: u128,
}

/// Sends both sides their payout. Two independent transfers: NEAR does not allow a
/// method to return a joint promise, so they are scheduled and the amounts returned.
fn pay_out(a: AccountId, pa: u128, b: AccountId, pb: u128) -> [U128; 2] {
    for (to, amount) in [(a, pa), (b, pb)] {
        if amount > 0 {
            Promise::new(to)
                .transfer(NearToken::from_yoctonear(amount))
                .detach();
        }
    }
    [U128(pa), U128(pb)]
}

/// Most accounts a `node_disconnected` event lists (the log budget is 16 KiB a call).
const MAX_LISTED: usize = 64;

fn emit(event: &str, data: serde_json::Value) {
    let body = json!({"standard": "por", "version": "1.0.0", "event": event, "data": [data]});
    env::log_str(&format!("EVENT_JSON:{body}"));
}

fn pair(x: &AccountId, y: &AccountId) -> (AccountId, AccountId) {
    if x < y {
        (x.clone(), y.clone())
    } else {
        (y.clone(), x.clone())
    }
}

/// Most network addresses a node may publish (each costs the contract storage).
pub const MAX_ADDRESSES: usize = 8;
/// Longest network address a node may publish, in bytes.
pub const MAX_ADDRESS_LEN: usize = 128;

fn check_addresses(addresses: &[String]) -> R<()> {
    if addresses.len() > MAX_ADDRESSES || addresses.iter().any(|a| a.len() > MAX_ADDRESS_LEN) {
        return Err(ContractError::BadAddresses);
    }
    Ok(())
}

fn hex32(s: &str) -> R<[u8; 32]> {
    let s = s.strip_prefix("0x").unwrap_or(s);
    if s.len() != 64 {
        return Err(ContractError::Invalid("a node key is 64 hex digits".into()));
    }
    let mut out = [0u8; 32];
    for (i, slot) in out.iter_mut().enumerate() {
        let byte = s
            .get(i * 2..i * 2 + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .ok_or_else(|| ContractError::Invalid("node key is not hex".into()))?;
        *slot = byte;
    }
    Ok(out)
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn verify<T: Signable>(
    value: &T,
    sig: &por_protocol::Signature,
    key: &[u8; 32],
    what: &'static str,
) -> R<()> {
    let bytes = value
        .signing_bytes()
        .map_err(|e| ContractError::Malformed {
            what,
            detail: e.to_string(),
        })?;
    if env::ed25519_verify(&sig.0, &bytes, key) {
        Ok(())
    } else {
        Err(ContractError::BadSignature(what))
    }
}

impl PorContract {
    fn node(&self, a: &AccountId) -> R<&Node> {
        self.nodes
            .get(a)
            .ok_or_else(|| ContractError::UnknownNode(a.to_string()))
    }

    fn channel(&self, id: u64) -> R<&Channel> {
        self.channels
            .get(&id)
            .ok_or(ContractError::UnknownChannel(id))
    }

    fn graph_mut(&mut self) -> &mut Graph {
        self.graph.get_or_insert_with(Graph::default)
    }

    fn gnode(&mut self, index: u32) -> R<&mut graph::GNode> {
        self.graph_mut()
            .node_mut(index)
            .ok_or_else(|| ContractError::UnknownNode(format!("index {index}")))
    }

    fn stake_of(&mut self, account: &AccountId) -> R<u128> {
        let index = self.node(account)?.index;
        Ok(self.gnode(index)?.stake)
    }

    fn set_stake(&mut self, account: &AccountId, stake: u128) -> R<()> {
        let index = self.node(account)?.index;
        self.gnode(index)?.stake = stake;
        Ok(())
    }

    fn view(&self, n: &Node) -> NodeView {
        let g = self.graph.get().as_ref().and_then(|g| g.node(n.index));
        NodeView {
            account: n.account.clone(),
            key: n.key.clone(),
            stake: U128(g.map_or(0, |g| g.stake)),
            addresses: n.addresses.clone(),
            unbonding: n.unbonding,
            disconnected: g.is_some_and(|g| g.disconnected),
            degree: g.map_or(0, |g| u32::try_from(g.edges.len()).unwrap_or(u32::MAX)),
            severed: n.severed.iter().map(|c| U64(*c)).collect(),
        }
    }

    // ------------------------------------------------------------------ nodes

    /// Registers the caller with `deposit` as stake.
    pub fn do_register(
        &mut self,
        caller: AccountId,
        deposit: u128,
        key: String,
        addresses: Vec<String>,
    ) -> R<()> {
        let min = self.config.min_stake.0;
        if deposit < min {
            return Err(ContractError::InsufficientDeposit {
                attached: deposit,
                needed: min,
            });
        }
        check_addresses(&addresses)?;
        let key = to_hex(&hex32(&key)?);
        if self.nodes.contains_key(&caller) {
            return Err(ContractError::AlreadyRegistered(caller.to_string()));
        }
        if self.keys.contains_key(&key) {
            return Err(ContractError::AlreadyRegistered(format!("key {key}")));
        }
        let index = self.graph_mut().add_node(caller.clone(), deposit);
        self.keys.insert(key.clone(), caller.clone());
        emit(
            "node_registered",
            json!({"account": caller, "key": key, "stake": U128(deposit), "addresses": addresses}),
        );
        self.nodes.insert(
            caller.clone(),
            Node {
                account: caller,
                key,
                addresses,
                unbonding: None,
                index,
                severed: Vec::new(),
            },
        );
        Ok(())
    }

    /// Adds `deposit` to the caller's stake.
    pub fn do_add_stake(&mut self, caller: AccountId, deposit: u128) -> R<()> {
        let stake = add(self.stake_of(&caller)?, deposit)?;
        self.set_stake(&caller, stake)?;
        emit(
            "stake_added",
            json!({"account": caller, "amount": U128(deposit), "stake": U128(stake)}),
        );
        Ok(())
    }

    /// Starts unbonding `amount` of the caller's stake.
    pub fn do_unstake(&mut self, caller: AccountId, amount: u128, now: u64) -> R<()> {
        let node = self.node(&caller)?.clone();
        if node.unbonding.is_some() {
            return Err(ContractError::Invalid(
                "an unbonding is already in progress".into(),
            ));
        }
        let stake = self.stake_of(&caller)?;
        let left = sub(stake, amount)
            .map_err(|_| ContractError::InsufficientStake(format!("stake is {stake}")))?;
        let live = self
            .graph
            .get()
            .as_ref()
            .map_or(0, |g| g.degree(node.index));
        if left < self.config.min_stake.0 && live > 0 {
            return Err(ContractError::InsufficientStake(format!(
                "{live} live edges need at least {} staked",
                self.config.min_stake.0
            )));
        }
        let release = now.saturating_add(self.config.unbonding_ns.0);
        self.set_stake(&caller, left)?;
        if let Some(n) = self.nodes.get_mut(&caller) {
            n.unbonding = Some((U128(amount), U64(release)));
        }
        emit(
            "unstake_started",
            json!({"account": caller, "amount": U128(amount), "release_ns": U64(release)}),
        );
        Ok(())
    }

    /// Completes an unbonding; returns the amount to transfer.
    pub fn do_withdraw(&mut self, caller: AccountId, now: u64) -> R<u128> {
        let node = self.node(&caller)?;
        let (amount, release) = node
            .unbonding
            .ok_or_else(|| ContractError::Invalid("nothing is unbonding".into()))?;
        if now < release.0 {
            return Err(ContractError::TooEarly {
                what: "unbonding",
                at_ns: release.0,
            });
        }
        if let Some(n) = self.nodes.get_mut(&caller) {
            n.unbonding = None;
        }
        emit(
            "stake_withdrawn",
            json!({"account": caller, "amount": amount}),
        );
        Ok(amount.0)
    }

    /// Replaces the caller's addresses.
    pub fn do_update_addresses(&mut self, caller: AccountId, addresses: Vec<String>) -> R<()> {
        check_addresses(&addresses)?;
        let node = self
            .nodes
            .get_mut(&caller)
            .ok_or_else(|| ContractError::UnknownNode(caller.to_string()))?;
        node.addresses = addresses.clone();
        emit(
            "addresses_updated",
            json!({"account": caller, "addresses": addresses}),
        );
        Ok(())
    }

    // ------------------------------------------------------------------ channels

    /// The caller proposes an edge to `peer` with `deposit`.
    pub fn do_propose(
        &mut self,
        caller: AccountId,
        deposit: u128,
        peer: AccountId,
        terms: Terms,
    ) -> R<u64> {
        self.node(&caller)?;
        self.node(&peer)?;
        if caller == peer {
            return Err(ContractError::Invalid("an edge needs two nodes".into()));
        }
        let min = self.config.min_deposit.0;
        if deposit < min {
            return Err(ContractError::InsufficientDeposit {
                attached: deposit,
                needed: min,
            });
        }
        if terms.sync_interval_ms == 0 {
            return Err(ContractError::Invalid(
                "sync interval must be positive".into(),
            ));
        }
        if let Some(existing) = self.pairs.get(&pair(&caller, &peer)) {
            return Err(ContractError::Invalid(format!(
                "channel {existing} already joins these nodes"
            )));
        }
        self.next_channel = self
            .next_channel
            .checked_add(1)
            .ok_or(ContractError::Overflow)?;
        let id = self.next_channel;
        self.pairs.insert(pair(&caller, &peer), id);
        emit(
            "channel_proposed",
            json!({"id": U64(id), "a": caller, "b": peer, "deposit": U128(deposit), "terms": terms}),
        );
        self.channels.insert(
            id,
            Channel {
                id: U64(id),
                a: caller,
                b: peer,
                terms,
                deposit_a: U128(deposit),
                deposit_b: U128(0),
                state: ChannelState::Proposed,
                paid_ab: (U64(0), U128(0)),
                paid_ba: (U64(0), U128(0)),
                severed: None,
            },
        );
        Ok(id)
    }

    /// `b` confirms a proposed edge with its deposit.
    pub fn do_confirm(&mut self, caller: AccountId, deposit: u128, id: u64) -> R<()> {
        let ch = self.channel(id)?.clone();
        if ch.b != caller {
            return Err(ContractError::Unauthorized(
                "only the proposed peer confirms",
            ));
        }
        if ch.state != ChannelState::Proposed {
            return Err(ContractError::WrongState {
                id,
                state: ch.state.name(),
                action: "confirm",
            });
        }
        let min = self.config.min_deposit.0;
        if deposit < min {
            return Err(ContractError::InsufficientDeposit {
                attached: deposit,
                needed: min,
            });
        }
        let (ia, ib) = (self.node(&ch.a)?.index, self.node(&ch.b)?.index);
        self.graph_mut().add_edge(ia, ib, id);
        if let Some(c) = self.channels.get_mut(&id) {
            c.deposit_b = U128(deposit);
            c.state = ChannelState::Open;
        }
        emit(
            "channel_opened",
            json!({"id": U64(id), "a": ch.a, "b": ch.b, "deposit_a": ch.deposit_a, "deposit_b": U128(deposit), "terms": ch.terms}),
        );
        Ok(())
    }

    /// Either side cancels a proposal; returns `(a, refund)`.
    pub fn do_cancel(&mut self, caller: AccountId, id: u64) -> R<(AccountId, u128)> {
        let ch = self.channel(id)?.clone();
        if caller != ch.a && caller != ch.b {
            return Err(ContractError::Unauthorized("only an endpoint cancels"));
        }
        if ch.state != ChannelState::Proposed {
            return Err(ContractError::WrongState {
                id,
                state: ch.state.name(),
                action: "cancel",
            });
        }
        self.pairs.remove(&pair(&ch.a, &ch.b));
        if let Some(c) = self.channels.get_mut(&id) {
            c.state = ChannelState::Cancelled;
        }
        emit(
            "channel_cancelled",
            json!({"id": U64(id), "by": caller, "refund": ch.deposit_a}),
        );
        Ok((ch.a, ch.deposit_a.0))
    }

    /// Decodes and verifies signed updates for channel `id`; returns them by direction.
    fn verified_states(
        &self,
        ch: &Channel,
        updates: &[Base64VecU8],
    ) -> R<Vec<(bool, ChannelUpdate)>> {
        let (ka, kb) = (
            hex32(&self.node(&ch.a)?.key)?,
            hex32(&self.node(&ch.b)?.key)?,
        );
        let mut out = Vec::new();
        for raw in updates {
            let su: SignedUpdate = wire::decode(&raw.0).map_err(|e| ContractError::Malformed {
                what: "signed update",
                detail: e.to_string(),
            })?;
            // The payer signed the Merkle root of a batch of its updates; the proof
            // places this update in it.
            let batch = su.batch().ok_or(ContractError::Malformed {
                what: "signed update",
                detail: "malformed batch proof".into(),
            })?;
            let u = su.update;
            if u.channel.0 != ch.id.0 {
                return Err(ContractError::ForeignState(ch.id.0));
            }
            let a_pays = if u.payer.0 == ka && u.payee.0 == kb {
                true
            } else if u.payer.0 == kb && u.payee.0 == ka {
                false
            } else {
                return Err(ContractError::ForeignState(ch.id.0));
            };
            verify(&batch, &su.sig, &u.payer.0, "channel update")?;
            out.push((a_pays, u));
        }
        Ok(out)
    }

    /// Records states that are newer than those held. With `strict`, a state that is
    /// not newer is refused (stale).
    fn record_states(
        &mut self,
        id: u64,
        states: Vec<(bool, ChannelUpdate)>,
        strict: bool,
    ) -> R<()> {
        let mut ch = self.channel(id)?.clone();
        for (a_pays, u) in states {
            let (slot, dir) = if a_pays {
                (&mut ch.paid_ab, "a->b")
            } else {
                (&mut ch.paid_ba, "b->a")
            };
            if u.seq > slot.0 .0 {
                *slot = (U64(u.seq), U128(u.cumulative.0));
            } else if strict {
                return Err(ContractError::StaleState {
                    direction: dir,
                    have: slot.0 .0,
                    got: u.seq,
                });
            }
        }
        self.channels.insert(id, ch);
        Ok(())
    }

    fn endpoint(ch: &Channel, caller: &AccountId) -> R<()> {
        if *caller == ch.a || *caller == ch.b {
            Ok(())
        } else {
            Err(ContractError::Unauthorized(
                "only an endpoint of the channel",
            ))
        }
    }

    /// Removes an edge from the live topology.
    fn unlink(&mut self, ch: &Channel) -> R<()> {
        let (ia, ib) = (self.node(&ch.a)?.index, self.node(&ch.b)?.index);
        self.graph_mut().remove_edge(ia, ib, ch.id.0);
        self.pairs.remove(&pair(&ch.a, &ch.b));
        Ok(())
    }

    /// The payout: each side's deposit plus what it was paid minus what it paid,
    /// clamped to what the channel holds.
    fn payout(ch: &Channel) -> R<(u128, u128)> {
        let total = add(ch.deposit_a.0, ch.deposit_b.0)?;
        let (ab, ba) = (ch.paid_ab.1 .0, ch.paid_ba.1 .0);
        let a = ch
            .deposit_a
            .0
            .saturating_add(ba)
            .saturating_sub(ab)
            .min(total);
        Ok((a, sub(total, a)?))
    }

    fn settle(&mut self, id: u64) -> R<(AccountId, u128, AccountId, u128)> {
        let ch = self.channel(id)?.clone();
        let (pa, pb) = Self::payout(&ch)?;
        if let Some(c) = self.channels.get_mut(&id) {
            c.state = ChannelState::Closed;
        }
        emit(
            "channel_closed",
            json!({"id": U64(id), "a": ch.a, "payout_a": U128(pa), "b": ch.b, "payout_b": U128(pb), "paid_ab": ch.paid_ab.1, "paid_ba": ch.paid_ba.1}),
        );
        Ok((ch.a, pa, ch.b, pb))
    }

    /// An endpoint proposes a cooperative close with the latest states it holds.
    pub fn do_propose_close(
        &mut self,
        caller: AccountId,
        id: u64,
        updates: Vec<Base64VecU8>,
    ) -> R<()> {
        let ch = self.channel(id)?.clone();
        Self::endpoint(&ch, &caller)?;
        if ch.state != ChannelState::Open {
            return Err(ContractError::WrongState {
                id,
                state: ch.state.name(),
                action: "propose a close",
            });
        }
        let states = self.verified_states(&ch, &updates)?;
        self.record_states(id, states, false)?;
        self.unlink(&ch)?;
        if let Some(c) = self.channels.get_mut(&id) {
            c.state = ChannelState::ClosePending { by: caller.clone() };
        }
        emit("close_proposed", json!({"id": U64(id), "by": caller}));
        Ok(())
    }

    /// The other endpoint confirms a cooperative close (optionally adding newer states
    /// it holds); paid out at once.
    pub fn do_confirm_close(
        &mut self,
        caller: AccountId,
        id: u64,
        updates: Vec<Base64VecU8>,
    ) -> R<(AccountId, u128, AccountId, u128)> {
        let ch = self.channel(id)?.clone();
        Self::endpoint(&ch, &caller)?;
        let ChannelState::ClosePending { by } = &ch.state else {
            return Err(ContractError::WrongState {
                id,
                state: ch.state.name(),
                action: "confirm a close",
            });
        };
        if *by == caller {
            return Err(ContractError::Unauthorized("the other endpoint confirms"));
        }
        let states = self.verified_states(&ch, &updates)?;
        self.record_states(id, states, false)?;
        self.settle(id)
    }

    /// An endpoint starts an adversarial close with the states it holds.
    pub fn do_start_close(
        &mut self,
        caller: AccountId,
        id: u64,
        updates: Vec<Base64VecU8>,
        now: u64,
    ) -> R<u64> {
        let ch = self.channel(id)?.clone();
        Self::endpoint(&ch, &caller)?;
        if !matches!(
            ch.state,
            ChannelState::Open | ChannelState::ClosePending { .. }
        ) {
            return Err(ContractError::WrongState {
                id,
                state: ch.state.name(),
                action: "start a close",
            });
        }
        let states = self.verified_states(&ch, &updates)?;
        self.record_states(id, states, false)?;
        if ch.state == ChannelState::Open {
            self.unlink(&ch)?;
        }
        let until = now.saturating_add(self.config.challenge_ns.0);
        if let Some(c) = self.channels.get_mut(&id) {
            c.state = ChannelState::Closing {
                until_ns: U64(until),
            };
        }
        emit(
            "close_started",
            json!({"id": U64(id), "by": caller, "until_ns": U64(until)}),
        );
        Ok(until)
    }

    /// During the challenge period an endpoint submits newer states; a state that is
    /// not newer than the one held is refused.
    pub fn do_challenge(
        &mut self,
        caller: AccountId,
        id: u64,
        updates: Vec<Base64VecU8>,
        now: u64,
    ) -> R<()> {
        let ch = self.channel(id)?.clone();
        Self::endpoint(&ch, &caller)?;
        let ChannelState::Closing { until_ns } = ch.state else {
            return Err(ContractError::WrongState {
                id,
                state: ch.state.name(),
                action: "challenge",
            });
        };
        if now >= until_ns.0 {
            return Err(ContractError::WrongState {
                id,
                state: "past its challenge period",
                action: "challenge",
            });
        }
        let states = self.verified_states(&ch, &updates)?;
        self.record_states(id, states, true)?;
        emit("close_challenged", json!({"id": U64(id), "by": caller}));
        Ok(())
    }

    /// After the challenge period anyone finalizes; paid out.
    pub fn do_finalize_close(
        &mut self,
        id: u64,
        now: u64,
    ) -> R<(AccountId, u128, AccountId, u128)> {
        let ch = self.channel(id)?.clone();
        let ChannelState::Closing { until_ns } = ch.state else {
            return Err(ContractError::WrongState {
                id,
                state: ch.state.name(),
                action: "finalize",
            });
        };
        if now < until_ns.0 {
            return Err(ContractError::TooEarly {
                what: "challenge period",
                at_ns: until_ns.0,
            });
        }
        self.settle(id)
    }

    // ------------------------------------------------------------------ severing

    /// Accepts a severing notice signed by an endpoint, submitted by anyone. Both
    /// endpoints pay the penalty; the channel enters its challenge period so its
    /// states can still be settled; then the partition check runs.
    pub fn do_sever(&mut self, notice: Base64VecU8, now: u64) -> R<Split> {
        let sn: SignedSeverNotice =
            wire::decode(&notice.0).map_err(|e| ContractError::Malformed {
                what: "sever notice",
                detail: e.to_string(),
            })?;
        let n = &sn.notice;
        let id = n.channel.0;
        let ch = self.channel(id)?.clone();
        if !matches!(
            ch.state,
            ChannelState::Open | ChannelState::ClosePending { .. }
        ) {
            return Err(ContractError::WrongState {
                id,
                state: ch.state.name(),
                action: "sever",
            });
        }
        let by = self
            .keys
            .get(&to_hex(&n.severer.0))
            .cloned()
            .ok_or_else(|| ContractError::UnknownNode(format!("key {}", to_hex(&n.severer.0))))?;
        let peer_key = to_hex(&n.peer.0);
        let other = if by == ch.a { &ch.b } else { &ch.a };
        if (by != ch.a && by != ch.b) || self.node(other)?.key != peer_key {
            return Err(ContractError::ForeignState(id));
        }
        verify(n, &sn.sig, &n.severer.0, "sever notice")?;
        if ch.state == ChannelState::Open {
            self.unlink(&ch)?;
        }
        let penalty = self.config.sever_penalty.0;
        let mut paid = [0u128; 2];
        for (slot, account) in paid.iter_mut().zip([&ch.a, &ch.b]) {
            let stake = self.stake_of(account)?;
            *slot = penalty.min(stake);
            self.set_stake(account, sub(stake, *slot)?)?;
            self.pool = add(self.pool, *slot)?;
            if let Some(node) = self.nodes.get_mut(account) {
                node.severed.push(id);
            }
        }
        let until = now.saturating_add(self.config.challenge_ns.0);
        let record = SeverRecord {
            by: by.clone(),
            at_ns: U64(now),
            reason: format!("{:?}", n.reason),
            penalty_a: U128(paid[0]),
            penalty_b: U128(paid[1]),
            reimbursed: false,
        };
        if let Some(c) = self.channels.get_mut(&id) {
            c.state = ChannelState::Closing {
                until_ns: U64(until),
            };
            c.severed = Some(record.clone());
        }
        emit(
            "edge_severed",
            json!({"id": U64(id), "by": by, "record": record, "until_ns": U64(until),
                   "notice": notice}),
        );
        self.partition_check(&ch)
    }

    /// After a sever: did the graph split? If so the component with less stake is
    /// disconnected and slashed; a node left isolated reimburses the penalties others
    /// paid on its severed edges.
    fn partition_check(&mut self, ch: &Channel) -> R<Split> {
        let (ia, ib) = (self.node(&ch.a)?.index, self.node(&ch.b)?.index);
        let split = self.graph_mut().split(ia, ib);
        if let Split::Partitioned { a, b } = &split {
            // Less stake loses; equal stake: the smaller component, then b's side.
            let small = if (a.1, a.0.len()) < (b.1, b.0.len()) {
                &a.0
            } else {
                &b.0
            };
            let bps = u128::from(self.config.partition_slash_bps);
            // All in the graph value: one read, one write, however many nodes.
            let mut listed = Vec::new();
            let mut total = 0u128;
            let g = self.graph_mut();
            for &i in small {
                let Some(n) = g.node_mut(i) else { continue };
                let slash = n.stake.saturating_mul(bps) / 10_000;
                n.stake = n.stake.saturating_sub(slash);
                n.disconnected = true;
                total = total.saturating_add(slash);
                if listed.len() < MAX_LISTED {
                    listed.push(n.account.clone());
                }
            }
            self.pool = add(self.pool, total)?;
            // NEAR allows 16 KiB of logs per call: the event names at most MAX_LISTED
            // accounts; every node's `disconnected` flag is in the paged views.
            emit(
                "node_disconnected",
                json!({"channel": ch.id, "count": small.len(), "slashed_total": U128(total),
                       "bps": self.config.partition_slash_bps, "accounts": listed,
                       "truncated": small.len() > MAX_LISTED}),
            );
        }
        for account in [&ch.a, &ch.b] {
            let index = self.node(account)?.index;
            if self.graph.get().as_ref().map_or(0, |g| g.degree(index)) == 0 {
                self.reimburse(account)?;
            }
        }
        emit(
            "partition_checked",
            json!({"channel": ch.id, "split": matches!(split, Split::Partitioned { .. })}),
        );
        Ok(split)
    }

    /// An isolated node pays back the penalties its former peers paid for severing
    /// their edges with it.
    fn reimburse(&mut self, isolated: &AccountId) -> R<()> {
        let severed = self.node(isolated)?.severed.clone();
        for id in severed {
            let ch = self.channel(id)?.clone();
            let Some(rec) = ch.severed.clone() else {
                continue;
            };
            if rec.reimbursed {
                continue;
            }
            let (peer, owed) = if *isolated == ch.a {
                (ch.b.clone(), rec.penalty_b.0)
            } else {
                (ch.a.clone(), rec.penalty_a.0)
            };
            let stake = self.stake_of(isolated)?;
            let pay = owed.min(stake);
            self.set_stake(isolated, sub(stake, pay)?)?;
            let peer_stake = self.stake_of(&peer)?;
            self.set_stake(&peer, add(peer_stake, pay)?)?;
            if let Some(c) = self.channels.get_mut(&id) {
                if let Some(r) = c.severed.as_mut() {
                    r.reimbursed = true;
                }
            }
            emit(
                "penalty_reimbursed",
                json!({"channel": U64(id), "from": isolated, "to": peer, "amount": U128(pay)}),
            );
        }
        Ok(())
    }
}

#[near]
impl PorContract {
    /// Initialises the contract.
    #[init]
    pub fn new(config: Config) -> Self {
        if config.partition_slash_bps > 10_000 {
            env::panic_str("invalid argument: partition_slash_bps above 10000");
        }
        PorContract {
            config,
            nodes: IterableMap::new(Key::Nodes),
            keys: LookupMap::new(Key::Keys),
            channels: IterableMap::new(Key::Channels),
            pairs: LookupMap::new(Key::Pairs),
            graph: LazyOption::new(Key::Graph, Some(Graph::default())),
            next_channel: 0,
            pool: 0,
        }
    }

    /// Registers the caller as a node: the attached deposit is its stake.
    #[payable]
    pub fn register(&mut self, key: String, addresses: Vec<String>) {
        let dep = env::attached_deposit().as_yoctonear();
        ok(self.do_register(env::predecessor_account_id(), dep, key, addresses));
    }

    /// Adds the attached deposit to the caller's stake.
    #[payable]
    pub fn add_stake(&mut self) {
        let dep = env::attached_deposit().as_yoctonear();
        ok(self.do_add_stake(env::predecessor_account_id(), dep));
    }

    /// Starts unbonding part of the caller's stake.
    pub fn unstake(&mut self, amount: U128) {
        ok(self.do_unstake(
            env::predecessor_account_id(),
            amount.0,
            env::block_timestamp(),
        ));
    }

    /// Withdraws unbonded stake.
    pub fn withdraw(&mut self) -> Promise {
        let caller = env::predecessor_account_id();
        let amount = ok(self.do_withdraw(caller.clone(), env::block_timestamp()));
        Promise::new(caller).transfer(NearToken::from_yoctonear(amount))
    }

    /// Replaces the caller's network addresses.
    pub fn update_addresses(&mut self, addresses: Vec<String>) {
        ok(self.do_update_addresses(env::predecessor_account_id(), addresses));
    }

    /// Proposes an edge to `peer`; the attached deposit is the caller's side.
    #[payable]
    pub fn propose_channel(&mut self, peer: AccountId, terms: Terms) -> U64 {
        let dep = env::attached_deposit().as_yoctonear();
        U64(ok(self.do_propose(
            env::predecessor_account_id(),
            dep,
            peer,
            terms,
        )))
    }

    /// Confirms a proposed edge with the attached deposit.
    #[payable]
    pub fn confirm_channel(&mut self, id: U64) {
        let dep = env::attached_deposit().as_yoctonear();
        ok(self.do_confirm(env::predecessor_account_id(), dep, id.0));
    }

    /// Cancels a proposal; the proposer's deposit is returned.
    pub fn cancel_channel(&mut self, id: U64) -> Promise {
        let (a, refund) = ok(self.do_cancel(env::predecessor_account_id(), id.0));
        Promise::new(a).transfer(NearToken::from_yoctonear(refund))
    }

    /// Proposes a cooperative close with the caller's latest signed states.
    pub fn propose_close(&mut self, id: U64, updates: Vec<Base64VecU8>) {
        ok(self.do_propose_close(env::predecessor_account_id(), id.0, updates));
    }

    /// Confirms a cooperative close: paid out at once.
    pub fn confirm_close(&mut self, id: U64, updates: Vec<Base64VecU8>) -> Promise {
        let (a, pa, b, pb) =
            ok(self.do_confirm_close(env::predecessor_account_id(), id.0, updates));
        Promise::new(a)
            .transfer(NearToken::from_yoctonear(pa))
            .and(Promise::new(b).transfer(NearToken::from_yoctonear(pb)))
    }

    /// Starts an adversarial close with the caller's latest signed states.
    pub fn start_close(&mut self, id: U64, updates: Vec<Base64VecU8>) -> U64 {
        U64(ok(self.do_start_close(
            env::predecessor_account_id(),
            id.0,
            updates,
            env::block_timestamp(),
        )))
    }

    /// Submits newer states during the challenge period.
    pub fn challenge(&mut self, id: U64, updates: Vec<Base64VecU8>) {
        ok(self.do_challenge(
            env::predecessor_account_id(),
            id.0,
            updates,
            env::block_timestamp(),
        ));
    }

    /// Pays out a channel whose challenge period is over. Returns the payouts `[a, b]`.
    pub fn finalize_close(&mut self, id: U64) -> [U128; 2] {
        let (a, pa, b, pb) = ok(self.do_finalize_close(id.0, env::block_timestamp()));
        pay_out(a, pa, b, pb)
    }

    /// Severs an edge with a notice signed by one of its endpoints (anyone may submit).
    /// Returns whether the graph split.
    pub fn sever(&mut self, notice: Base64VecU8) -> bool {
        matches!(
            ok(self.do_sever(notice, env::block_timestamp())),
            Split::Partitioned { .. }
        )
    }

    // ------------------------------------------------------------------ views

    /// The configuration.
    pub fn get_config(&self) -> Config {
        self.config.clone()
    }

    /// One node.
    pub fn get_node(&self, account: AccountId) -> Option<NodeView> {
        self.nodes.get(&account).map(|n| self.view(n))
    }

    /// The account of a node key (hex).
    pub fn get_account_of_key(&self, key: String) -> Option<AccountId> {
        self.keys.get(&key.to_lowercase()).cloned()
    }

    /// Nodes, paged.
    pub fn get_nodes(&self, from: u32, limit: u32) -> Vec<NodeView> {
        self.nodes
            .values()
            .skip(from as usize)
            .take(limit as usize)
            .map(|n| self.view(n))
            .collect()
    }

    /// One channel.
    pub fn get_channel(&self, id: U64) -> Option<Channel> {
        self.channels.get(&id.0).cloned()
    }

    /// Channels in any state, paged.
    pub fn get_channels(&self, from: u32, limit: u32) -> Vec<Channel> {
        self.channels
            .values()
            .skip(from as usize)
            .take(limit as usize)
            .cloned()
            .collect()
    }

    /// Live edges (open channels), paged.
    pub fn get_edges(&self, from: u32, limit: u32) -> Vec<Channel> {
        self.channels
            .values()
            .filter(|c| c.state == ChannelState::Open)
            .skip(from as usize)
            .take(limit as usize)
            .cloned()
            .collect()
    }

    /// The stake-weighted center of the live topology.
    pub fn get_center(&self) -> Option<AccountId> {
        let g = self.graph.get().as_ref()?;
        let mut by_index: Vec<Option<&Node>> = vec![None; g.nodes.len()];
        for n in self.nodes.values() {
            if let Some(slot) = by_index.get_mut(n.index as usize) {
                *slot = Some(n);
            }
        }
        let c = g.center(|i| {
            by_index
                .get(i as usize)
                .copied()
                .flatten()
                .map(|n| n.key.clone())
        })?;
        by_index
            .get(c as usize)
            .copied()
            .flatten()
            .map(|n| n.account.clone())
    }

    /// Penalties and slashes held by the contract.
    pub fn get_pool(&self) -> U128 {
        U128(self.pool)
    }
}

#[cfg(test)]
mod tests;
