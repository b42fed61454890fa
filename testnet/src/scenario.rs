//! Scenario files: nodes, stakes, edges with their terms, policies, requests, faults.
//!
//! See `testnet/scenarios/*.toml` and `docs/simulator.md` for the format.

use serde::{Deserialize, Deserializer};

use por_protocol::{Amount, ProofForwarding, SeverPolicy};

/// An amount in a scenario: a TOML integer, or a decimal string for values past i64.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AmountSpec(pub u128);

impl<'de> Deserialize<'de> for AmountSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(v) => Ok(AmountSpec(u128::from(v))),
            Raw::Str(s) => s
                .replace('_', "")
                .parse::<u128>()
                .map(AmountSpec)
                .map_err(|e| serde::de::Error::custom(format!("amount {s:?}: {e}"))),
        }
    }
}

impl From<AmountSpec> for Amount {
    fn from(a: AmountSpec) -> Amount {
        Amount(a.0)
    }
}

/// A whole scenario.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name.
    pub name: String,
    /// What it shows.
    #[serde(default)]
    pub description: String,
    /// Seed for every random choice (drops, nonces of keys).
    #[serde(default)]
    pub seed: u64,
    /// The simulation stops at this virtual time.
    pub duration_ms: u64,
    /// Delay between a sever being submitted and the chain reporting it to all nodes.
    #[serde(default = "default_chain_delay")]
    pub chain_delay_ms: u64,
    /// Nodes.
    pub nodes: Vec<NodeSpec>,
    /// Edges.
    pub edges: Vec<EdgeSpec>,
    /// Requests to send.
    #[serde(default)]
    pub requests: Vec<RequestSpec>,
    /// Faults to inject.
    #[serde(default)]
    pub faults: Vec<FaultSpec>,
    /// Traffic at a rate: request flows (made into `requests` by
    /// [`Scenario::expand_loads`]) and file transfers (real processes only).
    #[serde(default)]
    pub loads: Vec<LoadSpec>,
    /// Whether [`Scenario::expand_loads`] has made the request loads into requests
    /// (a scenario file cannot set it).
    #[serde(skip)]
    pub loads_expanded: bool,
}

fn default_chain_delay() -> u64 {
    2_000
}

fn default_true() -> bool {
    true
}

/// A node and its policies.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// Unique name, used in the output.
    pub name: String,
    /// Stake on the contract.
    #[serde(default)]
    pub stake: AmountSpec,
    /// What to do when a downstream is overdue.
    #[serde(default = "default_sever")]
    pub sever: SeverPolicy,
    /// When to forward proofs upstream.
    #[serde(default = "default_forward")]
    pub forward_proofs: ProofForwarding,
    /// §5.4 heuristic window; absent disables it.
    #[serde(default)]
    pub heuristic_window_ms: Option<u64>,
    /// Misbehaviour: never pay late fees.
    #[serde(default)]
    pub withhold_late_fees: bool,
    /// Whether the node answers requests addressed to it.
    #[serde(default = "default_true")]
    pub respond: bool,
    /// Time the application takes to answer.
    #[serde(default)]
    pub response_delay_ms: u64,
}

impl NodeSpec {
    /// The engine configuration this node's policies describe (no fee tolerance: the
    /// simulator's clock is exact; a real network adds some).
    pub fn engine_config(&self) -> por_protocol::EngineConfig {
        por_protocol::EngineConfig {
            sever_policy: self.sever,
            proof_forwarding: self.forward_proofs,
            heuristic: self
                .heuristic_window_ms
                .map(|window_ms| por_protocol::Heuristic { window_ms }),
            fee_tolerance_ms: 0,
            max_in_flight: 1_000_000,
            max_in_flight_per_peer: 1_000_000,
            silence_syncs: 3,
            closing_retention_ms: 600_000,
            closing_retention_bytes: 8 << 20,
            misbehaviour: por_protocol::Misbehaviour {
                withhold_late_fees: self.withhold_late_fees,
            },
            ..por_protocol::EngineConfig::default()
        }
    }
}

fn default_bandwidth() -> u64 {
    por_protocol::types::EdgeTerms::DEFAULT_BANDWIDTH
}

