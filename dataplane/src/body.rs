//! The response body: empty, in memory, a file region, or several file
//! regions as `multipart/byteranges`. Its length is always known.
//!
//! Two ways out:
//! - [`Body::next_segment`] for the HTTP/1.1 engine, which writes bytes
//!   directly and hands file regions to `sendfile`, so file data never
//!   passes through user space;
//! - `http_body::Body` for HTTP/2 (hyper), where files are read one bounded
//!   chunk per poll, so a response never holds more than one chunk in memory
//!   and a slow client slows the reads instead of growing a buffer. A
//!   proxied response's body (HTTP/2 clients only) is the backend's,
//!   passed through frame by frame under the route's idle timeout.

use std::collections::VecDeque;
use std::future::Future as _;
use std::io;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};

use crate::metrics::RouteMetrics;

/// An open file a body sends from: the static handler's cached entry,
/// kept alive (and its descriptor open) as long as a body refers to it.
pub(crate) trait Source: std::fmt::Debug + Send + Sync {
    fn file(&self) -> &std::fs::File;
}

/// A shared open file.
pub(crate) type SharedFile = Arc<dyn Source>;

/// A response body. Its [`Done`] guard records the response in the route's
/// metrics when the body ends or is dropped (for example when the client
/// goes away mid-transfer).
#[derive(Debug)]
pub(crate) struct Body {
    kind: Kind,
    done: Option<Done>,
}

/// A piece of a body as the HTTP/1.1 engine writes it.
#[derive(Debug)]
pub(crate) enum Segment {
    Bytes(Bytes),
    /// `len` bytes of a file from `pos`.
    File {
        file: SharedFile,
        pos: u64,
        len: u64,
    },
}

#[derive(Debug)]
enum Kind {
    Empty,
    Bytes(Option<Bytes>),
    File(Region),
    Multipart(Multipart),
    /// A backend's body, for HTTP/2 clients; boxed, being the largest.
    Upstream(Box<Upstream>),
    /// A backend's body through the route's buffer (hybrid buffering).
    Spooled(crate::spool::SpoolBody),
}

/// A backend's response body and what lives as long as it does.
#[derive(Debug)]
struct Upstream {
    body: hyper::body::Incoming,
    /// Longest wait for the next frame.
    idle: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    /// Told when the body ended cleanly, dropped when it ends either way:
    /// the endpoint's in-flight count, counters and connection.
    guard: Box<dyn Finish>,
    finished: bool,
}

/// What a relayed backend body holds until it ends.
pub(crate) trait Finish: std::fmt::Debug + Send + Sync {
    /// The whole body went through; called at most once, before the drop.
    fn finished(&mut self);
}

impl Body {
    pub(crate) fn empty() -> Self {
        Self::from_kind(Kind::Empty)
    }

    pub(crate) fn bytes(bytes: impl Into<Bytes>) -> Self {
        Self::from_kind(Kind::Bytes(Some(bytes.into())))
    }

    /// `len` bytes of `file` from `start`, read `chunk` bytes at a time.
    pub(crate) fn file(file: SharedFile, start: u64, len: u64, chunk: usize) -> Self {
        Self::from_kind(Kind::File(Region {
            file,
            pos: start,
            remaining: len,
            chunk,
        }))
    }

    /// Several regions of `file`, each preceded by its part header, then
    /// the closing delimiter.
    pub(crate) fn multipart(
        file: SharedFile,
        parts: Vec<(Bytes, u64, u64)>,
        closing: Bytes,
        chunk: usize,
    ) -> Self {
        let len = parts
            .iter()
            .map(|(header, _, len)| header.len() as u64 + len)
            .sum::<u64>()
            + closing.len() as u64;
        Self::from_kind(Kind::Multipart(Multipart {
            file,
            len,
            parts: parts.into(),
            current: None,
            closing: Some(closing),
            chunk,
        }))
    }

    /// A backend's body relayed to an HTTP/2 client: a frame must come
    /// within `idle` of the last, or the stream is reset (a short body is
    /// never passed off as complete). `guard` is dropped when it ends.
    pub(crate) fn upstream(
        body: hyper::body::Incoming,
        idle: Duration,
        guard: Box<dyn Finish>,
    ) -> Self {
        Self::from_kind(Kind::Upstream(Box::new(Upstream {
            body,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
            guard,
            finished: false,
        })))
    }

    /// A backend's body read from the route's buffer, which a filler task
    /// fills as fast as the backend sends.
    pub(crate) fn spooled(rx: crate::spool::Receiver) -> Self {
        Self::from_kind(Kind::Spooled(crate::spool::SpoolBody::new(rx)))
    }

