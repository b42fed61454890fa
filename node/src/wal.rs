//! The write-ahead log in front of the node database.
//!
//! Every group commit appends one record (the encoded writes) and syncs it: one
//! sequential write and one `fdatasync`, instead of rewriting B-tree pages. The
//! database proper is brought up to date at checkpoints (see [`crate::checkpoint`]):
//! the log is set aside whole and a fresh one of the next generation number takes the
//! commits while the finished one is folded into the tables.
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
/// A record's header: its payload's length and checksum.
pub(crate) const RECORD_HEADER: u64 = 8;
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
pub(crate) fn sync_dir(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => File::open(dir)?.sync_all(),
        _ => File::open(".")?.sync_all(),
    }
}

/// Writes every byte of `slices`, in order (`Write::write_all_vectored` is not
/// stable).
fn write_all_vectored(file: &mut File, slices: &mut [std::io::IoSlice<'_>]) -> std::io::Result<()> {
    let mut rest = slices;
    while !rest.is_empty() {
        match file.write_vectored(rest) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => std::io::IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The payload of the whole record starting at byte `offset` of the log `file` (at
/// `path`), its checksum checked: how a kept closing is read back (see `kept.rs`).
/// A record that is not whole there is damage.
pub(crate) fn read_record(file: &File, path: &Path, offset: u64) -> Result<Vec<u8>, NodeError> {
    use std::io::{Seek, SeekFrom};
    let damaged = |detail: String| NodeError::Log {
        path: path.to_path_buf(),
        offset,
        detail,
    };
    let mut f = file;
    f.seek(SeekFrom::Start(offset))
        .map_err(|e| damaged(format!("seeking to a record: {e}")))?;
    let mut head = [0u8; RECORD_HEADER as usize];
    f.read_exact(&mut head)
        .map_err(|e| damaged(format!("reading a record's header: {e}")))?;
    let [l0, l1, l2, l3, s0, s1, s2, s3] = head;
    let len = u32::from_le_bytes([l0, l1, l2, l3]);
    let sum = u32::from_le_bytes([s0, s1, s2, s3]);
    if u64::from(len) > MAX_RECORD {
        return Err(damaged(format!(
            "a record of {len} bytes is over the limit"
        )));
    }
    let mut payload = vec![0u8; len as usize];
    f.read_exact(&mut payload)
        .map_err(|e| damaged(format!("reading a record of {len} bytes: {e}")))?;
    if crc(&payload) != sum {
        return Err(damaged(format!(
            "a record of {len} bytes fails its checksum"
        )));
    }
    Ok(payload)
}

/// A log read back from disk.
#[derive(Debug)]
pub(crate) struct Loaded {
    /// The generation in its header.
    pub(crate) generation: u64,
    /// Its whole records (offset, payload), oldest first.
    pub(crate) records: Records,
    /// Where the whole records end (a torn last record starts there).
    pub(crate) end: u64,
    /// The file's length.
    total: u64,
}

impl Wal {
    /// Reads the log at `path`: `None` if there is none. A torn last record (one that
    /// runs past the end or fails its checksum at the end) is left out: it was never
    /// reported durable. A bad record with more data after it is damage to state that
    /// was reported durable, and an error.
    pub(crate) fn load(path: &Path) -> Result<Option<Loaded>, NodeError> {
        let err = io_err(path);
        let bytes = match File::open(path) {
            Ok(mut f) => {
                let mut bytes = Vec::new();
                f.read_to_end(&mut bytes).map_err(&err)?;
                bytes
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(err(e)),
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
        let generation = u64::from_le_bytes(gen_bytes);
        let total = bytes.len() as u64;
        let mut records = Vec::new();
        let mut at = HEADER;
        while at < total {
            let rest = total - at;
            if rest < RECORD_HEADER {
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
                break;
            }
            let payload = &bytes[i + 8..end as usize];
            if len > MAX_RECORD || crc(payload) != sum {
                if end == total {
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
        Ok(Some(Loaded {
            generation,
            records,
            end: at,
            total,
        }))
    }

    /// Opens the log `loaded` was read from for appending after its whole records,
    /// cutting a torn last record off first.
    pub(crate) fn resume(path: &Path, loaded: &Loaded) -> Result<Wal, NodeError> {
        let err = io_err(path);
        let file = OpenOptions::new().write(true).open(path).map_err(&err)?;
        if loaded.end < loaded.total {
            tracing::warn!(
                log = %path.display(),
                offset = loaded.end,
                dropped = loaded.total - loaded.end,
                "cutting a torn last record off the write-ahead log (it was never reported durable)"
            );
            file.set_len(loaded.end).map_err(&err)?;
            file.sync_all().map_err(&err)?;
        }
        let mut wal = Wal {
            file,
            path: path.to_path_buf(),
            generation: loaded.generation,
            len: loaded.end,
        };
        wal.seek_end()?;
        Ok(wal)
    }

    fn seek_end(&mut self) -> Result<(), NodeError> {
        use std::io::Seek;
        self.file
            .seek(std::io::SeekFrom::Start(self.len))
            .map_err(io_err(&self.path))?;
        Ok(())
    }

    /// Writes a fresh, empty log for `generation` under a temporary name and syncs it:
    /// the file and that name, for the caller to rename into place.
    fn fresh(path: &Path, generation: u64) -> Result<(File, PathBuf), NodeError> {
        let err = io_err(path);
        let tmp = path.with_extension("wal-new");
        let mut file = File::create(&tmp).map_err(&err)?;
        let mut header = [0u8; HEADER as usize];
        header[..8].copy_from_slice(MAGIC);
        header[8..].copy_from_slice(&generation.to_le_bytes());
        file.write_all(&header).map_err(&err)?;
        file.sync_all().map_err(&err)?;
        Ok((file, tmp))
    }

    /// Writes a fresh, empty log for `generation` and renames it over `path`.
    pub(crate) fn create(path: &Path, generation: u64) -> Result<Wal, NodeError> {
        let err = io_err(path);
        let (file, tmp) = Wal::fresh(path, generation)?;
        std::fs::rename(&tmp, path).map_err(&err)?;
        sync_dir(path).map_err(&err)?;
        Ok(Wal {
            file,
            path: path.to_path_buf(),
            generation,
            len: HEADER,
        })
    }

    /// Where a finished log waits while it is folded into the tables.
    pub(crate) fn prev_path(path: &Path) -> PathBuf {
        path.with_extension("wal-prev")
    }

    /// Sets this log aside as the finished one ([`Wal::prev_path`]) and goes on in a
    /// fresh, empty log of `generation`. In order: the fresh log is written and synced
    /// under a temporary name, this one renamed aside, the fresh one renamed into
    /// place, the directory synced; a crash at any point leaves the finished log
    /// under one of its two names, which opening finds.
    pub(crate) fn rotate(&mut self, generation: u64) -> Result<(), NodeError> {
        let path = self.path.clone();
        let err = io_err(&path);
        let (file, tmp) = Wal::fresh(&path, generation)?;
        std::fs::rename(&path, Wal::prev_path(&path)).map_err(&err)?;
        std::fs::rename(&tmp, &path).map_err(&err)?;
        sync_dir(&path).map_err(&err)?;
        *self = Wal {
            file,
            path: path.clone(),
            generation,
            len: HEADER,
        };
        Ok(())
    }

    /// Deletes the finished log set aside by [`Wal::rotate`] (the tables hold it now),
    /// if it is there.
    pub(crate) fn remove_prev(path: &Path) -> Result<(), NodeError> {
        match std::fs::remove_file(Wal::prev_path(path)) {
            Ok(()) => sync_dir(path).map_err(io_err(path)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(path)(e)),
        }
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
    #[cfg(test)]
    pub(crate) fn append(&mut self, record: &mut [u8]) -> Result<(), NodeError> {
        self.append_parts(record, &[])
    }

    /// [`Wal::append`] of a record whose payload is `record` (after its header room)
    /// with each of `shared` spliced in at its offset in `record`, in order: large
    /// bodies are written from the buffers they arrived in rather than copied into the
    /// record first. The bytes on disk are the same as if they had been.
    pub(crate) fn append_parts(
        &mut self,
        record: &mut [u8],
        shared: &[(usize, bytes::Bytes)],
    ) -> Result<(), NodeError> {
        let err = io_err(&self.path);
        let header = RECORD_HEADER as usize;
        let spliced: usize = shared.iter().map(|(_, b)| b.len()).sum();
        let total = record.len().saturating_add(spliced);
        let size = total.saturating_sub(header);
        let in_order = shared
            .windows(2)
            .all(|w| matches!(w, [(a, _), (b, _)] if a <= b))
            && shared
                .iter()
                .all(|(at, _)| *at >= header && *at <= record.len());
        if !in_order {
            return Err(NodeError::Db {
                path: self.path.clone(),
                detail: "a commit's parts are out of order".into(),
            });
        }
        let len = u32::try_from(size)
            .ok()
            .filter(|l| u64::from(*l) <= MAX_RECORD && record.len() >= header)
            .ok_or_else(|| NodeError::Db {
                path: self.path.clone(),
                detail: format!("a {size}-byte commit is too large to log"),
            })?;
        let mut slices: Vec<std::io::IoSlice<'_>> = Vec::with_capacity(2 * shared.len() + 1);
        let mut sum = crc32fast::Hasher::new();
        let mut from = header;
        for (at, body) in shared {
            sum.update(&record[from..*at]);
            sum.update(body);
            from = *at;
        }
        sum.update(&record[from..]);
        let sum = sum.finalize();
        record[..4].copy_from_slice(&len.to_le_bytes());
        record[4..header].copy_from_slice(&sum.to_le_bytes());
        let mut from = 0;
        for (at, body) in shared {
            slices.push(std::io::IoSlice::new(&record[from..*at]));
            slices.push(std::io::IoSlice::new(body));
            from = *at;
        }
        slices.push(std::io::IoSlice::new(&record[from..]));
        if let Err(e) = write_all_vectored(&mut self.file, &mut slices) {
            // A partial record may be on disk; position after it is unknown. The
            // caller stops the node; a restart cuts it off as a torn tail.
            return Err(err(e));
        }
        self.file.sync_data().map_err(&err)?;
        self.len += total as u64;
        Ok(())
    }

    /// Bytes in the log, header included: where the next record starts.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// The generation in the log's header.
    #[cfg(test)]
    pub(crate) fn generation(&self) -> u64 {
        self.generation
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

    /// The log at `p`, fresh at `generation` if there is none, and its records.
    fn open(p: &Path, generation: u64) -> Result<(Wal, Records), NodeError> {
        match Wal::load(p)? {
            None => Ok((Wal::create(p, generation)?, Vec::new())),
            Some(l) => Ok((Wal::resume(p, &l)?, l.records)),
        }
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
        let (mut w, recs) = open(&p, 3).unwrap();
        assert!(recs.is_empty());
        for i in 0..50u8 {
            w.append(rec(&vec![i; i as usize * 7])).unwrap();
        }
        drop(w);
        let (mut w, recs) = open(&p, 3).unwrap();
        assert_eq!(recs.len(), 50);
        assert_eq!(recs[0].0, HEADER);
        for (i, (_, r)) in recs.iter().enumerate() {
            assert_eq!(r, &vec![i as u8; i * 7]);
        }
        // Appends continue after the replayed records.
        w.append(rec(b"more")).unwrap();
        drop(w);
        assert_eq!(open(&p, 3).unwrap().1.len(), 51);
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// A record written with parts spliced in reads back as the one payload, and
    /// parts out of order are refused with nothing written.
    #[test]
    fn a_record_with_parts_spliced_in_reads_back_whole() {
        let d = dir("parts");
        let p = d.join("node.wal");
        let (mut w, _) = open(&p, 0).unwrap();
        let mut record = Vec::new();
        Wal::start_record(&mut record);
        record.extend_from_slice(b"head|mid|tail");
        let h = RECORD_HEADER as usize;
        let parts = [
            (h, bytes::Bytes::from_static(b"<a>")),
            (h + 5, bytes::Bytes::from_static(b"<b>")),
            (h + 5, bytes::Bytes::from_static(b"<c>")),
            (h + 13, bytes::Bytes::from_static(b"<d>")),
        ];
        w.append_parts(&mut record, &parts).unwrap();
        let before = w.len();
        let mut again = record.clone();
        let backwards = [parts[1].clone(), parts[0].clone()];
        assert!(w.append_parts(&mut again, &backwards).is_err());
        assert_eq!(w.len(), before);
        drop(w);
        let (_, records) = open(&p, 0).unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].1, b"<a>head|<b><c>mid|tail<d>".to_vec());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_torn_last_record_is_cut_off_and_the_log_goes_on() {
        let d = dir("torn");
        let p = d.join("node.wal");
        let (mut w, _) = open(&p, 0).unwrap();
        w.append(rec(b"first")).unwrap();
        w.append(rec(b"second, which the crash tears")).unwrap();
        drop(w);
        let full = std::fs::metadata(&p).unwrap().len();
        for cut in [1u64, 5, 8, 20] {
            let f = OpenOptions::new().write(true).open(&p).unwrap();
            f.set_len(full - cut).unwrap();
            drop(f);
            let (mut w, recs) = open(&p, 0).unwrap();
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
        assert_eq!(open(&p, 0).unwrap().1, vec![(HEADER, b"first".to_vec())]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn damage_before_the_last_record_is_refused() {
        let d = dir("damage");
        let p = d.join("node.wal");
        let (mut w, _) = open(&p, 0).unwrap();
        w.append(rec(b"first")).unwrap();
        w.append(rec(b"second")).unwrap();
        drop(w);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[HEADER as usize + 9] ^= 0x01; // inside "first"
        std::fs::write(&p, &bytes).unwrap();
        let e = open(&p, 0).unwrap_err();
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
    fn a_rotated_log_is_set_aside_whole_and_the_fresh_one_takes_appends() {
        let d = dir("rotate");
        let p = d.join("node.wal");
        let (mut w, _) = open(&p, 4).unwrap();
        w.append(rec(b"finished")).unwrap();
        w.rotate(5).unwrap();
        assert_eq!((w.generation(), w.len()), (5, HEADER));
        w.append(rec(b"next")).unwrap();
        drop(w);
        let prev = Wal::load(&Wal::prev_path(&p)).unwrap().unwrap();
        assert_eq!(prev.generation, 4);
        assert_eq!(prev.records, vec![(HEADER, b"finished".to_vec())]);
        let now = Wal::load(&p).unwrap().unwrap();
        assert_eq!(now.generation, 5);
        assert_eq!(now.records, vec![(HEADER, b"next".to_vec())]);
        Wal::remove_prev(&p).unwrap();
        assert!(Wal::load(&Wal::prev_path(&p)).unwrap().is_none());
        // Removing what is not there is not an error (a crash came after the delete).
        Wal::remove_prev(&p).unwrap();
        std::fs::write(&p, b"something else entirely").unwrap();
        let e = Wal::load(&p).unwrap_err();
        assert!(e.to_string().contains("not a por write-ahead log"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
