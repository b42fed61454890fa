//! `por devnet`: a many-host network on this machine, as real processes. A served
//! chain and N nodes, each host in its own network namespace with its own address
//! (or on its own loopback address), joined by emulated internet links (latency,
//! jitter, bandwidth and loss between regions, `links.rs`) or a plain bridge,
//! channels in a ring with chords, faults by command (kill -9 and restart,
//! partitions, link changes), load, and a check that both ends of every channel
//! agree. docs/testnet.md describes it.

mod files;
mod links;
mod map;
mod net;
mod plots;
mod report;
mod run;
mod state;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;
use por_chain::Chain;
use por_protocol::types::EdgeTerms;
use por_protocol::Amount;
use serde_json::{json, Value};

use net::{Isolation, Net};
use state::{Daemon, Host, State};

/// NEAR each host's account is funded with from the chain's faucet.
const FUNDING_NEAR: u128 = 1_000;
/// What each node stakes, and deposits into each of its channels, in NEAR.
const STAKE_NEAR: u128 = 10;
const DEPOSIT_NEAR: u128 = 10;
/// The port every node listens on in its namespace.
const NODE_PORT: u16 = 7000;
/// The control endpoint every node serves on its namespace's loopback.
const CONTROL_IN_NETNS: &str = "127.0.0.1:7100";
/// The late-fee tolerance of hosts joined by emulated internet links, unless the
/// scenario sets one: past TCP's 200 ms minimum retransmission timeout, so that one
/// lost packet's retransmission (a request the downstream received late, and so
/// answered late by its own clock) is not counted as late fees it withheld, which the
/// §5.4 heuristic would sever an honest edge for.
const EMULATED_FEE_TOLERANCE_MS: &str = "250";

