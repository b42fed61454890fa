//! `por devnet run <scenario>`: one of the simulator's scenario files run twice, in the
//! simulator (virtual time) and on a devnet of real processes (real time, emulated
//! links), and the two timelines set side by side: every event matched by node, kind,
//! peer and request with both times, what only one of them has, each request's
//! outcome and each node's balance in both.
//!
//! The devnet: one host per scenario node (`h01` is the first), each node configured
//! with the scenario's policies (sever policy, proof forwarding, §5.4 heuristic,
//! withheld late fees, answering late or not at all), the scenario's channels with
//! their terms, and each channel's emulated link at the latency the scenario gives it
//! (`actual_latency_ms`, else the promise) times `--link-percent`, without jitter or
//! loss. Requests leave at their times along their routes; faults happen at theirs:
//! `offline` is a kill -9 (and a restart from the node's files at `until_ms`; a real
//! node cannot resume from memory), `drop` and `delay` change the link, `sever` severs.
//! Deposits below the chain's minimum are raised to [`super::DEPOSIT_NEAR`] NEAR
//! (balances are compared as changes, so the size does not show).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;
use por_protocol::{Amount, ProofForwarding, SeverPolicy};
use por_testnet::scenario::{FaultSpec, LoadSpec};
use por_testnet::{Record, Scenario, Sim};
use serde_json::{json, Value};

use super::net::{Isolation, Net};
use super::state::State;
use super::{control, files, links, Plan, PlannedChannel};

/// Engine events each node keeps for the run.
const EVENT_LOG: &str = "65536";
/// How often the runner reads every node's events.
const POLL: Duration = Duration::from_millis(250);
/// Time from the devnet being up to the scenario's 0 ms.
const LEAD_MS: u64 = 1_500;
/// Kinds only the simulator records (its own bookkeeping, not engine events).
const SIM_ONLY: [&str; 3] = ["node_offline", "node_online", "chain_sever_final"];

/// What `por devnet run` was asked.
pub(crate) struct RunOptions {
    /// The scenario file.
    pub(crate) scenario: PathBuf,
    /// `tcp` or `quic`.
    pub(crate) transport: String,
    /// Links at this percentage of the scenario's latencies.
    pub(crate) link_percent: u64,
    /// Namespaces and links are named after this.
    pub(crate) name: String,
    /// The devnet's directory.
    pub(crate) dir: PathBuf,
    /// Leave the devnet up afterwards.
    pub(crate) keep: bool,
}

fn policy(p: SeverPolicy) -> String {
    match p {
        SeverPolicy::Immediate => "immediate".into(),
        SeverPolicy::Never => "never".into(),
        SeverPolicy::WaitSyncs(n) => format!("wait_syncs:{n}"),
        SeverPolicy::WaitMs(n) => format!("wait_ms:{n}"),
    }
}

/// The devnet a scenario describes.
fn plan(s: &Scenario, link_percent: u64) -> Result<Plan> {
    let at = |name: &str| index(s, name);
    let mut p = Plan::default();
    for n in &s.nodes {
        let mut f: Vec<String> = vec![
            "--event-log".into(),
            EVENT_LOG.into(),
            // A real clock is not exact: some slack for late-fee payments, as the
            // demo gives its nodes.
            "--fee-tolerance-ms".into(),
            "50".into(),
            "--sever-policy".into(),
            policy(n.sever),
            "--forward-proofs".into(),
            match n.forward_proofs {
                ProofForwarding::Immediate => "immediate".into(),
                ProofForwarding::NextSync => "next_sync".into(),
            },
            "--heuristic-window-ms".into(),
            n.heuristic_window_ms.unwrap_or(0).to_string(),
        ];
        if n.withhold_late_fees {
            f.extend(["--withhold-late-fees".into(), "true".into()]);
        }
        if !n.respond {
            f.extend(["--answer".into(), "false".into()]);
        }
        if n.response_delay_ms > 0 {
            f.extend(["--answer-delay-ms".into(), n.response_delay_ms.to_string()]);
        }
        p.hosts.push(f);
    }
    let floor = Amount(super::DEPOSIT_NEAR * por_chain::local::NEAR);
    for e in &s.edges {
        let (a, b) = (at(&e.a)?, at(&e.b)?);
        p.channels.push(PlannedChannel {
            a,
            b,
            terms: Some(e.terms()),
            deposit_a: Amount::from(e.deposit_a).max(floor),
            deposit_b: Amount::from(e.deposit_b).max(floor),
        });
        let one_way = e.actual_latency_ms.unwrap_or(e.latency_ms) * link_percent / 100;
        let link = links::Link {
            latency_ms: u32::try_from(one_way).context("a link's latency")?,
            jitter_ms: 0,
            loss: 0.0,
            bandwidth_bps: e.bandwidth.saturating_mul(8).min(10_000_000_000),
            down: false,
        };
        for (x, y) in [(a, b), (b, a)] {
            p.links.insert(
                format!("{}>{}", Net::host_name(x + 1), Net::host_name(y + 1)),
                link,
            );
        }
    }
    Ok(p)
}

