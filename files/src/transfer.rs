//! The client's transfer engine: a blob fetched piece by piece (512 KiB each) from
//! several providers at once, each over its own cheapest route, with a window of
//! requests in flight per provider.
//!
//! - Each piece is one PoR request buying exactly the encoding's length; its answer is
//!   verified against the root before a byte of it reaches the output.
//! - When every missing piece is in flight, an idle provider races the oldest piece
//!   held by another (as Sia's overdrive does); the first verified answer wins.
//! - A failure (a proof of a severed edge, a refusal, a late answer) puts the piece
//!   back among the missing; the next request for it is routed afresh (around the
//!   severed edge) and pays only for that piece. A provider whose bytes do not verify
//!   is dropped, with the evidence kept.
//! - Before every request its exact cost is quoted; a request that would take
//!   spending past the cap is never sent.
//! - Progress is kept next to the output (`<out>.por-partial` and its `.done` log), so
//!   an interrupted transfer resumes from what was verified and asks for nothing
//!   twice.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use por_node::{NodeHandle, Outcome, RequestOptions};
use por_protocol::{Amount, NodeId};
use tracing::{debug, info, warn};

use crate::blob::{self, Root, Verified};
use crate::collection::Collection;
use crate::error::FilesError;
use crate::evidence::Evidence;
use crate::progress::Progress;
use crate::proto::{FilesRequest, FilesResponse};
use crate::ticket::{Kind, Ticket};

/// How a transfer runs.
#[derive(Clone, Debug)]
pub struct TransferOptions {
    /// Requests in flight per provider.
    pub window: usize,
    /// The most to spend over all providers (yoctoNEAR); `None`: no cap.
    pub spend_cap: Option<Amount>,
    /// The late-fee rate asked for.
    pub late_fee_rate: Amount,
    /// Only routes whose round trip fits this (ms).
    pub max_rtt_ms: u64,
    /// How long past a deadline an answer is given up on (and the piece asked again).
    /// A late piece earns late fees while it is awaited, and asking again pays
    /// twice, so the default waits long enough for a provider to restart.
    pub late_after_ms: u64,
    /// A provider failing this many times in a row is dropped.
    pub max_failures: u32,
    /// Race the last pieces on idle providers.
    pub race: bool,
    /// Where evidence of deviations is written (default: beside the output).
    pub evidence_dir: Option<PathBuf>,
}

impl Default for TransferOptions {
    fn default() -> Self {
        TransferOptions {
            window: 4,
            spend_cap: None,
            late_fee_rate: Amount(1),
            max_rtt_ms: 60_000,
            late_after_ms: 10_000,
            max_failures: 5,
            race: true,
            evidence_dir: None,
        }
    }
}

impl TransferOptions {
    /// The SDK options of one piece's request: on the quoted `route`, buying `limit`
    /// bytes, never re-routed by the SDK (the transfer re-quotes instead).
    fn request(&self, limit: u64, route: por_protocol::types::Route) -> RequestOptions {
        RequestOptions {
            late_fee_rate: self.late_fee_rate,
            max_rtt_ms: self.max_rtt_ms,
            response_limit: limit,
            route: Some(route),
            max_reroutes: 0,
            late_after_ms: self.late_after_ms,
        }
    }
}

/// One provider's share of a transfer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProviderReport {
    /// Pieces it delivered first (verified).
    pub pieces: u64,
    /// Verified bytes it delivered first.
    pub bytes: u64,
    /// Paid to the first hop for requests to it (see [`TransferReport::spent`]).
    pub spent: Amount,
    /// Requests that failed (proof, refusal, late, error).
    pub failures: u32,
    /// It sent bytes that do not verify, and was dropped.
    pub deviated: bool,
}

