//! Kept logs: finished write-ahead logs held on for the closing messages the tables
//! refer to, so that a response body is written to disk once.
//!
//! A closing message (a response or proof sent upstream, kept durably to resend, see
//! `Write::Closing`) is first made durable as a write in the log. When a checkpoint
//! folds that log into the tables, copying every kept response body into redb would
//! write each body a second time: on a relay forwarding large responses that was as
//! much again as the log. Instead, when the closings still kept from a finished log
//! make up at least a quarter of it, the log is hard-linked as a kept log
//! (`<db>.wal-<generation>`) and the table `closings_in_log` holds, per closing, where
//! its write is in it ([`InLog`]). A kept log is deleted once the tables no longer
//! refer to it. A log holding fewer live closings than that is not kept: its closings
//! are copied into the table `closings` as before, and so are those of an older kept
//! log that has fallen below the quarter, which bounds the kept logs' bytes at four
//! times the closings they hold.
//!
//! Crash safety: a log is linked before the checkpoint that refers to it commits, and
//! deleted only after the checkpoint that stops referring to it has; opening deletes
//! any kept log the tables do not refer to (see [`on_disk`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use por_protocol::messages::Message;
use por_protocol::store::{Store, Write};
use por_protocol::types::{ChannelId, RequestId};
use por_protocol::wire;
use redb::TableDefinition;
use serde::{Deserialize, Serialize};

use crate::wal::{read_record, sync_dir};
use crate::NodeError;

/// Closings whose message is in a kept log, by request: (channel, [`InLog`]).
pub(crate) const CLOSINGS_IN_LOG: TableDefinition<&[u8; 16], &[u8]> =
    TableDefinition::new("closings_in_log");

/// A finished log is kept when its live closings make up at least 1/KEEP_SHARE of it.
const KEEP_SHARE: u64 = 4;

/// Where a closing's write is: in the log of `generation`, in the record starting at
/// byte `record`, `len` bytes from byte `at` of its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct InLog {
    /// The log's generation.
    pub(crate) generation: u64,
    /// Where the record starts in the log file.
    pub(crate) record: u64,
    /// Where the write starts in the record's payload.
    pub(crate) at: u32,
    /// The write's encoded length.
    pub(crate) len: u32,
}

/// The kept log of `generation` beside the database at `db`.
pub(crate) fn path(db: &Path, generation: u64) -> PathBuf {
    db.with_extension(format!("wal-{generation}"))
}

/// The generations of the kept logs beside the database at `db`.
pub(crate) fn on_disk(db: &Path) -> Result<Vec<u64>, NodeError> {
    let err = |e: std::io::Error| NodeError::Db {
        path: db.to_path_buf(),
        detail: format!("listing the kept logs: {e}"),
    };
    let dir = match db.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let Some(stem) = db.file_stem().and_then(|s| s.to_str()) else {
        return Ok(Vec::new());
    };
    let prefix = format!("{stem}.wal-");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(err)? {
        let name = entry.map_err(err)?.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        if let Ok(g) = rest.parse::<u64>() {
            found.push(g);
        }
    }
    found.sort_unstable();
    Ok(found)
}

/// Hard-links the finished log at `from` as the kept log of `generation` (replacing a
/// link left by a checkpoint cut short) and syncs the directory. On a file system
/// without hard links the log is copied (and synced) instead.
pub(crate) fn link(from: &Path, db: &Path, generation: u64) -> std::io::Result<()> {
    let to = path(db, generation);
    match std::fs::remove_file(&to) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Err(e) = std::fs::hard_link(from, &to) {
        tracing::debug!(log = %from.display(), error = %e, "cannot hard-link the kept log; copying it");
        std::fs::copy(from, &to)?;
        File::open(&to)?.sync_all()?;
    }
    sync_dir(&to)
}

/// Deletes the kept logs of `generations` (the tables no longer refer to them).
pub(crate) fn remove(db: &Path, generations: &[u64]) -> Result<(), NodeError> {
    for &g in generations {
        let p = path(db, g);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(NodeError::Db {
                    path: p,
                    detail: format!("deleting a kept log: {e}"),
                })
            }
        }
    }
    if !generations.is_empty() {
        sync_dir(db).map_err(|e| NodeError::Db {
            path: db.to_path_buf(),
            detail: e.to_string(),
        })?;
    }
    Ok(())
}