/// Something the runner does at a scenario time.
#[derive(Clone, Debug)]
enum Action {
    /// Send request `i` of the scenario.
    Request(usize),
    /// kill -9 a node.
    Kill(usize),
    /// Start a killed node again.
    Restart(usize),
    /// Set one direction of a link (`None`: back to the scenario's).
    Link {
        from: usize,
        to: usize,
        loss: Option<f64>,
        extra_ms: Option<u64>,
    },
    /// A node severs its channel with a peer.
    Sever(usize, usize),
    /// A transfer of file load `k` starts.
    Files(usize),
}

/// A link `(from, to)` changed to `(loss, extra_ms)` at `from_ms`, and back to the
/// scenario's at `until_ms`.
fn link_change(
    out: &mut Vec<(u64, Action)>,
    (from, to): (usize, usize),
    (loss, extra_ms): (Option<f64>, Option<u64>),
    from_ms: u64,
    until_ms: Option<u64>,
) {
    out.push((
        from_ms,
        Action::Link {
            from,
            to,
            loss,
            extra_ms,
        },
    ));
    if let Some(u) = until_ms {
        out.push((
            u,
            Action::Link {
                from,
                to,
                loss: None,
                extra_ms: None,
            },
        ));
    }
}

fn schedule(s: &Scenario) -> Result<Vec<(u64, Action)>> {
    let at = |name: &str| index(s, name);
    let mut out: Vec<(u64, Action)> = s
        .requests
        .iter()
        .enumerate()
        .map(|(i, r)| (r.at_ms, Action::Request(i)))
        .collect();
    for f in &s.faults {
        match f {
            FaultSpec::Offline {
                node,
                from_ms,
                until_ms,
                ..
            } => {
                out.push((*from_ms, Action::Kill(at(node)?)));
                if let Some(u) = until_ms {
                    out.push((*u, Action::Restart(at(node)?)));
                }
            }
            FaultSpec::Drop {
                from,
                to,
                probability,
                from_ms,
                until_ms,
            } => {
                let change = (Some(*probability), None);
                link_change(&mut out, (at(from)?, at(to)?), change, *from_ms, *until_ms);
            }
            FaultSpec::Delay {
                from,
                to,
                extra_ms,
                from_ms,
                until_ms,
            } => {
                let change = (None, Some(*extra_ms));
                link_change(&mut out, (at(from)?, at(to)?), change, *from_ms, *until_ms);
            }
            FaultSpec::Sever { node, peer, at_ms } => {
                out.push((*at_ms, Action::Sever(at(node)?, at(peer)?)));
            }
        }
    }
    for (at_ms, k) in s.file_transfers()? {
        out.push((at_ms, Action::Files(k)));
    }
    // Kills first at equal times: a node offline from 0 is down before anything is sent.
    out.sort_by_key(|(t, a)| (*t, !matches!(a, Action::Kill(_))));
    Ok(out)
}

