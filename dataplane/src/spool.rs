//! Body buffering: a queue between a fast sender (a backend, or a client
//! uploading) and a slow receiver, held in memory first, then in an
//! unlinked temporary file, then, when both are full, by making the
//! sender wait (backpressure). Nothing is ever dropped or cut short.
//!
//! ```text
//!  sender ──► [ 16 KiB chunks | file range | chunks … ] ──► receiver
//!             memory ≤ route's `memory`   disk ≤ route's `disk`
//!             and the process's           and the process's
//!             --buffer-memory             --buffer-disk
//! ```
//!
//! Limits (every one counted in a metric, see [`Budget::render`]):
//! - per body, the route's `memory` (in whole [`SPOOL_CHUNK`]s) and `disk`;
//! - per process, `--buffer-memory` over all bodies; past it, data goes to
//!   disk earlier. One chunk per body may go past it when that body has no
//!   other: the working buffer any relay needs, so a body can always move;
//! - per process, `--buffer-disk` of live spill bytes.
//!
//! Spill files are created in `--spill-dir` with `O_TMPFILE` (never named,
//! so a crash leaves nothing behind; a filesystem without it gets a named
//! file unlinked at once), read back in bounded reads (not `sendfile`: a
//! socket's queue would still reference pages this file then reuses), and
//! their consumed ranges are given back in [`RELEASE_UNIT`] steps (punched
//! out, or the file truncated when it empties), so disk use follows what
//! is still queued, not what went through. The steps are coarse because
//! each one may cost a synchronous discard on the worker thread (ext4
//! mounted with `discard`): punching every 16 KiB piece halved the rate at
//! which 50 spilling backends could be read. A spill directory that is
//! missing, unwritable or full makes the body stream instead (logged once,
//! counted).
//!
//! Sender and receiver run on the same worker thread; the lock between
//! them is never contended and is never held across an await.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::ops::Deref;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use std::task::{Context, Poll};

use bytes::Bytes;
use rustix::fs::{FallocateFlags, Mode, OFlags};
use tokio::sync::Notify;

use crate::pool::{self, SPOOL_CHUNK};

/// Consumed spill-file bytes are given back to the filesystem in steps of
/// this size, so a spilling body holds at most this much disk beyond what
/// it still has queued (counted in the disk budget until given back).
pub(crate) const RELEASE_UNIT: u64 = 4 << 20;

/// The process-wide limits and counters of body buffering.
#[derive(Debug)]
pub(crate) struct Budget {
    memory_cap: u64,
    disk_cap: u64,
    /// `None`: spilling is off, bodies stay within memory then stream.
    dir: Option<PathBuf>,
    /// Bytes of chunks held by bodies (gauge).
    memory: AtomicU64,
    /// Bytes of disk held by spill files (gauge): queued bytes, plus
    /// sent ones not yet given back (under [`RELEASE_UNIT`] a file).
    disk: AtomicU64,
    /// Bytes written to spill files (counter).
    spilled: AtomicU64,
    /// Spill files open (gauge).
    files: AtomicI64,
    /// Times a sender had to wait for room (counter).
    backpressure: AtomicU64,
    /// Spill files that could not be created or written (counter).
    spill_errors: AtomicU64,
    /// The first spill error was logged.
    warned: AtomicBool,
    /// Bodies that went through a spool, and those that spilled.
    bodies: AtomicU64,
    bodies_spilled: AtomicU64,
}

