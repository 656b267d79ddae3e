//! One client connection: hyper serves it (HTTP/1.1 or h2c by prior
//! knowledge), while a watchdog closes it when it stays idle too long and
//! asks it to finish gracefully when shutdown begins.
//!
//! Timeouts:
//! - `--header-timeout`: a new connection must start a request within it,
//!   and on HTTP/1.1 hyper bounds each request head (and so the keep-alive
//!   wait for the next one) by it too (slowloris);
//! - `--idle-timeout`: a connection with no request in flight for this long
//!   is closed, whatever its protocol.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::service::{Service, Shared};

/// Requests in flight on a connection and when the last one ended.
#[derive(Debug)]
pub(crate) struct Activity {
    opened: Instant,
    inflight: AtomicU32,
    requests: AtomicU64,
    /// Milliseconds after `opened` when the last request ended.
    last_done_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
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
    fn idle_deadline(&self, timeouts: &Timeouts) -> Option<Instant> {
        if self.inflight.load(Relaxed) > 0 {
            return None;
        }
        Some(if self.requests.load(Relaxed) == 0 {
            self.opened + timeouts.header
        } else {
            self.opened + Duration::from_millis(self.last_done_ms.load(Relaxed)) + timeouts.idle
        })
    }
}

/// Connection timeouts from the flags.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timeouts {
    pub(crate) header: Duration,
    pub(crate) idle: Duration,
}

/// Serves one accepted connection to its end.
pub(crate) async fn serve(
    stream: TcpStream,
    shared: Arc<Shared>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    timeouts: Timeouts,
    mut shutdown: watch::Receiver<bool>,
) {
    let activity = Arc::new(Activity::new());
    let service = Service {
        shared: Arc::clone(&shared),
        activity: Arc::clone(&activity),
    };
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let mut draining = *shutdown.borrow();
    if draining {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        // Look again at least once per shortest timeout: the deadline moves
        // as requests come and go, and nothing else wakes this loop.
        let recheck = Instant::now() + timeouts.header.min(timeouts.idle);
        let deadline = activity
            .idle_deadline(&timeouts)
            .map_or(recheck, |d| d.min(recheck));
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = tokio::time::sleep_until(deadline) => {
                if activity.idle_deadline(&timeouts).is_some_and(|d| d <= Instant::now()) {
                    shared.metrics.connections_timed_out.fetch_add(1, Relaxed);
                    return;
                }
            }
            _ = shutdown.changed(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}
