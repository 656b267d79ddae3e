//! The tries of one proxied request: which endpoints it tried, and each
//! try's accounting (in flight while it lasts, its status and duration in
//! the endpoint's counters when it ends). Both front ends drive their
//! exchange through these, so retries, passive health and the status of
//! a failure are decided the same way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use http::HeaderMap;
use http::header::SET_COOKIE;
use pier_snapshot::RetryPolicy;

use super::Proxy;
use crate::balance::Choice;
use crate::metrics::Metrics;
use crate::upstream;

/// Endpoints a request already tried, on the stack: a route makes at most
/// 1 + 5 tries (`retries.attempts` is at most 5).
#[derive(Debug, Default)]
pub(crate) struct Tried {
    endpoints: [usize; 6],
    len: usize,
}

impl Tried {
    fn push(&mut self, endpoint: usize) {
        if let Some(slot) = self.endpoints.get_mut(self.len) {
            *slot = endpoint;
            self.len += 1;
        }
    }

    fn as_slice(&self) -> &[usize] {
        &self.endpoints[..self.len]
    }

    /// Starts the next try of a request on an endpoint it has not tried:
    /// [`NoEndpoint`] when the route has none to offer, [`Exhausted`]
    /// when every one was tried.
    ///
    /// [`NoEndpoint`]: upstream::Error::NoEndpoint
    /// [`Exhausted`]: upstream::Error::Exhausted
    pub(crate) fn next(
        &mut self,
        proxy: &Arc<Proxy>,
        choice: &Choice<'_>,
    ) -> Result<Try, upstream::Error> {
        let Some((index, mark)) = proxy.balancer.pick_affine(choice, self.as_slice()) else {
            return Err(if self.len == 0 {
                upstream::Error::NoEndpoint
            } else {
                upstream::Error::Exhausted
            });
        };
        let Some(&addr) = proxy.endpoints.get(index) else {
            proxy.balancer.release(index);
            return Err(upstream::Error::NoEndpoint);
        };
        self.push(index);
        Ok(Try {
            proxy: Arc::clone(proxy),
            index,
            addr,
            started: Instant::now(),
            status: 502,
            mark,
        })
    }

    /// Whether another try may follow a failed one.
    pub(crate) fn retry_left(&self, policy: &RetryPolicy) -> bool {
        self.len <= policy.attempts as usize
    }
}

/// One try on one endpoint, owning what it needs so it can outlive the
/// request future (an HTTP/2 response body ends after it): the endpoint is
/// counted in flight while it lasts, and its status and duration go to the
/// endpoint's counters when it ends.
#[derive(Debug)]
pub(crate) struct Try {
    proxy: Arc<Proxy>,
    pub(crate) index: usize,
    pub(crate) addr: SocketAddr,
    started: Instant,
    /// What the try ended with; 502 (or 504) unless set when it succeeds.
    pub(crate) status: u16,
    /// The response sets the affinity cookie naming this endpoint.
    mark: bool,
}

impl Try {
    /// Whether [`mark`](Try::mark) adds a field: the response head must
    /// then go through a header map.
    pub(crate) fn marks(&self) -> bool {
        self.mark
    }

    /// The response phase of session affinity: sets the cookie naming
    /// this try's endpoint when the request did not carry it.
    pub(crate) fn mark(&self, headers: &mut HeaderMap) {
        if let (true, Some(cookie)) = (self.mark, self.proxy.cookies.get(self.index)) {
            headers.append(SET_COOKIE, cookie.clone());
        }
    }

    /// Time since the endpoint was picked.
    pub(crate) fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Records the backend's answer (passive health, the try's status).
    /// Returns whether to try another endpoint: a 502/503/504 the route
    /// retries, when `may_retry` (a retry is left and nothing streamed
    /// from the client); such a retry is counted.
    pub(crate) fn answered(&mut self, code: u16, may_retry: bool, metrics: &Metrics) -> bool {
        let failed = matches!(code, 502..=504);
        self.proxy.record(self.index, !failed, metrics);
        self.status = code;
        let again = failed && may_retry && self.proxy.retries.statuses.contains(&code);
        if again {
            self.retried(metrics);
        }
        again
    }

    /// Records a failed try: passive health when the endpoint is to blame,
    /// its status; returns whether another endpoint may be tried (nothing
    /// was sent, a retry is left and the route retries connect failures),
    /// counting that retry.
    pub(crate) fn failed(
        &mut self,
        error: upstream::Error,
        retry_left: bool,
        metrics: &Metrics,
    ) -> bool {
        self.proxy.record(self.index, false, metrics);
        self.status = error.status().as_u16();
        let again = error.nothing_sent() && retry_left && self.proxy.retries.connect_failure;
        if again {
            self.retried(metrics);
        }
        again
    }

    /// Counts a failed try that goes to another endpoint.
    fn retried(&self, metrics: &Metrics) {
        metrics.upstream_retries.fetch_add(1, Relaxed);
        if let Some(stats) = self.proxy.stats.get(self.index) {
            stats.retries.fetch_add(1, Relaxed);
        }
    }
}

impl Drop for Try {
    fn drop(&mut self) {
        self.proxy.balancer.release(self.index);
        if let Some(stats) = self.proxy.stats.get(self.index) {
            stats.tries.record(self.status, self.started.elapsed());
        }
    }
}