impl Budget {
    /// `--buffer-memory`, `--buffer-disk` and `--spill-dir`.
    pub(crate) fn new(memory_cap: u64, disk_cap: u64, dir: Option<PathBuf>) -> Self {
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

    fn take(counter: &AtomicU64, cap: u64, n: u64) -> bool {
        counter
            .fetch_update(Relaxed, Relaxed, |used| {
                used.checked_add(n).filter(|&total| total <= cap)
            })
            .is_ok()
    }

    fn spill_failed(&self, e: &io::Error) {
        self.spill_errors.fetch_add(1, Relaxed);
        if !self.warned.swap(true, Relaxed) {
            tracing::warn!(
                dir = ?self.dir,
                error = %e,
                "spill directory unusable: bodies stream with backpressure instead (logged once; see pier_dataplane_buffer_spill_errors_total)"
            );
        }
    }

    /// An unlinked file in the spill directory.
    fn open_file(self: &Arc<Self>) -> io::Result<SpillFile> {
        let dir = self
            .dir
            .as_deref()
            .ok_or_else(|| io::Error::other("no spill directory"))?;
        let flags = OFlags::RDWR | OFlags::CLOEXEC;
        let fd = match rustix::fs::open(dir, flags | OFlags::TMPFILE, Mode::RUSR | Mode::WUSR) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::ISDIR) => {
                static NEXT: AtomicU64 = AtomicU64::new(0);
                let name = dir.join(format!(
                    ".pier-spill-{}-{}",
                    std::process::id(),
                    NEXT.fetch_add(1, Relaxed)
                ));
                let fd = rustix::fs::open(
                    &name,
                    flags | OFlags::CREATE | OFlags::EXCL,
                    Mode::RUSR | Mode::WUSR,
                )?;
                rustix::fs::unlink(&name)?;
                fd
            }
            Err(e) => return Err(e.into()),
        };
        self.files.fetch_add(1, Relaxed);
        Ok(SpillFile {
            file: File::from(fd),
            budget: Arc::clone(self),
        })
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

/// An open, unlinked spill file, counted while it lives.
#[derive(Debug)]
pub(crate) struct SpillFile {
    file: File,
    budget: Arc<Budget>,
}

impl Deref for SpillFile {
    type Target = File;
    fn deref(&self) -> &File {
        &self.file
    }
}

impl Drop for SpillFile {
    fn drop(&mut self) {
        self.budget.files.fetch_sub(1, Relaxed);
    }
}

/// A chunk of body in memory, accounted in the budget until dropped.
#[derive(Debug)]
pub(crate) struct Chunk {
    buf: Vec<u8>,
    budget: Arc<Budget>,
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
    fn working(budget: &Arc<Budget>) -> Self {
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

/// What the receiver gets next.
#[derive(Debug)]
pub(crate) enum Piece {
    /// Bytes in memory.
    Memory(Chunk),
    /// Bytes at `at..at + len` of a spill file; tell the receiver how much
    /// was used with [`Receiver::consumed`].
    File {
        file: Arc<SpillFile>,
        at: u64,
        len: u64,
    },
}

#[derive(Debug)]
enum Segment {
    Memory(Chunk),
    File { at: u64, len: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    Open,
    Done,
    Failed(String),
}

#[derive(Debug)]
struct State {
    queue: VecDeque<Segment>,
    /// Bytes of chunks in the queue.
    memory: u64,
    memory_limit: u64,
    /// Bytes of the file still queued.
    disk: u64,
    /// Bytes of disk charged to the budget for the file: what was written
    /// past its end, less what was punched out or truncated since.
    held: u64,
    disk_limit: u64,
    file: Option<Arc<SpillFile>>,
    write_at: u64,
    /// The end of the highest byte written since the file last started over.
    end_of_file: u64,
    /// Everything below this offset was given back (punched out).
    punched: u64,
    /// Spilling failed once for this body: it streams from now on.
    spill_off: bool,
    /// Bytes sent in.
    total: u64,
    end: End,
    receiver_gone: bool,
    /// The sender waited for room at least once.
    filled: bool,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    budget: Arc<Budget>,
    to_receiver: Notify,
    to_sender: Notify,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        self.budget.disk.fetch_sub(state.held, Relaxed);
    }
}

/// A new body queue with the route's per-body limits.
pub(crate) fn spool(budget: &Arc<Budget>, memory: u64, disk: u64) -> (Sender, Receiver) {
    budget.bodies.fetch_add(1, Relaxed);
    let inner = Arc::new(Inner {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            memory: 0,
            memory_limit: memory,
            disk: 0,
            held: 0,
            disk_limit: disk,
            file: None,
            write_at: 0,
            end_of_file: 0,
            punched: 0,
            spill_off: false,
            total: 0,
            end: End::Open,
            receiver_gone: false,
            filled: false,
        }),
        budget: Arc::clone(budget),
        to_receiver: Notify::new(),
        to_sender: Notify::new(),
    });
    (
        Sender {
            inner: Arc::clone(&inner),
        },
        Receiver { inner },
    )
}

/// The sending half. Dropped without [`Sender::finish`], the body ends in
/// an error at the receiver (never as a short body passed off as whole).
#[derive(Debug)]
pub(crate) struct Sender {
    inner: Arc<Inner>,
}

/// What one attempt to place bytes did.
enum Placed {
    All,
    /// Memory and disk are full for now; this many bytes were placed.
    Full(usize),
}

impl Sender {
    /// Queues `data`, waiting while there is no room. Fails when the
    /// receiver is gone.
    pub(crate) async fn send(&mut self, mut data: &[u8]) -> io::Result<()> {
        loop {
            match self.place(data)? {
                Placed::All => return Ok(()),
                Placed::Full(n) => data = &data[n..],
            }
            self.inner.budget.backpressure.fetch_add(1, Relaxed);
            // A store-and-forward receiver waits for the body or for this.
            self.inner.to_receiver.notify_one();
            self.inner.to_sender.notified().await;
        }
    }

