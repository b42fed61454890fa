//! `por demo`: the paper's section 5 network as real nodes on loopback.
//!
//! It starts the embedded chain (running the contract wasm), registers Alex, Alice,
//! Bob, Carol, Dave and Eve, opens the paper's channels on chain, starts one node per
//! name over real TCP or QUIC sockets with each link's latency shaped in user space,
//! then runs the happy case (Alex → Carol, paper §5.1) and, with Eve offline, Alex →
//! Dave (§5.2: Bob severs Bob–Eve and the proof reaches Alex). It returns a timeline
//! and the balances.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use por_chain::local::{dev_config, Clock, LocalChain, NEAR};
use por_chain::{AnyChain, Chain, LocalClient};
use por_protocol::engine::Event;
use por_protocol::types::Route;
use por_protocol::{Amount, Keypair, NodeId, Time};
use por_testnet::scenario::Scenario;
use tokio::sync::broadcast;

use crate::sdk::{Handler, NodeBuilder, NodeEvent, NodeHandle, Outcome, RequestOptions};
use crate::{NodeError, TransportKind};

/// The paper's topology (with its §5.1 request), as the simulator's scenario.
pub const PAPER_TOPOLOGY: &str = include_str!("../../testnet/scenarios/paper-5.1-happy.toml");

/// Links are shaped to this share (percent) of their promised latency by default.
pub const DEFAULT_LINK_PERCENT: u64 = 90;

/// Demo settings.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// TCP or QUIC.
    pub transport: TransportKind,
    /// Where the chain and the nodes keep their files.
    pub dir: PathBuf,
    /// Links are shaped to this share of each edge's promised latency (percent): a
    /// real operator promises a little more than the link's latency.
    pub link_percent: u64,
}

impl DemoOptions {
    /// Defaults: TCP, links at 90 % of their promise, files under the temp dir.
    pub fn new(transport: TransportKind) -> DemoOptions {
        DemoOptions {
            transport,
            dir: std::env::temp_dir().join(format!("por-demo-{}", std::process::id())),
            link_percent: DEFAULT_LINK_PERCENT,
        }
    }
}

/// One line of the timeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// Ms since the scenario's request was sent.
    pub t_ms: i64,
    /// The node.
    pub node: String,
    /// What happened.
    pub what: String,
}

/// What the demo did.
#[derive(Clone, Debug)]
pub struct DemoReport {
    /// Alex → Carol.
    pub happy: Outcome,
    /// Its timeline.
    pub happy_timeline: Vec<Line>,
    /// Alex → Dave with Eve offline.
    pub offline: Outcome,
    /// Its timeline.
    pub offline_timeline: Vec<Line>,
    /// Per node, after both requests.
    pub balances: Vec<Balance>,
}

/// One node's money after the demo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Balance {
    /// The node.
    pub name: String,
    /// Received minus acknowledged payments, over its channels (yocto).
    pub net: i128,
    /// Signed payments its peers have not acknowledged (yocto).
    pub unacked: u128,
    /// Stake on chain, after severing penalties and partition slashing (yocto).
    pub stake: u128,
}

/// The chain a demo network runs on.
#[derive(Clone, Debug)]
pub enum DemoChain {
    /// A fresh embedded chain in the network's directory (the default).
    Embedded,
    /// A NEAR network (a sandbox `neard`, say) where the contract is deployed: each
    /// node gets an account created under the creator's, with a key file of its own.
    Near {
        /// The JSON-RPC endpoint.
        rpc_url: String,
        /// The contract account.
        contract: String,
        /// The near-cli key file of the account that creates the nodes' accounts and
        /// funds them (a sandbox's `validator_key.json`, say).
        creator_key_file: PathBuf,
    },
}