/// What a transfer did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TransferReport {
    /// The blob's size.
    pub size: u64,
    /// Pieces already verified when it started (resumed).
    pub resumed_pieces: u64,
    /// Verified bytes fetched now.
    pub bytes_fetched: u64,
    /// The bytes of every range asked for, over all requests (a piece asked twice
    /// counts twice).
    pub bytes_requested: u64,
    /// Requests sent.
    pub requests: u64,
    /// Pieces whose answer came after another provider's (raced) or after failure.
    pub wasted_pieces: u64,
    /// Total paid to the first hop, each request at what it really paid: a failed
    /// request that was sent counts (a refusal's refund and late fees come back to
    /// the client as payments of their own, not netted here); one that failed before
    /// it was sent does not.
    pub spent: Amount,
    /// Per provider.
    pub providers: BTreeMap<NodeId, ProviderReport>,
    /// Evidence files written.
    pub evidence: Vec<PathBuf>,
}

impl TransferReport {
    fn merge(&mut self, other: TransferReport) {
        self.size = self.size.saturating_add(other.size);
        self.resumed_pieces += other.resumed_pieces;
        self.bytes_fetched += other.bytes_fetched;
        self.bytes_requested += other.bytes_requested;
        self.requests += other.requests;
        self.wasted_pieces += other.wasted_pieces;
        self.spent = self.spent.checked_add(other.spent).unwrap_or(self.spent);
        for (k, v) in other.providers {
            let e = self.providers.entry(k).or_default();
            e.pieces += v.pieces;
            e.bytes += v.bytes;
            e.spent = e.spent.checked_add(v.spent).unwrap_or(e.spent);
            e.failures += v.failures;
            e.deviated |= v.deviated;
        }
        self.evidence.extend(other.evidence);
    }
}

/// The partial download beside the output: the data file (preallocated) and a log
/// of verified pieces, one index per line after a header naming the blob.
struct Partial {
    data: File,
    data_path: PathBuf,
    log: File,
    log_path: PathBuf,
    done: BTreeSet<u64>,
}

impl Partial {
    fn paths(out: &Path) -> (PathBuf, PathBuf) {
        let mut d = out.as_os_str().to_owned();
        d.push(".por-partial");
        let mut l = d.clone();
        l.push(".done");
        (PathBuf::from(d), PathBuf::from(l))
    }

    fn open(out: &Path, root: &Root, size: u64) -> Result<Partial, FilesError> {
        let (data_path, log_path) = Partial::paths(out);
        let header = format!("por-partial v1 {root} {size} {}", blob::PIECE_BYTES);
        let mut done = BTreeSet::new();
        let mut fresh = true;
        if let Ok(f) = File::open(&log_path) {
            let mut lines = BufReader::new(f).lines();
            if lines.next().and_then(Result::ok).as_deref() == Some(header.as_str()) {
                fresh = false;
                // A torn last line (a crash mid-append) is not a piece.
                for line in lines.map_while(Result::ok) {
                    if let Ok(i) = line.trim().parse::<u64>() {
                        if i < blob::pieces(size) {
                            done.insert(i);
                        }
                    }
                }
            }
        }
        if fresh && data_path.exists() {
            // Left by a transfer of something else, or without its log: start over.
            std::fs::remove_file(&data_path).map_err(|e| FilesError::io(&data_path, e))?;
        }
        let data = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&data_path)
            .map_err(|e| FilesError::io(&data_path, e))?;
        data.set_len(size)
            .map_err(|e| FilesError::io(&data_path, e))?;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| FilesError::io(&log_path, e))?;
        if fresh {
            log.set_len(0).map_err(|e| FilesError::io(&log_path, e))?;
            writeln!(log, "{header}").map_err(|e| FilesError::io(&log_path, e))?;
        }
        Ok(Partial {
            data,
            data_path,
            log,
            log_path,
            done,
        })
    }

    /// Writes a verified piece, makes it durable, then logs it.
    fn commit(&mut self, piece: u64, verified: &[Verified]) -> Result<(), FilesError> {
        for v in verified {
            self.data
                .write_all_at(&v.data, v.offset)
                .map_err(|e| FilesError::io(&self.data_path, e))?;
        }
        self.data
            .sync_data()
            .map_err(|e| FilesError::io(&self.data_path, e))?;
        writeln!(self.log, "{piece}").map_err(|e| FilesError::io(&self.log_path, e))?;
        self.done.insert(piece);
        Ok(())
    }

    fn finish(self, out: &Path) -> Result<(), FilesError> {
        self.data
            .sync_all()
            .map_err(|e| FilesError::io(&self.data_path, e))?;
        if out.exists() {
            return Err(FilesError::OutputExists(out.to_path_buf()));
        }
        std::fs::rename(&self.data_path, out).map_err(|e| FilesError::io(out, e))?;
        let _ = std::fs::remove_file(&self.log_path);
        Ok(())
    }
}

