//! A frame to send, held as the buffers it is made of.
//!
//! A relay forwards a response whose body is a slice of the frame it arrived in; the
//! message around it (a few hundred bytes of header and signature) is encoded apart.
//! Sending those pieces as one [`Frame`] of parts puts the same bytes on the wire as
//! one buffer would, without first copying the body into that buffer.

use bytes::{BufMut, Bytes, BytesMut};

/// One frame's payload as buffers written back to back. Empty parts are dropped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frame {
    parts: Vec<Bytes>,
    len: usize,
}

impl Frame {
    /// A frame made of `parts`, in order.
    pub fn from_parts(parts: Vec<Bytes>) -> Frame {
        let parts: Vec<Bytes> = parts.into_iter().filter(|p| !p.is_empty()).collect();
        let len = parts.iter().map(Bytes::len).fold(0, usize::saturating_add);
        Frame { parts, len }
    }

    /// The payload's length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The buffers, in order.
    pub fn parts(&self) -> &[Bytes] {
        &self.parts
    }

    /// The payload in one buffer: the part itself when there is one, else a copy.
    pub fn into_bytes(self) -> Bytes {
        match <[Bytes; 1]>::try_from(self.parts) {
            Ok([one]) => one,
            Err(parts) => {
                let mut buf = BytesMut::with_capacity(self.len);
                for p in &parts {
                    buf.put_slice(p);
                }
                buf.freeze()
            }
        }
    }

    /// Hands `sink` the payload's bytes `from..from + n` (clamped to the payload) as
    /// slices of the parts, in order, without copying.
    pub fn slices(&self, from: usize, n: usize, mut sink: impl FnMut(Bytes)) {
        let end = from.saturating_add(n).min(self.len);
        let mut at = 0usize;
        for p in &self.parts {
            let (start, stop) = (at, at.saturating_add(p.len()));
            at = stop;
            if stop <= from {
                continue;
            }
            if start >= end {
                break;
            }
            let a = from.saturating_sub(start);
            let b = end.min(stop).saturating_sub(start);
            sink(p.slice(a..b));
        }
    }
}

impl From<Bytes> for Frame {
    fn from(b: Bytes) -> Frame {
        Frame::from_parts(vec![b])
    }
}

impl From<Vec<u8>> for Frame {
    fn from(v: Vec<u8>) -> Frame {
        Frame::from(Bytes::from(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame() -> Frame {
        Frame::from_parts(vec![
            Bytes::from_static(b"head"),
            Bytes::new(),
            Bytes::from(vec![7u8; 10]),
            Bytes::from_static(b"tail"),
        ])
    }

    #[test]
    fn slices_cover_any_range_across_parts_without_copying() {
        let f = frame();
        assert_eq!(
            (f.len(), f.parts().len()),
            (18, 3),
            "the empty part is dropped"
        );
        let whole = f.clone().into_bytes();
        for from in 0..=20 {
            for n in 0..=20 {
                let mut got = Vec::new();
                let mut ptrs = Vec::new();
                f.slices(from, n, |s| {
                    ptrs.push(s.as_ptr());
                    got.extend_from_slice(&s);
                });
                let (a, b) = (from.min(18), (from + n).min(18));
                assert_eq!(got, whole[a..b.max(a)], "{from}+{n}");
                for p in ptrs {
                    assert!(
                        f.parts()
                            .iter()
                            .any(|part| part.as_ptr_range().contains(&p)),
                        "a slice was copied"
                    );
                }
            }
        }
    }

    #[test]
    fn one_part_comes_back_as_itself() {
        let b = Bytes::from(vec![1u8; 100]);
        assert_eq!(Frame::from(b.clone()).into_bytes().as_ptr(), b.as_ptr());
        assert_eq!(
            &frame().into_bytes()[..],
            b"head\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07tail"
        );
        assert!(Frame::from(Vec::new()).is_empty());
    }
}
