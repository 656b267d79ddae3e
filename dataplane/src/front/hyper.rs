//! HTTP/2 connections (h2c by prior knowledge; ALPN comes with TLS): the
//! HTTP/1.1 engine recognises the preface and hands the connection here,
//! where hyper serves it while a watchdog closes it when it stays idle too
//! long and asks it to finish gracefully when shutdown begins.
//!
//! Timeouts: a connection with no stream open for `--idle-timeout` is
//! closed; the first request must come within `--header-timeout`.

pub(crate) mod proxy;
mod service;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use self::service::Service;
use crate::body::Activity;
use crate::dispatch::Shared;

/// Connection timeouts from the flags.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timeouts {
    pub(crate) header: Duration,
    pub(crate) idle: Duration,
}

/// The HTTP/2 settings from the flags.
/// Bytes of unsent response data hyper buffers per HTTP/2 stream.
const SEND_BUFFER: usize = 64 * 1024;

pub(crate) fn builder(
    max_concurrent_streams: u32,
    max_header_size: usize,
) -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(max_concurrent_streams)
        // Unsent response bytes hyper keeps per stream beyond the piece
        // being written (its default is 400 KB: with 128 streams a slow
        // client could make a connection hold 50 MB outside every budget).
        .max_send_buf_size(SEND_BUFFER)
        .max_header_list_size(u32::try_from(max_header_size).unwrap_or(u32::MAX));
    builder
}

/// Serves an HTTP/2 connection to its end; `read` holds the bytes the
/// HTTP/1.1 engine already took from the socket.
pub(crate) async fn serve(
    stream: TcpStream,
    read: BytesMut,
    shared: Arc<Shared>,
    builder: &http2::Builder<TokioExecutor>,
    timeouts: Timeouts,
    shutdown: watch::Receiver<bool>,
) {
    let peer = stream.peer_addr().ok();
    let io = Prefixed { read, io: stream };
    serve_h2(io, peer, false, shared, builder, timeouts, shutdown).await;
}

/// Serves HTTP/2 on any connection (h2c after the preface, or TLS by ALPN).
pub(crate) async fn serve_h2<I>(
    io: I,
    peer: Option<std::net::SocketAddr>,
    secure: bool,
    shared: Arc<Shared>,
    builder: &http2::Builder<TokioExecutor>,
    timeouts: Timeouts,
    shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (service, activity) = Service::new(&shared, peer, secure);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    supervise(
        conn,
        |c| c.graceful_shutdown(),
        &activity,
        &shared,
        timeouts,
        shutdown,
    )
    .await;
}

/// Serves HTTP/1.1 with hyper on a connection Pier's own engine does not
/// take (TLS, whose bytes cannot go out with `sendfile`), with the same
/// service, limits and timeouts.
pub(crate) async fn serve_h1<I>(
    io: I,
    peer: Option<std::net::SocketAddr>,
    shared: Arc<Shared>,
    max_header_size: usize,
    timeouts: Timeouts,
    shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (service, activity) = Service::new(&shared, peer, true);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header)
        .max_buf_size(max_header_size.max(8192));
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    supervise(
        conn,
        |c| c.graceful_shutdown(),
        &activity,
        &shared,
        timeouts,
        shutdown,
    )
    .await;
}

/// Drives a hyper connection to its end, closing it when it stays idle
/// too long and asking it to finish gracefully when shutdown begins.
async fn supervise<C, E>(
    mut conn: Pin<&mut C>,
    graceful: fn(Pin<&mut C>),
    activity: &Activity,
    shared: &Shared,
    timeouts: Timeouts,
    mut shutdown: watch::Receiver<bool>,
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut draining = *shutdown.borrow();
    if draining {
        graceful(conn.as_mut());
    }
    loop {
        // Look again at least once per shortest timeout: the deadline moves
        // as requests come and go, and nothing else wakes this loop.
        let recheck = Instant::now() + timeouts.header.min(timeouts.idle);
        let deadline = activity
            .idle_deadline(timeouts.header, timeouts.idle)
            .map_or(recheck, |d| d.min(recheck));
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = tokio::time::sleep_until(deadline) => {
                if activity.idle_deadline(timeouts.header, timeouts.idle).is_some_and(|d| d <= Instant::now()) {
                    shared.ctx.metrics.connections_timed_out.fetch_add(1, Relaxed);
                    return;
                }
            }
            _ = shutdown.changed(), if !draining => {
                draining = true;
                graceful(conn.as_mut());
            }
        }
    }
}

/// A stream whose first bytes were already read: they are replayed first.
#[derive(Debug)]
struct Prefixed<T> {
    read: BytesMut,
    io: T,
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.read.is_empty() {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        }
        let n = self.read.len().min(buf.remaining());
        buf.put_slice(&self.read[..n]);
        self.read.advance(n);
        if self.read.is_empty() {
            // Free the engine's buffer once replayed.
            self.read = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
