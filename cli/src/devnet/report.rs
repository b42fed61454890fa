//! `por devnet report`: what the devnet's traffic came to, from the outcomes `load`
//! recorded (`outcomes.jsonl`), the file transfers `files` recorded
//! (`transfers.jsonl`), every running node's channels and the chain's view of them.
//! Latency by path length, outcomes over time, transfer rates, late fees, each node's
//! earnings, severed channels, and money conservation of every channel: the two ends
//! agree, and what they hold adds up to what was deposited on chain.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use por_chain::Chain;
use serde_json::{json, Value};

use super::state::State;

/// The file `load` appends each request's outcome to.
pub(crate) const OUTCOMES_FILE: &str = "outcomes.jsonl";

/// Width of a bucket of `outcomes_over_time`.
const BUCKET_MS: u64 = 10_000;

/// Appends outcomes to the devnet's record.
pub(crate) fn record(dir: &Path, outcomes: &[Value]) -> Result<()> {
    append_lines(&dir.join(OUTCOMES_FILE), outcomes)
}

/// Appends `values` to the file `p`, one JSON line each.
pub(crate) fn append_lines(p: &Path, values: &[Value]) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
        .with_context(|| format!("opening {}", p.display()))?;
    let mut text = String::new();
    for o in values {
        text.push_str(&o.to_string());
        text.push('\n');
    }
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", p.display()))
}

