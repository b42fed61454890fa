//! `por devnet files`: the file layer's traffic on a devnet. Every host's node serves
//! the store in `hosts/<host>/files` (beside echoing other requests). A file of
//! random bytes is added to each provider's store, fetched by the client host's own
//! node through its control endpoint (`files_get`: verified piece by piece, paid per
//! piece, the pieces split between the providers and a deviating one dropped),
//! compared byte for byte with what was added, and recorded for the report
//! (`transfers.jsonl`).

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use por_files::{Kind, Store, Ticket};
use serde_json::{json, Value};

use super::state::State;

/// The file each transfer's outcome is appended to.
pub(crate) const TRANSFERS_FILE: &str = "transfers.jsonl";

/// The largest file `files` makes.
const MAX_SIZE: u64 = 1 << 30;

/// The most files one `files` makes.
const MAX_COUNT: u64 = 1_000;

/// A host's file store.
pub(crate) fn store_dir(dir: &Path, host: &str) -> PathBuf {
    dir.join("hosts").join(host).join("files")
}

/// `size` random bytes written to `path`, a MiB at a time.
fn random_file(path: &Path, size: u64) -> Result<()> {
    let mut out =
        BufWriter::new(File::create(path).with_context(|| format!("creating {}", path.display()))?);
    let mut rng = rand::thread_rng();
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = usize::try_from(left.min(chunk.len() as u64)).unwrap_or(chunk.len());
        rand::RngCore::fill_bytes(&mut rng, &mut chunk[..n]);
        out.write_all(&chunk[..n])
            .with_context(|| format!("writing {}", path.display()))?;
        left -= n as u64;
    }
    out.flush()
        .with_context(|| format!("writing {}", path.display()))
}

