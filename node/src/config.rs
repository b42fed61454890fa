//! Node configuration: a TOML file (`por init` writes a commented one), and every key
//! also a `--flag` and a `POR_*` environment variable. Flags win over the
//! environment, which wins over the file, which wins over the defaults.

use std::path::{Path, PathBuf};
use std::time::Duration;

use por_chain::{AnyChain, LocalClient, NearClient, NearConfig, RemoteClient};
use por_protocol::{Amount, EngineConfig, Keypair, SeverPolicy};
use serde::Deserialize;

use crate::limits::Limits;
use crate::NodeError;

/// Which transport carries frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, Deserialize, Default)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// TLS 1.3 over TCP.
    #[default]
    Tcp,
    /// QUIC.
    Quic,
}

/// Which chain a node uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum ChainChoice {
    /// The embedded chain, in this process (`chain_path`).
    #[default]
    Embedded,
    /// An embedded chain served by `por chain serve` (`chain_addr`).
    Served,
    /// NEAR over RPC (`near_rpc`, `near_contract`, `near_key_file`).
    Near,
}

/// Every setting of `por node run`. In the file, keys are written as here; as flags,
/// with dashes (`--data-dir`); in the environment, upper case with `POR_`
/// (`POR_DATA_DIR`).
#[derive(Clone, Debug, Default, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// NEAR account the node signs chain calls as.
    #[cfg_attr(feature = "cli", arg(long, env = "POR_ACCOUNT"))]
    pub account: Option<String>,
    /// File holding the node's ed25519 key (64 hex digits), written by `por init`.
    #[cfg_attr(feature = "cli", arg(long, env = "POR_KEY_FILE"))]
    pub key_file: Option<PathBuf>,
    /// Directory for the node's database.
    #[cfg_attr(feature = "cli", arg(long, env = "POR_DATA_DIR"))]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on for peers.
    #[cfg_attr(feature = "cli", arg(long, env = "POR_LISTEN"))]
    pub listen: Option<String>,
    /// Address to publish on chain (default: the listen address).
    #[cfg_attr(feature = "cli", arg(long, env = "POR_ADVERTISE"))]
    pub advertise: Option<String>,
    /// Transport: tcp or quic.
    #[cfg_attr(feature = "cli", arg(long, env = "POR_TRANSPORT", value_enum))]
    pub transport: Option<TransportKind>,
    /// Loopback address of the control endpoint `por status`/`request`/`quote` use.
    #[cfg_attr(feature = "cli", arg(long, env = "POR_CONTROL"))]
    pub control: Option<String>,
    /// Address to serve Prometheus metrics on (`/metrics`); none if unset.
    #[cfg_attr(feature = "cli", arg(long, env = "POR_METRICS_LISTEN"))]
    pub metrics_listen: Option<String>,
    /// Stake (yoctoNEAR) to register with if the node is not registered.
    #[cfg_attr(feature = "cli", arg(long, env = "POR_STAKE"))]
    pub stake: Option<String>,
    /// When to sever an overdue downstream: immediate, never, wait_syncs:N, wait_ms:N.
    #[cfg_attr(feature = "cli", arg(long, env = "POR_SEVER_POLICY"))]
    pub sever_policy: Option<String>,
    /// Window (ms) of the §5.4 heuristic that severs an edge whose losses exceed its
    /// earnings; 0 turns it off.
    #[cfg_attr(feature = "cli", arg(long, env = "POR_HEURISTIC_WINDOW_MS"))]
    pub heuristic_window_ms: Option<u64>,
    /// Slack (ms) granted to a downstream's late-fee payments.
    #[cfg_attr(feature = "cli", arg(long, env = "POR_FEE_TOLERANCE_MS"))]
    pub fee_tolerance_ms: Option<u64>,
    /// Most requests in flight at once.
    #[cfg_attr(feature = "cli", arg(long, env = "POR_MAX_IN_FLIGHT"))]
    pub max_in_flight: Option<usize>,
    /// Most requests one peer may have in flight through this node (at most 25,000).
    #[cfg_attr(feature = "cli", arg(long, env = "POR_MAX_IN_FLIGHT_PER_PEER"))]
    pub max_in_flight_per_peer: Option<usize>,
    /// Most bytes one peer's requests in flight through this node may buy (bodies
    /// plus response limits).
    #[cfg_attr(feature = "cli", arg(long, env = "POR_MAX_IN_FLIGHT_BYTES_PER_PEER"))]
    pub max_in_flight_bytes_per_peer: Option<u64>,
    /// Most bytes of frames queued for a peer before it counts as too slow and is
    /// dropped.
    #[cfg_attr(feature = "cli", arg(long, env = "POR_MAX_QUEUED_BYTES_PER_PEER"))]
    pub max_queued_bytes_per_peer: Option<usize>,
    /// Lanes per peer that large responses spread over (besides the control lane).
    #[cfg_attr(feature = "cli", arg(long, env = "POR_BULK_LANES"))]
    pub bulk_lanes: Option<u32>,
    /// QUIC: bytes a peer may send on one lane ahead of our reading it.
    #[cfg_attr(feature = "cli", arg(long, env = "POR_QUIC_STREAM_WINDOW"))]
    pub quic_stream_window: Option<usize>,
    /// QUIC: bytes a peer may send on all lanes together ahead of our reading them.
    #[cfg_attr(feature = "cli", arg(long, env = "POR_QUIC_CONNECTION_WINDOW"))]
    pub quic_connection_window: Option<usize>,
    /// TCP: bytes of frames a peer may leave half-sent across its lanes.
    #[cfg_attr(feature = "cli", arg(long, env = "POR_TCP_MAX_PARTIAL_BYTES"))]
    pub tcp_max_partial_bytes: Option<usize>,
    /// Most connections open at once on each HTTP surface (control, metrics).
    #[cfg_attr(feature = "cli", arg(long, env = "POR_HTTP_MAX_CONNECTIONS"))]
    pub http_max_connections: Option<usize>,
    /// Time (ms) an HTTP client has to send a request's head.
    #[cfg_attr(feature = "cli", arg(long, env = "POR_HTTP_HEADER_TIMEOUT_MS"))]
    pub http_header_timeout_ms: Option<u64>,
    /// Standing delay (ms) of the node's queues (engine inputs, commits, lanes to
    /// peers) past which it refuses new requests until they drain; 0 never sheds.
    #[cfg_attr(feature = "cli", arg(long, env = "POR_ADMISSION_DELAY_MS"))]
    pub admission_delay_ms: Option<u64>,
    /// Which chain: embedded, served or near.
    #[cfg_attr(feature = "cli", arg(long, env = "POR_CHAIN", value_enum))]
    pub chain: Option<ChainChoice>,
    /// Embedded chain database file.
    #[cfg_attr(feature = "cli", arg(long, env = "POR_CHAIN_PATH"))]
    pub chain_path: Option<PathBuf>,
    /// Address of a served embedded chain.
    #[cfg_attr(feature = "cli", arg(long, env = "POR_CHAIN_ADDR"))]
    pub chain_addr: Option<String>,
    /// NEAR RPC endpoint or network name (sandbox, testnet, mainnet).
    #[cfg_attr(feature = "cli", arg(long, env = "POR_NEAR_RPC"))]
    pub near_rpc: Option<String>,
    /// The por contract's NEAR account.
    #[cfg_attr(feature = "cli", arg(long, env = "POR_NEAR_CONTRACT"))]
    pub near_contract: Option<String>,
    /// NEAR account key file (near-cli JSON).
    #[cfg_attr(feature = "cli", arg(long, env = "POR_NEAR_KEY_FILE"))]
    pub near_key_file: Option<PathBuf>,
    /// How often to poll the chain for events (ms).
    #[cfg_attr(feature = "cli", arg(long, env = "POR_CHAIN_POLL_MS"))]
    pub chain_poll_ms: Option<u64>,
    /// How long a graceful shutdown waits for requests in flight (ms).
    #[cfg_attr(feature = "cli", arg(long, env = "POR_SHUTDOWN_GRACE_MS"))]
    pub shutdown_grace_ms: Option<u64>,
    /// When to pass a proof of severance upstream: immediate (§5.2) or next_sync.
    #[cfg_attr(feature = "cli", arg(long, env = "POR_FORWARD_PROOFS"))]
    pub forward_proofs: Option<String>,
    /// Keep the last N engine events for the control endpoint's `events` (what `por
    /// devnet run` reads for its timeline); 0, the default, keeps none.
    #[cfg_attr(feature = "cli", arg(long, env = "POR_EVENT_LOG"))]
    pub event_log: Option<usize>,
    /// Misbehaviour, for testnets: never pay the late fees owed upstream.
    #[cfg_attr(feature = "cli", arg(long, env = "POR_WITHHOLD_LATE_FEES"))]
    pub withhold_late_fees: Option<bool>,
    /// Misbehaviour, for testnets: answer requests this many ms late.
    #[cfg_attr(feature = "cli", arg(long, env = "POR_ANSWER_DELAY_MS"))]
    pub answer_delay_ms: Option<u64>,
    /// Misbehaviour, for testnets: false never answers requests (they stay acked and
    /// unanswered, so the route's late fees run).
    #[cfg_attr(feature = "cli", arg(long, env = "POR_ANSWER"))]
    pub answer: Option<bool>,
    /// Misbehaviour, for testnets: corrupt the data of every file response (the last
    /// byte flipped), so that clients hold signed evidence of a deviation.
    #[cfg_attr(feature = "cli", arg(long, env = "POR_CORRUPT_FILES"))]
    pub corrupt_files: Option<bool>,
}

