//! The write-ahead log in front of the node database.
//!
//! Every group commit appends one record (the encoded writes) and syncs it: one
//! sequential write and one `fdatasync`, instead of rewriting B-tree pages. The
//! database proper is brought up to date at checkpoints (see [`crate::db`]), after
//! which the log starts again under the next generation number.
//!
//! File layout: an 16-byte header (`PORWAL01`, then the generation as u64 LE), then
//! records of `[len: u32 LE][crc32 of payload: u32 LE][payload]`.
//!
//! A commit returns only after its record is synced, and the next record is written
//! only after that, so a crash can tear only the last record. On open, a bad record
//! that reaches the end of the file is such a torn tail: it was never reported
//! durable, so it is cut off. A bad record with more data after it is damage to state
//! that was reported durable: the node refuses to start rather than forget it (it could
//! otherwise sign a second, different update with a sequence number it already used).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};

use crate::NodeError;

const MAGIC: &[u8; 8] = b"PORWAL01";
const HEADER: u64 = 16;
const RECORD_HEADER: u64 = 8;
/// Records larger than this are refused on write and treated as damage on read.
pub(crate) const MAX_RECORD: u64 = 1 << 30;

/// A log's records: where each starts, and its payload.
pub(crate) type Records = Vec<(u64, Vec<u8>)>;

/// An open log, positioned at its end.
pub(crate) struct Wal {
    file: File,
    path: PathBuf,
    generation: u64,
    len: u64,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Wal({}, gen {})", self.path.display(), self.generation)
    }
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> NodeError + '_ {
    move |e| NodeError::Db {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}

fn crc(payload: &[u8]) -> u32 {
    crc32fast::hash(payload)
}

/// Syncs the directory holding `path`, so a created or renamed file survives a crash.
fn sync_dir(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => File::open(dir)?.sync_all(),
        _ => File::open(".")?.sync_all(),
    }
}

