//! The live network map: one JSON shape ([`state`]) and one page ([`PAGE`]) that
//! draws it, refreshed every second. A node serves its neighbourhood (itself, its
//! channels and their other ends) on its metrics listener (`/map`, `/map/state`); `por
//! devnet map` serves the whole devnet from the chain and every node's status.
//!
//! The state: the chain's nodes (stake, cut off or not) and the stake-weighted
//! center of the whole topology; every channel with its deposits, each end's balance
//! and unacknowledged payment as that end reports it, connected, severed and how far
//! its close has gone; per node, requests in flight, fees earned, late fees paid and
//! received. The page diffs successive states into a log of severs, closes and nodes
//! going down or coming back.

use std::collections::{BTreeMap, BTreeSet};

use por_chain::Snapshot;
use por_protocol::NodeId;
use serde_json::{json, Value};

use crate::{NodeError, NodeHandle};

/// The map page: self-contained HTML, script and style, no outside resources.
pub const PAGE: &str = include_str!("map.html");

/// One node's report, as its control endpoint's `status` answers it (with
/// `counters`), or `None` for a node that did not answer.
pub type Report = Option<Value>;

/// The map's state for `scope` (`"node"` or `"devnet"`): the nodes of `snapshot`
/// among `shown` (all when `None`), their reports, and the channels among them.
pub fn state(
    scope: &str,
    snapshot: &Snapshot,
    shown: Option<&BTreeSet<NodeId>>,
    reports: &BTreeMap<NodeId, Report>,
    at_ms: u64,
) -> Value {
    let center = snapshot.topology().stake_weighted_center();
    let show = |k: &NodeId| shown.is_none_or(|s| s.contains(k));
    let nodes: Vec<Value> = snapshot
        .nodes
        .iter()
        .filter(|n| show(&n.key))
        .map(|n| {
            let r = reports.get(&n.key);
            let report = r.and_then(|r| r.as_ref());
            json!({
                "id": crate::key_hex(&n.key),
                "name": n.account,
                "stake": n.stake.0.to_string(),
                "disconnected": n.disconnected,
                "center": center == Some(n.key),
                "reported": r.is_some(),
                "up": report.is_some(),
                "in_flight": report.map_or(Value::Null, |s| s["in_flight"].clone()),
                "counters": report.map_or(Value::Null, |s| s["counters"].clone()),
            })
        })
        .collect();
    // Channels: the chain's live edges, and every channel a report still holds (a
    // severed one leaves the chain's edges once closed).
    let mut channels: BTreeMap<u64, Value> = BTreeMap::new();
    for e in snapshot.edges.iter().filter(|e| show(&e.a) && show(&e.b)) {
        channels.insert(
            e.id.0,
            json!({
                "id": e.id.0, "a": crate::key_hex(&e.a), "b": crate::key_hex(&e.b),
                "deposit_a": e.deposit_a.0.to_string(), "deposit_b": e.deposit_b.0.to_string(),
                "latency_ms": e.terms.latency_ms, "on_chain": true,
                "severed": false, "connected": false, "close": "open",
            }),
        );
    }
    for (key, report) in reports {
        let Some(report) = report else { continue };
        let me = crate::key_hex(key);
        for c in report["channels"].as_array().into_iter().flatten() {
            let (Some(id), Some(peer)) = (c["id"].as_u64(), c["peer"].as_str()) else {
                continue;
            };
            if !crate::parse_key(peer).is_some_and(|p| show(&p)) {
                continue;
            }
            let entry = channels.entry(id).or_insert_with(|| {
                json!({"id": id, "a": me, "b": peer, "on_chain": false,
                       "severed": false, "connected": false, "close": "open"})
            });
            let side = if entry["a"] == me.as_str() { "a" } else { "b" };
            entry[format!("balance_{side}")] = c["balance"].clone();
            entry[format!("unacked_{side}")] = c["unacked"].clone();
            entry["severed"] = json!(entry["severed"] == true || c["severed"] == true);
            entry["connected"] = json!(entry["connected"] == true || c["connected"] == true);
            if c["close"] != "open" {
                entry["close"] = c["close"].clone();
            }
        }
    }
    json!({
        "scope": scope,
        "at_ms": at_ms,
        "center": center.map(|c| crate::key_hex(&c)),
        "nodes": nodes,
        "channels": channels.into_values().collect::<Vec<_>>(),
    })
}