/// `por devnet` subcommands.
#[derive(clap::Subcommand, Debug)]
pub(crate) enum DevnetCommand {
    /// Start a chain and N nodes as processes, open the channels, wait until every
    /// channel is connected.
    Up {
        /// Hosts (nodes), at most 250.
        #[arg(long, default_value_t = 12)]
        hosts: usize,
        /// The transport between the nodes.
        #[arg(long, default_value = "tcp", value_parser = ["tcp", "quic"])]
        transport: String,
        /// Network namespaces (needs root and iproute2) or loopback addresses.
        #[arg(long, value_enum, default_value_t = Isolation::Auto)]
        isolation: Isolation,
        /// How namespaces are joined: `emulated` internet links between regions (the
        /// default with namespaces) or a `bridge` (no delay at all).
        #[arg(long, value_parser = ["emulated", "bridge"])]
        links: Option<String>,
        /// Prefix of the namespaces and links (1–8 lowercase letters or digits).
        #[arg(long, default_value = "pordev")]
        name: String,
        /// The devnet's directory: state, chain, keys, logs.
        #[arg(long, default_value = ".por-devnet")]
        dir: PathBuf,
        /// A host that misbehaves by configuration, `HOST=HOW`: `withhold-late-fees`,
        /// `answer-late:MS`, `no-answer`, `corrupt-files`, or `offline` (down once its
        /// channels are open). Repeatable.
        #[arg(long, value_name = "HOST=HOW")]
        misbehave: Vec<String>,
    },
    /// Each host: running or not, its channels connected, in flight, earned.
    Status {
        /// The devnet's directory.
        #[arg(long, default_value = ".por-devnet")]
        dir: PathBuf,
    },
    /// kill -9 a host's node.
    Kill {
        /// The host (`h03`).
        host: String,
        /// The devnet's directory.
        #[arg(long, default_value = ".por-devnet")]
        dir: PathBuf,
    },
    /// Start a killed host's node again, on its data.
    Restart {
        /// The host (`h03`).
        host: String,
        /// The devnet's directory.
        #[arg(long, default_value = ".por-devnet")]
        dir: PathBuf,
    },
    /// Cut a set of hosts off from all the others (both ways), until `heal`.
    Partition {
        /// The hosts on one side (`h01 h02`).
        #[arg(required = true)]
        hosts: Vec<String>,
        /// The devnet's directory.
        #[arg(long, default_value = ".por-devnet")]
        dir: PathBuf,
    },
    /// Change the link between two hosts, both ways (emulated links only): a latency
    /// spike, a bandwidth drop, loss, a blackhole; `--restore` puts back the default.
    Link {
        /// One host.
        a: String,
        /// The other.
        b: String,
        /// One-way latency.
        #[arg(long)]
        latency_ms: Option<u32>,
        /// Jitter added to each packet, up to this.
        #[arg(long)]
        jitter_ms: Option<u32>,
        /// Probability of losing a packet (0 to 1).
        #[arg(long)]
        loss: Option<f64>,
        /// Bandwidth, in Mbit/s.
        #[arg(long)]
        bandwidth_mbit: Option<u64>,
        /// Drop every packet (a blackhole).
        #[arg(long)]
        down: bool,
        /// Back to the regions' default.
        #[arg(long, conflicts_with_all = ["latency_ms", "jitter_ms", "loss", "bandwidth_mbit", "down"])]
        restore: bool,
        /// The devnet's directory.
        #[arg(long, default_value = ".por-devnet")]
        dir: PathBuf,
    },
    /// The link emulator itself (`up` starts it).
    #[command(hide = true)]
    Links {
        /// The devnet's directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Sever the channel between two hosts, as the first one's operator would
    /// (`por channel sever`): the first host stops serving it and tells the chain.
    Sever {
        /// The host that severs (`h01`).
        a: String,
        /// The host at the channel's other end.
        b: String,
        /// The devnet's directory.
        #[arg(long, default_value = ".por-devnet")]
        dir: PathBuf,
    },
    /// Reset every TCP connection between two hosts (a middlebox's RST, as the
    /// kernel's `ss -K` makes it): both nodes see the connection die and redial.
    /// TCP only: a QUIC connection cannot be reset from outside without its keys
    /// (`link --down` cuts it, and it ends at its idle timeout).
    Reset {
        /// One host.
        a: String,
        /// The other.
        b: String,
        /// The devnet's directory.
        #[arg(long, default_value = ".por-devnet")]
        dir: PathBuf,
    },
    /// Serve the live network map of the whole devnet (topology, stakes and center,
    /// channel balances and payments in flight, late fees, severs and closes as they
    /// happen) until interrupted; prints its address.
    Map {
        /// Where to serve it.
        #[arg(long, default_value = "127.0.0.1:7300")]
        listen: String,
        /// The devnet's directory.
        #[arg(long, default_value = ".por-devnet")]
        dir: PathBuf,
    },
    /// Undo every partition.
    Heal {
        /// The devnet's directory.
        #[arg(long, default_value = ".por-devnet")]
        dir: PathBuf,
    },
    /// Send requests from one host to another over the cheapest route, and print
    /// their outcomes.
    Load {
        /// The client host.
        #[arg(long)]
        from: String,
        /// The server host.
        #[arg(long)]
        to: String,
        /// Requests to send.
        #[arg(long, default_value_t = 100)]
        requests: u64,
        /// Requests in flight at once.
        #[arg(long, default_value_t = 4)]
        concurrency: u64,
        /// The devnet's directory.
        #[arg(long, default_value = ".por-devnet")]
        dir: PathBuf,
    },
    /// Share files of random bytes from provider hosts and fetch them from a client
    /// host through the file layer (verified and paid piece by piece, the pieces split
    /// between the providers); prints each transfer (rate, cost, whether the bytes
    /// arrived identical, providers caught deviating) and records it for the report.
    Files {
        /// The client host.
        #[arg(long)]
        from: String,
        /// A provider host; repeatable.
        #[arg(long = "provider", required = true)]
        providers: Vec<String>,
        /// Bytes per file (at most 1 GiB).
        #[arg(long, default_value_t = 4 << 20)]
        size: u64,
        /// Files, fetched one after another.
        #[arg(long, default_value_t = 1)]
        count: u64,
        /// Requests in flight per provider.
        #[arg(long, default_value_t = 4)]
        window: u64,
        /// The devnet's directory.
        #[arg(long, default_value = ".por-devnet")]
        dir: PathBuf,
    },
    /// Once nothing is in flight: both ends of every channel agree on what was paid
    /// each way. Fails (exit 1) when any pair does not.
    Check {
        /// The devnet's directory.
        #[arg(long, default_value = ".por-devnet")]
        dir: PathBuf,
    },
    /// What the traffic came to: latency by path length, outcomes over time, late
    /// fees, each node's earnings, severed channels, and money conservation of every
    /// channel against the chain. Fails (exit 1) when money is not conserved.
    Report {
        /// `json` or `markdown`.
        #[arg(long, default_value = "json", value_parser = ["json", "markdown"])]
        format: String,
        /// Also draw the plots (SVG: latency by path length, outcomes over time)
        /// into this directory.
        #[arg(long)]
        plots: Option<PathBuf>,
        /// The devnet's directory.
        #[arg(long, default_value = ".por-devnet")]
        dir: PathBuf,
    },
    /// Run a simulator scenario (`testnet/scenarios/*.toml`) on a devnet of real
    /// processes as well as in the simulator, and print both timelines side by side;
    /// fails (exit 1) when a request's outcome differs. Needs root (namespaces).
    Run {
        /// The scenario file.
        scenario: PathBuf,
        /// The transport between the nodes.
        #[arg(long, default_value = "tcp", value_parser = ["tcp", "quic"])]
        transport: String,
        /// Links at this percentage of the scenario's latencies: real nodes need
        /// part of each bound for their own work (at 90 the §5.1 server keeps about
        /// 10 ms of its budget, and a busy machine makes it late).
        #[arg(long, default_value_t = 70)]
        link_percent: u64,
        /// `json` or `markdown`.
        #[arg(long, default_value = "json", value_parser = ["json", "markdown"])]
        format: String,
        /// Leave the devnet up afterwards (`por devnet down` removes it).
        #[arg(long)]
        keep: bool,
        /// Prefix of the namespaces and links.
        #[arg(long, default_value = "porrun")]
        name: String,
        /// The devnet's directory.
        #[arg(long, default_value = ".por-devnet-run")]
        dir: PathBuf,
    },
    /// Stop every process and remove every namespace and link of the devnet.
    Down {
        /// The devnet's directory.
        #[arg(long, default_value = ".por-devnet")]
        dir: PathBuf,
        /// Also remove these namespaces and links when no state file names them (a
        /// devnet whose directory is gone).
        #[arg(long)]
        name: Option<String>,
    },
}

/// Runs one `por devnet` command.
pub(crate) async fn run(cmd: DevnetCommand) -> Result<()> {
    match cmd {
        DevnetCommand::Up {
            hosts,
            transport,
            isolation,
            links,
            name,
            dir,
            misbehave,
        } => {
            let emulated = links.map(|l| l == "emulated");
            let mut plan = Plan::ring(hosts);
            for m in &misbehave {
                plan.misbehave(m)?;
            }
            up(&plan, &transport, isolation, emulated, &name, &dir).await
        }
        DevnetCommand::Links { dir } => links::run(dir).await,
        DevnetCommand::Link {
            a,
            b,
            latency_ms,
            jitter_ms,
            loss,
            bandwidth_mbit,
            down,
            restore,
            dir,
        } => {
            let st = State::load(&dir)?;
            if !st.net.emulated {
                bail!("this devnet's links are not emulated (it was started with a bridge or on the loopback)");
            }
            if loss.is_some_and(|l| !(0.0..=1.0).contains(&l)) {
                bail!("--loss is a probability, 0 to 1");
            }
            if bandwidth_mbit == Some(0) {
                bail!("--bandwidth-mbit 0: use --down for a link that passes nothing");
            }
            let mut l = links::Links::load(&dir)?;
            let (ea, eb) = (l.endpoint(&a)?.clone(), l.endpoint(&b)?.clone());
            for (x, y) in [(&ea, &eb), (&eb, &ea)] {
                let key = format!("{}>{}", x.name, y.name);
                if restore {
                    l.overrides.remove(&key);
                    continue;
                }
                let mut link = l.link(x, y);
                if let Some(v) = latency_ms {
                    link.latency_ms = v;
                }
                if let Some(v) = jitter_ms {
                    link.jitter_ms = v;
                }
                if let Some(v) = loss {
                    link.loss = v;
                }
                if let Some(v) = bandwidth_mbit {
                    link.bandwidth_bps = v.saturating_mul(1_000_000);
                }
                link.down = down;
                l.overrides.insert(key, link);
            }
            l.save(&dir)?;
            println!("{}", json!({"link": [a, b], "now": l.link(&ea, &eb)}));
            Ok(())
        }
        DevnetCommand::Status { dir } => {
            let st = State::load(&dir)?;
            for h in &st.hosts {
                println!("{}", host_status(h).await);
            }
            Ok(())
        }
        DevnetCommand::Kill { host, dir } => {
            let st = State::load(&dir)?;
            let h = st.host(&host)?;
            if !h.node.alive() {
                bail!("{host} is not running");
            }
            h.node.stop(Signal::SIGKILL, Duration::from_secs(5));
            println!("{}", json!({"killed": host, "pid": h.node.pid}));
            Ok(())
        }
        DevnetCommand::Restart { host, dir } => {
            let mut st = State::load(&dir)?;
            let h = st.host_mut(&host)?;
            if h.node.alive() {
                bail!("{host} is running (`por devnet kill {host}` first)");
            }
            h.node = h.node.restart()?;
            let pid = h.node.pid;
            st.save()?;
            println!("{}", json!({"restarted": host, "pid": pid}));
            Ok(())
        }
        DevnetCommand::Partition { hosts, dir } => {
            let mut st = State::load(&dir)?;
            let others = st.others(&hosts)?;
            st.net.partition(&st.nets(&hosts)?, &st.nets(&others)?)?;
            st.partitions.push(hosts.clone());
            st.save()?;
            println!("{}", json!({"partitioned": hosts, "from": others}));
            Ok(())
        }
        DevnetCommand::Sever { a, b, dir } => {
            let st = State::load(&dir)?;
            let id = st.channel_between(&a, &b)?;
            control(st.host(&a)?, json!({"op": "sever", "channel": id})).await?;
            println!("{}", json!({"severed": id, "by": a, "peer": b}));
            Ok(())
        }
        DevnetCommand::Reset { a, b, dir } => {
            let st = State::load(&dir)?;
            if st.transport != "tcp" {
                bail!("this devnet runs {}: a connection reset is TCP's (`por devnet link {a} {b} --down` cuts a QUIC connection)", st.transport);
            }
            let end = |h: &Host| -> Result<net::TcpEnd> {
                Ok(net::TcpEnd {
                    pid: h.node.pid,
                    listen: h.node.ready["address"]
                        .as_str()
                        .and_then(|a| a.parse().ok())
                        .with_context(|| format!("{}'s listen address", h.name))?,
                })
            };
            let (ha, hb) = (st.host(&a)?, st.host(&b)?);
            if !ha.node.alive() || !hb.node.alive() {
                bail!("{a} and {b} must both be running");
            }
            let killed = net::reset(ha.net.netns.as_deref(), &end(ha)?, &end(hb)?)?;
            println!("{}", json!({"reset": [a, b], "connections": killed}));
            Ok(())
        }
        DevnetCommand::Map { listen, dir } => map::serve(State::load(&dir)?, &listen).await,
        DevnetCommand::Heal { dir } => {
            let mut st = State::load(&dir)?;
            for side in std::mem::take(&mut st.partitions) {
                let others = st.others(&side)?;
                st.net.heal(&st.nets(&side)?, &st.nets(&others)?)?;
            }
            st.save()?;
            println!("{}", json!({"healed": true}));
            Ok(())
        }
        DevnetCommand::Load {
            from,
            to,
            requests,
            concurrency,
            dir,
        } => {
            let st = State::load(&dir)?;
            println!("{}", load(&st, &from, &to, requests, concurrency).await?);
            Ok(())
        }
        DevnetCommand::Files {
            from,
            providers,
            size,
            count,
            window,
            dir,
        } => {
            let st = State::load(&dir)?;
            let summary = files::files(&st, &from, &providers, size, count, window).await?;
            println!("{summary}");
            if summary["identical"] != summary["files"] {
                bail!(
                    "not every file arrived whole and identical: {summary}; failures: {}",
                    summary["errors"]
                );
            }
            Ok(())
        }
        DevnetCommand::Check { dir } => {
            let st = State::load(&dir)?;
            let report = check(&st).await?;
            println!("{report}");
            if report["agree"] != true {
                bail!(
                    "the two ends of some channel disagree: {}",
                    report["disagreements"]
                );
            }
            Ok(())
        }
        DevnetCommand::Report { format, plots, dir } => {
            let st = State::load(&dir)?;
            let statuses = settled_statuses(&st).await?;
            let mut r = report::report(&st, &statuses).await?;
            if let Some(p) = plots {
                r["plots"] = plots::draw(&r, &p)?
                    .iter()
                    .map(|p| Value::String(p.display().to_string()))
                    .collect::<Vec<_>>()
                    .into();
            }
            if format == "markdown" {
                print!("{}", report::markdown(&r));
            } else {
                println!("{r}");
            }
            if r["conservation"]["conserved"] != true {
                bail!(
                    "money is not conserved on some channel: {}",
                    r["conservation"]["problems"]
                );
            }
            Ok(())
        }
        DevnetCommand::Run {
            scenario,
            transport,
            link_percent,
            format,
            keep,
            name,
            dir,
        } => {
            let r = run::run(run::RunOptions {
                scenario,
                transport,
                link_percent,
                name,
                dir,
                keep,
            })
            .await?;
            if format == "markdown" {
                print!("{}", run::markdown(&r));
            } else {
                println!("{r}");
            }
            if r["same_outcomes"] != true {
                bail!("a request's outcome on the real processes differs from the simulation");
            }
            Ok(())
        }
        DevnetCommand::Down { dir, name } => {
            let removed = down(&dir, name.as_deref());
            println!("{}", json!({"removed": removed}));
            Ok(())
        }
    }
}

/// The channels of `n` hosts: a ring, and a chord from every other host to the one
/// opposite (so that a path of any length exists and no single host cuts the rest in
/// two).
fn topology(n: usize) -> Vec<(usize, usize)> {
    let mut edges: Vec<(usize, usize)> = (0..n)
        .filter(|_| n > 1)
        .map(|i| (i, (i + 1) % n))
        .filter(|(a, b)| a != b)
        .collect();
    if n == 2 {
        edges.truncate(1);
    }
    if n >= 6 {
        edges.extend((0..n / 2).step_by(2).map(|i| (i, i + n / 2)));
    }
    edges
}

/// What one TCP connection carries over `link`, in bytes a second: the link's rate,
/// or less where loss bounds it (Mathis et al., 1997: MSS / RTT × 1.22 / √loss; at
/// 0.1 % loss and a 140 ms round trip, about 400 kB/s of the 100 Mbit/s), halved for
/// slow start after the link has been idle. A 512 KiB file piece then takes seconds
/// over a long link, and its deadline says so: promised at the link's rate, such
/// pieces came late and their edges were severed.
fn tcp_bandwidth(link: &links::Link) -> u64 {
    let rate = (link.bandwidth_bps / 8).max(1);
    if link.loss <= 0.0 {
        return rate;
    }
    let rtt_s = (f64::from(link.latency_ms + link.jitter_ms) * 2.0 / 1000.0).max(0.001);
    let mathis = 1448.0 / rtt_s * 1.22 / link.loss.sqrt() / 2.0;
    rate.min(mathis as u64).max(1)
}

/// The terms of a devnet channel promising `latency_ms` one way.
fn terms(latency_ms: u64) -> EdgeTerms {
    EdgeTerms {
        latency_ms,
        base_cost: Amount(10_000),
        byte_cost: Amount(10),
        sync_interval_ms: 500,
        sync_phase_ms: 0,
        max_late_fee_rate: Amount(1_000),
        bandwidth: EdgeTerms::DEFAULT_BANDWIDTH,
    }
}

/// What `build` makes: per host, the extra `por node run` settings; the channels;
/// and links that differ from their regions' defaults.
#[derive(Clone, Debug, Default)]
pub(crate) struct Plan {
    /// One entry per host (`h01` first): its extra node flags.
    pub(crate) hosts: Vec<Vec<String>>,
    /// The channels.
    pub(crate) channels: Vec<PlannedChannel>,
    /// Emulated links that differ from the regions' defaults, by `"h01>h02"`.
    pub(crate) links: std::collections::HashMap<String, links::Link>,
    /// Per host, how it misbehaves (`--misbehave`), as given.
    pub(crate) misbehaviour: std::collections::BTreeMap<usize, Vec<String>>,
}

/// A channel to open.
#[derive(Clone, Debug)]
pub(crate) struct PlannedChannel {
    /// The proposing host (index from 0).
    pub(crate) a: usize,
    /// The confirming host.
    pub(crate) b: usize,
    /// Its terms; `None`: [`terms`] for what the link between them delivers.
    pub(crate) terms: Option<EdgeTerms>,
    /// What each end deposits.
    pub(crate) deposit_a: Amount,
    /// The other end's deposit.
    pub(crate) deposit_b: Amount,
}

impl Plan {
    /// Makes a host misbehave: `HOST=HOW` (see `por devnet up --misbehave`).
    pub(crate) fn misbehave(&mut self, spec: &str) -> Result<()> {
        let (host, how) = spec
            .split_once('=')
            .with_context(|| format!("--misbehave {spec:?}: expected HOST=HOW"))?;
        let i = (1..=self.hosts.len())
            .find(|&i| Net::host_name(i) == host)
            .with_context(|| format!("--misbehave {spec:?}: no host {host}"))?
            - 1;
        let flags: Vec<&str> = match how.split_once(':') {
            None if how == "withhold-late-fees" => vec!["--withhold-late-fees", "true"],
            None if how == "no-answer" => vec!["--answer", "false"],
            None if how == "corrupt-files" => vec!["--corrupt-files", "true"],
            None if how == "offline" => vec![],
            Some(("answer-late", ms)) if ms.parse::<u64>().is_ok() => {
                vec!["--answer-delay-ms", ms]
            }
            _ => bail!(
                "--misbehave {spec:?}: HOW is withhold-late-fees, answer-late:MS, no-answer, corrupt-files or offline"
            ),
        };
        self.hosts[i].extend(flags.iter().map(|f| f.to_string()));
        self.misbehaviour
            .entry(i)
            .or_default()
            .push(how.to_string());
        Ok(())
    }

