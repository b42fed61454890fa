//! The devnet's link emulator: user-space netem between the hosts' namespaces.
//!
//! Each host's namespace gets a TUN device (`eth0`, its address) instead of a veth
//! pair, and the devnet's own namespace one more (the gateway, where the chain
//! listens). One process (`por devnet links`) holds every TUN: it reads each IP
//! packet a host sends, looks up the link between its source and destination, and
//! drops it (loss, a link down) or delivers it to the destination's TUN after the
//! link's serialisation time (bandwidth, with a bounded queue: tail drop past it) and
//! latency plus jitter, in order per link. The kernel of this machine has no netem;
//! this needs only `/dev/net/tun`.
//!
//! The links live in `<dir>/links.json`: the emulator reads it at start and again
//! whenever it changes, so faults (latency spikes, bandwidth drops, loss, blackholes)
//! are edits of that file, by `por devnet link`. Defaults come from the hosts'
//! regions (`REGIONS`, `rtt_ms`).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{info, warn};

/// The file the links live in.
pub(crate) const LINKS_FILE: &str = "links.json";

/// The regions hosts are spread over, in turn.
pub(crate) const REGIONS: [&str; 6] = [
    "us-east-1",
    "us-west-2",
    "eu-west-1",
    "eu-central-1",
    "ap-northeast-1",
    "ap-southeast-2",
];

/// Round-trip times between `REGIONS` in ms, approximating the medians of AWS
/// inter-region pings that cloudping.co publishes, rounded (docs/testnet.md);
/// symmetric; within a region, 1 ms.
const RTT_MS: [[u32; 6]; 6] = [
    [1, 67, 68, 90, 145, 198],
    [67, 1, 120, 140, 98, 140],
    [68, 120, 1, 25, 200, 255],
    [90, 140, 25, 1, 225, 280],
    [145, 98, 200, 225, 1, 105],
    [198, 140, 255, 280, 105, 1],
];

/// The round trip between two regions of `REGIONS` (1 ms for unknown names: a LAN).
pub(crate) fn rtt_ms(a: &str, b: &str) -> u32 {
    let i = REGIONS.iter().position(|r| *r == a);
    let j = REGIONS.iter().position(|r| *r == b);
    match (i, j) {
        (Some(i), Some(j)) => RTT_MS[i][j],
        _ => 1,
    }
}

/// One direction of a link.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Link {
    /// One-way latency.
    pub(crate) latency_ms: u32,
    /// Added to each packet's latency: uniform in `[0, jitter_ms]` (packets of one
    /// link are never reordered).
    pub(crate) jitter_ms: u32,
    /// Probability that a packet is lost.
    pub(crate) loss: f64,
    /// Bits per second.
    pub(crate) bandwidth_bps: u64,
    /// A blackhole: every packet lost.
    pub(crate) down: bool,
}

impl Link {
    /// The default between hosts in regions `a` and `b`: half the round trip, 5 %
    /// of it as jitter, 0.1 % loss, 100 Mbit/s.
    pub(crate) fn between(a: &str, b: &str) -> Link {
        let one_way = rtt_ms(a, b).div_ceil(2);
        Link {
            latency_ms: one_way,
            jitter_ms: one_way / 20,
            loss: 0.001,
            bandwidth_bps: 100_000_000,
            down: false,
        }
    }

    /// The gateway's links (the chain): a LAN, nothing lost.
    fn lan() -> Link {
        Link {
            latency_ms: 0,
            jitter_ms: 0,
            loss: 0.0,
            bandwidth_bps: 1_000_000_000,
            down: false,
        }
    }
}

/// One emulated host (or the gateway).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Endpoint {
    /// `h01`, ..., or `gateway`.
    pub(crate) name: String,
    /// Its namespace (`None`: the devnet's own, for the gateway).
    pub(crate) netns: Option<String>,
    /// Its address.
    pub(crate) ip: Ipv4Addr,
    /// Its region (one of `REGIONS`).
    pub(crate) region: String,
}

/// Everything the emulator emulates.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Links {
    /// The hosts and the gateway.
    pub(crate) endpoints: Vec<Endpoint>,
    /// Links that differ from their regions' default, by `"h01>h02"` (one direction).
    #[serde(default)]
    pub(crate) overrides: HashMap<String, Link>,
}

