//! The network graph as the chain records it: route finding, quotes, and the
//! stake-weighted center (paper §4.1).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::amount::{Amount, AmountOverflow};
use crate::crypto::NodeId;
use crate::types::{ChannelId, EdgeInfo, Route};

/// Why a route is not usable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// Fewer than two nodes, a node repeated, or channel count not nodes - 1.
    #[error("route is malformed")]
    Malformed,
    /// A channel on the route is not a known edge.
    #[error("route names unknown edge {0}")]
    UnknownEdge(ChannelId),
    /// A channel on the route does not join the nodes it sits between.
    #[error("edge {0} does not join the route's consecutive nodes")]
    WrongEndpoints(ChannelId),
    /// A channel on the route has been severed.
    #[error("edge {0} on the route is severed")]
    Severed(ChannelId),
    /// A cost sum overflowed.
    #[error("route cost overflows")]
    Overflow,
    /// A latency sum overflowed.
    #[error("route latency overflows")]
    LatencyOverflow,
}

impl From<AmountOverflow> for RouteError {
    fn from(_: AmountOverflow) -> Self {
        RouteError::Overflow
    }
}

/// A priced route: what the client pays the first hop and when it may expect the answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quote {
    /// The route.
    pub route: Route,
    /// `C(P, m)`: the payment to the first hop.
    pub cost: Amount,
    /// `L(P)`: one-way latency in ms.
    pub one_way_ms: u64,
    /// The round-trip bound in ms: `2 L(P)` plus the transmission time of the
    /// request and its response limit over each edge (see
    /// [`crate::types::EdgeTerms::round_trip_ms`]).
    pub rtt_ms: u64,
}

/// The graph of nodes and edges known from the chain.
#[derive(Clone, Debug, Default)]
pub struct Topology {
    edges: BTreeMap<ChannelId, EdgeInfo>,
    severed: BTreeSet<ChannelId>,
    adjacency: BTreeMap<NodeId, BTreeSet<ChannelId>>,
    stakes: BTreeMap<NodeId, Amount>,
}

impl Topology {
    /// An empty graph.
    pub fn new() -> Topology {
        Topology::default()
    }

    /// Records a node's stake (adds the node if new).
    pub fn set_stake(&mut self, node: NodeId, stake: Amount) {
        self.stakes.insert(node, stake);
        self.adjacency.entry(node).or_default();
    }

    /// Adds (or replaces) an edge.
    pub fn insert_edge(&mut self, edge: EdgeInfo) {
        self.adjacency.entry(edge.a).or_default().insert(edge.id);
        self.adjacency.entry(edge.b).or_default().insert(edge.id);
        self.stakes.entry(edge.a).or_default();
        self.stakes.entry(edge.b).or_default();
        self.edges.insert(edge.id, edge);
    }

    /// Marks an edge severed. Returns whether it was live before.
    pub fn sever(&mut self, id: ChannelId) -> bool {
        self.edges.contains_key(&id) && self.severed.insert(id)
    }

    /// The edge with this id, severed or not.
    pub fn edge(&self, id: ChannelId) -> Option<&EdgeInfo> {
        self.edges.get(&id)
    }

    /// Whether the edge is known and not severed.
    pub fn is_live(&self, id: ChannelId) -> bool {
        self.edges.contains_key(&id) && !self.severed.contains(&id)
    }

    /// Whether the edge has been severed.
    pub fn is_severed(&self, id: ChannelId) -> bool {
        self.severed.contains(&id)
    }

