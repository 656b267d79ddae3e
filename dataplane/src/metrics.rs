//! The dataplane's Prometheus metrics: plain atomics updated on the request
//! path (no locks, no map lookups), rendered in the text format on scrape.
//!
//! Per-route counters live in the routing table entry and are carried over
//! to the next table when a snapshot replaces it, so they stay monotonic for
//! as long as the route exists.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;

/// Bytes of file contents held by every worker's cache (and by responses
/// still using evicted entries).
pub(crate) static FILE_CONTENT_BYTES: AtomicI64 = AtomicI64::new(0);

/// Counters shared by every worker's open-file cache.
#[derive(Debug, Default)]
pub(crate) struct CacheCounters {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) flushes: AtomicU64,
    pub(crate) entries: AtomicI64,
}

/// Status codes with their own counter; others count under their class.
const CODES: [u16; 17] = [
    200, 204, 206, 301, 304, 400, 403, 404, 405, 408, 412, 414, 416, 431, 500, 502, 503,
];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Upper bounds of the latency histogram buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];

/// Counters of one route (or of requests no route took).
#[derive(Debug, Default)]
pub(crate) struct RouteMetrics {
    codes: [AtomicU64; CODES.len()],
    classes: [AtomicU64; CLASSES.len()],
    bytes: AtomicU64,
    duration: Histogram,
}

impl RouteMetrics {
    /// Counts a finished response.
    pub(crate) fn record(&self, status: u16, elapsed: Duration) {
        match CODES.iter().position(|&c| c == status) {
            Some(i) => self.codes[i].fetch_add(1, Relaxed),
            None => {
                let class = usize::from(status / 100).clamp(1, 5) - 1;
                self.classes[class].fetch_add(1, Relaxed)
            }
        };
        self.duration.observe(elapsed);
    }

    /// Counts body bytes handed to the connection.
    pub(crate) fn sent(&self, bytes: u64) {
        self.bytes.fetch_add(bytes, Relaxed);
    }

    /// `pier_dataplane_{name}{labels,code="…"}` for every code seen.
    fn render_requests(&self, name: &str, labels: &str, out: &mut Rendered) {
        let codes = CODES.iter().map(u16::to_string).zip(&self.codes);
        let classes = CLASSES.iter().map(|c| (*c).to_owned()).zip(&self.classes);
        for (code, n) in codes.chain(classes) {
            let n = n.load(Relaxed);
            if n > 0 {
                out.line(format_args!(
                    "pier_dataplane_{name}{{{labels},code=\"{code}\"}} {n}"
                ));
            }
        }
    }

    fn render_bytes(&self, labels: &str, out: &mut Rendered) {
        let n = self.bytes.load(Relaxed);
        out.line(format_args!(
            "pier_dataplane_response_body_bytes_total{{{labels}}} {n}"
        ));
    }
}

#[derive(Debug, Default)]
pub(crate) struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub(crate) fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&b| secs <= b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Relaxed);
    }

    /// `pier_dataplane_{name}_bucket{labels,le="…"}`, `_sum` and `_count`.
    fn render(&self, name: &str, labels: &str, out: &mut Rendered) {
        let comma = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, n) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += n.load(Relaxed);
            out.line(format_args!(
                "pier_dataplane_{name}_bucket{{{labels}{comma}le=\"{bound}\"}} {cumulative}"
            ));
        }
        let count = self.count.load(Relaxed);
        let sum = self.sum_nanos.load(Relaxed) as f64 / 1e9;
        out.line(format_args!(
            "pier_dataplane_{name}_bucket{{{labels}{comma}le=\"+Inf\"}} {count}"
        ));
        if labels.is_empty() {
            out.line(format_args!("pier_dataplane_{name}_sum {sum}"));
            out.line(format_args!("pier_dataplane_{name}_count {count}"));
        } else {
            out.line(format_args!("pier_dataplane_{name}_sum{{{labels}}} {sum}"));
            out.line(format_args!(
                "pier_dataplane_{name}_count{{{labels}}} {count}"
            ));
        }
    }
}