fn default_sever() -> SeverPolicy {
    SeverPolicy::Never
}

fn default_forward() -> ProofForwarding {
    ProofForwarding::Immediate
}

/// An edge and its terms.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeSpec {
    /// One endpoint (the proposer).
    pub a: String,
    /// The other endpoint.
    pub b: String,
    /// Promised one-way latency.
    pub latency_ms: u64,
    /// Actual one-way latency of the simulated link (defaults to the promise).
    #[serde(default)]
    pub actual_latency_ms: Option<u64>,
    /// Base cost per message.
    #[serde(default)]
    pub base_cost: AmountSpec,
    /// Cost per byte carried (request body plus response limit).
    #[serde(default)]
    pub byte_cost: AmountSpec,
    /// Sync interval.
    pub sync_interval_ms: u64,
    /// Sync phase.
    #[serde(default)]
    pub sync_phase_ms: u64,
    /// Highest late-fee rate accepted.
    pub max_late_fee_rate: AmountSpec,
    /// Promised bandwidth, bytes per second (default 125 MB/s).
    #[serde(default = "default_bandwidth")]
    pub bandwidth: u64,
    /// `a`'s deposit.
    pub deposit_a: AmountSpec,
    /// `b`'s deposit.
    pub deposit_b: AmountSpec,
}

impl EdgeSpec {
    /// The terms the edge opens with (the simulator's, the demo's and `por devnet
    /// run`'s alike).
    pub fn terms(&self) -> por_protocol::types::EdgeTerms {
        por_protocol::types::EdgeTerms {
            latency_ms: self.latency_ms,
            base_cost: self.base_cost.into(),
            byte_cost: self.byte_cost.into(),
            sync_interval_ms: self.sync_interval_ms,
            sync_phase_ms: self.sync_phase_ms,
            max_late_fee_rate: self.max_late_fee_rate.into(),
            bandwidth: self.bandwidth,
        }
    }
}

/// A request to send.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    /// When.
    pub at_ms: u64,
    /// Sender.
    pub client: String,
    /// Receiver.
    pub server: String,
    /// Body text.
    #[serde(default)]
    pub body: String,
    /// The response size bought, in bytes (absent: the body's length, since simulated
    /// servers echo the body).
    #[serde(default)]
    pub response_limit: Option<u64>,
    /// Late-fee rate per ms.
    pub late_fee_rate: AmountSpec,
    /// Explicit route by node names (client first); otherwise the cheapest route.
    #[serde(default)]
    pub route: Option<Vec<String>>,
    /// Bound for route finding.
    #[serde(default)]
    pub max_rtt_ms: Option<u64>,
}

/// A fault.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum FaultSpec {
    /// The node is down: it neither receives nor sends, and its timers do not run.
    Offline {
        /// The node.
        node: String,
        /// From.
        from_ms: u64,
        /// Until (absent: for good).
        #[serde(default)]
        until_ms: Option<u64>,
        /// Come back from the durable store (a crash) rather than resume in memory.
        #[serde(default)]
        restart: bool,
    },
    /// Messages on a link are dropped with a probability.
    Drop {
        /// Sender.
        from: String,
        /// Receiver.
        to: String,
        /// Probability in [0, 1].
        probability: f64,
        /// From.
        #[serde(default)]
        from_ms: u64,
        /// Until.
        #[serde(default)]
        until_ms: Option<u64>,
    },
    /// Messages on a link take extra time (order is preserved).
    Delay {
        /// Sender.
        from: String,
        /// Receiver.
        to: String,
        /// Extra one-way delay.
        extra_ms: u64,
        /// From.
        #[serde(default)]
        from_ms: u64,
        /// Until.
        #[serde(default)]
        until_ms: Option<u64>,
    },
    /// A node severs one of its edges at a given time.
    Sever {
        /// The severing node.
        node: String,
        /// The other endpoint.
        peer: String,
        /// When.
        at_ms: u64,
    },
}

impl Scenario {
    /// Parses a scenario from TOML text.
    pub fn from_toml(text: &str) -> Result<Scenario, toml::de::Error> {
        toml::from_str(text)
    }