    fn from_kind(kind: Kind) -> Self {
        Self { kind, done: None }
    }

    /// Attaches the guard that accounts for this response.
    pub(crate) fn with_done(mut self, done: Done) -> Self {
        self.done = Some(done);
        self
    }

    /// The body's length in bytes.
    pub(crate) fn len(&self) -> u64 {
        match &self.kind {
            Kind::Empty => 0,
            Kind::Bytes(bytes) => bytes.as_ref().map_or(0, |b| b.len() as u64),
            Kind::File(region) => region.remaining,
            Kind::Multipart(multipart) => multipart.len,
            // HTTP/2 only, where the length comes from `size_hint`.
            Kind::Upstream(_) | Kind::Spooled(_) => 0,
        }
    }

    /// Drops what is left to send (HEAD, 304), keeping the accounting guard.
    pub(crate) fn clear(&mut self) {
        self.kind = Kind::Empty;
    }

    /// Takes the next piece to write: bytes, or a whole file region.
    pub(crate) fn next_segment(&mut self) -> Option<Segment> {
        match &mut self.kind {
            Kind::Empty => None,
            Kind::Bytes(bytes) => bytes.take().map(Segment::Bytes),
            Kind::File(region) => region.take(),
            Kind::Multipart(multipart) => multipart.next_segment(),
            // The HTTP/1.1 engine relays backend bodies itself.
            Kind::Upstream(_) | Kind::Spooled(_) => None,
        }
    }

    /// Counts body bytes written to the client in the route's metrics.
    pub(crate) fn sent(&self, bytes: u64) {
        if let Some(done) = &self.done {
            done.route.sent(bytes);
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        let next = match &mut this.kind {
            Kind::Empty => None,
            Kind::Bytes(bytes) => bytes.take().map(Ok),
            Kind::File(region) => region.next_chunk(),
            Kind::Multipart(multipart) => multipart.next_chunk(),
            Kind::Upstream(upstream) => match upstream.poll_data(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(next) => next,
            },
            Kind::Spooled(spooled) => match std::task::ready!(Pin::new(spooled).poll_frame(cx)) {
                None => None,
                Some(Err(e)) => Some(Err(e)),
                Some(Ok(frame)) => frame.into_data().ok().map(Ok),
            },
        };
        match (&next, &this.done) {
            (Some(Ok(bytes)), Some(done)) => done.route.sent(bytes.len() as u64),
            (None, _) => this.done = None,
            _ => {}
        }
        Poll::Ready(next.map(|r| r.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Bytes(bytes) => bytes.is_none(),
            Kind::File(region) => region.remaining == 0,
            Kind::Multipart(_) => false,
            Kind::Upstream(upstream) => http_body::Body::is_end_stream(&upstream.body),
            Kind::Spooled(spooled) => http_body::Body::is_end_stream(spooled),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            // Already partly sent; the length header was written from `len`.
            Kind::Multipart(_) | Kind::Spooled(_) => SizeHint::default(),
            Kind::Upstream(upstream) => http_body::Body::size_hint(&upstream.body),
            _ => SizeHint::with_exact(self.len()),
        }
    }
}

impl Upstream {
    fn finish(&mut self) {
        if !self.finished {
            self.finished = true;
            self.guard.finished();
        }
    }

    /// The next data of the backend's body; trailers are dropped (HTTP/1.1
    /// backends send none that matter here), errors and idle timeouts end
    /// the stream with an error.
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        loop {
            match http_body::Body::poll_frame(Pin::new(&mut self.body), cx) {
                Poll::Ready(None) => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(Some(Err(io::Error::other(e))));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    let deadline = tokio::time::Instant::now() + self.idle;
                    self.timer.as_mut().reset(deadline);
                    // hyper stops polling once the body says it ended.
                    if http_body::Body::is_end_stream(&self.body) {
                        self.finish();
                    }
                    if let Ok(data) = frame.into_data() {
                        return Poll::Ready(Some(Ok(data)));
                    }
                }
                Poll::Pending => {
                    return match self.timer.as_mut().poll(cx) {
                        Poll::Ready(()) => Poll::Ready(Some(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "backend body idle past the route's idle timeout",
                        )))),
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
    }
}

/// A file region still to send.
#[derive(Debug)]
struct Region {
    file: SharedFile,
    pos: u64,
    remaining: u64,
    chunk: usize,
}

impl Region {
    /// The rest of the region as one segment.
    fn take(&mut self) -> Option<Segment> {
        if self.remaining == 0 {
            return None;
        }
        let len = std::mem::take(&mut self.remaining);
        Some(Segment::File {
            file: Arc::clone(&self.file),
            pos: self.pos,
            len,
        })
    }

    /// Reads the next chunk. A file that shrank underneath us is an error,
    /// which aborts the response instead of sending a short body as if it
    /// were complete.
    fn next_chunk(&mut self) -> Option<io::Result<Bytes>> {
        if self.remaining == 0 {
            return None;
        }
        let want = usize::try_from(self.remaining).map_or(self.chunk, |r| r.min(self.chunk));
        let mut buf = BytesMut::zeroed(want);
        let mut filled = 0;
        while filled < want {
            match self
                .file
                .file()
                .read_at(&mut buf[filled..], self.pos + filled as u64)
            {
                Ok(0) => {
                    self.remaining = 0;
                    return Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "file shrank while it was being sent",
                    )));
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.remaining = 0;
                    return Some(Err(e));
                }
            }
        }
        self.pos += want as u64;
        self.remaining -= want as u64;
        Some(Ok(buf.freeze()))
    }
}

