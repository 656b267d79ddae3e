//! The HTTP/1.1 engine: Pier's own, because the offload path wants two
//! things a general HTTP library does not give it.
//!
//! - **An idle connection holds no buffer.** Between requests a connection
//!   is its socket and this task's small state: the read and write buffers
//!   are taken when a request starts and freed as soon as the connection is
//!   idle again (nginx does the same), and a request's own state (its
//!   head, the response being written) lives in one box for the request's
//!   time. An idle keep-alive connection costs its 512-byte task, its
//!   socket's registration and its entry in the worker's table: about
//!   870 bytes in all (nginx: 522).
//! - **File data never passes through user space.** A response head is
//!   written with `MSG_MORE`, then the file region goes out with
//!   `sendfile(2)`. Small files whose contents the open-file cache holds
//!   leave with their head in one `sendmsg`, without a copy.
//!
//! ```text
//!  idle ──readable──► read head ──► Shared::dispatch ──► write head + body ──┐
//!   ▲    (no buffer)   (Conn::request, boxed            (MSG_MORE, sendfile) │
//!   │                   ≤ --max-header-size,                               │
//!   │                   --header-timeout)                                  │
//!   └───────────── keep-alive, request body discarded ◄────────────────────┘
//! ```
//!
//! A connection that opens with the HTTP/2 preface is handed to hyper
//! ([`crate::front::hyper`]) with the bytes already read. Request bodies: this
//! engine's handlers read none, so a `Content-Length` body up to
//! [`DISCARD_MAX`] is read and dropped after the response; a larger or
//! chunked one, or one behind `Expect: 100-continue`, ends the connection
//! after the response (`Connection: close`), as nginx does with bodies it
//! does not want.

mod proxy;
mod relay;
mod upload;

use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::task::{Poll, ready};
use std::time::Duration;

use std::io::IoSlice;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Method};
use rustix::net::{SendAncillaryBuffer, SendFlags, Shutdown};
use tokio::io::{AsyncReadExt, Interest};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::body::{Body, Segment};
use crate::dispatch::{Dispatch, Shared};
use crate::http::head::{self, Framing, HeadError};
use crate::http::response::{self, Persist};
use crate::pool;

/// Room reserved in the read buffer before each read.
const READ_RESERVE: usize = 4096;
/// In-memory body pieces are gathered behind the head up to this size
/// (the write buffer's limit); larger ones are written on their own.
pub(crate) const INLINE_MAX: usize = 16 * 1024;
/// Largest unwanted request body read and dropped to keep a connection.
pub(crate) const DISCARD_MAX: u64 = 64 * 1024;
/// After a response that closes the connection, how long unread input is
/// drained so the close does not reset the response away, and how much.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_MAX: usize = 64 * 1024;
/// The first bytes of every HTTP/2 connection (RFC 9113, 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// HTTP/1.1 limits, from the flags.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// A new connection's first request, and every request head once its
    /// first byte arrived, must be complete within this.
    pub(crate) header_timeout: Duration,
    /// Keep-alive wait for the next request, and the longest a client may
    /// leave a response unread before the connection is closed.
    pub(crate) idle_timeout: Duration,
    pub(crate) max_header_size: usize,
    /// Bytes per `sendfile` call; the worker serves other connections
    /// between calls.
    pub(crate) send_chunk: usize,
}

/// How a connection left this engine.
#[derive(Debug)]
pub(crate) enum Outcome {
    Closed,
    /// The client spoke HTTP/2: serve it there, starting with these bytes.
    H2(BytesMut),
}

/// Serves HTTP/1.1 requests on `stream` until the connection ends, or
/// hands it over when it turns out to be HTTP/2.
///
/// `idle` is set while the connection waits for a request with nothing in
/// flight: shutdown closes such connections at once (see `server`), and
/// the others close after their response once `Shared::draining` is set.
pub(crate) fn serve<'a>(
    stream: &'a mut TcpStream,
    shared: &'a Arc<Shared>,
    limits: &'a Limits,
    idle: &'a AtomicBool,
) -> impl Future<Output = Outcome> + 'a {
    let mut conn = Conn {
        stream,
        shared,
        limits,
        idle,
        buf: BytesMut::new(),
        out: Vec::new(),
        active: false,
        peer: std::sync::OnceLock::new(),
    };
    // A block, not an `async fn`: the connection's state is held once.
    async move { conn.run().await }
}

