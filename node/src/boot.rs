//! Boot: everything between a [`NodeBuilder`] and a running node. Opens the
//! database, binds the transport, registers on chain (or publishes a changed
//! address), restores the engine from its store and the chain's topology, and spawns
//! the persister, the chain follower, the acceptor and the pump.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use por_chain::Chain;
use por_protocol::engine::ChainEvent;
use por_protocol::Engine;
use por_transport::{AnyTransport, Listener, Transport};
use tokio::sync::{broadcast, mpsc};
use tracing::{info, info_span, Instrument};

use crate::client::Client;
use crate::db::NodeDb;
use crate::links::Links;
use crate::metrics::Metrics;
use crate::pump::Pump;
use crate::sdk::{NodeBuilder, NodeHandle};
use crate::{now, NodeError};

impl NodeBuilder {
    /// Starts the node: opens its database, registers if asked, restores its
    /// channels, listens, connects to its neighbours.
    pub async fn start(self) -> Result<NodeHandle, NodeError> {
        start(self).await
    }
}

async fn start(b: NodeBuilder) -> Result<NodeHandle, NodeError> {
    b.limits.check(&b.engine)?;
    std::fs::create_dir_all(&b.data_dir).map_err(|e| NodeError::File {
        path: b.data_dir.clone(),
        detail: e.to_string(),
    })?;
    let id = b.key.id();
    let mut db = NodeDb::open(&b.data_dir.join("node.redb"))?;
    let transport = match b.transport {
        crate::TransportKind::Tcp => AnyTransport::Tcp(por_transport::tcp::TcpTransport::new(
            &b.key,
            b.transport_config.clone(),
        )?),
        crate::TransportKind::Quic => AnyTransport::Quic(por_transport::quic::QuicTransport::new(
            &b.key,
            b.transport_config.clone(),
        )?),
    };
    let listener = transport.listen(&b.listen).await?;
    let address = b.advertise.clone().unwrap_or_else(|| listener.local_addr());

    // The chain: registration, then the topology the engine starts from.
    let chain = b.chain.clone();
    let mut snapshot = chain.snapshot().await?;
    match snapshot.node(&id) {
        None => {
            let stake = b
                .register_stake
                .ok_or_else(|| NodeError::NotRegistered(crate::key_hex(&id)))?;
            info!(account = chain.account(), %address, "registering on chain");
            chain.register(id, vec![address.clone()], stake).await?;
            snapshot = chain.snapshot().await?;
        }
        Some(n) if n.addresses != [address.clone()] => {
            info!(%address, "publishing our address on chain");
            chain
                .call(
                    "update_addresses",
                    serde_json::json!({ "addresses": [address.clone()] }),
                    0,
                )
                .await?;
        }
        Some(_) => {}
    }
    let deployment = chain.deployment().await?;
    db.bind_deployment(&deployment)?;
    let t = now();
    let mut engine = Engine::restore(
        b.engine.clone(),
        b.key.clone(),
        deployment,
        snapshot.topology(),
        db.store(),
        t,
    );
    for e in &snapshot.edges {
        engine.handle_chain_event(ChainEvent::EdgeOpened(e.clone()), t);
    }
    let db = Arc::new(Mutex::new(db));
    let cursor = crate::follower::start_cursor(&chain, &db).await?;

    let metrics = Arc::new(Metrics::default());
    let (cmd_tx, cmd_rx) = mpsc::channel(1024);
    let (events, _) = broadcast::channel(16_384);
    let (link_tx, link_rx) = mpsc::channel(4096);
    let (chain_ev_tx, chain_ev_rx) = mpsc::channel(1024);
    let (action_tx, action_rx) = mpsc::unbounded_channel();
    let (durable_tx, durable_rx) = mpsc::unbounded_channel();
    let (writes_tx, writes_rx) = mpsc::unbounded_channel();
    let done = Arc::new(tokio::sync::Notify::new());
    let stopped = Arc::new(AtomicBool::new(false));
    let span = info_span!("node", id = %id);

    let persister = crate::persister::spawn_persister(
        db.clone(),
        writes_rx,
        durable_tx,
        metrics.clone(),
        b.commit_interval,
    );
    let mut links = Links::new(
        id,
        deployment,
        transport,
        link_tx,
        b.shape.clone(),
        metrics.clone(),
        span.clone(),
    );
    links.bound_queues(b.limits.queued_bytes_per_peer, b.limits.bulk_lanes);
    links.set_addresses(&snapshot);
    let chain_task = tokio::spawn(
        crate::follower::follow_chain(
            chain.clone(),
            cursor,
            b.chain_poll,
            b.watch_after,
            chain_ev_tx,
            action_rx,
            links.addresses(),
        )
        .instrument(span.clone()),
    );
    let accept_task = tokio::spawn(
        crate::links::accept_loop(listener, links.acceptor()).instrument(span.clone()),
    );
    let metrics_listener = match &b.metrics_addr {
        Some(addr) => Some((crate::metrics::bind(addr).await?, addr.clone())),
        None => None,
    };
    let metrics_addr = metrics_listener
        .as_ref()
        .map(|(l, asked)| crate::metrics::bound(l, asked));

    let task = Pump {
        engine,
        links,
        client: Client::default(),
        handler: b.handler.clone(),
        commands: cmd_tx.clone(),
        events: events.clone(),
        metrics: metrics.clone(),
        writes: writes_tx,
        actions: action_tx,
        chain_events_seen: 0,
        cursor_due: None,
        shutting_down: None,
        grace: b.shutdown_grace,
        address: address.clone(),
        admission: crate::admission::Admission::new(b.limits.admission_delay_ms, now().ms()),
    };
    let event_log =
        (b.event_log > 0).then(|| crate::eventlog::spawn(b.event_log, events.subscribe()));
    let handle = NodeHandle {
        id,
        address,
        commands: cmd_tx,
        events,
        metrics,
        metrics_addr,
        chain,
        done: done.clone(),
        stopped: stopped.clone(),
        event_log,
    };
    if let Some((listener, _)) = metrics_listener {
        crate::metrics::serve(listener, handle.clone(), b.limits.http);
    }
    tokio::spawn(
        async move {
            let result = task.run(cmd_rx, link_rx, chain_ev_rx, durable_rx).await;
            if let Err(e) = &result {
                tracing::error!("node stopped: {e}");
            }
            accept_task.abort();
            chain_task.abort();
            // The persister ends once every write queued before this point is durable.
            let _ = tokio::task::spawn_blocking(move || persister.join()).await;
            stopped.store(true, Ordering::SeqCst);
            done.notify_waiters();
            info!("stopped");
        }
        .instrument(span),
    );
    Ok(handle)
}
