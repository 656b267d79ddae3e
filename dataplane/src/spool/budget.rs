//! The process-wide limits and counters of body buffering, and the
//! memory chunks charged to them.

use std::io;
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};

use super::file::{SpillDir, SpillFile, TmpDir};
use crate::pool::{self, SPOOL_CHUNK};

/// Consumed spill-file bytes are given back to the filesystem in steps of
/// this size, so a spilling body holds at most this much disk beyond what
/// it still has queued (counted in the disk budget until given back).
pub(crate) const RELEASE_UNIT: u64 = 4 << 20;

/// The process-wide limits and counters of body buffering.
#[derive(Debug)]
pub(crate) struct Budget {
    pub(super) memory_cap: u64,
    pub(super) disk_cap: u64,
    /// `None`: spilling is off, bodies stay within memory then stream.
    pub(super) dir: Option<Box<dyn SpillDir>>,
    /// Bytes of chunks held by bodies (gauge).
    pub(super) memory: AtomicU64,
    /// Bytes of disk held by spill files (gauge): queued bytes, plus
    /// sent ones not yet given back (under [`RELEASE_UNIT`] a file).
    pub(super) disk: AtomicU64,
    /// Bytes written to spill files (counter).
    pub(super) spilled: AtomicU64,
    /// Spill files open (gauge).
    pub(super) files: AtomicI64,
    /// Times a sender had to wait for room (counter).
    pub(super) backpressure: AtomicU64,
    /// Spill files that could not be created or written (counter).
    pub(super) spill_errors: AtomicU64,
    /// The first spill error was logged.
    warned: AtomicBool,
    /// Bodies that went through a spool, and those that spilled.
    pub(super) bodies: AtomicU64,
    pub(super) bodies_spilled: AtomicU64,
}

impl Budget {
    /// `--buffer-memory`, `--buffer-disk` and `--spill-dir`.
    pub(crate) fn new(memory_cap: u64, disk_cap: u64, dir: Option<PathBuf>) -> Self {
        let dir = dir.map(|d| Box::new(TmpDir(d)) as Box<dyn SpillDir>);
        Self::with_spill(memory_cap, disk_cap, dir)
    }

    /// The same limits with spill files from `dir` (tests give a faulty
    /// one).
    pub(crate) fn with_spill(
        memory_cap: u64,
        disk_cap: u64,
        dir: Option<Box<dyn SpillDir>>,
    ) -> Self {
        Self {
            memory_cap,
            disk_cap,
            dir,
            memory: AtomicU64::new(0),
            disk: AtomicU64::new(0),
            spilled: AtomicU64::new(0),
            files: AtomicI64::new(0),
            backpressure: AtomicU64::new(0),
            spill_errors: AtomicU64::new(0),
            warned: AtomicBool::new(false),
            bodies: AtomicU64::new(0),
            bodies_spilled: AtomicU64::new(0),
        }
    }

    /// Bytes of body chunks held now, over the process.
    #[cfg(test)]
    pub(crate) fn memory_in_use(&self) -> u64 {
        self.memory.load(Relaxed)
    }

    pub(super) fn take(counter: &AtomicU64, cap: u64, n: u64) -> bool {
        counter
            .fetch_update(Relaxed, Relaxed, |used| {
                used.checked_add(n).filter(|&total| total <= cap)
            })
            .is_ok()
    }

    pub(super) fn spill_failed(&self, e: &io::Error) {
        self.spill_errors.fetch_add(1, Relaxed);
        if !self.warned.swap(true, Relaxed) {
            tracing::warn!(
                dir = ?self.dir,
                error = %e,
                "spill directory unusable: bodies stream with backpressure instead (logged once; see pier_dataplane_buffer_spill_errors_total)"
            );
        }
    }

    /// A new spill file, counted while it lives.
    pub(super) fn open_file(self: &Arc<Self>) -> io::Result<SpillFile> {
        let dir = self
            .dir
            .as_deref()
            .ok_or_else(|| io::Error::other("no spill directory"))?;
        let io = dir.create()?;
        self.files.fetch_add(1, Relaxed);
        Ok(SpillFile::new(io, Arc::clone(self)))
    }

    /// The metrics, in the Prometheus text format.
    pub(crate) fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let figures: [(&str, &str, &str, i128); 10] = [
            (
                "buffer_memory_bytes",
                "gauge",
                "Bytes of body buffers held in memory, in queues and in HTTP/2 send buffers (at most --buffer-memory, plus working chunks: one 16 KiB per moving body, and what an HTTP/2 stream reads back from disk, at most 64 KiB a stream).",
                self.memory.load(Relaxed).into(),
            ),
            (
                "buffer_memory_limit_bytes",
                "gauge",
                "The --buffer-memory budget.",
                self.memory_cap.into(),
            ),
            (
                "buffer_disk_bytes",
                "gauge",
                "Bytes of disk held by spill files (at most --buffer-disk): queued body bytes, plus under 4 MiB a file already sent and not yet given back.",
                self.disk.load(Relaxed).into(),
            ),
            (
                "buffer_disk_limit_bytes",
                "gauge",
                "The --buffer-disk budget.",
                self.disk_cap.into(),
            ),
            (
                "buffer_spilled_bytes_total",
                "counter",
                "Bytes of bodies written to spill files.",
                self.spilled.load(Relaxed).into(),
            ),
            (
                "buffer_spill_files",
                "gauge",
                "Spill files open (each unlinked, one per spilling body).",
                self.files.load(Relaxed).into(),
            ),
            (
                "buffer_spill_errors_total",
                "counter",
                "Spill files that could not be created or written (missing, unwritable or full --spill-dir); those bodies streamed with backpressure.",
                self.spill_errors.load(Relaxed).into(),
            ),
            (
                "buffer_backpressure_total",
                "counter",
                "Times a sender (backend or uploading client) waited because memory and disk were full for its body.",
                self.backpressure.load(Relaxed).into(),
            ),
            (
                "buffered_bodies_total",
                "counter",
                "Bodies that went through a buffer (memory or disk) between backend and client.",
                self.bodies.load(Relaxed).into(),
            ),
            (
                "buffered_bodies_spilled_total",
                "counter",
                "Buffered bodies that spilled to disk.",
                self.bodies_spilled.load(Relaxed).into(),
            ),
        ];
        for (name, kind, help, value) in figures {
            let _ = writeln!(out, "# HELP pier_dataplane_{name} {help}");
            let _ = writeln!(out, "# TYPE pier_dataplane_{name} {kind}");
            let _ = writeln!(out, "pier_dataplane_{name} {value}");
        }
    }
}

/// A chunk of body in memory, accounted in the budget until dropped.
#[derive(Debug)]
pub(crate) struct Chunk {
    pub(super) buf: Vec<u8>,
    pub(super) budget: Arc<Budget>,
}

impl Deref for Chunk {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf
    }
}

impl AsRef<[u8]> for Chunk {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Chunk {
    /// A chunk to read spilled bytes back into: a working buffer, counted
    /// but not refused (it replaces the bytes it reads, which left the
    /// disk budget).
    pub(super) fn working(budget: &Arc<Budget>) -> Self {
        budget.memory.fetch_add(SPOOL_CHUNK as u64, Relaxed);
        Self {
            buf: pool::take_chunk(),
            budget: Arc::clone(budget),
        }
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        self.budget.memory.fetch_sub(SPOOL_CHUNK as u64, Relaxed);
        pool::give_chunk(std::mem::take(&mut self.buf));
    }
}