/// What one request of one piece came to.
enum Answer {
    /// Verified data.
    Data(Vec<Verified>),
    /// Bytes that do not verify: the evidence.
    Deviation(Box<Evidence>, FilesError),
    /// The provider does not hold the blob.
    NotProvided,
    /// Anything else: try again (elsewhere or later).
    Failed(String),
}

/// Sends one `get` of `ranges` to `provider` along `route` and checks the answer,
/// with what the request paid to the first hop: for every outcome the SDK says; for a
/// call that failed before sending (no route, the channel busy), nothing.
async fn ask(
    node: &NodeHandle,
    provider: NodeId,
    root: Root,
    size: u64,
    ranges: Vec<(u64, u64)>,
    options: RequestOptions,
) -> (Answer, Amount) {
    let request = FilesRequest::Get {
        root,
        ranges: ranges.clone(),
    };
    let body = request.encode();
    let outcome = match node.request(provider, body.clone(), options).await {
        Ok(o) => o,
        Err(e) => return (Answer::Failed(e.to_string()), Amount::ZERO),
    };
    match outcome {
        Outcome::Response {
            request: id,
            body: answer,
            response,
            paid,
            ..
        } => {
            let checked = FilesResponse::decode(&answer).and_then(|r| match r {
                FilesResponse::Data { encoded } => {
                    let r = blob::chunk_ranges(&ranges)?;
                    blob::decode(root, size, &r, &encoded).map(Some)
                }
                FilesResponse::NotFound => Ok(None),
                FilesResponse::Refused { reason } => Err(FilesError::Refused {
                    provider: por_protocol::hex::encode(&provider.0),
                    reason,
                }),
                FilesResponse::Have { .. } => {
                    Err(FilesError::Mismatch("a have answer to a get".into()))
                }
            });
            let a = match checked {
                Ok(Some(v)) => Answer::Data(v),
                Ok(None) => Answer::NotProvided,
                Err(e @ FilesError::Refused { .. }) => Answer::Failed(e.to_string()),
                Err(e) => Answer::Deviation(
                    Box::new(Evidence::new(
                        &provider, &id, &root, &ranges, &body, &response, &answer, &e,
                    )),
                    e,
                ),
            };
            (a, paid)
        }
        Outcome::Proof { channel, paid, .. } => (
            Answer::Failed(format!("edge {channel} on the route was severed")),
            paid,
        ),
        // A refusal's refund comes back as a payment to us: what was paid out stands.
        Outcome::Rejected { reason, paid, .. } => (
            Answer::Failed(format!("refused on the route: {reason}")),
            paid,
        ),
        Outcome::Late {
            overdue_ms, paid, ..
        } => (
            Answer::Failed(format!("no answer {overdue_ms} ms past the deadline")),
            paid,
        ),
    }
}

/// Asks `provider` for the size of `root` (`have`).
pub async fn have(node: &NodeHandle, provider: NodeId, root: Root) -> Result<u64, FilesError> {
    let options = RequestOptions {
        response_limit: 64,
        ..RequestOptions::default()
    };
    let who = por_protocol::hex::encode(&provider.0);
    match node
        .request(provider, FilesRequest::Have { root }.encode(), options)
        .await?
    {
        Outcome::Response { body, .. } => match FilesResponse::decode(&body)? {
            FilesResponse::Have { size, .. } => Ok(size),
            FilesResponse::NotFound => Err(FilesError::NotProvided {
                provider: who,
                root,
            }),
            FilesResponse::Refused { reason } => Err(FilesError::Refused {
                provider: who,
                reason,
            }),
            FilesResponse::Data { .. } => {
                Err(FilesError::Malformed("a data answer to a have".into()))
            }
        },
        other => Err(FilesError::Refused {
            provider: who,
            reason: format!("{other:?}"),
        }),
    }
}