macro_rules! overlay {
    ($base:ident, $top:ident, $($f:ident),*) => { $( if $top.$f.is_some() { $base.$f = $top.$f.clone(); } )* };
}

impl Settings {
    /// Reads a config file; unknown keys and bad values name the file and key.
    pub fn from_file(path: &Path) -> Result<Settings, NodeError> {
        let text = std::fs::read_to_string(path).map_err(|e| NodeError::File {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        let mut s: Settings = toml::from_str(&text).map_err(|e| NodeError::Config {
            source_name: path.display().to_string(),
            key: e
                .span()
                .and_then(|r| text.get(r))
                .unwrap_or("?")
                .lines()
                .next()
                .unwrap_or("?")
                .to_string(),
            detail: e.message().to_string(),
        })?;
        // Relative paths in a file are relative to the file.
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut s.key_file,
            &mut s.data_dir,
            &mut s.chain_path,
            &mut s.near_key_file,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(s)
    }

    /// `self` with every setting `top` has replacing ours.
    pub fn overlay(mut self, top: &Settings) -> Settings {
        overlay!(
            self,
            top,
            account,
            key_file,
            data_dir,
            listen,
            advertise,
            transport,
            control,
            metrics_listen,
            stake,
            sever_policy,
            heuristic_window_ms,
            fee_tolerance_ms,
            max_in_flight,
            max_in_flight_per_peer,
            max_in_flight_bytes_per_peer,
            max_queued_bytes_per_peer,
            bulk_lanes,
            quic_stream_window,
            quic_connection_window,
            tcp_max_partial_bytes,
            http_max_connections,
            http_header_timeout_ms,
            admission_delay_ms,
            chain,
            chain_path,
            chain_addr,
            near_rpc,
            near_contract,
            near_key_file,
            chain_poll_ms,
            shutdown_grace_ms,
            forward_proofs,
            event_log,
            withhold_late_fees,
            answer_delay_ms,
            answer,
            corrupt_files
        );
        self
    }

    fn need<T: Clone>(&self, v: &Option<T>, key: &str) -> Result<T, NodeError> {
        v.clone().ok_or_else(|| NodeError::Config {
            source_name: "settings".into(),
            key: key.into(),
            detail: format!(
                "missing: set `{key}` in the config file, --{} or POR_{}",
                key.replace('_', "-"),
                key.to_uppercase()
            ),
        })
    }

    /// The validated configuration.
    pub fn resolve(&self) -> Result<NodeConfig, NodeError> {
        let bad = |key: &str, detail: String| NodeError::Config {
            source_name: "settings".into(),
            key: key.into(),
            detail,
        };
        let account = self.need(&self.account, "account")?;
        let key_file = self.need(&self.key_file, "key_file")?;
        let stake = match &self.stake {
            Some(s) => Some(Amount(s.parse().map_err(|_| {
                bad("stake", format!("{s:?} is not an amount in yoctoNEAR"))
            })?)),
            None => None,
        };
        let mut engine = EngineConfig::default();
        if let Some(p) = &self.sever_policy {
            engine.sever_policy = parse_policy(p).ok_or_else(|| {
                bad(
                    "sever_policy",
                    format!("{p:?}: expected immediate, never, wait_syncs:N or wait_ms:N"),
                )
            })?;
        }
        if let Some(w) = self.heuristic_window_ms {
            engine.heuristic = (w > 0).then_some(por_protocol::Heuristic { window_ms: w });
        }
        if let Some(t) = self.fee_tolerance_ms {
            engine.fee_tolerance_ms = t;
        }
        let positive = |key: &str, v: u64| {
            if v == 0 {
                Err(bad(key, "must be at least 1".into()))
            } else {
                Ok(v)
            }
        };
        if let Some(m) = self.max_in_flight {
            engine.max_in_flight = m;
        }
        if let Some(m) = self.max_in_flight_per_peer {
            positive("max_in_flight_per_peer", m as u64)?;
            if m > por_protocol::MAX_IN_FLIGHT_PER_PEER {
                return Err(bad(
                    "max_in_flight_per_peer",
                    format!(
                        "at most {}: one sync's late-fee payment names each late request of a peer and must fit one frame",
                        por_protocol::MAX_IN_FLIGHT_PER_PEER
                    ),
                ));
            }
            engine.max_in_flight_per_peer = m;
        }
        if let Some(m) = self.max_in_flight_bytes_per_peer {
            engine.max_in_flight_bytes_per_peer = positive("max_in_flight_bytes_per_peer", m)?;
        }
        let mut limits = Limits::default();
        if let Some(m) = self.max_queued_bytes_per_peer {
            limits.queued_bytes_per_peer = m;
        }
        if let Some(n) = self.bulk_lanes {
            // Out of range is refused by `limits.check` below.
            limits.bulk_lanes = n;
        }
        let mut transport_config = por_transport::TransportConfig::default();
        let frame = transport_config.max_frame_len;
        let at_least_a_frame = |key: &str, v: usize| {
            if v < frame {
                return Err(NodeError::Config {
                    source_name: "settings".into(),
                    key: key.into(),
                    detail: format!("{v} bytes is less than one frame ({frame} bytes)"),
                });
            }
            Ok(v)
        };
        if let Some(w) = self.quic_stream_window {
            transport_config.stream_window = at_least_a_frame("quic_stream_window", w)?;
        }
        if let Some(w) = self.quic_connection_window {
            transport_config.connection_window = at_least_a_frame("quic_connection_window", w)?;
        }
        if let Some(w) = self.tcp_max_partial_bytes {
            transport_config.max_partial_bytes = at_least_a_frame("tcp_max_partial_bytes", w)?;
        }
        if let Some(m) = self.http_max_connections {
            // Zero is refused by `limits.check` below, with the engine's bounds.
            limits.http.max_connections = m;
        }
        if let Some(t) = self.http_header_timeout_ms {
            limits.http.header_timeout =
                Duration::from_millis(positive("http_header_timeout_ms", t)?);
        }
        if let Some(d) = self.admission_delay_ms {
            limits.admission_delay_ms = d;
        }
        limits.check(&engine)?;
        if let Some(f) = &self.forward_proofs {
            engine.proof_forwarding = match f.as_str() {
                "immediate" => por_protocol::ProofForwarding::Immediate,
                "next_sync" => por_protocol::ProofForwarding::NextSync,
                _ => {
                    return Err(bad(
                        "forward_proofs",
                        format!("{f:?}: expected immediate or next_sync"),
                    ))
                }
            };
        }
        engine.misbehaviour.withhold_late_fees = self.withhold_late_fees.unwrap_or(false);
        let chain = match self.chain.unwrap_or_default() {
            ChainChoice::Embedded => ChainTarget::Embedded(
                self.chain_path
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("chain.redb")),
            ),
            ChainChoice::Served => {
                let addr = self.need(&self.chain_addr, "chain_addr")?;
                ChainTarget::Served(
                    addr.parse()
                        .map_err(|e| bad("chain_addr", format!("{addr:?}: {e}")))?,
                )
            }
            ChainChoice::Near => ChainTarget::Near {
                config: NearConfig {
                    rpc_url: NearConfig::endpoint(&self.need(&self.near_rpc, "near_rpc")?),
                    contract: self.need(&self.near_contract, "near_contract")?,
                },
                key_file: self.need(&self.near_key_file, "near_key_file")?,
            },
        };
        Ok(NodeConfig {
            account,
            key_file,
            data_dir: self
                .data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("data")),
            listen: self
                .listen
                .clone()
                .unwrap_or_else(|| "127.0.0.1:7000".into()),
            advertise: self.advertise.clone(),
            transport: self.transport.unwrap_or_default(),
            control: self
                .control
                .clone()
                .unwrap_or_else(|| "127.0.0.1:7100".into()),
            metrics_listen: self.metrics_listen.clone(),
            stake,
            engine,
            chain,
            chain_poll: Duration::from_millis(self.chain_poll_ms.unwrap_or(250)),
            shutdown_grace: Duration::from_millis(self.shutdown_grace_ms.unwrap_or(10_000)),
            event_log: self.event_log.unwrap_or(0),
            limits,
            transport_config,
            misbehaviour: Misbehaviour {
                answer: self.answer.unwrap_or(true),
                answer_delay: Duration::from_millis(self.answer_delay_ms.unwrap_or(0)),
                corrupt_files: self.corrupt_files.unwrap_or(false),
            },
        })
    }
}

