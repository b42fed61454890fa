//! The signed types that nodes exchange and the contract verifies.
//!
//! These build without the `crypto` and `engine` features (and so for
//! `wasm32-unknown-unknown`): the contract decodes them with [`crate::wire::decode`]
//! and checks [`Signable::signing_bytes`] with the NEAR host's ed25519 verifier.

use serde::{Deserialize, Serialize};

use crate::amount::{Amount, AmountOverflow};
use crate::crypto::{Hash, NodeId, Signable, Signature};
use crate::merkle::MerkleProof;
use crate::wire::{self, WireError};

/// An edge (state channel) identifier, assigned by the contract when the edge opens.
/// A re-opened edge between the same pair gets a fresh id, so notices and states for
/// an old edge can never be replayed against a new one.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct ChannelId(pub u64);

impl std::fmt::Display for ChannelId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ch{}", self.0)
    }
}

/// The terms of an edge, fixed when the two nodes open it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeTerms {
    /// Promised one-way latency `L_e`, in milliseconds.
    pub latency_ms: u64,
    /// Base cost per message `c_base_e`.
    pub base_cost: Amount,
    /// Cost per byte carried `c_byte_e`: charged on the request body plus the
    /// response size the request buys ([`RequestCore::response_limit`]).
    pub byte_cost: Amount,
    /// Interval between periodic syncs (heartbeat + late-fee settlement), in ms.
    pub sync_interval_ms: u64,
    /// Phase of the sync schedule: syncs happen at `phase + k * interval`.
    pub sync_phase_ms: u64,
    /// The highest late-fee rate (yoctoNEAR per ms) either side accepts on this edge.
    pub max_late_fee_rate: Amount,
    /// Promised bandwidth in bytes per second: a hop's budget adds the time the
    /// request and its response take to transmit over each remaining edge (see
    /// [`EdgeTerms::round_trip_ms`]). Zero is refused by the contract.
    pub bandwidth: u64,
}

impl EdgeTerms {
    /// The default promised bandwidth: 125 MB/s (1 Gbit/s). Bodies under 125 kB then
    /// add nothing to a budget, so small requests keep the paper's timelines.
    pub const DEFAULT_BANDWIDTH: u64 = 125_000_000;

    /// `c_base_e + c_byte_e * bytes`: what carrying `bytes` (request body plus
    /// response limit, [`RequestCore::priced_bytes`]) across this edge costs.
    pub fn cost(&self, bytes: u64) -> Result<Amount, AmountOverflow> {
        self.byte_cost
            .checked_mul(u128::from(bytes))?
            .checked_add(self.base_cost)
    }

    /// The whole milliseconds `bytes` take at the promised bandwidth, rounded down
    /// (so bodies under `bandwidth / 1000` bytes add nothing). A zero bandwidth, which
    /// the contract refuses, counts as the slowest possible edge.
    pub fn transmit_ms(&self, bytes: u64) -> u64 {
        let ms = u128::from(bytes)
            .saturating_mul(1000)
            .checked_div(u128::from(self.bandwidth.max(1)))
            .unwrap_or(u128::MAX);
        u64::try_from(ms).unwrap_or(u64::MAX)
    }

    /// This edge's share of a round-trip budget for a request priced on `bytes`:
    /// `2 L_e` plus the transmission time of those bytes (the request one way, the
    /// response the other). `None` on overflow.
    pub fn round_trip_ms(&self, bytes: u64) -> Option<u64> {
        self.latency_ms
            .checked_mul(2)?
            .checked_add(self.transmit_ms(bytes))
    }

    /// The first sync instant strictly after `after` (ms since the shared epoch).
    pub fn next_sync_after(&self, after: u64) -> u64 {
        let interval = self.sync_interval_ms.max(1);
        let phase = self.sync_phase_ms.checked_rem(interval).unwrap_or(0);
        if after < phase {
            return phase;
        }
        let k = after
            .saturating_sub(phase)
            .checked_div(interval)
            .unwrap_or(0);
        phase.saturating_add(k.saturating_add(1).saturating_mul(interval))
    }
}

/// An edge as the contract records it: endpoints, terms and deposits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeInfo {
    /// Contract-assigned id.
    pub id: ChannelId,
    /// The proposing endpoint.
    pub a: NodeId,
    /// The confirming endpoint.
    pub b: NodeId,
    /// Terms agreed at opening.
    pub terms: EdgeTerms,
    /// `a`'s deposit.
    pub deposit_a: Amount,
    /// `b`'s deposit.
    pub deposit_b: Amount,
}

impl EdgeInfo {
    /// The endpoint that is not `me`, if `me` is an endpoint.
    pub fn peer_of(&self, me: &NodeId) -> Option<NodeId> {
        if *me == self.a {
            Some(self.b)
        } else if *me == self.b {
            Some(self.a)
        } else {
            None
        }
    }

