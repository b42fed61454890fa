//! Where a devnet's hosts live on this machine: each in its own network namespace
//! with its own address (a veth pair onto one bridge), or, where namespaces are not
//! available, each on its own 127.x.y.z address of the loopback.
//!
//! Everything is done with `ip` (iproute2); nothing here needs iptables or netem. A
//! partition is a set of blackhole routes inside the namespaces on either side.

use std::net::IpAddr;
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// How the hosts are kept apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Isolation {
    /// Network namespaces when this process may make them (root, `ip` present),
    /// else loopback addresses.
    Auto,
    /// One network namespace per host, on a bridge.
    Netns,
    /// One 127.x.y.z address per host, all in this namespace.
    Loopback,
}

/// One host's place on the network.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct HostNet {
    /// Its namespace (`None` on the loopback).
    pub(crate) netns: Option<String>,
    /// Its address.
    pub(crate) ip: IpAddr,
}

/// The devnet's network: the bridge and subnet of its namespaces, or its loopback
/// prefix.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Net {
    /// The devnet's name: the prefix of every namespace and link it makes.
    pub(crate) name: String,
    /// `netns` or `loopback` (never `auto` once made).
    pub(crate) isolation: Isolation,
    /// The first three octets of the hosts' addresses (`10.77.3` or `127.77.3`).
    pub(crate) prefix: String,
    /// Whether the hosts are joined by the link emulator (TUN devices, see
    /// `links.rs`) rather than a bridge.
    pub(crate) emulated: bool,
}