fn parse_policy(text: &str) -> Option<SeverPolicy> {
    match text.split_once(':') {
        None if text == "immediate" => Some(SeverPolicy::Immediate),
        None if text == "never" => Some(SeverPolicy::Never),
        Some(("wait_syncs", n)) => n.parse().ok().map(SeverPolicy::WaitSyncs),
        Some(("wait_ms", n)) => n.parse().ok().map(SeverPolicy::WaitMs),
        _ => None,
    }
}

/// Where the chain is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChainTarget {
    /// The embedded chain in this process, stored here.
    Embedded(PathBuf),
    /// A served embedded chain.
    Served(std::net::SocketAddr),
    /// NEAR.
    Near {
        /// Endpoint and contract.
        config: NearConfig,
        /// NEAR account key.
        key_file: PathBuf,
    },
}

/// A validated node configuration.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// NEAR account.
    pub account: String,
    /// Node key file.
    pub key_file: PathBuf,
    /// Database directory.
    pub data_dir: PathBuf,
    /// Listen address.
    pub listen: String,
    /// Published address.
    pub advertise: Option<String>,
    /// Transport.
    pub transport: TransportKind,
    /// Control endpoint.
    pub control: String,
    /// Metrics endpoint.
    pub metrics_listen: Option<String>,
    /// Stake to register with.
    pub stake: Option<Amount>,
    /// Engine policies.
    pub engine: EngineConfig,
    /// The chain.
    pub chain: ChainTarget,
    /// Chain poll interval.
    pub chain_poll: Duration,
    /// Shutdown grace.
    pub shutdown_grace: Duration,
    /// Engine events kept for the control endpoint (0: none).
    pub event_log: usize,
    /// The node's bounds on what peers and HTTP clients can make it hold.
    pub limits: Limits,
    /// Timeouts, frame bounds and lane windows of the transport.
    pub transport_config: por_transport::TransportConfig,
    /// How the node's application misbehaves (testnets only; the engine's own
    /// misbehaviour is in `engine.misbehaviour`).
    pub misbehaviour: Misbehaviour,
}

