//! Listeners and workers: one thread per worker, each with its own
//! single-threaded runtime and its own `SO_REUSEPORT` listener, so the
//! kernel spreads connections and no request crosses threads (nginx's
//! worker model).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::AbortHandle;

use crate::dispatch::Shared;
use crate::front::hyper::{self as h2, Timeouts};
use crate::front::{h1, tls};
use crate::upstream;

/// Connection limits from the flags.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnLimits {
    pub(crate) h1: h1::Limits,
    pub(crate) max_concurrent_streams: u32,
    pub(crate) shutdown_grace: Duration,
}

/// What a worker watches for shutdown: `drain` asks connections to finish
/// (HTTP/2 GOAWAY; HTTP/1.1 reads `Shared::draining`), `stop` closes the
/// listeners and starts the grace period.
#[derive(Clone, Debug)]
pub(crate) struct Signals {
    pub(crate) drain: watch::Receiver<bool>,
    pub(crate) stop: watch::Receiver<bool>,
}

/// Binds `count` listeners to the same address with `SO_REUSEPORT`. With
/// port 0 the first socket picks the port and the others share it.
///
/// `SO_REUSEPORT` would also let a second process bind the same address
/// and silently take half the connections; a probe bound without it first
/// makes that an `EADDRINUSE` error, as nginx gives.
pub(crate) fn bind(
    addr: SocketAddr,
    count: usize,
    backlog: i32,
) -> io::Result<Vec<std::net::TcpListener>> {
    if addr.port() != 0 {
        let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        // Only TIME_WAIT leftovers of an earlier run may share the port.
        probe.set_reuse_address(true)?;
        probe.bind(&addr.into())?;
    }
    let mut listeners = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(backlog)?;
        let listener: std::net::TcpListener = socket.into();
        addr = listener.local_addr()?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Starts a worker thread serving one listener until shutdown, then
/// draining its connections for up to the grace period.
pub(crate) fn spawn_worker(
    index: usize,
    listener: std::net::TcpListener,
    tls: (std::net::TcpListener, tokio_rustls::TlsAcceptor),
    shared: Arc<Shared>,
    protocol: ConnLimits,
    signals: Signals,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("pier-worker-{index}"))
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    tracing::error!(error = %e, "worker runtime cannot start");
                    return;
                }
            };
            runtime.block_on(accept_loop(listener, tls, shared, protocol, signals));
        })
}

async fn accept_loop(
    listener: std::net::TcpListener,
    (tls_listener, acceptor): (std::net::TcpListener, tokio_rustls::TlsAcceptor),
    shared: Arc<Shared>,
    protocol: ConnLimits,
    Signals {
        drain,
        stop: mut shutdown,
    }: Signals,
) {
    let (listener, tls_listener) = match (
        TcpListener::from_std(listener),
        TcpListener::from_std(tls_listener),
    ) {
        (Ok(listener), Ok(tls_listener)) => (listener, tls_listener),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "listener cannot be registered");
            return;
        }
    };
    let worker = Arc::new(Worker {
        h2: h2::builder(protocol.max_concurrent_streams, protocol.h1.max_header_size),
        limits: protocol.h1,
        timeouts: Timeouts {
            header: protocol.h1.header_timeout,
            idle: protocol.h1.idle_timeout,
        },
        acceptor,
        drain,
        open: OpenConnections::default(),
        shared: Arc::clone(&shared),
    });
    let open = &worker.open;
    let metrics = &shared.ctx.metrics;
    // This worker's buffer pools (every 10 s) and idle upstream
    // connections (every 10 s, or the idle timeout when shorter) shrink
    // back after bursts.
    let trimming = {
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            const TRIM: Duration = Duration::from_secs(10);
            let limit = shared.ctx.upstream.idle_timeout;
            let mut every = tokio::time::interval(limit.clamp(Duration::from_millis(100), TRIM));
            let mut trimmed = tokio::time::Instant::now();
            loop {
                every.tick().await;
                if trimmed.elapsed() >= TRIM {
                    crate::pool::trim();
                    trimmed = tokio::time::Instant::now();
                }
                upstream::idle::expire(limit, &shared.ctx.metrics);
                h2::proxy::expire_idle(limit, &shared.ctx.metrics);
            }
        })
    };
    loop {
        let (accepted, secure) = tokio::select! {
            accepted = listener.accept() => (accepted, false),
            accepted = tls_listener.accept() => (accepted, true),
            _ = shutdown.changed() => break,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // EMFILE and friends: count, back off briefly, keep serving.
                metrics.accept_errors.fetch_add(1, Relaxed);
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        metrics.connections_accepted.fetch_add(1, Relaxed);
        let open_now = metrics.connections_open.fetch_add(1, Relaxed);
        if open_now >= 0 && open_now as usize >= shared.max_connections {
            metrics.connections_open.fetch_sub(1, Relaxed);
            metrics.connections_rejected.fetch_add(1, Relaxed);
            reject(&stream);
            continue;
        }
        // Small responses must not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let idle = Arc::new(AtomicBool::new(false));
        let guard = OpenGuard::enter(&worker);
        let id = guard.id;
        let task = tokio::spawn(connection(stream, secure, guard, Arc::clone(&idle)));
        open.track(id, task.abort_handle(), idle);
    }
    trimming.abort();
    // Idle HTTP/1.1 connections close now; the others after their response.
    open.close_idle();
    drop(listener);
    let remaining = open.count();
    if remaining > 0 {
        tracing::info!(connections = remaining, "draining connections");
        if tokio::time::timeout(protocol.shutdown_grace, open.all_closed())
            .await
            .is_err()
        {
            tracing::warn!(
                connections = open.count(),
                "shutdown grace period over; closing the remaining connections"
            );
        }
    }
}