fn amount(v: &Value) -> u128 {
    v.as_str().and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// `host`'s end of its channel to the node `peer` (hex id), from the statuses.
pub(crate) fn channel_end(statuses: &[(String, Value)], host: &str, peer: &str) -> Option<Value> {
    let (_, s) = statuses.iter().find(|(n, _)| n == host)?;
    s["channels"]
        .as_array()?
        .iter()
        .find(|c| c["peer"] == peer)
        .cloned()
}

/// Whether what one end of a channel paid is what the other received: all of it, or
/// all but some of the payer's payments that were never acknowledged (the newest
/// ones: they may not have arrived, or not been made durable, before the connection
/// or the channel was cut). The payee holds everything up to what it received, the
/// payer everything acknowledged, which is at most that; the chain settles the newest
/// state either presents. The amount paid and not received, when they agree; `None`
/// when they do not (the payee holds more than was paid, or less than was
/// acknowledged).
pub(crate) fn missing(payer: &Value, payee: &Value) -> Option<u128> {
    let (paid, unacked, received) = (
        amount(&payer["paid"]),
        amount(&payer["unacked"]),
        amount(&payee["received"]),
    );
    let acknowledged = paid.checked_sub(unacked)?;
    (acknowledged..=paid)
        .contains(&received)
        .then(|| paid - received)
}

/// The `q`-quantile of sorted `xs` (nearest rank).
fn quantile(xs: &[u64], q: f64) -> u64 {
    if xs.is_empty() {
        return 0;
    }
    let rank = ((q * xs.len() as f64).ceil() as usize).clamp(1, xs.len());
    xs[rank - 1]
}

/// The report, as JSON.
pub(crate) async fn report(st: &State, statuses: &[(String, Value)]) -> Result<Value> {
    let text = std::fs::read_to_string(st.dir.join(OUTCOMES_FILE)).unwrap_or_default();
    let outcomes: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();

    // Outcomes, and latency by path length.
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_hops: BTreeMap<u64, (Vec<u64>, u64)> = BTreeMap::new();
    let mut over_time: BTreeMap<u64, BTreeMap<String, u64>> = BTreeMap::new();
    let (mut late_fees, mut spent) = (0u128, 0u128);
    let start = outcomes
        .iter()
        .filter_map(|o| o["at_ms"].as_u64())
        .min()
        .unwrap_or(0);
    for o in &outcomes {
        let kind = o["kind"].as_str().unwrap_or("refused").to_string();
        *kinds.entry(kind.clone()).or_default() += 1;
        let bucket = o["at_ms"].as_u64().unwrap_or(start).saturating_sub(start) / BUCKET_MS;
        *over_time
            .entry(bucket)
            .or_default()
            .entry(kind.clone())
            .or_default() += 1;
        late_fees = late_fees.saturating_add(amount(&o["fees_received"]));
        spent = spent.saturating_add(amount(&o["paid"]));
        if kind == "response" {
            let e = by_hops.entry(o["hops"].as_u64().unwrap_or(0)).or_default();
            e.0.push(o["latency_ms"].as_u64().unwrap_or(0));
            if o["on_time"] == true {
                e.1 += 1;
            }
        }
    }
    let latency: Vec<Value> = by_hops
        .into_iter()
        .map(|(hops, (mut l, on_time))| {
            l.sort_unstable();
            json!({"hops": hops, "responses": l.len(), "on_time": on_time,
                   "p50_ms": quantile(&l, 0.5), "p90_ms": quantile(&l, 0.9),
                   "p99_ms": quantile(&l, 0.99), "max_ms": l.last().copied().unwrap_or(0)})
        })
        .collect();
    let over_time: Vec<Value> = over_time
        .into_iter()
        .map(|(b, k)| json!({"from_s": b * BUCKET_MS / 1000, "outcomes": k}))
        .collect();

    // The chain's view of every channel.
    let chain_addr: std::net::SocketAddr = st.chain_addr.parse().context("the chain's address")?;
    let client = por_chain::RemoteClient::new(chain_addr, "report");
    let mut on_chain: Vec<Value> = Vec::new();
    loop {
        let page = client
            .view(
                "get_channels",
                json!({"from": on_chain.len(), "limit": 200}),
            )
            .await
            .context("reading the channels from the chain")?;
        let items = page.as_array().cloned().unwrap_or_default();
        let n = items.len();
        on_chain.extend(items);
        if n < 200 {
            break;
        }
    }

    // Each node's earnings, and each channel's conservation.
    let end = |host: &str, peer: &str| channel_end(statuses, host, peer);
    let mut nodes = Vec::new();
    for (name, s) in statuses {
        let misbehaviour = st
            .host(name)
            .map(|h| h.misbehaviour.clone())
            .unwrap_or_default();
        let chans = s["channels"].as_array().cloned().unwrap_or_default();
        let received: u128 = chans.iter().map(|c| amount(&c["received"])).sum();
        let paid: u128 = chans.iter().map(|c| amount(&c["paid"])).sum();
        nodes.push(
            json!({"host": name, "received": received.to_string(), "paid": paid.to_string(),
                          "net": (received as i128 - paid as i128).to_string(),
                          "channels": chans.len(), "misbehaviour": misbehaviour,
                          "severed": chans.iter().filter(|c| c["severed"] == true).count()}),
        );
    }
    let (mut conserved, mut checked, mut problems, mut severed) = (true, 0, Vec::new(), 0);
    for (a, b, id) in &st.channels {
        let view = on_chain
            .iter()
            .find(|c| c["id"].as_str() == Some(&id.to_string()) || c["id"] == *id);
        if view.is_some_and(|v| !v["severed"].is_null()) {
            severed += 1;
        }
        let (ha, hb) = (st.host(a)?, st.host(b)?);
        let (Some(ab), Some(ba), Some(view)) = (end(a, hb.id()), end(b, ha.id()), view) else {
            continue;
        };
        checked += 1;
        let deposits = amount(&view["deposit_a"]).saturating_add(amount(&view["deposit_b"]));
        // The two balances and a payment that never arrived add up to the deposits.
        let ok = match (missing(&ab, &ba), missing(&ba, &ab)) {
            (Some(x), Some(y)) => {
                amount(&ab["balance"])
                    .saturating_add(amount(&ba["balance"]))
                    .saturating_add(x)
                    .saturating_add(y)
                    == deposits
            }
            _ => false,
        };
        if !ok {
            conserved = false;
            problems.push(json!({"channel": id, "deposits": deposits.to_string(), a.clone(): ab, b.clone(): ba}));
        }
    }
    let transfers = super::files::summary(&st.dir);
    let clients_servers: Vec<String> = outcomes
        .iter()
        .flat_map(|o| [o["from"].as_str(), o["to"].as_str()])
        .flatten()
        .map(str::to_string)
        .chain(
            transfers["hosts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|h| h.as_str().map(str::to_string)),
        )
        .collect();
    let relays: Vec<&Value> = nodes
        .iter()
        .filter(|n| !clients_servers.iter().any(|c| n["host"] == c.as_str()))
        .filter(|n| amount(&n["received"]) > 0)
        .collect();
    let relays_profit = relays
        .iter()
        .all(|n| !n["net"].as_str().unwrap_or("0").starts_with('-'));
    // Misbehaving hosts: how many of their channels are severed, by either end (a
    // host that is down reports nothing: its channels as its peers see them).
    let misbehaving: Vec<Value> = st
        .hosts
        .iter()
        .filter(|h| !h.misbehaviour.is_empty())
        .map(|h| {
            let mine: Vec<&(String, String, u64)> = st
                .channels
                .iter()
                .filter(|(a, b, _)| *a == h.name || *b == h.name)
                .collect();
            let cut = mine
                .iter()
                .filter(|(a, b, _)| {
                    let other = if *a == h.name { b } else { a };
                    let other_id = st
                        .host(other)
                        .map(|o| o.id().to_string())
                        .unwrap_or_default();
                    let severed = |c: Option<Value>| c.is_some_and(|c| c["severed"] == true);
                    severed(end(&h.name, &other_id)) || severed(end(other, h.id()))
                })
                .count();
            json!({"host": h.name, "misbehaviour": h.misbehaviour, "channels": mine.len(),
                   "severed": cut, "isolated": cut == mine.len()})
        })
        .collect();
    Ok(json!({
        "devnet": st.net.name, "hosts": st.hosts.len(), "running": statuses.len(),
        "misbehaving": misbehaving,
        "transport": st.transport, "emulated_links": st.net.emulated,
        "requests": outcomes.len(), "outcomes": kinds, "latency_by_hops": latency,
        "outcomes_over_time": over_time, "files": transfers,
        "late_fees_received_by_clients": late_fees.to_string(), "clients_spent": spent.to_string(),
        "nodes": nodes,
        "relays_that_forwarded": relays.len(), "relays_profit": relays_profit,
        "channels": st.channels.len(), "channels_severed_on_chain": severed,
        "conservation": {"channels_checked": checked, "conserved": conserved, "problems": problems},
    }))
}

/// The report as Markdown.
pub(crate) fn markdown(r: &Value) -> String {
    let mut md = format!(
        "# Devnet `{}`: {} hosts ({} running), {}{}\n\n",
        r["devnet"].as_str().unwrap_or(""),
        r["hosts"],
        r["running"],
        r["transport"].as_str().unwrap_or(""),
        if r["emulated_links"] == true {
            ", emulated links"
        } else {
            ""
        }
    );
    md.push_str(&format!(
        "{} requests: {}\n\n",
        r["requests"], r["outcomes"]
    ));
    md.push_str("| hops | responses | on time | p50 ms | p90 ms | p99 ms | max ms |\n|---|---|---|---|---|---|---|\n");
    for l in r["latency_by_hops"].as_array().into_iter().flatten() {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            l["hops"],
            l["responses"],
            l["on_time"],
            l["p50_ms"],
            l["p90_ms"],
            l["p99_ms"],
            l["max_ms"]
        ));
    }
    md.push_str(&format!(
        "\nLate fees received by clients: {} yocto; clients spent {} yocto.\n\n",
        r["late_fees_received_by_clients"].as_str().unwrap_or("0"),
        r["clients_spent"].as_str().unwrap_or("0")
    ));
    let f = &r["files"];
    if f["transfers"].as_u64().unwrap_or(0) > 0 {
        md.push_str(&format!(
            "File transfers: {} ({} fetched, {} identical, {} failed), {} bytes, \
             MiB/s min {} / median {} / max {}; spent {} yocto; providers caught \
             deviating: {}.\n\n",
            f["transfers"],
            f["fetched"],
            f["identical"],
            f["failed"],
            f["bytes"],
            f["mib_per_s"]["min"],
            f["mib_per_s"]["p50"],
            f["mib_per_s"]["max"],
            f["spent"].as_str().unwrap_or("0"),
            f["deviating_providers"]
        ));
    }
    md.push_str(
        "| host | received | paid | net | channels | severed |\n|---|---|---|---|---|---|\n",
    );
    for n in r["nodes"].as_array().into_iter().flatten() {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            n["host"].as_str().unwrap_or(""),
            n["received"].as_str().unwrap_or(""),
            n["paid"].as_str().unwrap_or(""),
            n["net"].as_str().unwrap_or(""),
            n["channels"],
            n["severed"]
        ));
    }
    let c = &r["conservation"];
    md.push_str(&format!(
        "\nRelays that forwarded: {}; all profit: {}. Channels severed on chain: {} of {}.\n\
         Money conserved on {} channels checked: **{}**.\n",
        r["relays_that_forwarded"],
        r["relays_profit"],
        r["channels_severed_on_chain"],
        r["channels"],
        c["channels_checked"],
        c["conserved"]
    ));
    let bad = r["misbehaving"].as_array().cloned().unwrap_or_default();
    if !bad.is_empty() {
        md.push_str(
            "\n| misbehaving host | how | channels | severed | isolated |\n|---|---|---|---|---|\n",
        );
        for b in bad {
            let how: Vec<&str> = b["misbehaviour"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                b["host"].as_str().unwrap_or(""),
                how.join(", "),
                b["channels"],
                b["severed"],
                b["isolated"]
            ));
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(paid: u128, unacked: u128, received: u128) -> Value {
        json!({"paid": paid.to_string(), "unacked": unacked.to_string(),
               "received": received.to_string()})
    }

    #[test]
    fn the_two_ends_agree_on_all_or_all_but_unacknowledged_payments() {
        // Everything arrived.
        assert_eq!(missing(&end(100, 0, 0), &end(0, 0, 100)), Some(0));
        // The last payment (30) was cut on its way: not received.
        assert_eq!(missing(&end(100, 30, 0), &end(0, 0, 70)), Some(30));
        // It arrived, the ack did not.
        assert_eq!(missing(&end(100, 30, 0), &end(0, 0, 100)), Some(0));
        // Several payments unacknowledged (late fees of 1 at three syncs across a
        // connection reset, say): the first two arrived, the third did not.
        assert_eq!(missing(&end(3, 3, 0), &end(0, 0, 2)), Some(1));
        assert_eq!(missing(&end(100, 30, 0), &end(0, 0, 80)), Some(20));
        // Less than was acknowledged, or more than was paid: they disagree.
        assert_eq!(missing(&end(100, 30, 0), &end(0, 0, 60)), None);
        assert_eq!(missing(&end(100, 0, 0), &end(0, 0, 130)), None);
        assert_eq!(missing(&end(10, 30, 0), &end(0, 0, 10)), None);
        assert_eq!(quantile(&[], 0.5), 0);
        assert_eq!(quantile(&[1, 2, 3, 4], 0.5), 2);
        assert_eq!(quantile(&[1, 2, 3, 4], 0.99), 4);
    }
}
