//! Connections to backends: TCP within the route's connect timeout, then
//! TLS when the route asks for it; the per-worker pools of idle ones
//! ([`idle`]); forward-authentication checks ([`check`]); and [`Error`],
//! the one place where an upstream failure becomes 502, 503 or 504.
//!
//! Limits: `--upstream-idle` idle connections per endpoint and worker
//! (`pier_dataplane_upstream_idle_connections`), closed after
//! `--upstream-idle-timeout`.

pub(crate) mod check;
pub(crate) mod idle;
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::time::Duration;

use http::StatusCode;
use tokio::net::TcpStream;

pub(crate) use self::tls::UpstreamTls;
use crate::metrics::Metrics;

/// Why a try on an endpoint failed: where it failed says what the client
/// gets and whether another endpoint may be tried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Error {
    /// The route has no endpoint to offer.
    NoEndpoint,
    /// Every endpoint was tried.
    Exhausted,
    /// Refused, or the backend's certificate not trusted: nothing was sent.
    Connect,
    /// Connecting or the TLS handshake took longer than the route allows:
    /// nothing was sent.
    ConnectTimeout,
    /// The request went out and no usable response head came back.
    Exchange,
    /// The response head did not come in time.
    Timeout,
}

impl Error {
    /// The status the client gets.
    pub(crate) fn status(self) -> StatusCode {
        match self {
            Self::NoEndpoint => StatusCode::SERVICE_UNAVAILABLE,
            Self::Exhausted | Self::Connect | Self::Exchange => StatusCode::BAD_GATEWAY,
            Self::ConnectTimeout | Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Nothing reached the backend: the request can go to another endpoint
    /// whatever its method (when the route retries connect failures).
    pub(crate) fn nothing_sent(self) -> bool {
        matches!(self, Self::Connect | Self::ConnectTimeout)
    }
}

/// Where idle connections are pooled: the endpoint, and which TLS (0:
/// plain).
pub(crate) type PoolKey = (SocketAddr, u64);

/// How to reach one endpoint of a route.
#[derive(Debug)]
pub(crate) struct Dial<'a> {
    pub(crate) addr: SocketAddr,
    pub(crate) tls: Option<&'a UpstreamTls>,
    pub(crate) connect_timeout: Duration,
    /// The endpoint's open-connections gauge.
    pub(crate) open: &'a Arc<AtomicI64>,
}

/// An upstream connection, plain or TLS, counted in
/// `pier_dataplane_upstream_connections{endpoint}` while it is open.
#[derive(Debug)]
pub(crate) struct Connection {
    stream: Stream,
    open: Arc<AtomicI64>,
}

#[derive(Debug)]
enum Stream {
    Plain(TcpStream),
    /// Boxed: rustls' state is large.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Relaxed);
    }
}

impl Connection {
    /// Writes what the socket takes now without waiting: plain connections
    /// only (TLS answers `WouldBlock`, and the caller writes the usual way).
    pub(crate) fn try_write(&self, buf: &[u8]) -> std::io::Result<usize> {
        match &self.stream {
            Stream::Plain(tcp) => tcp.try_write(buf),
            Stream::Tls(_) => Err(std::io::ErrorKind::WouldBlock.into()),
        }
    }

    /// Whether an idle connection is still usable: it has nothing to read
    /// (a byte or an end of stream means the backend closed it or broke
    /// the protocol). A plain one the reactor did not see become readable
    /// costs no system call; a TLS one is polled once, which also takes in
    /// what TLS itself sends (session tickets) without counting it.
    pub(crate) fn still_idle(&mut self) -> bool {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        match &mut self.stream {
            Stream::Plain(tcp) => {
                if tcp.poll_read_ready(&mut cx).is_pending() {
                    return true;
                }
                let mut probe = [0u8; 1];
                matches!(tcp.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            }
            Stream::Tls(tls) => {
                let mut probe = [0u8; 1];
                let mut buf = tokio::io::ReadBuf::new(&mut probe);
                tokio::io::AsyncRead::poll_read(std::pin::Pin::new(&mut **tls), &mut cx, &mut buf)
                    .is_pending()
            }
        }
    }
}

macro_rules! on_stream {
    ($self:ident, $s:ident => $e:expr) => {
        match &mut $self.stream {
            Stream::Plain($s) => {
                let $s = std::pin::Pin::new($s);
                $e
            }
            Stream::Tls($s) => {
                let $s = std::pin::Pin::new(&mut **$s);
                $e
            }
        }
    };
}

impl tokio::io::AsyncRead for Connection {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        on_stream!(self, s => s.poll_read(cx, buf))
    }
}

impl tokio::io::AsyncWrite for Connection {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        on_stream!(self, s => s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        on_stream!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        on_stream!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        on_stream!(self, s => s.poll_shutdown(cx))
    }
}

/// Opens a connection: TCP within the connect timeout, then TLS when the
/// route asks for it (the backend's certificate verified against the
/// route's CA for its server name). Failures are counted.
pub(crate) async fn open(dial: &Dial<'_>, metrics: &Metrics) -> Result<Connection, Error> {
    let addr = dial.addr;
    let tcp = connect(addr, dial.connect_timeout, metrics).await?;
    let stream = match dial.tls {
        None => Stream::Plain(tcp),
        Some(tls) => match tokio::time::timeout(dial.connect_timeout, tls.connect(tcp)).await {
            Ok(Ok(stream)) => Stream::Tls(Box::new(stream)),
            Ok(Err(e)) => {
                metrics.upstream_connect_errors.fetch_add(1, Relaxed);
                tracing::warn!(%addr, error = %e, "upstream TLS handshake failed");
                return Err(Error::Connect);
            }
            Err(_) => {
                metrics.upstream_connect_errors.fetch_add(1, Relaxed);
                return Err(Error::ConnectTimeout);
            }
        },
    };
    dial.open.fetch_add(1, Relaxed);
    Ok(Connection {
        stream,
        open: Arc::clone(dial.open),
    })
}

/// Opens a TCP connection within `limit` (failures counted).
async fn connect(addr: SocketAddr, limit: Duration, metrics: &Metrics) -> Result<TcpStream, Error> {
    metrics.upstream_connects.fetch_add(1, Relaxed);
    match tokio::time::timeout(limit, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        Ok(Err(e)) => {
            metrics.upstream_connect_errors.fetch_add(1, Relaxed);
            tracing::debug!(%addr, error = %e, "upstream connect failed");
            Err(Error::Connect)
        }
        Err(_) => {
            metrics.upstream_connect_errors.fetch_add(1, Relaxed);
            Err(Error::ConnectTimeout)
        }
    }
}
