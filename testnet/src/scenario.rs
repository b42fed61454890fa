//! Scenario files: nodes, stakes, edges with their terms, policies, requests, faults.
//!
//! See `testnet/scenarios/*.toml` and `docs/simulator.md` for the format.

use serde::{Deserialize, Deserializer};

use por_protocol::{Amount, ProofForwarding, SeverPolicy};

/// An amount in a scenario: a TOML integer, or a decimal string for values past i64.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AmountSpec(pub u128);

impl<'de> Deserialize<'de> for AmountSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(v) => Ok(AmountSpec(u128::from(v))),
            Raw::Str(s) => s
                .replace('_', "")
                .parse::<u128>()
                .map(AmountSpec)
                .map_err(|e| serde::de::Error::custom(format!("amount {s:?}: {e}"))),
        }
    }
}

impl From<AmountSpec> for Amount {
    fn from(a: AmountSpec) -> Amount {
        Amount(a.0)
    }
}

/// A whole scenario.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name.
    pub name: String,
    /// What it shows.
    #[serde(default)]
    pub description: String,
    /// Seed for every random choice (drops, nonces of keys).
    #[serde(default)]
    pub seed: u64,
    /// The simulation stops at this virtual time.
    pub duration_ms: u64,
    /// Delay between a sever being submitted and the chain reporting it to all nodes.
    #[serde(default = "default_chain_delay")]
    pub chain_delay_ms: u64,
    /// Nodes.
    pub nodes: Vec<NodeSpec>,
    /// Edges.
    pub edges: Vec<EdgeSpec>,
    /// Requests to send.
    #[serde(default)]
    pub requests: Vec<RequestSpec>,
    /// Faults to inject.
    #[serde(default)]
    pub faults: Vec<FaultSpec>,
}

fn default_chain_delay() -> u64 {
    2_000
}

fn default_true() -> bool {
    true
}

/// A node and its policies.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// Unique name, used in the output.
    pub name: String,
    /// Stake on the contract.
    #[serde(default)]
    pub stake: AmountSpec,
    /// What to do when a downstream is overdue.
    #[serde(default = "default_sever")]
    pub sever: SeverPolicy,
    /// When to forward proofs upstream.
    #[serde(default = "default_forward")]
    pub forward_proofs: ProofForwarding,
    /// §5.4 heuristic window; absent disables it.
    #[serde(default)]
    pub heuristic_window_ms: Option<u64>,
    /// Misbehaviour: never pay late fees.
    #[serde(default)]
    pub withhold_late_fees: bool,
    /// Whether the node answers requests addressed to it.
    #[serde(default = "default_true")]
    pub respond: bool,
    /// Time the application takes to answer.
    #[serde(default)]
    pub response_delay_ms: u64,
}

impl NodeSpec {
    /// The engine configuration this node's policies describe (no fee tolerance: the
    /// simulator's clock is exact; a real network adds some).
    pub fn engine_config(&self) -> por_protocol::EngineConfig {
        por_protocol::EngineConfig {
            sever_policy: self.sever,
            proof_forwarding: self.forward_proofs,
            heuristic: self
                .heuristic_window_ms
                .map(|window_ms| por_protocol::Heuristic { window_ms }),
            fee_tolerance_ms: 0,
            max_in_flight: 1_000_000,
            max_in_flight_per_peer: 1_000_000,
            silence_syncs: 3,
            closing_retention_ms: 600_000,
            closing_retention_bytes: 8 << 20,
            misbehaviour: por_protocol::Misbehaviour {
                withhold_late_fees: self.withhold_late_fees,
            },
            ..por_protocol::EngineConfig::default()
        }
    }
}

fn default_bandwidth() -> u64 {
    por_protocol::types::EdgeTerms::DEFAULT_BANDWIDTH
}

fn default_sever() -> SeverPolicy {
    SeverPolicy::Never
}

fn default_forward() -> ProofForwarding {
    ProofForwarding::Immediate
}