    /// `node`'s deposit, if it is an endpoint.
    pub fn deposit_of(&self, node: &NodeId) -> Option<Amount> {
        if *node == self.a {
            Some(self.deposit_a)
        } else if *node == self.b {
            Some(self.deposit_b)
        } else {
            None
        }
    }

    /// Whether `x` and `y` are the two endpoints, in either order.
    pub fn connects(&self, x: &NodeId, y: &NodeId) -> bool {
        (self.a == *x && self.b == *y) || (self.a == *y && self.b == *x)
    }
}

/// A request's identity: `H("por/v1/request-id" || encode(RequestCore))`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct RequestId(#[serde(with = "crate::fixed")] pub [u8; 16]);

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RequestId({self})")
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Why an update moves money; part of what the payer signs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Memo {
    /// Payment for carrying request `request` on: the receiver's ack accepts the
    /// obligation with this budget and late-fee rate.
    Request {
        /// The request paid for.
        request: RequestId,
        /// This update's increment.
        amount: Amount,
        /// Round-trip budget granted to the receiver, from the payer's send time (ms).
        budget_ms: u64,
        /// Late-fee rate (yoctoNEAR per ms past the deadline).
        late_fee_rate: Amount,
    },
    /// Late fees, itemised per request in the accompanying [`FeePayment`].
    LateFees {
        /// This update's increment.
        amount: Amount,
        /// Hash of the encoded item list.
        items: Hash,
    },
    /// Refund of a request payment the receiver could not accept.
    Refund {
        /// The refused request.
        request: RequestId,
        /// This update's increment (the refunded amount).
        amount: Amount,
    },
}

impl Memo {
    /// The increment this update claims to add.
    pub fn amount(&self) -> Amount {
        match self {
            Memo::Request { amount, .. }
            | Memo::LateFees { amount, .. }
            | Memo::Refund { amount, .. } => *amount,
        }
    }
}

/// One direction of a state channel: "`payer` has paid `payee` `cumulative` in total".
///
/// Each direction has its own sequence and is signed by its payer alone, so requests
/// in both directions never conflict (see `docs/protocol.md`, "Channel state").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelUpdate {
    /// The channel.
    pub channel: ChannelId,
    /// Who pays (and signs).
    pub payer: NodeId,
    /// Who is paid (and acks by countersigning).
    pub payee: NodeId,
    /// Per-direction sequence number, starting at 1 and increasing by exactly 1.
    pub seq: u64,
    /// Total paid in this direction since the channel opened.
    pub cumulative: Amount,
    /// Why this update was made.
    pub memo: Memo,
}

impl ChannelUpdate {
    /// This update's leaf in its payer's signed batch:
    /// `SHA-256("por/v1/channel-update" || encode(self))`.
    pub fn leaf(&self) -> Result<Hash, WireError> {
        Ok(Hash::tagged(b"por/v1/channel-update", &wire::encode(self)?))
    }
}

/// The payee's acknowledgement: the same update, countersigned under its own domain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AckOf<'a>(pub &'a ChannelUpdate);

impl Signable for AckOf<'_> {
    const DOMAIN: &'static [u8] = b"por/v1/channel-ack";
}

/// A channel update with the payer's signature: the signature is over the
/// [`BatchRoot`] of the updates the payer signed at once, and `proof` places this one
/// in it. The contract checks exactly this (see [`SignedUpdate::batch`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedUpdate {
    /// The state.
    pub update: ChannelUpdate,
    /// Its place in the payer's signed batch.
    pub proof: MerkleProof,
    /// The payer's signature over the batch root.
    pub sig: Signature,
}

impl SignedUpdate {
    /// The batch this update's signature must verify over, or `None` if its proof is
    /// malformed.
    pub fn batch(&self) -> Option<BatchRoot> {
        BatchRoot::of(self.update.leaf().ok()?, &self.proof)
    }

    /// `update` signed by `key` for `deployment` on its own: a batch of one.
    #[cfg(feature = "crypto")]
    pub fn sign_alone(
        key: &crate::crypto::Keypair,
        deployment: &crate::crypto::Deployment,
        update: ChannelUpdate,
    ) -> Result<SignedUpdate, crate::crypto::CryptoError> {
        let leaf = update
            .leaf()
            .map_err(|_| crate::crypto::CryptoError::Encoding)?;
        let (root, proof) = BatchRoot::single(leaf);
        let sig = key.sign(deployment, &root)?;
        Ok(SignedUpdate { update, proof, sig })
    }

    /// Whether the signature and proof are filled in (see [`unsealed_proof`]).
    pub fn is_sealed(&self) -> bool {
        self.proof.leaves != 0
    }
}

