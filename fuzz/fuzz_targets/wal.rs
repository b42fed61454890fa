//! The node database's recovery (`NodeDb::open`) over a damaged write-ahead log.
//!
//! A relay's honest write batches (requests, acks, responses, late fees and kept
//! closings from three engines in memory) are committed to a real database, some of
//! them checkpointed into its tables; then the input cuts the log, flips its bytes
//! or appends to it, and the database is reopened.
//!
//! Oracles (record `i` spans the log's bytes from the length after commit `i - 1` to
//! the length after commit `i`; records `1..=j` are the ones left intact in place):
//! - never a panic;
//! - a cut, and nothing else, opens to exactly the state after commit `j`;
//! - whatever opens holds exactly the state after commit `j` (a record past damage is
//!   never applied, an intact one never dropped unless the damage is read as a torn
//!   last write: see below), and opens again to the same store;
//! - damage followed by an intact record in place is refused, with one exception the
//!   format cannot tell from a crash: a record header whose length was damaged to
//!   run past the end of the file reads as the torn last write, and a damaged
//!   generation in the file header as a log already checkpointed (docs/fuzzing.md).
//!
//! With the high bit of `checkpoint at` set, the node stopped while that checkpoint was
//! being written: the tables are from before it, the log it folds set aside beside
//! the next one (which the input damages as above); the oracles are the same. With
//! the next bit too, the checkpoint had already linked the log it keeps for its
//! closings (`kept.rs`): a link the tables do not refer to. Half the answers are
//! large, so the relay's checkpoint keeps its log and the tables refer into it.
//!
//! Input: `[commits][checkpoint at][op]*`, each op `[kind][offset: u32 LE][value]`:
//! kind 0 cuts at the offset, 1 xors the byte there with the value, 2 appends `value`
//! bytes of `offset`'s low byte. With `commits = 0xff` the rest is the whole log file.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use por_node::db::NodeDb;
use por_protocol::config::SeverPolicy;
use por_protocol::store::{Store, Write};
use por_protocol::testing::{test_edge, Network};
use por_protocol::types::{ChannelId, Route};
use por_protocol::{Amount, EngineConfig, Event, Keypair, Time};

/// The relay's write batches of an honest exchange, in commit order.
fn batches() -> &'static Vec<Vec<Write>> {
    static BATCHES: OnceLock<Vec<Vec<Write>>> = OnceLock::new();
    BATCHES.get_or_init(|| {
        let keys: Vec<Keypair> = (1u8..=3).map(|i| Keypair::from_seed([i; 32])).collect();
        let edges = vec![
            test_edge(1, &keys[0], &keys[1]),
            test_edge(2, &keys[1], &keys[2]),
        ];
        // Unanswered requests stay in flight (nobody severs for them).
        let config = EngineConfig {
            sever_policy: SeverPolicy::Never,
            heuristic: None,
            ..EngineConfig::default()
        };
        let mut net = Network::new(
            keys.iter().map(|k| (k.clone(), config.clone())),
            edges,
            Time::ZERO,
        );
        let route = Route {
            nodes: keys.iter().map(Keypair::id).collect(),
            channels: vec![ChannelId(1), ChannelId(2)],
        };
        let mut out = Vec::new();
        for round in 0..12u64 {
            let t = Time(1 + round * 50);
            // A request answered too late gets its edge severed: the exchange ends.
            let sent = net.nodes[0].engine.send_request(
                route.clone(),
                vec![round as u8; 20],
                16_384,
                Amount(1),
                t,
            );
            if sent.is_err() {
                break;
            }
            for step in 0..6 {
                // Some answers come late (late fees), some never (kept in flight).
                let now = Time(t.0 + step * 20);
                for i in 0..3 {
                    while let Some(b) = net.nodes[i].engine.poll_writes() {
                        for w in &b.writes {
                            net.nodes[i].store.apply(w).expect("honest write");
                        }
                        if i == 1 {
                            out.push(b.writes);
                        }
                        net.nodes[i].engine.writes_durable(b.up_to);
                    }
                    while let Some(tx) = net.nodes[i].engine.poll_transmit() {
                        let to = net.index(&tx.to).expect("a node");
                        let _ = net.deliver(i, to, tx.message, now);
                    }
                    for ev in net.events(i) {
                        if let Event::RequestReceived { request, .. } = ev {
                            if round % 3 != 2 && (round % 3 == 0 || step >= 2) {
                                // Every other answer large enough that the relay's
                                // kept closings make up most of its log: the log is
                                // kept at the checkpoint, the tables referring to it.
                                let len = if round % 2 == 0 { 16_384 } else { 40 };
                                let _ = net.nodes[2].engine.respond(request, vec![7; len], now);
                            }
                        }
                    }
                    net.nodes[i].engine.handle_timeout(now);
                }
            }
        }
        assert!(out.len() >= 20, "an exchange of {} batches", out.len());
        out
    })
}

