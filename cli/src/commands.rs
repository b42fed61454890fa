//! The `por` subcommands that run a node or talk to one or to the chain.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use por_chain::Chain;
use por_node::{config, NodeBuilder, Settings};
use por_protocol::types::{ChannelId, EdgeTerms, SignedUpdate};
use por_protocol::{wire, Amount};
use serde_json::{json, Value};

use crate::{ChainArgs, ChainCommand, ChannelCommand, ContractCommand, ControlArgs, StakeCommand};

fn amount(text: &str, what: &str) -> Result<Amount> {
    text.parse()
        .map(Amount)
        .with_context(|| format!("--{what}: {text:?} is not an amount in yoctoNEAR"))
}

/// `por init`.
pub(crate) fn init(dir: &Path, account: &str, listen: &str, control: &str) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let conf = dir.join("por.toml");
    if conf.exists() {
        bail!("{} exists: not overwriting it", conf.display());
    }
    let mut seed = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
    let key = config::write_new_key(&dir.join("node.key"), seed)?;
    std::fs::write(&conf, config::template(account, listen, control))
        .with_context(|| format!("writing {}", conf.display()))?;
    outln!(
        "node key {} written to {}\nconfig written to {}",
        por_node::key_hex(&key.id()),
        dir.join("node.key").display(),
        conf.display()
    );
    Ok(())
}

fn settings(file: Option<&Path>, flags: &Settings) -> Result<Settings> {
    let base = match file {
        Some(f) => Settings::from_file(f)?,
        None => Settings::default(),
    };
    Ok(base.overlay(flags))
}

/// The node a config describes, not started (no handler set).
pub(crate) fn builder(
    file: Option<&Path>,
    flags: &Settings,
) -> Result<(NodeBuilder, por_node::NodeConfig)> {
    let cfg = settings(file, flags)?.resolve()?;
    let key = config::read_key(&cfg.key_file)?;
    let chain = cfg.chain_client()?;
    let b = NodeBuilder::new(key, chain, &cfg.data_dir)
        .listen(&cfg.listen)
        .transport(cfg.transport)
        .engine_config(cfg.engine.clone())
        .chain_poll(cfg.chain_poll)
        .shutdown_grace(cfg.shutdown_grace);
    Ok((b, cfg))
}

/// A handler that answers as its `inner` one would, misbehaving as configured: late,
/// never, or with the data of its file responses corrupted.
struct Misbehaving<H> {
    inner: H,
    how: por_node::config::Misbehaviour,
}

impl<H: por_node::Handler> por_node::Handler for Misbehaving<H> {
    async fn handle(&self, request: por_node::IncomingRequest) -> Vec<u8> {
        let files = is_files_request(&request.body);
        if !self.how.answer {
            // Acked and never answered: the engine's timers, not this task, decide
            // what happens to the request (bounded by max_in_flight).
            return std::future::pending().await;
        }
        let mut body = self.inner.handle(request).await;
        if !self.how.answer_delay.is_zero() {
            tokio::time::sleep(self.how.answer_delay).await;
        }
        // The last byte of a file response is the blob's data (or its last proof
        // hash): either way the client's verification fails.
        if self.how.corrupt_files && files {
            if let Some(last) = body.last_mut() {
                *last ^= 0xff;
            }
        }
        body
    }
}

/// Whether a request body is the file layer's: it starts with its version byte.
fn is_files_request(body: &[u8]) -> bool {
    body.first() == Some(&por_files::proto::VERSION)
}

/// A node with a file store: the file layer's requests are answered from the store,
/// any other body is echoed (as by a node without one), so one host serves both.
struct FilesOrEcho(por_files::FilesHandler);

impl por_node::Handler for FilesOrEcho {
    async fn handle(&self, request: por_node::IncomingRequest) -> Vec<u8> {
        if is_files_request(&request.body) {
            self.0.handle(request).await
        } else {
            request.body
        }
    }
}

