//! Lanes over one byte stream (TCP): frames are cut into chunks that interleave, so a
//! large frame on one lane never holds back the frames of another.
//!
//! Sans-IO, both halves:
//!
//! - [`Scheduler`] holds what senders queued, per lane, and picks the next batch of
//!   chunks to write: lane 0 (control) first, but after [`FAIR_BYTES`] of it while
//!   another lane waits, one chunk of that lane, so no lane starves; the other lanes
//!   round robin, chunk by chunk. It starts a frame only while the frames it has
//!   started and not finished stay within the receiver's bound on half-sent bytes.
//! - [`Reassembler`] joins the chunks back into frames per lane, refusing a frame over
//!   the frame limit and half-sent frames over their bound.
//!
//! On the wire a chunk is an ordinary frame header (`len | stream`) whose stream word
//! has its top bit ([`MORE`]) set when more chunks of the same frame follow. A frame
//! that fits in one chunk goes as one plain frame.

use std::collections::{BTreeMap, HashMap, VecDeque};

use bytes::{BufMut, Bytes, BytesMut};

use crate::frame::encode_header;
use crate::pool;
use crate::{check_frame, check_stream, Frame, TransportError};

/// The stream-word bit that says more chunks of this frame follow.
pub const MORE: u32 = 1 << 31;

/// The largest chunk of a frame written at once. Small enough that a control frame
/// queued behind a chunk waits at most this long on the wire; large enough that the
/// 8-byte header costs nothing.
pub const CHUNK: usize = 16 * 1024;

/// Slices of a chunk shorter than this are copied into the batch's buffer rather than
/// written as parts of their own.
const SLIVER: usize = 1024;

/// Bytes of lane 0 written in a row, while another lane waits, before that lane gets
/// a chunk.
pub const FAIR_BYTES: usize = 256 * 1024;

/// One send call's frames, in order, and the token handed back once all are written.
#[derive(Debug)]
struct Job<T> {
    frames: VecDeque<Frame>,
    /// Bytes of the front frame already cut into chunks.
    offset: usize,
    token: Option<T>,
}

/// What to write next, and whose sends it completes.
#[derive(Debug)]
pub struct Batch<T> {
    /// Buffers to write in order.
    pub parts: Vec<Bytes>,
    /// Their total length.
    pub bytes: usize,
    /// Tokens of the sends whose last byte is in `parts`.
    pub done: Vec<T>,
}

/// The sending half: per-lane queues and the fair pick between them.
#[derive(Debug)]
pub struct Scheduler<T> {
    lanes: BTreeMap<u32, VecDeque<Job<T>>>,
    max_frame: usize,
    max_partial: usize,
    /// Lengths of the frames started and not finished, by lane.
    started: HashMap<u32, usize>,
    /// Lane 0 bytes written since another lane last got a chunk.
    control_run: usize,
    /// The bulk lane served last (round robin starts after it).
    last_bulk: u32,
}

impl<T> Scheduler<T> {
    /// A scheduler for frames up to `max_frame` bytes, keeping at most `max_partial`
    /// bytes of frames half-sent.
    pub fn new(max_frame: usize, max_partial: usize) -> Scheduler<T> {
        Scheduler {
            lanes: BTreeMap::new(),
            max_frame,
            max_partial: max_partial.max(max_frame),
            started: HashMap::new(),
            control_run: 0,
            last_bulk: 0,
        }
    }

    /// Queues `frames` on `stream`; `token` comes back in a [`Batch`] once the last of
    /// them is written. Every frame is checked first: an oversized one queues nothing.
    pub fn push(
        &mut self,
        stream: u32,
        frames: Vec<Frame>,
        token: T,
    ) -> Result<(), TransportError> {
        check_stream(stream)?;
        for f in &frames {
            check_frame(f, self.max_frame)?;
        }
        self.lanes.entry(stream).or_default().push_back(Job {
            frames: frames.into(),
            offset: 0,
            token: Some(token),
        });
        Ok(())
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.lanes.values().all(VecDeque::is_empty)
    }

    /// Drops everything queued, returning the tokens (their sends will not complete).
    pub fn clear(&mut self) -> Vec<T> {
        self.started.clear();
        let lanes = std::mem::take(&mut self.lanes);
        lanes
            .into_values()
            .flatten()
            .filter_map(|j| j.token)
            .collect()
    }