    /// Queues what fits of `data` now; returns how much.
    pub(crate) fn try_send(&mut self, data: &[u8]) -> io::Result<usize> {
        match self.place(data)? {
            Placed::All => Ok(data.len()),
            Placed::Full(n) => Ok(n),
        }
    }

    fn place(&mut self, data: &[u8]) -> io::Result<Placed> {
        let budget = &self.inner.budget;
        let mut state = self.inner.lock();
        if state.receiver_gone {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the body's receiver is gone",
            ));
        }
        let before = state.total;
        let rest = state.place_in_memory(data, budget);
        let placed = if rest.is_empty() || state.place_on_disk(rest, budget) {
            Placed::All
        } else {
            state.filled = true;
            Placed::Full((state.total - before) as usize)
        };
        if state.total > before {
            drop(state);
            self.inner.to_receiver.notify_one();
        }
        Ok(placed)
    }

    /// The body is complete.
    pub(crate) fn finish(self) {
        self.end(End::Done);
    }

    /// The body failed: the receiver gets this error after what was queued.
    pub(crate) fn fail(self, why: String) {
        self.end(End::Failed(why));
    }

    fn end(&self, end: End) {
        let mut state = self.inner.lock();
        if state.end == End::Open {
            state.end = end;
        }
        drop(state);
        self.inner.to_receiver.notify_one();
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.end(End::Failed("the body's sender stopped early".to_owned()));
    }
}