/// The cost and round trip of asking `provider` for `ranges` of a blob of `size`.
pub async fn quote_request(
    node: &NodeHandle,
    provider: NodeId,
    root: Root,
    size: u64,
    ranges: Vec<(u64, u64)>,
    max_rtt_ms: u64,
) -> Result<(por_protocol::topology::Quote, u64, u64), FilesError> {
    let request = FilesRequest::Get { root, ranges };
    let limit = request.response_limit(size)?;
    let body_len = request.encode().len() as u64;
    let q = node
        .quote(provider, body_len, limit, max_rtt_ms, 1)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| FilesError::NoRoute(por_protocol::hex::encode(&provider.0)))?;
    Ok((q, body_len, limit))
}

/// A blob transfer to a file.
pub struct Transfer<'a> {
    node: &'a NodeHandle,
    root: Root,
    size: u64,
    providers: Vec<NodeId>,
    options: TransferOptions,
}

struct ProviderState {
    in_flight: usize,
    failures: u32,
    gone: Option<String>,
    /// Not asked again before this, after a failure (a provider restarting, a route
    /// coming back): 250 ms doubling per failure in a row, at most 4 s.
    retry_at: Option<Instant>,
}

/// The pause before asking a provider again after `failures` in a row.
fn backoff(failures: u32) -> Duration {
    Duration::from_millis(250u64 << failures.saturating_sub(1).min(4))
}