/// Process-wide metrics of the dataplane.
#[derive(Debug)]
pub(crate) struct Metrics {
    pub(crate) connections_open: AtomicI64,
    /// Connections holding buffers: reading a request or writing a response.
    pub(crate) connections_active: AtomicI64,
    pub(crate) connections_accepted: AtomicU64,
    pub(crate) connections_rejected: AtomicU64,
    pub(crate) connections_timed_out: AtomicU64,
    pub(crate) accept_errors: AtomicU64,
    /// Requests no route took (bad paths, no match).
    pub(crate) unrouted: std::sync::Arc<RouteMetrics>,
    pub(crate) snapshot_loads: AtomicU64,
    pub(crate) snapshot_load_errors: AtomicU64,
    pub(crate) snapshot_invalid_routes: AtomicU64,
    pub(crate) snapshot_applied_unix: AtomicU64,
    pub(crate) snapshot_version: ArcSwap<String>,
    pub(crate) file_cache: CacheCounters,
    /// Idle upstream connections pooled over all workers.
    pub(crate) upstream_idle: AtomicI64,
    /// Upstream connections opened.
    pub(crate) upstream_connects: AtomicU64,
    /// Upstream connections that failed or timed out opening.
    pub(crate) upstream_connect_errors: AtomicU64,
    /// Upstream exchanges that timed out (response head or body).
    pub(crate) upstream_timeouts: AtomicU64,
    /// Upgraded connections tunnelled (WebSocket and others).
    pub(crate) upstream_tunnels: AtomicU64,
    /// Requests sent again to another endpoint.
    pub(crate) upstream_retries: AtomicU64,
    /// Endpoints ejected by passive health.
    pub(crate) upstream_ejections: AtomicU64,
    /// Open upstream connections by endpoint address.
    pub(crate) upstream_connections: ConnectionGauges,
    /// How long backends were held per exchange: from the pick to the
    /// last body byte read.
    pub(crate) upstream_held: Histogram,
    /// TLS handshakes completed in full, resumed, and failed.
    pub(crate) tls_handshakes_full: AtomicU64,
    pub(crate) tls_handshakes_resumed: AtomicU64,
    pub(crate) tls_handshake_failures: AtomicU64,
    /// TLS clients whose SNI named no certificate, with no default either.
    pub(crate) tls_no_certificate: AtomicU64,
    /// Files served for an X-Sendfile / X-Accel-Redirect answer.
    pub(crate) sendfile_served: AtomicU64,
    /// X-Sendfile answers refused (502): a path outside the roots.
    pub(crate) sendfile_refused: AtomicU64,
    /// Cluster mode: a snapshot stream to the controller is open.
    pub(crate) controller_connected: std::sync::atomic::AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            connections_open: AtomicI64::new(0),
            connections_active: AtomicI64::new(0),
            connections_accepted: AtomicU64::new(0),
            connections_rejected: AtomicU64::new(0),
            connections_timed_out: AtomicU64::new(0),
            accept_errors: AtomicU64::new(0),
            unrouted: std::sync::Arc::default(),
            snapshot_loads: AtomicU64::new(0),
            snapshot_load_errors: AtomicU64::new(0),
            snapshot_invalid_routes: AtomicU64::new(0),
            snapshot_applied_unix: AtomicU64::new(0),
            snapshot_version: ArcSwap::from_pointee(String::new()),
            file_cache: CacheCounters::default(),
            upstream_idle: AtomicI64::new(0),
            upstream_connects: AtomicU64::new(0),
            upstream_connect_errors: AtomicU64::new(0),
            upstream_timeouts: AtomicU64::new(0),
            upstream_retries: AtomicU64::new(0),
            upstream_tunnels: AtomicU64::new(0),
            upstream_ejections: AtomicU64::new(0),
            upstream_connections: ConnectionGauges::default(),
            upstream_held: Histogram::default(),
            tls_handshakes_full: AtomicU64::new(0),
            tls_handshakes_resumed: AtomicU64::new(0),
            tls_handshake_failures: AtomicU64::new(0),
            tls_no_certificate: AtomicU64::new(0),
            sendfile_served: AtomicU64::new(0),
            sendfile_refused: AtomicU64::new(0),
            controller_connected: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

/// Counters of one endpoint of one proxy route, carried over to the next
/// snapshot while the route keeps the endpoint.
#[derive(Debug, Default)]
pub(crate) struct EndpointStats {
    /// Tries on this endpoint by the status they ended with (502 or 504
    /// for a failed connection or exchange), and how long each took, from
    /// the pick to the end of the response body.
    pub(crate) tries: RouteMetrics,
    /// Failed tries here that were sent again to another endpoint.
    pub(crate) retries: AtomicU64,
    /// Times passive health ejected this endpoint.
    pub(crate) ejections: AtomicU64,
}

/// One endpoint of a proxy route, for rendering.
pub(crate) struct Upstream<'a> {
    pub(crate) route: &'a str,
    pub(crate) endpoint: String,
    pub(crate) stats: &'a EndpointStats,
}

