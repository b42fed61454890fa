//! File transfers between real nodes (real sockets, TCP and QUIC, the embedded chain
//! running the contract): a 3-hop round trip of a file and a directory, a corrupting
//! provider, an edge severed mid-transfer (re-routed, each piece paid once), the spend
//! cap with a resume, an interrupted transfer resumed, and the gateway read with a
//! real HTTP client.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use por_files::progress::Silent;
use por_files::{transfer, FilesHandler, Kind, Store, Ticket, TransferOptions};
use por_node::demo::{DemoChain, Network};
use por_node::{Handler, IncomingRequest, TransportKind};
use por_protocol::{Amount, NodeId};
use por_testnet::scenario::Scenario;

/// Client C — R1 — R2 — P (three hops to P); Q, a second provider, beside R1; and a
/// dearer way round, R1 — R3 — P.
const TOPOLOGY: &str = r#"
name = "files"
duration_ms = 1
[[nodes]]
name = "C"
[[nodes]]
name = "R1"
[[nodes]]
name = "R2"
[[nodes]]
name = "P"
[[nodes]]
name = "Q"
[[nodes]]
name = "R3"
[[edges]]
a = "C"
b = "R1"
latency_ms = 5
base_cost = 1000
byte_cost = 1
sync_interval_ms = 1000
max_late_fee_rate = 1000
deposit_a = 1_000_000_000_000_000_000
deposit_b = 1_000_000_000_000_000_000
[[edges]]
a = "R1"
b = "R2"
latency_ms = 5
base_cost = 1000
byte_cost = 1
sync_interval_ms = 1000
max_late_fee_rate = 1000
deposit_a = 1_000_000_000_000_000_000
deposit_b = 1_000_000_000_000_000_000
[[edges]]
a = "R2"
b = "P"
latency_ms = 5
base_cost = 1000
byte_cost = 1
sync_interval_ms = 1000
max_late_fee_rate = 1000
deposit_a = 1_000_000_000_000_000_000
deposit_b = 1_000_000_000_000_000_000
[[edges]]
a = "R1"
b = "R3"
latency_ms = 5
base_cost = 2000
byte_cost = 2
sync_interval_ms = 1000
max_late_fee_rate = 1000
deposit_a = 1_000_000_000_000_000_000
deposit_b = 1_000_000_000_000_000_000
[[edges]]
a = "R3"
b = "P"
latency_ms = 5
base_cost = 2000
byte_cost = 2
sync_interval_ms = 1000
max_late_fee_rate = 1000
deposit_a = 1_000_000_000_000_000_000
deposit_b = 1_000_000_000_000_000_000
[[edges]]
a = "R1"
b = "Q"
latency_ms = 5
base_cost = 1000
byte_cost = 1
sync_interval_ms = 1000
max_late_fee_rate = 1000
deposit_a = 1_000_000_000_000_000_000
deposit_b = 1_000_000_000_000_000_000
"#;

/// A provider that serves its store but flips a byte of every encoding it sends.
#[derive(Clone)]
enum Serve {
    Honest(FilesHandler),
    Corrupt(FilesHandler),
}

impl Handler for Serve {
    async fn handle(&self, request: IncomingRequest) -> Vec<u8> {
        match self {
            Serve::Honest(h) => h.handle(request).await,
            Serve::Corrupt(h) => {
                let mut body = h.handle(request).await;
                if body.len() > 100 {
                    let i = body.len() - 50;
                    body[i] ^= 0x5a;
                }
                body
            }
        }
    }
}

