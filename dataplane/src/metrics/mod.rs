//! The dataplane's Prometheus metrics: plain atomics updated on the request
//! path (no locks, no map lookups), rendered in the text format on scrape.
//!
//! Per-route counters live in the routing table entry and are carried over
//! to the next table when a snapshot replaces it, so they stay monotonic for
//! as long as the route exists.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;

use self::render::Rendered;

mod render;

/// Bytes of file contents held by every worker's cache (and by responses
/// still using evicted entries).
pub(crate) static FILE_CONTENT_BYTES: AtomicI64 = AtomicI64::new(0);

/// Basic authentication over every route: hash checks made (each a bcrypt
/// or MD5 computation), requests admitted from a worker's cache of
/// verified credentials, requests refused with 401, and cache entries
/// replaced (the cache holds `filter::basic::CACHE` per worker).
#[derive(Debug)]
pub(crate) struct AuthCounters {
    pub(crate) verified: AtomicU64,
    pub(crate) cached: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) evicted: AtomicU64,
}

/// Basic authentication's counters.
pub(crate) static BASIC_AUTH: AuthCounters = AuthCounters {
    verified: AtomicU64::new(0),
    cached: AtomicU64::new(0),
    refused: AtomicU64::new(0),
    evicted: AtomicU64::new(0),
};

/// Forward authentication over every route: requests the service
/// admitted, refused (401, 403), and those it did not answer usably
/// (500).
#[derive(Debug)]
pub(crate) struct ForwardCounters {
    pub(crate) admitted: AtomicU64,
    pub(crate) denied: AtomicU64,
    pub(crate) failed: AtomicU64,
}

/// Forward authentication's counters.
pub(crate) static FORWARD_AUTH: ForwardCounters = ForwardCounters {
    admitted: AtomicU64::new(0),
    denied: AtomicU64::new(0),
    failed: AtomicU64::new(0),
};

/// Counters shared by every worker's open-file cache.
#[derive(Debug, Default)]
pub(crate) struct CacheCounters {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) flushes: AtomicU64,
    pub(crate) entries: AtomicI64,
}

/// Every status code registered with IANA (RFC 9110 and the others in
/// use): each has its own counter and its exact `code` label. A status
/// outside the registry (a backend may send any three digits) counts under
/// its class (`code="2xx"` and so on), so a route's counters stay fixed in
/// size.
const CODES: [u16; 62] = [
    100, 101, 102, 103, //
    200, 201, 202, 203, 204, 205, 206, 207, 208, 226, //
    300, 301, 302, 303, 304, 305, 307, 308, //
    400, 401, 402, 403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415, 416, 417, 418,
    421, 422, 423, 424, 425, 426, 428, 429, 431, 451, //
    500, 501, 502, 503, 504, 505, 506, 507, 508, 510, 511, //
];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The counter slot of each status from 100 to 599: an index into
/// `CODES`, or `NONE` for the codes counted by class. Built at compile
/// time, so counting a response is one table lookup.
const NONE: u8 = u8::MAX;
const SLOTS: [u8; 500] = {
    let mut slots = [NONE; 500];
    let mut i = 0;
    while i < CODES.len() {
        slots[(CODES[i] - 100) as usize] = i as u8;
        i += 1;
    }
    slots
};

/// Upper bounds of the latency histogram buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];

/// Counters of one route (or of requests no route took).
#[derive(Debug)]
pub(crate) struct RouteMetrics {
    codes: [AtomicU64; CODES.len()],
    classes: [AtomicU64; CLASSES.len()],
    bytes: AtomicU64,
    duration: Histogram,
}

impl Default for RouteMetrics {
    fn default() -> Self {
        Self {
            codes: std::array::from_fn(|_| AtomicU64::new(0)),
            classes: Default::default(),
            bytes: AtomicU64::new(0),
            duration: Histogram::default(),
        }
    }
}

impl RouteMetrics {
    /// Counts a finished response.
    pub(crate) fn record(&self, status: u16, elapsed: Duration) {
        let slot = status
            .checked_sub(100)
            .and_then(|i| SLOTS.get(usize::from(i)))
            .copied()
            .unwrap_or(NONE);
        if slot == NONE {
            let class = usize::from(status / 100).clamp(1, 5) - 1;
            self.classes[class].fetch_add(1, Relaxed);
        } else {
            self.codes[usize::from(slot)].fetch_add(1, Relaxed);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_registered_status_keeps_its_exact_code() {
        let route = RouteMetrics::default();
        for status in [101, 200, 308, 413, 421, 504, 511, 299, 599, 99, 600] {
            route.record(status, Duration::ZERO);
        }
        let mut out = render::Rendered::default();
        route.render_requests("requests_total", "route=\"r\"", &mut out);
        let text = out.text;
        for code in ["101", "200", "308", "413", "421", "504", "511"] {
            assert!(
                text.contains(&format!("code=\"{code}\"}} 1")),
                "{code}: {text}"
            );
        }
        // Outside the registry: by class; outside 1xx-5xx: the nearest.
        assert!(text.contains("code=\"2xx\"} 1"), "{text}");
        assert!(text.contains("code=\"5xx\"} 2"), "{text}");
        assert!(text.contains("code=\"1xx\"} 1"), "{text}");
    }

    #[test]
    fn the_slot_table_matches_the_code_list() {
        for (i, code) in CODES.iter().enumerate() {
            assert_eq!(usize::from(SLOTS[usize::from(code - 100)]), i);
        }
        let slotted = SLOTS.iter().filter(|s| **s != NONE).count();
        assert_eq!(slotted, CODES.len(), "no code listed twice");
    }
}
