//! `por`: the Proof of Response command line.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

/// `println!` for the command's output, quiet on a closed pipe (see [`out`]).
macro_rules! outln {
    ($($arg:tt)*) => { $crate::out::write(format_args!($($arg)*), true) };
}

/// `print!` for the command's output, quiet on a closed pipe (see [`out`]).
macro_rules! out {
    ($($arg:tt)*) => { $crate::out::write(format_args!($($arg)*), false) };
}

mod commands;
mod demo;
mod devnet;
mod files;
mod out;

/// mimalloc: the node allocates and frees a frame, a write and a few small records per
/// request on several threads; glibc's allocator cost about a sixth of the CPU. Built
/// without transparent huge pages (the workspace's `no_thp`), which kept whole 2 MiB
/// pages resident for a few KiB used.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Proof of Response node and tools.
#[derive(Parser, Debug)]
#[command(name = "por", about)]
struct Cli {
    /// Log format on stderr. The filter comes from RUST_LOG (e.g. `info`,
    /// `por_node=debug`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human, env = "POR_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// How logs are written.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    /// For people.
    Human,
    /// One JSON object per line.
    Json,
}

fn init_logs(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write a fresh node key and a commented config file into a directory.
    Init {
        /// Directory to write `node.key` and `por.toml` into.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// NEAR account the node will sign chain calls as.
        #[arg(long)]
        account: String,
        /// Address to listen on for peers.
        #[arg(long, default_value = "127.0.0.1:7000")]
        listen: String,
        /// Control endpoint (loopback).
        #[arg(long, default_value = "127.0.0.1:7100")]
        control: String,
    },
    /// Run a node.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// File sharing on PoR: add, get, ls, rm, quote, gateway.
    Files {
        #[command(subcommand)]
        command: files::FilesCommand,
    },
    /// A many-host network on this machine: up, status, kill, restart, partition,
    /// heal, load, check, down.
    Devnet {
        #[command(subcommand)]
        command: devnet::DevnetCommand,
    },
    /// Send a request through a running node and print its outcome as JSON.
    Request {
        #[command(flatten)]
        control: ControlArgs,
        /// The server: node key (64 hex digits) or NEAR account.
        #[arg(long)]
        server: String,
        /// Late-fee rate (yoctoNEAR per ms late).
        #[arg(long, default_value = "1")]
        late_fee_rate: String,
        /// Only routes whose round trip fits this (ms).
        #[arg(long, default_value_t = 60_000)]
        max_rtt_ms: u64,
        /// The largest response bought, in bytes (paid per byte on every edge).
        #[arg(long, default_value_t = por_node::sdk::DEFAULT_RESPONSE_LIMIT)]
        response_limit: u64,
        /// The body (text).
        body: String,
    },
    /// Price routes to a server through a running node.
    Quote {
        #[command(flatten)]
        control: ControlArgs,
        /// The server: node key or NEAR account.
        #[arg(long)]
        server: String,
        /// Body size in bytes.
        #[arg(long, default_value_t = 0)]
        body_len: u64,
        /// The largest response bought, in bytes.
        #[arg(long, default_value_t = por_node::sdk::DEFAULT_RESPONSE_LIMIT)]
        response_limit: u64,
        /// Only routes whose round trip fits this (ms).
        #[arg(long, default_value_t = 60_000)]
        max_rtt_ms: u64,
    },
    /// A running node's channels, balances and requests in flight.
    Status {
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Open, confirm, cancel, close or list channels on chain.
    Channel {
        #[command(subcommand)]
        command: ChannelCommand,
    },
    /// Nodes and open edges on chain, and the stake-weighted center.
    Topology {
        #[command(flatten)]
        chain: ChainArgs,
    },
    /// The embedded chain.
    Chain {
        #[command(subcommand)]
        command: ChainCommand,
    },
    /// Add to, unbond or withdraw this node's stake on chain.
    Stake {
        #[command(subcommand)]
        command: StakeCommand,
    },
    /// The contract on a NEAR network.
    Contract {
        #[command(subcommand)]
        command: ContractCommand,
    },
    /// Run the paper's section 5 network as real nodes on loopback: the embedded chain,
    /// Alex, Alice, Bob, Carol, Dave and Eve over real sockets with shaped links; the
    /// happy case (Alex → Carol), then Eve offline (Alex → Dave). Prints the timelines
    /// and the balances.
    Demo {
        /// Transport between nodes.
        #[arg(long, value_enum, default_value_t = TransportArg::Tcp, env = "POR_TRANSPORT")]
        transport: TransportArg,
        /// Where to keep the chain and node files (default: a fresh temp directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Shape each link to this percentage of its edge's promised latency (1-100).
        /// Operators promise a little more than their links take; the slack absorbs
        /// scheduling and disk-sync delays on a busy machine.
        #[arg(long, default_value_t = por_node::demo::DEFAULT_LINK_PERCENT, value_parser = clap::value_parser!(u64).range(1..=100))]
        link_percent: u64,
    },
    /// Run scenario files in the deterministic simulator and print the timeline as JSON
    /// lines (`t_ms`, `node`, `kind`, ...), ending with `{"kind":"final","balances":...}`.
    ///
    /// A directory runs every `*.toml` in it, each introduced by a
    /// `{"kind":"scenario",...}` line.
    Simulate {
        /// Scenario files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Exit non-zero if any invariant is broken (the default prints and continues).
        #[arg(long)]
        strict: bool,
        /// Output format: JSON lines, or a table for reading.
        #[arg(long, value_enum, default_value_t = Format::Json)]
        format: Format,
    },
}

#[derive(Subcommand, Debug)]
enum NodeCommand {
    /// Run the node until SIGINT or SIGTERM (then shut down gracefully).
    Run {
        /// Config file (see `por init`); flags and POR_* variables override it.
        #[arg(long, env = "POR_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        settings: Box<por_node::Settings>,
        /// Serve this file store (`por files add`) to the file layer's requests (bodies
        /// that start with its version byte, 1); other bodies are still echoed.
        #[arg(long)]
        serve_files: Option<PathBuf>,
    },
    /// Ask a running node to shut down gracefully.
    Stop {
        #[command(flatten)]
        control: ControlArgs,
    },
}

/// How commands reach a running node's control endpoint: its address and its control
/// token, given directly or found through the node's config file.
#[derive(clap::Args, Debug)]
struct ControlArgs {
    /// The node's config file: its `control` address and, in its `data_dir`, the
    /// control token.
    #[arg(long = "config", env = "POR_CONFIG")]
    node_config: Option<PathBuf>,
    /// The node's control endpoint (default: the config's `control`, else
    /// 127.0.0.1:7100).
    #[arg(long, env = "POR_CONTROL")]
    control: Option<String>,
    /// The file holding the node's control token (`control.token` in its data
    /// directory, written by the node at start, mode 0600).
    #[arg(long, env = "POR_CONTROL_TOKEN_FILE")]
    token_file: Option<PathBuf>,
}

/// How channel and topology commands reach the chain: a node's config file, with
/// any setting overridden by flags or POR_* variables.
#[derive(clap::Args, Debug)]
struct ChainArgs {
    /// Config file (see `por init`).
    #[arg(long, env = "POR_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: Box<por_node::Settings>,
}

#[derive(Subcommand, Debug)]
enum StakeCommand {
    /// Add to the stake (the amount is attached as the call's deposit).
    Add {
        #[command(flatten)]
        chain: ChainArgs,
        /// yoctoNEAR.
        #[arg(long)]
        amount: String,
    },
    /// Start unbonding part of the stake (withdrawable after the contract's unbonding
    /// period; refused below the minimum stake while channels are open).
    Unstake {
        #[command(flatten)]
        chain: ChainArgs,
        /// yoctoNEAR.
        #[arg(long)]
        amount: String,
    },
    /// Withdraw stake whose unbonding period is over.
    Withdraw {
        #[command(flatten)]
        chain: ChainArgs,
    },
}

#[derive(Subcommand, Debug)]
enum ChannelCommand {
    /// Propose a channel to a peer account, with our deposit and the terms.
    Open {
        #[command(flatten)]
        chain: ChainArgs,
        /// The peer's NEAR account.
        #[arg(long)]
        peer: String,
        /// Our deposit (yoctoNEAR).
        #[arg(long)]
        deposit: String,
        /// Promised one-way latency (ms).
        #[arg(long)]
        latency_ms: u64,
        /// Cost per message (yoctoNEAR).
        #[arg(long, default_value = "10000")]
        base_cost: String,
        /// Cost per body byte (yoctoNEAR).
        #[arg(long, default_value = "10")]
        byte_cost: String,
        /// Sync interval (ms).
        #[arg(long, default_value_t = 1000)]
        sync_interval_ms: u64,
        /// Sync phase (ms).
        #[arg(long, default_value_t = 0)]
        sync_phase_ms: u64,
        /// Highest late-fee rate accepted (yoctoNEAR per ms).
        #[arg(long, default_value = "1000000")]
        max_late_fee_rate: String,
        /// Promised bandwidth, bytes per second (a hop's budget adds the time the
        /// request and its response take at this rate).
        #[arg(long, default_value_t = por_protocol::types::EdgeTerms::DEFAULT_BANDWIDTH)]
        bandwidth: u64,
    },
    /// Confirm a channel proposed to us, with our deposit.
    Confirm {
        #[command(flatten)]
        chain: ChainArgs,
        /// The channel.
        #[arg(long)]
        id: u64,
        /// Our deposit (yoctoNEAR).
        #[arg(long)]
        deposit: String,
    },
    /// Cancel a proposal (deposits are returned).
    Cancel {
        #[command(flatten)]
        chain: ChainArgs,
        /// The channel.
        #[arg(long)]
        id: u64,
    },
    /// Close a channel with the latest state the peer signed to us (asked from the
    /// running node at the config's `control` endpoint): cooperatively (propose, or confirm the peer's proposal), or with
    /// --force adversarially; --finalize pays out once the challenge period is over.
    Close {
        #[command(flatten)]
        chain: ChainArgs,
        /// The channel.
        #[arg(long)]
        id: u64,
        /// Close adversarially (start the challenge period).
        #[arg(long)]
        force: bool,
        /// Confirm the peer's cooperative close.
        #[arg(long)]
        confirm: bool,
        /// Pay out after the challenge period.
        #[arg(long)]
        finalize: bool,
    },
    /// Answer an adversarial close with the latest states this node holds (asks the
    /// running node for them): the states that pay it more replace the ones submitted.
    Challenge {
        #[command(flatten)]
        chain: ChainArgs,
        /// The channel.
        #[arg(long)]
        id: u64,
    },
    /// Channels of our account.
    List {
        #[command(flatten)]
        chain: ChainArgs,
    },
}

#[derive(Subcommand, Debug)]
enum ContractCommand {
    /// Deploy the contract wasm this binary carries (`por --version` prints its hash)
    /// and initialise it, in one transaction: the contract account is created (a
    /// sub-account of the signer's) unless it is the signer's own.
    Deploy {
        /// NEAR JSON-RPC endpoint: `sandbox`, `testnet`, `mainnet` or a URL.
        #[arg(long, env = "POR_NEAR_RPC")]
        near_rpc: String,
        /// The signer's near-cli key file (`account_id`, `public_key`, `private_key`).
        #[arg(long, env = "POR_NEAR_KEY_FILE")]
        near_key_file: PathBuf,
        /// The contract account.
        #[arg(long, env = "POR_NEAR_CONTRACT")]
        contract: String,
        /// The network name every signature is bound to, with the contract account
        /// (default: the `--near-rpc` name, or `custom` for a URL).
        #[arg(long)]
        network: Option<String>,
        /// The contract configuration as a JSON file (`min_stake`, `min_deposit`,
        /// `unbonding_ns`, `challenge_ns`, `sever_penalty`, `partition_slash_bps`);
        /// default: the development configuration.
        #[arg(long)]
        config: Option<PathBuf>,
        /// yoctoNEAR the new contract account starts with (pays for the code's
        /// storage: about 4 NEAR for the wasm).
        #[arg(long, default_value = "10000000000000000000000000")]
        initial_balance: String,
    },
}

#[derive(Subcommand, Debug)]
enum ChainCommand {
    /// Serve the embedded chain on loopback so that several nodes share it.
    Serve {
        /// The chain's database file (created and initialised if new).
        #[arg(long, env = "POR_CHAIN_PATH", default_value = "chain.redb")]
        path: PathBuf,
        /// Address to serve on.
        #[arg(long, env = "POR_CHAIN_ADDR", default_value = "127.0.0.1:3031")]
        listen: String,
        /// Serve on a non-loopback address (a devnet). Calls are still taken only
        /// signed by the calling account's key.
        #[arg(long)]
        allow_remote: bool,
        /// Answer `por chain fund` (create and credit accounts). Off by default:
        /// anyone who reaches a faucet can mint balance.
        #[arg(long)]
        faucet: bool,
    },
    /// Credit an account from a served chain's faucet (served with `--faucet`),
    /// creating it with the key its calls will be signed with.
    Fund {
        /// The served chain.
        #[arg(long, env = "POR_CHAIN_ADDR", default_value = "127.0.0.1:3031")]
        chain_addr: String,
        /// The node key file whose public key the account's calls are signed with
        /// (`por init` writes it as `node.key`).
        #[arg(long, env = "POR_KEY_FILE")]
        key_file: PathBuf,
        /// The account.
        account: String,
        /// yoctoNEAR.
        amount: String,
    },
}

/// Transport choice on the command line.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum TransportArg {
    /// TLS 1.3 over TCP.
    Tcp,
    /// QUIC.
    Quic,
}