impl Wal {
    /// Opens the log at `path` for `generation` (the one the database was last
    /// checkpointed at) and returns its records (offset, payload), oldest first.
    ///
    /// A missing log, or one of an older generation (its records are already in the
    /// database), is replaced by an empty one. A log of a newer generation means the
    /// database is older than its log (restored from a backup, say): refused.
    pub(crate) fn open(path: &Path, generation: u64) -> Result<(Wal, Records), NodeError> {
        let err = io_err(path);
        let bytes = match File::open(path) {
            Ok(mut f) => {
                let mut bytes = Vec::new();
                f.read_to_end(&mut bytes).map_err(&err)?;
                Some(bytes)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(err(e)),
        };
        let Some(bytes) = bytes else {
            return Ok((Wal::create(path, generation)?, Vec::new()));
        };
        let damaged = |offset: u64, detail: String| NodeError::Log {
            path: path.to_path_buf(),
            offset,
            detail,
        };
        if (bytes.len() as u64) < HEADER || &bytes[..8] != MAGIC {
            // A log is created (header written and synced) under a temporary name
            // and renamed into place, so a short or foreign header is not a crash.
            return Err(damaged(0, "not a por write-ahead log".into()));
        }
        let mut gen_bytes = [0u8; 8];
        gen_bytes.copy_from_slice(&bytes[8..16]);
        let found = u64::from_le_bytes(gen_bytes);
        if found < generation {
            return Ok((Wal::create(path, generation)?, Vec::new()));
        }
        if found > generation {
            return Err(damaged(
                8,
                format!(
                    "log generation {found} is newer than the database's {generation}: \
                     the database is older than its log"
                ),
            ));
        }
        let total = bytes.len() as u64;
        let mut records = Vec::new();
        let mut at = HEADER;
        let mut torn = false;
        while at < total {
            let rest = total - at;
            if rest < RECORD_HEADER {
                torn = true;
                break;
            }
            let i = at as usize;
            let mut b4 = [0u8; 4];
            b4.copy_from_slice(&bytes[i..i + 4]);
            let len = u64::from(u32::from_le_bytes(b4));
            b4.copy_from_slice(&bytes[i + 4..i + 8]);
            let sum = u32::from_le_bytes(b4);
            let end = at + RECORD_HEADER + len;
            if end > total {
                // The record runs past the end of the file: the last write, torn.
                torn = true;
                break;
            }
            let payload = &bytes[i + 8..end as usize];
            if len > MAX_RECORD || crc(payload) != sum {
                if end == total {
                    torn = true;
                    break;
                }
                return Err(damaged(
                    at,
                    format!(
                        "record of {len} bytes fails its checksum with {} bytes after it",
                        total - end
                    ),
                ));
            }
            records.push((at, payload.to_vec()));
            at = end;
        }
        let file = OpenOptions::new().write(true).open(path).map_err(&err)?;
        if torn {
            tracing::warn!(
                log = %path.display(),
                offset = at,
                dropped = total - at,
                "cutting a torn last record off the write-ahead log (it was never reported durable)"
            );
            file.set_len(at).map_err(&err)?;
            file.sync_all().map_err(&err)?;
        }
        let mut wal = Wal {
            file,
            path: path.to_path_buf(),
            generation,
            len: at,
        };
        wal.seek_end()?;
        Ok((wal, records))
    }

    fn seek_end(&mut self) -> Result<(), NodeError> {
        use std::io::Seek;
        self.file
            .seek(std::io::SeekFrom::Start(self.len))
            .map_err(io_err(&self.path))?;
        Ok(())
    }

    /// Writes a fresh, empty log for `generation` under a temporary name, syncs it and
    /// renames it over `path`.
    fn create(path: &Path, generation: u64) -> Result<Wal, NodeError> {
        let err = io_err(path);
        let tmp = path.with_extension("wal-new");
        let mut file = File::create(&tmp).map_err(&err)?;
        let mut header = [0u8; HEADER as usize];
        header[..8].copy_from_slice(MAGIC);
        header[8..].copy_from_slice(&generation.to_le_bytes());
        file.write_all(&header).map_err(&err)?;
        file.sync_all().map_err(&err)?;
        std::fs::rename(&tmp, path).map_err(&err)?;
        sync_dir(path).map_err(&err)?;
        Ok(Wal {
            file,
            path: path.to_path_buf(),
            generation,
            len: HEADER,
        })
    }

    /// Empties `record` to take a payload, leaving room for the record header in
    /// front so the payload is never copied. Reusing one buffer spares a large
    /// allocation (and the kernel's page zeroing) per commit.
    pub(crate) fn start_record(record: &mut Vec<u8>) {
        record.clear();
        record.extend_from_slice(&[0; RECORD_HEADER as usize]);
    }

    /// Appends one record (begun with [`Wal::start_record`], the payload after its
    /// header room) and syncs it. Returns once it is durable.
    pub(crate) fn append(&mut self, record: &mut [u8]) -> Result<(), NodeError> {
        let err = io_err(&self.path);
        let header = RECORD_HEADER as usize;
        let size = record.len().saturating_sub(header);
        let len = u32::try_from(size)
            .ok()
            .filter(|l| u64::from(*l) <= MAX_RECORD && record.len() >= header)
            .ok_or_else(|| NodeError::Db {
                path: self.path.clone(),
                detail: format!("a {size}-byte commit is too large to log"),
            })?;
        let sum = crc(&record[header..]);
        record[..4].copy_from_slice(&len.to_le_bytes());
        record[4..header].copy_from_slice(&sum.to_le_bytes());
        if let Err(e) = self.file.write_all(record) {
            // A partial record may be on disk; position after it is unknown. The
            // caller stops the node; a restart cuts it off as a torn tail.
            return Err(err(e));
        }
        self.file.sync_data().map_err(&err)?;
        self.len += record.len() as u64;
        Ok(())
    }

    /// Starts the log again, empty, under `generation`: called once the database
    /// holds everything the current log does.
    pub(crate) fn restart(&mut self, generation: u64) -> Result<(), NodeError> {
        *self = Wal::create(&self.path, generation)?;
        Ok(())
    }

    /// Bytes in the log, header included.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn rec(payload: &[u8]) -> &mut [u8] {
        let mut r = Vec::new();
        Wal::start_record(&mut r);
        r.extend_from_slice(payload);
        r.leak()
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("por-wal-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn records_come_back_in_order_after_reopen() {
        let d = dir("order");
        let p = d.join("node.wal");
        let (mut w, recs) = Wal::open(&p, 3).unwrap();
        assert!(recs.is_empty());
        for i in 0..50u8 {
            w.append(rec(&vec![i; i as usize * 7])).unwrap();
        }
        drop(w);
        let (mut w, recs) = Wal::open(&p, 3).unwrap();
        assert_eq!(recs.len(), 50);
        assert_eq!(recs[0].0, HEADER);
        for (i, (_, r)) in recs.iter().enumerate() {
            assert_eq!(r, &vec![i as u8; i * 7]);
        }
        // Appends continue after the replayed records.
        w.append(rec(b"more")).unwrap();
        drop(w);
        assert_eq!(Wal::open(&p, 3).unwrap().1.len(), 51);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_torn_last_record_is_cut_off_and_the_log_goes_on() {
        let d = dir("torn");
        let p = d.join("node.wal");
        let (mut w, _) = Wal::open(&p, 0).unwrap();
        w.append(rec(b"first")).unwrap();
        w.append(rec(b"second, which the crash tears")).unwrap();
        drop(w);
        let full = std::fs::metadata(&p).unwrap().len();
        for cut in [1u64, 5, 8, 20] {
            let f = OpenOptions::new().write(true).open(&p).unwrap();
            f.set_len(full - cut).unwrap();
            drop(f);
            let (mut w, recs) = Wal::open(&p, 0).unwrap();
            assert_eq!(recs, vec![(HEADER, b"first".to_vec())], "cut {cut}");
            w.append(rec(b"second, which the crash tears")).unwrap();
            drop(w);
            assert_eq!(std::fs::metadata(&p).unwrap().len(), full);
        }
        // A last record with garbage where its payload should be (the size grew
        // before the data reached the disk): also torn.
        let mut bytes = std::fs::read(&p).unwrap();
        let n = bytes.len();
        bytes[n - 3] ^= 0xff;
        std::fs::write(&p, &bytes).unwrap();
        assert_eq!(
            Wal::open(&p, 0).unwrap().1,
            vec![(HEADER, b"first".to_vec())]
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn damage_before_the_last_record_is_refused() {
        let d = dir("damage");
        let p = d.join("node.wal");
        let (mut w, _) = Wal::open(&p, 0).unwrap();
        w.append(rec(b"first")).unwrap();
        w.append(rec(b"second")).unwrap();
        drop(w);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[HEADER as usize + 9] ^= 0x01; // inside "first"
        std::fs::write(&p, &bytes).unwrap();
        let e = Wal::open(&p, 0).unwrap_err();
        assert!(
            matches!(&e, NodeError::Log { offset, .. } if *offset == HEADER),
            "{e}"
        );
        assert!(e.to_string().contains("checksum"), "{e}");
        // The damaged log is left as it was, for the operator.
        assert_eq!(std::fs::read(&p).unwrap(), bytes);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn generations_older_logs_are_replaced_newer_refused() {
        let d = dir("gen");
        let p = d.join("node.wal");
        let (mut w, _) = Wal::open(&p, 4).unwrap();
        w.append(rec(b"already checkpointed")).unwrap();
        drop(w);
        // The database moved on to generation 5 (a checkpoint finished, the crash
        // came before the new log replaced the old one).
        let (w, recs) = Wal::open(&p, 5).unwrap();
        assert!(recs.is_empty());
        assert_eq!(w.len(), HEADER);
        drop(w);
        let e = Wal::open(&p, 2).unwrap_err();
        assert!(e.to_string().contains("newer"), "{e}");
        std::fs::write(&p, b"something else entirely").unwrap();
        let e = Wal::open(&p, 5).unwrap_err();
        assert!(e.to_string().contains("not a por write-ahead log"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
