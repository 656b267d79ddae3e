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
//!
//! Files: [`budget`] holds the limits and counters, [`file`] the spill
//! files behind the [`SpillIo`] trait (the real file, or a faulty one in
//! the tests), [`body`] the hyper side of a receiver.

mod body;
mod budget;
mod file;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

pub(crate) use self::body::SpoolBody;
pub(crate) use self::budget::{Budget, Chunk, RELEASE_UNIT};
pub(crate) use self::file::SpillFile;
use crate::pool::{self, SPOOL_CHUNK};

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
                let _ = file.truncate();
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
            if file.punch(self.punched, len).is_ok() {
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

impl Receiver {
    fn budget(&self) -> &Arc<Budget> {
        &self.inner.budget
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.inner.lock().receiver_gone = true;
        self.inner.to_sender.notify_one();
    }
}