    /// `hosts` honest hosts in a ring with chords ([`topology`]).
    pub(crate) fn ring(hosts: usize) -> Plan {
        let deposit = Amount(DEPOSIT_NEAR * por_chain::local::NEAR);
        Plan {
            hosts: vec![Vec::new(); hosts],
            channels: topology(hosts)
                .into_iter()
                .map(|(a, b)| PlannedChannel {
                    a,
                    b,
                    terms: None,
                    deposit_a: deposit,
                    deposit_b: deposit,
                })
                .collect(),
            links: Default::default(),
            misbehaviour: Default::default(),
        }
    }
}

async fn up(
    plan: &Plan,
    transport: &str,
    isolation: Isolation,
    emulated: Option<bool>,
    name: &str,
    dir: &Path,
) -> Result<()> {
    let hosts = plan.hosts.len();
    if !(1..=250).contains(&hosts) {
        bail!("--hosts {hosts}: 1 to 250");
    }
    if State::path(dir).exists() {
        bail!(
            "a devnet is up in {} (`por devnet down --dir {}` first)",
            dir.display(),
            dir.display()
        );
    }
    if Path::new(&format!("/run/netns/{name}-h01")).exists() {
        bail!("namespaces named {name}-h* exist (`por devnet down --name {name}` removes them)");
    }
    std::fs::create_dir_all(dir.join("hosts"))
        .with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let net = Net::plan(name, isolation, emulated)?;
    let mut st = State {
        dir: dir.clone(),
        net,
        transport: transport.to_string(),
        links: None,
        chain: None,
        chain_addr: String::new(),
        hosts: Vec::new(),
        channels: Vec::new(),
        partitions: Vec::new(),
    };
    st.save()?;
    let started = Instant::now();
    match build(&mut st, plan).await {
        Ok(()) => {
            st.save()?;
            println!(
                "{}",
                json!({"devnet": name, "isolation": st.net.isolation, "emulated_links": st.net.emulated,
                       "hosts": st.hosts.len(),
                       "channels": st.channels.len(), "transport": transport,
                       "chain": st.chain_addr, "dir": dir, "secs": started.elapsed().as_secs_f64()})
            );
            Ok(())
        }
        Err(e) => {
            // Nothing left behind by a devnet that did not come up.
            let _ = st.save();
            down(&dir, Some(name));
            Err(e.context("the devnet did not come up (everything it started is stopped again)"))
        }
    }
}

/// Makes the network, the chain, the hosts and the channels, recording each in `st`
/// as it goes (so that `down` finds whatever was made).
async fn build(st: &mut State, plan: &Plan) -> Result<()> {
    let hosts = plan.hosts.len();
    let dir = st.dir.clone();
    st.net.create()?;
    let netns = st.net.isolation == Isolation::Netns;
    let gateway = st.net.gateway();
    let mut places = Vec::new();
    for i in 1..=hosts {
        places.push(st.net.add_host(i)?);
    }
    if st.net.emulated {
        let mut endpoints: Vec<links::Endpoint> = places
            .iter()
            .enumerate()
            .map(|(i, p)| -> Result<links::Endpoint> {
                Ok(links::Endpoint {
                    name: Net::host_name(i + 1),
                    netns: p.netns.clone(),
                    ip: match p.ip {
                        std::net::IpAddr::V4(v4) => v4,
                        std::net::IpAddr::V6(_) => bail!("emulated links carry IPv4"),
                    },
                    region: links::REGIONS[i % links::REGIONS.len()].to_string(),
                })
            })
            .collect::<Result<_>>()?;
        let std::net::IpAddr::V4(gw) = gateway else {
            bail!("emulated links carry IPv4");
        };
        endpoints.push(links::Endpoint {
            name: "gateway".into(),
            netns: None,
            ip: gw,
            region: String::new(),
        });
        links::Links {
            endpoints,
            overrides: plan.links.clone(),
        }
        .save(&dir)?;
        let emulator = Daemon::start(
            vec![
                "devnet".into(),
                "links".into(),
                "--dir".into(),
                dir.display().to_string(),
            ],
            None,
            dir.join("links.log"),
        )?;
        st.links = Some(emulator);
        st.save()?;
    }
    let mut chain_args = vec![
        "chain".to_string(),
        "serve".into(),
        "--path".into(),
        dir.join("chain.redb").display().to_string(),
        "--listen".into(),
        format!("{gateway}:0"),
        "--faucet".into(),
    ];
    if netns {
        chain_args.push("--allow-remote".into());
    }
    let chain = Daemon::start(chain_args, None, dir.join("chain.log"))?;
    st.chain_addr = chain.ready["chain"]
        .as_str()
        .context("the chain's ready line names no address")?
        .to_string();
    st.chain = Some(chain);
    st.save()?;
    let chain_addr: std::net::SocketAddr = st.chain_addr.parse()?;
    let exe = std::env::current_exe()?;
    // Every node polls the one served chain: fewer polls each as there are more
    // nodes, so that the chain keeps up with the channel opens (50 hosts: 1 s).
    let poll_ms = (hosts as u64 * 20).clamp(200, 2_000).to_string();
    for ((i, hnet), extra) in (1..=hosts).zip(places).zip(&plan.hosts) {
        let name = Net::host_name(i);
        let hdir = dir.join("hosts").join(&name);
        let account = format!("{name}.{}", st.net.name);
        let out = std::process::Command::new(&exe)
            .args(["init", "--dir"])
            .arg(&hdir)
            .args(["--account", &account])
            .output()?;
        if !out.status.success() {
            bail!("por init {name}: {}", String::from_utf8_lossy(&out.stderr));
        }
        let key = por_node::config::read_key(&hdir.join("node.key"))?;
        por_chain::RemoteClient::new(chain_addr, "faucet")
            .fund(&account, &key.id(), FUNDING_NEAR * por_chain::local::NEAR)
            .await
            .with_context(|| format!("funding {account}"))?;
        let (listen, control) = if netns {
            (
                format!("{}:{NODE_PORT}", hnet.ip),
                CONTROL_IN_NETNS.to_string(),
            )
        } else {
            (format!("{}:0", hnet.ip), "127.0.0.1:0".to_string())
        };
        let mut args: Vec<String> = [
            "--log-format",
            "json",
            "node",
            "run",
            "--config",
            &hdir.join("por.toml").display().to_string(),
            "--data-dir",
            &hdir.join("data").display().to_string(),
            "--transport",
            &st.transport,
            "--chain",
            "served",
            "--chain-addr",
            &st.chain_addr,
            "--listen",
            &listen,
            "--control",
            &control,
            "--stake",
            &(STAKE_NEAR * por_chain::local::NEAR).to_string(),
            "--chain-poll-ms",
            &poll_ms,
            "--serve-files",
            &files::store_dir(&dir, &name).display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(extra.iter().cloned())
        .collect();
        if st.net.emulated && !extra.iter().any(|f| f == "--fee-tolerance-ms") {
            args.extend([
                "--fee-tolerance-ms".into(),
                EMULATED_FEE_TOLERANCE_MS.into(),
            ]);
        }
        let node = Daemon::start(
            args,
            hnet.netns.clone(),
            dir.join("hosts").join(format!("{name}.log")),
        )?;
        st.hosts.push(Host {
            name,
            account,
            net: hnet,
            node,
            misbehaviour: plan.misbehaviour.get(&(i - 1)).cloned().unwrap_or_default(),
        });
        st.save()?;
    }
    let emulated_links = if st.net.emulated {
        Some(links::Links::load(&dir)?)
    } else {
        None
    };
    for c in &plan.channels {
        let (ha, hb) = (&st.hosts[c.a], &st.hosts[c.b]);
        // A channel promises what its link delivers: the emulated one-way latency
        // and its jitter, plus 20 ms for the nodes themselves, and the bandwidth one
        // TCP connection gets over it (`tcp_bandwidth`).
        let (latency_ms, bandwidth) = match &emulated_links {
            Some(l) => {
                let link = l.link(l.endpoint(&ha.name)?, l.endpoint(&hb.name)?);
                (
                    u64::from(link.latency_ms + link.jitter_ms) + 20,
                    tcp_bandwidth(&link),
                )
            }
            None => (50, EdgeTerms::DEFAULT_BANDWIDTH),
        };
        let signer = |h: &Host| -> Result<por_chain::RemoteClient> {
            let key =
                por_node::config::read_key(&dir.join("hosts").join(&h.name).join("node.key"))?;
            Ok(por_chain::RemoteClient::with_key(
                chain_addr, &h.account, key,
            ))
        };
        let terms = c.terms.clone().unwrap_or_else(|| EdgeTerms {
            bandwidth,
            ..terms(latency_ms)
        });
        let id = signer(ha)?
            .propose_channel(&hb.account, &terms, c.deposit_a)
            .await
            .with_context(|| format!("proposing {}–{}", ha.name, hb.name))?;
        signer(hb)?
            .confirm_channel(id, c.deposit_b)
            .await
            .with_context(|| format!("confirming {}–{}", ha.name, hb.name))?;
        st.channels.push((ha.name.clone(), hb.name.clone(), id.0));
    }
    st.save()?;
    // Every host is up once all its channels are connected.
    let deadline = Instant::now() + Duration::from_secs(60 + 2 * hosts as u64);
    for h in &st.hosts {
        let want = st
            .channels
            .iter()
            .filter(|(a, b, _)| *a == h.name || *b == h.name)
            .count();
        loop {
            let s = control(h, json!({"op": "status"})).await;
            let connected = s.as_ref().map_or(0, |s| {
                s["channels"]
                    .as_array()
                    .map_or(0, |c| c.iter().filter(|c| c["connected"] == true).count())
            });
            if connected >= want {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "{} has {connected} of its {want} channels connected (see {})",
                    h.name,
                    h.node.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // Hosts configured to be offline go down once their channels are open.
    for h in st
        .hosts
        .iter()
        .filter(|h| h.misbehaviour.iter().any(|m| m == "offline"))
    {
        h.node.stop(Signal::SIGKILL, Duration::from_secs(5));
    }
    Ok(())
}

/// One control call to a host's node, from inside its namespace where it has one.
async fn control(h: &Host, req: Value) -> Result<Value> {
    let (addr, token) = h.control()?;
    let r = match &h.net.netns {
        Some(ns) => {
            let stream = net::connect_in(ns, &addr).await?;
            por_node::control::call_on(stream, &addr, &token, req).await
        }
        None => por_node::control::call(&addr, &token, req).await,
    };
    r.with_context(|| format!("{}'s control endpoint", h.name))
}

/// One host's line of `status`.
async fn host_status(h: &Host) -> Value {
    let alive = h.node.alive();
    let s = if alive {
        control(h, json!({"op": "status"})).await.ok()
    } else {
        None
    };
    let channels = s
        .as_ref()
        .and_then(|s| s["channels"].as_array().cloned())
        .unwrap_or_default();
    json!({
        "host": h.name, "ip": h.ip().to_string(), "netns": h.net.netns, "pid": h.node.pid,
        "running": alive, "id": h.id(),
        "channels": channels.len(),
        "connected": channels.iter().filter(|c| c["connected"] == true).count(),
        "in_flight": s.as_ref().map(|s| s["in_flight"].clone()).unwrap_or(Value::Null),
    })
}

/// `load`: `requests` requests from `from` to `to`, `concurrency` at a time; the
/// outcomes counted.
async fn load(st: &State, from: &str, to: &str, requests: u64, concurrency: u64) -> Result<Value> {
    let client = st.host(from)?.clone();
    let server = st.host(to)?.id().to_string();
    if from == to {
        bail!("--from and --to name the same host");
    }
    let next = Arc::new(AtomicU64::new(0));
    let counts: Arc<[AtomicU64; 5]> = Arc::new(Default::default());
    let record: Arc<std::sync::Mutex<Vec<Value>>> = Arc::default();
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (client, server, next, counts, record) = (
            client.clone(),
            server.clone(),
            next.clone(),
            counts.clone(),
            record.clone(),
        );
        let (from, to) = (from.to_string(), to.to_string());
        workers.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::SeqCst) < requests {
                let r = control(
                    &client,
                    json!({"op": "request", "server": server, "body": "ping",
                           "late_fee_rate": "1", "response_limit": 4}),
                )
                .await;
                let slot = match r.as_ref().map(|v| v["kind"].as_str().unwrap_or_default()) {
                    Ok("response") => 0,
                    Ok("proof") => 1,
                    Ok("late") => 2,
                    Ok(_) => 3,
                    Err(_) => 4,
                };
                counts[slot].fetch_add(1, Ordering::SeqCst);
                let at_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                let mut o =
                    r.unwrap_or_else(|e| json!({"kind": "refused", "error": format!("{e:#}")}));
                if let Value::Object(m) = &mut o {
                    m.remove("body");
                    m.insert("at_ms".into(), json!(at_ms));
                    m.insert("from".into(), json!(from));
                    m.insert("to".into(), json!(to));
                }
                if let Ok(mut rec) = record.lock() {
                    rec.push(o);
                }
            }
        }));
    }
    for w in workers {
        w.await?;
    }
    let outcomes = record
        .lock()
        .map(|mut r| std::mem::take(&mut *r))
        .unwrap_or_default();
    report::record(&st.dir, &outcomes)?;
    let c = |i: usize| counts[i].load(Ordering::SeqCst);
    Ok(
        json!({"from": from, "to": to, "responses": c(0), "proofs": c(1), "late": c(2),
              "rejected": c(3), "refused": c(4), "secs": started.elapsed().as_secs_f64()}),
    )
}

