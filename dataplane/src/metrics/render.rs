//! `/metrics`: every counter in the Prometheus text format, rendered on
//! scrape, off the request path.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;

use super::*;

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
        self.render_routes(routes, certificates, &mut out);
        self.render_upstreams(upstreams, &mut out);
        self.render_connections(route_count, &mut out);
        self.render_caches(&mut out);
        self.render_upstream_totals(&mut out);
        out.text
    }

    /// Certificates, then the per-route families (the unrouted first).
    fn render_routes<'a>(
        &self,
        routes: impl Iterator<Item = (&'a str, &'a RouteMetrics)>,
        certificates: &[pier_snapshot::Certificate],
        out: &mut Rendered,
    ) {
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
            m.render_requests("requests_total", labels, out);
        }
        out.family(
            "response_body_bytes_total",
            "counter",
            "Body bytes sent, by route.",
        );
        for (labels, m) in &all {
            m.render_bytes(labels, out);
        }
        out.family(
            "request_duration_seconds",
            "histogram",
            "Time from request head to the end of the response body, by route.",
        );
        for (labels, m) in &all {
            m.duration.render("request_duration_seconds", labels, out);
        }
    }

    /// Connections and the active snapshot.
    fn render_connections(&self, route_count: usize, out: &mut Rendered) {
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
    }

    /// The open-file cache and the buffer pools.
    fn render_caches(&self, out: &mut Rendered) {
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
        let auth = &super::BASIC_AUTH;
        let auth = [
            (
                "basic_auth_checks_total",
                "counter",
                "Passwords checked against their hash (bcrypt, MD5 or SHA-1) for basic authentication.",
                auth.verified.load(Relaxed).into(),
            ),
            (
                "basic_auth_cached_total",
                "counter",
                "Requests admitted by credentials a worker had already verified.",
                auth.cached.load(Relaxed).into(),
            ),
            (
                "basic_auth_refused_total",
                "counter",
                "Requests answered 401 for missing or wrong credentials.",
                auth.refused.load(Relaxed).into(),
            ),
            (
                "basic_auth_cache_evictions_total",
                "counter",
                "Verified credentials a worker forgot to make room (256 per worker).",
                auth.evicted.load(Relaxed).into(),
            ),
        ];
        for (name, kind, help, value) in auth {
            out.plain(name, kind, help, value);
        }
        let forward = &super::FORWARD_AUTH;
        out.plain(
            "forward_auth_admitted_total",
            "counter",
            "Requests a forward-authentication service admitted (2xx).",
            forward.admitted.load(Relaxed).into(),
        );
        out.plain(
            "forward_auth_denied_total",
            "counter",
            "Requests a forward-authentication service refused (401, 403).",
            forward.denied.load(Relaxed).into(),
        );
        out.plain(
            "forward_auth_failed_total",
            "counter",
            "Requests answered 500: the forward-authentication service gave no usable answer within --forward-auth-timeout.",
            forward.failed.load(Relaxed).into(),
        );
        out.plain(
            "buffer_pool_bytes",
            "gauge",
            "Bytes of idle request and head buffers the workers keep for reuse (at most 64 of each kind, 4 KiB each, per worker).",
            crate::pool::POOL_BYTES.load(Relaxed).into(),
        );
    }

    /// Upstream totals over every route, TLS handshakes, the controller
    /// link and the allocator.
    fn render_upstream_totals(&self, out: &mut Rendered) {
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
        allocator(out);
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
pub(super) struct Rendered {
    pub(super) text: String,
}

impl Rendered {
    pub(super) fn line(&mut self, args: std::fmt::Arguments<'_>) {
        // Writing into a String cannot fail.
        let _ = self.text.write_fmt(args);
        self.text.push('\n');
    }

    pub(super) fn family(&mut self, name: &str, kind: &str, help: &str) {
        self.line(format_args!("# HELP pier_dataplane_{name} {help}"));
        self.line(format_args!("# TYPE pier_dataplane_{name} {kind}"));
    }

    pub(super) fn plain(&mut self, name: &str, kind: &str, help: &str, value: i128) {
        self.family(name, kind, help);
        self.line(format_args!("pier_dataplane_{name} {value}"));
    }
}