/// What the run collects as it goes.
#[derive(Default)]
struct Collected {
    /// Per host: events read so far and the next sequence number.
    events: Vec<(Vec<Value>, u64)>,
    /// Request id (as printed) → scenario label.
    labels: HashMap<String, String>,
    /// Per request label: the real outcome.
    outcomes: BTreeMap<String, Value>,
    /// What the runner did, when.
    actions: Vec<Value>,
    /// The file loads' transfers, as they finished.
    transfers: Vec<Value>,
}

fn now_ms() -> u64 {
    por_node::map::now_ms()
}

/// Reads every running host's new events.
async fn poll_events(st: &State, got: &Mutex<Collected>) {
    for (i, h) in st.hosts.iter().enumerate() {
        if !h.node.alive() {
            continue;
        }
        let since = got.lock().map_or(0, |g| g.events[i].1);
        let Ok(Ok(v)) = tokio::time::timeout(
            Duration::from_secs(2),
            control(h, json!({"op": "events", "since": since})),
        )
        .await
        else {
            continue;
        };
        if let Ok(mut g) = got.lock() {
            let slot = &mut g.events[i];
            slot.0
                .extend(v["events"].as_array().into_iter().flatten().cloned());
            slot.1 = v["next"].as_u64().unwrap_or(slot.1);
        }
    }
}

async fn act(
    dir: &Path,
    s: &Scenario,
    action: &Action,
    got: &Arc<Mutex<Collected>>,
    t0: u64,
    transfers: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Result<Value> {
    let mut st = State::load(dir)?;
    let name = |i: usize| s.nodes[i].name.clone();
    Ok(match action {
        Action::Request(i) => {
            let r = &s.requests[*i];
            let client = st.host(&Net::host_name(index(s, &r.client)? + 1))?.clone();
            let id_of = |n: &str| -> Result<String> {
                Ok(st.host(&Net::host_name(index(s, n)? + 1))?.id().to_string())
            };
            let mut req = json!({"op": "request", "server": id_of(&r.server)?, "body": r.body,
                "late_fee_rate": r.late_fee_rate.0.to_string(),
                "response_limit": r.response_limit.unwrap_or(r.body.len() as u64)});
            if let Some(route) = &r.route {
                req["route"] = route
                    .iter()
                    .map(|n| id_of(n).map(Value::String))
                    .collect::<Result<Vec<_>>>()?
                    .into();
            }
            if let Some(m) = r.max_rtt_ms {
                req["max_rtt_ms"] = m.into();
            }
            let label = format!("r{}", i + 1);
            let got = got.clone();
            tokio::spawn(async move {
                let outcome = control(&client, req)
                    .await
                    .unwrap_or_else(|e| json!({"kind": "refused", "error": format!("{e:#}")}));
                if let Ok(mut g) = got.lock() {
                    if let Some(id) = outcome["request"].as_str() {
                        g.labels.insert(id.to_string(), label.clone());
                    }
                    let mut o = outcome;
                    if let Value::Object(m) = &mut o {
                        m.remove("body");
                        m.insert("at_ms".into(), json!(now_ms().saturating_sub(t0)));
                    }
                    g.outcomes.insert(label, o);
                }
            });
            json!({"request": format!("r{}", i + 1), "from": r.client, "to": r.server})
        }
        Action::Kill(i) => {
            let h = st.host(&Net::host_name(i + 1))?;
            h.node.stop(Signal::SIGKILL, Duration::from_secs(5));
            json!({"killed": name(*i)})
        }
        Action::Restart(i) => {
            let h = st.host_mut(&Net::host_name(i + 1))?;
            h.node = h.node.restart()?;
            st.save()?;
            // A new process: its event log starts again from 0.
            if let Ok(mut g) = got.lock() {
                g.events[*i].1 = 0;
            }
            json!({"restarted": name(*i)})
        }
        Action::Link {
            from,
            to,
            loss,
            extra_ms,
        } => {
            let mut l = links::Links::load(dir)?;
            let key = format!("{}>{}", Net::host_name(from + 1), Net::host_name(to + 1));
            let base = plan(s, 100)?
                .links
                .get(&key)
                .copied()
                .with_context(|| format!("no channel from {} to {}", name(*from), name(*to)))?;
            let mut link = l.overrides.get(&key).copied().unwrap_or(base);
            link.loss = loss.unwrap_or(0.0);
            link.latency_ms = match extra_ms {
                Some(x) => link
                    .latency_ms
                    .saturating_add(u32::try_from(*x).unwrap_or(u32::MAX)),
                None => base.latency_ms,
            };
            l.overrides.insert(key, link);
            l.save(dir)?;
            json!({"link": [name(*from), name(*to)], "now": link})
        }
        Action::Sever(a, b) => {
            let (ha, hb) = (Net::host_name(a + 1), Net::host_name(b + 1));
            let id = st.channel_between(&ha, &hb)?;
            control(st.host(&ha)?, json!({"op": "sever", "channel": id})).await?;
            json!({"severed": id, "by": name(*a)})
        }
        Action::Files(k) => {
            let Some(LoadSpec::Files {
                client,
                providers,
                size_bytes,
                window,
                ..
            }) = s.loads.get(*k)
            else {
                bail!("no file load {}", k + 1);
            };
            let host = |n: &str| index(s, n).map(|i| Net::host_name(i + 1));
            let providers: Vec<String> =
                providers.iter().map(|p| host(p)).collect::<Result<_>>()?;
            let fetcher = files::Fetcher::new(
                &st,
                &host(client)?,
                &providers,
                *size_bytes,
                window.unwrap_or(files::DEFAULT_WINDOW),
            )?;
            let (got, load, started) = (got.clone(), k + 1, now_ms().saturating_sub(t0));
            let (client, named) = (client.clone(), client.clone());
            transfers.push(tokio::spawn(async move {
                let mut record = fetcher
                    .transfer()
                    .await
                    .unwrap_or_else(|e| json!({"error": format!("{e:#}")}));
                if let Value::Object(m) = &mut record {
                    m.insert("load".into(), json!(load));
                    m.insert("client".into(), json!(client));
                    m.insert("t_ms".into(), json!(started));
                    m.insert("done_ms".into(), json!(now_ms().saturating_sub(t0)));
                }
                if let Ok(mut g) = got.lock() {
                    g.transfers.push(record);
                }
            }));
            json!({"transfer": load, "from": named, "size": size_bytes})
        }
    })
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a.max(1)
    } else {
        gcd(b, a % b)
    }
}

