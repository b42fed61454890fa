//! The JSON and base64 forms the contract speaks: node keys as hex, amounts as
//! decimal strings, signed values as base64 of their canonical encoding, and the
//! views' records back into por-protocol's types.

use por_protocol::types::{ChannelId, EdgeInfo, EdgeTerms, SignedSeverNotice, SignedUpdate};
use por_protocol::{wire, Amount, NodeId};
use serde_json::{json, Value};

use crate::api::{ChainNode, Snapshot};
use crate::ChainError;

pub(crate) fn channel_id(v: &Value) -> Result<ChannelId, ChainError> {
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

pub(crate) fn encoded<T: serde::Serialize>(v: &T) -> Result<String, ChainError> {
    wire::encode(v)
        .map(|b| base64(&b))
        .map_err(|e| ChainError::Decode(e.to_string()))
}

pub(crate) fn states(list: &[SignedUpdate]) -> Result<Vec<String>, ChainError> {
    list.iter().map(encoded).collect()
}

pub(crate) fn hex(b: &[u8]) -> String {
    por_protocol::hex::encode(b)
}

pub(crate) fn key_of(s: &str) -> Result<NodeId, ChainError> {
    por_protocol::hex::decode(s)
        .map(NodeId)
        .ok_or_else(|| ChainError::Decode(format!("node key {s:?}")))
}

pub(crate) fn amount(v: &Value) -> Result<Amount, ChainError> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .map(Amount)
        .ok_or_else(|| ChainError::Decode(format!("amount {v}")))
}

pub(crate) fn terms_json(t: &EdgeTerms) -> Value {
    json!({"latency_ms": t.latency_ms, "base_cost": t.base_cost.0.to_string(),
           "byte_cost": t.byte_cost.0.to_string(), "sync_interval_ms": t.sync_interval_ms,
           "sync_phase_ms": t.sync_phase_ms, "max_late_fee_rate": t.max_late_fee_rate.0.to_string(),
           "bandwidth": t.bandwidth})
}

pub(crate) fn terms_of(v: &Value) -> Result<EdgeTerms, ChainError> {
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
        bandwidth: ms("bandwidth")?,
    })
}

pub(crate) fn payouts(v: &Value) -> Result<(Amount, Amount), ChainError> {
    Ok((amount(&v[0])?, amount(&v[1])?))
}

/// Decodes the severing notice carried by an `edge_severed` event.
pub fn sever_notice_of(event: &Value) -> Option<SignedSeverNotice> {
    if event["event"] != "edge_severed" {
        return None;
    }
    let text = event["data"][0]["notice"].as_str()?;
    wire::decode(&unbase64(text)?).ok()
}

/// How far a channel's close has gone, as a close event or a channel view says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseKind {
    /// A cooperative close awaits the other endpoint (`close_proposed`).
    Proposed,
    /// An adversarial close is in its challenge period (`close_started`,
    /// `close_challenged`, or a channel viewed in state `Closing`).
    Challengeable,
    /// Paid out (`channel_closed`).
    Closed,
}

/// A close of a channel as the watchtower reads it: the endpoints' accounts and the
/// cumulative totals the contract holds for each direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseNotice {
    /// The channel.
    pub channel: ChannelId,
    /// How far the close has gone.
    pub kind: CloseKind,
    /// The proposing endpoint's account.
    pub a: String,
    /// The confirming endpoint's account.
    pub b: String,
    /// Held as paid from `a` to `b`.
    pub paid_ab: Amount,
    /// Held as paid from `b` to `a`.
    pub paid_ba: Amount,
}

/// Decodes a `close_proposed`, `close_started`, `close_challenged` or `channel_closed`
/// event; `None` for any other event or a malformed one.
pub fn close_of(event: &Value) -> Option<CloseNotice> {
    let kind = match event["event"].as_str()? {
        "close_proposed" => CloseKind::Proposed,
        "close_started" | "close_challenged" => CloseKind::Challengeable,
        "channel_closed" => CloseKind::Closed,
        _ => return None,
    };
    let d = &event["data"][0];
    Some(CloseNotice {
        channel: channel_id(&d["id"]).ok()?,
        kind,
        a: d["a"].as_str()?.to_string(),
        b: d["b"].as_str()?.to_string(),
        paid_ab: amount(&d["paid_ab"]).ok()?,
        paid_ba: amount(&d["paid_ba"]).ok()?,
    })
}

/// The close a channel view (`get_channel`, `get_channels`) shows, if its close has
/// begun.
pub fn close_of_view(c: &Value) -> Option<CloseNotice> {
    let kind = if c["state"].get("Closing").is_some() {
        CloseKind::Challengeable
    } else if c["state"].get("ClosePending").is_some() {
        CloseKind::Proposed
    } else if c["state"] == "Closed" {
        CloseKind::Closed
    } else {
        return None;
    };
    Some(CloseNotice {
        channel: channel_id(&c["id"]).ok()?,
        kind,
        a: c["a"].as_str()?.to_string(),
        b: c["b"].as_str()?.to_string(),
        paid_ab: amount(&c["paid_ab"][1]).ok()?,
        paid_ba: amount(&c["paid_ba"][1]).ok()?,
    })
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
