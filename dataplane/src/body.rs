//! The response body: empty, in memory, a file region, or several file
//! regions as `multipart/byteranges`. Files are read one bounded chunk per
//! poll, so a response never holds more than one chunk in memory and a slow
//! client slows the reads instead of growing a buffer.

use std::collections::VecDeque;
use std::io;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};

use crate::conn::Activity;
use crate::files::Opened;
use crate::metrics::RouteMetrics;

/// A response body. Its [`Done`] guard records the response in the route's
/// metrics when the body ends or is dropped (for example when the client
/// goes away mid-transfer).
#[derive(Debug)]
pub(crate) struct Body {
    kind: Kind,
    done: Option<Done>,
}

#[derive(Debug)]
enum Kind {
    Empty,
    Bytes(Option<Bytes>),
    File(Region),
    Multipart(Multipart),
}

impl Body {
    pub(crate) fn empty() -> Self {
        Self::from_kind(Kind::Empty)
    }

    pub(crate) fn bytes(bytes: impl Into<Bytes>) -> Self {
        Self::from_kind(Kind::Bytes(Some(bytes.into())))
    }

    /// `len` bytes of `file` from `start`, read `chunk` bytes at a time.
    pub(crate) fn file(file: Arc<Opened>, start: u64, len: u64, chunk: usize) -> Self {
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
        file: Arc<Opened>,
        parts: Vec<(Bytes, u64, u64)>,
        closing: Bytes,
        chunk: usize,
    ) -> Self {
        Self::from_kind(Kind::Multipart(Multipart {
            file,
            parts: parts.into(),
            current: None,
            closing: Some(closing),
            chunk,
        }))
    }

    fn from_kind(kind: Kind) -> Self {
        Self { kind, done: None }
    }

    /// Attaches the guard that accounts for this response.
    pub(crate) fn with_done(mut self, done: Done) -> Self {
        self.done = Some(done);
        self
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        let next = match &mut this.kind {
            Kind::Empty => None,
            Kind::Bytes(bytes) => bytes.take().map(Ok),
            Kind::File(region) => region.next_chunk(),
            Kind::Multipart(multipart) => multipart.next_chunk(),
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
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Bytes(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Kind::File(region) => SizeHint::with_exact(region.remaining),
            Kind::Multipart(_) => SizeHint::default(),
        }
    }
}

/// A file region still to send.
#[derive(Debug)]
struct Region {
    file: Arc<Opened>,
    pos: u64,
    remaining: u64,
    chunk: usize,
}

impl Region {
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
                .file
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
    file: Arc<Opened>,
    /// Part header, start, length.
    parts: VecDeque<(Bytes, u64, u64)>,
    current: Option<Region>,
    closing: Option<Bytes>,
    chunk: usize,
}

impl Multipart {
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
/// route's metrics, and the end of the request on its connection.
#[derive(Debug)]
pub(crate) struct Done {
    pub(crate) route: Arc<RouteMetrics>,
    pub(crate) status: u16,
    pub(crate) started: Instant,
    pub(crate) activity: Arc<Activity>,
}

impl Drop for Done {
    fn drop(&mut self) {
        self.route.record(self.status, self.started.elapsed());
        self.activity.request_done();
    }
}