/// The log's file header (magic and generation).
const HEADER: u64 = 16;

fn dir(tag: &str) -> PathBuf {
    // On tmpfs where there is one: a sync per commit is what costs here, and what
    // is fuzzed is what the bytes say, not the disk.
    let shm = std::path::Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let d = base.join(format!("por-fuzz-wal-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// What `k` honest commits leave, a checkpoint after commit `checkpoint` (none at 0):
/// the database file, the log, the store after each commit (`states[i]`, from 0) and
/// the log's length after each commit (`ends[i]`; the log starts again empty at the
/// checkpoint); and the database file and log as they were when the checkpoint began
/// (a crash before it was in leaves those, the log set aside); and the kept logs
/// (file name, bytes) the checkpoint left. Made once per `(k, checkpoint)`:
/// committing is not what is fuzzed.
type Committed = (
    Vec<u8>,
    Vec<u8>,
    Vec<Store>,
    Vec<u64>,
    Vec<u8>,
    Vec<u8>,
    Vec<(std::ffi::OsString, Vec<u8>)>,
);

/// The kept logs beside the database in `dir` (`node.wal-<generation>`).
fn kept_logs(dir: &std::path::Path) -> Vec<(std::ffi::OsString, Vec<u8>)> {
    let mut kept = Vec::new();
    for entry in std::fs::read_dir(dir).expect("list dir") {
        let entry = entry.expect("dir entry");
        let name = entry.file_name();
        let is_kept = name
            .to_str()
            .and_then(|n| n.strip_prefix("node.wal-"))
            .is_some_and(|g| g.parse::<u64>().is_ok());
        if is_kept {
            kept.push((name, std::fs::read(entry.path()).expect("read kept log")));
        }
    }
    kept
}
fn committed(k: usize, checkpoint: usize) -> &'static Committed {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static MADE: OnceLock<Mutex<HashMap<(usize, usize), &'static Committed>>> = OnceLock::new();
    let made = MADE.get_or_init(Default::default);
    if let Some(c) = made.lock().expect("lock").get(&(k, checkpoint)) {
        return c;
    }
    let dir = dir("made");
    let path = dir.join("node.redb");
    let log = path.with_extension("wal");
    let mut states = vec![Store::default()];
    let mut ends = vec![HEADER];
    let (mut tables_before, mut log_before) = (Vec::new(), Vec::new());
    {
        let mut db = NodeDb::open_with(&path, u64::MAX).expect("fresh database");
        for (i, b) in batches()[..k].iter().enumerate() {
            db.commit(b.clone()).expect("honest commit");
            states.push(db.store().clone());
            if i + 1 == checkpoint {
                tables_before = std::fs::read(&path).expect("read database");
                log_before = std::fs::read(&log).expect("read log");
                db.checkpoint().expect("checkpoint");
            }
            ends.push(std::fs::metadata(&log).expect("log").len());
        }
    }
    let kept = kept_logs(&dir);
    // What the large answers are for: a checkpoint of the whole exchange keeps its
    // log (else the kept logs' recovery would go unfuzzed).
    assert!(
        checkpoint < 20 || !kept.is_empty(),
        "checkpoint after {checkpoint} commits kept no log"
    );
    let c: &'static Committed = Box::leak(Box::new((
        std::fs::read(&path).expect("read database"),
        std::fs::read(&log).expect("read log"),
        states,
        ends,
        tables_before,
        log_before,
        kept,
    )));
    let _ = std::fs::remove_dir_all(&dir);
    made.lock().expect("lock").insert((k, checkpoint), c);
    c
}

fn reopen_agrees(path: &std::path::Path, store: &Store) {
    let again = NodeDb::open_with(path, u64::MAX).expect("what opened once opens again");
    assert!(
        again.store() == store,
        "a second open differs from the first"
    );
}

