//! Framing on byte streams: `len: u32 BE | stream: u32 BE | payload`.
//!
//! [`FrameDecoder`] is sans-IO: bytes go in as they arrive, whole frames come out. It
//! refuses a declared length above the limit before buffering any of it, so a peer can
//! make it hold at most one header plus one maximal frame.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::TransportError;

/// Bytes of header before each payload.
pub const HEADER_LEN: usize = 8;

/// Encodes one frame (header and payload) into `out`.
pub fn encode(
    stream: u32,
    payload: &[u8],
    max: usize,
    out: &mut BytesMut,
) -> Result<(), TransportError> {
    if payload.len() > max {
        return Err(TransportError::Oversized {
            len: payload.len(),
            max,
        });
    }
    let len = u32::try_from(payload.len()).map_err(|_| TransportError::Oversized {
        len: payload.len(),
        max,
    })?;
    out.reserve(HEADER_LEN.saturating_add(payload.len()));
    out.put_u32(len);
    out.put_u32(stream);
    out.put_slice(payload);
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
    /// in chunks rather than frame by frame keeps reads few), never more than one chunk
    /// beyond what the buffer holds. The buffer thus stays under one maximal frame plus
    /// one chunk.
    pub fn reserve(&mut self, chunk: usize) -> &mut BytesMut {
        let chunk = chunk.max(HEADER_LEN);
        if self.buf.capacity().saturating_sub(self.buf.len()) < chunk {
            self.buf.reserve(chunk);
        }
        &mut self.buf
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