impl Links {
    /// The link from `a` to `b` (names).
    pub(crate) fn link(&self, a: &Endpoint, b: &Endpoint) -> Link {
        if let Some(l) = self.overrides.get(&format!("{}>{}", a.name, b.name)) {
            return *l;
        }
        if a.name == "gateway" || b.name == "gateway" {
            return Link::lan();
        }
        Link::between(&a.region, &b.region)
    }

    /// Reads `<dir>/links.json`.
    pub(crate) fn load(dir: &Path) -> Result<Links> {
        let p = dir.join(LINKS_FILE);
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} does not parse", p.display()))
    }

    /// Writes `<dir>/links.json` (atomically).
    pub(crate) fn save(&self, dir: &Path) -> Result<()> {
        let p = dir.join(LINKS_FILE);
        let tmp = p.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, &p).with_context(|| format!("writing {}", p.display()))
    }

    /// The endpoint named `name`.
    pub(crate) fn endpoint(&self, name: &str) -> Result<&Endpoint> {
        self.endpoints
            .iter()
            .find(|e| e.name == name)
            .with_context(|| format!("no host {name:?} on the emulated links"))
    }
}

/// A packet queued on a link: when it is delivered, and its bytes.
type Queued = (Instant, Vec<u8>);

/// The most a link may hold queued (its buffer): past it, packets are dropped.
const QUEUE_LIMIT: Duration = Duration::from_millis(250);

/// One direction's running state: when the link is next free to send, when its
/// last packet is delivered (to keep order), and its delivery queue.
struct Lane {
    free_at: Instant,
    last_delivery: Instant,
    queue: mpsc::UnboundedSender<Queued>,
}

/// Runs the emulator for the devnet in `dir` until killed: makes the TUN devices,
/// prints a ready line, then forwards packets.
pub(crate) async fn run(dir: PathBuf) -> Result<()> {
    let links = Links::load(&dir)?;
    let mut devices = Vec::new();
    for e in &links.endpoints {
        let dev = make_tun(e)
            .await
            .with_context(|| format!("the TUN device of {}", e.name))?;
        devices.push(Arc::new(dev));
    }
    let by_ip: Arc<HashMap<Ipv4Addr, usize>> = Arc::new(
        links
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| (e.ip, i))
            .collect(),
    );
    let model = Arc::new(RwLock::new(links));
    println!(
        "{}",
        serde_json::json!({"event": "ready", "links": devices.len()})
    );
    tokio::spawn(reload(dir.clone(), model.clone()));
    let lanes: Arc<std::sync::Mutex<HashMap<(usize, usize), Lane>>> = Arc::default();
    let mut readers = Vec::new();
    for (src, dev) in devices.iter().enumerate() {
        let (dev, devices, by_ip, model, lanes) = (
            dev.clone(),
            devices.clone(),
            by_ip.clone(),
            model.clone(),
            lanes.clone(),
        );
        readers.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(src as u64);
            let mut buf = vec![0u8; 65_536];
            loop {
                let n = match dev.recv(&mut buf).await {
                    Ok(n) => n,
                    Err(e) => {
                        warn!(src, "TUN read failed: {e}");
                        return;
                    }
                };
                let Some(packet) = buf.get(..n) else { continue };
                // IPv4 only; the destination address at bytes 16..20.
                if packet.len() < 20 || packet[0] >> 4 != 4 {
                    continue;
                }
                let dst_ip = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
                let Some(&dst) = by_ip.get(&dst_ip) else {
                    continue;
                };
                let link = match model.read() {
                    Ok(m) => m.link(&m.endpoints[src], &m.endpoints[dst]),
                    Err(_) => return,
                };
                if link.down || (link.loss > 0.0 && rng.gen::<f64>() < link.loss) {
                    continue;
                }
                let now = Instant::now();
                let serialise = Duration::from_nanos(
                    (packet.len() as u64 * 8).saturating_mul(1_000_000_000)
                        / link.bandwidth_bps.max(1),
                );
                let jitter = if link.jitter_ms > 0 {
                    rng.gen_range(0..=u64::from(link.jitter_ms))
                } else {
                    0
                };
                let Ok(mut lanes) = lanes.lock() else { return };
                let lane = lanes.entry((src, dst)).or_insert_with(|| {
                    let (tx, rx) = mpsc::unbounded_channel();
                    tokio::spawn(deliver(rx, devices[dst].clone()));
                    Lane {
                        free_at: now,
                        last_delivery: now,
                        queue: tx,
                    }
                });
                let start = lane.free_at.max(now);
                if start.duration_since(now) > QUEUE_LIMIT {
                    continue; // the link's buffer is full: tail drop
                }
                lane.free_at = start + serialise;
                let at = (lane.free_at
                    + Duration::from_millis(u64::from(link.latency_ms) + jitter))
                .max(lane.last_delivery);
                lane.last_delivery = at;
                let _ = lane.queue.send((at, packet.to_vec()));
            }
        }));
    }
    for r in readers {
        let _ = r.await;
    }
    bail!("every TUN device failed")
}

