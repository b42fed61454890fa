//! The live topology as one compact value, so that connectivity questions cost one
//! storage read and run in wasm memory: a 1,000-node graph with a few edges per node
//! is a few tens of kilobytes.

use std::collections::VecDeque;

use near_sdk::{near, AccountId};

/// One node: its account, its stake (this is where stakes live), whether a partition
/// check disconnected it, its live edges `(peer index, channel id)`, and what a split
/// needs to know about it without another storage read: stake still unbonding (still
/// slashable), stake added recently (not yet weighed), proposals it is party to, and
/// the penalties its peers paid for edges severed with it.
#[near(serializers = [borsh])]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GNode {
    /// The node's account.
    pub account: AccountId,
    /// Its stake.
    pub stake: u128,
    /// Set once a partition check found it on the disconnected side; its stake then
    /// no longer counts towards partition decisions or the center.
    pub disconnected: bool,
    /// Live edges.
    pub edges: Vec<(u32, u64)>,
    /// Stake asked back and not yet withdrawn: it no longer counts, but a partition
    /// check still slashes it and reimbursements still draw on it.
    pub unbonding: u128,
    /// Stake added by `add_stake` that does not count for weighing the sides of a
    /// split until `recent_until_ns` (see [`GNode::weight`]).
    pub recent: u128,
    /// When `recent` starts to count.
    pub recent_until_ns: u64,
    /// Channels proposed and not yet confirmed or cancelled that this node is an
    /// endpoint of.
    pub proposals: u32,
    /// Penalties peers paid for edges severed with this node, not yet reimbursed:
    /// `(peer index, amount, channel)`. If a split puts this node on the smaller side
    /// and the peer on the larger, this node pays the peer back.
    pub owed: Vec<(u32, u128, u64)>,
}

impl GNode {
    /// The stake that counts for the center.
    pub fn counted(&self) -> u128 {
        if self.disconnected {
            0
        } else {
            self.stake
        }
    }

    /// The stake that weighs this node's side of a split at `now_ns`: its counted
    /// stake less what `add_stake` added within the last unbonding period, so that
    /// stake added just before a split cannot make a side heavier.
    pub fn weight(&self, now_ns: u64) -> u128 {
        let recent = if now_ns < self.recent_until_ns {
            self.recent
        } else {
            0
        };
        self.counted().saturating_sub(recent)
    }

    /// Takes up to `amount` from this node's stake, then from its unbonding stake;
    /// returns what was taken.
    pub fn take(&mut self, amount: u128) -> u128 {
        let from_stake = amount.min(self.stake);
        self.stake = self.stake.saturating_sub(from_stake);
        let from_unbonding = amount.saturating_sub(from_stake).min(self.unbonding);
        self.unbonding = self.unbonding.saturating_sub(from_unbonding);
        self.recent = self.recent.min(self.stake);
        from_stake.saturating_add(from_unbonding)
    }
}

/// Every registered node by index, with its live edges.
#[near(serializers = [borsh])]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Graph {
    /// Nodes by registration index.
    pub nodes: Vec<GNode>,
}

/// The result of checking whether severing an edge split the graph.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Split {
    /// The two endpoints are still connected.
    Connected,
    /// They are not: the two components, each with its total stake.
    Partitioned {
        /// The component of the first endpoint.
        a: (Vec<u32>, u128),
        /// The component of the second endpoint.
        b: (Vec<u32>, u128),
    },
}

impl Graph {
    /// Adds a node; returns its index.
    pub fn add_node(&mut self, account: AccountId, stake: u128) -> u32 {
        self.nodes.push(GNode {
            account,
            stake,
            disconnected: false,
            edges: Vec::new(),
            unbonding: 0,
            recent: 0,
            recent_until_ns: 0,
            proposals: 0,
            owed: Vec::new(),
        });
        u32::try_from(self.nodes.len().saturating_sub(1)).unwrap_or(u32::MAX)
    }

    /// A node by index.
    pub fn node(&self, i: u32) -> Option<&GNode> {
        self.nodes.get(i as usize)
    }

    /// A node by index, mutably.
    pub fn node_mut(&mut self, i: u32) -> Option<&mut GNode> {
        self.nodes.get_mut(i as usize)
    }

    /// Adds a live edge.
    pub fn add_edge(&mut self, a: u32, b: u32, channel: u64) {
        if let Some(n) = self.node_mut(a) {
            n.edges.push((b, channel));
        }
        if let Some(n) = self.node_mut(b) {
            n.edges.push((a, channel));
        }
    }

    /// After an edge joined `a` and `b`: if one of them was on the disconnected side of
    /// an earlier split and the other was not, the component it was in is connected
    /// again, and its stake counts again. Returns the nodes whose flag was cleared.
    pub fn rejoin(&mut self, a: u32, b: u32) -> Vec<u32> {
        let flag = |g: &Graph, i: u32| g.node(i).map(|n| n.disconnected);
        let from = match (flag(self, a), flag(self, b)) {
            (Some(true), Some(false)) => a,
            (Some(false), Some(true)) => b,
            _ => return Vec::new(),
        };
        let mut cleared = Vec::new();
        let mut queue = VecDeque::from([from]);
        while let Some(i) = queue.pop_front() {
            let Some(n) = self.node_mut(i) else { continue };
            if !n.disconnected {
                continue;
            }
            n.disconnected = false;
            cleared.push(i);
            queue.extend(n.edges.iter().map(|(peer, _)| *peer));
        }
        cleared
    }

