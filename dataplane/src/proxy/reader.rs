//! A backend's HTTP/1.1 response body, read piece by piece with its
//! framing undone ([`BodyReader`]), and what it takes to finish reading it
//! in this task or in a buffer's filler task ([`Backend`]): the try, the
//! connection, and its way back to the idle pool.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::time::timeout;

use super::{BUFFER, Try};
use crate::context::Context;
use crate::http::chunked::{self, Piece};
use crate::http::upstream::ResponseFraming;
use crate::pool::Pooled;
use crate::spool;
use crate::upstream::{Connection, PoolKey, idle};

/// A backend connection with a response body still to read: what it
/// takes to finish reading it, in this task or a buffer's filler task.
pub(crate) struct Backend {
    pub(crate) upstream: Connection,
    pub(crate) reader: BodyReader,
    pub(crate) keep_alive: bool,
    /// The try's status once the body is through.
    pub(crate) status: u16,
    pub(crate) try_: Try,
    pub(crate) pool_key: PoolKey,
    pub(crate) idle: Duration,
    pub(crate) ctx: Arc<Context>,
}

impl Backend {
    /// Reads the rest of the body into a buffer as fast as the backend
    /// sends it (waiting only when the buffer is full), then lets the
    /// backend go.
    pub(crate) async fn fill(mut self, mut tx: spool::Sender) {
        loop {
            match self.reader.next(&mut self.upstream, self.idle).await {
                Ok(Some((piece, _))) => {
                    if let Err(e) = tx.send(piece).await {
                        // The client is gone: so is this exchange.
                        tracing::debug!(error = %e, "buffered response abandoned");
                        return;
                    }
                    // A fast backend would otherwise keep the worker for
                    // tokio's whole budget (128 reads), starving the
                    // clients this worker drains.
                    tokio::task::yield_now().await;
                }
                Ok(None) => break,
                Err(e) => {
                    let e = self.failed(e);
                    tx.fail(e.to_string());
                    return;
                }
            }
        }
        tx.finish();
        self.done();
    }

    /// Counts a failure reading the body (timeouts apart) and passes it on.
    pub(crate) fn failed(&self, e: io::Error) -> io::Error {
        if e.kind() == io::ErrorKind::TimedOut {
            self.ctx.metrics.upstream_timeouts.fetch_add(1, Relaxed);
        }
        e
    }

    /// The body was read whole: the try succeeded, and the connection
    /// goes back to the pool when its framing ended cleanly.
    pub(crate) fn done(mut self) {
        let metrics = &self.ctx.metrics;
        metrics.upstream_held.observe(self.try_.elapsed());
        self.try_.status = self.status;
        let reusable = self.reader.clean && self.reader.framing != ResponseFraming::Close;
        if reusable && self.keep_alive {
            idle::put(
                self.pool_key,
                self.upstream,
                self.ctx.upstream.idle,
                metrics,
            );
        }
    }
}

/// Reads an upstream response body piece by piece, undoing its framing.
pub(crate) struct BodyReader {
    pub(crate) framing: ResponseFraming,
    /// `Length`: bytes still to read.
    left: u64,
    decoder: chunked::Decoder,
    data: Pooled,
    /// Ranges of `data` still to hand out, from `next_piece` on.
    pieces: Vec<Piece>,
    next_piece: usize,
    /// `data` holds what came with the head, not yet looked at.
    fresh: bool,
    /// The body's end was read.
    done: bool,
    /// The body ended exactly at the end of what the backend sent.
    clean: bool,
}

impl BodyReader {
    pub(crate) fn new(framing: ResponseFraming, leftover: Pooled) -> Self {
        Self {
            framing,
            left: match framing {
                ResponseFraming::Length(n) => n,
                _ => 0,
            },
            decoder: chunked::Decoder::default(),
            data: leftover,
            pieces: Vec::new(),
            next_piece: 0,
            fresh: true,
            done: false,
            clean: true,
        }
    }

    /// Whether the next piece is at hand without reading the backend.
    pub(crate) fn has_buffered(&self) -> bool {
        (self.fresh && !self.data.is_empty()) || self.next_piece < self.pieces.len()
    }

    /// The next piece of body, and whether more follows; `None` at its
    /// end.
    pub(crate) async fn next(
        &mut self,
        upstream: &mut Connection,
        idle: Duration,
    ) -> io::Result<Option<(&[u8], bool)>> {
        loop {
            if let Some(Piece::Data(range)) = self.pieces.get(self.next_piece).cloned() {
                self.next_piece += 1;
                let more = !self.done || self.next_piece < self.pieces.len();
                return Ok(Some((&self.data[range], more)));
            }
            if self.done {
                return Ok(None);
            }
            self.pieces.clear();
            self.next_piece = 0;
            let got = if self.fresh {
                self.fresh = false;
                self.data.len()
            } else {
                self.read(upstream, idle).await?
            };
            match self.framing {
                ResponseFraming::None => {
                    self.clean = got == 0;
                    self.done = true;
                }
                ResponseFraming::Length(_) => {
                    let take = usize::try_from(self.left).map_or(got, |n| n.min(got));
                    self.clean &= take == got;
                    self.left -= take as u64;
                    self.pieces.push(Piece::Data(0..take));
                    self.done = self.left == 0;
                }
                ResponseFraming::Chunked => {
                    let used = self
                        .decoder
                        .feed(&self.data[..got], &mut self.pieces)
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    self.clean &= used == got;
                    self.done = self.decoder.is_done();
                }
                ResponseFraming::Close => self.pieces.push(Piece::Data(0..got)),
            }
            self.pieces.retain(|Piece::Data(r)| !r.is_empty());
        }
    }

    /// Reads more of the body into `data`; an early end is an error except
    /// for a body delimited by the connection closing.
    async fn read(&mut self, upstream: &mut Connection, idle: Duration) -> io::Result<usize> {
        let want = match self.framing {
            ResponseFraming::Length(_) => {
                usize::try_from(self.left).map_or(BUFFER, |l| l.min(BUFFER))
            }
            _ => BUFFER,
        };
        if self.data.len() < want {
            self.data.resize(BUFFER, 0);
        }
        let got = timed(idle, upstream.read(&mut self.data[..want])).await?;
        if got == 0 {
            if self.framing == ResponseFraming::Close {
                self.done = true;
                return Ok(0);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "backend closed mid-body",
            ));
        }
        Ok(got)
    }
}

/// Whether a failure on a reused connection means the backend had closed
/// it while idle (so the request can go again on a new one).
pub(crate) fn is_stale(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    )
}

pub(crate) async fn timed<T>(
    limit: Duration,
    io: impl Future<Output = io::Result<T>>,
) -> io::Result<T> {
    timeout(limit, io)
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}