#[derive(Debug)]
struct Multipart {
    file: SharedFile,
    /// Total length: part headers, regions and the closing delimiter.
    len: u64,
    /// Part header, start, length.
    parts: VecDeque<(Bytes, u64, u64)>,
    current: Option<Region>,
    closing: Option<Bytes>,
    chunk: usize,
}

impl Multipart {
    fn next_segment(&mut self) -> Option<Segment> {
        if let Some(segment) = self.current.take().and_then(|mut r| r.take()) {
            return Some(segment);
        }
        if let Some((header, start, len)) = self.parts.pop_front() {
            self.current = Some(Region {
                file: Arc::clone(&self.file),
                pos: start,
                remaining: len,
                chunk: self.chunk,
            });
            return Some(Segment::Bytes(header));
        }
        self.closing.take().map(Segment::Bytes)
    }

    fn next_chunk(&mut self) -> Option<io::Result<Bytes>> {
        if let Some(region) = &mut self.current {
            if let Some(chunk) = region.next_chunk() {
                return Some(chunk);
            }
            self.current = None;
        }
        if let Some((header, start, len)) = self.parts.pop_front() {
            self.current = Some(Region {
                file: Arc::clone(&self.file),
                pos: start,
                remaining: len,
                chunk: self.chunk,
            });
            return Some(Ok(header));
        }
        self.closing.take().map(Ok)
    }
}

/// Accounts for one response when it finishes: status and duration in the
/// route's metrics, and (HTTP/2) the end of the request on its connection.
#[derive(Debug)]
pub(crate) struct Done {
    pub(crate) route: Arc<RouteMetrics>,
    pub(crate) status: u16,
    pub(crate) started: Instant,
    pub(crate) activity: Option<Arc<Activity>>,
}

impl Drop for Done {
    fn drop(&mut self) {
        self.route.record(self.status, self.started.elapsed());
        if let Some(activity) = &self.activity {
            activity.request_done();
        }
    }
}

/// Requests in flight on a connection and when the last one ended.
#[derive(Debug)]
pub(crate) struct Activity {
    opened: tokio::time::Instant,
    inflight: AtomicU32,
    requests: AtomicU64,
    /// Milliseconds after `opened` when the last request ended.
    last_done_ms: AtomicU64,
}

impl Activity {
    pub(crate) fn new() -> Self {
        Self {
            opened: tokio::time::Instant::now(),
            inflight: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            last_done_ms: AtomicU64::new(0),
        }
    }

    pub(crate) fn request_started(&self) {
        self.inflight.fetch_add(1, Relaxed);
        self.requests.fetch_add(1, Relaxed);
    }

    pub(crate) fn request_done(&self) {
        self.inflight.fetch_sub(1, Relaxed);
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_done_ms.store(ms, Relaxed);
    }

    /// When the connection becomes closable for idleness, if nothing
    /// changes; `None` while a request is in flight.
    pub(crate) fn idle_deadline(
        &self,
        header: Duration,
        idle: Duration,
    ) -> Option<tokio::time::Instant> {
        if self.inflight.load(Relaxed) > 0 {
            return None;
        }
        Some(if self.requests.load(Relaxed) == 0 {
            self.opened + header
        } else {
            self.opened + Duration::from_millis(self.last_done_ms.load(Relaxed)) + idle
        })
    }
}
