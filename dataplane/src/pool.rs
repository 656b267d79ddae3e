//! Per-worker pools of fixed-size byte buffers: the read and write buffers
//! a request takes when it starts and gives back when its connection goes
//! idle, and the proxy's head buffers. Without a pool every request would
//! take them from the allocator and give them back, and allocators churn
//! on that pattern (jemalloc refills and flushes its thread caches, making
//! and unmaking slabs, on every few requests).
//!
//! Invariants:
//! - every buffer in a pool is empty, with a capacity of [`CHUNK`] (a
//!   read buffer: at most that); anything else given back is freed;
//! - at most [`POOLED`] buffers of each kind per worker are kept, so the
//!   pools hold at most 512 KiB per worker (`pier_dataplane_buffer_pool_bytes` over all
//!   workers); past that, buffers are freed as before;
//! - pools are thread-local: a worker runs on one thread, so there is no
//!   lock and no sharing.

use std::cell::RefCell;

use bytes::BytesMut;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};

/// Size of every pooled buffer: a request head, a response head and what
/// follows it in one read.
pub(crate) const CHUNK: usize = 4096;
/// Most buffers a worker keeps.
const POOLED: usize = 64;

/// Bytes held by every worker's pool.
pub(crate) static POOL_BYTES: AtomicI64 = AtomicI64::new(0);

thread_local! {
    static FREE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    /// Client read buffers; `BytesMut` because request heads are frozen
    /// out of them without a copy. One given back while a frozen head
    /// still shares it reclaims its space on its next `reserve` once that
    /// head is gone.
    static FREE_READS: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// An empty read buffer of about [`CHUNK`] bytes.
pub(crate) fn take_read() -> BytesMut {
    FREE_READS
        .with_borrow_mut(Vec::pop)
        .inspect(|_| {
            POOL_BYTES.fetch_sub(CHUNK as i64, Relaxed);
        })
        .unwrap_or_else(|| BytesMut::with_capacity(CHUNK))
}

/// Gives a read buffer back; kept when it is no larger than a pool's
/// buffers (a large head grew it) and there is room.
pub(crate) fn give_read(mut buf: BytesMut) {
    if buf.capacity() == 0 || buf.capacity() > CHUNK {
        return;
    }
    buf.clear();
    FREE_READS.with_borrow_mut(|free| {
        if free.len() < POOLED {
            free.push(buf);
            POOL_BYTES.fetch_add(CHUNK as i64, Relaxed);
        }
    });
}

/// An empty buffer of [`CHUNK`] bytes' capacity.
pub(crate) fn take() -> Vec<u8> {
    FREE.with_borrow_mut(Vec::pop)
        .inspect(|_| {
            POOL_BYTES.fetch_sub(CHUNK as i64, Relaxed);
        })
        .unwrap_or_else(|| Vec::with_capacity(CHUNK))
}

/// Gives a buffer back; kept when it is a pool's size and there is room.
pub(crate) fn give(mut buf: Vec<u8>) {
    if buf.capacity() != CHUNK {
        return;
    }
    buf.clear();
    FREE.with_borrow_mut(|free| {
        if free.len() < POOLED {
            free.push(buf);
            POOL_BYTES.fetch_add(CHUNK as i64, Relaxed);
        }
    });
}

/// A pooled buffer that goes back to the pool when dropped.
#[derive(Debug)]
pub(crate) struct Pooled(Vec<u8>);

impl Pooled {
    pub(crate) fn new() -> Self {
        Self(take())
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        give(std::mem::take(&mut self.0));
    }
}

impl Deref for Pooled {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_only_the_right_size_kept() {
        let first = take();
        let at = first.as_ptr();
        give(first);
        let again = take();
        assert_eq!(again.as_ptr(), at, "the same buffer came back");
        assert!(again.is_empty() && again.capacity() == CHUNK);
        give(Vec::with_capacity(CHUNK * 2));
        let other = take();
        assert_eq!(other.capacity(), CHUNK, "a larger buffer was not kept");
        give(again);
        give(other);
    }

    #[test]
    fn a_pool_keeps_at_most_its_limit() {
        let many: Vec<Vec<u8>> = (0..POOLED + 10).map(|_| take()).collect();
        for buf in many {
            give(buf);
        }
        assert_eq!(FREE.with_borrow(Vec::len), POOLED);
    }
}