impl State {
    /// Copies what memory takes of `data`; returns the rest.
    fn place_in_memory<'d>(&mut self, mut data: &'d [u8], budget: &Arc<Budget>) -> &'d [u8] {
        while !data.is_empty() {
            if let Some(Segment::Memory(last)) = self.queue.back_mut()
                && last.buf.len() < SPOOL_CHUNK
            {
                let n = (SPOOL_CHUNK - last.buf.len()).min(data.len());
                last.buf.extend_from_slice(&data[..n]);
                data = &data[n..];
                self.total += n as u64;
                continue;
            }
            let chunk = SPOOL_CHUNK as u64;
            let within = self.memory + chunk <= self.memory_limit
                && Budget::take(&budget.memory, budget.memory_cap, chunk);
            // The one working chunk a body may always have, so it moves.
            let working = !within && self.memory == 0 && !self.queue.iter().any(is_file) && {
                budget.memory.fetch_add(chunk, Relaxed);
                true
            };
            if !within && !working {
                break;
            }
            self.memory += chunk;
            self.queue.push_back(Segment::Memory(Chunk {
                buf: pool::take_chunk(),
                budget: Arc::clone(budget),
            }));
        }
        data
    }

    /// Appends `data` to the spill file when the limits allow; false when
    /// they do not (or spilling failed: the body streams from then on).
    fn place_on_disk(&mut self, data: &[u8], budget: &Arc<Budget>) -> bool {
        let n = data.len() as u64;
        // Only bytes past the end of the file take more disk: after the
        // file started over, its first blocks are written again.
        let grows = (self.write_at + n).saturating_sub(self.end_of_file);
        if self.spill_off
            || budget.dir.is_none()
            || self.held + grows > self.disk_limit
            || !Budget::take(&budget.disk, budget.disk_cap, grows)
        {
            return false;
        }
        let file = match &self.file {
            Some(file) => Arc::clone(file),
            None => match budget.open_file() {
                Ok(file) => {
                    budget.bodies_spilled.fetch_add(1, Relaxed);
                    let file = Arc::new(file);
                    self.file = Some(Arc::clone(&file));
                    file
                }
                Err(e) => {
                    budget.disk.fetch_sub(grows, Relaxed);
                    self.spill_off = true;
                    budget.spill_failed(&e);
                    return false;
                }
            },
        };
        if let Err(e) = file.write_all_at(data, self.write_at) {
            // Nothing of it is queued. A partial write past the end is
            // disk the file may hold but does not count: the file starts
            // over or goes once its queue empties.
            budget.disk.fetch_sub(grows, Relaxed);
            self.spill_off = true;
            budget.spill_failed(&e);
            return false;
        }
        match self.queue.back_mut() {
            Some(Segment::File { at, len }) if *at + *len == self.write_at => *len += n,
            _ => self.queue.push_back(Segment::File {
                at: self.write_at,
                len: n,
            }),
        }
        self.write_at += n;
        self.end_of_file = self.end_of_file.max(self.write_at);
        self.held += grows;
        self.disk += n;
        self.total += n;
        budget.spilled.fetch_add(n, Relaxed);
        true
    }

    /// Gives sent file blocks back to the filesystem, in [`RELEASE_UNIT`]
    /// steps; all of the file's bytes below `sent_to` were sent.
    fn give_back(&mut self, sent_to: u64, budget: &Budget) {
        let Some(file) = &self.file else { return };
        if self.disk == 0 {
            // Nothing queued in the file: it starts over. A small file
            // keeps its blocks to be written again; a larger one (or one
            // already punched) is truncated.
            self.write_at = 0;
            if self.end_of_file > RELEASE_UNIT || self.punched > 0 {
                // Best effort: if this fails the blocks are reused anyway.
                let _ = rustix::fs::ftruncate(&file.file, 0);
                budget.disk.fetch_sub(self.held, Relaxed);
                self.held = 0;
                self.end_of_file = 0;
                self.punched = 0;
            }
            return;
        }
        // Whole pages only, so no block still holding queued bytes goes.
        let to = sent_to & !4095;
        if to >= self.punched + RELEASE_UNIT {
            let len = to - self.punched;
            if rustix::fs::fallocate(
                &file.file,
                FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
                self.punched,
                len,
            )
            .is_ok()
            {
                budget.disk.fetch_sub(len, Relaxed);
                self.held -= len;
            }
            // Failed (no hole punching here): the blocks go with the file.
            self.punched = to;
        }
    }
}

fn is_file(segment: &Segment) -> bool {
    matches!(segment, Segment::File { .. })
}

/// The receiving half. Dropping it makes the sender fail, so a backend
/// is let go as soon as its client is.
#[derive(Debug)]
pub(crate) struct Receiver {
    inner: Arc<Inner>,
}

impl Receiver {
    /// The next piece; `None` at the end of a complete body, an error
    /// after everything queued when the body failed.
    pub(crate) async fn next(&mut self) -> Option<io::Result<Piece>> {
        loop {
            {
                let mut state = self.inner.lock();
                match state.queue.pop_front() {
                    Some(Segment::Memory(chunk)) => {
                        state.memory -= SPOOL_CHUNK as u64;
                        drop(state);
                        self.inner.to_sender.notify_one();
                        return Some(Ok(Piece::Memory(chunk)));
                    }
                    Some(Segment::File { at, len }) => {
                        // Stays queued until `consumed` says how much went.
                        state.queue.push_front(Segment::File { at, len });
                        let file = state.file.clone()?;
                        return Some(Ok(Piece::File { file, at, len }));
                    }
                    None => match &state.end {
                        End::Open => {}
                        End::Done => return None,
                        End::Failed(why) => return Some(Err(io::Error::other(why.clone()))),
                    },
                }
            }
            self.inner.to_receiver.notified().await;
        }
    }