impl<'a> Transfer<'a> {
    /// A transfer of `root` (`size` bytes) from `providers` through `node`.
    pub fn new(
        node: &'a NodeHandle,
        root: Root,
        size: u64,
        providers: Vec<NodeId>,
        options: TransferOptions,
    ) -> Transfer<'a> {
        Transfer {
            node,
            root,
            size,
            providers,
            options,
        }
    }

    /// Fetches the blob into `out` (which must not exist), resuming from a partial
    /// download there. Ends early with [`FilesError::Interrupted`] when `stop`
    /// completes (what was verified stays for a resume).
    pub async fn to_file(
        self,
        out: &Path,
        progress: &dyn Progress,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<TransferReport, FilesError> {
        if out.exists() {
            return Err(FilesError::OutputExists(out.to_path_buf()));
        }
        let mut partial = Partial::open(out, &self.root, self.size)?;
        let total = blob::pieces(self.size);
        let mut report = TransferReport {
            size: self.size,
            resumed_pieces: partial.done.len() as u64,
            ..TransferReport::default()
        };
        let done_bytes: u64 = partial
            .done
            .iter()
            .map(|&i| {
                let (s, e) = blob::piece_bytes(self.size, i);
                e - s
            })
            .sum();
        let name = out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        progress.start(&name, self.size, done_bytes, &self.providers);
        let evidence_dir = self.options.evidence_dir.clone().unwrap_or_else(|| {
            let mut p = out.as_os_str().to_owned();
            p.push(".por-evidence");
            PathBuf::from(p)
        });
        let mut missing: VecDeque<u64> = (0..total).filter(|i| !partial.done.contains(i)).collect();
        let mut providers: HashMap<NodeId, ProviderState> = self
            .providers
            .iter()
            .map(|p| {
                (
                    *p,
                    ProviderState {
                        in_flight: 0,
                        failures: 0,
                        gone: None,
                        retry_at: None,
                    },
                )
            })
            .collect();
        // piece -> (providers asking, when first asked)
        let mut asked: BTreeMap<u64, (Vec<NodeId>, Instant)> = BTreeMap::new();
        let mut flights = FuturesUnordered::new();
        let mut stop = std::pin::pin!(stop);
        let missing_bytes = |done: &BTreeSet<u64>| -> u64 {
            (0..total)
                .filter(|i| !done.contains(i))
                .map(|i| {
                    let (s, e) = blob::piece_bytes(self.size, i);
                    e - s
                })
                .sum()
        };
        loop {
            if partial.done.len() as u64 == total {
                break;
            }
            // Fill every provider's window.
            let mut order: Vec<NodeId> = self.providers.clone();
            order.sort_by_key(|p| providers.get(p).map_or(usize::MAX, |s| s.in_flight));
            for p in order {
                while let Some(st) = providers.get(&p) {
                    let resting = st.retry_at.is_some_and(|t| t > Instant::now());
                    if st.gone.is_some() || resting || st.in_flight >= self.options.window.max(1) {
                        break;
                    }
                    // The next missing piece, or (racing) the oldest piece only others hold.
                    let piece = match missing.pop_front() {
                        Some(i) => Some(i),
                        None if self.options.race => asked
                            .iter()
                            .filter(|(_, (who, _))| who.len() == 1 && !who.contains(&p))
                            .min_by_key(|(_, (_, at))| *at)
                            .map(|(i, _)| *i),
                        None => None,
                    };
                    let Some(piece) = piece else { break };
                    let ranges = vec![blob::piece_chunks(piece)];
                    let quoted = quote_request(
                        self.node,
                        p,
                        self.root,
                        self.size,
                        ranges.clone(),
                        self.options.max_rtt_ms,
                    )
                    .await;
                    let (q, _, limit) = match quoted {
                        Ok(x) => x,
                        Err(e) => {
                            if !asked.contains_key(&piece) {
                                missing.push_front(piece);
                            }
                            if let Some(st) = providers.get_mut(&p) {
                                st.gone = Some(e.to_string());
                            }
                            progress.note(&format!("dropping provider {}: {e}", short(&p)));
                            break;
                        }
                    };
                    if let Some(cap) = self.options.spend_cap {
                        let after = report
                            .spent
                            .checked_add(q.cost)
                            .unwrap_or(Amount(u128::MAX));
                        if after > cap {
                            if !asked.contains_key(&piece) {
                                missing.push_front(piece);
                            }
                            if flights.is_empty() {
                                return Err(FilesError::SpendCap {
                                    cap,
                                    spent: report.spent,
                                    next: q.cost,
                                    missing: missing_bytes(&partial.done),
                                });
                            }
                            break;
                        }
                    }
                    // Count what is committed before it is spent, so the cap holds
                    // across requests in flight; corrected when the outcome says.
                    report.spent = report.spent.checked_add(q.cost).unwrap_or(report.spent);
                    let (s, e) = blob::piece_bytes(self.size, piece);
                    report.requests += 1;
                    report.bytes_requested += e - s;
                    let entry = asked
                        .entry(piece)
                        .or_insert_with(|| (Vec::new(), Instant::now()));
                    entry.0.push(p);
                    if let Some(st) = providers.get_mut(&p) {
                        st.in_flight += 1;
                    }
                    let options = self.options.request(limit, q.route.clone());
                    let node = self.node;
                    let (root, size, quoted_cost) = (self.root, self.size, q.cost);
                    debug!(piece, provider = %short(&p), cost = %q.cost, "asking");
                    flights.push(async move {
                        let (answer, paid) = ask(node, p, root, size, ranges, options).await;
                        (piece, p, answer, paid, quoted_cost)
                    });
                }
            }
            // Providers resting after a failure are woken when their pause ends (the
            // first of them), even while other requests are in flight.
            let now = Instant::now();
            let wake = providers
                .values()
                .filter(|s| s.gone.is_none())
                .filter_map(|s| s.retry_at)
                .filter(|t| *t > now)
                .min();
            if flights.is_empty() && wake.is_none() {
                let detail: Vec<String> = providers
                    .iter()
                    .map(|(p, s)| {
                        format!(
                            "{}: {}",
                            short(p),
                            s.gone.clone().unwrap_or_else(|| "idle".into())
                        )
                    })
                    .collect();
                return Err(FilesError::NoProviders {
                    missing: missing_bytes(&partial.done),
                    detail: detail.join("; "),
                });
            }
            let rested = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            let next = tokio::select! {
                n = flights.next(), if !flights.is_empty() => n,
                () = rested => continue,
                () = &mut stop => {
                    info!("transfer interrupted");
                    return Err(FilesError::Interrupted { missing: missing_bytes(&partial.done) });
                }
            };
            let Some((piece, p, answer, paid, quoted)) = next else {
                continue;
            };
            // What was really paid replaces what was committed.
            report.spent = report
                .spent
                .checked_sub(quoted)
                .and_then(|s| s.checked_add(paid))
                .unwrap_or(report.spent);
            let pr = report.providers.entry(p).or_default();
            pr.spent = pr.spent.checked_add(paid).unwrap_or(pr.spent);
            if let Some(st) = providers.get_mut(&p) {
                st.in_flight = st.in_flight.saturating_sub(1);
            }
            let still_asked = asked.get_mut(&piece).map(|(who, _)| {
                who.retain(|x| *x != p);
                !who.is_empty()
            });
            let already = partial.done.contains(&piece);
            match answer {
                Answer::Data(v) => {
                    if let Some(st) = providers.get_mut(&p) {
                        st.failures = 0;
                        st.retry_at = None;
                    }
                    if already {
                        report.wasted_pieces += 1;
                    } else {
                        partial.commit(piece, &v)?;
                        asked.remove(&piece);
                        let bytes: u64 = v.iter().map(|x| x.data.len() as u64).sum();
                        report.bytes_fetched += bytes;
                        let pr = report.providers.entry(p).or_default();
                        pr.pieces += 1;
                        pr.bytes += bytes;
                        progress.piece(&p, bytes, report.spent);
                    }
                }
                other => {
                    let why = match other {
                        Answer::Deviation(ev, e) => {
                            warn!(provider = %short(&p), "deviation: {e}");
                            match ev.save(&evidence_dir) {
                                Ok(path) => report.evidence.push(path),
                                Err(err) => warn!("evidence not saved: {err}"),
                            }
                            report.providers.entry(p).or_default().deviated = true;
                            if let Some(st) = providers.get_mut(&p) {
                                st.gone = Some(format!("sent bytes that do not verify ({e})"));
                            }
                            format!("provider {} deviated: {e}", short(&p))
                        }
                        Answer::NotProvided => {
                            if let Some(st) = providers.get_mut(&p) {
                                st.gone = Some("does not hold the blob".into());
                            }
                            format!("provider {} does not hold the blob", short(&p))
                        }
                        Answer::Data(_) => String::new(),
                        Answer::Failed(why) => {
                            report.providers.entry(p).or_default().failures += 1;
                            if let Some(st) = providers.get_mut(&p) {
                                st.failures += 1;
                                st.retry_at = Some(Instant::now() + backoff(st.failures));
                                if st.failures >= self.options.max_failures {
                                    st.gone = Some(format!(
                                        "{} failures in a row, the last: {why}",
                                        st.failures
                                    ));
                                }
                            }
                            format!("piece {piece} from {}: {why}", short(&p))
                        }
                    };
                    progress.note(&why);
                    if already {
                        report.wasted_pieces += 1;
                    } else if still_asked != Some(true) {
                        asked.remove(&piece);
                        missing.push_front(piece);
                    }
                }
            }
        }
        partial.finish(out)?;
        progress.finish(report.spent);
        Ok(report)
    }
}