    /// The scenario with its request loads made into requests, after the explicit
    /// ones (so `r1`… keep their labels), each load's in time order (the loads stay
    /// listed; file loads' transfers are [`Scenario::file_transfers`]). The arrivals
    /// come from the scenario's seed, so the simulator and `por devnet run` send the
    /// same requests at the same times. Idempotent.
    pub fn expand_loads(mut self) -> Result<Scenario, LoadError> {
        if self.loads_expanded {
            return Ok(self);
        }
        let mut total = self.requests.len();
        let mut body_total = 0u64;
        let mut made = Vec::new();
        for (k, load) in self.loads.iter().enumerate() {
            let times = load.arrivals(self.seed, k, self.duration_ms)?;
            total = total.saturating_add(times.len());
            if total > MAX_LOAD_EVENTS {
                return Err(LoadError::TooMany {
                    max: MAX_LOAD_EVENTS,
                });
            }
            self.check_load(k, load)?;
            if let LoadSpec::Requests {
                client,
                server,
                body_bytes,
                response_limit,
                late_fee_rate,
                route,
                max_rtt_ms,
                ..
            } = load
            {
                body_total =
                    body_total.saturating_add(body_bytes.saturating_mul(times.len() as u64));
                if body_total > MAX_LOAD_BODY_TOTAL {
                    return Err(LoadError::TooLarge {
                        max: MAX_LOAD_BODY_TOTAL,
                    });
                }
                for at_ms in times {
                    made.push(RequestSpec {
                        at_ms,
                        client: client.clone(),
                        server: server.clone(),
                        body: "x".repeat(usize::try_from(*body_bytes).unwrap_or(0)),
                        response_limit: *response_limit,
                        late_fee_rate: *late_fee_rate,
                        route: route.clone(),
                        max_rtt_ms: *max_rtt_ms,
                    });
                }
            }
        }
        self.requests.extend(made);
        self.loads_expanded = true;
        Ok(self)
    }