/// Milliseconds since the Unix epoch, for [`state`]'s `at_ms`.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `node`'s neighbourhood: itself, the nodes it has channels with, and those channels.
pub async fn neighbourhood(node: &NodeHandle) -> Result<Value, NodeError> {
    use por_chain::Chain as _;
    let snapshot = node.chain().snapshot().await?;
    let status = crate::control::status_with_counters(node).await?;
    let mut shown: BTreeSet<NodeId> = BTreeSet::from([node.id()]);
    for e in &snapshot.edges {
        if let Some(p) = e.peer_of(&node.id()) {
            shown.insert(p);
        }
    }
    for c in status["channels"].as_array().into_iter().flatten() {
        if let Some(p) = c["peer"].as_str().and_then(crate::parse_key) {
            shown.insert(p);
        }
    }
    let reports = BTreeMap::from([(node.id(), Some(status))]);
    Ok(state("node", &snapshot, Some(&shown), &reports, now_ms()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use por_chain::ChainNode;
    use por_protocol::types::{ChannelId, EdgeInfo, EdgeTerms};
    use por_protocol::Amount;

    fn node(i: u8, stake: u128) -> ChainNode {
        ChainNode {
            account: format!("n{i}"),
            key: NodeId([i; 32]),
            stake: Amount(stake),
            addresses: vec![],
            disconnected: false,
        }
    }

    fn edge(id: u64, a: u8, b: u8) -> EdgeInfo {
        EdgeInfo {
            id: ChannelId(id),
            a: NodeId([a; 32]),
            b: NodeId([b; 32]),
            terms: EdgeTerms {
                latency_ms: 10,
                base_cost: Amount(1),
                byte_cost: Amount(0),
                sync_interval_ms: 100,
                sync_phase_ms: 0,
                max_late_fee_rate: Amount(1),
                bandwidth: EdgeTerms::DEFAULT_BANDWIDTH,
            },
            deposit_a: Amount(10),
            deposit_b: Amount(20),
        }
    }

    #[test]
    fn reports_fill_in_balances_and_severs() {
        let snapshot = Snapshot {
            nodes: vec![node(1, 5), node(2, 50), node(3, 5)],
            edges: vec![edge(7, 1, 2), edge(8, 2, 3)],
        };
        let n1 = crate::key_hex(&NodeId([1; 32]));
        let n2 = crate::key_hex(&NodeId([2; 32]));
        let report = json!({"in_flight": 2, "counters": {"fees_earned": "4"}, "channels": [
            {"id": 7, "peer": n2, "balance": "12", "unacked": "1", "connected": true,
             "severed": true, "close": "open"},
            // A channel the chain no longer lists.
            {"id": 9, "peer": n2, "balance": "3", "unacked": "0", "connected": false,
             "severed": true, "close": "final"},
        ]});
        let reports = BTreeMap::from([(NodeId([1; 32]), Some(report)), (NodeId([3; 32]), None)]);
        let s = state("devnet", &snapshot, None, &reports, 1);
        assert_eq!(s["center"], n2.as_str());
        let nodes = s["nodes"].as_array().unwrap();
        assert_eq!(nodes.len(), 3);
        assert_eq!(nodes[0]["up"], true);
        assert_eq!(nodes[0]["in_flight"], 2);
        assert_eq!(nodes[1]["reported"], false);
        assert_eq!(nodes[2]["reported"], true);
        assert_eq!(nodes[2]["up"], false);
        assert_eq!(nodes[1]["center"], true);
        let ch = s["channels"].as_array().unwrap();
        assert_eq!(ch.len(), 3);
        assert_eq!(ch[0]["a"], n1.as_str());
        assert_eq!(ch[0]["balance_a"], "12");
        assert_eq!(ch[0]["unacked_a"], "1");
        assert_eq!(ch[0]["severed"], true);
        assert_eq!(ch[0]["deposit_b"], "20");
        assert_eq!(ch[1]["severed"], false);
        assert_eq!(ch[2]["id"], 9);
        assert_eq!(ch[2]["on_chain"], false);
        assert_eq!(ch[2]["close"], "final");

        // A node's neighbourhood leaves out what is not around it.
        let shown = BTreeSet::from([NodeId([1; 32]), NodeId([2; 32])]);
        let s = state("node", &snapshot, Some(&shown), &reports, 1);
        assert_eq!(s["nodes"].as_array().unwrap().len(), 2);
        assert_eq!(s["channels"].as_array().unwrap().len(), 2);
    }
}