/// Whether two files hold the same bytes (read a MiB at a time).
fn same_bytes(a: &Path, b: &Path) -> Result<bool> {
    let open = |p: &Path| File::open(p).with_context(|| format!("opening {}", p.display()));
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = read_full(&mut fa, &mut ba).with_context(|| format!("reading {}", a.display()))?;
        let nb = read_full(&mut fb, &mut bb).with_context(|| format!("reading {}", b.display()))?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

/// Reads until `buf` is full or the file ends.
fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The window `files` and file loads use when none is given.
pub(crate) const DEFAULT_WINDOW: u64 = 4;

/// One client fetching files of one size from a set of providers: checked once,
/// then any number of [`Fetcher::transfer`]s (one after another, or at once, as a
/// scenario's file load starts them).
#[derive(Clone)]
pub(crate) struct Fetcher {
    /// The devnet's directory.
    dir: PathBuf,
    /// The client host.
    from: String,
    /// The provider hosts.
    providers: Vec<String>,
    /// Their node ids, in the same order.
    ids: Vec<por_protocol::NodeId>,
    /// Bytes per file.
    size: u64,
    /// Requests in flight per provider.
    window: u64,
}

impl Fetcher {
    /// Checks the hosts and sizes and makes the directories the transfers use.
    pub(crate) fn new(
        st: &State,
        from: &str,
        providers: &[String],
        size: u64,
        window: u64,
    ) -> Result<Fetcher> {
        if size == 0 || size > MAX_SIZE {
            bail!("--size {size}: 1 byte to {} MiB", MAX_SIZE >> 20);
        }
        if providers.iter().any(|p| p == from) {
            bail!("--from {from} is also a --provider: a node fetches from others");
        }
        st.host(from)?;
        let mut ids = Vec::new();
        for p in providers {
            let id = st.host(p)?.id();
            ids.push(por_node::parse_key(id).with_context(|| format!("{p}'s node id {id:?}"))?);
        }
        for d in [
            st.dir.join("files-src"),
            st.dir.join("hosts").join(from).join("downloads"),
        ] {
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        Ok(Fetcher {
            dir: st.dir.clone(),
            from: from.to_string(),
            providers: providers.to_vec(),
            ids,
            size,
            window,
        })
    }

    /// One transfer: a new file of random bytes added to every provider's store,
    /// fetched by the client's node, compared byte for byte. Its record (with `error`
    /// where it failed); an `Err` only where the devnet's own files fail.
    pub(crate) async fn transfer(&self) -> Result<Value> {
        let st = State::load(&self.dir)?;
        let client = st.host(&self.from)?;
        let name = rand::random::<u64>();
        let src = self.dir.join("files-src").join(format!("{name}.bin"));
        // Writing and hashing the file is disk and CPU work: off the runtime, so that
        // a scenario's other actions leave on time beside a large file.
        let me = self.clone();
        let root = tokio::task::spawn_blocking({
            let src = src.clone();
            move || me.prepare(&src)
        })
        .await
        .context("preparing a file")??;
        let ticket = Ticket {
            kind: Kind::Blob,
            root,
            size: self.size,
            providers: self.ids.clone(),
        };
        // Named after the source too: two transfers of one load at once never share
        // an output.
        let out = self
            .dir
            .join("hosts")
            .join(&self.from)
            .join("downloads")
            .join(format!("{root}-{name}"));
        let at_ms = por_node::map::now_ms();
        let answer = if client.node.alive() {
            super::control(
                client,
                json!({"op": "files_get", "ticket": ticket.to_string(), "output": out,
                       "window": self.window}),
            )
            .await
        } else {
            Err(anyhow::anyhow!("{} is not running", self.from))
        };
        let mut record = json!({"at_ms": at_ms, "from": self.from, "providers": self.providers,
                                "root": root.to_string(), "size": self.size});
        let m = record.as_object_mut().context("a record is an object")?;
        match answer {
            Ok(r) => {
                let same = tokio::task::spawn_blocking({
                    let (src, out) = (src.clone(), out.clone());
                    move || same_bytes(&src, &out)
                })
                .await
                .context("comparing a file")??;
                let took = r["secs"].as_f64().unwrap_or(0.0);
                let deviated: Vec<&str> = self
                    .providers
                    .iter()
                    .zip(&self.ids)
                    .filter(|(_, id)| r["providers"][por_node::key_hex(id)]["deviated"] == true)
                    .map(|(p, _)| p.as_str())
                    .collect();
                m.insert("identical".into(), json!(same));
                m.insert("secs".into(), json!(took));
                m.insert("mib_per_s".into(), json!(mib_per_s(self.size, took)));
                m.insert("spent".into(), r["spent"].clone());
                m.insert("requests".into(), r["requests"].clone());
                m.insert("bytes_requested".into(), r["bytes_requested"].clone());
                m.insert("wasted_pieces".into(), r["wasted_pieces"].clone());
                m.insert("deviated".into(), json!(deviated));
                m.insert(
                    "evidence".into(),
                    json!(r["evidence"].as_array().map_or(0, Vec::len)),
                );
                m.insert("by_provider".into(), r["providers"].clone());
            }
            Err(e) => {
                m.insert("error".into(), json!(format!("{e:#}")));
            }
        }
        let _ = std::fs::remove_file(&src);
        let _ = std::fs::remove_file(&out);
        Ok(record)
    }

    /// A file of random bytes at `src`, added to every provider's store: its root.
    fn prepare(&self, src: &Path) -> Result<por_files::Root> {
        random_file(src, self.size)?;
        let mut root = None;
        for p in &self.providers {
            let store = Store::open(store_dir(&self.dir, p))
                .with_context(|| format!("{p}'s file store"))?;
            let tag = store
                .add(src)
                .with_context(|| format!("adding to {p}'s store"))?;
            root = Some(tag.root);
        }
        root.context("no provider")
    }
}

/// `files`: `count` files of `size` random bytes, each added to every provider's
/// store and fetched by `from`'s node, `window` requests in flight per provider.
/// What each transfer came to is printed as a line and recorded; the summary is
/// returned. A failed transfer is recorded with its error (and the run goes on).
pub(crate) async fn files(
    st: &State,
    from: &str,
    providers: &[String],
    size: u64,
    count: u64,
    window: u64,
) -> Result<Value> {
    if count == 0 || count > MAX_COUNT {
        bail!("--count {count}: 1 to {MAX_COUNT} files");
    }
    let fetcher = Fetcher::new(st, from, providers, size, window)?;
    if !st.host(from)?.node.alive() {
        bail!("{from} is not running");
    }
    let mut records = Vec::new();
    for _ in 0..count {
        let record = fetcher.transfer().await?;
        println!("{record}");
        records.push(record);
    }
    super::report::append_lines(&st.dir.join(TRANSFERS_FILE), &records)?;
    let mut s = totals(&records);
    if let Some(m) = s.as_object_mut() {
        m.insert("from".into(), json!(from));
        m.insert("providers".into(), json!(providers));
    }
    Ok(s)
}

/// What a set of transfer records came to: how many files, fetched, identical,
/// failed (with their errors), the bytes, the rate over the time spent fetching, and
/// what they cost.
pub(crate) fn totals(records: &[Value]) -> Value {
    let fetched: Vec<&Value> = records.iter().filter(|r| r["error"].is_null()).collect();
    let bytes: u64 = fetched.iter().filter_map(|r| r["size"].as_u64()).sum();
    let secs: f64 = fetched.iter().filter_map(|r| r["secs"].as_f64()).sum();
    let spent: u128 = fetched
        .iter()
        .filter_map(|r| r["spent"].as_str().and_then(|s| s.parse::<u128>().ok()))
        .sum();
    let errors: Vec<&Value> = records.iter().filter_map(|r| r.get("error")).collect();
    json!({"files": records.len(), "fetched": fetched.len(), "errors": errors,
           "identical": fetched.iter().filter(|r| r["identical"] == true).count(),
           "failed": records.len() - fetched.len(), "bytes": bytes,
           "mib_per_s": mib_per_s(bytes, secs), "spent": spent.to_string()})
}

/// MiB per second, two decimals.
fn mib_per_s(bytes: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        return 0.0;
    }
    (bytes as f64 / (1u64 << 20) as f64 / secs * 100.0).round() / 100.0
}

/// The report's `transfers` section, from the record: how many, how fast (MiB/s:
/// min, median, max of the transfers that finished), what they cost, and the
/// providers caught sending bytes that do not verify.
pub(crate) fn summary(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join(TRANSFERS_FILE)).unwrap_or_default();
    let records: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let fetched: Vec<&Value> = records.iter().filter(|r| r["error"].is_null()).collect();
    let mut rates: Vec<f64> = fetched
        .iter()
        .filter_map(|r| r["mib_per_s"].as_f64())
        .collect();
    rates.sort_by(f64::total_cmp);
    let spent: u128 = fetched
        .iter()
        .filter_map(|r| r["spent"].as_str().and_then(|s| s.parse::<u128>().ok()))
        .sum();
    let mut deviated: Vec<String> = fetched
        .iter()
        .flat_map(|r| r["deviated"].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    deviated.sort();
    deviated.dedup();
    json!({
        "transfers": records.len(), "fetched": fetched.len(),
        "failed": records.len() - fetched.len(),
        "identical": fetched.iter().filter(|r| r["identical"] == true).count(),
        "bytes": fetched.iter().filter_map(|r| r["size"].as_u64()).sum::<u64>(),
        "mib_per_s": {"min": rates.first(), "p50": rates.get(rates.len() / 2),
                      "max": rates.last()},
        "spent": spent.to_string(), "deviating_providers": deviated,
        "hosts": records.iter()
            .flat_map(|r| {
                let mut h = vec![r["from"].clone()];
                h.extend(r["providers"].as_array().cloned().unwrap_or_default());
                h
            })
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect::<std::collections::BTreeSet<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_bytes_tells_a_flipped_byte_and_a_short_file() {
        let dir = std::env::temp_dir().join(format!("por-devnet-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a"), dir.join("b"));
        random_file(&a, (1 << 20) + 7).unwrap();
        std::fs::copy(&a, &b).unwrap();
        assert!(same_bytes(&a, &b).unwrap());
        let mut bytes = std::fs::read(&b).unwrap();
        bytes[(1 << 20) + 3] ^= 1;
        std::fs::write(&b, &bytes).unwrap();
        assert!(!same_bytes(&a, &b).unwrap());
        bytes.truncate(1 << 20);
        std::fs::write(&b, &bytes).unwrap();
        assert!(!same_bytes(&a, &b).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(mib_per_s(3 << 20, 2.0), 1.5);
        assert_eq!(mib_per_s(1, 0.0), 0.0);
    }
}