fn short(id: &NodeId) -> String {
    por_protocol::hex::encode(&id.0[..6])
}

/// Fetches what `ticket` names into `out`: a file for a blob; for a collection, a
/// directory with every entry (entries already complete there are checked and kept).
pub async fn get(
    node: &NodeHandle,
    ticket: &Ticket,
    out: &Path,
    options: TransferOptions,
    progress: &dyn Progress,
    stop: impl std::future::Future<Output = ()> + Clone,
) -> Result<TransferReport, FilesError> {
    match ticket.kind {
        Kind::Blob => {
            Transfer::new(
                node,
                ticket.root,
                ticket.size,
                ticket.providers.clone(),
                options,
            )
            .to_file(out, progress, stop)
            .await
        }
        Kind::Collection => {
            if out.exists() && !out.is_dir() {
                return Err(FilesError::OutputExists(out.to_path_buf()));
            }
            std::fs::create_dir_all(out).map_err(|e| FilesError::io(out, e))?;
            let manifest_path = out.join(".por-manifest");
            let mut report = TransferReport::default();
            if !manifest_path.exists() {
                let r = Transfer::new(
                    node,
                    ticket.root,
                    ticket.size,
                    ticket.providers.clone(),
                    options.clone(),
                )
                .to_file(&manifest_path, progress, stop.clone())
                .await?;
                report.merge(r);
            }
            let bytes =
                std::fs::read(&manifest_path).map_err(|e| FilesError::io(&manifest_path, e))?;
            if Root::of(&bytes) != ticket.root {
                let _ = std::fs::remove_file(&manifest_path);
                return Err(FilesError::Mismatch(
                    "the kept manifest does not match the ticket".into(),
                ));
            }
            let collection = Collection::decode(&bytes)?;
            for entry in &collection.entries {
                let path = out.join(&entry.name);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| FilesError::io(parent, e))?;
                }
                if path.exists() {
                    let have = std::fs::read(&path).map_err(|e| FilesError::io(&path, e))?;
                    if Root::of(&have) == entry.root {
                        continue;
                    }
                    return Err(FilesError::OutputExists(path));
                }
                let r = Transfer::new(
                    node,
                    entry.root,
                    entry.size,
                    ticket.providers.clone(),
                    options.clone(),
                )
                .to_file(&path, progress, stop.clone())
                .await?;
                report.merge(r);
            }
            let _ = std::fs::remove_file(&manifest_path);
            Ok(report)
        }
    }
}