/// An edge and its terms.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeSpec {
    /// One endpoint (the proposer).
    pub a: String,
    /// The other endpoint.
    pub b: String,
    /// Promised one-way latency.
    pub latency_ms: u64,
    /// Actual one-way latency of the simulated link (defaults to the promise).
    #[serde(default)]
    pub actual_latency_ms: Option<u64>,
    /// Base cost per message.
    #[serde(default)]
    pub base_cost: AmountSpec,
    /// Cost per byte carried (request body plus response limit).
    #[serde(default)]
    pub byte_cost: AmountSpec,
    /// Sync interval.
    pub sync_interval_ms: u64,
    /// Sync phase.
    #[serde(default)]
    pub sync_phase_ms: u64,
    /// Highest late-fee rate accepted.
    pub max_late_fee_rate: AmountSpec,
    /// Promised bandwidth, bytes per second (default 125 MB/s).
    #[serde(default = "default_bandwidth")]
    pub bandwidth: u64,
    /// `a`'s deposit.
    pub deposit_a: AmountSpec,
    /// `b`'s deposit.
    pub deposit_b: AmountSpec,
}

impl EdgeSpec {
    /// The terms the edge opens with (the simulator's, the demo's and `por devnet
    /// run`'s alike).
    pub fn terms(&self) -> por_protocol::types::EdgeTerms {
        por_protocol::types::EdgeTerms {
            latency_ms: self.latency_ms,
            base_cost: self.base_cost.into(),
            byte_cost: self.byte_cost.into(),
            sync_interval_ms: self.sync_interval_ms,
            sync_phase_ms: self.sync_phase_ms,
            max_late_fee_rate: self.max_late_fee_rate.into(),
            bandwidth: self.bandwidth,
        }
    }
}

/// A request to send.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    /// When.
    pub at_ms: u64,
    /// Sender.
    pub client: String,
    /// Receiver.
    pub server: String,
    /// Body text.
    #[serde(default)]
    pub body: String,
    /// The response size bought, in bytes (absent: the body's length, since simulated
    /// servers echo the body).
    #[serde(default)]
    pub response_limit: Option<u64>,
    /// Late-fee rate per ms.
    pub late_fee_rate: AmountSpec,
    /// Explicit route by node names (client first); otherwise the cheapest route.
    #[serde(default)]
    pub route: Option<Vec<String>>,
    /// Bound for route finding.
    #[serde(default)]
    pub max_rtt_ms: Option<u64>,
}

/// A fault.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum FaultSpec {
    /// The node is down: it neither receives nor sends, and its timers do not run.
    Offline {
        /// The node.
        node: String,
        /// From.
        from_ms: u64,
        /// Until (absent: for good).
        #[serde(default)]
        until_ms: Option<u64>,
        /// Come back from the durable store (a crash) rather than resume in memory.
        #[serde(default)]
        restart: bool,
    },
    /// Messages on a link are dropped with a probability.
    Drop {
        /// Sender.
        from: String,
        /// Receiver.
        to: String,
        /// Probability in [0, 1].
        probability: f64,
        /// From.
        #[serde(default)]
        from_ms: u64,
        /// Until.
        #[serde(default)]
        until_ms: Option<u64>,
    },
    /// Messages on a link take extra time (order is preserved).
    Delay {
        /// Sender.
        from: String,
        /// Receiver.
        to: String,
        /// Extra one-way delay.
        extra_ms: u64,
        /// From.
        #[serde(default)]
        from_ms: u64,
        /// Until.
        #[serde(default)]
        until_ms: Option<u64>,
    },
    /// A node severs one of its edges at a given time.
    Sever {
        /// The severing node.
        node: String,
        /// The other endpoint.
        peer: String,
        /// When.
        at_ms: u64,
    },
}

impl Scenario {
    /// Parses a scenario from TOML text.
    pub fn from_toml(text: &str) -> Result<Scenario, toml::de::Error> {
        toml::from_str(text)
    }
}
