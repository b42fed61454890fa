//! Views: configuration, nodes, channels, live edges, the stake-weighted center, the pool.

use near_sdk::json_types::{U128, U64};
use near_sdk::{near, AccountId};

use crate::state::{Channel, Config, Node, NodeView, PorContract, PorContractExt};

#[near]
impl PorContract {
    /// The configuration.
    pub fn get_config(&self) -> Config {
        self.config.clone()
    }

    /// The deployment every signature must be made for, as lower-case hex (see
    /// `por_protocol::crypto::Deployment`).
    pub fn get_deployment(&self) -> String {
        crate::common::to_hex(&self.deployment)
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
        self.channel(id.0).ok().cloned()
    }

    /// Channels not yet settled (proposed, open, or closing), paged. Settled ones are
    /// only looked up by id ([`PorContract::get_channel`]); their history is in the
    /// events.
    pub fn get_channels(&self, from: u32, limit: u32) -> Vec<Channel> {
        self.channels
            .values()
            .skip(from as usize)
            .take(limit as usize)
            .cloned()
            .collect()
    }

    /// Live edges (open channels), paged in O(`limit`): the page is read from the
    /// set of open ids, whatever the number of channels ever made.
    pub fn get_edges(&self, from: u32, limit: u32) -> Vec<Channel> {
        self.open
            .iter()
            .skip(from as usize)
            .take(limit as usize)
            .filter_map(|id| self.channels.get(id))
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