fn index(s: &Scenario, name: &str) -> Result<usize> {
    s.nodes
        .iter()
        .position(|n| n.name == name)
        .with_context(|| format!("the scenario names no node {name:?}"))
}

/// A real event as the simulator's [`Record`] would have it, by scenario names.
fn record_of(
    e: &Value,
    node: &str,
    names: &HashMap<String, String>,
    labels: &HashMap<String, String>,
    t0: u64,
) -> Value {
    let at = e["at_ms"].as_u64().unwrap_or(0);
    let name = |k: &Value| {
        k.as_str()
            .map(|k| names.get(k).cloned().unwrap_or_else(|| k.to_string()))
    };
    let label = |k: &Value| {
        k.as_str()
            .map(|k| labels.get(k).cloned().unwrap_or_else(|| k.to_string()))
    };
    json!({"t_ms": i128::from(at) - i128::from(t0), "node": node, "kind": e["kind"],
           "peer": name(&e["peer"]), "request": label(&e["request"]),
           "amount": e["amount"], "total": e["total"], "ms": e["ms"], "detail": e["detail"]})
}

/// The simulator's record in the same shape.
fn sim_json(r: &Record) -> Value {
    json!({"t_ms": r.t_ms, "node": r.node, "kind": r.kind, "peer": r.peer, "request": r.request,
           "amount": r.amount.map(|a| a.to_string()), "total": r.total.map(|a| a.to_string()),
           "ms": r.ms, "detail": r.detail})
}

fn same_event(a: &Value, b: &Value) -> bool {
    ["node", "kind", "peer", "request"]
        .iter()
        .all(|k| a[k] == b[k])
}

