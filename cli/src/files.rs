//! `por files ...`: the file-sharing layer's command line. `add`, `ls` and `rm` work
//! on a store directly; `get`, `quote` and `gateway` start the node of a config (the
//! client side of the transfers) for as long as they run.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use por_files::progress::{Bars, JsonLines, Progress, Silent};
use por_files::{transfer, Root, Store, Ticket, TransferOptions};
use por_protocol::{Amount, NodeId};
use serde_json::json;

/// `por files`.
#[derive(clap::Subcommand, Debug)]
pub(crate) enum FilesCommand {
    /// Add a file or a directory to a store; prints its ticket.
    Add {
        /// The store's directory.
        #[arg(long, default_value = "por-files")]
        store: PathBuf,
        /// The node serving the store (`por node run --serve-files`): its config,
        /// for the provider key the ticket names.
        #[arg(long = "config", env = "POR_CONFIG")]
        config: Option<PathBuf>,
        /// The provider key (64 hex digits), instead of a config's; repeatable.
        #[arg(long)]
        provider: Vec<String>,
        /// What to add.
        path: PathBuf,
    },
    /// What a store holds.
    Ls {
        /// The store's directory.
        #[arg(long, default_value = "por-files")]
        store: PathBuf,
    },
    /// Remove an added root (and the blobs only it kept).
    Rm {
        /// The store's directory.
        #[arg(long, default_value = "por-files")]
        store: PathBuf,
        /// The root.
        root: String,
    },
    /// Fetch what a ticket names through the config's node.
    Get {
        /// The client node's config.
        #[arg(long = "config", env = "POR_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        settings: Box<por_node::Settings>,
        /// The ticket (`por files add` printed it).
        ticket: String,
        /// Where to write the file or directory (must not exist, unless resuming).
        #[arg(short, long)]
        output: PathBuf,
        /// The most to spend, in yoctoNEAR.
        #[arg(long)]
        spend_cap: Option<String>,
        /// Requests in flight per provider.
        #[arg(long, default_value_t = 4)]
        window: usize,
        /// How long past its deadline a piece is awaited (earning late fees) before it
        /// is asked for again.
        #[arg(long, default_value_t = TransferOptions::default().late_after_ms)]
        late_after_ms: u64,
        /// No progress bars.
        #[arg(long)]
        no_progress: bool,
        /// Progress as JSON lines on stdout.
        #[arg(long)]
        json: bool,
    },
    /// The exact cost and deadline of fetching a ticket's blob (or a byte range of
    /// it) before anything is spent.
    Quote {
        /// The client node's config.
        #[arg(long = "config", env = "POR_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        settings: Box<por_node::Settings>,
        /// The ticket.
        ticket: String,
        /// A byte range `start-end` (end exclusive) instead of the whole blob.
        #[arg(long)]
        range: Option<String>,
    },
    /// Serve `GET /<root>[/<path>]` over HTTP, fetched through PoR from the providers.
    // `--listen` is the HTTP address here; the node's own is `--node-listen`.
    #[command(mut_arg("listen", |a| a.long("node-listen").env("POR_LISTEN")))]
    Gateway {
        /// The client node's config.
        #[arg(long = "config", env = "POR_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        settings: Box<por_node::Settings>,
        /// The HTTP address to listen on.
        #[arg(id = "http", long = "listen", default_value = "127.0.0.1:8080")]
        http: String,
        /// Provider keys (64 hex digits) to fetch from; repeatable.
        #[arg(long, required = true)]
        provider: Vec<String>,
    },
}

fn key(s: &str) -> Result<NodeId> {
    por_node::parse_key(s).with_context(|| format!("{s:?} is not a node key (64 hex digits)"))
}