/// Misbehaviour of a node's application, set by configuration for testnets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Misbehaviour {
    /// Answers requests at all.
    pub answer: bool,
    /// Answers this late.
    pub answer_delay: Duration,
    /// Corrupts the data of file responses.
    pub corrupt_files: bool,
}

impl Misbehaviour {
    /// Whether this is an honest node.
    pub fn is_honest(&self) -> bool {
        self.answer && self.answer_delay.is_zero() && !self.corrupt_files
    }
}

impl NodeConfig {
    /// The chain client this configuration names, signing as `account`.
    pub fn chain_client(&self) -> Result<AnyChain, NodeError> {
        Ok(match &self.chain {
            ChainTarget::Embedded(path) => {
                let chain = open_embedded(path)?;
                AnyChain::Local(LocalClient::new(chain, &self.account))
            }
            // A served chain takes calls only signed by the account's key: the node's.
            ChainTarget::Served(addr) => AnyChain::Remote(RemoteClient::with_key(
                *addr,
                &self.account,
                read_key(&self.key_file)?,
            )),
            ChainTarget::Near { config, key_file } => {
                AnyChain::Near(NearClient::new(config, key_file)?)
            }
        })
    }
}

/// Opens (creating and initialising if new) the embedded chain at `path`, running the
/// contract wasm this binary carries ([`por_chain::wasm::CONTRACT`]).
pub fn open_embedded(
    path: &Path,
) -> Result<std::sync::Arc<std::sync::Mutex<por_chain::local::LocalChain>>, NodeError> {
    let wasm = por_chain::wasm::CONTRACT;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| NodeError::File {
            path: dir.to_path_buf(),
            detail: e.to_string(),
        })?;
    }
    let mut chain =
        por_chain::local::LocalChain::open(path, wasm, "por.local", por_chain::local::Clock::Wall)?;
    chain.ensure_initialised(por_chain::local::dev_config())?;
    Ok(std::sync::Arc::new(std::sync::Mutex::new(chain)))
}