/// The exact cost and round trip of fetching `ranges` pieces of a blob from its
/// cheapest provider: one request per piece.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobQuote {
    /// The cheapest provider.
    pub provider: NodeId,
    /// Requests (one per piece).
    pub requests: u64,
    /// The sum of their costs.
    pub cost: Amount,
    /// Each request's round-trip bound (ms): the largest, for the full pieces.
    pub rtt_ms: u64,
    /// The route to that provider.
    pub route: por_protocol::types::Route,
}

/// Quotes fetching bytes `from..to` of `root` (`size` bytes) from the cheapest of
/// `providers`, before anything is spent.
pub async fn quote(
    node: &NodeHandle,
    root: Root,
    size: u64,
    providers: &[NodeId],
    range: (u64, u64),
    max_rtt_ms: u64,
) -> Result<BlobQuote, FilesError> {
    let (from, to) = (range.0.min(size), range.1.min(size));
    let first = from / blob::PIECE_BYTES;
    let last = if to == 0 {
        0
    } else {
        (to - 1) / blob::PIECE_BYTES
    };
    let mut best: Option<BlobQuote> = None;
    for p in providers {
        let mut cost = Amount::ZERO;
        let mut rtt = 0;
        let mut route = None;
        let mut ok = true;
        for piece in first..=last.max(first) {
            match quote_request(
                node,
                *p,
                root,
                size,
                vec![blob::piece_chunks(piece)],
                max_rtt_ms,
            )
            .await
            {
                Ok((q, _, _)) => {
                    cost = cost.checked_add(q.cost).unwrap_or(Amount(u128::MAX));
                    rtt = rtt.max(q.rtt_ms);
                    route.get_or_insert(q.route);
                }
                Err(_) => {
                    ok = false;
                    break;
                }
            }
        }
        if let (true, Some(route)) = (ok, route) {
            let q = BlobQuote {
                provider: *p,
                requests: last.max(first) - first + 1,
                cost,
                rtt_ms: rtt,
                route,
            };
            if best.as_ref().is_none_or(|b| q.cost < b.cost) {
                best = Some(q);
            }
        }
    }
    best.ok_or_else(|| FilesError::NoRoute("any provider".into()))
}