/// Runs the scenario both ways and compares; the comparison as JSON.
pub(crate) async fn run(o: RunOptions) -> Result<Value> {
    let text = std::fs::read_to_string(&o.scenario)
        .with_context(|| format!("reading {}", o.scenario.display()))?;
    let scenario = Scenario::from_toml(&text)
        .with_context(|| format!("{} is not a scenario", o.scenario.display()))?
        .expand_loads()
        .with_context(|| format!("{}'s loads", o.scenario.display()))?;
    if !(1..=250).contains(&scenario.nodes.len()) {
        bail!(
            "a devnet runs 1 to 250 nodes; the scenario has {}",
            scenario.nodes.len()
        );
    }
    if !(10..=1000).contains(&o.link_percent) {
        bail!("--link-percent {}: 10 to 1000", o.link_percent);
    }
    let sim = Sim::new(scenario.clone())
        .map_err(|e| anyhow::anyhow!("the simulator refuses the scenario: {e}"))?
        .run();
    let p = plan(&scenario, o.link_percent)?;
    // The scenario's latencies must hold on its links: emulated links, in namespaces.
    if !nix::unistd::Uid::effective().is_root() {
        bail!("por devnet run needs network namespaces and emulated links: run it as root");
    }
    // A directory a finished run left (its logs) is made anew; one with a devnet up
    // is refused by `up`; anything else is not ours to remove.
    if o.dir.exists() && !State::path(&o.dir).exists() {
        let ours = std::fs::read_dir(&o.dir)?.filter_map(Result::ok).all(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n == "hosts"
                || n.starts_with("chain.")
                || n.starts_with("links.")
                || n == "outcomes.jsonl"
                || n == files::TRANSFERS_FILE
                || n == "files-src"
        });
        if !ours {
            bail!(
                "{} holds files that are not a devnet's: choose another --dir",
                o.dir.display()
            );
        }
        std::fs::remove_dir_all(&o.dir).with_context(|| format!("clearing {}", o.dir.display()))?;
    }
    super::up(
        &p,
        &o.transport,
        Isolation::Netns,
        Some(true),
        &o.name,
        &o.dir,
    )
    .await?;
    let result = drive(&o, &scenario, &sim).await;
    if !o.keep {
        super::down(&o.dir, Some(&o.name));
    }
    result
}

