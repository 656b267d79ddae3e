//! `ProxyRoute`: the compiled handler (endpoints, balancer, counters,
//! timeouts, buffering), the tries of one request ([`Tried`], [`Try`]),
//! and the reading of a backend's HTTP/1.1 response body ([`reader`]).
//! The front ends drive the exchange; what they share lives here and
//! below (`balance`, `upstream`, `http::forward`).
//!
//! Limits: response heads up to `--max-header-size`; bodies are read
//! through one [`BUFFER`]-byte buffer per exchange, and held for a slow
//! client in the route's buffer (see `spool`) within `--buffer-memory` and
//! `--buffer-disk`.

pub(crate) mod reader;
pub(crate) mod sendfile;
mod tries;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::time::Duration;

use pier_snapshot::{ProxyAction, RetryPolicy};

pub(crate) use self::tries::{Tried, Try};
use http::HeaderValue;

use crate::balance::{self, Balancer};
use crate::metrics::{ConnectionGauges, EndpointStats, Metrics, Upstream};
use crate::upstream::{self, Dial, PoolKey, UpstreamTls};

/// Bytes moved per read while relaying a body.
pub(crate) const BUFFER: usize = 64 * 1024;

/// A compiled `ProxyRoute` action.
#[derive(Debug)]
pub(crate) struct Proxy {
    pub(crate) endpoints: Box<[SocketAddr]>,
    pub(crate) balancer: Balancer,
    /// Per endpoint counters, kept across snapshots.
    pub(crate) stats: Box<[Arc<EndpointStats>]>,
    /// Per endpoint: open connections to its address (shared by every
    /// route using that address).
    connections: Box<[Arc<AtomicI64>]>,
    pub(crate) retries: RetryPolicy,
    pub(crate) connect_timeout: Duration,
    pub(crate) response_header_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    /// X-Sendfile roots (none: the headers pass through).
    pub(crate) sendfile: sendfile::Roots,
    /// TLS towards the backends.
    upstream_tls: Option<UpstreamTls>,
    /// Body buffering.
    pub(crate) buffering: pier_snapshot::Buffering,
    /// Per endpoint: the `Set-Cookie` that keeps a client on it (empty
    /// without session affinity).
    cookies: Box<[HeaderValue]>,
}

impl Proxy {
    /// Compiles a route's action, keeping the endpoint counters `previous`
    /// (the route in the snapshot being replaced) had for the same
    /// addresses.
    pub(crate) fn new(
        action: &ProxyAction,
        previous: Option<&Proxy>,
        gauges: &ConnectionGauges,
    ) -> Self {
        let usable: Vec<(SocketAddr, &str, u32)> = action
            .endpoints
            .iter()
            .filter_map(|e| Some((e.address.parse().ok()?, e.identity.as_str(), e.weight)))
            .collect();
        let nodes: Vec<(&str, u32)> = usable.iter().map(|(_, id, w)| (*id, *w)).collect();
        let ms = Duration::from_millis;
        let kept = |addr: &SocketAddr| {
            let previous = previous?;
            let i = previous.endpoints.iter().position(|a| a == addr)?;
            previous.stats.get(i).map(Arc::clone)
        };
        Self {
            stats: usable
                .iter()
                .map(|(a, _, _)| kept(a).unwrap_or_default())
                .collect(),
            connections: usable.iter().map(|(a, _, _)| gauges.gauge(*a)).collect(),
            balancer: Balancer::new(
                &action.balancer,
                action.ejection,
                &nodes,
                action.affinity.as_ref().map(|a| a.cookie.as_str()),
            ),
            cookies: action.affinity.as_ref().map_or_else(Box::default, |a| {
                // Names and paths were checked by the compiler: every
                // value is a valid field, or affinity is off.
                usable
                    .iter()
                    .map(|(_, id, _)| balance::set_cookie(a, id))
                    .collect::<Option<_>>()
                    .unwrap_or_default()
            }),
            retries: action.retries.clone(),
            endpoints: usable.iter().map(|(a, _, _)| *a).collect(),
            connect_timeout: ms(action.timeouts.connect_ms),
            response_header_timeout: ms(action.timeouts.response_header_ms),
            idle_timeout: ms(action.timeouts.idle_ms),
            sendfile: sendfile::Roots::new(&action.sendfile_roots),
            upstream_tls: action.upstream_tls.as_ref().and_then(UpstreamTls::new),
            buffering: action.buffering,
        }
    }

    /// Records how an exchange with endpoint `i` went (passive health),
    /// counting an ejection.
    pub(crate) fn record(&self, i: usize, ok: bool, metrics: &Metrics) {
        if !self.balancer.record(i, ok) {
            return;
        }
        metrics.upstream_ejections.fetch_add(1, Relaxed);
        if let Some(stats) = self.stats.get(i) {
            stats.ejections.fetch_add(1, Relaxed);
        }
        if let Some(addr) = self.endpoints.get(i) {
            let for_ms = self.balancer.ejection_ms();
            tracing::warn!(endpoint = %addr, for_ms, "endpoint ejected after consecutive failures");
        }
    }

    /// The counters of each endpoint, for `/metrics`.
    pub(crate) fn upstreams<'a>(&'a self, route: &'a str) -> impl Iterator<Item = Upstream<'a>> {
        self.endpoints
            .iter()
            .zip(&self.stats)
            .map(move |(addr, stats)| Upstream {
                route,
                endpoint: addr.to_string(),
                stats,
            })
    }

    /// How to reach endpoint `index`, at `addr`.
    pub(crate) fn dial(&self, index: usize, addr: SocketAddr) -> Dial<'_> {
        static NONE: std::sync::LazyLock<Arc<AtomicI64>> = std::sync::LazyLock::new(Arc::default);
        Dial {
            addr,
            tls: self.upstream_tls.as_ref(),
            connect_timeout: self.connect_timeout,
            open: self.connections.get(index).unwrap_or(&NONE),
        }
    }

    /// The pool key of this route's connections to `addr`.
    pub(crate) fn pool_key(&self, addr: SocketAddr) -> PoolKey {
        (addr, self.upstream_tls.as_ref().map_or(0, UpstreamTls::id))
    }

    /// Opens a connection to endpoint `index` (see [`upstream::open`]).
    pub(crate) async fn open(
        &self,
        index: usize,
        addr: SocketAddr,
        metrics: &Metrics,
    ) -> Result<upstream::Connection, upstream::Error> {
        upstream::open(&self.dial(index, addr), metrics).await
    }
}