/// Open upstream connections per endpoint address, over every route and
/// worker. Gauges are handed out when a snapshot is built (never on the
/// request path) and dropped from here once unused and at zero.
#[derive(Debug, Default)]
pub(crate) struct ConnectionGauges {
    gauges: std::sync::Mutex<std::collections::HashMap<SocketAddr, Arc<AtomicI64>>>,
}

impl ConnectionGauges {
    /// The gauge of connections to `addr`.
    pub(crate) fn gauge(&self, addr: SocketAddr) -> Arc<AtomicI64> {
        let mut gauges = self.gauges.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(gauges.entry(addr).or_default())
    }

    fn render(&self, out: &mut Rendered) {
        let mut gauges = self.gauges.lock().unwrap_or_else(PoisonError::into_inner);
        gauges.retain(|_, g| Arc::strong_count(g) > 1 || g.load(Relaxed) != 0);
        let mut sorted: Vec<(&SocketAddr, i64)> =
            gauges.iter().map(|(a, g)| (a, g.load(Relaxed))).collect();
        sorted.sort();
        out.family(
            "upstream_connections",
            "gauge",
            "Upstream connections open (in use or idle), by endpoint address.",
        );
        for (addr, n) in sorted {
            out.line(format_args!(
                "pier_dataplane_upstream_connections{{endpoint=\"{addr}\"}} {n}"
            ));
        }
    }
}

