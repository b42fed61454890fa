//! One harness for driving engines without IO, for tests, fuzzers, benchmarks and the
//! simulator (behind the `test-utils` feature), in the way LDK keeps
//! `functional_test_utils` and quinn keeps `Pair`.
//!
//! A [`TestNode`] is what a node process is minus its sockets and threads: an engine
//! and the durable [`Store`] its writes fold into, so a crash ([`TestNode::crash`])
//! loses exactly what was not yet durable. A [`Network`] joins test nodes by instant,
//! ordered links and pumps frames between them until nothing moves. Time is always an
//! argument: nothing here reads a clock.

pub mod consistency;

use crate::amount::Amount;
use crate::channel::ChannelRecord;
use crate::config::EngineConfig;
use crate::crypto::{Deployment, Keypair, NodeId};
use crate::engine::{ChainAction, ChainEvent, Engine, Event, Transmit};
use crate::error::ProtocolError;
use crate::messages::Message;
use crate::store::{Store, StoreError};
use crate::time::Time;
use crate::topology::Topology;
use crate::types::{ChannelId, EdgeInfo, EdgeTerms};

/// The edge `id` between `a` and `b` that tests and fuzzers use when its terms do not
/// matter: 10 ms, a base cost of 100 and 1 per byte, syncs every 100 ms, late fees up
/// to 10 per ms, and 1,000,000 deposited on each side.
pub fn test_edge(id: u64, a: &Keypair, b: &Keypair) -> EdgeInfo {
    EdgeInfo {
        id: ChannelId(id),
        a: a.id(),
        b: b.id(),
        terms: EdgeTerms {
            latency_ms: 10,
            base_cost: Amount(100),
            byte_cost: Amount(1),
            sync_interval_ms: 100,
            sync_phase_ms: 0,
            max_late_fee_rate: Amount(10),
            bandwidth: EdgeTerms::DEFAULT_BANDWIDTH,
        },
        deposit_a: Amount(1_000_000),
        deposit_b: Amount(1_000_000),
    }
}

/// One engine and its durable store.
#[derive(Debug)]
pub struct TestNode {
    /// The node's key.
    pub key: Keypair,
    /// The configuration it runs (and restarts) with.
    pub config: EngineConfig,
    /// The engine.
    pub engine: Engine,
    /// Everything the engine asked to persist and was told is durable.
    pub store: Store,
}

impl TestNode {
    /// A node with an empty topology and store, signing for [`Deployment::test`].
    pub fn new(config: EngineConfig, key: Keypair, now: Time) -> TestNode {
        TestNode::for_deployment(config, key, Deployment::test(), now)
    }

    /// A node with an empty topology and store, signing for `deployment`.
    pub fn for_deployment(
        config: EngineConfig,
        key: Keypair,
        deployment: Deployment,
        now: Time,
    ) -> TestNode {
        TestNode {
            engine: Engine::new(config.clone(), key.clone(), deployment, now),
            key,
            config,
            store: Store::default(),
        }
    }

    /// The node's identity.
    pub fn id(&self) -> NodeId {
        self.key.id()
    }

    /// Tells the engine these edges opened on chain.
    pub fn open(&mut self, edges: &[EdgeInfo], now: Time) {
        for e in edges {
            self.engine
                .handle_chain_event(ChainEvent::EdgeOpened(e.clone()), now);
        }
    }

    /// Folds every write batch the engine has into the store, then reports it durable.
    /// Returns whether there was any. A write the store refuses (an engine bug) is
    /// handed to `refused` and skipped; the rest of its batch still folds in.
    pub fn persist(&mut self, mut refused: impl FnMut(StoreError)) -> bool {
        let mut any = false;
        while let Some(batch) = self.engine.poll_writes() {
            any = true;
            for w in &batch.writes {
                if let Err(e) = self.store.apply(w) {
                    refused(e);
                }
            }
            self.engine.writes_durable(batch.up_to);
        }
        any
    }

    /// Reports every write durable without folding it into the store: for benchmarks,
    /// where the store is not what is measured.
    pub fn discard_writes(&mut self) {
        while let Some(batch) = self.engine.poll_writes() {
            self.engine.writes_durable(batch.up_to);
        }
    }

    /// The frames the engine releases now.
    pub fn transmits(&mut self) -> Vec<Transmit> {
        std::iter::from_fn(|| self.engine.poll_transmit()).collect()
    }

    /// Persists, then returns the frames that released. Panics on a refused write
    /// (an engine bug; tests want to hear of it at once).
    pub fn flush(&mut self) -> Vec<Transmit> {
        let id = self.id();
        self.persist(|e| panic!("store refused a write of {id}: {e}"));
        self.transmits()
    }

