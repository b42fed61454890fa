//! Shared by the examples: an embedded chain in a temp directory with two funded
//! accounts, a server node answering with `handler`, a client node, and a channel
//! between them.

use std::time::Duration;

use por_chain::local::{dev_config, Clock, LocalChain, NEAR};
use por_chain::{AnyChain, Chain, LocalClient};
use por_node::{Handler, NodeBuilder, NodeHandle};
use por_protocol::types::EdgeTerms;
use por_protocol::{Amount, Keypair};

/// Starts the chain, a server running `handler` and a client, with a channel between them.
pub(crate) async fn client_and_server(
    name: &str,
    handler: impl Handler,
) -> anyhow::Result<(NodeHandle, NodeHandle)> {
    let dir = std::env::temp_dir().join(format!("por-example-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let workspace = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let wasm = std::fs::read(por_chain::wasm::build_contract(&workspace)?)?;
    let mut chain = LocalChain::open(&dir.join("chain.redb"), &wasm, "por.local", Clock::Wall)?;
    chain.ensure_initialised(dev_config())?;
    chain.fund("client.local", 100 * NEAR)?;
    chain.fund("server.local", 100 * NEAR)?;
    let chain = std::sync::Arc::new(std::sync::Mutex::new(chain));
    let on = |account: &str| AnyChain::Local(LocalClient::new(chain.clone(), account));

    let server = NodeBuilder::new(
        Keypair::from_seed([2; 32]),
        on("server.local"),
        dir.join("server"),
    )
    .register(Amount(NEAR))
    .handler(handler)
    .start()
    .await?;
    let client = NodeBuilder::new(
        Keypair::from_seed([1; 32]),
        on("client.local"),
        dir.join("client"),
    )
    .register(Amount(NEAR))
    .start()
    .await?;
    let terms = EdgeTerms {
        latency_ms: 50,
        base_cost: Amount(1_000),
        byte_cost: Amount(1),
        sync_interval_ms: 1_000,
        sync_phase_ms: 0,
        max_late_fee_rate: Amount(100),
        bandwidth: EdgeTerms::DEFAULT_BANDWIDTH,
    };
    let id = on("client.local")
        .propose_channel("server.local", &terms, Amount(NEAR))
        .await?;
    on("server.local").confirm_channel(id, Amount(NEAR)).await?;
    // Both nodes follow the chain: wait until they are connected.
    while !client.status().await?.channels.iter().any(|c| c.connected) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((client, server))
}