    /// `n` bytes of the file piece [`Receiver::next`] gave were sent.
    pub(crate) fn consumed(&mut self, n: u64) {
        let budget = &self.inner.budget;
        let mut state = self.inner.lock();
        let Some(Segment::File { at, len }) = state.queue.front_mut() else {
            return;
        };
        let n = n.min(*len);
        *at += n;
        *len -= n;
        // File segments are queued in file order: all below this was sent.
        let sent_to = *at;
        if *len == 0 {
            state.queue.pop_front();
        }
        state.disk -= n;
        state.give_back(sent_to, budget);
        drop(state);
        self.inner.to_sender.notify_one();
    }

    /// Store and forward: waits until the body is complete (its length)
    /// or memory and disk filled first (`None`). A body that failed before
    /// either is an error.
    pub(crate) async fn whole(&mut self) -> io::Result<Option<u64>> {
        loop {
            {
                let state = self.inner.lock();
                match &state.end {
                    End::Done => return Ok(Some(state.total)),
                    End::Failed(why) => return Err(io::Error::other(why.clone())),
                    End::Open if state.filled => return Ok(None),
                    End::Open => {}
                }
            }
            self.inner.to_receiver.notified().await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.inner.lock().receiver_gone = true;
        self.inner.to_sender.notify_one();
    }
}

/// A buffer's receiving half as an `http_body::Body` (hyper's side:
/// HTTP/2 and TLS clients, and buffered uploads). Chunks go to hyper as
/// they are, not copied, and stay counted in the memory budget until hyper
/// has sent them (its send buffer holds at most 64 KiB a stream); spilled
/// bytes are read back into pooled chunks the same way.
pub(crate) struct SpoolBody {
    next: Option<ReadOne>,
}

/// Reading one piece, owning the receiver until it is back.
type ReadOne = Pin<Box<dyn Future<Output = (Receiver, Option<io::Result<Bytes>>)> + Send + Sync>>;

impl std::fmt::Debug for SpoolBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpoolBody").finish_non_exhaustive()
    }
}

impl SpoolBody {
    pub(crate) fn new(rx: Receiver) -> Self {
        Self {
            next: Some(Box::pin(read_one(rx))),
        }
    }
}

/// The next piece of a buffer as bytes.
async fn read_one(mut rx: Receiver) -> (Receiver, Option<io::Result<Bytes>>) {
    let piece = match rx.next().await {
        None => None,
        Some(Err(e)) => Some(Err(e)),
        Some(Ok(Piece::Memory(chunk))) => Some(Ok(Bytes::from_owner(chunk))),
        Some(Ok(Piece::File { file, at, len })) => {
            let len = usize::try_from(len).map_or(SPOOL_CHUNK, |l| l.min(SPOOL_CHUNK));
            let mut chunk = Chunk::working(&rx.inner.budget);
            chunk.buf.resize(len, 0);
            match file.read_exact_at(&mut chunk.buf, at) {
                Ok(()) => {
                    rx.consumed(len as u64);
                    Some(Ok(Bytes::from_owner(chunk)))
                }
                Err(e) => Some(Err(e)),
            }
        }
    };
    (rx, piece)
}