    /// The engine's events so far.
    pub fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.engine.poll_event()).collect()
    }

    /// The engine's chain actions so far.
    pub fn chain_actions(&mut self) -> Vec<ChainAction> {
        std::iter::from_fn(|| self.engine.poll_chain_action()).collect()
    }

    /// A crash and restart: the engine is rebuilt from the store and `topology`, so
    /// whatever was not durable is gone.
    pub fn crash(&mut self, topology: Topology, now: Time) {
        let deployment = *self.engine.deployment();
        self.engine = Engine::restore(
            self.config.clone(),
            self.key.clone(),
            deployment,
            topology,
            &self.store,
            now,
        );
    }
}

/// Test nodes joined by the edges of a topology, with instant, ordered links.
#[derive(Debug)]
pub struct Network {
    /// The nodes, by index.
    pub nodes: Vec<TestNode>,
    /// The edges, as opened on chain.
    pub edges: Vec<EdgeInfo>,
}

impl Network {
    /// Nodes with these keys and configurations, each told that `edges` opened.
    pub fn new(
        nodes: impl IntoIterator<Item = (Keypair, EngineConfig)>,
        edges: Vec<EdgeInfo>,
        now: Time,
    ) -> Network {
        let nodes = nodes
            .into_iter()
            .map(|(key, config)| {
                let mut n = TestNode::new(config, key, now);
                n.open(&edges, now);
                n
            })
            .collect();
        Network { nodes, edges }
    }

    /// Nodes with default configurations.
    pub fn with_keys(keys: &[Keypair], edges: Vec<EdgeInfo>, now: Time) -> Network {
        Network::new(
            keys.iter().map(|k| (k.clone(), EngineConfig::default())),
            edges,
            now,
        )
    }

    /// The id of node `i`.
    pub fn id(&self, i: usize) -> NodeId {
        self.nodes[i].id()
    }

    /// The index of the node with this id.
    pub fn index(&self, id: &NodeId) -> Option<usize> {
        self.nodes.iter().position(|n| n.id() == *id)
    }

    /// Node `i`'s engine.
    pub fn engine(&mut self, i: usize) -> &mut Engine {
        &mut self.nodes[i].engine
    }

    /// Node `i`'s record of a channel.
    pub fn channel(&self, i: usize, channel: ChannelId) -> Option<&ChannelRecord> {
        self.nodes[i].engine.channel(channel)
    }

    /// Node `i`'s events so far.
    pub fn events(&mut self, i: usize) -> Vec<Event> {
        self.nodes[i].events()
    }

    /// The topology of the network's edges, as the chain would report it.
    pub fn topology(&self) -> Topology {
        let mut t = Topology::new();
        for e in &self.edges {
            t.insert_edge(e.clone());
        }
        t
    }

    /// Hands `message` from node `from` to node `to`.
    pub fn deliver(
        &mut self,
        from: usize,
        to: usize,
        message: Message,
        now: Time,
    ) -> Result<(), ProtocolError> {
        let from = self.id(from);
        self.nodes[to].engine.handle_message(from, message, now)
    }

    /// Delivers every frame until nothing moves; returns every refusal.
    pub fn pump(&mut self, now: Time) -> Vec<ProtocolError> {
        self.pump_filtered(now, |_, _, _| true)
    }

    /// As [`Network::pump`], delivering only the frames `keep(from, to, message)`
    /// allows (the rest are lost, as on a connection that drops).
    pub fn pump_filtered(
        &mut self,
        now: Time,
        mut keep: impl FnMut(usize, usize, &Message) -> bool,
    ) -> Vec<ProtocolError> {
        let mut errors = Vec::new();
        loop {
            let mut moved = false;
            for i in 0..self.nodes.len() {
                for t in self.nodes[i].flush() {
                    moved = true;
                    let Some(j) = self.index(&t.to) else {
                        continue;
                    };
                    if !keep(i, j, &t.message) {
                        continue;
                    }
                    if let Err(e) = self.deliver(i, j, t.message, now) {
                        errors.push(e);
                    }
                }
            }
            if !moved {
                return errors;
            }
        }
    }

    /// The neighbours of node `i` (indexes), by the network's edges.
    pub fn neighbours(&self, i: usize) -> Vec<usize> {
        let me = self.id(i);
        let mut out: Vec<usize> = self
            .edges
            .iter()
            .filter_map(|e| match (e.a == me, e.b == me) {
                (true, _) => Some(e.b),
                (_, true) => Some(e.a),
                _ => None,
            })
            .filter_map(|peer| self.index(&peer))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Node `i` crashes and restarts from its store; every neighbour sees the
    /// connection drop and come back, and both ends reestablish.
    pub fn crash(&mut self, i: usize, now: Time) {
        let topology = self.topology();
        self.nodes[i].crash(topology, now);
        for j in self.neighbours(i) {
            let (me, peer) = (self.id(i), self.id(j));
            self.nodes[j].engine.peer_disconnected(me, now);
            self.nodes[j].engine.peer_connected(me, now);
            self.nodes[i].engine.peer_connected(peer, now);
        }
    }
}