/// A running network of named nodes on one chain.
pub struct Network {
    /// A client of the chain, for views.
    pub viewer: Arc<AnyChain>,
    /// Each node's chain account, by name.
    pub accounts: HashMap<String, String>,
    /// Nodes by name.
    pub nodes: HashMap<String, NodeHandle>,
    /// Names by key.
    pub names: HashMap<NodeId, String>,
    /// The scenario it was built from.
    pub scenario: Scenario,
}

/// The demo's answer: `"<name> says: <body>"`.
#[derive(Clone, Debug)]
pub struct Says(String);

impl Handler for Says {
    async fn handle(&self, req: crate::sdk::IncomingRequest) -> Vec<u8> {
        let mut out = format!("{} says: ", self.0).into_bytes();
        out.extend_from_slice(&req.body);
        out
    }
}

fn account(name: &str) -> String {
    format!("{}.local", name.to_lowercase())
}

fn key(name: &str) -> Keypair {
    let mut seed = [7u8; 32];
    for (slot, b) in seed.iter_mut().zip(name.bytes()) {
        *slot = b;
    }
    Keypair::from_seed(seed)
}

/// Where node `name`'s NEAR account key is kept, in the network's directory.
fn near_key_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{}.near-key.json", name.to_lowercase()))
}

/// Makes each node's chain client.
enum Clients {
    Local(Arc<Mutex<LocalChain>>),
    Near {
        config: por_chain::NearConfig,
        dir: PathBuf,
    },
}

impl Clients {
    /// Sets up the chain and every node's account on it; returns the clients' maker,
    /// a viewer and the accounts by name.
    async fn prepare(
        chain: &DemoChain,
        scenario: &Scenario,
        dir: &Path,
    ) -> Result<(Clients, AnyChain, HashMap<String, String>), NodeError> {
        match chain {
            DemoChain::Embedded => {
                let wasm = por_chain::wasm::CONTRACT;
                let mut local =
                    LocalChain::open(&dir.join("chain.redb"), wasm, "por.local", Clock::Wall)?;
                let mut config = dev_config();
                config["min_deposit"] = "1".into();
                local.ensure_initialised(config)?;
                let mut accounts = HashMap::new();
                for n in &scenario.nodes {
                    local.fund(&account(&n.name), 100 * NEAR)?;
                    accounts.insert(n.name.clone(), account(&n.name));
                }
                let local = Arc::new(Mutex::new(local));
                let viewer = AnyChain::Local(LocalClient::new(local.clone(), "por.local"));
                Ok((Clients::Local(local), viewer, accounts))
            }
            DemoChain::Near {
                rpc_url,
                contract,
                creator_key_file,
            } => {
                let config = por_chain::NearConfig {
                    rpc_url: rpc_url.clone(),
                    contract: contract.clone(),
                };
                let creator = por_chain::NearClient::new(&config, creator_key_file)?;
                let mut accounts = HashMap::new();
                for n in &scenario.nodes {
                    let id = format!("{}.{}", n.name.to_lowercase(), creator.account());
                    creator
                        .create_account_with_key_file(&id, 100 * NEAR, &near_key_file(dir, &n.name))
                        .await?;
                    accounts.insert(n.name.clone(), id);
                }
                let viewer = AnyChain::Near(creator);
                let dir = dir.to_path_buf();
                Ok((Clients::Near { config, dir }, viewer, accounts))
            }
        }
    }

    fn client(&self, name: &str, account: &str) -> Result<AnyChain, NodeError> {
        Ok(match self {
            Clients::Local(chain) => AnyChain::Local(LocalClient::new(chain.clone(), account)),
            Clients::Near { config, dir } => AnyChain::Near(por_chain::NearClient::new(
                config,
                &near_key_file(dir, name),
            )?),
        })
    }
}

impl Network {
    /// Starts `scenario`'s nodes and channels on a fresh embedded chain in `dir`.
    pub async fn start(
        scenario: Scenario,
        dir: &Path,
        transport: TransportKind,
        link_percent: u64,
    ) -> Result<Network, NodeError> {
        Network::start_on(&DemoChain::Embedded, scenario, dir, transport, link_percent).await
    }

