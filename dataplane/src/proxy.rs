//! `ProxyRoute`: the compiled handler, the per-worker upstream connection
//! pool, and the pure parts of forwarding (upstream request head, client
//! response head, hop-by-hop rules). The exchange itself runs in the
//! HTTP/1.1 engine (`h1/proxy.rs`), which owns the client connection.
//!
//! Limits: `--upstream-idle` idle upstream connections per endpoint and
//! worker (`pier_dataplane_upstream_idle_connections`); response
//! heads up to `--max-header-size`; bodies are read through one
//! [`BUFFER`]-byte buffer per exchange, and held for a slow client in the
//! route's buffer (see `spool`) within `--buffer-memory` and
//! `--buffer-disk`.

pub(crate) mod chunked;
mod ring;
mod schedule;
pub(crate) mod sendfile;

use std::cell::Cell;
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName, HeaderValue};
use pier_snapshot::{Balance, EjectionPolicy, HashKey, HeaderEdits, ProxyAction, RetryPolicy};
use tokio::net::TcpStream;

use self::ring::Ring;
use self::schedule::Schedule;
use crate::metrics::{ConnectionGauges, EndpointStats, Metrics, Upstream};
use crate::service::ProxyTarget;
use crate::table::{Handler, Table};

/// Bytes moved per read while relaying a body.
pub(crate) const BUFFER: usize = 64 * 1024;

/// A compiled `ProxyRoute` action.
#[derive(Debug)]
pub(crate) struct Proxy {
    pub(crate) endpoints: Box<[SocketAddr]>,
    weights: Box<[u32]>,
    /// Requests in flight per endpoint, over all workers.
    inflight: Box<[AtomicU32]>,
    /// Failures in a row per endpoint (passive health).
    failures: Box<[AtomicU32]>,
    /// Until when (`clock_ms`) each endpoint is ejected.
    ejected_until: Box<[AtomicU64]>,
    /// Per endpoint counters, kept across snapshots.
    pub(crate) stats: Box<[Arc<EndpointStats>]>,
    /// Per endpoint: open connections to its address (shared by every
    /// route using that address).
    connections: Box<[Arc<AtomicI64>]>,
    pub(crate) retries: RetryPolicy,
    ejection: EjectionPolicy,
    picker: Picker,
    pub(crate) rewrite_prefix: Option<Box<[u8]>>,
    pub(crate) rewrite_host: Option<HeaderValue>,
    pub(crate) request_edits: Edits,
    pub(crate) response_edits: Edits,
    pub(crate) connect_timeout: Duration,
    pub(crate) response_header_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    /// X-Sendfile roots (none: the headers pass through).
    pub(crate) sendfile: sendfile::Roots,
    /// TLS towards the backends.
    upstream_tls: Option<UpstreamTls>,
    /// Body buffering.
    pub(crate) buffering: pier_snapshot::Buffering,
}

/// The compiled balancer.
#[derive(Debug)]
enum Picker {
    /// No endpoint has weight: every request gets 503.
    Nothing,
    RoundRobin(Schedule),
    Hash {
        ring: Ring,
        key: HashKey,
        bound: Option<u32>,
    },
    LeastRequest,
}

/// What a balancer may look at in a request.
#[derive(Debug)]
pub(crate) struct Choice<'a> {
    pub(crate) uri: &'a str,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) client: Option<IpAddr>,
}

/// An endpoint chosen for one request; counted in flight until dropped.
#[derive(Debug)]
pub(crate) struct Picked<'a> {
    pub(crate) index: usize,
    pub(crate) addr: SocketAddr,
    inflight: &'a AtomicU32,
}

impl Drop for Picked<'_> {
    fn drop(&mut self) {
        self.inflight.fetch_sub(1, Relaxed);
    }
}

/// Endpoints a request already tried, on the stack: a route makes at most
/// 1 + 5 tries (`retries.attempts` is at most 5).
#[derive(Debug, Default)]
pub(crate) struct Tried {
    endpoints: [usize; 6],
    len: usize,
}

