//! Framing on byte streams: `len: u32 BE | stream: u32 BE | payload`.
//!
//! [`FrameDecoder`] is sans-IO: bytes go in as they arrive, whole frames come out. It
//! refuses a declared length above the limit before buffering any of it, so a peer can
//! make it hold at most one header plus one maximal frame.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::{Frame, TransportError};

/// Bytes of header before each payload.
pub const HEADER_LEN: usize = 8;

/// Payloads at least this long are written after their header rather than copied into
/// one buffer with it (see [`encode_header`]): a copy of a large body costs more than
/// one more write.
pub const COPY_BELOW: usize = 16 * 1024;

/// Encodes one frame (header and payload) into `out`.
pub fn encode(
    stream: u32,
    payload: &[u8],
    max: usize,
    out: &mut BytesMut,
) -> Result<(), TransportError> {
    out.reserve(HEADER_LEN.saturating_add(payload.len()));
    encode_header(stream, payload.len(), max, out)?;
    out.put_slice(payload);
    Ok(())
}

/// Encodes `frames` for one write: headers and small parts coalesced into shared
/// buffers, and each part of at least [`COPY_BELOW`] bytes (a large payload, or a
/// large body a frame holds as its own part) on its own, never copied. Writing the
/// result in order puts the frames on the wire.
pub fn encode_parts(
    stream: u32,
    frames: Vec<Frame>,
    max: usize,
) -> Result<Vec<Bytes>, TransportError> {
    let mut parts = Vec::new();
    let mut buf = BytesMut::new();
    for frame in frames {
        encode_header(stream, frame.len(), max, &mut buf)?;
        for part in frame.parts() {
            if part.len() < COPY_BELOW {
                buf.put_slice(part);
            } else {
                if !buf.is_empty() {
                    parts.push(buf.split().freeze());
                }
                parts.push(part.clone());
            }
        }
    }
    if !buf.is_empty() {
        parts.push(buf.freeze());
    }
    Ok(parts)
}

/// Encodes a frame's header alone into `out`, for a payload of `len` bytes that the
/// caller writes right after it.
pub fn encode_header(
    stream: u32,
    len: usize,
    max: usize,
    out: &mut BytesMut,
) -> Result<(), TransportError> {
    if len > max {
        return Err(TransportError::Oversized { len, max });
    }
    let declared = u32::try_from(len).map_err(|_| TransportError::Oversized { len, max })?;
    out.put_u32(declared);
    out.put_u32(stream);
    Ok(())
}

/// Incremental frame decoder.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max: usize,
}