async fn start(
    config: Option<&Path>,
    settings: &por_node::Settings,
) -> Result<por_node::NodeHandle> {
    let (b, _) = crate::commands::builder(config, settings)?;
    let node = b.start().await?;
    // Routes appear once the chain's topology is read and the channels are up.
    for _ in 0..100 {
        let st = node.status().await?;
        if !st.channels.is_empty() && st.channels.iter().any(|c| c.connected) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Ok(node)
}

async fn ctrl_c() {
    let _ = tokio::signal::ctrl_c().await;
}

/// Runs a `por files` command.
pub(crate) fn run(command: FilesCommand) -> Result<()> {
    match command {
        FilesCommand::Add {
            store,
            config,
            provider,
            path,
        } => {
            let store = Store::open(&store)?;
            let mut providers: Vec<NodeId> =
                provider.iter().map(|p| key(p)).collect::<Result<_>>()?;
            if let Some(c) = config {
                let cfg = por_node::Settings::from_file(&c)?.resolve()?;
                providers.push(por_node::config::read_key(&cfg.key_file)?.id());
            }
            if providers.is_empty() {
                anyhow::bail!(
                    "name the providing node: --config <its node.toml> or --provider <key>"
                );
            }
            let tag = store.add(&path)?;
            let ticket = Ticket {
                kind: tag.kind.into(),
                root: tag.root,
                size: tag.size,
                providers,
            };
            outln!(
                "{}",
                json!({"ticket": ticket.to_string(), "root": tag.root.to_hex(), "size": tag.size,
                       "kind": tag.kind, "name": tag.name, "files": tag.children.len()})
            );
        }
        FilesCommand::Ls { store } => {
            for t in Store::open(&store)?.ls()? {
                outln!(
                    "{}",
                    json!({"root": t.root.to_hex(), "kind": t.kind, "name": t.name, "size": t.size,
                           "files": t.children.len()})
                );
            }
        }
        FilesCommand::Rm { store, root } => {
            let t = Store::open(&store)?.rm(&Root::parse(&root)?)?;
            outln!("{}", json!({"removed": t.root.to_hex(), "name": t.name}));
        }
        FilesCommand::Get {
            config,
            settings,
            ticket,
            output,
            spend_cap,
            window,
            late_after_ms,
            no_progress,
            json,
        } => {
            let ticket: Ticket = ticket.parse()?;
            let cap = spend_cap
                .map(|c| c.parse::<u128>().map(Amount))
                .transpose()
                .context("--spend-cap: yoctoNEAR, a whole number")?;
            let progress: Box<dyn Progress> = match (json, no_progress) {
                (true, _) => Box::new(JsonLines),
                (false, true) => Box::new(Silent),
                (false, false) => Box::new(Bars::default()),
            };
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async {
                let node = start(config.as_deref(), &settings).await?;
                let options = TransferOptions {
                    window,
                    spend_cap: cap,
                    late_after_ms,
                    ..TransferOptions::default()
                };
                let stop = futures_shared(ctrl_c());
                let r =
                    transfer::get(&node, &ticket, &output, options, progress.as_ref(), stop).await;
                node.shutdown().await?;
                let r = r?;
                outln!(
                    "{}",
                    json!({"event": "done", "output": output, "bytes": r.bytes_fetched,
                           "bytes_requested": r.bytes_requested,
                           "wasted_pieces": r.wasted_pieces,
                           "resumed_pieces": r.resumed_pieces, "requests": r.requests,
                           "spent": r.spent.0.to_string(), "evidence": r.evidence})
                );
                Ok::<_, anyhow::Error>(())
            })?;
        }
        FilesCommand::Quote {
            config,
            settings,
            ticket,
            range,
        } => {
            let ticket: Ticket = ticket.parse()?;
            let range = match range {
                Some(r) => {
                    let (a, b) = r.split_once('-').context("--range start-end")?;
                    (
                        a.parse().context("--range start")?,
                        b.parse().context("--range end")?,
                    )
                }
                None => (0, ticket.size),
            };
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async {
                let node = start(config.as_deref(), &settings).await?;
                let q = transfer::quote(
                    &node,
                    ticket.root,
                    ticket.size,
                    &ticket.providers,
                    range,
                    60_000,
                )
                .await;
                node.shutdown().await?;
                let q = q?;
                outln!(
                    "{}",
                    json!({"provider": por_node::key_hex(&q.provider), "requests": q.requests,
                           "cost": q.cost.0.to_string(), "rtt_ms": q.rtt_ms,
                           "hops": q.route.channels.len()})
                );
                Ok::<_, anyhow::Error>(())
            })?;
        }
        FilesCommand::Gateway {
            config,
            settings,
            http,
            provider,
        } => {
            let providers: Vec<NodeId> = provider.iter().map(|p| key(p)).collect::<Result<_>>()?;
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async {
                let node = start(config.as_deref(), &settings).await?;
                let serve = por_files::gateway::serve(
                    node.clone(),
                    providers,
                    TransferOptions::default(),
                    &http,
                    |a| {
                        outln!(
                            "{}",
                            json!({"event": "ready", "gateway": format!("http://{a}")})
                        );
                    },
                );
                tokio::select! {
                    r = serve => r?,
                    () = ctrl_c() => {}
                }
                node.shutdown().await?;
                Ok::<_, anyhow::Error>(())
            })?;
        }
    }
    Ok(())
}