/// Runs `ip <args>`, failing with what it printed.
fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `ip <args>`'s output, or `None` when it fails.
fn ip_output(args: &[&str]) -> Option<String> {
    let out = Command::new("ip").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether this process can make network namespaces.
fn netns_available() -> bool {
    nix::unistd::geteuid().is_root() && ip_output(&["netns", "list"]).is_some()
}

impl Net {
    /// Chooses the isolation and a free subnet for a devnet named `name`.
    /// `emulated`: the link emulator (`Some(true)`), a bridge (`Some(false)`), or
    /// the emulator wherever there are namespaces (`None`).
    pub(crate) fn plan(name: &str, wanted: Isolation, emulated: Option<bool>) -> Result<Net> {
        if name.is_empty()
            || name.len() > 8
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        {
            bail!("devnet name {name:?}: 1 to 8 lowercase letters or digits (it prefixes interface names)");
        }
        let isolation = match wanted {
            Isolation::Auto if netns_available() => Isolation::Netns,
            Isolation::Auto => Isolation::Loopback,
            Isolation::Netns if !netns_available() => bail!(
                "--isolation netns needs root and iproute2's `ip netns` (use --isolation loopback)"
            ),
            other => other,
        };
        let emulated = emulated.unwrap_or(isolation == Isolation::Netns);
        if emulated && isolation != Isolation::Netns {
            bail!("emulated links need network namespaces: pass --links bridge with --isolation loopback");
        }
        let first = if isolation == Isolation::Netns {
            "10.77"
        } else {
            "127.77"
        };
        let used = ip_output(&["-o", "addr"]).unwrap_or_default();
        let taken = |third: u8| {
            let p = format!("{first}.{third}.");
            used.contains(&p)
        };
        let third = (1..=250u8)
            .find(|t| !taken(*t))
            .context("no free 10.77.x.0/24 subnet for the devnet")?;
        Ok(Net {
            name: name.to_string(),
            isolation,
            prefix: format!("{first}.{third}"),
            emulated,
        })
    }

    fn bridge(&self) -> String {
        format!("{}0", self.name)
    }

    /// The address the hosts reach this (the root) namespace on: the chain's.
    pub(crate) fn gateway(&self) -> IpAddr {
        match self.isolation {
            Isolation::Netns => format!("{}.254", self.prefix).parse(),
            _ => "127.0.0.1".parse(),
        }
        .unwrap_or(IpAddr::from([127, 0, 0, 1]))
    }

    /// Makes the bridge (namespaces joined by a bridge only; the link emulator makes
    /// its own devices).
    pub(crate) fn create(&self) -> Result<()> {
        if self.isolation != Isolation::Netns || self.emulated {
            return Ok(());
        }
        let br = self.bridge();
        // A fixed address: a bridge otherwise takes the lowest of its ports', so a
        // host (or VM) joining later could change it under everyone's ARP cache and
        // stall every connection through the gateway (the chain's) for minutes.
        let third = self.prefix.rsplit('.').next().unwrap_or("0");
        let third: u8 = third.parse().unwrap_or(0);
        let mac = format!("02:70:6f:72:{third:02x}:fe");
        ip(&["link", "add", &br, "address", &mac, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{}/24", self.gateway()), "dev", &br])?;
        ip(&["link", "set", &br, "up"])
    }

    /// The name of host `i` (1-based): `h01`, `h02`, ...
    pub(crate) fn host_name(i: usize) -> String {
        format!("h{i:02}")
    }

    /// Makes host `i` (1-based, at most 250): its namespace, veth pair and address.
    pub(crate) fn add_host(&self, i: usize) -> Result<HostNet> {
        if !(1..=250).contains(&i) {
            bail!("a devnet has 1 to 250 hosts");
        }
        let ip_addr: IpAddr = format!("{}.{i}", self.prefix)
            .parse()
            .context("host address")?;
        if self.isolation != Isolation::Netns {
            return Ok(HostNet {
                netns: None,
                ip: ip_addr,
            });
        }
        let ns = format!("{}-{}", self.name, Net::host_name(i));
        let veth = format!("{}-{i}", self.name);
        ip(&["netns", "add", &ns])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        if self.emulated {
            // Its `eth0` is a TUN device the link emulator makes.
            return Ok(HostNet {
                netns: Some(ns),
                ip: ip_addr,
            });
        }
        ip(&[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ])?;
        ip(&["link", "set", &veth, "master", &self.bridge(), "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{ip_addr}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        Ok(HostNet {
            netns: Some(ns),
            ip: ip_addr,
        })
    }

    /// Cuts every host in `side` off from every host in `others`, both ways
    /// (blackhole routes in each namespace).
    pub(crate) fn partition(&self, side: &[HostNet], others: &[HostNet]) -> Result<()> {
        self.routes("add", side, others)
    }

    /// Undoes [`Net::partition`] of the same sets.
    pub(crate) fn heal(&self, side: &[HostNet], others: &[HostNet]) -> Result<()> {
        self.routes("del", side, others)
    }

    fn routes(&self, op: &str, side: &[HostNet], others: &[HostNet]) -> Result<()> {
        if self.isolation != Isolation::Netns {
            bail!("partitions need network namespaces: this devnet runs on the loopback (start it as root with iproute2)");
        }
        for (a, b) in side
            .iter()
            .flat_map(|a| others.iter().map(move |b| (a, b)))
            .chain(others.iter().flat_map(|b| side.iter().map(move |a| (b, a))))
        {
            let ns = a.netns.as_deref().context("a host without a namespace")?;
            let to = format!("{}/32", b.ip);
            let r = ip(&["-n", ns, "route", op, "blackhole", &to]);
            // Adding twice, or removing what is not there, is not an error here.
            if let Err(e) = r {
                let text = e.to_string();
                if !(text.contains("File exists") || text.contains("No such process")) {
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Removes every namespace and link of the devnet named `name`, whatever state
    /// it was left in. Returns what was removed.
    pub(crate) fn remove_all(name: &str) -> Vec<String> {
        let mut removed = Vec::new();
        let prefix = format!("{name}-h");
        for line in ip_output(&["netns", "list"]).unwrap_or_default().lines() {
            let ns = line.split_whitespace().next().unwrap_or_default();
            if ns.starts_with(&prefix) && ip(&["netns", "del", ns]).is_ok() {
                removed.push(format!("netns {ns}"));
            }
        }
        let br = format!("{name}0");
        if ip_output(&["link", "show", &br]).is_some() && ip(&["link", "del", &br]).is_ok() {
            removed.push(format!("bridge {br}"));
        }
        removed
    }
}

/// Connects to `addr` from inside network namespace `netns` (a node's control
/// endpoint listens on its namespace's loopback). The socket stays in that
/// namespace; the connecting thread enters it and is then discarded.
/// One end of a TCP connection `reset` may cut: a node's pid and listen address.
pub(crate) struct TcpEnd {
    /// The node's process.
    pub(crate) pid: u32,
    /// Where it listens.
    pub(crate) listen: std::net::SocketAddr,
}

/// `ss` in namespace `netns` (or here) with `args`.
fn ss(netns: Option<&str>, args: &[&str]) -> Result<std::process::Output> {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = std::process::Command::new("ip");
            c.args(["netns", "exec", ns, "ss"]);
            c
        }
        None => std::process::Command::new("ss"),
    };
    cmd.args(args).output().context("running ss (iproute2)")
}

/// Resets every TCP connection between the nodes `a` (in namespace `netns`, or on
/// this machine's loopback, as `b` then is too) and `b`, with `ss -K`: the socket is
/// destroyed and its peer receives a RST. A connection is theirs when `a`'s process
/// holds it to `b`'s listen address, `b`'s to `a`'s, or `a`'s from its listen address
/// to `b`'s address. Returns how many it reset.
pub(crate) fn reset(netns: Option<&str>, a: &TcpEnd, b: &TcpEnd) -> Result<usize> {
    let out = ss(netns, &["-t", "-n", "-p", "-H", "state", "established"])?;
    if !out.status.success() {
        bail!("ss: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut reset = 0;
    for line in text.lines() {
        // Recv-Q Send-Q Local Peer users:(("por",pid=N,fd=M))
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(peer)) = (
            f.get(2)
                .and_then(|x| x.parse::<std::net::SocketAddr>().ok()),
            f.get(3)
                .and_then(|x| x.parse::<std::net::SocketAddr>().ok()),
        ) else {
            continue;
        };
        let owner = |pid: u32| line.contains(&format!("pid={pid},"));
        let theirs = (owner(a.pid) && peer == b.listen)
            || (owner(b.pid) && peer == a.listen)
            || (owner(a.pid) && local == a.listen && peer.ip() == b.listen.ip());
        if !theirs {
            continue;
        }
        let (l, p) = (local.to_string(), peer.to_string());
        let k = ss(netns, &["-K", "-t", "-n", "src", &l, "dst", &p])?;
        if !k.status.success() {
            bail!(
                "ss -K: {} (the kernel needs CONFIG_INET_DIAG_DESTROY, and this needs root)",
                String::from_utf8_lossy(&k.stderr).trim()
            );
        }
        reset += 1;
    }
    Ok(reset)
}

pub(crate) async fn connect_in(netns: &str, addr: &str) -> Result<tokio::net::TcpStream> {
    let (path, addr) = (format!("/run/netns/{netns}"), addr.to_string());
    let (tx, rx) = tokio::sync::oneshot::channel();
    // A thread of its own, not the blocking pool's: it leaves this namespace for good.
    std::thread::spawn(move || {
        let connect = || -> Result<std::net::TcpStream> {
            let f = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("entering {path}"))?;
            let s = std::net::TcpStream::connect(&addr)
                .with_context(|| format!("connecting to {addr} in {path}"))?;
            s.set_nonblocking(true)?;
            Ok(s)
        };
        let _ = tx.send(connect());
    });
    let std_stream = rx.await.context("the connecting thread died")??;
    Ok(tokio::net::TcpStream::from_std(std_stream)?)
}