impl FrameDecoder {
    /// A decoder refusing payloads above `max` bytes.
    pub fn new(max: usize) -> FrameDecoder {
        FrameDecoder {
            buf: BytesMut::new(),
            max,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Whether part of a frame has arrived (the rest is then subject to the frame
    /// timeout rather than the idle timeout).
    pub fn in_frame(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Makes room for the next read: at least `chunk` bytes of spare capacity (reading
    /// in chunks rather than frame by frame keeps reads few), and once a frame's header
    /// has arrived, room for the rest of that frame (within the limit, checked here
    /// first) in one allocation, so a large frame is never copied while its buffer
    /// grows. The buffer thus stays under one maximal frame plus one chunk.
    pub fn reserve(&mut self, chunk: usize) -> &mut BytesMut {
        let chunk = chunk.max(HEADER_LEN);
        let mut want = chunk;
        if let Some(len) = self.declared_len() {
            if len <= self.max {
                let rest = HEADER_LEN
                    .saturating_add(len)
                    .saturating_sub(self.buf.len());
                want = want.max(rest);
            }
        }
        if self.buf.capacity().saturating_sub(self.buf.len()) < want {
            self.buf.reserve(want);
        }
        &mut self.buf
    }

    /// How many bytes the next read should take: the rest of the frame under way once
    /// its header is in, else `chunk`. A read that stops where a frame ends leaves
    /// nothing behind it in the buffer, so the frame splits off whole and the next
    /// read starts a fresh buffer: no partial frame is ever copied out of a buffer
    /// that a frame handed out still shares.
    pub fn read_limit(&self, chunk: usize) -> usize {
        match self.declared_len() {
            Some(len) if len <= self.max => HEADER_LEN
                .saturating_add(len)
                .saturating_sub(self.buf.len())
                .max(1),
            _ => chunk.max(1),
        }
    }

    /// The payload length the buffered header declares, once a header has arrived.
    fn declared_len(&self) -> Option<usize> {
        let h = self.buf.get(..4)?;
        Some(u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize)
    }

    /// The next complete frame, if one has arrived.
    pub fn next_frame(&mut self) -> Result<Option<(u32, Bytes)>, TransportError> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > self.max {
            return Err(TransportError::Oversized { len, max: self.max });
        }
        if self.buf.len() < HEADER_LEN.saturating_add(len) {
            return Ok(None);
        }
        let stream = u32::from_be_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]]);
        self.buf.advance(HEADER_LEN);
        let payload = self.buf.split_to(len).freeze();
        Ok(Some((stream, payload)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn oversized_header_is_refused_before_buffering() {
        let mut d = FrameDecoder::new(16);
        d.push(&[0, 0, 0, 17, 0, 0, 0, 1]);
        assert!(matches!(
            d.next_frame(),
            Err(TransportError::Oversized { len: 17, max: 16 })
        ));
        let mut out = BytesMut::new();
        assert!(encode(0, &[0; 17], 16, &mut out).is_err());
        assert!(out.is_empty());
    }

    #[test]
    fn a_large_frame_is_read_into_one_allocation() {
        let mut wire = BytesMut::new();
        encode(3, &[7; 10_000], 20_000, &mut wire).unwrap();
        let mut d = FrameDecoder::new(20_000);
        let mut chunks = wire.chunks(16);
        d.reserve(16).put_slice(chunks.next().unwrap());
        // The header is in: the next reservation makes room for the whole frame.
        let rest = d.reserve(16);
        assert!(rest.capacity() - rest.len() >= 10_008 - 16);
        let start = d.buf.as_ptr();
        for c in chunks {
            let buf = d.reserve(16);
            assert!(buf.capacity() - buf.len() >= c.len());
            buf.put_slice(c);
            assert_eq!(
                d.buf.as_ptr(),
                start,
                "the buffer moved while the frame arrived"
            );
        }
        let (stream, payload) = d.next_frame().unwrap().unwrap();
        assert_eq!((stream, payload.len()), (3, 10_000));
        // A header over the limit reserves nothing beyond a chunk; next_frame refuses it.
        let mut d = FrameDecoder::new(100);
        d.push(&[0, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
        assert!(d.reserve(16).capacity() < 1_000);
        assert!(d.next_frame().is_err());
    }

    #[test]
    fn reads_that_stop_where_a_frame_ends_leave_nothing_of_the_next_behind() {
        let lens = [10usize, 20_000, 3, 16_384, 0, 70_000];
        let mut wire = BytesMut::new();
        for n in lens {
            encode(1, &vec![n as u8; n], 1 << 20, &mut wire).unwrap();
        }
        for arrives in [1usize, 7, 64, 5_000, usize::MAX] {
            let mut d = FrameDecoder::new(1 << 20);
            let mut rest = &wire[..];
            let mut got = Vec::new();
            while !rest.is_empty() {
                // A read takes what the limit allows of what has arrived.
                let n = d.read_limit(64).min(rest.len()).min(arrives);
                d.reserve(64).put_slice(&rest[..n]);
                rest = &rest[n..];
                while let Some((_, p)) = d.next_frame().unwrap() {
                    if p.len() > 64 {
                        // Read up to its end and no further: it splits off whole and
                        // the next read starts a buffer of its own.
                        assert!(
                            !d.in_frame(),
                            "{arrives}: the next frame's bytes came along"
                        );
                    }
                    assert!(p.iter().all(|b| *b == p.len() as u8));
                    got.push(p.len());
                }
            }
            assert_eq!(got, lens, "{arrives}");
        }
    }

    #[test]
    fn parts_put_the_same_bytes_on_the_wire_without_copying_large_payloads() {
        let big = Bytes::from(vec![9u8; COPY_BELOW]);
        let frames = vec![
            Bytes::from_static(b"a"),
            big.clone(),
            Bytes::from_static(b"bc"),
        ];
        let parts = encode_parts(
            5,
            frames.iter().cloned().map(Frame::from).collect(),
            COPY_BELOW,
        )
        .unwrap();
        assert_eq!(parts.len(), 3);
        assert_eq!(
            parts[1].as_ptr(),
            big.as_ptr(),
            "the large payload was copied"
        );
        let mut joined = BytesMut::new();
        let mut expected = BytesMut::new();
        for p in &parts {
            joined.put_slice(p);
        }
        for f in &frames {
            encode(5, f, COPY_BELOW, &mut expected).unwrap();
        }
        assert_eq!(joined, expected);
        assert!(encode_parts(5, vec![Frame::from(vec![0; 11])], 10).is_err());
        // A frame of parts: its small parts join the header, its large one stays.
        let framed = Frame::from_parts(vec![
            Bytes::from_static(b"head"),
            big.clone(),
            Bytes::from_static(b"tail"),
        ]);
        let parts = encode_parts(5, vec![framed.clone()], 2 * COPY_BELOW).unwrap();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[1].as_ptr(), big.as_ptr(), "the body was copied");
        let mut expected = BytesMut::new();
        encode(5, &framed.into_bytes(), 2 * COPY_BELOW, &mut expected).unwrap();
        assert_eq!(parts.concat(), expected);
    }

    proptest! {
        /// Any byte soup, in any chunking: the decoder never panics, never yields a
        /// frame over the limit, and never holds more than a header and one frame.
        #[test]
        fn arbitrary_bytes_never_panic(chunks in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..64), 0..32)) {
            let mut d = FrameDecoder::new(100);
            for c in chunks {
                d.push(&c);
                loop {
                    match d.next_frame() {
                        Ok(Some((_, p))) => prop_assert!(p.len() <= 100),
                        Ok(None) => break,
                        Err(_) => return Ok(()),
                    }
                }
                prop_assert!(d.buf.len() < HEADER_LEN + 100 + 64);
            }
        }

        /// Encoded frames decode to the same frames whatever the chunking.
        #[test]
        fn roundtrip_any_chunking(
            frames in proptest::collection::vec((any::<u32>(), proptest::collection::vec(any::<u8>(), 0..200)), 0..10),
            cut in 1usize..50,
        ) {
            let mut wire = BytesMut::new();
            for (s, p) in &frames {
                encode(*s, p, 200, &mut wire).unwrap();
            }
            let mut d = FrameDecoder::new(200);
            let mut got = Vec::new();
            for chunk in wire.chunks(cut) {
                d.push(chunk);
                while let Some((s, p)) = d.next_frame().unwrap() {
                    got.push((s, p.to_vec()));
                }
            }
            prop_assert_eq!(got, frames);
            prop_assert!(!d.in_frame());
        }
    }
}