impl http_body::Body for SpoolBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<io::Result<http_body::Frame<Bytes>>>> {
        let Some(next) = self.next.as_mut() else {
            return Poll::Ready(None);
        };
        let (rx, piece) = std::task::ready!(next.as_mut().poll(cx));
        self.next = match &piece {
            Some(Ok(_)) => Some(Box::pin(read_one(rx))),
            _ => None,
        };
        Poll::Ready(piece.map(|r| r.map(http_body::Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        self.next.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(memory: u64, disk: u64, dir: Option<PathBuf>) -> Arc<Budget> {
        Arc::new(Budget::new(memory, disk, dir))
    }

    /// Everything the receiver gets, reading file pieces back.
    async fn drain(rx: &mut Receiver) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(piece) = rx.next().await {
            match piece? {
                Piece::Memory(chunk) => out.extend_from_slice(&chunk),
                Piece::File { file, at, len } => {
                    let mut buf = vec![0; len as usize];
                    file.read_exact_at(&mut buf, at)?;
                    out.extend_from_slice(&buf);
                    rx.consumed(len);
                }
            }
        }
        Ok(out)
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    fn run<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn memory_then_disk_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let budget = budget(1 << 20, 1 << 30, Some(dir.path().to_owned()));
        run(async {
            let (mut tx, mut rx) = spool(&budget, 64 << 10, 1 << 30);
            let body = pattern(1 << 20);
            for piece in body.chunks(10_000) {
                tx.send(piece).await.expect("room");
            }
            tx.finish();
            assert_eq!(budget.memory_in_use(), 64 << 10, "64 KiB in memory");
            assert_eq!(budget.disk.load(Relaxed), (1 << 20) - (64 << 10));
            assert_eq!(budget.files.load(Relaxed), 1);
            assert_eq!(
                std::fs::read_dir(dir.path()).expect("dir").count(),
                0,
                "the spill file has no name"
            );
            let got = drain(&mut rx).await.expect("body");
            assert!(got == body, "every byte, in order");
            assert_eq!(budget.memory_in_use(), 0);
            assert_eq!(
                budget.disk.load(Relaxed),
                (1 << 20) - (64 << 10),
                "a small file keeps its blocks while the body lives"
            );
            drop(rx);
            assert_eq!(budget.disk.load(Relaxed), 0);
            assert_eq!(budget.files.load(Relaxed), 0);
        });
        drop(budget);
    }

    /// Blocks of the file, as the filesystem counts them.
    fn allocated(file: &SpillFile) -> u64 {
        rustix::fs::fstat(&file.file).map_or(0, |st| st.st_blocks as u64 * 512)
    }

    #[test]
    fn sent_disk_is_given_back_in_steps() {
        let dir = tempfile::tempdir().expect("tempdir");
        let budget = budget(1 << 20, 1 << 30, Some(dir.path().to_owned()));
        run(async {
            let (mut tx, mut rx) = spool(&budget, 16 << 10, 1 << 30);
            let body = pattern(20 << 20);
            tx.send(&body).await.expect("room");
            let on_disk = (20 << 20) - (16 << 10);
            assert_eq!(budget.disk.load(Relaxed), on_disk);
            let Some(Ok(Piece::Memory(_))) = rx.next().await else {
                panic!("memory first")
            };
            let mut file = None;
            let mut sent = 0;
            let mut steps = 0;
            let mut last = on_disk;
            while sent < on_disk {
                let Some(Ok(Piece::File { file: f, len, .. })) = rx.next().await else {
                    panic!("file data")
                };
                let n = len.min(64 << 10);
                rx.consumed(n);
                sent += n;
                let held = budget.disk.load(Relaxed);
                let queued = on_disk - sent;
                assert!(
                    held >= queued && held < queued + RELEASE_UNIT + 4096,
                    "held {held} with {queued} queued"
                );
                steps += usize::from(held < last);
                last = held;
                file = Some(f);
            }
            let file = file.expect("a spill file");
            assert!(
                (4..=5).contains(&steps),
                "given back in 4 MiB steps: {steps}"
            );
            assert_eq!(budget.disk.load(Relaxed), 0, "emptied: truncated");
            assert!(
                allocated(&file) < 64 << 10,
                "the filesystem got the blocks back"
            );
            tx.finish();
            assert!(rx.next().await.is_none());
        });
    }

    #[test]
    fn memory_comes_back_after_a_spill_and_order_holds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let budget = budget(1 << 20, 1 << 30, Some(dir.path().to_owned()));
        run(async {
            let (mut tx, mut rx) = spool(&budget, 32 << 10, 1 << 30);
            let body = pattern(200_000);
            let mut sent = 0;
            let mut got = Vec::new();
            // Interleave: the receiver frees memory while file data is
            // queued, and later data must still come after it.
            for piece in body.chunks(20_000) {
                tx.send(piece).await.expect("room");
                sent += piece.len();
                if sent % 60_000 == 0
                    && let Some(Ok(Piece::Memory(chunk))) = rx.next().await
                {
                    got.extend_from_slice(&chunk);
                }
            }
            tx.finish();
            got.extend(drain(&mut rx).await.expect("body"));
            assert!(got == body, "every byte, in order");
        });
    }

    #[test]
    fn full_memory_and_disk_make_the_sender_wait() {
        let dir = tempfile::tempdir().expect("tempdir");
        let budget = budget(1 << 20, 1 << 30, Some(dir.path().to_owned()));
        run(async {
            let (mut tx, mut rx) = spool(&budget, 32 << 10, 64 << 10);
            let body = pattern(96 << 10);
            assert_eq!(tx.try_send(&body).expect("open"), 96 << 10);
            assert_eq!(tx.try_send(b"more").expect("open"), 0, "full");
            assert_eq!(rx.whole().await.expect("open"), None, "filled first");
            let sender = tokio::spawn(async move {
                tx.send(b"more").await.expect("room comes");
                tx.finish();
            });
            // The sender runs first and finds no room.
            tokio::task::yield_now().await;
            assert_eq!(budget.backpressure.load(Relaxed), 1);
            let got = drain(&mut rx).await.expect("body");
            sender.await.expect("sender");
            assert_eq!(got.len(), (96 << 10) + 4);
            assert_eq!(budget.backpressure.load(Relaxed), 1);
        });
    }

    #[test]
    fn the_process_budget_sends_data_to_disk_earlier() {
        let dir = tempfile::tempdir().expect("tempdir");
        let budget = budget(32 << 10, 1 << 30, Some(dir.path().to_owned()));
        run(async {
            let (mut a, _ra) = spool(&budget, 1 << 20, 1 << 30);
            let (mut b, _rb) = spool(&budget, 1 << 20, 1 << 30);
            a.send(&pattern(100_000)).await.expect("room");
            b.send(&pattern(100_000)).await.expect("room");
            // a took the budget; b got its one working chunk.
            assert_eq!(budget.memory_in_use(), (32 << 10) + (16 << 10));
            assert_eq!(budget.disk.load(Relaxed), 200_000 - (32 << 10) - (16 << 10));
        });
    }

    #[test]
    fn without_a_usable_spill_dir_the_body_streams() {
        let budget = budget(
            1 << 20,
            1 << 30,
            Some(PathBuf::from("/nonexistent/pier-spill")),
        );
        run(async {
            let (mut tx, mut rx) = spool(&budget, 16 << 10, 1 << 30);
            let body = pattern(300_000);
            let sender = {
                let body = body.clone();
                tokio::spawn(async move {
                    for piece in body.chunks(50_000) {
                        tx.send(piece).await.expect("receiver there");
                    }
                    tx.finish();
                })
            };
            let got = drain(&mut rx).await.expect("body");
            sender.await.expect("sender");
            assert!(got == body);
            assert_eq!(budget.spill_errors.load(Relaxed), 1, "tried once");
            assert!(budget.backpressure.load(Relaxed) > 0);
        });
    }

    #[test]
    fn a_failed_or_abandoned_body_is_an_error_after_its_data() {
        let budget = budget(1 << 20, 0, None);
        run(async {
            let (mut tx, mut rx) = spool(&budget, 64 << 10, 0);
            tx.send(b"partial").await.expect("room");
            drop(tx);
            let Some(Ok(Piece::Memory(chunk))) = rx.next().await else {
                panic!("the data first")
            };
            assert_eq!(&*chunk, b"partial");
            assert!(rx.next().await.is_some_and(|r| r.is_err()));
            let (mut tx, rx) = spool(&budget, 64 << 10, 0);
            drop(rx);
            assert!(
                tx.send(b"x").await.is_err(),
                "no receiver: the sender stops"
            );
        });
    }

    #[test]
    fn store_and_forward_knows_the_length() {
        let budget = budget(1 << 20, 0, None);
        run(async {
            let (mut tx, mut rx) = spool(&budget, 64 << 10, 0);
            tx.send(&pattern(40_000)).await.expect("room");
            tx.finish();
            assert_eq!(rx.whole().await.expect("done"), Some(40_000));
        });
    }
}