    /// Every file transfer the file loads ask for: when, and which load (its index
    /// in `loads`).
    pub fn file_transfers(&self) -> Result<Vec<(u64, usize)>, LoadError> {
        let mut out = Vec::new();
        for (k, load) in self.loads.iter().enumerate() {
            if matches!(load, LoadSpec::Files { .. }) {
                self.check_load(k, load)?;
                let times = load.arrivals(self.seed, k, self.duration_ms)?;
                if out.len().saturating_add(times.len()) > MAX_LOAD_EVENTS {
                    return Err(LoadError::TooMany {
                        max: MAX_LOAD_EVENTS,
                    });
                }
                out.extend(times.into_iter().map(|t| (t, k)));
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// A load's names are the scenario's nodes, and a file load's providers and
    /// window are ones a transfer can use.
    fn check_load(&self, k: usize, load: &LoadSpec) -> Result<(), LoadError> {
        let names: Vec<&String> = match load {
            LoadSpec::Requests { client, server, .. } => vec![client, server],
            LoadSpec::Files {
                client, providers, ..
            } => std::iter::once(client).chain(providers).collect(),
        };
        for n in names {
            if !self.nodes.iter().any(|x| &x.name == n) {
                return Err(LoadError::UnknownNode {
                    load: k + 1,
                    name: n.clone(),
                });
            }
        }
        if let LoadSpec::Files {
            client,
            providers,
            window,
            ..
        } = load
        {
            if providers.is_empty() || providers.contains(client) {
                return Err(LoadError::Providers { load: k + 1 });
            }
            if let Some(w) = window.filter(|w| !(1..=MAX_FILE_WINDOW).contains(w)) {
                return Err(LoadError::FileWindow {
                    load: k + 1,
                    window: w,
                });
            }
        }
        Ok(())
    }
}

/// The most requests and transfers a scenario's loads may make (with its explicit
/// requests).
pub const MAX_LOAD_EVENTS: usize = 200_000;

/// The largest request body a load may ask for.
pub const MAX_LOAD_BODY: u64 = 1 << 20;

/// The most body bytes all request loads together may make (the simulator holds
/// every request's body from the start).
pub const MAX_LOAD_BODY_TOTAL: u64 = 64 << 20;

/// The largest file a load may transfer.
pub const MAX_LOAD_FILE: u64 = 1 << 30;

/// The most requests in flight per provider a file load may ask for (the node's
/// `files_get` takes 1 to 64).
pub const MAX_FILE_WINDOW: u64 = 64;

/// How a load's arrivals are spaced.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Arrivals {
    /// A Poisson process: exponential gaps of mean `1 / per_s`.
    #[default]
    Poisson,
    /// Every `1 / per_s` exactly, the first at `from_ms`.
    Even,
}

/// Traffic at a rate, from `from_ms` until `until_ms` (absent: the scenario's end).
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LoadSpec {
    /// Requests from one client to one server, their bodies `body_bytes` long and
    /// echoed back.
    Requests {
        /// Sender.
        client: String,
        /// Receiver.
        server: String,
        /// Mean arrivals per second.
        per_s: f64,
        /// How arrivals are spaced.
        #[serde(default)]
        arrivals: Arrivals,
        /// From.
        #[serde(default)]
        from_ms: u64,
        /// Until.
        #[serde(default)]
        until_ms: Option<u64>,
        /// Each request's body length (bytes of `x`).
        #[serde(default = "default_body_bytes")]
        body_bytes: u64,
        /// The response size bought (absent: the body's length).
        #[serde(default)]
        response_limit: Option<u64>,
        /// Late-fee rate per ms.
        late_fee_rate: AmountSpec,
        /// Explicit route by node names (client first); otherwise the cheapest route.
        #[serde(default)]
        route: Option<Vec<String>>,
        /// Bound for route finding.
        #[serde(default)]
        max_rtt_ms: Option<u64>,
    },
    /// File transfers: a new file of `size_bytes` random bytes put in every
    /// provider's store and fetched by the client's node from them, verified piece by
    /// piece. Real processes only: the simulator has no file layer.
    Files {
        /// The fetching node.
        client: String,
        /// The nodes holding the file.
        providers: Vec<String>,
        /// Mean transfers started per second.
        per_s: f64,
        /// How arrivals are spaced.
        #[serde(default)]
        arrivals: Arrivals,
        /// From.
        #[serde(default)]
        from_ms: u64,
        /// Until.
        #[serde(default)]
        until_ms: Option<u64>,
        /// Each file's size.
        size_bytes: u64,
        /// Requests in flight per provider (absent: the transfer engine's default).
        #[serde(default)]
        window: Option<u64>,
    },
}

fn default_body_bytes() -> u64 {
    32
}

impl LoadSpec {
    /// The load's arrival times (ms), in order: load `k` of a scenario seeded `seed`
    /// draws from its own stream, so adding a load moves no other load's arrivals.
    pub fn arrivals(&self, seed: u64, k: usize, duration_ms: u64) -> Result<Vec<u64>, LoadError> {
        use rand::{Rng, SeedableRng};
        let (per_s, arrivals, from_ms, until_ms, size, max) = match self {
            LoadSpec::Requests {
                per_s,
                arrivals,
                from_ms,
                until_ms,
                body_bytes,
                ..
            } => (
                *per_s,
                *arrivals,
                *from_ms,
                *until_ms,
                *body_bytes,
                MAX_LOAD_BODY,
            ),
            LoadSpec::Files {
                per_s,
                arrivals,
                from_ms,
                until_ms,
                size_bytes,
                ..
            } => (
                *per_s,
                *arrivals,
                *from_ms,
                *until_ms,
                *size_bytes,
                MAX_LOAD_FILE,
            ),
        };
        let load = k + 1;
        if !(per_s.is_finite() && per_s > 0.0 && per_s <= 100_000.0) {
            return Err(LoadError::Rate { load, per_s });
        }
        let until = until_ms.unwrap_or(duration_ms);
        if from_ms >= until || until > duration_ms {
            return Err(LoadError::Window {
                load,
                from_ms,
                until_ms: until,
                duration_ms,
            });
        }
        if size > max || (size == 0 && matches!(self, LoadSpec::Files { .. })) {
            return Err(LoadError::Size { load, size, max });
        }
        let expected = (until - from_ms) as f64 / 1000.0 * per_s;
        if expected > MAX_LOAD_EVENTS as f64 {
            return Err(LoadError::TooMany {
                max: MAX_LOAD_EVENTS,
            });
        }
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(
            seed ^ (k as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        );
        let mean_ms = 1000.0 / per_s;
        let mut out = Vec::new();
        let mut t = from_ms as f64;
        if arrivals == Arrivals::Poisson {
            t += -mean_ms * (1.0 - rng.gen::<f64>()).ln();
        }
        while t < until as f64 {
            out.push(t as u64);
            if out.len() > MAX_LOAD_EVENTS {
                return Err(LoadError::TooMany {
                    max: MAX_LOAD_EVENTS,
                });
            }
            t += match arrivals {
                Arrivals::Even => mean_ms,
                Arrivals::Poisson => -mean_ms * (1.0 - rng.gen::<f64>()).ln(),
            };
        }
        Ok(out)
    }
}

/// Why a scenario's loads cannot be run.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LoadError {
    /// A rate that is not a positive number up to 100,000 per second.
    #[error("load {load}: per_s {per_s} is not in (0, 100000]")]
    Rate {
        /// The load (1 is the first).
        load: usize,
        /// Its rate.
        per_s: f64,
    },
    /// An empty window, or one past the scenario's end.
    #[error("load {load}: from {from_ms} ms until {until_ms} ms is not a window within the scenario's {duration_ms} ms")]
    Window {
        /// The load.
        load: usize,
        /// Its start.
        from_ms: u64,
        /// Its end.
        until_ms: u64,
        /// The scenario's length.
        duration_ms: u64,
    },
    /// A body or file too large (or an empty file).
    #[error("load {load}: size {size} bytes: at most {max}, and a file is not empty")]
    Size {
        /// The load.
        load: usize,
        /// The size asked for.
        size: u64,
        /// The most allowed.
        max: u64,
    },
    /// More arrivals than a scenario may make.
    #[error("the loads make more than {max} requests and transfers")]
    TooMany {
        /// The bound.
        max: usize,
    },
    /// Request loads whose bodies add up to more than a scenario may hold.
    #[error("the request loads' bodies add up to more than {max} bytes")]
    TooLarge {
        /// The bound.
        max: u64,
    },
    /// A name that is not one of the scenario's nodes.
    #[error("load {load}: unknown node {name:?}")]
    UnknownNode {
        /// The load.
        load: usize,
        /// The name.
        name: String,
    },
    /// A file load's window outside 1 to [`MAX_FILE_WINDOW`].
    #[error(
        "load {load}: window {window}: 1 to {MAX_FILE_WINDOW} requests in flight per provider"
    )]
    FileWindow {
        /// The load.
        load: usize,
        /// The window asked for.
        window: u64,
    },
    /// A file load without providers, or one fetching from itself.
    #[error("load {load}: a file load needs providers other than its client")]
    Providers {
        /// The load.
        load: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(loads: &str) -> Scenario {
        let text = format!(
            r#"
name = "loads"
duration_ms = 10000
seed = 7
[[nodes]]
name = "a"
[[nodes]]
name = "b"
[[nodes]]
name = "c"
[[edges]]
a = "a"
b = "b"
latency_ms = 10
sync_interval_ms = 500
max_late_fee_rate = 10
deposit_a = 1000
deposit_b = 1000
[[requests]]
at_ms = 5
client = "a"
server = "b"
late_fee_rate = 1
{loads}"#
        );
        Scenario::from_toml(&text).unwrap()
    }

    #[test]
    fn request_loads_become_requests_after_the_explicit_ones_the_same_each_time() {
        let s = scenario(
            r#"
[[loads]]
kind = "requests"
client = "a"
server = "b"
per_s = 20
from_ms = 1000
until_ms = 6000
body_bytes = 100
late_fee_rate = 2
[[loads]]
kind = "requests"
client = "b"
server = "a"
per_s = 2
arrivals = "even"
late_fee_rate = 1
[[loads]]
kind = "files"
client = "a"
providers = ["b", "c"]
per_s = 0.5
size_bytes = 1048576
"#,
        );
        let e = s.clone().expand_loads().unwrap();
        assert_eq!(e.requests[0].at_ms, 5, "the explicit request stays r1");
        let first: Vec<&RequestSpec> = e.requests[1..].iter().filter(|r| r.client == "a").collect();
        // About 20/s over 5 s: a Poisson count within a wide margin, all in the window.
        assert!((60..=140).contains(&first.len()), "{}", first.len());
        assert!(first.iter().all(|r| (1000..6000).contains(&r.at_ms)));
        assert!(first.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
        assert!(first
            .iter()
            .all(|r| r.body.len() == 100 && r.late_fee_rate.0 == 2));
        let even: Vec<u64> = e.requests[1..]
            .iter()
            .filter(|r| r.client == "b")
            .map(|r| r.at_ms)
            .collect();
        assert_eq!(even, (0..20).map(|k| k * 500).collect::<Vec<_>>());
        assert!(
            even.len() == 20
                && e.requests[1..]
                    .iter()
                    .all(|r| r.body.len() == 32 || r.client == "a")
        );
        // The same seed draws the same arrivals; expanding twice adds nothing.
        let again = e.clone().expand_loads().unwrap();
        assert_eq!(again.requests.len(), e.requests.len());
        let other = s.clone().expand_loads().unwrap();
        let times = |x: &Scenario| x.requests.iter().map(|r| r.at_ms).collect::<Vec<_>>();
        assert_eq!(times(&other), times(&e));
        // The file load's transfers are drawn as the others are, the same before and
        // after the expansion.
        let t = e.file_transfers().unwrap();
        assert!(!t.is_empty() && t.len() < 20, "{t:?}");
        assert!(t.iter().all(|(at, k)| *at < 10000 && *k == 2));
        assert_eq!(s.file_transfers().unwrap(), t);
    }

    #[test]
    fn bad_loads_are_refused_with_what_is_wrong() {
        let one = |load: &str| scenario(&format!("[[loads]]\n{load}")).expand_loads();
        let req = "kind = \"requests\"\nclient = \"a\"\nserver = \"b\"\nlate_fee_rate = 1\n";
        assert_eq!(
            one(&format!("{req}per_s = 0")).unwrap_err(),
            LoadError::Rate {
                load: 1,
                per_s: 0.0
            }
        );
        assert!(matches!(
            one(&format!("{req}per_s = 1\nfrom_ms = 9000\nuntil_ms = 12000")),
            Err(LoadError::Window { .. })
        ));
        assert!(matches!(
            one(&format!("{req}per_s = 1\nbody_bytes = 2000000")),
            Err(LoadError::Size { .. })
        ));
        assert_eq!(
            one(&format!("{req}per_s = 100\nbody_bytes = 1000000")).unwrap_err(),
            LoadError::TooLarge {
                max: MAX_LOAD_BODY_TOTAL
            }
        );
        assert_eq!(
            one(&format!("{req}per_s = 100000")).unwrap_err(),
            LoadError::TooMany {
                max: MAX_LOAD_EVENTS
            }
        );
        assert!(matches!(
            one(
                "kind = \"requests\"\nclient = \"z\"\nserver = \"b\"\nlate_fee_rate = 1\nper_s = 1"
            ),
            Err(LoadError::UnknownNode { .. })
        ));
        let files = "kind = \"files\"\nclient = \"a\"\nper_s = 1\nsize_bytes = 10\n";
        assert_eq!(
            one(&format!("{files}providers = [\"a\"]")).unwrap_err(),
            LoadError::Providers { load: 1 }
        );
        assert!(matches!(
            one("kind = \"files\"\nclient = \"a\"\nper_s = 1\nsize_bytes = 0\nproviders = [\"b\"]"),
            Err(LoadError::Size { .. })
        ));
        assert_eq!(
            one(&format!("{files}providers = [\"b\"]\nwindow = 0")).unwrap_err(),
            LoadError::FileWindow { load: 1, window: 0 }
        );
        assert!(one(&format!("{files}providers = [\"b\"]\nwindow = 64")).is_ok());
    }
}