/// A future that can be cloned (each collection entry's transfer watches it).
fn futures_shared(
    f: impl std::future::Future<Output = ()> + Send + 'static,
) -> impl std::future::Future<Output = ()> + Clone {
    futures::FutureExt::shared(Box::pin(f))
}

/// The file layer's ops on a running node's control endpoint (`por node run`):
/// `files_get` fetches a ticket through the node, as `por files get` does through
/// a node of its own. `{"op": "files_get", "ticket": ..., "output": path, and
/// optionally "spend_cap" (yoctoNEAR, a string), "window"}`; answered with the
/// transfer's report once it is done. A request cut off (its connection closed)
/// stops the transfer where it is; the same request again resumes it.
pub(crate) fn control_ops() -> por_node::control::ExtraOps {
    por_node::control::ExtraOps::default().with(
        "files_get",
        std::sync::Arc::new(|node: por_node::NodeHandle, req: serde_json::Value| {
            futures::FutureExt::boxed(files_get(node, req))
        }),
    )
}

async fn files_get(
    node: por_node::NodeHandle,
    req: serde_json::Value,
) -> Result<serde_json::Value, String> {
    let ticket: Ticket = req["ticket"]
        .as_str()
        .ok_or("\"ticket\": missing (what `por files add` printed)")?
        .parse()
        .map_err(|e| format!("\"ticket\": {e}"))?;
    let output = PathBuf::from(
        req["output"]
            .as_str()
            .ok_or("\"output\": missing (where to write what the ticket names)")?,
    );
    let spend_cap = match &req["spend_cap"] {
        serde_json::Value::Null => None,
        v => {
            Some(Amount(v.as_str().and_then(|s| s.parse().ok()).ok_or(
                "\"spend_cap\": yoctoNEAR, a whole number in a string",
            )?))
        }
    };
    let mut options = TransferOptions {
        spend_cap,
        ..TransferOptions::default()
    };
    if let Some(w) = req["window"].as_u64() {
        options.window = usize::try_from(w)
            .ok()
            .filter(|w| (1..=64).contains(w))
            .ok_or("\"window\": 1 to 64 requests in flight per provider")?;
    }
    let started = std::time::Instant::now();
    let r = transfer::get(
        &node,
        &ticket,
        &output,
        options,
        &Silent,
        std::future::pending::<()>(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let providers: serde_json::Map<String, serde_json::Value> = r
        .providers
        .iter()
        .map(|(id, p)| {
            (
                por_node::key_hex(id),
                json!({"pieces": p.pieces, "bytes": p.bytes, "spent": p.spent.0.to_string(),
                       "failures": p.failures, "deviated": p.deviated}),
            )
        })
        .collect();
    Ok(
        json!({"root": ticket.root.to_string(), "size": r.size, "bytes": r.bytes_fetched,
              "bytes_requested": r.bytes_requested, "requests": r.requests,
              "wasted_pieces": r.wasted_pieces, "resumed_pieces": r.resumed_pieces,
              "spent": r.spent.0.to_string(), "evidence": r.evidence,
              "providers": providers, "secs": started.elapsed().as_secs_f64()}),
    )
}
