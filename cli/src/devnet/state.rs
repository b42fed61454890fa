//! A devnet's state on disk (`<dir>/devnet.json`): what `por devnet up` made, so that
//! every later command (and `down`, after any crash) finds the processes and links.
//! And the processes themselves: started detached, their ready line read from a file.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::net::{HostNet, Net};

/// The state file's name inside the devnet directory.
const STATE_FILE: &str = "devnet.json";

/// How long a process may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A `por` process of the devnet.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Daemon {
    /// Its pid while it runs.
    pub(crate) pid: u32,
    /// The `por` arguments it was started with (a restart reuses them).
    pub(crate) args: Vec<String>,
    /// The namespace it runs in (`None`: this one).
    pub(crate) netns: Option<String>,
    /// Its log (stderr); its ready line goes to the same path with `.ready`.
    pub(crate) log: PathBuf,
    /// The ready line it printed.
    pub(crate) ready: Value,
}

/// One host: its place on the network and its node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Host {
    /// `h01`, `h02`, ...
    pub(crate) name: String,
    /// The NEAR account its node signs as on the devnet's chain.
    pub(crate) account: String,
    /// Its namespace and address.
    pub(crate) net: HostNet,
    /// Its node.
    pub(crate) node: Daemon,
    /// How it misbehaves by configuration (`por devnet up --misbehave`); empty for an
    /// honest host.
    #[serde(default)]
    pub(crate) misbehaviour: Vec<String>,
}

/// Everything a devnet is made of.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct State {
    /// Where its files are.
    pub(crate) dir: PathBuf,
    /// Its network.
    pub(crate) net: Net,
    /// `tcp` or `quic`.
    pub(crate) transport: String,
    /// The link emulator (`None` with a bridge, or until started).
    #[serde(default)]
    pub(crate) links: Option<Daemon>,
    /// The served chain (`None` until started).
    pub(crate) chain: Option<Daemon>,
    /// The chain's address, as the hosts reach it.
    pub(crate) chain_addr: String,
    /// The hosts.
    pub(crate) hosts: Vec<Host>,
    /// Channels opened: `(host, host, channel id)`.
    pub(crate) channels: Vec<(String, String, u64)>,
    /// Partitions in force: each a set of hosts cut off from all the others.
    pub(crate) partitions: Vec<Vec<String>>,
}

impl State {
    /// The state file of the devnet in `dir`.
    pub(crate) fn path(dir: &Path) -> PathBuf {
        dir.join(STATE_FILE)
    }

    /// Loads the devnet in `dir`.
    pub(crate) fn load(dir: &Path) -> Result<State> {
        let p = State::path(dir);
        let text = std::fs::read_to_string(&p).with_context(|| {
            format!("no devnet in {} (`por devnet up` makes one)", dir.display())
        })?;
        serde_json::from_str(&text).with_context(|| format!("{} does not parse", p.display()))
    }

    /// Writes the state (atomically: a crash leaves the old or the new file).
    pub(crate) fn save(&self) -> Result<()> {
        let p = State::path(&self.dir);
        let tmp = p.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &p).with_context(|| format!("writing {}", p.display()))
    }

    /// The id of the channel between hosts `a` and `b`, opened either way.
    pub(crate) fn channel_between(&self, a: &str, b: &str) -> Result<u64> {
        self.channels
            .iter()
            .find(|(x, y, _)| (x == a && y == b) || (x == b && y == a))
            .map(|c| c.2)
            .with_context(|| format!("no channel between {a} and {b}"))
    }

    /// The host named `name`.
    pub(crate) fn host(&self, name: &str) -> Result<&Host> {
        self.hosts.iter().find(|h| h.name == name).with_context(|| {
            format!(
                "no host {name:?} in this devnet (hosts are h01..h{:02})",
                self.hosts.len()
            )
        })
    }

    /// The host named `name`, to change.
    pub(crate) fn host_mut(&mut self, name: &str) -> Result<&mut Host> {
        let n = self.hosts.len();
        self.hosts
            .iter_mut()
            .find(|h| h.name == name)
            .with_context(|| format!("no host {name:?} in this devnet (hosts are h01..h{n:02})"))
    }

    /// Every host not in `side` (each of which must be a host).
    pub(crate) fn others(&self, side: &[String]) -> Result<Vec<String>> {
        for name in side {
            self.host(name)?;
        }
        Ok(self
            .hosts
            .iter()
            .map(|h| h.name.clone())
            .filter(|n| !side.contains(n))
            .collect())
    }

    /// The hosts' network places, by name.
    pub(crate) fn nets(&self, names: &[String]) -> Result<Vec<HostNet>> {
        names
            .iter()
            .map(|n| self.host(n).map(|h| h.net.clone()))
            .collect()
    }
}