/// `por node run`: echoes request bodies, and serves the file store in `serve_files`
/// to the file layer's requests; its control endpoint also runs the file layer's
/// transfers (`files_get`).
pub(crate) async fn node_run(
    file: Option<&Path>,
    flags: &Settings,
    serve_files: Option<&Path>,
) -> Result<()> {
    let (b, cfg) = builder(file, flags)?;
    let bad = cfg.misbehaviour.clone();
    if !bad.is_honest() || cfg.engine.misbehaviour.withhold_late_fees {
        tracing::warn!(
            ?bad,
            withhold_late_fees = cfg.engine.misbehaviour.withhold_late_fees,
            "this node misbehaves by configuration (testnets only)"
        );
    }
    let b = b
        .event_log(cfg.event_log)
        .limits(cfg.limits)
        .transport_config(cfg.transport_config.clone());
    let mut b = match serve_files {
        Some(dir) => b.handler(Misbehaving {
            inner: FilesOrEcho(por_files::FilesHandler::new(por_files::Store::open(dir)?)),
            how: bad,
        }),
        None => b.handler(Misbehaving {
            inner: por_node::handler_fn(|req| async move { req.body }),
            how: bad,
        }),
    };
    if let Some(a) = &cfg.advertise {
        b = b.advertise(a);
    }
    if let Some(m) = &cfg.metrics_listen {
        b = b.metrics(m);
    }
    if let Some(s) = cfg.stake {
        b = b.register(s);
    }
    let node = b.start().await?;
    let token = por_node::control::write_token(&cfg.data_dir)?;
    let control = por_node::control::serve_with(
        &cfg.control,
        node.clone(),
        token,
        cfg.limits.http,
        crate::files::control_ops(),
    )
    .await?;
    let token_file = por_node::control::token_path(&cfg.data_dir);
    tracing::info!(
        id = %por_node::key_hex(&node.id()),
        address = node.address(),
        %control,
        metrics = node.metrics_address().unwrap_or("-"),
        "node running"
    );
    outln!(
        "{}",
        json!({"event": "ready", "id": por_node::key_hex(&node.id()), "address": node.address(),
               "control": control.to_string(), "token_file": token_file,
               "metrics": node.metrics_address()})
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
        _ = term.recv() => tracing::info!("SIGTERM"),
        () = node.stopped() => return Ok(()),
    }
    node.shutdown().await?;
    Ok(())
}

/// The control endpoint and token that `args` name.
fn control_of(args: &ControlArgs) -> Result<(String, String)> {
    let file = match &args.node_config {
        Some(path) => Some(Settings::from_file(path)?),
        None => None,
    };
    let addr = args
        .control
        .clone()
        .or_else(|| file.as_ref().and_then(|s| s.control.clone()))
        .unwrap_or_else(|| "127.0.0.1:7100".into());
    let token_file = match (&args.token_file, &file) {
        (Some(t), _) => t.clone(),
        (None, Some(s)) => por_node::control::token_path(
            &s.data_dir.clone().unwrap_or_else(|| PathBuf::from("data")),
        ),
        (None, None) => bail!(
            "the node's control token: give --token-file (control.token in the node's data \
             directory) or --config (the node's por.toml)"
        ),
    };
    Ok((addr, por_node::control::read_token(&token_file)?))
}