/// A request route: `nodes[0]` is the client, the last node the server, and
/// `channels[i]` joins `nodes[i]` to `nodes[i + 1]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Client, relays, server.
    pub nodes: Vec<NodeId>,
    /// The edges between consecutive nodes.
    pub channels: Vec<ChannelId>,
}

impl Route {
    /// Number of edges.
    pub fn hops(&self) -> usize {
        self.channels.len()
    }

    /// Whether the shape is consistent: at least one edge, one more node than edges,
    /// and no node twice.
    pub fn well_formed(&self) -> bool {
        if self.channels.is_empty() || self.nodes.len() != self.channels.len().saturating_add(1) {
            return false;
        }
        let mut seen: Vec<&NodeId> = self.nodes.iter().collect();
        seen.sort();
        seen.windows(2).all(|w| w[0] != w[1])
    }

    /// Position of `node` on the route.
    pub fn position(&self, node: &NodeId) -> Option<usize> {
        self.nodes.iter().position(|n| n == node)
    }
}

/// What the client signs: everything about the request that no relay may change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCore {
    /// The requesting node `A`.
    pub client: NodeId,
    /// The responding node `B`.
    pub server: NodeId,
    /// Client-chosen nonce that makes the id unique.
    pub nonce: u64,
    /// BLAKE3 of the body (`Hash::of_body`).
    pub body_hash: Hash,
    /// Body length in bytes (charged per byte, with `response_limit`).
    pub body_len: u64,
    /// The largest response body the client buys, in bytes: every edge charges its
    /// per-byte cost on it and budgets its transmission; a longer response is refused
    /// by the first hop that sees it.
    pub response_limit: u64,
    /// Late-fee rate, yoctoNEAR per ms, identical on every hop.
    pub late_fee_rate: Amount,
    /// The full path (source routing).
    pub route: Route,
}

impl RequestCore {
    /// The bytes every edge charges for and budgets: `body_len + response_limit`
    /// (saturating: such a request is refused for its size anyway).
    pub fn priced_bytes(&self) -> u64 {
        self.body_len.saturating_add(self.response_limit)
    }

    /// This core's leaf in its client's signed batch:
    /// `SHA-256("por/v1/request" || encode(self))`.
    pub fn leaf(&self) -> Result<Hash, WireError> {
        Ok(Hash::tagged(b"por/v1/request", &wire::encode(self)?))
    }

    /// The request id derived from this core.
    pub fn id(&self) -> Result<RequestId, WireError> {
        let h = Hash::tagged(b"por/v1/request-id", &wire::encode(self)?);
        let mut id = [0u8; 16];
        id.copy_from_slice(&h.0[..16]);
        Ok(RequestId(id))
    }
}

/// The request header as it travels: the signed core plus the per-hop budget.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestHeader {
    /// The client-signed part.
    pub core: RequestCore,
    /// The core's place in the client's signed batch.
    pub client_proof: MerkleProof,
    /// The client's signature over that batch's [`BatchRoot`].
    pub client_sig: Signature,
    /// The id (recomputed and checked by every receiver).
    pub id: RequestId,
    /// Round-trip budget in ms, counted from the sender's send time: the sum of
    /// [`EdgeTerms::round_trip_ms`] over the edges from the sender to the server.
    pub budget_ms: u64,
}

impl RequestHeader {
    /// The batch the client's signature must verify over, or `None` if the proof is
    /// malformed.
    pub fn client_batch(&self) -> Option<BatchRoot> {
        BatchRoot::of(self.core.leaf().ok()?, &self.client_proof)
    }

    /// The header of `core` signed by `key` for `deployment` on its own (a batch of
    /// one).
    #[cfg(feature = "crypto")]
    pub fn sign_alone(
        key: &crate::crypto::Keypair,
        deployment: &crate::crypto::Deployment,
        core: RequestCore,
        budget_ms: u64,
    ) -> Result<RequestHeader, crate::crypto::CryptoError> {
        let encoding = |_| crate::crypto::CryptoError::Encoding;
        let (root, client_proof) = BatchRoot::single(core.leaf().map_err(encoding)?);
        Ok(RequestHeader {
            client_sig: key.sign(deployment, &root)?,
            client_proof,
            id: core.id().map_err(encoding)?,
            core,
            budget_ms,
        })
    }
}

/// What the server signs: the request id and the response body hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseBody {
    /// The request answered.
    pub request: RequestId,
    /// BLAKE3 of the response body (`Hash::of_body`).
    pub body_hash: Hash,
    /// Length of the response body: with the client's signed
    /// [`RequestCore::response_limit`], a signed response longer than bought is
    /// evidence of the server's deviation on its own.
    pub body_len: u64,
}