impl Metrics {
    /// Renders every metric in the Prometheus text format.
    pub(crate) fn render<'a>(
        &self,
        routes: impl Iterator<Item = (&'a str, &'a RouteMetrics)>,
        upstreams: impl Iterator<Item = Upstream<'a>>,
        certificates: &[pier_snapshot::Certificate],
        route_count: usize,
    ) -> String {
        let mut out = Rendered::default();
        out.family(
            "tls_certificate_expiry_timestamp_seconds",
            "gauge",
            "When each served certificate expires (Unix time), by Secret and host: alert before it comes.",
        );
        for certificate in certificates {
            for host in &certificate.hosts {
                out.line(format_args!(
                    "pier_dataplane_tls_certificate_expiry_timestamp_seconds{{certificate=\"{}\",host=\"{host}\"}} {}",
                    certificate.name, certificate.not_after
                ));
            }
        }
        let mut all: Vec<(String, &RouteMetrics)> =
            vec![("route=\"\"".to_owned(), &*self.unrouted)];
        for (route, metrics) in routes {
            all.push((format!("route=\"{route}\""), metrics));
        }
        out.family(
            "requests_total",
            "counter",
            "Responses by route and status code (route=\"\": no route matched).",
        );
        for (labels, m) in &all {
            m.render_requests("requests_total", labels, &mut out);
        }
        out.family(
            "response_body_bytes_total",
            "counter",
            "Body bytes sent, by route.",
        );
        for (labels, m) in &all {
            m.render_bytes(labels, &mut out);
        }
        out.family(
            "request_duration_seconds",
            "histogram",
            "Time from request head to the end of the response body, by route.",
        );
        for (labels, m) in &all {
            m.duration
                .render("request_duration_seconds", labels, &mut out);
        }
        self.render_upstreams(upstreams, &mut out);

        let gauges: [(&str, &str, &str, i128); 9] = [
            (
                "connections_open",
                "gauge",
                "Client connections open now.",
                self.connections_open.load(Relaxed).into(),
            ),
            (
                "connections_active",
                "gauge",
                "HTTP/1.1 connections holding buffers (reading a request or writing a response); the rest are idle and hold none.",
                self.connections_active.load(Relaxed).into(),
            ),
            (
                "connections_accepted_total",
                "counter",
                "Client connections accepted.",
                self.connections_accepted.load(Relaxed).into(),
            ),
            (
                "connections_rejected_total",
                "counter",
                "Connections answered 503 and closed because --max-connections were open.",
                self.connections_rejected.load(Relaxed).into(),
            ),
            (
                "connections_timed_out_total",
                "counter",
                "Connections closed by --header-timeout or --idle-timeout.",
                self.connections_timed_out.load(Relaxed).into(),
            ),
            (
                "accept_errors_total",
                "counter",
                "Errors from accept(2), such as running out of file descriptors.",
                self.accept_errors.load(Relaxed).into(),
            ),
            (
                "snapshot_loads_total",
                "counter",
                "Snapshots applied.",
                self.snapshot_loads.load(Relaxed).into(),
            ),
            (
                "snapshot_load_errors_total",
                "counter",
                "Snapshot loads refused (the last good snapshot stayed active).",
                self.snapshot_load_errors.load(Relaxed).into(),
            ),
            (
                "snapshot_invalid_routes",
                "gauge",
                "Route resources left out of the active snapshot because they are invalid.",
                self.snapshot_invalid_routes.load(Relaxed).into(),
            ),
        ];
        for (name, kind, help, value) in gauges {
            out.plain(name, kind, help, value);
        }
        out.plain(
            "snapshot_routes",
            "gauge",
            "Routes in the active snapshot.",
            route_count as i128,
        );
        out.plain(
            "snapshot_applied_timestamp_seconds",
            "gauge",
            "Unix time the active snapshot was applied.",
            self.snapshot_applied_unix.load(Relaxed).into(),
        );
        out.family("snapshot_info", "gauge", "Version of the active snapshot.");
        out.line(format_args!(
            "pier_dataplane_snapshot_info{{version=\"{}\"}} 1",
            self.snapshot_version.load()
        ));
        let cache = &self.file_cache;
        let figures: [(&str, &str, &str, i128); 5] = [
            (
                "file_cache_hits_total",
                "counter",
                "Files opened from the open-file cache.",
                cache.hits.load(Relaxed).into(),
            ),
            (
                "file_cache_misses_total",
                "counter",
                "Files opened with openat2 (cache miss, expired entry, or cache off).",
                cache.misses.load(Relaxed).into(),
            ),
            (
                "file_cache_flushes_total",
                "counter",
                "Times a worker's cache was full of fresh entries and was emptied (raise --file-cache-entries).",
                cache.flushes.load(Relaxed).into(),
            ),
            (
                "file_cache_entries",
                "gauge",
                "Open-file cache entries over all workers; each holds a file descriptor.",
                cache.entries.load(Relaxed).into(),
            ),
            (
                "file_cache_content_bytes",
                "gauge",
                "Bytes of small-file contents held by the open-file cache (--file-cache-content).",
                FILE_CONTENT_BYTES.load(Relaxed).into(),
            ),
        ];
        for (name, kind, help, value) in figures {
            out.plain(name, kind, help, value);
        }
        out.plain(
            "buffer_pool_bytes",
            "gauge",
            "Bytes of idle request and head buffers the workers keep for reuse (at most 64 of each kind, 4 KiB each, per worker).",
            crate::pool::POOL_BYTES.load(Relaxed).into(),
        );
        let upstream: [(&str, &str, &str, i128); 9] = [
            (
                "sendfile_total",
                "counter",
                "Files served in place of a backend body after an X-Sendfile or X-Accel-Redirect answer.",
                self.sendfile_served.load(Relaxed).into(),
            ),
            (
                "sendfile_refused_total",
                "counter",
                "X-Sendfile or X-Accel-Redirect answers refused with 502: a path outside the route's sendfile roots, or one leading out of them.",
                self.sendfile_refused.load(Relaxed).into(),
            ),
            (
                "upstream_tunnels_total",
                "counter",
                "Upgraded connections (WebSocket and others) tunnelled to a backend.",
                self.upstream_tunnels.load(Relaxed).into(),
            ),
            (
                "upstream_retries_total",
                "counter",
                "Requests sent again to another endpoint (the route's retries).",
                self.upstream_retries.load(Relaxed).into(),
            ),
            (
                "upstream_ejections_total",
                "counter",
                "Endpoints left out by passive health after failures in a row.",
                self.upstream_ejections.load(Relaxed).into(),
            ),
            (
                "upstream_idle_connections",
                "gauge",
                "Idle upstream connections kept for reuse (at most --upstream-idle per endpoint and worker).",
                self.upstream_idle.load(Relaxed).into(),
            ),
            (
                "upstream_connections_total",
                "counter",
                "Upstream connections opened.",
                self.upstream_connects.load(Relaxed).into(),
            ),
            (
                "upstream_connect_errors_total",
                "counter",
                "Upstream connections that failed or timed out opening (answered 502 or 504).",
                self.upstream_connect_errors.load(Relaxed).into(),
            ),
            (
                "upstream_timeouts_total",
                "counter",
                "Upstream exchanges cut by the route's responseHeader or idle timeout.",
                self.upstream_timeouts.load(Relaxed).into(),
            ),
        ];
        for (name, kind, help, value) in upstream {
            out.plain(name, kind, help, value);
        }
        out.family(
            "tls_handshakes_total",
            "counter",
            "TLS handshakes by result: full, resumed (session ticket or ID), failed (including timeouts and clients no certificate was found for).",
        );
        for (result, n) in [
            ("full", &self.tls_handshakes_full),
            ("resumed", &self.tls_handshakes_resumed),
            ("failed", &self.tls_handshake_failures),
        ] {
            out.line(format_args!(
                "pier_dataplane_tls_handshakes_total{{result=\"{result}\"}} {}",
                n.load(Relaxed)
            ));
        }
        out.plain(
            "tls_no_certificate_total",
            "counter",
            "TLS clients whose SNI name matched no route's certificate while no --tls-default-cert was set.",
            self.tls_no_certificate.load(Relaxed).into(),
        );
        out.plain(
            "controller_connected",
            "gauge",
            "Cluster mode: 1 while a snapshot stream to the controller is open.",
            i128::from(u8::from(self.controller_connected.load(Relaxed))),
        );
        allocator(&mut out);
        out.text
    }

    fn render_upstreams<'a>(
        &self,
        upstreams: impl Iterator<Item = Upstream<'a>>,
        out: &mut Rendered,
    ) {
        let all: Vec<(String, &EndpointStats)> = upstreams
            .map(|u| {
                (
                    format!("route=\"{}\",endpoint=\"{}\"", u.route, u.endpoint),
                    u.stats,
                )
            })
            .collect();
        out.family(
            "upstream_requests_total",
            "counter",
            "Tries on each endpoint of each proxy route, by the status they ended with (502/504: the connection or exchange failed).",
        );
        for (labels, s) in &all {
            s.tries
                .render_requests("upstream_requests_total", labels, out);
        }
        out.family(
            "upstream_request_duration_seconds",
            "histogram",
            "Time from picking an endpoint to the end of its response body, by route and endpoint.",
        );
        for (labels, s) in &all {
            s.tries
                .duration
                .render("upstream_request_duration_seconds", labels, out);
        }
        let counters = [
            (
                "upstream_endpoint_retries_total",
                "Failed tries on this endpoint that were sent again to another one.",
                (|s: &EndpointStats| s.retries.load(Relaxed)) as fn(&EndpointStats) -> u64,
            ),
            (
                "upstream_endpoint_ejections_total",
                "Times passive health left this endpoint out.",
                |s: &EndpointStats| s.ejections.load(Relaxed),
            ),
        ];
        for (name, help, value) in counters {
            out.family(name, "counter", help);
            for (labels, s) in &all {
                out.line(format_args!(
                    "pier_dataplane_{name}{{{labels}}} {}",
                    value(s)
                ));
            }
        }
        self.upstream_connections.render(out);
        out.family(
            "upstream_held_seconds",
            "histogram",
            "How long each exchange held its backend connection, from the pick to the last body byte read; with buffering a slow client does not lengthen it.",
        );
        self.upstream_held.render("upstream_held_seconds", "", out);
    }
}