/// Sends one control request and prints the answer.
pub(crate) async fn control(args: &ControlArgs, request: Value) -> Result<()> {
    let (addr, token) = control_of(args)?;
    let v = por_node::control::call(&addr, &token, request).await?;
    outln!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

async fn chain_of(args: &ChainArgs) -> Result<por_chain::AnyChain> {
    let cfg = settings(args.config.as_deref(), &args.settings)?.resolve()?;
    Ok(cfg.chain_client()?)
}

fn terms(
    latency_ms: u64,
    base_cost: &str,
    byte_cost: &str,
    sync_interval_ms: u64,
    sync_phase_ms: u64,
    max_late_fee_rate: &str,
    bandwidth: u64,
) -> Result<EdgeTerms> {
    Ok(EdgeTerms {
        latency_ms,
        base_cost: amount(base_cost, "base-cost")?,
        byte_cost: amount(byte_cost, "byte-cost")?,
        sync_interval_ms,
        sync_phase_ms,
        max_late_fee_rate: amount(max_late_fee_rate, "max-late-fee-rate")?,
        bandwidth,
    })
}

/// The states the running node of `cfg` holds for channel `id` (signed by its peer),
/// asked through its control endpoint with its token.
async fn held_states(cfg: &por_node::NodeConfig, id: u64) -> Result<Vec<SignedUpdate>> {
    let token = por_node::control::read_token(&por_node::control::token_path(&cfg.data_dir))?;
    let request = json!({"op": "close_states", "channel": id});
    let v = por_node::control::call(&cfg.control, &token, request)
        .await
        .context("asking the running node for the states it holds")?;
    let mut out = Vec::new();
    for s in v.as_array().into_iter().flatten() {
        let bytes = s
            .as_str()
            .and_then(por_chain::json::unbase64)
            .context("the node sent a malformed state")?;
        out.push(wire::decode(&bytes).context("the node sent a malformed state")?);
    }
    Ok(out)
}

/// `por channel ...`.
pub(crate) async fn channel(command: ChannelCommand) -> Result<()> {
    match command {
        ChannelCommand::Open {
            chain,
            peer,
            deposit,
            latency_ms,
            base_cost,
            byte_cost,
            sync_interval_ms,
            sync_phase_ms,
            max_late_fee_rate,
            bandwidth,
        } => {
            let c = chain_of(&chain).await?;
            let t = terms(
                latency_ms,
                &base_cost,
                &byte_cost,
                sync_interval_ms,
                sync_phase_ms,
                &max_late_fee_rate,
                bandwidth,
            )?;
            let id = c
                .propose_channel(&peer, &t, amount(&deposit, "deposit")?)
                .await?;
            outln!("{}", json!({"proposed": id.0, "peer": peer}));
        }
        ChannelCommand::Confirm { chain, id, deposit } => {
            let c = chain_of(&chain).await?;
            c.confirm_channel(ChannelId(id), amount(&deposit, "deposit")?)
                .await?;
            outln!("{}", json!({"confirmed": id}));
        }
        ChannelCommand::Cancel { chain, id } => {
            chain_of(&chain)
                .await?
                .cancel_channel(ChannelId(id))
                .await?;
            outln!("{}", json!({"cancelled": id}));
        }
        ChannelCommand::Close {
            chain,
            id,
            force,
            confirm,
            finalize,
        } => {
            let cfg = settings(chain.config.as_deref(), &chain.settings)?.resolve()?;
            let c = cfg.chain_client()?;
            let ch = ChannelId(id);
            if finalize {
                let (a, b) = c.finalize_close(ch).await?;
                outln!(
                    "{}",
                    json!({"finalized": id, "paid_a": a.0.to_string(), "paid_b": b.0.to_string()})
                );
                return Ok(());
            }
            let states = held_states(&cfg, id).await?;
            if force {
                let until = c.start_close(ch, &states).await?;
                outln!(
                    "{}",
                    json!({"closing": id, "challenge_ends_ns": until.to_string()})
                );
            } else if confirm {
                let (a, b) = c.confirm_close(ch, &states).await?;
                outln!(
                    "{}",
                    json!({"closed": id, "paid_a": a.0.to_string(), "paid_b": b.0.to_string()})
                );
            } else {
                c.propose_close(ch, &states).await?;
                outln!("{}", json!({"close_proposed": id}));
            }
        }
        ChannelCommand::Challenge { chain, id } => {
            let cfg = settings(chain.config.as_deref(), &chain.settings)?.resolve()?;
            let states = held_states(&cfg, id).await?;
            if states.is_empty() {
                bail!("channel {id}: the node holds no state signed by its peer to challenge with");
            }
            cfg.chain_client()?
                .challenge(ChannelId(id), &states)
                .await
                .with_context(|| format!("challenging the close of channel {id}"))?;
            outln!("{}", json!({"challenged": id, "states": states.len()}));
        }
        ChannelCommand::List { chain } => {
            let c = chain_of(&chain).await?;
            let list = c.channels_of(c.account()).await?;
            outln!("{}", serde_json::to_string_pretty(&list)?);
        }
    }
    Ok(())
}

/// `por stake ...`.
pub(crate) async fn stake(command: StakeCommand) -> Result<()> {
    match command {
        StakeCommand::Add { chain, amount: a } => {
            let c = chain_of(&chain).await?;
            c.add_stake(amount(&a, "amount")?)
                .await
                .with_context(|| format!("adding stake for {}", c.account()))?;
            outln!("{}", json!({"stake_added": a, "account": c.account()}));
        }
        StakeCommand::Unstake { chain, amount: a } => {
            let c = chain_of(&chain).await?;
            c.unstake(amount(&a, "amount")?)
                .await
                .with_context(|| format!("unstaking for {}", c.account()))?;
            outln!("{}", json!({"unbonding": a, "account": c.account()}));
        }
        StakeCommand::Withdraw { chain } => {
            let c = chain_of(&chain).await?;
            let sent = c
                .withdraw()
                .await
                .with_context(|| format!("withdrawing for {}", c.account()))?;
            outln!(
                "{}",
                json!({"withdrawn": sent.0.to_string(), "account": c.account()})
            );
        }
    }
    Ok(())
}

/// `por topology`.
pub(crate) async fn topology(args: &ChainArgs) -> Result<()> {
    let c = chain_of(args).await?;
    let snap = c.snapshot().await?;
    let center = c.view("get_center", json!({})).await?;
    let nodes: Vec<Value> = snap
        .nodes
        .iter()
        .map(|n| json!({"account": n.account, "key": por_node::key_hex(&n.key),
            "stake": n.stake.0.to_string(), "addresses": n.addresses, "disconnected": n.disconnected}))
        .collect();
    let edges: Vec<Value> = snap
        .edges
        .iter()
        .map(|e| {
            json!({"id": e.id.0, "a": por_node::key_hex(&e.a), "b": por_node::key_hex(&e.b),
            "latency_ms": e.terms.latency_ms, "base_cost": e.terms.base_cost.0.to_string(),
            "byte_cost": e.terms.byte_cost.0.to_string()})
        })
        .collect();
    outln!(
        "{}",
        serde_json::to_string_pretty(&json!({"nodes": nodes, "edges": edges, "center": center}))?
    );
    Ok(())
}

/// `por contract ...`.
pub(crate) async fn contract(command: ContractCommand) -> Result<()> {
    match command {
        ContractCommand::Deploy {
            near_rpc,
            near_key_file,
            contract,
            network,
            config,
            initial_balance,
        } => {
            let network = network.unwrap_or_else(|| match near_rpc.as_str() {
                "sandbox" | "localnet" | "testnet" | "mainnet" => near_rpc.clone(),
                _ => "custom".into(),
            });
            let mut cfg = match &config {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    serde_json::from_str::<Value>(&text)
                        .with_context(|| format!("{}: not JSON", path.display()))?
                }
                None => por_chain::local::dev_config(),
            };
            let Some(fields) = cfg.as_object_mut() else {
                bail!("the contract configuration must be a JSON object");
            };
            fields.insert("network".into(), json!(network));
            let client = por_chain::NearClient::new(
                &por_chain::NearConfig {
                    rpc_url: por_chain::NearConfig::endpoint(&near_rpc),
                    contract: contract.clone(),
                },
                &near_key_file,
            )?;
            let done = client
                .deploy(
                    por_chain::wasm::CONTRACT,
                    &cfg,
                    amount(&initial_balance, "initial-balance")?.0,
                )
                .await
                .with_context(|| format!("deploying the contract to {contract}"))?;
            outln!(
                "{}",
                json!({"deployed": done.contract, "created": done.created,
                       "network": network, "deployment": done.deployment,
                       "code_sha256": por_chain::wasm::CONTRACT_SHA256})
            );
        }
    }
    Ok(())
}