impl Tried {
    pub(crate) fn push(&mut self, endpoint: usize) {
        if let Some(slot) = self.endpoints.get_mut(self.len) {
            *slot = endpoint;
            self.len += 1;
        }
    }

    pub(crate) fn as_slice(&self) -> &[usize] {
        &self.endpoints[..self.len]
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Starts the next try of a request on an endpoint it has not tried:
    /// 503 when the route has no endpoint to offer, 502 when every one
    /// was tried.
    pub(crate) fn next(
        &mut self,
        proxy: &Proxy,
        choice: &Choice<'_>,
        target: &ProxyTarget,
    ) -> Result<Try, http::StatusCode> {
        let Some(picked) = proxy.pick(choice, self.as_slice()) else {
            return Err(if self.is_empty() {
                http::StatusCode::SERVICE_UNAVAILABLE
            } else {
                http::StatusCode::BAD_GATEWAY
            });
        };
        self.push(picked.index);
        Ok(Try::new(picked, target))
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
    table: Arc<Table>,
    route: usize,
    pub(crate) index: usize,
    pub(crate) addr: SocketAddr,
    started: std::time::Instant,
    /// What the try ended with; 502 (or 504) unless set when it succeeds.
    pub(crate) status: u16,
}

impl Try {
    /// Takes over `picked`'s in-flight count.
    pub(crate) fn new(picked: Picked<'_>, target: &ProxyTarget) -> Self {
        let (index, addr) = (picked.index, picked.addr);
        // The count is released by this try's drop instead.
        std::mem::forget(picked);
        Self {
            table: Arc::clone(&target.table),
            route: target.route,
            index,
            addr,
            started: std::time::Instant::now(),
            status: 502,
        }
    }

    /// Time since the endpoint was picked.
    pub(crate) fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    fn proxy(&self) -> Option<&Proxy> {
        match &self.table.routes.get(self.route)?.handler {
            Handler::Proxy(proxy) => Some(proxy),
            Handler::Static(_) => None,
        }
    }

    /// Records the backend's answer (passive health, the try's status).
    /// Returns whether to try another endpoint: a 502/503/504 the route
    /// retries, when `may_retry` (a retry is left and nothing streamed
    /// from the client); such a retry is counted.
    pub(crate) fn answered(
        &mut self,
        code: u16,
        proxy: &Proxy,
        may_retry: bool,
        metrics: &Metrics,
    ) -> bool {
        let failed = matches!(code, 502..=504);
        proxy.record(self.index, !failed, metrics);
        self.status = code;
        let again = failed && may_retry && proxy.retries.statuses.contains(&code);
        if again {
            self.retried(metrics);
        }
        again
    }

    /// Counts a failed try that goes to another endpoint.
    pub(crate) fn retried(&self, metrics: &Metrics) {
        metrics.upstream_retries.fetch_add(1, Relaxed);
        if let Some(stats) = self.proxy().and_then(|p| p.stats.get(self.index)) {
            stats.retries.fetch_add(1, Relaxed);
        }
    }
}

impl Drop for Try {
    fn drop(&mut self) {
        let Some(proxy) = self.proxy() else { return };
        if let Some(inflight) = proxy.inflight.get(self.index) {
            inflight.fetch_sub(1, Relaxed);
        }
        if let Some(stats) = proxy.stats.get(self.index) {
            stats.tries.record(self.status, self.started.elapsed());
        }
    }
}

/// Header edits ready to apply.
#[derive(Debug, Default)]
pub(crate) struct Edits {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl Edits {
    fn new(edits: &HeaderEdits) -> Self {
        // The compiler checked names and values; anything still refused
        // here is skipped rather than sent.
        let pair = |(n, v): &(String, String)| {
            Some((
                HeaderName::from_bytes(n.as_bytes()).ok()?,
                HeaderValue::from_str(v).ok()?,
            ))
        };
        Self {
            set: edits.set.iter().filter_map(pair).collect(),
            add: edits.add.iter().filter_map(pair).collect(),
            remove: edits
                .remove
                .iter()
                .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .collect(),
        }
    }

    /// True when there is nothing to do.
    pub(crate) fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    /// Whether a field of this name is removed or replaced.
    pub(crate) fn drops(&self, name: &HeaderName) -> bool {
        self.remove.contains(name) || self.set.iter().any(|(n, _)| n == name)
    }

    /// Applies remove, then set, then add.
    pub(crate) fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
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
        let weights: Vec<u32> = usable.iter().map(|(_, _, w)| *w).collect();
        let picker = match &action.balancer {
            _ if weights.iter().all(|&w| w == 0) => Picker::Nothing,
            Balance::RoundRobin => {
                Schedule::new(&weights).map_or(Picker::Nothing, Picker::RoundRobin)
            }
            Balance::LeastRequest => Picker::LeastRequest,
            Balance::ConsistentHash {
                key,
                bounded_load_permille,
            } => {
                let nodes: Vec<(&str, u32)> = usable.iter().map(|(_, id, w)| (*id, *w)).collect();
                Ring::new(&nodes).map_or(Picker::Nothing, |ring| Picker::Hash {
                    ring,
                    key: key.clone(),
                    bound: *bounded_load_permille,
                })
            }
        };
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
            picker,
            inflight: usable.iter().map(|_| AtomicU32::new(0)).collect(),
            failures: usable.iter().map(|_| AtomicU32::new(0)).collect(),
            ejected_until: usable.iter().map(|_| AtomicU64::new(0)).collect(),
            retries: action.retries.clone(),
            ejection: action.ejection,
            weights: weights.into(),
            endpoints: usable.iter().map(|(a, _, _)| *a).collect(),
            rewrite_prefix: action
                .rewrite_prefix
                .as_deref()
                .map(|p| p.as_bytes().into()),
            rewrite_host: action
                .rewrite_host
                .as_deref()
                .and_then(|h| HeaderValue::from_str(h).ok()),
            request_edits: Edits::new(&action.request_headers),
            response_edits: Edits::new(&action.response_headers),
            connect_timeout: ms(action.timeouts.connect_ms),
            response_header_timeout: ms(action.timeouts.response_header_ms),
            idle_timeout: ms(action.timeouts.idle_ms),
            sendfile: sendfile::Roots::new(&action.sendfile_roots),
            upstream_tls: action.upstream_tls.as_ref().and_then(UpstreamTls::new),
            buffering: action.buffering,
        }
    }

    /// An endpoint for a request by the route's balancer, other than those
    /// in `tried`, and not ejected unless every endpoint left is (then
    /// ejected ones are tried anyway, rather than failing everything).
    /// `None` when no endpoint is left.
    pub(crate) fn pick(&self, choice: &Choice<'_>, tried: &[usize]) -> Option<Picked<'_>> {
        let now = clock_ms();
        let fresh = |i: usize| !tried.contains(&i);
        let healthy = |i: usize| fresh(i) && self.ejected_until[i].load(Relaxed) <= now;
        let i = self
            .choose(choice, &healthy)
            .or_else(|| self.choose(choice, &fresh))?;
        let inflight = self.inflight.get(i)?;
        inflight.fetch_add(1, Relaxed);
        Some(Picked {
            index: i,
            addr: *self.endpoints.get(i)?,
            inflight,
        })
    }

    fn choose(&self, choice: &Choice<'_>, usable: &dyn Fn(usize) -> bool) -> Option<usize> {
        match &self.picker {
            Picker::Nothing => None,
            Picker::RoundRobin(schedule) => (0..schedule.len())
                .map(|_| schedule.pick())
                .find(|&i| usable(i)),
            Picker::Hash { ring, key, bound } => {
                let key = hash_key(key, choice);
                let load = |i: usize| self.inflight.get(i).map_or(0, |l| l.load(Relaxed));
                ring.pick(key, &load, *bound, usable)
            }
            Picker::LeastRequest => self.least_request(usable),
        }
    }

    /// Power of two choices: two distinct random endpoints with weight,
    /// the one with fewer requests in flight per unit of weight.
    fn least_request(&self, usable: &dyn Fn(usize) -> bool) -> Option<usize> {
        // The `k`th usable endpoint with weight, without collecting them.
        let usable = |i: &usize| self.weights[*i] > 0 && usable(*i);
        let n = (0..self.weights.len()).filter(usable).count();
        if n == 0 {
            return None;
        }
        let nth = |k: usize| (0..self.weights.len()).filter(usable).nth(k);
        let first = random() as usize % n;
        let second = (first + 1 + random() as usize % n.saturating_sub(1).max(1)) % n;
        let (a, b) = (nth(first)?, nth(second)?);
        let cost = |i: usize| {
            u64::from(self.inflight[i].load(Relaxed)) * 1_000_000
                / u64::from(self.weights[i].max(1))
        };
        Some(if cost(b) < cost(a) { b } else { a })
    }

    /// Records how an exchange with endpoint `i` went: a success clears
    /// its failures; `consecutive_failures` failures in a row eject it for
    /// the ejection duration (counted).
    pub(crate) fn record(&self, i: usize, ok: bool, metrics: &Metrics) {
        let Some(failures) = self.failures.get(i) else {
            return;
        };
        if ok {
            failures.store(0, Relaxed);
            return;
        }
        let count = failures.fetch_add(1, Relaxed) + 1;
        if count < self.ejection.consecutive_failures {
            return;
        }
        failures.store(0, Relaxed);
        metrics.upstream_ejections.fetch_add(1, Relaxed);
        if let Some(stats) = self.stats.get(i) {
            stats.ejections.fetch_add(1, Relaxed);
        }
        let until = clock_ms() + self.ejection.duration_ms;
        self.ejected_until[i].store(until, Relaxed);
        tracing::warn!(endpoint = %self.endpoints[i], for_ms = self.ejection.duration_ms, "endpoint ejected after consecutive failures");
    }
}

impl Proxy {
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
    fn still_idle(&mut self) -> bool {
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

/// TLS towards a route's backends.
pub(crate) struct UpstreamTls {
    connector: tokio_rustls::TlsConnector,
    name: rustls::pki_types::ServerName<'static>,
    /// Tells this route's TLS connections apart in the pools from plain
    /// ones, and from those of routes verifying other names or CAs.
    id: u64,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl UpstreamTls {
    fn new(tls: &pier_snapshot::UpstreamTls) -> Option<Self> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in
            rustls::pki_types::CertificateDer::pem_slice_iter(tls.ca_pem.as_bytes()).flatten()
        {
            // A CA rustls cannot use is left out: fewer anchors trust less.
            let _ = roots.add(cert);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .ok()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = rustls::pki_types::ServerName::try_from(tls.server_name.clone()).ok()?;
        let mut key = tls.server_name.as_bytes().to_vec();
        key.extend_from_slice(tls.ca_pem.as_bytes());
        Some(Self {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            name,
            id: ring::hash(&key) | 1,
        })
    }
}

/// Where idle connections are pooled: the endpoint, and which TLS (0:
/// plain).
pub(crate) type PoolKey = (SocketAddr, u64);

impl Proxy {
    /// The pool key of this route's connections to `addr`.
    pub(crate) fn pool_key(&self, addr: SocketAddr) -> PoolKey {
        (addr, self.upstream_tls.as_ref().map_or(0, |t| t.id))
    }
}

/// Opens a connection to endpoint `index` of `proxy`: TCP within the
/// route's connect timeout, then TLS when the route asks for it (the
/// backend's certificate verified against the route's CA for its server
/// name). 502 when refused or not trusted, 504 on timeout, both counted.
pub(crate) async fn open(
    addr: SocketAddr,
    index: usize,
    proxy: &Proxy,
    metrics: &Metrics,
) -> Result<Connection, http::StatusCode> {
    let tcp = connect(addr, proxy, metrics).await?;
    let open = proxy
        .connections
        .get(index)
        .map(Arc::clone)
        .unwrap_or_default();
    let stream = match &proxy.upstream_tls {
        None => Stream::Plain(tcp),
        Some(tls) => {
            let handshake = tls.connector.connect(tls.name.clone(), tcp);
            match tokio::time::timeout(proxy.connect_timeout, handshake).await {
                Ok(Ok(stream)) => Stream::Tls(Box::new(stream)),
                Ok(Err(e)) => {
                    metrics.upstream_connect_errors.fetch_add(1, Relaxed);
                    tracing::warn!(%addr, error = %e, "upstream TLS handshake failed");
                    return Err(http::StatusCode::BAD_GATEWAY);
                }
                Err(_) => {
                    metrics.upstream_connect_errors.fetch_add(1, Relaxed);
                    return Err(http::StatusCode::GATEWAY_TIMEOUT);
                }
            }
        }
    };
    open.fetch_add(1, Relaxed);
    Ok(Connection { stream, open })
}

/// Opens a connection to an endpoint within the route's connect timeout:
/// 502 when refused, 504 when it times out (both counted).
pub(crate) async fn connect(
    addr: SocketAddr,
    proxy: &Proxy,
    metrics: &Metrics,
) -> Result<TcpStream, http::StatusCode> {
    metrics.upstream_connects.fetch_add(1, Relaxed);
    match tokio::time::timeout(proxy.connect_timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        Ok(Err(e)) => {
            metrics.upstream_connect_errors.fetch_add(1, Relaxed);
            tracing::debug!(%addr, error = %e, "upstream connect failed");
            Err(http::StatusCode::BAD_GATEWAY)
        }
        Err(_) => {
            metrics.upstream_connect_errors.fetch_add(1, Relaxed);
            Err(http::StatusCode::GATEWAY_TIMEOUT)
        }
    }
}

/// Methods that may be sent twice (RFC 9110 §9.2.2).
pub(crate) fn is_idempotent(method: &http::Method) -> bool {
    use http::Method;
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Milliseconds since the first call: the clock of ejections.
fn clock_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(std::time::Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The hash of a request's key; a missing header or cookie hashes as empty
/// (those requests share one endpoint).
fn hash_key(key: &HashKey, choice: &Choice<'_>) -> u64 {
    match key {
        HashKey::Uri => ring::hash(choice.uri.as_bytes()),
        HashKey::Header(name) => ring::hash(
            choice
                .headers
                .get(name.as_str())
                .map_or(&b""[..], HeaderValue::as_bytes),
        ),
        HashKey::Cookie(name) => {
            let value = choice
                .headers
                .get_all(http::header::COOKIE)
                .iter()
                .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
                .filter_map(|pair| {
                    let pair = pair.trim_ascii();
                    let eq = pair.iter().position(|&b| b == b'=')?;
                    (&pair[..eq] == name.as_bytes()).then(|| &pair[eq + 1..])
                })
                .next()
                .unwrap_or(b"");
            ring::hash(value)
        }
        HashKey::SourceIp => match choice.client {
            Some(IpAddr::V4(ip)) => ring::hash(&ip.octets()),
            Some(IpAddr::V6(ip)) => ring::hash(&ip.octets()),
            None => 0,
        },
    }
}

thread_local! {
    static RNG: Cell<u64> = Cell::new({
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        ring::hash(&seed.to_le_bytes()) | 1
    });
}

/// A per-worker xorshift generator: good enough to pick two endpoints.
fn random() -> u64 {
    RNG.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        x
    })
}

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1),
/// plus the framing fields the proxy writes itself.
const HOP_BY_HOP: [HeaderName; 9] = [
    http::header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::TE,
    http::header::TRAILER,
    http::header::TRANSFER_ENCODING,
    http::header::UPGRADE,
    http::header::CONTENT_LENGTH,
    http::header::EXPECT,
];

/// The client's address as the forwarding headers spell it, formatted once
/// per connection rather than per request.
#[derive(Clone, Debug)]
pub(crate) struct Peer {
    pub(crate) addr: SocketAddr,
    /// `X-Forwarded-For` form: `192.0.2.1`, `2001:db8::1`.
    ip: Box<str>,
    /// `Forwarded` form: `for=192.0.2.1`, `for="[2001:db8::1]"`.
    node: Box<str>,
}

impl Peer {
    pub(crate) fn new(addr: SocketAddr) -> Self {
        let ip = addr.ip();
        let node = match ip {
            IpAddr::V4(ip) => format!("for={ip}"),
            IpAddr::V6(ip) => format!("for=\"[{ip}]\""),
        };
        Self {
            addr,
            ip: ip.to_string().into(),
            node: node.into(),
        }
    }
}

/// Where upstream request fields go: a request head being written
/// (HTTP/1.1), or a header map (hyper's client).
pub(crate) trait Fields {
    /// One field whose value is the concatenation of `value`.
    fn field(&mut self, name: &HeaderName, value: &[&[u8]]);
}

impl Fields for Vec<u8> {
    fn field(&mut self, name: &HeaderName, value: &[&[u8]]) {
        self.extend_from_slice(name.as_str().as_bytes());
        self.extend_from_slice(b": ");
        for part in value {
            self.extend_from_slice(part);
        }
        self.extend_from_slice(b"\r\n");
    }
}

impl Fields for HeaderMap {
    fn field(&mut self, name: &HeaderName, value: &[&[u8]]) {
        // Every part is a checked header value, or the proxy's own ASCII.
        if let Ok(value) = HeaderValue::from_bytes(&value.concat()) {
            self.append(name.clone(), value);
        }
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Writes the request fields sent upstream, in one pass over the client's:
/// without hop-by-hop fields (and those `Connection` names) or `Host` (the
/// caller writes the upstream `Host`; `host` is the client's `Host` or
/// `:authority`); with `X-Forwarded-For` and `Forwarded` (RFC 7239)
/// appended to the client's, `X-Forwarded-Proto` and `-Host` set, `Via`
/// appended when configured; the route's edits decide last (`remove` and
/// `set` replace any of these, `add` appends).
pub(crate) fn upstream_fields(
    client: &HeaderMap,
    host: Option<&HeaderValue>,
    peer: Option<&Peer>,
    proto: &'static str,
    via: Option<&HeaderValue>,
    proxy: &Proxy,
    out: &mut impl Fields,
) {
    let edits = &proxy.request_edits;
    // Names `Connection` lists are hop-by-hop too (rare: collected only
    // when there is such a header).
    let named: Vec<HeaderName> = client
        .get_all(http::header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok())
        .collect();
    let ours = [
        &X_FORWARDED_FOR,
        &X_FORWARDED_PROTO,
        &X_FORWARDED_HOST,
        &http::header::FORWARDED,
        &http::header::VIA,
    ];
    // Which of ours the client sent too (looked up only then).
    let mut sent = [false; 5];
    for (name, value) in client {
        if let Some(i) = ours.iter().position(|o| *o == name) {
            sent[i] = true;
            continue;
        }
        let dropped = *name == http::header::HOST
            || HOP_BY_HOP.contains(name)
            || named.contains(name)
            || edits.drops(name);
        if !dropped {
            out.field(name, &[value.as_bytes()]);
        }
    }
    // Appended to what the client sent, joined into one field (many
    // backends read only the first).
    let mut joined = |name: &HeaderName, own: &[&[u8]]| {
        if edits.drops(name) {
            return;
        }
        let mut parts: Vec<&[u8]> = Vec::new();
        let was_sent = ours
            .iter()
            .position(|o| *o == name)
            .is_some_and(|i| sent[i]);
        if was_sent {
            for previous in client.get_all(name) {
                parts.extend_from_slice(&[previous.as_bytes(), b", "]);
            }
        }
        if parts.is_empty() {
            out.field(name, own);
        } else {
            parts.extend_from_slice(own);
            out.field(name, &parts);
        }
    };
    if let Some(peer) = peer {
        joined(&X_FORWARDED_FOR, &[peer.ip.as_bytes()]);
    }
    let host = host.map(HeaderValue::as_bytes);
    // `for=…;host=…;proto=…`; a host is a token or a quoted string (one
    // with a port needs the quotes; one with `"` or `\\` is left out).
    let tchar = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
    let mut element: [&[u8]; 7] = [b"", b"", b"", b"", b"", b"proto=", proto.as_bytes()];
    if let Some(peer) = peer {
        element[0] = peer.node.as_bytes();
        element[1] = b";";
    }
    match host {
        Some(h) if h.iter().all(tchar) => {
            element[2] = b"host=";
            element[3] = h;
            element[5] = b";proto=";
        }
        Some(h) if !h.iter().any(|b| *b == b'"' || *b == b'\\') => {
            element[2] = b"host=\"";
            element[3] = h;
            element[4] = b"\"";
            element[5] = b";proto=";
        }
        _ => {}
    }
    joined(&http::header::FORWARDED, &element);
    if let Some(via) = via {
        joined(&http::header::VIA, &[via.as_bytes()]);
    }
    if !edits.drops(&X_FORWARDED_PROTO) {
        out.field(&X_FORWARDED_PROTO, &[proto.as_bytes()]);
    }
    if let Some(host) = host.filter(|_| !edits.drops(&X_FORWARDED_HOST)) {
        out.field(&X_FORWARDED_HOST, &[host]);
    }
    for (name, value) in edits.set.iter().chain(&edits.add) {
        out.field(name, &[value.as_bytes()]);
    }
}

/// Appends this proxy to `Via` (its value is `1.1 NAME`).
pub(crate) fn append_via(headers: &mut HeaderMap, via: &HeaderValue) {
    let joined = match headers.get(http::header::VIA) {
        Some(previous) => {
            let mut value = previous.as_bytes().to_vec();
            value.extend_from_slice(b", ");
            value.extend_from_slice(via.as_bytes());
            HeaderValue::from_bytes(&value).ok()
        }
        None => Some(via.clone()),
    };
    if let Some(joined) = joined {
        headers.insert(http::header::VIA, joined);
    }
}

/// Removes hop-by-hop fields, including those the `Connection` header names.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(http::header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(http::header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The path sent upstream: the matched prefix replaced when the route
/// rewrites it. The request target's own encoding is kept when its raw path
/// starts with the matched prefix; otherwise the decoded path is
/// re-encoded.
pub(crate) fn upstream_path(
    raw_path: &str,
    query: Option<&str>,
    normalized: &[u8],
    prefix_len: usize,
    rewrite: Option<&[u8]>,
    out: &mut Vec<u8>,
) {
    match rewrite {
        None => out.extend_from_slice(raw_path.as_bytes()),
        Some(prefix) => {
            let matched = &normalized[..prefix_len.min(normalized.len())];
            let rest: Vec<u8> = match raw_path.as_bytes().strip_prefix(matched) {
                Some(rest) => rest.to_vec(),
                None => encode(&normalized[matched.len()..]),
            };
            if prefix == b"/" && rest.starts_with(b"/") {
                out.extend_from_slice(&rest);
            } else {
                out.extend_from_slice(prefix);
                if rest.is_empty() && prefix.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(&rest);
            }
        }
    }
    if let Some(query) = query {
        out.push(b'?');
        out.extend_from_slice(query.as_bytes());
    }
}

/// Percent-encodes what may not appear raw in a path.
fn encode(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len());
    for &b in path {
        if b.is_ascii_alphanumeric() || b"/-._~!$&'()*+,;=:@".contains(&b) {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

thread_local! {
    /// Idle upstream connections of this worker, by endpoint.
    static POOL: RefCell<HashMap<PoolKey, Vec<(Instant, Connection)>>> = RefCell::new(HashMap::new());
}

/// Takes an idle connection that is still open.
pub(crate) fn take_idle(key: PoolKey, metrics: &Metrics) -> Option<Connection> {
    POOL.with_borrow_mut(|pool| {
        let idle = pool.get_mut(&key)?;
        while let Some((_, mut stream)) = idle.pop() {
            metrics.upstream_idle.fetch_sub(1, Relaxed);
            if stream.still_idle() {
                return Some(stream);
            }
        }
        None
    })
}

/// Keeps a connection whose exchange completed, if there is room.
pub(crate) fn put_idle(key: PoolKey, stream: Connection, max_idle: usize, metrics: &Metrics) {
    POOL.with_borrow_mut(|pool| {
        let idle = pool.entry(key).or_default();
        if idle.len() < max_idle {
            idle.push((Instant::now(), stream));
            metrics.upstream_idle.fetch_add(1, Relaxed);
        }
    });
}

/// Closes this worker's idle upstream connections unused for `limit`
/// (`--upstream-idle-timeout`), so a burst's connections do not stay open
/// (and hold memory) for good. Connections are taken newest first, so the
/// oldest are at the front.
pub(crate) fn expire_idle(limit: Duration, metrics: &Metrics) {
    POOL.with_borrow_mut(|pool| expire(pool, limit, metrics));
}

/// Drops the entries of an idle pool (newest last) older than `limit`.
pub(crate) fn expire<T>(
    pool: &mut HashMap<PoolKey, Vec<(Instant, T)>>,
    limit: Duration,
    metrics: &Metrics,
) {
    let now = Instant::now();
    pool.retain(|_, idle| {
        let old = idle.partition_point(|(since, _)| now.duration_since(*since) >= limit);
        idle.drain(..old);
        metrics.upstream_idle.fetch_sub(old as i64, Relaxed);
        idle.shrink_to_fit();
        !idle.is_empty()
    });
    pool.shrink_to_fit();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(raw: &str, query: Option<&str>, prefix_len: usize, rewrite: Option<&str>) -> String {
        let normalized = crate::files::path::normalize(raw).expect("valid path");
        let mut out = Vec::new();
        upstream_path(
            raw,
            query,
            &normalized,
            prefix_len,
            rewrite.map(str::as_bytes),
            &mut out,
        );
        String::from_utf8(out).expect("ASCII")
    }

    #[test]
    fn prefixes_are_replaced_and_encoding_kept() {
        assert_eq!(path("/api/users", Some("a=1"), 4, None), "/api/users?a=1");
        assert_eq!(path("/api/users", None, 4, Some("/v2")), "/v2/users");
        assert_eq!(path("/api/us%20ers", None, 4, Some("/v2")), "/v2/us%20ers");
        assert_eq!(path("/api", None, 4, Some("/v2")), "/v2");
        assert_eq!(path("/api/x", None, 4, Some("/")), "/x");
        assert_eq!(path("/%61pi/x y", None, 4, Some("/v2")), "/v2/x%20y");
    }

    #[test]
    fn hop_by_hop_fields_go_including_those_connection_names() {
        let mut headers = HeaderMap::new();
        for (n, v) in [
            ("connection", "keep-alive, X-Secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("x-kept", "yes"),
            ("content-length", "5"),
        ] {
            headers.append(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut headers);
        let left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-kept"]);
    }

    #[test]
    fn edits_remove_then_set_then_add() {
        let edits = Edits::new(&HeaderEdits {
            set: vec![("x-env".into(), "prod".into())],
            add: vec![("x-tag".into(), "b".into())],
            remove: vec!["server".into()],
        });
        let mut headers = HeaderMap::new();
        headers.insert("server", HeaderValue::from_static("backend"));
        headers.insert("x-env", HeaderValue::from_static("dev"));
        headers.insert("x-tag", HeaderValue::from_static("a"));
        edits.apply(&mut headers);
        assert!(headers.get("server").is_none());
        assert_eq!(headers["x-env"], "prod");
        let tags: Vec<_> = headers.get_all("x-tag").iter().collect();
        assert_eq!(tags, ["a", "b"]);
    }
}