/// Verified bytes `from..to` of a blob, fetched piece by piece (a window of them in
/// flight) and sent to `sink` in order: what the gateway streams. Stops early, without
/// error, when the receiver is dropped.
pub async fn fetch_range(
    node: &NodeHandle,
    root: Root,
    size: u64,
    providers: &[NodeId],
    range: (u64, u64),
    options: &TransferOptions,
    sink: tokio::sync::mpsc::Sender<bytes::Bytes>,
) -> Result<(), FilesError> {
    if providers.is_empty() {
        return Err(FilesError::NoProviders {
            missing: range.1.saturating_sub(range.0),
            detail: "none given".into(),
        });
    }
    let (from, to) = (range.0.min(size), range.1.min(size));
    if from >= to {
        return Ok(());
    }
    let first = from / blob::PIECE_BYTES;
    let last = (to - 1) / blob::PIECE_BYTES;
    let window = options.window.max(1) as u64;
    let mut next_send = first;
    let mut flights = FuturesUnordered::new();
    let mut ready: BTreeMap<u64, Vec<Verified>> = BTreeMap::new();
    let mut next_out = first;
    let mut tries: BTreeMap<u64, u32> = BTreeMap::new();
    while next_out <= last {
        while next_send <= last && next_send < next_out + window {
            let piece = next_send;
            next_send += 1;
            let p = providers[(piece as usize) % providers.len().max(1)];
            flights.push(fetch_piece(node, root, size, p, piece, options.clone()));
        }
        let Some((piece, result)) = flights.next().await else {
            break;
        };
        match result {
            Ok(v) => {
                ready.insert(piece, v);
            }
            Err(e) => {
                let t = tries.entry(piece).or_default();
                *t += 1;
                if *t as usize > providers.len().saturating_mul(2) {
                    return Err(e);
                }
                let p = providers[(piece as usize + *t as usize) % providers.len().max(1)];
                flights.push(fetch_piece(node, root, size, p, piece, options.clone()));
            }
        }
        while let Some(v) = ready.remove(&next_out) {
            for run in v {
                let (s, e) = (run.offset, run.offset + run.data.len() as u64);
                let (a, b) = (s.max(from), e.min(to));
                if a < b
                    && sink
                        .send(run.data.slice((a - s) as usize..(b - s) as usize))
                        .await
                        .is_err()
                {
                    return Ok(());
                }
            }
            next_out += 1;
        }
    }
    Ok(())
}

async fn fetch_piece(
    node: &NodeHandle,
    root: Root,
    size: u64,
    provider: NodeId,
    piece: u64,
    options: TransferOptions,
) -> (u64, Result<Vec<Verified>, FilesError>) {
    let ranges = vec![blob::piece_chunks(piece)];
    let quoted = quote_request(
        node,
        provider,
        root,
        size,
        ranges.clone(),
        options.max_rtt_ms,
    )
    .await;
    let (q, _, limit) = match quoted {
        Ok(x) => x,
        Err(e) => return (piece, Err(e)),
    };
    let ro = options.request(limit, q.route);
    let r = match ask(node, provider, root, size, ranges, ro).await.0 {
        Answer::Data(v) => Ok(v),
        Answer::Deviation(_, e) => Err(e),
        Answer::NotProvided => Err(FilesError::NotProvided {
            provider: por_protocol::hex::encode(&provider.0),
            root,
        }),
        Answer::Failed(why) => Err(FilesError::Refused {
            provider: por_protocol::hex::encode(&provider.0),
            reason: why,
        }),
    };
    (piece, r)
}