/// Reads a node key file (64 hex digits: the ed25519 seed).
pub fn read_key(path: &Path) -> Result<Keypair, NodeError> {
    let text = std::fs::read_to_string(path).map_err(|e| NodeError::File {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    let seed = crate::parse_key(text.trim()).ok_or_else(|| NodeError::File {
        path: path.to_path_buf(),
        detail: "expected 64 hex digits (an ed25519 seed)".into(),
    })?;
    Ok(Keypair::from_seed(seed.0))
}

/// Writes a fresh node key (mode 0600) to `path`; refuses to overwrite.
pub fn write_new_key(path: &Path, seed: [u8; 32]) -> Result<Keypair, NodeError> {
    use std::io::Write as _;
    let err = |e: std::io::Error| NodeError::File {
        path: path.to_path_buf(),
        detail: e.to_string(),
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path).map_err(err)?;
    writeln!(f, "{}", crate::key_hex(&por_protocol::NodeId(seed))).map_err(err)?;
    Ok(Keypair::from_seed(seed))
}

/// The commented config file `por init` writes.
pub fn template(account: &str, listen: &str, control: &str) -> String {
    format!(
        r#"# por node configuration. Every key is also a flag (--data-dir) and an environment
# variable (POR_DATA_DIR); flags win over the environment, which wins over this file.

# NEAR account the node signs chain calls as.
account = "{account}"
# The node's ed25519 key (written by `por init`; keep it private).
key_file = "node.key"
# Channel states, acknowledgements and requests in flight (redb).
data_dir = "data"

# Peers connect here; "advertise" is what goes on chain if it differs.
listen = "{listen}"
# advertise = "203.0.113.7:7000"
# tcp (TLS 1.3) or quic.
transport = "tcp"
# Loopback endpoint for `por status`, `por request`, `por quote`.
control = "{control}"
# Prometheus metrics (/metrics).
# metrics_listen = "127.0.0.1:9100"

# Stake (yoctoNEAR) to register with on first start.
stake = "1000000000000000000000000"
# Reaction to an overdue downstream: immediate, never, wait_syncs:N, wait_ms:N.
sever_policy = "wait_syncs:3"
# Sever an edge whose unpaid late fees exceed what it earned over this window (ms);
# 0 turns the heuristic off.
# heuristic_window_ms = 3600000
# fee_tolerance_ms = 50
# Bounds on what peers and HTTP clients can make the node hold (docs/limits.md).
# max_in_flight = 100000
# max_in_flight_per_peer = 20000
# max_in_flight_bytes_per_peer = 268435456
# max_queued_bytes_per_peer = 67108864
# Lanes (transport streams) large responses spread over, besides the control lane,
# and the windows a peer may fill on them (docs/protocol.md, "Lanes").
# bulk_lanes = 4
# quic_stream_window = 2228240
# quic_connection_window = 8388608
# tcp_max_partial_bytes = 8388608
# http_max_connections = 256
# http_header_timeout_ms = 5000
# Refuse new requests while work here waits longer than this (ms), standing; 0: never.
# admission_delay_ms = 200

# The chain: embedded (this process), served (`por chain serve`), or near.
chain = "embedded"
chain_path = "chain.redb"
# chain = "served"
# chain_addr = "127.0.0.1:3031"
# chain = "near"
# near_rpc = "testnet"
# near_contract = "por.testnet"
# near_key_file = "~/.near-credentials/testnet/me.testnet.json"
# chain_poll_ms = 250
# shutdown_grace_ms = 10000
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_parses_and_flags_win() {
        let dir = std::env::temp_dir().join(format!("por-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("por.toml");
        std::fs::write(
            &file,
            template("alice.local", "127.0.0.1:7000", "127.0.0.1:7100"),
        )
        .unwrap();
        let from_file = Settings::from_file(&file).unwrap();
        assert_eq!(from_file.key_file, Some(dir.join("node.key")));
        let flags = Settings {
            listen: Some("127.0.0.1:7999".into()),
            sever_policy: Some("wait_ms:250".into()),
            ..Settings::default()
        };
        let c = from_file.overlay(&flags).resolve().unwrap();
        assert_eq!(c.listen, "127.0.0.1:7999");
        assert_eq!(c.engine.sever_policy, SeverPolicy::WaitMs(250));
        assert_eq!(c.account, "alice.local");
        assert_eq!(c.chain, ChainTarget::Embedded(dir.join("chain.redb")));

        // Errors name the file and key.
        std::fs::write(&file, "acount = \"x\"\n").unwrap();
        let err = Settings::from_file(&file).unwrap_err().to_string();
        assert!(err.contains("por.toml") && err.contains("acount"), "{err}");
        std::fs::write(&file, "max_in_flight = \"many\"\n").unwrap();
        let err = Settings::from_file(&file).unwrap_err().to_string();
        assert!(err.contains("por.toml"), "{err}");
        let err = Settings {
            sever_policy: Some("sometimes".into()),
            ..from_file_ok()
        }
        .resolve()
        .unwrap_err()
        .to_string();
        assert!(err.contains("sever_policy"), "{err}");
        for (m, ok) in [(25_000, true), (25_001, false), (0, false)] {
            let r = Settings {
                max_in_flight_per_peer: Some(m),
                ..from_file_ok()
            }
            .resolve();
            assert_eq!(r.is_ok(), ok, "max_in_flight_per_peer = {m}");
            if let Err(e) = r {
                assert!(e.to_string().contains("max_in_flight_per_peer"), "{e}");
            }
        }
        let err = Settings::default().resolve().unwrap_err().to_string();
        assert!(
            err.contains("account") && err.contains("POR_ACCOUNT"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn from_file_ok() -> Settings {
        Settings {
            account: Some("a.local".into()),
            key_file: Some("k".into()),
            ..Settings::default()
        }
    }

    #[test]
    fn keys_round_trip_and_are_not_overwritten() {
        let dir = std::env::temp_dir().join(format!("por-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node.key");
        let _ = std::fs::remove_file(&path);
        let k = write_new_key(&path, [5; 32]).unwrap();
        assert_eq!(read_key(&path).unwrap().id(), k.id());
        assert!(write_new_key(&path, [6; 32]).is_err());
        std::fs::write(&path, "zz").unwrap();
        let err = read_key(&path).unwrap_err().to_string();
        assert!(err.contains("node.key"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