impl ResponseBody {
    /// This response's leaf in the server's signed batch:
    /// `SHA-256("por/v1/response" || encode(self))`.
    pub fn leaf(&self) -> Result<Hash, WireError> {
        Ok(Hash::tagged(b"por/v1/response", &wire::encode(self)?))
    }
}

/// What a node signs: the Merkle root over the leaves of everything it signs at once
/// (its channel updates, see [`ChannelUpdate::leaf`]; as client its request cores, see
/// [`RequestCore::leaf`]; as server its responses, see [`ResponseBody::leaf`]), and how
/// many leaves there are. Leaves are hashed under
/// their type's own domain, so a leaf of one type never verifies as another. A single
/// value is a batch of one whose root is its leaf (see [`BatchRoot::single`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchRoot {
    /// The Merkle root (see [`crate::merkle`]).
    pub root: Hash,
    /// The number of leaves under it.
    pub leaves: u32,
}

impl BatchRoot {
    /// The batch of the one leaf `leaf`, and that leaf's (empty) proof.
    pub fn single(leaf: Hash) -> (BatchRoot, MerkleProof) {
        let proof = MerkleProof {
            leaves: 1,
            index: 0,
            siblings: Vec::new(),
        };
        (
            BatchRoot {
                root: leaf,
                leaves: 1,
            },
            proof,
        )
    }

    /// The batch that `leaf` with `proof` belongs to, or `None` if the proof is
    /// malformed.
    pub fn of(leaf: Hash, proof: &MerkleProof) -> Option<BatchRoot> {
        Some(BatchRoot {
            root: proof.root_of(leaf)?,
            leaves: proof.leaves,
        })
    }
}

/// A proof for a value not signed yet: the engine signs and fills it in when its
/// outputs are next polled. No valid proof has zero leaves.
pub fn unsealed_proof() -> MerkleProof {
    MerkleProof {
        leaves: 0,
        index: 0,
        siblings: Vec::new(),
    }
}

impl Signable for BatchRoot {
    const DOMAIN: &'static [u8] = b"por/v1/batch";
}

/// A server's signed response (without the body bytes): the response, its place in
/// the batch the server signed, and the server's signature over that batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedResponse {
    /// The response.
    pub body: ResponseBody,
    /// Its place in the signed batch.
    pub proof: MerkleProof,
    /// The server's signature over the [`BatchRoot`].
    pub sig: Signature,
}

impl SignedResponse {
    /// The batch this response's signature must verify over, or `None` if its proof
    /// is malformed.
    pub fn batch(&self) -> Option<BatchRoot> {
        BatchRoot::of(self.body.leaf().ok()?, &self.proof)
    }
}

/// Why an edge was severed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SeverReason {
    /// The peer owed a response, proof or late fee and did not deliver.
    Unresponsive,
    /// The peer failed to pay late fees it owed (paper §5.4 heuristic).
    UnpaidFees,
    /// The peer sent invalid protocol messages.
    Misbehaviour,
    /// The operator asked for it.
    Operator,
    /// A close of the channel began on chain: the edge left the topology, and the
    /// notice is the proof of that for the requests that were routed over it.
    Closing,
}

/// A severing notice: the proof that an edge no longer exists.
///
/// Signed by the severing endpoint; anyone may submit it to the contract, which
/// verifies it with `env::ed25519_verify` over [`Signable::signing_bytes`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeverNotice {
    /// The severed edge.
    pub channel: ChannelId,
    /// The endpoint that severs (and signs).
    pub severer: NodeId,
    /// The other endpoint.
    pub peer: NodeId,
    /// Why.
    pub reason: SeverReason,
    /// The severer's clock when it severed (informational; not trusted by anyone).
    pub at_ms: u64,
}

impl Signable for SeverNotice {
    const DOMAIN: &'static [u8] = b"por/v1/sever-notice";
}

/// A severing notice with the severer's signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedSeverNotice {
    /// The notice.
    pub notice: SeverNotice,
    /// The severer's signature.
    pub sig: Signature,
}

/// One item of a late-fee payment: the running total paid for one request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeeItem {
    /// The late request.
    pub request: RequestId,
    /// Total late fee paid for it on this edge so far (monotone).
    pub total: Amount,
}

/// Hash of a fee item list, as bound into [`Memo::LateFees`].
pub fn fee_items_hash(items: &[FeeItem]) -> Result<Hash, WireError> {
    Ok(Hash::tagged(b"por/v1/fee-items", &wire::encode(items)?))
}

/// A late-fee payment: an update whose memo commits to the itemisation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeePayment {
    /// The payer-signed update.
    pub update: SignedUpdate,
    /// Per-request running totals; their increments sum to the update's amount.
    pub items: Vec<FeeItem>,
}