    /// Whether lane `s` may put its next chunk on the wire now.
    fn eligible(&self, s: u32) -> bool {
        let Some(job) = self.lanes.get(&s).and_then(VecDeque::front) else {
            return false;
        };
        let Some(front) = job.frames.front() else {
            // An empty job completes at once.
            return true;
        };
        if job.offset > 0 || front.len() <= CHUNK {
            return true;
        }
        let open: usize = self.started.values().sum();
        open == 0 || open.saturating_add(front.len()) <= self.max_partial
    }

    /// The lane to serve next.
    fn pick(&mut self) -> Option<u32> {
        let control = self.eligible(0);
        // Round robin: the lanes after the one served last, then from the start.
        let last = self.last_bulk;
        let after = self.lanes.range(last.saturating_add(1)..).map(|(s, _)| *s);
        let before = self
            .lanes
            .range(1..)
            .map(|(s, _)| *s)
            .take_while(|s| *s <= last);
        let bulk = after.chain(before).find(|s| *s != 0 && self.eligible(*s));
        match (control, bulk) {
            (true, Some(b)) if self.control_run >= FAIR_BYTES => Some(b),
            (true, Some(_)) => Some(0),
            (true, None) => {
                // Nobody waits: the run only counts while another lane does.
                self.control_run = 0;
                Some(0)
            }
            (false, b) => b,
        }
    }

    /// The next chunks to write, about `max_bytes` of them (at least one chunk if
    /// anything is queued).
    pub fn next_batch(&mut self, max_bytes: usize) -> Batch<T> {
        let mut batch = Batch {
            parts: Vec::new(),
            bytes: 0,
            done: Vec::new(),
        };
        let mut small = BytesMut::new();
        while batch.bytes.saturating_add(small.len()) < max_bytes.max(1) {
            let Some(s) = self.pick() else { break };
            let wrote = self.cut(s, &mut batch, &mut small);
            if s == 0 {
                self.control_run = self.control_run.saturating_add(wrote);
            } else {
                self.control_run = 0;
                self.last_bulk = s;
            }
        }
        if !small.is_empty() {
            batch.bytes = batch.bytes.saturating_add(small.len());
            batch.parts.push(small.freeze());
        }
        batch
    }

    /// Cuts the next chunk (or whole small frame) of lane `s`'s front job into the
    /// batch; returns the payload bytes it took.
    fn cut(&mut self, s: u32, batch: &mut Batch<T>, small: &mut BytesMut) -> usize {
        let Some(queue) = self.lanes.get_mut(&s) else {
            return 0;
        };
        let Some(job) = queue.front_mut() else {
            return 0;
        };
        let mut took = 0;
        if let Some(front) = job.frames.front() {
            let rest = front.len().saturating_sub(job.offset);
            let n = rest.min(CHUNK);
            let more = n < rest;
            let word = if more { s | MORE } else { s };
            // Lengths were checked against the limit in `push`.
            let _ = encode_header(word, n, usize::MAX, small);
            if n < CHUNK {
                front.slices(job.offset, n, |p| small.put_slice(&p));
            } else {
                // A whole chunk goes out as the slices of the frame's parts it spans,
                // uncopied, but for slivers (a message's header before its body).
                front.slices(job.offset, n, |p| {
                    if p.len() < SLIVER {
                        small.put_slice(&p);
                    } else {
                        if !small.is_empty() {
                            batch.bytes = batch.bytes.saturating_add(small.len());
                            batch.parts.push(small.split().freeze());
                        }
                        batch.bytes = batch.bytes.saturating_add(p.len());
                        batch.parts.push(p);
                    }
                });
            }
            took = n;
            if more {
                if job.offset == 0 {
                    self.started.insert(s, front.len());
                }
                job.offset = job.offset.saturating_add(n);
            } else {
                self.started.remove(&s);
                job.offset = 0;
                job.frames.pop_front();
            }
        }
        if job.frames.is_empty() {
            if let Some(t) = job.token.take() {
                batch.done.push(t);
            }
            queue.pop_front();
        }
        took
    }
}

/// A chunk of at least this many bytes is held apart, as it came; a smaller one is
/// copied onto the frame's tail, a buffer that grows by doubling. So a frame in honest
/// 16 KiB chunks is copied once, when it is joined, and one in tiny chunks costs no
/// more than a growing buffer, while its parts stay at most two per `MIN_PART` bytes
/// (each part held apart, and the tail cut off before it).
const MIN_PART: usize = 4 * 1024;