/// Delivers one link's packets, in order, each at its time.
async fn deliver(mut rx: mpsc::UnboundedReceiver<Queued>, dev: Arc<tun::AsyncDevice>) {
    while let Some((at, packet)) = rx.recv().await {
        tokio::time::sleep_until(at).await;
        if dev.send(&packet).await.is_err() {
            return;
        }
    }
}

/// Reloads the links whenever their file changes.
async fn reload(dir: PathBuf, model: Arc<RwLock<Links>>) {
    let path = dir.join(LINKS_FILE);
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut seen: Option<SystemTime> = modified(&path);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = modified(&path);
        if now == seen {
            continue;
        }
        seen = now;
        match Links::load(&dir) {
            Ok(l) => {
                if let Ok(mut m) = model.write() {
                    // The endpoints are fixed at start; only the links change.
                    m.overrides = l.overrides;
                    info!(overrides = m.overrides.len(), "links reloaded");
                }
            }
            Err(e) => warn!("links not reloaded: {e:#}"),
        }
    }
}

/// Makes `e`'s TUN device inside its namespace (from a thread of its own, which
/// enters the namespace and then ends), with its address and the devnet's /24.
async fn make_tun(e: &Endpoint) -> Result<tun::AsyncDevice> {
    let (netns, ip) = (e.netns.clone(), e.ip);
    let name = if netns.is_some() {
        "eth0".to_string()
    } else {
        format!("pordev{}", ip.octets()[2])
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let make = || -> Result<tun::Device> {
            if let Some(ns) = &netns {
                let f = std::fs::File::open(format!("/run/netns/{ns}"))
                    .with_context(|| format!("opening namespace {ns}"))?;
                nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("entering namespace {ns}"))?;
            }
            let mut config = tun::Configuration::default();
            config
                .tun_name(&name)
                .address(ip)
                .netmask(Ipv4Addr::new(255, 255, 255, 0))
                .mtu(1500)
                .up();
            Ok(tun::create(&config)?)
        };
        let _ = tx.send(make());
    });
    let dev = rx.await.context("the TUN thread died")??;
    Ok(tun::AsyncDevice::new(dev)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_round_trips_are_symmetric_and_defaults_follow_them() {
        for (i, row) in RTT_MS.iter().enumerate() {
            for (j, rtt) in row.iter().enumerate() {
                assert_eq!(*rtt, RTT_MS[j][i]);
            }
        }
        let l = Link::between("us-east-1", "ap-southeast-2");
        assert_eq!((l.latency_ms, l.jitter_ms), (99, 4));
        assert_eq!(Link::between("eu-west-1", "eu-west-1").latency_ms, 1);
        assert_eq!(rtt_ms("mars", "us-east-1"), 1);
    }

    #[test]
    fn an_override_replaces_one_direction_only() {
        let ep = |n: &str, r: &str, i: u8| Endpoint {
            name: n.into(),
            netns: None,
            ip: Ipv4Addr::new(10, 77, 1, i),
            region: r.into(),
        };
        let (a, b) = (ep("h01", "us-east-1", 1), ep("h02", "eu-west-1", 2));
        let mut links = Links {
            endpoints: vec![a.clone(), b.clone()],
            overrides: HashMap::new(),
        };
        let spike = Link {
            latency_ms: 900,
            ..links.link(&a, &b)
        };
        links.overrides.insert("h01>h02".into(), spike);
        assert_eq!(links.link(&a, &b).latency_ms, 900);
        assert_eq!(links.link(&b, &a).latency_ms, 34);
        let gw = ep("gateway", "", 254);
        assert_eq!(links.link(&a, &gw), Link::lan());
    }
}