/// Reads the closings `rows` refer to from the kept logs beside `db`, each record once:
/// each row with its message. A kept log missing or a write that is not the closing
/// its row names is damage to state reported durable: an error, and the node does not
/// start.
pub(crate) fn read(
    db: &Path,
    mut rows: Vec<(RequestId, ChannelId, InLog)>,
) -> Result<Vec<(RequestId, ChannelId, InLog, Message)>, NodeError> {
    rows.sort_by_key(|(_, _, l)| (l.generation, l.record, l.at));
    let mut out = Vec::with_capacity(rows.len());
    let mut file: Option<(u64, File)> = None;
    let mut record: Option<((u64, u64), Vec<u8>)> = None;
    for (id, channel, l) in rows {
        let p = path(db, l.generation);
        let damaged = |detail: String| NodeError::Log {
            path: p.clone(),
            offset: l.record,
            detail,
        };
        if file.as_ref().map(|(g, _)| *g) != Some(l.generation) {
            let f = File::open(&p).map_err(|e| {
                damaged(format!(
                    "the kept log of closing {id} cannot be opened: {e}"
                ))
            })?;
            file = Some((l.generation, f));
        }
        let key = (l.generation, l.record);
        if record.as_ref().map(|(k, _)| *k) != Some(key) {
            let Some((_, f)) = file.as_ref() else {
                continue;
            };
            record = Some((key, read_record(f, &p, l.record)?));
        }
        let Some((_, payload)) = record.as_ref() else {
            continue;
        };
        let (at, len) = (l.at as usize, l.len as usize);
        let bytes = at
            .checked_add(len)
            .and_then(|end| payload.get(at..end))
            .ok_or_else(|| damaged(format!("closing {id} runs past its record")))?;
        match wire::decode::<Write>(bytes) {
            Ok(Write::Closing {
                channel: c,
                request,
                message,
            }) if request == id && c == channel => out.push((id, channel, l, *message)),
            Ok(_) => return Err(damaged(format!("closing {id}: another write is there"))),
            Err(e) => return Err(damaged(format!("closing {id}: {e}"))),
        }
    }
    Ok(out)
}

/// Where the tables hold one kept closing.
#[derive(Clone, Copy, Debug)]
enum Row {
    /// In `closings`, the message itself.
    Inline,
    /// In `closings_in_log`, a reference into a kept log.
    InLog(InLog),
}

/// One kept log's share of the closings.
#[derive(Debug, Default)]
struct Kept {
    /// The file's length.
    size: u64,
    /// The bytes of the closings the tables refer to in it.
    live: u64,
    /// Those closings.
    members: HashSet<RequestId>,
}

/// A closing's row to write, by request: (channel, what the row holds), or `None` to
/// delete it.
pub(crate) type RowOf<T> = ([u8; 16], Option<(ChannelId, T)>);

/// The rows of kept closings one checkpoint writes or deletes, and the kept logs it
/// starts and ends.
#[derive(Debug, Default)]
pub(crate) struct ClosingFold {
    /// Rows of `closings` (`None` deletes).
    pub(crate) inline: Vec<RowOf<Message>>,
    /// Rows of `closings_in_log` (`None` deletes).
    pub(crate) in_log: Vec<RowOf<InLog>>,
    /// Generations of the logs folded now that are to be kept: linked before the
    /// checkpoint commits.
    pub(crate) link: Vec<u64>,
    /// Kept logs no row refers to once the checkpoint is in: deleted after it.
    pub(crate) release: Vec<u64>,
}

/// What the tables hold of the kept closings, and where the closings written since
/// the last checkpoint are in the logs.
#[derive(Debug, Default)]
pub(crate) struct Closings {
    rows: HashMap<RequestId, Row>,
    kept: BTreeMap<u64, Kept>,
    /// Closings written to a log not yet folded: where.
    unfolded: HashMap<RequestId, InLog>,
}

impl Closings {
    /// A row of `closings` read on opening.
    pub(crate) fn loaded_inline(&mut self, id: RequestId) {
        self.rows.insert(id, Row::Inline);
    }

    /// A row of `closings_in_log` read on opening, its kept log `size` bytes long.
    pub(crate) fn loaded_in_log(&mut self, id: RequestId, l: InLog, size: u64) {
        self.rows.insert(id, Row::InLog(l));
        let k = self.kept.entry(l.generation).or_default();
        k.size = size;
        k.live = k.live.saturating_add(u64::from(l.len));
        k.members.insert(id);
    }