/// What becomes of a connection after a request.
enum Next {
    Keep,
    Close,
    /// It was HTTP/2: these bytes start it.
    H2(BytesMut),
}

/// One connection's state while the engine serves it.
struct Conn<'a> {
    stream: &'a mut TcpStream,
    shared: &'a Arc<Shared>,
    limits: &'a Limits,
    idle: &'a AtomicBool,
    /// Bytes read and not yet consumed: at most one head being read, plus
    /// whatever the client sent after it.
    buf: BytesMut,
    /// The response being written.
    out: Vec<u8>,
    /// Holds buffers (counted in `connections_active`).
    active: bool,
    /// The client's address, once a route asked for it (a proxy, an
    /// access list): one `getpeername` per connection.
    peer: std::sync::OnceLock<Box<crate::http::forward::Peer>>,
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        self.set_active(false);
        pool::give_read(std::mem::take(&mut self.buf));
        pool::give(std::mem::take(&mut self.out));
    }
}

impl Conn<'_> {
    async fn run(&mut self) -> Outcome {
        // One timer for the connection's life, moved lazily: each request
        // only notes its deadline, and the timer is re-armed when it fires
        // early. No timer registration per request.
        let timer = tokio::time::sleep(self.limits.header_timeout);
        tokio::pin!(timer);
        let mut idle_deadline = timer.deadline();
        let mut served = 0u64;
        loop {
            if self.buf.is_empty() {
                // Idle: give the buffers back before waiting.
                pool::give_read(std::mem::take(&mut self.buf));
                pool::give(std::mem::take(&mut self.out));
                self.set_active(false);
                if served > 0 {
                    idle_deadline = Instant::now() + self.limits.idle_timeout;
                    // Deadlines only move later, except from the first
                    // request's header timeout to a shorter idle timeout.
                    if timer.deadline() > idle_deadline {
                        timer.as_mut().reset(idle_deadline);
                    }
                }
                self.idle.store(true, Relaxed);
                // No close here when draining: a response sent just before
                // the drain began promised keep-alive, so the next request
                // is answered (with `Connection: close`); an idle connection
                // is closed when the drain delay ends.
                // Polled by hand rather than with `select!` over futures:
                // the read readiness keeps its waker in the socket's own
                // registration, so waiting costs this task no waiter node.
                let first = std::future::poll_fn(|cx| {
                    loop {
                        match self.stream.poll_read_ready(cx) {
                            Poll::Ready(Ok(())) => match self.first_bytes() {
                                Ok(true) => return Poll::Ready(Ok(())),
                                // The readiness was stale (the last read
                                // took everything); the failed read cleared
                                // it, so polling again waits for new bytes.
                                Ok(false) => continue,
                                Err(e) => return Poll::Ready(Err(e)),
                            },
                            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                            Poll::Pending => {}
                        }
                        ready!(timer.as_mut().poll(cx));
                        if timer.deadline() >= idle_deadline {
                            return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
                        }
                        timer.as_mut().reset(idle_deadline);
                    }
                })
                .await;
                if let Err(e) = first {
                    self.count_timeout(&e);
                    return Outcome::Closed;
                }
                self.idle.store(false, Relaxed);
            }
            // Boxed: a request's state (its head, the response, the write)
            // is several times what an idle connection holds, and inline it
            // would be part of every connection's task for good. The box
            // is one allocation per request, as nginx's request pool is.
            match Box::pin(self.request(served == 0)).await {
                Next::Keep => served += 1,
                Next::Close => return Outcome::Closed,
                Next::H2(read) => return Outcome::H2(read),
            }
        }
    }

    /// Reads one request head (its first bytes are in `buf`), answers it,
    /// and says what becomes of the connection. `first`: the
    /// connection's first request, which may turn out to be HTTP/2.
    async fn request(&mut self, first: bool) -> Next {
        self.set_active(true);
        if self.out.capacity() == 0 {
            self.out = pool::take();
        }

        // Read one head within the header timeout.
        // The clock is read only when the head needs more than one read.
        let mut deadline = None;
        let mut head = loop {
            if first && could_be_h2(&self.buf) {
                if self.buf.len() >= H2_PREFACE.len() {
                    return Next::H2(std::mem::take(&mut self.buf));
                }
            } else {
                match head::parse(&mut self.buf, self.limits.max_header_size) {
                    Ok(Some(head)) => break head,
                    Ok(None) => {}
                    Err(e) => {
                        self.refuse(e).await;
                        return Next::Close;
                    }
                }
            }
            let deadline =
                *deadline.get_or_insert_with(|| Instant::now() + self.limits.header_timeout);
            match self.read(deadline).await {
                Ok(0) => return Next::Close,
                Ok(_) => {}
                Err(e) => {
                    self.count_timeout(&e);
                    return Next::Close;
                }
            }
        };

        let mut dispatched = {
            // Borrowed only here: the connection's future stays `Send`.
            let (stream, peer) = (&*self.stream, &self.peer);
            let client = || proxy::peer_of(peer, stream).map(|p| p.addr.ip());
            self.shared.dispatch(&head.request, None, false, &client)
        };
        if let Dispatch::Check(pending) = dispatched {
            dispatched = Box::pin(self.shared.check(pending, &mut head.request)).await;
        }
        let res = match dispatched {
            Dispatch::Respond(res) => res,
            Dispatch::Check(_) => return Next::Close, // `check` never gives it
            Dispatch::Proxy(target) => {
                let keep = head.keep_alive && !self.shared.draining.load(Relaxed);
                // Boxed on its own: the exchange's state is larger still,
                // and static requests should not carry it.
                return if Box::pin(self.proxy(head, target, keep)).await {
                    Next::Keep
                } else {
                    Next::Close
                };
            }
        };

        // Decide what becomes of the connection before answering.
        let mut keep = head.keep_alive && !self.shared.draining.load(Relaxed);
        let has_body = head.framing != Framing::None;
        let mut discard = 0;
        match head.framing {
            Framing::None => {}
            Framing::Length(n) if n <= DISCARD_MAX && !head.expect_continue => discard = n,
            Framing::Length(_) | Framing::Chunked => keep = false,
        }
        let persist = Persist::new(keep, head.request.version());
        let is_head = head.request.method() == Method::HEAD;

        let (parts, mut body) = res.into_parts();
        drop(head);
        response::encode(
            &mut self.out,
            parts.status,
            &parts.headers,
            body.len(),
            persist,
        );
        if !response::has_body(is_head, parts.status) {
            body.clear();
        }
        if let Err(e) = self.write_body(body).await {
            tracing::debug!(error = %e, "response not completed");
            return Next::Close;
        }

        if !keep {
            // Unread input (a body, pipelined requests): drain it before
            // the close.
            if has_body || !self.buf.is_empty() {
                self.linger().await;
            }
            return Next::Close;
        }
        if discard > 0 && self.discard(discard).await.is_err() {
            return Next::Close;
        }
        Next::Keep
    }

    /// Counts a connection closed because its header or idle timeout ran
    /// out (`pier_dataplane_connections_timed_out_total`).
    fn count_timeout(&self, e: &io::Error) {
        if e.kind() == io::ErrorKind::TimedOut {
            let metrics = &self.shared.ctx.metrics;
            metrics.connections_timed_out.fetch_add(1, Relaxed);
        }
    }

    fn set_active(&mut self, active: bool) {
        if self.active != active {
            self.active = active;
            let gauge = &self.shared.ctx.metrics.connections_active;
            if active {
                gauge.fetch_add(1, Relaxed);
            } else {
                gauge.fetch_sub(1, Relaxed);
            }
        }
    }

    /// Reads the next request's first bytes once the socket is readable,
    /// taking a buffer only then: false when there was nothing to read
    /// after all. End of stream is an error here.
    fn first_bytes(&mut self) -> io::Result<bool> {
        if self.buf.capacity() == 0 {
            self.buf = pool::take_read();
        }
        self.buf.reserve(READ_RESERVE);
        match self.stream.try_read_buf(&mut self.buf) {
            Ok(0) => Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Reads what the socket has into the buffer; 0 is end of stream.
    async fn read(&mut self, deadline: Instant) -> io::Result<usize> {
        self.buf.reserve(READ_RESERVE);
        tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
    }

    /// Writes the head in `out` and the body. In-memory pieces follow the
    /// head without a copy (one `sendmsg` with both); file regions go out
    /// with `sendfile`. The response is accounted for (the body dropped)
    /// before the last write, so a client that has the whole response sees
    /// it in the metrics.
    async fn write_body(&mut self, mut body: Body) -> io::Result<()> {
        // Body bytes waiting to be written after `out`.
        let mut tail = Bytes::new();
        while let Some(segment) = body.next_segment() {
            match segment {
                Segment::Bytes(bytes) => {
                    if self.out.len() + tail.len() <= INLINE_MAX {
                        // Small pieces (multipart part heads) are gathered.
                        self.out.extend_from_slice(&tail);
                    } else {
                        self.write_out(&tail, true).await?;
                    }
                    body.sent(tail.len() as u64);
                    tail = bytes;
                }
                Segment::File { file, pos, len } => {
                    self.write_out(&tail, true).await?;
                    body.sent(std::mem::take(&mut tail).len() as u64);
                    self.sendfile(file.file(), pos, len, |n| body.sent(n))
                        .await?;
                }
            }
        }
        body.sent(tail.len() as u64);
        drop(body);
        self.write_out(&tail, false).await
    }

    /// Writes `out` then `tail`, and empties `out`.
    async fn write_out(&mut self, tail: &[u8], more: bool) -> io::Result<()> {
        let flags = if more {
            SendFlags::NOSIGNAL | SendFlags::MORE
        } else {
            SendFlags::NOSIGNAL
        };
        let mut head = 0;
        let mut rest = tail;
        while head < self.out.len() {
            let iov = [IoSlice::new(&self.out[head..]), IoSlice::new(rest)];
            let sent = self.stream.try_io(Interest::WRITABLE, || {
                let mut control = SendAncillaryBuffer::default();
                rustix::net::sendmsg(&*self.stream, &iov, &mut control, flags)
                    .map_err(io::Error::from)
            });
            match sent {
                Ok(n) => {
                    let in_head = n.min(self.out.len() - head);
                    head += in_head;
                    rest = &rest[n - in_head..];
                }
                Err(e) => self.on_write_error(e).await?,
            }
        }
        self.out.clear();
        self.send(rest, more).await
    }

    /// Writes what the socket takes now of `out`, then of `tail`, without
    /// waiting. What went of `out` leaves it; returns how much of `tail`
    /// went.
    fn write_now(&mut self, tail: &[u8], more: bool) -> io::Result<usize> {
        let flags = if more {
            SendFlags::NOSIGNAL | SendFlags::MORE
        } else {
            SendFlags::NOSIGNAL
        };
        let (mut head, mut sent) = (0, 0);
        while head < self.out.len() || sent < tail.len() {
            let iov = [IoSlice::new(&self.out[head..]), IoSlice::new(&tail[sent..])];
            let wrote = self.stream.try_io(Interest::WRITABLE, || {
                let mut control = SendAncillaryBuffer::default();
                rustix::net::sendmsg(&*self.stream, &iov, &mut control, flags)
                    .map_err(io::Error::from)
            });
            match wrote {
                Ok(n) => {
                    let in_head = n.min(self.out.len() - head);
                    head += in_head;
                    sent += n - in_head;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.out.drain(..head);
        Ok(sent)
    }

    /// Sends all of `data`; `more` tells the kernel the response goes on,
    /// so a head and the file after it share packets.
    async fn send(&self, mut data: &[u8], more: bool) -> io::Result<()> {
        let flags = if more {
            SendFlags::NOSIGNAL | SendFlags::MORE
        } else {
            SendFlags::NOSIGNAL
        };
        while !data.is_empty() {
            let sent = self.stream.try_io(Interest::WRITABLE, || {
                rustix::net::send(&*self.stream, data, flags).map_err(io::Error::from)
            });
            match sent {
                Ok(n) => data = &data[n..],
                Err(e) => self.on_write_error(e).await?,
            }
        }
        Ok(())
    }

    /// Sends a file region straight from the page cache. A file that
    /// shrank underneath aborts the connection instead of sending a short
    /// body as if it were complete.
    async fn sendfile(
        &self,
        file: &std::fs::File,
        mut pos: u64,
        len: u64,
        on_sent: impl Fn(u64),
    ) -> io::Result<()> {
        let mut left = len;
        while left > 0 {
            let count = usize::try_from(left)
                .map_or(self.limits.send_chunk, |l| l.min(self.limits.send_chunk));
            let sent = self.stream.try_io(Interest::WRITABLE, || {
                rustix::fs::sendfile(self.stream.as_fd(), file, Some(&mut pos), count)
                    .map_err(io::Error::from)
            });
            match sent {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "file shrank while it was being sent",
                    ));
                }
                Ok(n) => {
                    left -= n as u64;
                    on_sent(n as u64);
                    // Let the worker's other connections have a turn.
                    tokio::task::yield_now().await;
                }
                Err(e) => self.on_write_error(e).await?,
            }
        }
        Ok(())
    }

    /// Waits for room on `WouldBlock`, up to the idle timeout: a client that
    /// reads nothing for that long is gone.
    async fn on_write_error(&self, e: io::Error) -> io::Result<()> {
        match e.kind() {
            io::ErrorKind::WouldBlock => {
                tokio::time::timeout(self.limits.idle_timeout, self.stream.writable())
                    .await
                    .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
            }
            io::ErrorKind::Interrupted => Ok(()),
            _ => Err(e),
        }
    }

    /// Answers a head that cannot be served, then closes.
    async fn refuse(&mut self, e: HeadError) {
        tracing::debug!(error = %e, "request head refused");
        let status = e.status();
        response::encode(&mut self.out, status, &HeaderMap::new(), 0, Persist::Close);
        self.shared
            .ctx
            .metrics
            .unrouted
            .record(status.as_u16(), Duration::ZERO);
        if self.write_out(&[], false).await.is_ok() {
            self.linger().await;
        }
    }

    /// Drops a request body of `len` bytes the handler did not want; the
    /// rest of it must come within the header timeout.
    async fn discard(&mut self, mut len: u64) -> io::Result<()> {
        let deadline = Instant::now() + self.limits.header_timeout;
        loop {
            let here = usize::try_from(len).map_or(self.buf.len(), |l| l.min(self.buf.len()));
            self.buf.advance(here);
            len -= here as u64;
            if len == 0 {
                return Ok(());
            }
            if self.read(deadline).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Half-closes, then drains what the client still sends for a moment,
    /// so closing with unread input does not reset the response away.
    async fn linger(&mut self) {
        let _ = rustix::net::shutdown(&*self.stream, Shutdown::Write);
        let deadline = Instant::now() + LINGER;
        let mut drained = 0;
        while drained < LINGER_MAX {
            self.buf.clear();
            match self.read(deadline).await {
                Ok(0) | Err(_) => return,
                Ok(n) => drained += n,
            }
        }
    }
}

/// Whether the bytes so far could still be the HTTP/2 preface.
fn could_be_h2(buf: &[u8]) -> bool {
    let n = buf.len().min(H2_PREFACE.len());
    n > 0 && buf[..n] == H2_PREFACE[..n]
}

#[cfg(test)]
mod tests;