impl From<TransportArg> for por_node::TransportKind {
    fn from(t: TransportArg) -> Self {
        match t {
            TransportArg::Tcp => por_node::TransportKind::Tcp,
            TransportArg::Quic => por_node::TransportKind::Quic,
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    /// One JSON object per line.
    Json,
    /// A human-readable timeline.
    Table,
}

fn scenario_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut in_dir: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("reading directory {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "toml"))
                .collect();
            in_dir.sort();
            if in_dir.is_empty() {
                bail!("{}: no *.toml scenario files", p.display());
            }
            files.extend(in_dir);
        } else {
            files.push(p.clone());
        }
    }
    Ok(files)
}

fn simulate(path: &Path, announce: bool, format: Format) -> Result<usize> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let scenario = por_testnet::Scenario::from_toml(&text)
        .with_context(|| format!("parsing {}", path.display()))?;
    let description = scenario.description.clone();
    let transfers = scenario
        .file_transfers()
        .with_context(|| format!("{}'s file loads", path.display()))?;
    if !transfers.is_empty() {
        eprintln!(
            "{}: its {} file transfers run on real processes only (por devnet run): the simulator has no file layer",
            path.display(),
            transfers.len()
        );
    }
    let report = por_testnet::Sim::new(scenario)
        .with_context(|| format!("setting up {}", path.display()))?
        .run();
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    match format {
        Format::Json => {
            if announce {
                outln!("{}", serde_json_line(&name, path));
            }
            out!("{}", report.to_json_lines());
        }
        Format::Table => out!("{}", report.to_table(&name, &description)),
    }
    for v in &report.violations {
        eprintln!("{}: invariant broken: {v}", path.display());
    }
    Ok(report.violations.len())
}