async fn drive(o: &RunOptions, scenario: &Scenario, sim: &por_testnet::Report) -> Result<Value> {
    let dir = o.dir.canonicalize()?;
    let st = State::load(&dir)?;
    let names: HashMap<String, String> = st
        .hosts
        .iter()
        .zip(&scenario.nodes)
        .map(|(h, n)| (h.id().to_string(), n.name.clone()))
        .collect();
    let got = Arc::new(Mutex::new(Collected {
        events: vec![(Vec::new(), 0); st.hosts.len()],
        ..Collected::default()
    }));
    // Events from before the scenario's start (connections, first syncs) are read
    // and left out.
    poll_events(&st, &got).await;
    // Syncs happen at `phase + k * interval` on every node's clock (Unix ms): the
    // scenario's 0 ms is put on a multiple of every interval, so that its syncs fall
    // where the simulator has them.
    let period = scenario
        .edges
        .iter()
        .map(|e| e.sync_interval_ms.max(1))
        .fold(1u64, |l, i| (l / gcd(l, i)).saturating_mul(i).min(60_000));
    let t0 = (now_ms() + LEAD_MS).div_ceil(period) * period;
    let end = t0 + scenario.duration_ms;
    let mut transfers = Vec::new();
    for (at, action) in schedule(scenario)? {
        loop {
            let now = now_ms();
            if now >= t0 + at {
                break;
            }
            tokio::time::sleep(Duration::from_millis(
                (t0 + at - now).min(POLL.as_millis() as u64),
            ))
            .await;
            if now_ms() < t0 + at {
                poll_events(&State::load(&dir)?, &got).await;
            }
        }
        let done = act(&dir, scenario, &action, &got, t0, &mut transfers).await?;
        if let Ok(mut g) = got.lock() {
            g.actions
                .push(json!({"t_ms": now_ms().saturating_sub(t0), "did": done}));
        }
    }
    while now_ms() < end + 1_000 {
        tokio::time::sleep(POLL).await;
        poll_events(&State::load(&dir)?, &got).await;
    }
    // Transfers still going at the scenario's end are waited for (each is bounded by
    // the node's own request deadlines), then their events read.
    if !transfers.is_empty() {
        for t in transfers {
            if let Err(e) = t.await {
                tracing::warn!(error = %e, "a transfer task ended abnormally");
            }
        }
        poll_events(&State::load(&dir)?, &got).await;
    }
    let st = State::load(&dir)?;
    // What was collected, taken out (a request still unanswered adds nothing now).
    let got = std::mem::take(
        &mut *got
            .lock()
            .map_err(|_| anyhow::anyhow!("the run's record is poisoned"))?,
    );
    let mut real: Vec<Value> = Vec::new();
    for (i, (events, _)) in got.events.iter().enumerate() {
        for e in events {
            let r = record_of(e, &scenario.nodes[i].name, &names, &got.labels, t0);
            if r["t_ms"].as_i64().is_some_and(|t| t >= 0) && e["kind"] != "peer_silent" {
                real.push(r);
            }
        }
    }
    real.sort_by_key(|r| r["t_ms"].as_i64().unwrap_or(0));
    let simulated: Vec<Value> = sim.records.iter().map(sim_json).collect();
    let mut transfers = got.transfers;
    transfers.sort_by_key(|t| t["t_ms"].as_u64().unwrap_or(0));
    super::report::append_lines(&dir.join(files::TRANSFERS_FILE), &transfers)?;
    let file_loads = !transfers.is_empty();

    // Match each simulated event with the first real one of its node, kind, peer and
    // request.
    let mut used = vec![false; real.len()];
    let (mut timeline, mut only_sim) = (Vec::new(), Vec::new());
    let mut max_delta = 0i64;
    for s in &simulated {
        if SIM_ONLY.contains(&s["kind"].as_str().unwrap_or_default()) {
            timeline.push(
                json!({"sim_ms": s["t_ms"], "real_ms": null, "node": s["node"],
                "kind": s["kind"], "peer": s["peer"], "request": s["request"],
                "note": "the simulator's own record"}),
            );
            continue;
        }
        let found = real
            .iter()
            .enumerate()
            .find(|(j, r)| !used[*j] && same_event(s, r))
            .map(|(j, _)| j);
        match found {
            Some(j) => {
                used[j] = true;
                let (a, b) = (
                    s["t_ms"].as_i64().unwrap_or(0),
                    real[j]["t_ms"].as_i64().unwrap_or(0),
                );
                max_delta = max_delta.max((b - a).abs());
                timeline.push(json!({"sim_ms": a, "real_ms": b, "delta_ms": b - a,
                    "node": s["node"], "kind": s["kind"], "peer": s["peer"], "request": s["request"],
                    "sim_amount": s["amount"], "real_amount": real[j]["amount"]}));
            }
            None => only_sim.push(s.clone()),
        }
    }
    // With file loads, events of requests with no scenario label (hex ids: the file
    // layer's piece requests, or a scenario request that never came back) are counted
    // rather than listed.
    let file_request =
        |r: &Value| file_loads && r["request"].as_str().is_some_and(|q| !q.starts_with('r'));
    let (mut only_real, mut file_events) = (Vec::new(), 0usize);
    for (r, u) in real.iter().zip(&used) {
        if *u {
            continue;
        }
        if file_request(r) {
            file_events += 1;
        } else {
            only_real.push(r.clone());
        }
    }

    // Each request's outcome both ways.
    let mut requests = Vec::new();
    let mut same_outcomes = true;
    for (i, r) in scenario.requests.iter().enumerate() {
        let label = format!("r{}", i + 1);
        let sim_outcome = sim
            .records
            .iter()
            .find(|x| {
                x.node == r.client
                    && x.request.as_deref() == Some(label.as_str())
                    && [
                        "response_delivered",
                        "sever_proof_delivered",
                        "request_rejected",
                    ]
                    .contains(&x.kind)
            })
            .map(|x| {
                (
                    match x.kind {
                        "response_delivered" => "response",
                        "sever_proof_delivered" => "proof",
                        _ => "rejected",
                    },
                    x.ms,
                )
            });
        let real_outcome = got.outcomes.get(&label);
        let sim_kind = sim_outcome.map_or("late", |o| o.0);
        let real_kind = real_outcome
            .and_then(|o| o["kind"].as_str())
            .unwrap_or("none");
        same_outcomes &= sim_kind == real_kind;
        requests.push(json!({"request": label, "client": r.client, "server": r.server,
            "sim": {"kind": sim_kind, "latency_ms": sim_outcome.and_then(|o| o.1)},
            "real": {"kind": real_kind, "latency_ms": real_outcome.map(|o| o["latency_ms"].clone())}}));
    }

    // Each node's balance change, from its own channel states.
    let statuses = super::settled_statuses(&st).await?;
    let mut balances = serde_json::Map::new();
    let mut same_balances = true;
    for (h, n) in st.hosts.iter().zip(&scenario.nodes) {
        let status = statuses
            .iter()
            .find(|(name, _)| *name == h.name)
            .map(|(_, s)| s);
        let amount = |c: &Value, k: &str| -> i128 {
            c[k].as_str()
                .and_then(|s| s.parse::<i128>().ok())
                .unwrap_or(0)
        };
        let real = status.map(|s| {
            s["channels"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| amount(c, "received") - (amount(c, "paid") - amount(c, "unacked")))
                .sum::<i128>()
        });
        let sim_b = sim.balances.get(&n.name).copied().unwrap_or(0);
        if let Some(r) = real {
            same_balances &= r == sim_b;
        }
        balances.insert(
            n.name.clone(),
            json!({"sim": sim_b.to_string(),
            "real": real.map(|r| r.to_string()), "host": h.name}),
        );
    }
    // The simulator runs no transfers, so with file loads the balances also hold
    // what the transfers paid and earned: not comparable.
    let same_balances = (!file_loads).then_some(same_balances);
    Ok(json!({
        "scenario": scenario.name, "transport": o.transport, "link_percent": o.link_percent,
        "same_outcomes": same_outcomes, "same_balances": same_balances,
        "transfers": transfers, "transfer_totals": files::totals(&transfers),
        "file_events": file_events,
        "matched": timeline.iter().filter(|t| !t["real_ms"].is_null()).count(),
        "max_delta_ms": max_delta,
        "requests": requests, "balances": balances, "timeline": timeline,
        "only_sim": only_sim, "only_real": only_real, "actions": got.actions,
    }))
}