impl Host {
    /// The node's control endpoint, and the token to call it with.
    pub(crate) fn control(&self) -> Result<(String, String)> {
        let addr = self.node.ready["control"]
            .as_str()
            .context("the node's ready line names no control endpoint")?
            .to_string();
        let token_file = self.node.ready["token_file"]
            .as_str()
            .context("the node's ready line names no token file")?;
        Ok((addr, por_node::control::read_token(Path::new(token_file))?))
    }

    /// The node's id (hex), from its ready line.
    pub(crate) fn id(&self) -> &str {
        self.node.ready["id"].as_str().unwrap_or_default()
    }

    /// The host's address.
    pub(crate) fn ip(&self) -> IpAddr {
        self.net.ip
    }
}

impl Daemon {
    /// Starts `por <args>` detached (its own process group, so it outlives this
    /// command and ignores this terminal's Ctrl-C), in `netns` if given, and waits for
    /// its ready line.
    pub(crate) fn start(args: Vec<String>, netns: Option<String>, log: PathBuf) -> Result<Daemon> {
        let exe = std::env::current_exe().context("finding the por binary")?;
        let mut cmd = match &netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        // The hosts are configured by their flags and files alone, not by whatever
        // POR_* variables the operator's shell holds.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("POR_") {
                cmd.env_remove(&k);
            }
        }
        let ready_path = log.with_extension("ready");
        let _ = std::fs::remove_file(&ready_path);
        let stdout = std::fs::File::create(&ready_path)
            .with_context(|| format!("creating {}", ready_path.display()))?;
        // Appended to: a host's log runs on across its restarts.
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        use std::os::unix::process::CommandExt;
        let mut child = cmd
            .args(&args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .context("starting por")?;
        let started = Instant::now();
        loop {
            let text = std::fs::read_to_string(&ready_path).unwrap_or_default();
            if let Some(line) = text.lines().next().filter(|_| text.contains('\n')) {
                let ready: Value = serde_json::from_str(line).with_context(|| {
                    format!("por {}: its first line is not JSON: {line}", args.join(" "))
                })?;
                return Ok(Daemon {
                    pid: child.id(),
                    args,
                    netns,
                    log,
                    ready,
                });
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "por {} exited ({status}) before it was ready; its log ({}) ends:\n{}",
                    args.join(" "),
                    log.display(),
                    tail(&log, 15)
                );
            }
            if started.elapsed() > READY_TIMEOUT {
                let _ = child.kill();
                bail!(
                    "por {} was not ready after {READY_TIMEOUT:?}; its log ({}) ends:\n{}",
                    args.join(" "),
                    log.display(),
                    tail(&log, 15)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether it still runs: a live process with this pid whose command line is
    /// this daemon's (a pid reused by another process, after this one died and the
    /// state file grew stale, is not ours to signal).
    pub(crate) fn alive(&self) -> bool {
        let pid = Pid::from_raw(i32::try_from(self.pid).unwrap_or(0));
        if pid.as_raw() <= 0 || kill(pid, None).is_err() {
            return false;
        }
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        if stat.contains(") Z ") {
            return false;
        }
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", self.pid)).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        // `ip netns exec` has exec'd por by the time the ready line was read: the
        // command line ends with exactly our arguments.
        args.len() > self.args.len()
            && args[args.len() - 1 - self.args.len()..args.len() - 1]
                .iter()
                .zip(&self.args)
                .all(|(a, b)| *a == b.as_bytes())
    }

    /// Sends `signal`, then waits (up to `wait`) for it to be gone; SIGKILL after that.
    /// Nothing is sent to a pid that is no longer this daemon's.
    pub(crate) fn stop(&self, signal: Signal, wait: Duration) {
        let pid = Pid::from_raw(i32::try_from(self.pid).unwrap_or(0));
        if !self.alive() {
            return;
        }
        let _ = kill(pid, signal);
        let until = Instant::now() + wait;
        while self.alive() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.alive() {
            let _ = kill(pid, Signal::SIGKILL);
            while self.alive() && Instant::now() < until + Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Starts it again with the same arguments, in the same place.
    pub(crate) fn restart(&self) -> Result<Daemon> {
        Daemon::start(self.args.clone(), self.netns.clone(), self.log.clone())
    }
}

/// The last `n` lines of a file.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_is_ours_only_while_its_command_line_is() {
        // This test process: alive, but its arguments are not a daemon's.
        let me = Daemon {
            pid: std::process::id(),
            args: vec![
                "node".into(),
                "run".into(),
                "--config".into(),
                "/nowhere".into(),
            ],
            netns: None,
            log: PathBuf::from("/dev/null"),
            ready: Value::Null,
        };
        assert!(!me.alive(), "a foreign process counted as the daemon");
        // Its real command line: ours.
        let cmdline = std::fs::read("/proc/self/cmdline").unwrap();
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .skip(1)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let ours = Daemon { args, ..me.clone() };
        assert!(ours.alive());
        let gone = Daemon { pid: 0, ..ours };
        assert!(!gone.alive());
    }
}
