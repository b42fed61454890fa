//! A node under attack, shared by the bad-input and flood tests: an embedded chain,
//! Bob (the node under test), Alice (an honest neighbour, served throughout) and
//! Mallory (a neighbour driven by hand: her own engine over a real TCP connection).
#![allow(clippy::unwrap_used, dead_code, unreachable_pub)]

pub mod chain;

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use por_chain::local::NEAR;
use por_chain::{AnyChain, Chain, LocalClient};
use por_node::{handler_fn, NodeBuilder, NodeHandle, Outcome, RequestOptions};
use por_protocol::engine::Event;
use por_protocol::messages;
use por_protocol::testing::TestNode;
use por_protocol::types::{ChannelId, EdgeTerms, Route};
use por_protocol::{Amount, EngineConfig, Keypair, NodeId, Time};
use por_transport::tcp::{TcpConnection, TcpTransport};
use por_transport::{Connection, Transport, TransportConfig};

pub fn terms() -> EdgeTerms {
    EdgeTerms {
        latency_ms: 50,
        base_cost: Amount(100),
        byte_cost: Amount(1),
        sync_interval_ms: 500,
        sync_phase_ms: 0,
        max_late_fee_rate: Amount(10),
        bandwidth: EdgeTerms::DEFAULT_BANDWIDTH,
    }
}

pub fn now() -> Time {
    por_node::now()
}

/// The three of them, Mallory's engine knowing the edges.
pub struct Trio {
    pub dir: PathBuf,
    pub alice: NodeHandle,
    pub bob: NodeHandle,
    pub mkey: Keypair,
    /// Mallory's chain client.
    pub mallory: LocalClient,
    /// Mallory's engine.
    pub mallory_node: TestNode,
    /// Mallory's edge to Bob.
    pub to_bob: ChannelId,
    /// Mallory's transport (frames up to 4 MiB, more than Bob accepts).
    pub transport: TcpTransport,
}

/// Starts the three; `bob` configures Bob beyond the defaults (a metrics listener, an
/// echo handler).
pub async fn trio(name: &str, bob: impl FnOnce(NodeBuilder) -> NodeBuilder) -> Trio {
    trio_with(name, bob, EngineConfig::default()).await
}