/// `por chain ...`.
pub(crate) async fn chain(command: ChainCommand) -> Result<()> {
    match command {
        ChainCommand::Serve {
            path,
            listen,
            allow_remote,
            faucet,
        } => {
            let addr: std::net::SocketAddr = listen
                .parse()
                .with_context(|| format!("--listen {listen:?}"))?;
            if !addr.ip().is_loopback() && !allow_remote {
                bail!("--listen {listen}: not loopback; pass --allow-remote to serve other hosts (calls are still taken only signed by the calling account's key)");
            }
            let chain = config::open_embedded(&path)?;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {listen}"))?;
            let bound = listener.local_addr()?;
            outln!(
                "{}",
                json!({"event": "ready", "chain": bound.to_string(), "path": path.display().to_string(),
                       "faucet": faucet})
            );
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .context("installing the SIGTERM handler")?;
            let options = por_chain::serve::ServeOptions { faucet };
            por_chain::serve::serve(chain, listener, options, async move {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            })
            .await?;
        }
        ChainCommand::Fund {
            chain_addr,
            key_file,
            account,
            amount: a,
        } => {
            let addr = chain_addr
                .parse()
                .with_context(|| format!("--chain-addr {chain_addr:?}"))?;
            let key = config::read_key(&key_file)?;
            let client = por_chain::RemoteClient::new(addr, &account);
            let balance = client
                .fund(&account, &key.id(), amount(&a, "amount")?.0)
                .await
                .with_context(|| format!("funding {account}"))?;
            outln!(
                "{}",
                json!({"account": account, "balance": balance.to_string()})
            );
        }
    }
    Ok(())
}