/// What a worker's connections share, behind one `Arc`: each connection's
/// task holds this pointer and little else, so an idle one stays small.
struct Worker {
    shared: Arc<Shared>,
    limits: h1::Limits,
    timeouts: Timeouts,
    h2: hyper::server::conn::http2::Builder<hyper_util::rt::TokioExecutor>,
    acceptor: tokio_rustls::TlsAcceptor,
    drain: watch::Receiver<bool>,
    open: OpenConnections,
}

/// Serves one connection: TLS (then HTTP/2 or HTTP/1.1 through hyper), or
/// Pier's HTTP/1.1 engine, which hands HTTP/2 connections to hyper.
/// `guard` keeps it counted and tracked until it ends.
///
/// An `async` block rather than an `async fn`: the block keeps what it
/// captures in place, where a function's future holds each argument twice
/// (once as passed, once bound), and this future is most of what an idle
/// connection costs.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn's future holds its arguments twice"
)]
fn connection(
    mut stream: TcpStream,
    secure: bool,
    guard: OpenGuard,
    idle: Arc<AtomicBool>,
) -> impl Future<Output = ()> {
    async move {
        let worker = &*guard.worker;
        if secure {
            // Boxed, as below: TLS state is larger still.
            let serve = tls::serve(
                stream,
                worker.acceptor.clone(),
                Arc::clone(&worker.shared),
                &worker.h2,
                worker.limits.max_header_size,
                worker.timeouts,
                worker.drain.clone(),
            );
            Box::pin(serve).await;
        } else if let h1::Outcome::H2(read) =
            h1::serve(&mut stream, &worker.shared, &worker.limits, &idle).await
        {
            let serve = h2::serve(
                stream,
                read,
                Arc::clone(&worker.shared),
                &worker.h2,
                worker.timeouts,
                worker.drain.clone(),
            );
            // Boxed so the HTTP/1.1 task, which most connections stay in,
            // is not as large as hyper's connection state.
            Box::pin(serve).await;
        }
    }
}

/// Answers a connection over the limit with a 503 and closes it, so the
/// client gets a clear answer instead of a hang.
fn reject(stream: &TcpStream) {
    const RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\nretry-after: 1\r\n\r\n";
    let _ = stream.try_write(RESPONSE);
}

/// A worker's open connections, so shutdown can close the idle ones at
/// once and wait for the rest. Touched once when a connection opens and
/// once when it closes, never per request.
#[derive(Debug, Default)]
struct OpenConnections {
    live: Mutex<HashMap<u64, Tracked>>,
    next_id: AtomicU64,
    closed: Notify,
}

#[derive(Debug)]
struct Tracked {
    abort: AbortHandle,
    /// Set by the connection while it waits for a request.
    idle: Arc<AtomicBool>,
}

/// Removes its connection when the task ends, however it ends.
struct OpenGuard {
    id: u64,
    worker: Arc<Worker>,
}

impl OpenGuard {
    fn enter(worker: &Arc<Worker>) -> Self {
        Self {
            id: worker.open.next_id.fetch_add(1, Relaxed),
            worker: Arc::clone(worker),
        }
    }
}

impl OpenConnections {
    fn track(&self, id: u64, abort: AbortHandle, idle: Arc<AtomicBool>) {
        // The task has not run yet (this runtime has one thread), so its
        // guard cannot have removed it already.
        self.lock().insert(id, Tracked { abort, idle });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Tracked>> {
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn count(&self) -> usize {
        self.lock().len()
    }

    /// Ends every connection waiting for a request. A request that raced
    /// in meanwhile is lost with its connection, as with any server closing
    /// an idle keep-alive connection; clients retry those.
    fn close_idle(&self) {
        for tracked in self.lock().values() {
            if tracked.idle.load(Relaxed) {
                tracked.abort.abort();
            }
        }
    }

    async fn all_closed(&self) {
        loop {
            let notified = self.closed.notified();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        let Worker { shared, open, .. } = &*self.worker;
        shared.ctx.metrics.connections_open.fetch_sub(1, Relaxed);
        let mut live = open.lock();
        live.remove(&self.id);
        if live.is_empty() {
            open.closed.notify_waiters();
        }
    }
}