/// A frame whose chunks are still arriving: its parts held apart and the tail after
/// them, their bytes in all, and since when. Joined once, in one allocation of the
/// frame's size, when the last chunk is in (growing one buffer chunk by chunk copied a
/// 512 KiB frame about twice over).
#[derive(Debug)]
struct Partial<I> {
    parts: Vec<Bytes>,
    tail: BytesMut,
    len: usize,
    since: I,
}

impl<I> Partial<I> {
    /// Takes one more chunk.
    fn add(&mut self, chunk: Bytes) {
        self.len = self.len.saturating_add(chunk.len());
        if chunk.len() < MIN_PART {
            self.tail.extend_from_slice(&chunk);
            return;
        }
        if !self.tail.is_empty() {
            self.parts.push(self.tail.split().freeze());
        }
        self.parts.push(chunk);
    }

    /// The frame, `last` being its final chunk, in one allocation: a large one in a
    /// buffer of the frame pool (`pool.rs`), which it goes back to when dropped.
    fn join(self, last: &[u8]) -> Bytes {
        let total = self.len.saturating_add(last.len());
        let pooled = total >= pool::MIN_POOLED;
        let mut buf = if pooled {
            pool::FRAMES.take(total)
        } else {
            Vec::with_capacity(total)
        };
        for part in &self.parts {
            buf.extend_from_slice(part);
        }
        buf.extend_from_slice(&self.tail);
        buf.extend_from_slice(last);
        if pooled {
            pool::FRAMES.share(buf)
        } else {
            Bytes::from(buf)
        }
    }
}

/// The receiving half: joins chunks back into frames, per lane.
#[derive(Debug)]
pub struct Reassembler<I> {
    partial: HashMap<u32, Partial<I>>,
    bytes: usize,
    max_frame: usize,
    max_partial: usize,
}

impl<I: Copy + Ord> Reassembler<I> {
    /// A reassembler refusing frames over `max_frame` and more than `max_partial`
    /// bytes of half-sent frames.
    pub fn new(max_frame: usize, max_partial: usize) -> Reassembler<I> {
        Reassembler {
            partial: HashMap::new(),
            bytes: 0,
            max_frame,
            max_partial: max_partial.max(max_frame),
        }
    }

    /// Takes one chunk (as the frame decoder read it) that arrived at `now`; returns
    /// the frame it completes, if any.
    pub fn push(
        &mut self,
        word: u32,
        payload: Bytes,
        now: I,
    ) -> Result<Option<(u32, Bytes)>, TransportError> {
        let more = word & MORE != 0;
        let stream = word & !MORE;
        check_stream(stream)?;
        if !more && !self.partial.contains_key(&stream) {
            return Ok(Some((stream, payload)));
        }
        let have = self.partial.get(&stream).map_or(0, |p| p.len);
        let len = have.saturating_add(payload.len());
        if len > self.max_frame {
            return Err(TransportError::Oversized {
                len,
                max: self.max_frame,
            });
        }
        if more {
            let bytes = self.bytes.saturating_add(payload.len());
            if bytes > self.max_partial {
                return Err(TransportError::HalfSent {
                    bytes,
                    max: self.max_partial,
                });
            }
            self.bytes = bytes;
            self.partial
                .entry(stream)
                .or_insert_with(|| Partial {
                    parts: Vec::new(),
                    tail: BytesMut::new(),
                    len: 0,
                    since: now,
                })
                .add(payload);
            return Ok(None);
        }
        let Some(p) = self.partial.remove(&stream) else {
            return Ok(Some((stream, payload)));
        };
        self.bytes = self.bytes.saturating_sub(p.len);
        Ok(Some((stream, p.join(&payload))))
    }

    /// When the oldest half-sent frame started arriving, if any is.
    pub fn oldest(&self) -> Option<I> {
        self.partial.values().map(|p| p.since).min()
    }

