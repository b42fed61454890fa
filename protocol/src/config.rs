//! Per-node policies: when to sever, how to forward proofs, the §5.4 heuristic.

use serde::{Deserialize, Serialize};

/// What a node does when its downstream owes it a response or proof past the deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeverPolicy {
    /// Sever the downstream edge the moment the deadline passes (paper §5.2).
    Immediate,
    /// Keep waiting (paying late fees upstream) through `n` syncs of the upstream edge
    /// after the deadline; sever at the n-th and send the proof with it (§5.3: n = 1,
    /// §5.5: n = 9). A client with no upstream counts syncs of the downstream edge.
    WaitSyncs(u32),
    /// Sever this many ms after the deadline (used to reproduce §5.4's 1599 ms).
    WaitMs(u64),
    /// Never sever for lateness; keep paying and collecting late fees.
    Never,
}

/// When a node passes a proof of severance on to its upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProofForwarding {
    /// As soon as it arrives (paper §5.2). Stops late-fee accrual soonest.
    Immediate,
    /// With the next periodic sync of the upstream edge (the tables of §5.3 to §5.5).
    NextSync,
}

/// The §5.4 heuristic: sever an edge whose earnings minus losses over a window is
/// negative. Earnings are the fees this node kept on requests that crossed the edge;
/// losses are late fees the peer owed and did not pay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heuristic {
    /// Look-back window in ms (the paper suggests an hour).
    pub window_ms: u64,
}

/// Deliberate deviations, for simulating misbehaving nodes. Production configs leave
/// this at its default (all off).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Misbehaviour {
    /// Never pay late fees (paper §5.4's Bob).
    pub withhold_late_fees: bool,
}

/// The most `max_in_flight_per_peer` may be: a sync's late-fee payment names every
/// late request of the peer it pays (a 32-byte item each), and must fit one frame with
/// room to spare (25,000 items are 800 KB of the 1 MiB + 64 KiB).
pub const MAX_IN_FLIGHT_PER_PEER: usize = 25_000;

/// Engine configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineConfig {
    /// Reaction to an overdue downstream.
    pub sever_policy: SeverPolicy,
    /// Proof forwarding.
    pub proof_forwarding: ProofForwarding,
    /// Optional §5.4 heuristic.
    pub heuristic: Option<Heuristic>,
    /// Slack, in ms, granted to a downstream's late-fee payments before a shortfall is
    /// counted (network jitter). Zero in the simulator.
    pub fee_tolerance_ms: u64,
    /// Maximum requests this node tracks at once; more are refused (and refunded).
    pub max_in_flight: usize,
    /// Maximum requests one peer may have in flight through us at once (those that
    /// arrived over its edge); more are refused (and refunded) as `Overloaded`. It
    /// also bounds the requests we keep in flight over one channel downstream (with
    /// `messages::MAX_AWAITING`): past it a request is not sent (`ChannelBusy`).
    /// Taken as at most [`MAX_IN_FLIGHT_PER_PEER`] (see
    /// [`EngineConfig::per_peer_bound`]).
    pub max_in_flight_per_peer: usize,
    /// Maximum bytes one peer's requests in flight through us may buy at once (request
    /// bodies plus response limits: what we may have to hold for it); past it its
    /// requests are refused (and refunded) as `Overloaded`.
    pub max_in_flight_bytes_per_peer: u64,
    /// A peer unheard for this many of its sync intervals is reported silent.
    pub silence_syncs: u32,
    /// How long a response or proof we sent is kept for resending to a peer that
    /// reconnects still awaiting it.
    pub closing_retention_ms: u64,
    /// At most this many bytes of them are kept per channel, oldest dropped first (a
    /// file relay passes a MiB per response; without this it would hold every one for
    /// the retention time).
    pub closing_retention_bytes: u64,
    /// Deliberate deviations (simulation only).
    pub misbehaviour: Misbehaviour,
}

impl EngineConfig {
    /// The bound on one peer's requests in flight through us, and on ours over one
    /// channel: `max_in_flight_per_peer`, at most [`MAX_IN_FLIGHT_PER_PEER`].
    pub fn per_peer_bound(&self) -> usize {
        self.max_in_flight_per_peer.min(MAX_IN_FLIGHT_PER_PEER)
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            sever_policy: SeverPolicy::WaitSyncs(3),
            proof_forwarding: ProofForwarding::Immediate,
            heuristic: Some(Heuristic {
                window_ms: 3_600_000,
            }),
            fee_tolerance_ms: 50,
            max_in_flight: 100_000,
            max_in_flight_per_peer: 20_000,
            max_in_flight_bytes_per_peer: 256 << 20,
            silence_syncs: 3,
            closing_retention_ms: 600_000,
            closing_retention_bytes: 8 << 20,
            misbehaviour: Misbehaviour::default(),
        }
    }
}
