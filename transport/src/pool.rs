//! Buffers for large frames, reused.
//!
//! A large frame (a file piece: 512 KiB) arrives in 16 KiB chunks and is joined into one
//! buffer ([`crate::sched::Reassembler`]). That buffer lives on as the response body a
//! relay forwards, logs and keeps for resending, and is freed on whichever thread drops
//! it last, a few MiB of traffic later. Left to the allocator, a relay frees such a
//! buffer for every piece it passes, on a thread other than the one that allocated it,
//! and the allocator holds what it frees for a while before it gives it back or uses it
//! again: a relay's resident memory swung 15–20 MiB above what it held live
//! (docs/benchmarks.md, "Frame buffers reused"). Here the buffer goes back to a small
//! free list when its last reference drops, and the next large frame is joined into it.
//!
//! The pool is process-wide: a buffer joined on one connection is dropped after it has
//! left on another (or after its kept closing is pruned), so a pool per connection
//! would not see its buffers come back. It keeps at most [`MAX_IDLE`] buffers idle, of
//! at most [`MAX_BUFFER`] bytes each; anything else is freed as usual.

use std::sync::Mutex;

use bytes::Bytes;

/// Frames of at least this many bytes are joined into pooled buffers; smaller ones are
/// left to the allocator, which serves them from its size classes well.
pub const MIN_POOLED: usize = 64 * 1024;

/// Buffers are sized in steps of this many bytes, so frames of nearly the same length
/// (pieces with a few more parent hashes, or longer headers) share them.
const STEP: usize = 64 * 1024;

/// At most this many buffers wait idle in the pool.
pub const MAX_IDLE: usize = 8;

/// No buffer larger than this is kept (the frame limit, rounded up to a step).
pub const MAX_BUFFER: usize = por_protocol::wire::MAX_FRAME_LEN.div_ceil(STEP) * STEP;

/// A free list of large buffers.
#[derive(Debug)]
pub struct Pool {
    idle: Mutex<Vec<Vec<u8>>>,
}

/// The process's pool of frame buffers.
pub static FRAMES: Pool = Pool::new();

impl Pool {
    /// An empty pool.
    pub const fn new() -> Pool {
        Pool {
            idle: Mutex::new(Vec::new()),
        }
    }

    /// An empty buffer of at least `len` bytes' capacity: the smallest idle one that
    /// fits, or a new one of `len` rounded up to a step.
    pub fn take(&self, len: usize) -> Vec<u8> {
        if let Ok(mut idle) = self.idle.lock() {
            let best = idle
                .iter()
                .enumerate()
                .filter(|(_, b)| b.capacity() >= len)
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, _)| i);
            if let Some(i) = best {
                let mut b = idle.swap_remove(i);
                b.clear();
                return b;
            }
        }
        Vec::with_capacity(len.div_ceil(STEP).saturating_mul(STEP).max(len))
    }

    /// `buf`, filled, as shared bytes: when the last reference to them drops, the
    /// buffer comes back to this pool (if it has room and the buffer is not too large).
    pub fn share(&'static self, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Pooled { buf, pool: self })
    }

    /// Buffers idle now.
    pub fn idle(&self) -> usize {
        self.idle.lock().map_or(0, |i| i.len())
    }

    fn give_back(&self, buf: Vec<u8>) {
        if buf.capacity() > MAX_BUFFER {
            return;
        }
        // A poisoned lock (a panic while it was held) only stops reuse.
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < MAX_IDLE {
                idle.push(buf);
            }
        }
    }
}

impl Default for Pool {
    fn default() -> Pool {
        Pool::new()
    }
}

/// A pooled buffer behind a [`Bytes`].
struct Pooled {
    buf: Vec<u8>,
    pool: &'static Pool,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> &'static Pool {
        Box::leak(Box::new(Pool::new()))
    }

    /// A buffer comes back when the last slice of its bytes drops, not before, and the
    /// next frame of about its size is joined into that very buffer.
    #[test]
    fn a_buffer_returns_when_its_last_slice_drops_and_is_reused() {
        let p = pool();
        let mut b = p.take(512 * 1024 + 2100);
        assert!(b.capacity() >= 512 * 1024 + 2100);
        b.extend((0..512 * 1024 + 2100).map(|i| (i % 251) as u8));
        let addr = b.as_ptr();
        let bytes = p.share(b);
        let body = bytes.slice(100..);
        drop(bytes);
        assert_eq!(p.idle(), 0, "a slice still holds it");
        assert_eq!(body[0], 100);
        drop(body);
        assert_eq!(p.idle(), 1);
        let again = p.take(512 * 1024 + 1000);
        assert_eq!(again.as_ptr(), addr, "the same buffer");
        assert!(again.is_empty());
        assert_eq!(p.idle(), 0);
    }

    /// A frame takes the smallest idle buffer that fits; one too small for any gets a
    /// new buffer; the pool keeps at most `MAX_IDLE` and nothing over `MAX_BUFFER`.
    #[test]
    fn best_fit_and_bounded() {
        let p = pool();
        let small = p.take(100 * 1024);
        let large = p.take(900 * 1024);
        let (small_addr, large_addr) = (small.as_ptr(), large.as_ptr());
        drop(p.share(large));
        drop(p.share(small));
        let fits_small = p.take(90 * 1024);
        assert_eq!(fits_small.as_ptr(), small_addr);
        let fits_none = p.take(1000 * 1024);
        assert_ne!(fits_none.as_ptr(), large_addr, "too small to fit");
        let fits_large = p.take(500 * 1024);
        assert_eq!(fits_large.as_ptr(), large_addr);
        for _ in 0..MAX_IDLE + 3 {
            drop(p.share(Vec::with_capacity(MIN_POOLED)));
        }
        assert_eq!(p.idle(), MAX_IDLE);
        let q = pool();
        drop(q.share(Vec::with_capacity(MAX_BUFFER + 1)));
        assert_eq!(q.idle(), 0, "an oversized buffer is freed");
    }
}