    /// Starts `scenario`'s nodes and channels on `chain`, with the nodes' files in
    /// `dir`. Every node answers `"<name> says: <body>"`.
    pub async fn start_on(
        chain: &DemoChain,
        scenario: Scenario,
        dir: &Path,
        transport: TransportKind,
        link_percent: u64,
    ) -> Result<Network, NodeError> {
        let none: HashMap<String, Says> = HashMap::new();
        Network::start_serving(chain, scenario, dir, transport, link_percent, &none).await
    }

    /// As [`Network::start_on`], with the nodes named in `serve` answering with
    /// their handler (the others answer `"<name> says: <body>"`).
    pub async fn start_serving<H: Handler + Clone>(
        chain: &DemoChain,
        scenario: Scenario,
        dir: &Path,
        transport: TransportKind,
        link_percent: u64,
        serve: &HashMap<String, H>,
    ) -> Result<Network, NodeError> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).map_err(|e| NodeError::File {
            path: dir.to_path_buf(),
            detail: e.to_string(),
        })?;
        let (clients, viewer, accounts) = Clients::prepare(chain, &scenario, dir).await?;
        let account = |name: &str| accounts.get(name).cloned().unwrap_or_default();
        let names: HashMap<NodeId, String> = scenario
            .nodes
            .iter()
            .map(|n| (key(&n.name).id(), n.name.clone()))
            .collect();
        // One-way delay of each link, both directions.
        let mut delay: HashMap<(NodeId, NodeId), Duration> = HashMap::new();
        for e in &scenario.edges {
            let d = Duration::from_millis(e.latency_ms * link_percent / 100);
            let (a, b) = (key(&e.a).id(), key(&e.b).id());
            delay.insert((a, b), d);
            delay.insert((b, a), d);
        }
        let delay = Arc::new(delay);
        let mut nodes = HashMap::new();
        for n in &scenario.nodes {
            let k = key(&n.name);
            let me = k.id();
            let mut engine = n.engine_config();
            engine.fee_tolerance_ms = 50;
            let name = n.name.clone();
            let delay = delay.clone();
            let client = clients.client(&n.name, &account(&n.name))?;
            let builder = NodeBuilder::new(k, client, dir.join(&n.name))
                .transport(transport)
                .engine_config(engine)
                .register(Amount(10 * NEAR))
                .chain_poll(Duration::from_millis(100))
                .shutdown_grace(Duration::from_secs(2))
                .shape(move |peer| delay.get(&(me, peer)).copied());
            let builder = match serve.get(&n.name) {
                Some(h) => builder.handler(h.clone()),
                None => builder.handler(Says(name)),
            };
            let node = builder.start().await?;
            nodes.insert(n.name.clone(), node);
        }
        for e in &scenario.edges {
            let a = clients.client(&e.a, &account(&e.a))?;
            let b = clients.client(&e.b, &account(&e.b))?;
            let terms = e.terms();
            let id = a
                .propose_channel(&account(&e.b), &terms, Amount(e.deposit_a.0))
                .await?;
            b.confirm_channel(id, Amount(e.deposit_b.0)).await?;
        }
        let net = Network {
            viewer: Arc::new(viewer),
            accounts,
            nodes,
            names,
            scenario,
        };
        net.wait_connected(Duration::from_secs(30)).await?;
        Ok(net)
    }

    /// Waits until every node holds all its channels, connected.
    pub async fn wait_connected(&self, limit: Duration) -> Result<(), NodeError> {
        let want: HashMap<String, usize> = self
            .scenario
            .nodes
            .iter()
            .map(|n| {
                let k = self
                    .scenario
                    .edges
                    .iter()
                    .filter(|e| e.a == n.name || e.b == n.name)
                    .count();
                (n.name.clone(), k)
            })
            .collect();
        let start = tokio::time::Instant::now();
        loop {
            let mut ready = true;
            for (name, node) in &self.nodes {
                let s = node.status().await?;
                let connected = s.channels.iter().filter(|c| c.connected).count();
                if connected < want.get(name).copied().unwrap_or(0) {
                    ready = false;
                }
            }
            if ready {
                return Ok(());
            }
            if start.elapsed() > limit {
                return Err(NodeError::Config {
                    source_name: "demo".into(),
                    key: "network".into(),
                    detail: format!("nodes not connected after {limit:?}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A node by name.
    pub fn node(&self, name: &str) -> Result<&NodeHandle, NodeError> {
        self.nodes.get(name).ok_or_else(|| NodeError::Config {
            source_name: "demo".into(),
            key: "node".into(),
            detail: format!("no node named {name}"),
        })
    }

    /// The route through the named nodes, over the edges the chain lists.
    pub async fn route(&self, names: &[&str]) -> Result<Route, NodeError> {
        let nodes: Vec<NodeId> = names.iter().map(|n| key(n).id()).collect();
        let snap = self.viewer.snapshot().await?;
        snap.route_through(nodes).map_err(|_| NodeError::Config {
            source_name: "demo".into(),
            key: "route".into(),
            detail: format!("no open edge along {names:?}"),
        })
    }

    /// Sends a request along `route` and collects every node's events until the
    /// outcome and `settle` after it.
    pub async fn run_request(
        &self,
        route: &[&str],
        body: &str,
        late_fee_rate: Amount,
        settle: Duration,
    ) -> Result<(Outcome, Vec<Line>), NodeError> {
        let client = self.node(route[0])?;
        let server = key(route[route.len() - 1]).id();
        let mut subs: Vec<(String, broadcast::Receiver<NodeEvent>)> = self
            .nodes
            .iter()
            .map(|(n, h)| (n.clone(), h.events()))
            .collect();
        // The servers answer `"<name> says: <body>"`: buy exactly that.
        let response_limit = format!("{} says: ", route[route.len() - 1]).len() + body.len();
        let options = RequestOptions {
            late_fee_rate,
            response_limit: response_limit as u64,
            route: Some(self.route(route).await?),
            max_reroutes: 0,
            ..RequestOptions::default()
        };
        let t0 = crate::now();
        let outcome = client
            .request(server, body.as_bytes().to_vec(), options)
            .await?;
        tokio::time::sleep(settle).await;
        let mut lines = Vec::new();
        for (name, sub) in &mut subs {
            while let Ok(ev) = sub.try_recv() {
                if let Some(what) = describe(&ev.event, &self.names) {
                    lines.push(Line {
                        t_ms: ms_since(t0, ev.at),
                        node: name.clone(),
                        what,
                    });
                }
            }
        }
        lines.sort_by(|a, b| a.t_ms.cmp(&b.t_ms).then(a.node.cmp(&b.node)));
        Ok((outcome, lines))
    }

    /// Each node's channel money (from its last status) and stake on chain.
    pub async fn balances(
        &self,
        last_seen: &HashMap<String, crate::Status>,
    ) -> Result<Vec<Balance>, NodeError> {
        let snap = self.viewer.snapshot().await?;
        let mut out = Vec::new();
        for n in &self.scenario.nodes {
            let status = match self.node(&n.name)?.status().await {
                Ok(s) => Some(s),
                Err(_) => last_seen.get(&n.name).cloned(),
            };
            let (mut net, mut unacked) = (0i128, 0u128);
            for c in status.iter().flat_map(|s| &s.channels) {
                let acked = c.paid.0.saturating_sub(c.unacked.0);
                net += i128::try_from(c.received.0).unwrap_or(i128::MAX)
                    - i128::try_from(acked).unwrap_or(i128::MAX);
                unacked = unacked.saturating_add(c.unacked.0);
            }
            let stake = snap.node(&key(&n.name).id()).map_or(0, |c| c.stake.0);
            out.push(Balance {
                name: n.name.clone(),
                net,
                unacked,
                stake,
            });
        }
        Ok(out)
    }

    /// Stops every node gracefully.
    pub async fn shutdown(&self) {
        for node in self.nodes.values() {
            let _ = node.shutdown().await;
        }
    }
}

fn ms_since(t0: Time, t: Time) -> i64 {
    i64::try_from(t.ms()).unwrap_or(i64::MAX) - i64::try_from(t0.ms()).unwrap_or(i64::MAX)
}

fn describe(e: &Event, names: &HashMap<NodeId, String>) -> Option<String> {
    let n = |id: &NodeId| names.get(id).cloned().unwrap_or_else(|| id.to_string());
    Some(match e {
        Event::RequestSent {
            first_hop,
            amount,
            deadline: _,
            ..
        } => format!("sends the request to {}, paying {amount}", n(first_hop)),
        Event::RequestAcked { .. } => "request acknowledged by the first hop".into(),
        Event::RequestForwarded {
            downstream,
            budget_ms,
            kept,
            ..
        } => format!(
            "forwards to {} (budget {budget_ms} ms, keeps {kept})",
            n(downstream)
        ),
        Event::RequestReceived { client, .. } => {
            format!("receives the request from {} and answers", n(client))
        }
        Event::ResponseForwarded { to, .. } => format!("passes the response to {}", n(to)),
        Event::ResponseDelivered {
            latency_ms,
            on_time,
            body,
            ..
        } => format!(
            "gets the signed response {:?} after {latency_ms} ms ({})",
            String::from_utf8_lossy(body),
            if *on_time { "on time" } else { "late" }
        ),
        Event::SeverInitiated { peer, reason, .. } => {
            format!("severs its edge with {} ({reason:?})", n(peer))
        }
        Event::SeverProofForwarded { to, .. } => {
            format!("passes the proof of severance to {}", n(to))
        }
        Event::SeverProofDelivered {
            severer,
            latency_ms,
            ..
        } => format!(
            "holds a proof that {} severed an edge, after {latency_ms} ms",
            n(severer)
        ),
        Event::LateFeePaid { peer, amount, .. } => {
            format!("pays {} a late fee of {amount}", n(peer))
        }
        Event::LateFeeReceived { peer, amount, .. } => {
            format!("receives a late fee of {amount} from {}", n(peer))
        }
        Event::RequestRejected { reason, .. } => format!("request refused: {reason:?}"),
        Event::LossRecorded { peer, amount, .. } => {
            format!("records a loss of {amount} on {}", n(peer))
        }
        _ => return None,
    })
}

/// Runs the whole demo.
pub async fn run(options: &DemoOptions) -> Result<DemoReport, NodeError> {
    let scenario = Scenario::from_toml(PAPER_TOPOLOGY).map_err(|e| NodeError::Config {
        source_name: "paper-5.1-happy.toml".into(),
        key: "scenario".into(),
        detail: e.to_string(),
    })?;
    let net = Network::start(
        scenario,
        &options.dir,
        options.transport,
        options.link_percent,
    )
    .await?;
    let rate = Amount(1_000);
    let (happy, happy_timeline) = net
        .run_request(
            &["Alex", "Alice", "Bob", "Carol"],
            "ping",
            rate,
            Duration::from_millis(300),
        )
        .await?;
    // Eve goes offline (her last status is kept for the balances).
    let mut last_seen = HashMap::new();
    last_seen.insert("Eve".to_string(), net.node("Eve")?.status().await?);
    net.node("Eve")?.shutdown().await?;
    let (offline, offline_timeline) = net
        .run_request(
            &["Alex", "Alice", "Bob", "Eve", "Dave"],
            "ping",
            rate,
            Duration::from_millis(1500),
        )
        .await?;
    let balances = net.balances(&last_seen).await?;
    net.shutdown().await;
    Ok(DemoReport {
        happy,
        happy_timeline,
        offline,
        offline_timeline,
        balances,
    })
}