/// [`trio`], Alice's and Mallory's engines configured by `others`.
pub async fn trio_with(
    name: &str,
    bob: impl FnOnce(NodeBuilder) -> NodeBuilder,
    others: EngineConfig,
) -> Trio {
    let mallory_config = others.clone();
    // POR_TEST_LOG=por_node=info shows the nodes' logs.
    if let Ok(filter) = std::env::var("POR_TEST_LOG") {
        let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
    }
    let dir = std::env::temp_dir().join(format!("por-{name}-{}", std::process::id()));
    let chain = chain::local_chain(
        &dir,
        &["alice.local", "bob.local", "mallory.local"],
        100 * NEAR,
        |_| {},
    );
    let client = |a: &str| AnyChain::Local(LocalClient::new(chain.clone(), a));
    let builder = |name: &str, seed: u8| {
        NodeBuilder::new(
            Keypair::from_seed([seed; 32]),
            client(&format!("{name}.local")),
            dir.join(name),
        )
        .register(Amount(10 * NEAR))
        .chain_poll(Duration::from_millis(50))
        .watch_after(Duration::from_millis(300))
        .metrics("127.0.0.1:0")
        .handler(handler_fn(|req| async move { req.body }))
    };
    let bob = bob(builder("bob", 2)).start().await.unwrap();
    let alice = builder("alice", 1)
        .engine_config(others)
        .start()
        .await
        .unwrap();
    let mkey = Keypair::from_seed([3; 32]);
    let mallory = LocalClient::new(chain.clone(), "mallory.local");
    mallory
        .register(mkey.id(), vec![], Amount(10 * NEAR))
        .await
        .unwrap();
    for c in [client("alice.local"), client("mallory.local")] {
        let id = c
            .propose_channel("bob.local", &terms(), Amount(NEAR))
            .await
            .unwrap();
        client("bob.local")
            .confirm_channel(id, Amount(NEAR))
            .await
            .unwrap();
    }
    let snap = mallory.snapshot().await.unwrap();
    let mut mallory_node = TestNode::for_deployment(
        mallory_config,
        mkey.clone(),
        mallory.deployment().await.unwrap(),
        now(),
    );
    mallory_node.open(&snap.edges, now());
    let to_bob = snap
        .edges
        .iter()
        .find(|e| e.a == mkey.id() || e.b == mkey.id())
        .unwrap()
        .id;
    // Wait for Alice and Bob to connect.
    for _ in 0..100 {
        if alice
            .status()
            .await
            .unwrap()
            .channels
            .iter()
            .any(|c| c.connected)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let big = TransportConfig {
        max_frame_len: 4 << 20,
        ..TransportConfig::default()
    };
    let transport = TcpTransport::new(&mkey, big).unwrap();
    Trio {
        dir,
        alice,
        bob,
        mkey,
        mallory,
        mallory_node,
        to_bob,
        transport,
    }
}

impl Trio {
    /// Mallory's one-hop route to Bob.
    pub fn route(&self) -> Route {
        Route {
            nodes: vec![self.mkey.id(), self.bob.id()],
            channels: vec![self.to_bob],
        }
    }

    /// A connection from Mallory that Bob keeps.
    pub async fn dial(&self) -> TcpConnection {
        let bob_has_mallory = || async {
            self.bob
                .status()
                .await
                .unwrap()
                .channels
                .iter()
                .any(|c| c.peer == self.mkey.id() && c.connected)
        };
        for _ in 0..100 {
            // Bob keeps Mallory's connection once he has seen the channel on chain (a
            // handshake can complete before he has, and he then closes it): wait until
            // he reports her connected.
            if let Ok(c) = self.transport.dial(self.bob.address(), self.bob.id()).await {
                for _ in 0..20 {
                    if bob_has_mallory().await {
                        return c;
                    }
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("Bob never kept a connection from Mallory")
    }

    /// Sends everything Mallory's engine has to send over `conn`.
    pub async fn flush(&mut self, conn: &impl Connection) {
        for t in self.mallory_node.flush() {
            let _ = conn
                .send(0, Bytes::from(messages::encode_frame(&t.message).unwrap()))
                .await;
        }
    }

    pub async fn stop(self) {
        self.alice.shutdown().await.unwrap();
        self.bob.shutdown().await.unwrap();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Pumps Mallory's engine over `conn` until `done` sees an event it wants (false if
/// none within 5 s).
pub async fn pump(
    node: &mut TestNode,
    conn: &impl Connection,
    done: impl FnMut(&Event) -> bool,
) -> bool {
    pump_for(node, conn, Duration::from_secs(5), done).await
}

/// [`pump`], giving up after `limit`.
pub async fn pump_for(
    node: &mut TestNode,
    conn: &impl Connection,
    limit: Duration,
    mut done: impl FnMut(&Event) -> bool,
) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        for t in node.flush() {
            conn.send(0, Bytes::from(messages::encode_frame(&t.message).unwrap()))
                .await
                .unwrap();
        }
        while let Some(e) = node.engine.poll_event() {
            if done(&e) {
                return true;
            }
        }
        match tokio::time::timeout_at(deadline, conn.recv()).await {
            Ok(Ok((_, frame))) => {
                let _ = node
                    .engine
                    .handle_frame(conn.peer(), &frame, por_node::now());
            }
            _ => return false,
        }
    }
}

pub async fn alice_is_served(alice: &NodeHandle, bob: &NodeHandle) {
    let out = alice
        .request(
            bob.id(),
            b"still there?".to_vec(),
            RequestOptions::default(),
        )
        .await
        .unwrap();
    let Outcome::Response { body, .. } = out else {
        panic!("{out:?}")
    };
    assert_eq!(&body[..], b"still there?");
}

pub async fn received_from(bob: &NodeHandle, peer: NodeId) -> Amount {
    let s = bob.status().await.unwrap();
    s.channels.iter().find(|c| c.peer == peer).unwrap().received
}

/// Waits until the connection is closed by the other side (false if not within 5 s).
pub async fn closed_by_peer(conn: &impl Connection) -> bool {
    closed_within(conn, Duration::from_secs(5)).await
}

/// Waits up to `limit` for the connection to be closed by the other side, reading
/// (and discarding) whatever arrives meanwhile.
pub async fn closed_within(conn: &impl Connection, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, conn.recv()).await {
            Ok(Ok(_)) => continue,
            Ok(Err(_)) => return true,
            Err(_) => return false,
        }
    }
}

pub async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// This process's resident set, in bytes (from /proc/self/status).
pub fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        * 1024
}
