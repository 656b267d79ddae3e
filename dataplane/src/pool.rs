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
//! - at most [`POOLED`] head and read buffers each per worker are kept
//!   (512 KiB), and [`POOLED_CHUNKS`] body chunks (4 MiB); past that,
//!   buffers are freed as before (`pier_dataplane_buffer_pool_bytes` over
//!   all workers);
//! - pools are thread-local: a worker runs on one thread, so there is no
//!   lock and no sharing;
//! - every 10 s each worker [`trim`]s its pools: buffers that stayed idle
//!   through the whole interval (the pool's low-water mark) are freed, so
//!   after a burst the pools shrink back instead of keeping their peak.

use std::cell::RefCell;

use bytes::BytesMut;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};

/// Size of every pooled buffer: a request head, a response head and what
/// follows it in one read.
pub(crate) const CHUNK: usize = 4096;
/// Most buffers a worker keeps.
const POOLED: usize = 64;

/// Size of a body-buffering chunk.
pub(crate) const SPOOL_CHUNK: usize = 16 * 1024;
/// Most body-buffering chunks a worker keeps.
const POOLED_CHUNKS: usize = 256;

/// Bytes held by every worker's pool.
pub(crate) static POOL_BYTES: AtomicI64 = AtomicI64::new(0);

thread_local! {
    static FREE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static FREE_CHUNKS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    /// Fewest idle buffers of each kind (heads, reads, chunks) since the
    /// last trim.
    static LOW: RefCell<[usize; 3]> = const { RefCell::new([0; 3]) };
    /// Client read buffers; `BytesMut` because request heads are frozen
    /// out of them without a copy. One given back while a frozen head
    /// still shares it reclaims its space on its next `reserve` once that
    /// head is gone.
    static FREE_READS: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// An empty read buffer of about [`CHUNK`] bytes.
pub(crate) fn take_read() -> BytesMut {
    FREE_READS
        .with_borrow_mut(|free| {
            let buf = free.pop();
            LOW.with_borrow_mut(|low| low[1] = low[1].min(free.len()));
            buf
        })
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
    FREE.with_borrow_mut(|free| {
        let buf = free.pop();
        LOW.with_borrow_mut(|low| low[0] = low[0].min(free.len()));
        buf
    })
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

/// An empty body-buffering chunk of [`SPOOL_CHUNK`] bytes' capacity.
pub(crate) fn take_chunk() -> Vec<u8> {
    FREE_CHUNKS
        .with_borrow_mut(|free| {
            let chunk = free.pop();
            LOW.with_borrow_mut(|low| low[2] = low[2].min(free.len()));
            chunk
        })
        .inspect(|_| {
            POOL_BYTES.fetch_sub(SPOOL_CHUNK as i64, Relaxed);
        })
        .unwrap_or_else(|| Vec::with_capacity(SPOOL_CHUNK))
}

/// Gives a chunk back; kept when it is a chunk's size and there is room.
pub(crate) fn give_chunk(mut chunk: Vec<u8>) {
    if chunk.capacity() != SPOOL_CHUNK {
        return;
    }
    chunk.clear();
    FREE_CHUNKS.with_borrow_mut(|free| {
        if free.len() < POOLED_CHUNKS {
            free.push(chunk);
            POOL_BYTES.fetch_add(SPOOL_CHUNK as i64, Relaxed);
        }
    });
}

/// Frees the buffers of this worker's pools that nobody took since the
/// last trim (run every few seconds by each worker).
pub(crate) fn trim() {
    let trim_one = |free: &mut Vec<Vec<u8>>, low: &mut usize, size: usize| {
        let idle = (*low).min(free.len());
        free.drain(..idle);
        free.shrink_to_fit();
        POOL_BYTES.fetch_sub((idle * size) as i64, Relaxed);
        *low = free.len();
    };
    LOW.with_borrow_mut(|low| {
        FREE.with_borrow_mut(|free| trim_one(free, &mut low[0], CHUNK));
        FREE_CHUNKS.with_borrow_mut(|free| trim_one(free, &mut low[2], SPOOL_CHUNK));
        FREE_READS.with_borrow_mut(|free| {
            let idle = low[1].min(free.len());
            free.drain(..idle);
            free.shrink_to_fit();
            POOL_BYTES.fetch_sub((idle * CHUNK) as i64, Relaxed);
            low[1] = free.len();
        });
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
    fn trimming_frees_what_stayed_idle_for_an_interval() {
        let many: Vec<Vec<u8>> = (0..20).map(|_| take_chunk()).collect();
        for chunk in many {
            give_chunk(chunk);
        }
        trim(); // starts an interval: the low-water mark is what is idle now
        assert_eq!(FREE_CHUNKS.with_borrow(Vec::len), 20);
        let busy: Vec<Vec<u8>> = (0..5).map(|_| take_chunk()).collect();
        for chunk in busy {
            give_chunk(chunk);
        }
        trim();
        assert_eq!(
            FREE_CHUNKS.with_borrow(Vec::len),
            5,
            "the 15 chunks idle through the interval were freed"
        );
        trim();
        assert_eq!(FREE_CHUNKS.with_borrow(Vec::len), 0);
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