    /// Removes a live edge (both directions). Returns whether it was there.
    pub fn remove_edge(&mut self, a: u32, b: u32, channel: u64) -> bool {
        let mut found = false;
        for (x, y) in [(a, b), (b, a)] {
            if let Some(n) = self.node_mut(x) {
                let before = n.edges.len();
                n.edges.retain(|e| *e != (y, channel));
                found |= n.edges.len() != before;
            }
        }
        found
    }

    /// Number of live edges at a node.
    pub fn degree(&self, i: u32) -> usize {
        self.nodes.get(i as usize).map_or(0, |n| n.edges.len())
    }

    /// Whether `a` and `b` are connected, by a search that grows the two sides in turn
    /// (the smaller frontier first) and stops as soon as they meet; if they do not, the
    /// two whole components with their weights at `now_ns` (see [`GNode::weight`]).
    pub fn split(&self, a: u32, b: u32, now_ns: u64) -> Split {
        let n = self.nodes.len();
        // 0 = unseen, 1 = reached from a, 2 = reached from b.
        let mut side = vec![0u8; n];
        let (ai, bi) = (a as usize, b as usize);
        if ai >= n || bi >= n {
            return Split::Connected;
        }
        side[ai] = 1;
        side[bi] = 2;
        let mut fronts = [VecDeque::from([a]), VecDeque::from([b])];
        let mut members: [Vec<u32>; 2] = [vec![a], vec![b]];
        loop {
            let pick = match (fronts[0].is_empty(), fronts[1].is_empty()) {
                (true, true) => break,
                (false, true) => 0,
                (true, false) => 1,
                (false, false) => usize::from(fronts[1].len() < fronts[0].len()),
            };
            let mine = u8::try_from(pick.saturating_add(1)).unwrap_or(1);
            let Some(u) = fronts[pick].pop_front() else {
                continue;
            };
            for &(v, _) in &self.nodes[u as usize].edges {
                let vi = v as usize;
                match side.get(vi).copied() {
                    Some(0) => {
                        side[vi] = mine;
                        fronts[pick].push_back(v);
                        members[pick].push(v);
                    }
                    Some(s) if s != mine => return Split::Connected,
                    _ => {}
                }
            }
        }
        let stake = |m: &Vec<u32>| {
            m.iter()
                .map(|i| self.nodes[*i as usize].weight(now_ns))
                .fold(0u128, u128::saturating_add)
        };
        let [ma, mb] = members;
        let (sa, sb) = (stake(&ma), stake(&mb));
        Split::Partitioned {
            a: (ma, sa),
            b: (mb, sb),
        }
    }

    /// Hop distances from `src` (`u32::MAX` = unreachable).
    fn distances(&self, src: u32) -> Vec<u32> {
        let mut d = vec![u32::MAX; self.nodes.len()];
        let mut q = VecDeque::from([src]);
        if let Some(x) = d.get_mut(src as usize) {
            *x = 0;
        }
        while let Some(u) = q.pop_front() {
            let du = d[u as usize];
            for &(v, _) in &self.nodes[u as usize].edges {
                if d[v as usize] == u32::MAX {
                    d[v as usize] = du.saturating_add(1);
                    q.push_back(v);
                }
            }
        }
        d
    }

    /// The stake-weighted center `argmin_u Σ_v stake(v) · d(u, v)`, with unreachable
    /// nodes at distance `|V|`, as `por_protocol::topology::Topology` computes it. Ties
    /// go to `tie_key`'s smallest value (nodes use their ed25519 key).
    pub fn center<K: Ord>(&self, tie_key: impl Fn(u32) -> K) -> Option<u32> {
        let n = u128::try_from(self.nodes.len()).unwrap_or(u128::MAX);
        (0..self.nodes.len())
            .filter_map(|u| u32::try_from(u).ok())
            .map(|u| {
                let d = self.distances(u);
                let score = self.nodes.iter().zip(&d).fold(0u128, |acc, (node, dv)| {
                    let dist = if *dv == u32::MAX { n } else { u128::from(*dv) };
                    acc.saturating_add(node.counted().saturating_mul(dist))
                });
                (score, tie_key(u), u)
            })
            .min()
            .map(|(_, _, u)| u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(n: u32) -> Graph {
        let mut g = Graph::default();
        for i in 0..n {
            g.add_node(format!("n{i}.test").parse().unwrap(), 10);
        }
        for i in 1..n {
            g.add_edge(i - 1, i, u64::from(i));
        }
        g
    }

    #[test]
    fn split_detects_connection_and_partition() {
        let mut g = line(5);
        g.add_edge(0, 4, 99); // a ring: removing one edge leaves it connected
        assert!(g.remove_edge(1, 2, 2));
        assert_eq!(g.split(1, 2, 0), Split::Connected);
        assert!(g.remove_edge(0, 4, 99));
        match g.split(1, 2, 0) {
            Split::Partitioned { a, b } => {
                assert_eq!((a.0.len(), a.1), (2, 20));
                assert_eq!((b.0.len(), b.1), (3, 30));
            }
            Split::Connected => panic!("should be split"),
        }
        assert!(!g.remove_edge(1, 2, 2), "already gone");
    }

    #[test]
    fn center_of_a_line_is_its_middle() {
        let g = line(5);
        assert_eq!(g.center(|u| u), Some(2));
    }
}