/// `check`: waits (up to 20 s) until no running node has a request in flight or an
/// unacknowledged payment, then compares both ends of every channel whose two hosts
/// run.
async fn check(st: &State) -> Result<Value> {
    let statuses = settled_statuses(st).await?;
    let (mut checked, mut disagreements, mut in_dispute) = (0, Vec::new(), 0u128);
    for (a, b, id) in &st.channels {
        let (ha, hb) = (st.host(a)?, st.host(b)?);
        let end = |host: &str, peer: &str| report::channel_end(&statuses, host, peer);
        let (Some(ab), Some(ba)) = (end(a, hb.id()), end(b, ha.id())) else {
            continue;
        };
        checked += 1;
        match (report::missing(&ab, &ba), report::missing(&ba, &ab)) {
            (Some(x), Some(y)) => {
                in_dispute = in_dispute.saturating_add(x).saturating_add(y);
            }
            _ => disagreements.push(json!({"channel": id, a.clone(): ab, b.clone(): ba})),
        }
    }
    Ok(
        json!({"agree": disagreements.is_empty(), "channels_checked": checked,
              "channels": st.channels.len(), "unacknowledged_not_received": in_dispute.to_string(),
              "disagreements": disagreements}),
    )
}

/// Every running node's status, once none has a request in flight or an
/// unacknowledged payment on a channel that is not severed (or after 20 s).
async fn settled_statuses(st: &State) -> Result<Vec<(String, Value)>> {
    let mut statuses: Vec<(String, Value)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        statuses.clear();
        for h in st.hosts.iter().filter(|h| h.node.alive()) {
            statuses.push((h.name.clone(), control(h, json!({"op": "status"})).await?));
        }
        // A severed channel's last unacknowledged payment stays so for good.
        let quiet = statuses.iter().all(|(_, s)| {
            s["in_flight"] == 0
                && s["channels"].as_array().is_some_and(|c| {
                    c.iter()
                        .all(|c| c["unacked"] == "0" || c["severed"] == true)
                })
        });
        if quiet || Instant::now() > deadline {
            return Ok(statuses);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Stops every process of the devnet in `dir` (SIGTERM, then SIGKILL after 5 s) and
/// removes its namespaces and links; then those of `name`, if given, whether or not a
/// state file named them. Returns what it removed.
fn down(dir: &Path, name: Option<&str>) -> Vec<String> {
    let mut removed = Vec::new();
    let mut names: Vec<String> = name.map(str::to_string).into_iter().collect();
    if let Ok(st) = State::load(dir) {
        for h in &st.hosts {
            if h.node.alive() {
                h.node.stop(Signal::SIGTERM, Duration::from_secs(5));
                removed.push(format!("node {} (pid {})", h.name, h.node.pid));
            }
        }
        if let Some(c) = &st.chain {
            if c.alive() {
                c.stop(Signal::SIGTERM, Duration::from_secs(5));
                removed.push(format!("chain (pid {})", c.pid));
            }
        }
        if let Some(l) = &st.links {
            if l.alive() {
                l.stop(Signal::SIGTERM, Duration::from_secs(5));
                removed.push(format!("link emulator (pid {})", l.pid));
            }
        }
        names.push(st.net.name.clone());
        let _ = std::fs::remove_file(State::path(dir));
    }
    names.dedup();
    for n in names {
        removed.extend(Net::remove_all(&n));
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misbehaviour_becomes_node_flags() {
        let mut p = Plan::ring(6);
        p.misbehave("h02=withhold-late-fees").unwrap();
        p.misbehave("h03=answer-late:900").unwrap();
        p.misbehave("h04=offline").unwrap();
        assert_eq!(p.hosts[1], ["--withhold-late-fees", "true"]);
        assert_eq!(p.hosts[2], ["--answer-delay-ms", "900"]);
        assert!(p.hosts[3].is_empty());
        assert_eq!(p.misbehaviour[&3], ["offline"]);
        for bad in ["h02", "h09=no-answer", "h02=answer-late:soon", "h02=lie"] {
            assert!(p.misbehave(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_topology_is_a_ring_with_chords_and_never_a_loop() {
        assert!(topology(1).is_empty());
        assert_eq!(topology(2), vec![(0, 1)]);
        assert_eq!(topology(3), vec![(0, 1), (1, 2), (2, 0)]);
        let t = topology(12);
        assert_eq!(t.len(), 12 + 3);
        assert!(t.contains(&(0, 6)) && t.contains(&(2, 8)) && t.contains(&(4, 10)));
        for n in 1..60 {
            let t = topology(n);
            assert!(t.iter().all(|(a, b)| a != b && *a < n && *b < n));
            let mut seen = std::collections::HashSet::new();
            for (a, b) in &t {
                assert!(seen.insert((*a.min(b), *a.max(b))), "{n}: {a}–{b} twice");
            }
        }
    }
}