fn bytes(n: usize, seed: u8) -> Vec<u8> {
    let mut x = u32::from(seed) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

struct Setup {
    net: Network,
    dir: PathBuf,
    ticket: Ticket,
    dir_ticket: Ticket,
    file: Vec<u8>,
}

/// A passing test leaves nothing behind; a failing one keeps its stores and logs.
impl Drop for Setup {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

async fn setup(name: &str, transport: TransportKind, q_corrupt: bool) -> Setup {
    let dir = std::env::temp_dir().join(format!("por-files-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("src/docs")).unwrap();
    // 3 MiB + a bit: seven pieces, the last one short.
    let file = bytes(3 * 1024 * 1024 + 70_001, 7);
    std::fs::write(dir.join("src/big.bin"), &file).unwrap();
    std::fs::write(dir.join("src/docs/readme.txt"), b"hello, por files\n").unwrap();
    std::fs::write(dir.join("src/docs/data.bin"), bytes(600_000, 9)).unwrap();
    let mut serve = HashMap::new();
    let mut tags = Vec::new();
    for (who, corrupt) in [("P", false), ("Q", q_corrupt)] {
        let store = Store::open(dir.join(format!("store-{who}"))).unwrap();
        let file_tag = store.add(&dir.join("src/big.bin")).unwrap();
        let dir_tag = store.add(&dir.join("src")).unwrap();
        tags.push((file_tag, dir_tag));
        let h = FilesHandler::new(store);
        serve.insert(
            who.to_string(),
            if corrupt {
                Serve::Corrupt(h)
            } else {
                Serve::Honest(h)
            },
        );
    }
    let scenario = Scenario::from_toml(TOPOLOGY).unwrap();
    let net = Network::start_serving(
        &DemoChain::Embedded,
        scenario,
        &dir.join("net"),
        transport,
        100,
        &serve,
    )
    .await
    .unwrap();
    let id = |n: &str| net.node(n).unwrap().id();
    // The client learns the far edges from the chain shortly after they open: wait
    // until it has a route to each provider (a transfer drops a provider it cannot
    // quote).
    let client = net.node("C").unwrap();
    for who in ["P", "Q"] {
        let mut tries = 0;
        while client
            .quote(id(who), 64, 64, 60_000, 1)
            .await
            .unwrap()
            .is_empty()
        {
            tries += 1;
            assert!(tries < 200, "no route from C to {who}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let (file_tag, dir_tag) = tags.remove(0);
    let ticket = Ticket {
        kind: Kind::Blob,
        root: file_tag.root,
        size: file_tag.size,
        providers: vec![id("P")],
    };
    let dir_ticket = Ticket {
        kind: Kind::Collection,
        root: dir_tag.root,
        size: dir_tag.size,
        providers: vec![id("P")],
    };
    Setup {
        net,
        dir,
        ticket,
        dir_ticket,
        file,
    }
}

fn never() -> std::future::Pending<()> {
    std::future::pending()
}

/// Every channel's balances sum to zero: nothing created or lost. Counted once no
/// payment is on its way (a late fee paid at a sync whose acknowledgement has not
/// come back is in the payee's balance and not yet out of the payer's), within 10 s.
async fn conserved(net: &Network) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut b = net.balances(&Default::default()).await.unwrap();
    while b.iter().any(|x| x.unacked > 0) && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        b = net.balances(&Default::default()).await.unwrap();
    }
    assert!(
        b.iter().all(|x| x.unacked == 0),
        "a payment never acknowledged: {b:?}"
    );
    assert_eq!(b.iter().map(|x| x.net).sum::<i128>(), 0, "{b:?}");
}

fn read_tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if e.file_type().unwrap().is_dir() {
            for (n, b) in read_tree(&e.path()) {
                out.push((format!("{name}/{n}"), b));
            }
        } else {
            out.push((name, std::fs::read(e.path()).unwrap()));
        }
    }
    out.sort();
    out
}

async fn round_trip(transport: TransportKind, name: &str) {
    let s = setup(name, transport, false).await;
    let client = s.net.node("C").unwrap();
    // The quote is exact: the transfer spends what it said, over three hops.
    let q = transfer::quote(
        client,
        s.ticket.root,
        s.ticket.size,
        &s.ticket.providers,
        (0, s.ticket.size),
        60_000,
    )
    .await
    .unwrap();
    assert_eq!(q.requests, 7);
    assert_eq!(q.route.nodes.len(), 4, "three hops");
    let out = s.dir.join("got.bin");
    let report = transfer::get(
        client,
        &s.ticket,
        &out,
        TransferOptions::default(),
        &Silent,
        never(),
    )
    .await
    .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), s.file, "byte-identical");
    assert_eq!(report.bytes_fetched, s.file.len() as u64);
    assert_eq!(
        report.bytes_requested,
        s.file.len() as u64,
        "nothing asked twice"
    );
    assert_eq!(report.spent, q.cost);
    // Writing over an existing output is refused.
    let again = transfer::get(
        client,
        &s.ticket,
        &out,
        TransferOptions::default(),
        &Silent,
        never(),
    )
    .await;
    assert!(
        matches!(again, Err(por_files::FilesError::OutputExists(_))),
        "{again:?}"
    );
    // The directory, through the same path.
    let outd = s.dir.join("got-dir");
    transfer::get(
        client,
        &s.dir_ticket,
        &outd,
        TransferOptions::default(),
        &Silent,
        never(),
    )
    .await
    .unwrap();
    assert_eq!(read_tree(&outd), read_tree(&s.dir.join("src")));
    conserved(&s.net).await;
    s.net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_and_a_directory_over_three_hops_on_tcp() {
    round_trip(TransportKind::Tcp, "rt-tcp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_and_a_directory_over_three_hops_on_quic() {
    round_trip(TransportKind::Quic, "rt-quic").await;
}

async fn corrupting(transport: TransportKind, name: &str) {
    let s = setup(name, transport, true).await;
    let client = s.net.node("C").unwrap();
    let (q, p) = (s.net.node("Q").unwrap().id(), s.net.node("P").unwrap().id());
    let ticket = Ticket {
        providers: vec![q, p],
        ..s.ticket.clone()
    };
    let out = s.dir.join("got.bin");
    let report = transfer::get(
        client,
        &ticket,
        &out,
        TransferOptions::default(),
        &Silent,
        never(),
    )
    .await
    .unwrap();
    assert_eq!(
        std::fs::read(&out).unwrap(),
        s.file,
        "finished from the honest one"
    );
    let bad = &report.providers[&q];
    assert!(bad.deviated);
    assert_eq!(bad.pieces, 0, "nothing unverified reached the file");
    assert!(report.providers[&p].pieces >= 6);
    // The evidence: the signed response and the bytes that do not verify.
    assert!(!report.evidence.is_empty());
    let ev: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report.evidence[0]).unwrap()).unwrap();
    assert_eq!(ev["provider"], por_protocol::hex::encode(&q.0));
    assert!(ev["signed_response"].as_str().unwrap().len() > 64);
    assert!(
        ev["mismatch"].as_str().unwrap().contains("verify")
            || !ev["mismatch"].as_str().unwrap().is_empty()
    );
    conserved(&s.net).await;
    s.net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupting_provider_is_caught_and_the_transfer_finishes_on_tcp() {
    corrupting(TransportKind::Tcp, "bad-tcp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupting_provider_is_caught_and_the_transfer_finishes_on_quic() {
    corrupting(TransportKind::Quic, "bad-quic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_spend_cap_stops_before_it_is_passed_and_an_interrupted_get_resumes() {
    let s = setup("cap", TransportKind::Tcp, false).await;
    let client = s.net.node("C").unwrap();
    let q = transfer::quote(
        client,
        s.ticket.root,
        s.ticket.size,
        &s.ticket.providers,
        (0, s.ticket.size),
        60_000,
    )
    .await
    .unwrap();
    let per_piece = Amount(q.cost.0 / 8); // less than any full piece costs
    let cap = Amount(q.cost.0 / 2);
    let out = s.dir.join("got.bin");
    let capped = TransferOptions {
        spend_cap: Some(cap),
        window: 1,
        ..TransferOptions::default()
    };
    let first = transfer::get(client, &s.ticket, &out, capped, &Silent, never()).await;
    let Err(por_files::FilesError::SpendCap { spent, next, .. }) = first else {
        panic!("{first:?}")
    };
    assert!(
        spent <= cap && spent.checked_add(next).unwrap() > cap,
        "{spent} + {next} vs {cap}"
    );
    assert!(per_piece < next);
    assert!(!out.exists(), "no output until every byte verified");
    // Interrupted after a moment (as Ctrl-C would), then resumed: nothing asked twice.
    let stop = futures::FutureExt::shared(Box::pin(tokio::time::sleep(Duration::from_millis(30))));
    let one = TransferOptions {
        window: 1,
        ..Default::default()
    };
    let second = transfer::get(client, &s.ticket, &out, one, &Silent, stop).await;
    let mut requested = 0;
    if let Ok(r) = &second {
        requested += r.bytes_requested;
    } else {
        assert!(
            matches!(second, Err(por_files::FilesError::Interrupted { .. })),
            "{second:?}"
        );
    }
    if !out.exists() {
        let third = transfer::get(
            client,
            &s.ticket,
            &out,
            TransferOptions::default(),
            &Silent,
            never(),
        )
        .await
        .unwrap();
        assert!(
            third.resumed_pieces >= 3,
            "the capped run's pieces were kept"
        );
        requested += third.bytes_requested;
    }
    assert_eq!(std::fs::read(&out).unwrap(), s.file);
    // The capped run fetched `spent`'s worth; the rest fetched only what was missing.
    assert!(requested < s.file.len() as u64);
    conserved(&s.net).await;
    s.net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_gateway_serves_ranges_to_a_real_http_client() {
    let s = setup("gw", TransportKind::Tcp, false).await;
    let client = s.net.node("C").unwrap().clone();
    let providers: Vec<NodeId> = s.ticket.providers.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        por_files::gateway::serve(
            client,
            providers,
            TransferOptions::default(),
            "127.0.0.1:0",
            |a| {
                let _ = tx.send(a);
            },
        )
        .await
        .unwrap();
    });
    let addr = rx.await.unwrap();
    let url = format!("http://{addr}/{}", s.ticket.root);
    let curl = |args: &[&str]| {
        let out = std::process::Command::new("curl")
            .args(["-s", "-D", "-", "--max-time", "60"])
            .args(args)
            .output()
            .expect("curl");
        out.stdout
    };
    let split = |raw: Vec<u8>| {
        let at = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        (
            String::from_utf8_lossy(&raw[..at]).to_lowercase(),
            raw[at + 4..].to_vec(),
        )
    };
    let (head, body) = split(curl(&[&url]));
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains(&format!("content-length: {}", s.file.len())),
        "{head}"
    );
    assert!(
        head.contains(&format!("etag: \"{}\"", s.ticket.root)),
        "{head}"
    );
    assert_eq!(body, s.file);
    let (head, body) = split(curl(&["-H", "Range: bytes=1000000-1600000", &url]));
    assert!(head.starts_with("http/1.1 206"), "{head}");
    assert!(
        head.contains(&format!(
            "content-range: bytes 1000000-1600000/{}",
            s.file.len()
        )),
        "{head}"
    );
    assert_eq!(body, &s.file[1_000_000..=1_600_000]);
    let (head, _) = split(curl(&["-H", "Range: bytes=99999999-", &url]));
    assert!(head.starts_with("http/1.1 416"), "{head}");
    // A file of the directory, by path, with its type.
    let url = format!("http://{addr}/{}/docs/readme.txt", s.dir_ticket.root);
    let (head, body) = split(curl(&[&url]));
    assert!(head.contains("content-type: text/plain"), "{head}");
    assert_eq!(body, b"hello, por files\n");
    let (head, _) = split(curl(&[&format!("http://{addr}/not-a-root")]));
    assert!(head.starts_with("http/1.1 400"), "{head}");
    conserved(&s.net).await;
    s.net.shutdown().await;
}

/// Calls `then` once `at` pieces are verified.
struct After {
    seen: std::sync::atomic::AtomicU64,
    at: u64,
    then: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

impl por_files::progress::Progress for After {
    fn start(&self, _: &str, _: u64, _: u64, _: &[NodeId]) {}
    fn piece(&self, _: &NodeId, _: u64, _: Amount) {
        let n = self.seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        if n == self.at {
            if let Some(tx) = self.then.lock().unwrap().take() {
                let _ = tx.send(());
            }
        }
    }
    fn note(&self, _: &str) {}
    fn finish(&self, _: Amount) {}
}

/// The cost of each piece's request on the cheapest route the client knows now.
async fn piece_costs(s: &Setup) -> (Vec<Amount>, Vec<NodeId>) {
    let client = s.net.node("C").unwrap();
    let piece = por_files::blob::PIECE_BYTES;
    let mut costs = Vec::new();
    let mut route = Vec::new();
    let mut at = 0;
    while at < s.ticket.size {
        let q = transfer::quote(
            client,
            s.ticket.root,
            s.ticket.size,
            &s.ticket.providers,
            (at, (at + piece).min(s.ticket.size)),
            60_000,
        )
        .await
        .unwrap();
        assert_eq!(q.requests, 1);
        costs.push(q.cost);
        route = q.route.nodes;
        at += piece;
    }
    (costs, route)
}

async fn severed(transport: TransportKind, name: &str) {
    let s = setup(name, transport, false).await;
    let client = s.net.node("C").unwrap();
    let id = |n: &str| s.net.node(n).unwrap().id();
    let (old, route) = piece_costs(&s).await;
    assert_eq!(route, vec![id("C"), id("R1"), id("R2"), id("P")]);
    let r2p = s.net.route(&["R2", "P"]).await.unwrap().channels[0];
    let paid_before = client.status().await.unwrap().channels[0].paid;
    // Two pieces in, R2 severs its edge to P: the transfer gets a proof, re-quotes
    // and goes round by R3.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let progress = After {
        seen: Default::default(),
        at: 2,
        then: std::sync::Mutex::new(Some(tx)),
    };
    let r2 = s.net.node("R2").unwrap().clone();
    let sever = tokio::spawn(async move {
        rx.await.unwrap();
        r2.sever(r2p).await.unwrap();
    });
    let out = s.dir.join("got.bin");
    let one = TransferOptions {
        window: 1,
        ..TransferOptions::default()
    };
    let report = transfer::get(client, &s.ticket, &out, one, &progress, never())
        .await
        .unwrap();
    sever.await.unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), s.file, "byte-identical");
    assert_eq!(report.bytes_fetched, s.file.len() as u64, "each byte once");
    assert_eq!(report.wasted_pieces, 0);
    let (new, route) = piece_costs(&s).await;
    assert_eq!(route, vec![id("C"), id("R1"), id("R3"), id("P")]);
    // Every piece was paid once on the route that delivered it, plus the request(s)
    // the proof answered (the relays did their part): for some k, pieces before k on
    // the old route, k's failed attempts on the old route, the rest on the new one.
    // A failed attempt was paid unless it failed before it was sent (its route's edge
    // already known severed when it went out): j of them were paid.
    let failures = u128::from(report.providers[&id("P")].failures);
    assert!(failures >= 1, "the sever answered a request with a proof");
    let explained = (0..old.len()).any(|k| {
        let mut sum: u128 = old[..k].iter().map(|a| a.0).sum();
        sum += new[k..].iter().map(|a| a.0).sum::<u128>();
        (0..=failures).any(|j| sum + j * old[k].0 == report.spent.0)
    });
    assert!(
        explained,
        "spent {} is not pieces paid once: old {old:?}, new {new:?}, {failures} proof(s)",
        report.spent
    );
    // What the client paid on its channel is what the transfer reports.
    let paid_after = client.status().await.unwrap().channels[0].paid;
    assert_eq!(paid_after.0 - paid_before.0, report.spent.0);
    conserved(&s.net).await;
    s.net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_edge_severed_mid_transfer_is_routed_around_each_piece_paid_once_on_tcp() {
    severed(TransportKind::Tcp, "sever-tcp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_edge_severed_mid_transfer_is_routed_around_each_piece_paid_once_on_quic() {
    severed(TransportKind::Quic, "sever-quic").await;
}