/// The comparison as Markdown: the two timelines side by side.
pub(crate) fn markdown(r: &Value) -> String {
    let mut s = format!(
        "# {} — simulated and real ({}, links at {} %)\n\n",
        r["scenario"].as_str().unwrap_or("?"),
        r["transport"].as_str().unwrap_or("?"),
        r["link_percent"]
    );
    s.push_str("| request | client → server | simulated | real |\n|---|---|---|---|\n");
    for q in r["requests"].as_array().into_iter().flatten() {
        let show = |o: &Value| {
            format!(
                "{} {}",
                o["kind"].as_str().unwrap_or("?"),
                o["latency_ms"]
                    .as_u64()
                    .map(|m| format!("{m} ms"))
                    .unwrap_or_default()
            )
        };
        s.push_str(&format!(
            "| {} | {} → {} | {} | {} |\n",
            q["request"].as_str().unwrap_or(""),
            q["client"].as_str().unwrap_or(""),
            q["server"].as_str().unwrap_or(""),
            show(&q["sim"]),
            show(&q["real"])
        ));
    }
    s.push_str("\n| sim ms | real ms | Δ ms | node | event | peer | request |\n|---:|---:|---:|---|---|---|---|\n");
    let txt = |v: &Value| {
        v.as_str().map(str::to_string).unwrap_or_else(|| {
            if v.is_null() {
                String::new()
            } else {
                v.to_string()
            }
        })
    };
    for t in r["timeline"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            txt(&t["sim_ms"]),
            if t["real_ms"].is_null() {
                "—".into()
            } else {
                txt(&t["real_ms"])
            },
            txt(&t["delta_ms"]),
            txt(&t["node"]),
            txt(&t["kind"]),
            txt(&t["peer"]),
            txt(&t["request"])
        ));
    }
    for (title, key) in [
        ("Only in the simulation", "only_sim"),
        ("Only on the real processes", "only_real"),
    ] {
        let xs = r[key].as_array().cloned().unwrap_or_default();
        if xs.is_empty() {
            continue;
        }
        s.push_str(&format!("\n**{title}**\n\n"));
        for x in xs {
            s.push_str(&format!(
                "- {} ms {} {} {} {}\n",
                txt(&x["t_ms"]),
                txt(&x["node"]),
                txt(&x["kind"]),
                txt(&x["peer"]),
                txt(&x["request"])
            ));
        }
    }
    let transfers = r["transfers"].as_array().cloned().unwrap_or_default();
    if !transfers.is_empty() {
        s.push_str(
            "\n**File transfers** (real processes only: the simulator has no file layer)\n\n\
             | load | start ms | end ms | client | size | MiB/s | spent | identical | error |\n\
             |---:|---:|---:|---|---:|---:|---:|---|---|\n",
        );
        for t in &transfers {
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                txt(&t["load"]),
                txt(&t["t_ms"]),
                txt(&t["done_ms"]),
                txt(&t["client"]),
                txt(&t["size"]),
                txt(&t["mib_per_s"]),
                txt(&t["spent"]),
                txt(&t["identical"]),
                txt(&t["error"])
            ));
        }
        s.push_str(&format!(
            "\n{} events of the transfers' own requests are left out of the timeline.\n",
            r["file_events"]
        ));
    }
    s.push_str("\n| node | simulated balance | real balance |\n|---|---:|---:|\n");
    if let Some(b) = r["balances"].as_object() {
        for (n, v) in b {
            s.push_str(&format!(
                "| {n} | {} | {} |\n",
                txt(&v["sim"]),
                txt(&v["real"])
            ));
        }
    }
    s.push_str(&format!(
        "\nSame outcomes: {}. Same balances: {}. Largest timing difference: {} ms.\n",
        r["same_outcomes"],
        if r["same_balances"].is_null() {
            "not comparable (the balances hold the file transfers)".to_string()
        } else {
            r["same_balances"].to_string()
        },
        r["max_delta_ms"]
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paper(file: &str) -> Scenario {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../testnet/scenarios")
            .join(file);
        Scenario::from_toml(&std::fs::read_to_string(p).unwrap()).unwrap()
    }

    #[test]
    fn a_scenario_becomes_hosts_channels_links_and_a_schedule() {
        let s = paper("paper-5.3-wait-and-pay.toml");
        let p = plan(&s, 90).unwrap();
        assert_eq!(p.hosts.len(), 6);
        // Bob (the third node) waits one sync; Alice forwards proofs at her next sync.
        let flag = |h: usize, f: &str| {
            let i = p.hosts[h].iter().position(|x| x == f).unwrap();
            p.hosts[h][i + 1].clone()
        };
        assert_eq!(flag(2, "--sever-policy"), "wait_syncs:1");
        assert_eq!(flag(1, "--forward-proofs"), "next_sync");
        assert_eq!(flag(1, "--sever-policy"), "never");
        assert_eq!(p.channels.len(), 5);
        // Alex–Alice: 100 ms promised, the link at 90 ms each way.
        assert_eq!(p.links["h01>h02"].latency_ms, 90);
        assert_eq!(p.links["h02>h01"].latency_ms, 90);
        assert_eq!(p.channels[1].terms.as_ref().unwrap().sync_phase_ms, 600);
        // Eve is killed before the request leaves, both at 0 ms.
        let sched = schedule(&s).unwrap();
        assert!(matches!(sched[0], (0, Action::Kill(5))), "{sched:?}");
        assert!(matches!(sched[1], (0, Action::Request(0))), "{sched:?}");
        assert_eq!(gcd(500, 1000), 500);
    }
}
