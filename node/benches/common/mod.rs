//! What the node benchmarks share: a path of real por nodes in this process on the
//! embedded chain, each edge a channel, all connected and routable before it returns.
#![allow(clippy::unwrap_used, dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::time::Duration;

#[path = "../../tests/support/chain.rs"]
mod chain;

use por_chain::local::NEAR;
use por_chain::{AnyChain, Chain, LocalClient};
use por_node::limits::{Limits, DEFAULT_ADMISSION_DELAY_MS};
use por_node::{Handler, NodeBuilder, NodeHandle, TransportKind};
use por_protocol::types::EdgeTerms;
use por_protocol::{Amount, EngineConfig, Keypair, NodeId, SeverPolicy};

/// A number from the environment, or `default`.
pub fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Client, relays and server, in order.
pub struct Path {
    dir: PathBuf,
    pub nodes: Vec<NodeHandle>,
}

impl Path {
    /// `hops` edges over `transport`; every node answers with a `handler()`. Deadlines are
    /// generous (1 s per edge) and nobody severs: the benchmarks measure speed.
    pub async fn start<H: Handler>(
        name: &str,
        hops: usize,
        transport: TransportKind,
        handler: impl Fn() -> H,
    ) -> Path {
        let dir = std::env::temp_dir().join(format!("por-bench-{name}-{}", std::process::id()));
        let names: Vec<String> = (0..=hops).map(|i| format!("n{i}.local")).collect();
        let accounts: Vec<&str> = names.iter().map(String::as_str).collect();
        let chain = chain::local_chain(&dir, &accounts, 1_000 * NEAR, |_| {});
        let engine = EngineConfig {
            sever_policy: SeverPolicy::Never,
            heuristic: None,
            ..EngineConfig::default()
        };
        let mut nodes: Vec<NodeHandle> = Vec::new();
        for (i, a) in names.iter().enumerate() {
            let node = NodeBuilder::new(
                Keypair::from_seed([i as u8 + 1; 32]),
                AnyChain::Local(LocalClient::new(chain.clone(), a)),
                dir.join(a),
            )
            .transport(transport)
            .engine_config(engine.clone())
            .register(Amount(10 * NEAR))
            .chain_poll(Duration::from_millis(50))
            .commit_interval(Duration::from_millis(env("POR_BENCH_COMMIT_MS", 2) as u64))
            .limits(Limits {
                admission_delay_ms: env(
                    "POR_BENCH_ADMISSION_MS",
                    DEFAULT_ADMISSION_DELAY_MS as usize,
                ) as u64,
                ..Limits::default()
            })
            .handler(handler())
            .start()
            .await
            .unwrap();
            nodes.push(node);
        }
        let terms = EdgeTerms {
            latency_ms: 1_000,
            base_cost: Amount(1),
            byte_cost: Amount(0),
            sync_interval_ms: 1_000,
            sync_phase_ms: 0,
            max_late_fee_rate: Amount(1),
            bandwidth: EdgeTerms::DEFAULT_BANDWIDTH,
        };
        for w in names.windows(2) {
            let a = LocalClient::new(chain.clone(), &w[0]);
            let id = a
                .propose_channel(&w[1], &terms, Amount(100 * NEAR))
                .await
                .unwrap();
            LocalClient::new(chain.clone(), &w[1])
                .confirm_channel(id, Amount(100 * NEAR))
                .await
                .unwrap();
        }
        let path = Path { dir, nodes };
        let (client, server) = (path.client(), path.server());
        loop {
            if !client
                .quote(server, 64, 64, 60_000, 1)
                .await
                .unwrap()
                .is_empty()
                && client
                    .status()
                    .await
                    .unwrap()
                    .channels
                    .iter()
                    .all(|c| c.connected)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        path
    }

    /// The first node.
    pub fn client(&self) -> &NodeHandle {
        &self.nodes[0]
    }

    /// The last node's id.
    pub fn server(&self) -> NodeId {
        self.nodes[self.nodes.len() - 1].id()
    }

    /// Shuts every node down and removes their files.
    pub async fn stop(self) {
        for node in &self.nodes {
            node.shutdown().await.unwrap();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