    /// All nodes.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeId> {
        self.adjacency.keys()
    }

    /// All edges, severed included.
    pub fn edges(&self) -> impl Iterator<Item = &EdgeInfo> {
        self.edges.values()
    }

    /// A node's stake (zero if unknown).
    pub fn stake(&self, node: &NodeId) -> Amount {
        self.stakes.get(node).copied().unwrap_or_default()
    }

    /// Live edges at `node`, with the neighbour on the other end.
    pub fn live_neighbours(&self, node: &NodeId) -> impl Iterator<Item = (&EdgeInfo, NodeId)> + '_ {
        let node = *node;
        self.adjacency
            .get(&node)
            .into_iter()
            .flatten()
            .filter(|id| !self.severed.contains(id))
            .filter_map(move |id| {
                let e = self.edges.get(id)?;
                Some((e, e.peer_of(&node)?))
            })
    }

    /// The live edge between two nodes, if any (the lowest id if several).
    pub fn live_edge_between(&self, x: &NodeId, y: &NodeId) -> Option<&EdgeInfo> {
        self.live_neighbours(x)
            .find(|(_, peer)| peer == y)
            .map(|(e, _)| e)
    }

    /// Checks that every edge of the route exists, is live and joins its nodes.
    pub fn validate(&self, route: &Route) -> Result<(), RouteError> {
        if !route.well_formed() {
            return Err(RouteError::Malformed);
        }
        for (i, ch) in route.channels.iter().enumerate() {
            let e = self.edges.get(ch).ok_or(RouteError::UnknownEdge(*ch))?;
            let (x, y) = (&route.nodes[i], &route.nodes[i.saturating_add(1)]);
            if !e.connects(x, y) {
                return Err(RouteError::WrongEndpoints(*ch));
            }
            if self.severed.contains(ch) {
                return Err(RouteError::Severed(*ch));
            }
        }
        Ok(())
    }

    /// One-way latency of the route's edges from position `from` (a node index) on.
    pub fn latency_from(&self, route: &Route, from: usize) -> Result<u64, RouteError> {
        route.channels.iter().skip(from).try_fold(0u64, |acc, ch| {
            let e = self.edges.get(ch).ok_or(RouteError::UnknownEdge(*ch))?;
            acc.checked_add(e.terms.latency_ms)
                .ok_or(RouteError::LatencyOverflow)
        })
    }

    /// The round-trip budget of the route's edges from position `from` on, for a
    /// request priced on `bytes` (request body plus response limit).
    pub fn budget_from(&self, route: &Route, from: usize, bytes: u64) -> Result<u64, RouteError> {
        route.channels.iter().skip(from).try_fold(0u64, |acc, ch| {
            let e = self.edges.get(ch).ok_or(RouteError::UnknownEdge(*ch))?;
            e.terms
                .round_trip_ms(bytes)
                .and_then(|rt| acc.checked_add(rt))
                .ok_or(RouteError::LatencyOverflow)
        })
    }

    /// Cost of the route's edges from position `from` on, for `bytes` carried
    /// (request body plus response limit).
    pub fn cost_from(&self, route: &Route, from: usize, bytes: u64) -> Result<Amount, RouteError> {
        route
            .channels
            .iter()
            .skip(from)
            .try_fold(Amount::ZERO, |acc, ch| {
                let e = self.edges.get(ch).ok_or(RouteError::UnknownEdge(*ch))?;
                Ok(acc.checked_add(e.terms.cost(bytes)?)?)
            })
    }

    /// The highest late-fee rate every edge of the route accepts.
    pub fn max_fee_rate(&self, route: &Route) -> Result<Amount, RouteError> {
        route
            .channels
            .iter()
            .try_fold(Amount(u128::MAX), |acc, ch| {
                let e = self.edges.get(ch).ok_or(RouteError::UnknownEdge(*ch))?;
                Ok(acc.min(e.terms.max_late_fee_rate))
            })
    }

    /// Prices a route for `bytes` carried: the request body plus the response limit.
    pub fn quote(&self, route: &Route, bytes: u64) -> Result<Quote, RouteError> {
        self.validate(route)?;
        Ok(Quote {
            route: route.clone(),
            cost: self.cost_from(route, 0, bytes)?,
            one_way_ms: self.latency_from(route, 0)?,
            rtt_ms: self.budget_from(route, 0, bytes)?,
        })
    }

    /// Up to `k` cheapest simple routes from `from` to `to` for `bytes` carried
    /// (request body plus response limit) whose round-trip budget is at most
    /// `max_rtt_ms`, over live edges, cheapest first (ties: lower budget, then fewer
    /// hops).
    ///
    /// A best-first label search ordered by cost; a partial path is dropped once `k`
    /// cheaper-or-equal labels with no more budget have left the same node. For `k = 1`
    /// this is the exact budget-constrained cheapest path. The search stops after
    /// `MAX_LABELS` expansions on pathological graphs and returns what it found.
    pub fn find_routes(
        &self,
        from: &NodeId,
        to: &NodeId,
        bytes: u64,
        max_rtt_ms: u64,
        k: usize,
    ) -> Vec<Quote> {
        const MAX_LABELS: usize = 200_000;
        let mut out = Vec::new();
        if from == to || k == 0 {
            return out;
        }
        // (cost, round-trip budget, one-way latency, path nodes, path channels)
        type Label = (Amount, u64, u64, Vec<NodeId>, Vec<ChannelId>);
        let mut heap: BinaryHeap<Reverse<Label>> = BinaryHeap::new();
        heap.push(Reverse((Amount::ZERO, 0, 0, vec![*from], Vec::new())));
        let mut settled: BTreeMap<NodeId, Vec<u64>> = BTreeMap::new();
        let mut expansions = 0usize;
        while let Some(Reverse((cost, rtt, lat, nodes, channels))) = heap.pop() {
            expansions = expansions.saturating_add(1);
            if expansions > MAX_LABELS {
                break;
            }
            let Some(here) = nodes.last().copied() else {
                continue;
            };
            let rtts = settled.entry(here).or_default();
            if rtts.iter().filter(|r| **r <= rtt).count() >= k {
                continue;
            }
            rtts.push(rtt);
            if here == *to {
                let route = Route { nodes, channels };
                out.push(Quote {
                    route,
                    cost,
                    one_way_ms: lat,
                    rtt_ms: rtt,
                });
                if out.len() >= k {
                    break;
                }
                continue;
            }
            for (edge, next) in self.live_neighbours(&here) {
                if nodes.contains(&next) {
                    continue;
                }
                let Some(nrtt) = edge
                    .terms
                    .round_trip_ms(bytes)
                    .and_then(|r| r.checked_add(rtt))
                else {
                    continue;
                };
                if nrtt > max_rtt_ms {
                    continue;
                }
                let nlat = lat.saturating_add(edge.terms.latency_ms);
                let Ok(ncost) = edge.terms.cost(bytes).and_then(|c| c.checked_add(cost)) else {
                    continue;
                };
                let mut nn = nodes.clone();
                nn.push(next);
                let mut nc = channels.clone();
                nc.push(edge.id);
                heap.push(Reverse((ncost, nrtt, nlat, nn, nc)));
            }
        }
        out
    }

    /// Hop distances from `src` over live edges.
    pub fn hop_distances(&self, src: &NodeId) -> BTreeMap<NodeId, u64> {
        let mut dist = BTreeMap::new();
        dist.insert(*src, 0u64);
        let mut queue = VecDeque::from([*src]);
        while let Some(u) = queue.pop_front() {
            let du = dist.get(&u).copied().unwrap_or_default();
            for (_, v) in self.live_neighbours(&u) {
                if let std::collections::btree_map::Entry::Vacant(slot) = dist.entry(v) {
                    slot.insert(du.saturating_add(1));
                    queue.push_back(v);
                }
            }
        }
        dist
    }

    /// The stake-weighted center: `argmin_u sum_v stake(v) * d(u, v)` (paper §4.1).
    ///
    /// `d` is the hop distance over live edges. A node unreachable from `u` counts at
    /// distance `|V|` (longer than any path), so a center is always defined; ties go
    /// to the smallest node id. Sums saturate rather than overflow.
    pub fn stake_weighted_center(&self) -> Option<NodeId> {
        let n = u128::try_from(self.adjacency.len()).unwrap_or(u128::MAX);
        self.adjacency
            .keys()
            .map(|u| {
                let dist = self.hop_distances(u);
                let score = self.stakes.iter().fold(0u128, |acc, (v, stake)| {
                    let d = dist.get(v).map(|d| u128::from(*d)).unwrap_or(n);
                    acc.saturating_add(stake.0.saturating_mul(d))
                });
                (score, *u)
            })
            .min()
            .map(|(_, u)| u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::EdgeTerms;

    fn node(i: u8) -> NodeId {
        NodeId([i; 32])
    }

    fn terms(latency_ms: u64, base: u128) -> EdgeTerms {
        EdgeTerms {
            latency_ms,
            base_cost: Amount(base),
            byte_cost: Amount(1),
            sync_interval_ms: 1000,
            sync_phase_ms: 0,
            max_late_fee_rate: Amount(1_000_000),
            bandwidth: EdgeTerms::DEFAULT_BANDWIDTH,
        }
    }

    fn edge(id: u64, a: u8, b: u8, lat: u64, base: u128) -> EdgeInfo {
        EdgeInfo {
            id: ChannelId(id),
            a: node(a),
            b: node(b),
            terms: terms(lat, base),
            deposit_a: Amount(1_000_000),
            deposit_b: Amount(1_000_000),
        }
    }

    /// The paper's §5 topology: Alex(1) Alice(2) Bob(3) Carol(4) Dave(5) Eve(6).
    fn paper() -> Topology {
        let mut t = Topology::new();
        t.insert_edge(edge(1, 1, 2, 100, 10));
        t.insert_edge(edge(2, 2, 3, 200, 10));
        t.insert_edge(edge(3, 3, 4, 100, 10));
        t.insert_edge(edge(4, 3, 6, 100, 10));
        t.insert_edge(edge(5, 6, 5, 100, 10));
        t
    }

    #[test]
    fn paper_routes_and_bounds() {
        let t = paper();
        let q = t.find_routes(&node(1), &node(4), 0, 10_000, 1);
        assert_eq!(q.len(), 1);
        assert_eq!(q[0].route.nodes, vec![node(1), node(2), node(3), node(4)]);
        assert_eq!(q[0].rtt_ms, 800);
        assert_eq!(q[0].cost, Amount(30));
        let q = t.find_routes(&node(1), &node(5), 0, 10_000, 1);
        assert_eq!(q[0].rtt_ms, 1000);
        // The bound excludes the only route.
        assert!(t.find_routes(&node(1), &node(5), 0, 999, 1).is_empty());
        // Per-byte costs: 4 edges * (10 + 1 * 5).
        assert_eq!(
            t.find_routes(&node(1), &node(5), 5, 1000, 1)[0].cost,
            Amount(60)
        );
    }

    #[test]
    fn severed_edges_are_excluded_and_alternatives_ranked() {
        let mut t = paper();
        // A second, pricier but faster way from Bob to Dave.
        t.insert_edge(edge(6, 3, 5, 50, 100));
        let q = t.find_routes(&node(1), &node(5), 0, 10_000, 3);
        assert_eq!(q.len(), 2);
        assert_eq!(q[0].cost, Amount(40));
        assert_eq!(q[1].cost, Amount(120));
        // Tight bound: only the fast one fits (2 * 350 = 700).
        let q = t.find_routes(&node(1), &node(5), 0, 700, 3);
        assert_eq!(q.len(), 1);
        assert_eq!(q[0].rtt_ms, 700);
        assert!(t.sever(ChannelId(6)));
        assert!(!t.sever(ChannelId(6)));
        let q = t.find_routes(&node(1), &node(5), 0, 10_000, 3);
        assert_eq!(q.len(), 1);
        assert_eq!(
            t.validate(&Route {
                nodes: vec![node(3), node(5)],
                channels: vec![ChannelId(6)]
            }),
            Err(RouteError::Severed(ChannelId(6)))
        );
    }

    #[test]
    fn validate_refuses_bad_shapes() {
        let t = paper();
        let bad = Route {
            nodes: vec![node(1), node(2), node(1)],
            channels: vec![ChannelId(1), ChannelId(1)],
        };
        assert_eq!(t.validate(&bad), Err(RouteError::Malformed));
        let wrong = Route {
            nodes: vec![node(1), node(3)],
            channels: vec![ChannelId(1)],
        };
        assert_eq!(
            t.validate(&wrong),
            Err(RouteError::WrongEndpoints(ChannelId(1)))
        );
        let unknown = Route {
            nodes: vec![node(1), node(2)],
            channels: vec![ChannelId(99)],
        };
        assert_eq!(
            t.validate(&unknown),
            Err(RouteError::UnknownEdge(ChannelId(99)))
        );
    }

    #[test]
    fn center_of_paper_topology_is_bob_with_equal_stakes() {
        let mut t = paper();
        for i in 1..=6 {
            t.set_stake(node(i), Amount(100));
        }
        assert_eq!(t.stake_weighted_center(), Some(node(3)));
        // Enough stake on Alex pulls the center to him.
        t.set_stake(node(1), Amount(10_000));
        assert_eq!(t.stake_weighted_center(), Some(node(1)));
    }

    #[test]
    fn eves_chain_cannot_capture_the_center() {
        // Paper §4.1: a chain of Eve's nodes hanging off one honest node never holds
        // the center while Eve has less than half the stake.
        let mut t = paper();
        for i in 1..=6 {
            t.set_stake(node(i), Amount(100));
        }
        let mut prev = 5u8;
        for (i, id) in (10u8..20).enumerate() {
            t.insert_edge(edge(100 + i as u64, prev, id, 10, 1));
            t.set_stake(node(id), Amount(59)); // 590 < 600 honest
            prev = id;
        }
        let c = t.stake_weighted_center().unwrap();
        assert!(c.0[0] < 10, "center landed on Eve's chain: {c:?}");
    }
}

#[cfg(test)]
mod route_props {
    use super::*;
    use crate::types::EdgeTerms;
    use proptest::prelude::*;

    fn node(i: u8) -> NodeId {
        NodeId([i; 32])
    }

    /// Every simple path from `from` to `to`, by exhaustive search.
    fn all_paths(t: &Topology, from: NodeId, to: NodeId, body: u64) -> Vec<(Amount, u64)> {
        fn walk(
            t: &Topology,
            here: NodeId,
            to: NodeId,
            body: u64,
            seen: &mut Vec<NodeId>,
            acc: (Amount, u64),
            out: &mut Vec<(Amount, u64)>,
        ) {
            if here == to {
                out.push(acc);
                return;
            }
            let next: Vec<(EdgeInfo, NodeId)> = t
                .live_neighbours(&here)
                .map(|(e, n)| (e.clone(), n))
                .collect();
            for (e, n) in next {
                if seen.contains(&n) {
                    continue;
                }
                seen.push(n);
                let c = acc.0.checked_add(e.terms.cost(body).unwrap()).unwrap();
                walk(t, n, to, body, seen, (c, acc.1 + e.terms.latency_ms), out);
                seen.pop();
            }
        }
        let mut out = Vec::new();
        walk(
            t,
            from,
            to,
            body,
            &mut vec![from],
            (Amount::ZERO, 0),
            &mut out,
        );
        out
    }

    proptest! {
        // About a quarter of random graphs connect the two ends within the bound.
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn cheapest_route_within_bound_matches_exhaustive_search(
            edges in proptest::collection::vec((0u8..7, 0u8..7, 1u64..100, 0u128..50, any::<bool>()), 1..18),
            bound in 0u64..600,
            body in 0u64..20,
        ) {
            let mut t = Topology::new();
            for (k, (a, b, lat, base, severed)) in edges.into_iter().enumerate() {
                if a == b { continue; }
                let id = ChannelId(k as u64);
                t.insert_edge(EdgeInfo {
                    id,
                    a: node(a),
                    b: node(b),
                    terms: EdgeTerms {
                        latency_ms: lat,
                        base_cost: Amount(base),
                        byte_cost: Amount(1),
                        sync_interval_ms: 1000,
                        sync_phase_ms: 0,
                        max_late_fee_rate: Amount(1),
                        bandwidth: EdgeTerms::DEFAULT_BANDWIDTH,
                    },
                    deposit_a: Amount(1),
                    deposit_b: Amount(1),
                });
                if severed { t.sever(id); }
            }
            let feasible: Vec<(Amount, u64)> = all_paths(&t, node(0), node(6), body)
                .into_iter()
                .filter(|(_, l)| 2 * l <= bound)
                .collect();
            let best = feasible.iter().map(|(c, _)| *c).min();
            let found = t.find_routes(&node(0), &node(6), body, bound, 3);
            prop_assert_eq!(found.first().map(|q| q.cost), best);
            for q in &found {
                prop_assert!(q.rtt_ms <= bound);
                prop_assert!(t.validate(&q.route).is_ok());
                prop_assert_eq!(t.quote(&q.route, body).unwrap().cost, q.cost);
            }
            prop_assert!(found.windows(2).all(|w| w[0].cost <= w[1].cost));
            prop_assert!(found.len() <= feasible.len());
            for (i, a) in found.iter().enumerate() {
                prop_assert!(found[i + 1..].iter().all(|b| b.route != a.route), "duplicate route");
            }
        }
    }
}
