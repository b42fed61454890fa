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
    if size == 0 || size > MAX_SIZE {
        bail!("--size {size}: 1 byte to {} MiB", MAX_SIZE >> 20);
    }
    if count == 0 || count > MAX_COUNT {
        bail!("--count {count}: 1 to {MAX_COUNT} files");
    }
    if providers.iter().any(|p| p == from) {
        bail!("--from {from} is also a --provider: a node fetches from others");
    }
    let client = st.host(from)?;
    if !client.node.alive() {
        bail!("{from} is not running");
    }
    let mut ids = Vec::new();
    for p in providers {
        let id = st.host(p)?.id();
        ids.push(por_node::parse_key(id).with_context(|| format!("{p}'s node id {id:?}"))?);
    }
    let work = st.dir.join("files-src");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let downloads = st.dir.join("hosts").join(from).join("downloads");
    std::fs::create_dir_all(&downloads)
        .with_context(|| format!("creating {}", downloads.display()))?;
    let (mut done, mut identical, mut bytes, mut secs, mut spent) = (0u64, 0u64, 0u64, 0f64, 0u128);
    let mut records = Vec::new();
    for _ in 0..count {
        let src = work.join(format!("{}.bin", rand::random::<u64>()));
        random_file(&src, size)?;
        let mut root = None;
        for p in providers {
            let store =
                Store::open(store_dir(&st.dir, p)).with_context(|| format!("{p}'s file store"))?;
            let tag = store
                .add(&src)
                .with_context(|| format!("adding to {p}'s store"))?;
            root = Some(tag.root);
        }
        let root = root.context("no --provider")?;
        let ticket = Ticket {
            kind: Kind::Blob,
            root,
            size,
            providers: ids.clone(),
        };
        let out = downloads.join(root.to_string());
        let _ = std::fs::remove_file(&out);
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let answer = super::control(
            client,
            json!({"op": "files_get", "ticket": ticket.to_string(), "output": out,
                   "window": window}),
        )
        .await;
        let mut record = json!({"at_ms": at_ms, "from": from, "providers": providers,
                                "root": root.to_string(), "size": size});
        match answer {
            Ok(r) => {
                let same = same_bytes(&src, &out)?;
                let took = r["secs"].as_f64().unwrap_or(0.0);
                let paid: u128 = r["spent"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                let deviated: Vec<&str> = providers
                    .iter()
                    .zip(&ids)
                    .filter(|(_, id)| r["providers"][por_node::key_hex(id)]["deviated"] == true)
                    .map(|(p, _)| p.as_str())
                    .collect();
                done += 1;
                identical += u64::from(same);
                bytes = bytes.saturating_add(size);
                secs += took;
                spent = spent.saturating_add(paid);
                let m = record.as_object_mut().context("a record is an object")?;
                m.insert("identical".into(), json!(same));
                m.insert("secs".into(), json!(took));
                m.insert("mib_per_s".into(), json!(mib_per_s(size, took)));
                m.insert("spent".into(), json!(paid.to_string()));
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
                if let Some(m) = record.as_object_mut() {
                    m.insert("error".into(), json!(format!("{e:#}")));
                }
            }
        }
        let _ = std::fs::remove_file(&src);
        let _ = std::fs::remove_file(&out);
        println!("{record}");
        records.push(record);
    }
    super::report::append_lines(&st.dir.join(TRANSFERS_FILE), &records)?;
    let errors: Vec<&Value> = records.iter().filter_map(|r| r.get("error")).collect();
    Ok(
        json!({"from": from, "providers": providers, "files": count, "fetched": done,
              "errors": errors,
              "identical": identical, "failed": count - done, "bytes": bytes,
              "mib_per_s": mib_per_s(bytes, secs), "spent": spent.to_string()}),
    )
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