fn serde_json_line(name: &str, path: &Path) -> String {
    format!(
        "{{\"kind\":\"scenario\",\"name\":{:?},\"file\":{:?}}}",
        name,
        path.display().to_string()
    )
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().context("starting the runtime")
}

fn transport_name(t: TransportArg) -> &'static str {
    match t {
        TransportArg::Tcp => "TCP",
        TransportArg::Quic => "QUIC",
    }
}

/// `por --version`: the crate version and the hash of the contract wasm this binary
/// carries (and deploys, and runs on its embedded chain).
fn version() -> &'static str {
    let text = format!(
        "{} (contract wasm sha256 {})",
        env!("CARGO_PKG_VERSION"),
        por_chain::wasm::CONTRACT_SHA256
    );
    Box::leak(text.into_boxed_str())
}

fn main() -> Result<()> {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().version(version()).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let quiet = matches!(cli.command, Command::Demo { .. } | Command::Simulate { .. });
    init_logs(cli.log_format, if quiet { "error" } else { "info" });
    match cli.command {
        Command::Demo {
            transport,
            dir,
            link_percent,
        } => {
            // The demo narrates; logs only for errors unless RUST_LOG asks for more.
            let mut options = por_node::demo::DemoOptions::new(transport.into());
            options.link_percent = link_percent;
            if let Some(dir) = dir {
                options.dir = dir;
            }
            let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
            let report = runtime.block_on(por_node::demo::run(&options))?;
            out!("{}", demo::render(&report, transport_name(transport)));
        }
        Command::Init {
            dir,
            account,
            listen,
            control,
        } => commands::init(&dir, &account, &listen, &control)?,
        Command::Files { command } => files::run(command)?,
        Command::Devnet { command } => runtime()?.block_on(devnet::run(command))?,
        Command::Node { command } => {
            let rt = runtime()?;
            match command {
                NodeCommand::Run {
                    config,
                    settings,
                    serve_files,
                } => rt.block_on(commands::node_run(
                    config.as_deref(),
                    &settings,
                    serve_files.as_deref(),
                ))?,
                NodeCommand::Stop { control } => rt.block_on(commands::control(
                    &control,
                    serde_json::json!({"op": "shutdown"}),
                ))?,
            }
        }
        Command::Request {
            control,
            server,
            late_fee_rate,
            max_rtt_ms,
            response_limit,
            body,
        } => runtime()?.block_on(commands::control(
            &control,
            serde_json::json!({"op": "request", "server": server, "body": body,
                "late_fee_rate": late_fee_rate, "max_rtt_ms": max_rtt_ms,
                "response_limit": response_limit}),
        ))?,
        Command::Quote {
            control,
            server,
            body_len,
            response_limit,
            max_rtt_ms,
        } => runtime()?.block_on(commands::control(
            &control,
            serde_json::json!({"op": "quote", "server": server, "body_len": body_len,
                "response_limit": response_limit, "max_rtt_ms": max_rtt_ms}),
        ))?,
        Command::Status { control } => runtime()?.block_on(commands::control(
            &control,
            serde_json::json!({"op": "status"}),
        ))?,
        Command::Channel { command } => runtime()?.block_on(commands::channel(command))?,
        Command::Topology { chain } => runtime()?.block_on(commands::topology(&chain))?,
        Command::Chain { command } => runtime()?.block_on(commands::chain(command))?,
        Command::Stake { command } => runtime()?.block_on(commands::stake(command))?,
        Command::Contract { command } => runtime()?.block_on(commands::contract(command))?,
        Command::Simulate {
            paths,
            strict,
            format,
        } => {
            let files = scenario_files(&paths)?;
            let announce = files.len() > 1;
            let mut broken = 0;
            for f in &files {
                broken += simulate(f, announce, format)?;
            }
            if strict && broken > 0 {
                bail!("{broken} invariant violations");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Clap's own check of every command and subcommand (a flag defined twice, a
    /// default that does not parse) — these otherwise panic only when that command runs.
    #[test]
    fn every_command_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