fuzz_target!(|input: &[u8]| {
    let [commits, checkpoint_at, ops @ ..] = input else {
        return;
    };
    let dir = dir("run");
    let path = dir.join("node.redb");
    let log = path.with_extension("wal");
    if *commits == 0xff {
        // Arbitrary bytes as the log of a fresh database: an error or a store, and
        // the same store again.
        drop(NodeDb::open_with(&path, u64::MAX).expect("fresh database"));
        std::fs::write(&log, ops).expect("write log");
        if let Ok(db) = NodeDb::open_with(&path, u64::MAX) {
            let store = db.store().clone();
            drop(db);
            reopen_agrees(&path, &store);
        }
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    let all = batches();
    // Up to 24 commits, checkpointed at none, half or all of them: at most 72
    // prepared logs kept in memory.
    let k = 1 + usize::from(*commits) % all.len().min(24);
    let checkpoint = [0, k / 2, k][usize::from(*checkpoint_at) % 3];
    let (db_file, original, states, ends, tables_before, log_before, kept) =
        committed(k, checkpoint);
    // The high bit: the node stopped while the checkpoint was being written, so the
    // tables are from before it and the log it folds waits beside the next one. The
    // next bit: it stopped after linking the log it keeps, a link the tables do not
    // refer to yet.
    if *checkpoint_at >= 0x80 && checkpoint > 0 {
        std::fs::write(&path, tables_before).expect("write database");
        std::fs::write(log.with_extension("wal-prev"), log_before).expect("write set-aside log");
        if *checkpoint_at & 0x40 != 0 {
            for (name, bytes) in kept {
                std::fs::write(dir.join(name), bytes).expect("write kept log");
            }
        }
    } else {
        std::fs::write(&path, db_file).expect("write database");
        for (name, bytes) in kept {
            std::fs::write(dir.join(name), bytes).expect("write kept log");
        }
    }
    let mut bytes = original.clone();
    for op in ops.chunks_exact(6).take(4) {
        let offset = u32::from_le_bytes([op[1], op[2], op[3], op[4]]) as usize;
        match op[0] % 3 {
            0 => bytes.truncate(offset % (bytes.len() + 1)),
            1 if !bytes.is_empty() => {
                let at = offset % bytes.len();
                bytes[at] ^= op[5];
            }
            2 => bytes.extend(std::iter::repeat_n(op[1], usize::from(op[5]))),
            _ => {}
        }
    }
    std::fs::write(&log, &bytes).expect("write log");
    // The intact prefix, and the records wholly inside it (from the checkpoint on).
    let intact = bytes
        .iter()
        .zip(original)
        .take_while(|(a, b)| a == b)
        .count() as u64;
    // Commits up to the checkpoint are in the tables, whatever the log says.
    let j = (checkpoint + 1..=k)
        .take_while(|i| ends[*i] <= intact)
        .last()
        .unwrap_or(checkpoint);
    // A cut into the file header is not a crash (a log is created whole, by rename).
    let pure_cut = bytes.len() as u64 == intact && intact >= HEADER;
    // A later record, past the damaged one, still whole at its place.
    let whole_after = (j + 2..=k).any(|i| {
        let (s, e) = (ends[i - 1] as usize, ends[i] as usize);
        bytes.get(s..e).is_some_and(|r| r == &original[s..e])
    });
    // The damaged record's header claims a length that runs past the end.
    let runs_past = {
        let s = ends[j] as usize;
        bytes.get(s..s + 4).is_some_and(|h| {
            let len = u64::from(u32::from_le_bytes([h[0], h[1], h[2], h[3]]));
            ends[j] + 8 + len > bytes.len() as u64
        })
    };
    match NodeDb::open_with(&path, u64::MAX) {
        Ok(db) => {
            let store = db.store().clone();
            drop(db);
            assert!(
                store == states[j],
                "opened to a state other than after commit {j} of {k} (checkpoint {checkpoint})"
            );
            // The file header (its generation) has no checksum either.
            assert!(
                !whole_after || runs_past || intact < HEADER,
                "damage to record {} read as a torn tail, dropping a later durable record",
                j + 1
            );
            reopen_agrees(&path, &store);
        }
        Err(e) => {
            assert!(!pure_cut, "a cut at {} refused: {e}", bytes.len());
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
});