    /// Bytes of half-sent frames held.
    pub fn held(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FrameDecoder;
    use crate::MAX_STREAMS;
    use proptest::prelude::*;

    fn wire(batch: &Batch<u32>) -> Vec<u8> {
        let mut out = Vec::new();
        for p in &batch.parts {
            out.extend_from_slice(p);
        }
        assert_eq!(out.len(), batch.bytes);
        out
    }

    /// Decodes a byte stream of chunks into frames, in arrival order.
    fn decode(bytes: &[u8], max_frame: usize, max_partial: usize) -> Vec<(u32, Vec<u8>)> {
        let mut dec = FrameDecoder::new(CHUNK);
        let mut re = Reassembler::new(max_frame, max_partial);
        dec.push(bytes);
        let mut out = Vec::new();
        while let Some((word, payload)) = dec.next_frame().unwrap() {
            if let Some((s, f)) = re.push(word, payload, 0u8).unwrap() {
                out.push((s, f.to_vec()));
            }
        }
        assert_eq!(re.held(), 0);
        out
    }

    #[test]
    fn a_small_frame_overtakes_a_large_one_already_started() {
        let mut s = Scheduler::new(1 << 20, 4 << 20);
        s.push(1, vec![Bytes::from(vec![1u8; 1 << 20]).into()], 10)
            .unwrap();
        let first = s.next_batch(CHUNK);
        assert!(first.done.is_empty());
        s.push(0, vec![Bytes::from_static(b"ack").into()], 20)
            .unwrap();
        let second = s.next_batch(CHUNK);
        assert_eq!(second.done, vec![20], "the small frame went next");
        let mut bytes = wire(&first);
        bytes.extend(wire(&second));
        let mut done = vec![];
        while !s.is_empty() {
            let b = s.next_batch(64 * 1024);
            done.extend(b.done.iter().copied());
            bytes.extend(wire(&b));
        }
        assert_eq!(done, vec![10]);
        let frames = decode(&bytes, 1 << 20, 4 << 20);
        assert_eq!(frames[0], (0, b"ack".to_vec()));
        assert_eq!(frames[1], (1, vec![1u8; 1 << 20]));
    }

    #[test]
    fn control_yields_one_chunk_after_fair_bytes() {
        let mut s = Scheduler::new(1 << 20, 4 << 20);
        s.push(2, vec![Bytes::from(vec![2u8; 4 * CHUNK]).into()], 2)
            .unwrap();
        for i in 0..64u32 {
            s.push(0, vec![Bytes::from(vec![0u8; 8 * 1024]).into()], 100 + i)
                .unwrap();
        }
        // Control goes first; after FAIR_BYTES of it, lane 2 gets one chunk.
        let b = s.next_batch(FAIR_BYTES + 3 * CHUNK);
        let bulk_chunks = b
            .parts
            .iter()
            .filter(|p| p.len() == CHUNK && p[0] == 2)
            .count();
        let lens: Vec<usize> = b.parts.iter().map(Bytes::len).collect();
        assert_eq!(bulk_chunks, 1, "{lens:?}");
        // Exactly FAIR_BYTES of control (and the chunk's header) came before it.
        assert_eq!(lens[0], 32 * (8 * 1024 + 8) + 8, "{lens:?}");
        assert!(b.done.len() >= 32, "{:?}", b.done);
    }

    #[test]
    fn started_frames_stay_within_the_half_sent_bound() {
        // Room for two half-sent MiB frames: the third lane waits its turn.
        let mut s = Scheduler::new(1 << 20, 2 << 20);
        for lane in 1..=3u32 {
            s.push(
                lane,
                vec![Bytes::from(vec![lane as u8; 1 << 20]).into()],
                lane,
            )
            .unwrap();
        }
        let mut bytes = Vec::new();
        while !s.is_empty() {
            assert!(s.started.values().sum::<usize>() <= 2 << 20);
            bytes.extend(wire(&s.next_batch(CHUNK)));
        }
        // A receiver with the same bound takes it all.
        let frames = decode(&bytes, 1 << 20, 2 << 20);
        assert_eq!(frames.len(), 3);
        // The first two interleaved and finished before the third.
        assert_eq!(frames[2].0, 3);
    }

    #[test]
    fn a_frame_in_chunks_of_any_size_is_joined_whole_holding_few_parts() {
        // Tiny chunks, 16 KiB ones, and the two alternating.
        let tiny = vec![1usize; 999];
        let honest = vec![CHUNK; 40];
        let mixed: Vec<usize> = (0..60)
            .map(|i| if i % 2 == 0 { 1 } else { CHUNK })
            .collect();
        for sizes in [tiny, honest, mixed] {
            let total: usize = sizes.iter().sum::<usize>() + 1;
            let frame: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
            let mut re = Reassembler::new(1 << 20, 1 << 20);
            let mut at = 0;
            for n in &sizes {
                let chunk = Bytes::copy_from_slice(&frame[at..at + n]);
                assert_eq!(re.push(5 | MORE, chunk, 0u8).unwrap(), None);
                at += n;
                let p = &re.partial[&5];
                assert!(
                    p.parts.len() <= 2 * at / MIN_PART,
                    "{} parts",
                    p.parts.len()
                );
            }
            assert_eq!(re.held(), total - 1);
            let last = Bytes::copy_from_slice(&frame[at..]);
            let (stream, got) = re.push(5, last, 0).unwrap().unwrap();
            assert_eq!((stream, &got[..]), (5, &frame[..]));
            assert_eq!(re.held(), 0);
            assert_eq!(re.oldest(), None);
        }
    }

    #[test]
    fn the_reassembler_refuses_what_breaks_its_bounds() {
        let chunk = Bytes::from(vec![0u8; 100]);
        let mut re = Reassembler::new(250, 250);
        re.push(1 | MORE, chunk.clone(), 0u8).unwrap();
        re.push(1 | MORE, chunk.clone(), 0).unwrap();
        assert!(matches!(
            re.push(1, chunk.clone(), 0),
            Err(TransportError::Oversized { len: 300, .. })
        ));
        let mut re = Reassembler::new(250, 250);
        re.push(1 | MORE, chunk.clone(), 0u8).unwrap();
        re.push(2 | MORE, chunk.clone(), 1).unwrap();
        assert_eq!(re.oldest(), Some(0));
        assert!(matches!(
            re.push(3 | MORE, chunk.clone(), 2),
            Err(TransportError::HalfSent {
                bytes: 300,
                max: 250
            })
        ));
        assert!(matches!(
            re.push(MAX_STREAMS | MORE, chunk, 2),
            Err(TransportError::BadStream(_))
        ));
    }

    proptest! {
        /// Any frames on any lanes, pushed in any order and written in any batch
        /// sizes, arrive intact and in order per lane, with every send completed once.
        #[test]
        fn frames_arrive_intact_and_in_order_per_lane(
            sends in proptest::collection::vec(
                (0u32..4, proptest::collection::vec(0usize..70_000, 0..4)), 0..12),
            batch in 1usize..200_000,
        ) {
            let mut s = Scheduler::new(70_000, 140_000);
            let mut expected: BTreeMap<u32, Vec<Vec<u8>>> = BTreeMap::new();
            for (i, (lane, lens)) in sends.iter().enumerate() {
                // Each frame's bytes differ by position, and some frames are made of
                // parts (a sliver, a body, a tail) as a relay's responses are.
                let frames: Vec<Frame> = lens
                    .iter()
                    .enumerate()
                    .map(|(j, &n)| {
                        let b: Bytes = (0..n).map(|k| (i * 7 + j + k) as u8).collect();
                        let (a, c) = (n.min(100), (n - n / 10).max(n.min(100)));
                        match (i + j) % 3 {
                            0 => Frame::from(b),
                            1 => Frame::from_parts(vec![b.slice(..n / 3), b.slice(n / 3..)]),
                            _ => Frame::from_parts(vec![
                                b.slice(..a),
                                b.slice(a..c),
                                b.slice(c..),
                            ]),
                        }
                    })
                    .collect();
                expected
                    .entry(*lane)
                    .or_default()
                    .extend(frames.iter().map(|f| f.clone().into_bytes().to_vec()));
                s.push(*lane, frames, i as u32).unwrap();
            }
            let mut bytes = Vec::new();
            let mut done = Vec::new();
            while !s.is_empty() {
                let b = s.next_batch(batch);
                done.extend(b.done.iter().copied());
                bytes.extend(wire(&b));
            }
            done.sort_unstable();
            prop_assert_eq!(done, (0..sends.len() as u32).collect::<Vec<_>>());
            let mut got: BTreeMap<u32, Vec<Vec<u8>>> = BTreeMap::new();
            for (lane, f) in decode(&bytes, 70_000, 140_000) {
                got.entry(lane).or_default().push(f);
            }
            expected.retain(|_, v| !v.is_empty());
            prop_assert_eq!(got, expected);
        }
    }
}