    /// The generations of the kept logs the tables refer to.
    pub(crate) fn kept(&self) -> impl Iterator<Item = u64> + '_ {
        self.kept.keys().copied()
    }

    /// Notes where a write just logged is, if it keeps or drops a closing.
    pub(crate) fn logged(&mut self, w: &Write, at: InLog) {
        match w {
            Write::Closing { request, .. } => {
                self.unfolded.insert(*request, at);
            }
            Write::ClosingDropped { request } => {
                self.unfolded.remove(request);
            }
            _ => {}
        }
    }

    /// The closing rows a checkpoint of the logs `folded` ((generation, bytes)) writes,
    /// for the closings `dirty` names as `store` holds them now; and the kept logs
    /// that fall below their share, their closings copied into the table.
    pub(crate) fn take(
        &mut self,
        store: &Store,
        dirty: &std::collections::BTreeSet<RequestId>,
        folded: &[(u64, u64)],
    ) -> ClosingFold {
        let size_of = |g: u64| folded.iter().find(|(f, _)| *f == g).map(|(_, s)| *s);
        // Which of the folded logs hold enough live closings to keep.
        let mut live: BTreeMap<u64, u64> = BTreeMap::new();
        for id in dirty {
            if let (true, Some(l)) = (store.closings.contains_key(id), self.unfolded.get(id)) {
                if size_of(l.generation).is_some() {
                    *live.entry(l.generation).or_default() += u64::from(l.len);
                }
            }
        }
        let keep: Vec<u64> = live
            .iter()
            .filter(|(g, bytes)| {
                size_of(**g).is_some_and(|s| bytes.saturating_mul(KEEP_SHARE) >= s)
            })
            .map(|(g, _)| *g)
            .collect();
        let mut out = ClosingFold {
            link: keep.clone(),
            ..ClosingFold::default()
        };
        for id in dirty {
            let at = self.unfolded.remove(id);
            let new = store.closings.get(id).map(|(channel, message)| match at {
                Some(l) if keep.contains(&l.generation) => (*channel, Row::InLog(l), message),
                _ => (*channel, Row::Inline, message),
            });
            let old = self.rows.remove(id);
            if let Some(Row::InLog(l)) = old {
                self.unkeep(*id, l);
            }
            match (old, &new) {
                (Some(Row::Inline), Some((_, Row::Inline, _))) => {}
                (Some(Row::Inline), _) => out.inline.push((id.0, None)),
                (Some(Row::InLog(_)), Some((_, Row::InLog(_), _))) => {}
                (Some(Row::InLog(_)), _) => out.in_log.push((id.0, None)),
                (None, _) => {}
            }
            match new {
                Some((channel, Row::Inline, message)) => {
                    out.inline.push((id.0, Some((channel, message.clone()))));
                    self.rows.insert(*id, Row::Inline);
                }
                Some((channel, Row::InLog(l), _)) => {
                    let k = self.kept.entry(l.generation).or_default();
                    k.size = size_of(l.generation).unwrap_or(k.size);
                    k.live = k.live.saturating_add(u64::from(l.len));
                    k.members.insert(*id);
                    out.in_log.push((id.0, Some((channel, l))));
                    self.rows.insert(*id, Row::InLog(l));
                }
                None => {}
            }
        }
        // Older kept logs that have fallen below their share: copy what is left of
        // them into the table, so that they can go.
        let sparse: Vec<u64> = self
            .kept
            .iter()
            .filter(|(g, k)| size_of(**g).is_none() && k.live.saturating_mul(KEEP_SHARE) < k.size)
            .map(|(g, _)| *g)
            .collect();
        for g in sparse {
            let Some(k) = self.kept.remove(&g) else {
                continue;
            };
            for id in k.members {
                out.in_log.push((id.0, None));
                match store.closings.get(&id) {
                    Some((channel, message)) => {
                        out.inline.push((id.0, Some((*channel, message.clone()))));
                        self.rows.insert(id, Row::Inline);
                    }
                    None => {
                        self.rows.remove(&id);
                    }
                }
            }
            out.release.push(g);
        }
        let empty: Vec<u64> = self
            .kept
            .iter()
            .filter(|(_, k)| k.members.is_empty())
            .map(|(g, _)| *g)
            .collect();
        for g in empty {
            self.kept.remove(&g);
            out.release.push(g);
        }
        out
    }

    /// Takes a closing's row out of its kept log's share.
    fn unkeep(&mut self, id: RequestId, l: InLog) {
        if let Some(k) = self.kept.get_mut(&l.generation) {
            if k.members.remove(&id) {
                k.live = k.live.saturating_sub(u64::from(l.len));
            }
        }
    }
}