fn allocator(out: &mut Rendered) {
    use tikv_jemalloc_ctl::{epoch, stats};
    // Stats are cached by jemalloc until the epoch advances.
    if epoch::advance().is_err() {
        return;
    }
    let figures = [
        (
            "allocator_allocated_bytes",
            "Bytes allocated by the application (jemalloc stats.allocated).",
            stats::allocated::read(),
        ),
        (
            "allocator_resident_bytes",
            "Bytes in physically resident allocator pages (jemalloc stats.resident).",
            stats::resident::read(),
        ),
        (
            "allocator_retained_bytes",
            "Bytes retained by the allocator but returned to the OS (jemalloc stats.retained).",
            stats::retained::read(),
        ),
    ];
    for (name, help, value) in figures {
        if let Ok(value) = value {
            out.plain(name, "gauge", help, value as i128);
        }
    }
}

#[derive(Default)]
struct Rendered {
    text: String,
}

impl Rendered {
    fn line(&mut self, args: std::fmt::Arguments<'_>) {
        // Writing into a String cannot fail.
        let _ = self.text.write_fmt(args);
        self.text.push('\n');
    }

    fn family(&mut self, name: &str, kind: &str, help: &str) {
        self.line(format_args!("# HELP pier_dataplane_{name} {help}"));
        self.line(format_args!("# TYPE pier_dataplane_{name} {kind}"));
    }

    fn plain(&mut self, name: &str, kind: &str, help: &str, value: i128) {
        self.family(name, kind, help);
        self.line(format_args!("pier_dataplane_{name} {value}"));
    }
}
