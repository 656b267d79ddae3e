//! The controller's Prometheus metrics: atomics updated by the reconcile
//! loop and the snapshot service, rendered in the text format on scrape.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::fleet::Fleet;

/// Upper bounds of the duration histograms, in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn observe(&self, value: Duration) {
        let secs = value.as_secs_f64();
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            if secs <= *bound {
                bucket.fetch_add(1, Relaxed);
            }
        }
        self.count.fetch_add(1, Relaxed);
        let micros = u64::try_from(value.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Relaxed);
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Relaxed)
            );
        }
        let count = self.count.load(Relaxed);
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// Every metric of the controller.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    reconciles: AtomicU64,
    reconcile_errors: AtomicU64,
    status_writes: AtomicU64,
    status_plans: AtomicU64,
    snapshots_published: AtomicU64,
    snapshot_bytes: AtomicU64,
    snapshot_routes: AtomicU64,
    snapshot_invalid: AtomicU64,
    pushes: AtomicU64,
    build: Histogram,
    push_to_ack: Histogram,
    change_to_ack: Histogram,
}

impl Metrics {
    pub(crate) fn reconciled(&self, build: Duration) {
        self.reconciles.fetch_add(1, Relaxed);
        self.build.observe(build);
    }

    pub(crate) fn reconcile_failed(&self) {
        self.reconcile_errors.fetch_add(1, Relaxed);
    }

    pub(crate) fn status_planned(&self) {
        self.status_plans.fetch_add(1, Relaxed);
    }

    pub(crate) fn status_written(&self) {
        self.status_writes.fetch_add(1, Relaxed);
    }

    pub(crate) fn published(&self, bytes: usize, routes: usize, invalid: usize) {
        self.snapshots_published.fetch_add(1, Relaxed);
        self.snapshot_bytes.store(bytes as u64, Relaxed);
        self.snapshot_routes.store(routes as u64, Relaxed);
        self.snapshot_invalid.store(invalid as u64, Relaxed);
    }

    pub(crate) fn pushed(&self) {
        self.pushes.fetch_add(1, Relaxed);
    }

    pub(crate) fn acked(&self, latency: crate::fleet::Latency) {
        self.push_to_ack.observe(latency.since_publish);
        self.change_to_ack.observe(latency.since_change);
    }

    /// The Prometheus text of every metric. `leading`: this replica holds
    /// the election Lease (always, without an election).
    pub(crate) fn render(&self, fleet: &Fleet, version: &str, leading: bool) -> String {
        let mut out = String::with_capacity(4096);
        let plain = [
            (
                "reconciles_total",
                "counter",
                "Snapshot builds.",
                &self.reconciles,
            ),
            (
                "reconcile_errors_total",
                "counter",
                "Reconcile passes that failed (API errors).",
                &self.reconcile_errors,
            ),
            (
                "status_plans_total",
                "counter",
                "Passes that planned route status (after each build, and on each acknowledgement without a build).",
                &self.status_plans,
            ),
            (
                "status_writes_total",
                "counter",
                "Route status patches written.",
                &self.status_writes,
            ),
            (
                "snapshots_published_total",
                "counter",
                "Snapshots with a new version published.",
                &self.snapshots_published,
            ),
            (
                "snapshot_bytes",
                "gauge",
                "Encoded size of the current snapshot.",
                &self.snapshot_bytes,
            ),
            (
                "snapshot_routes",
                "gauge",
                "Routes in the current snapshot.",
                &self.snapshot_routes,
            ),
            (
                "snapshot_invalid_routes",
                "gauge",
                "Route resources left out as invalid.",
                &self.snapshot_invalid,
            ),
            (
                "snapshot_pushes_total",
                "counter",
                "Snapshots sent to dataplanes.",
                &self.pushes,
            ),
        ];
        for (name, kind, help, value) in plain {
            let _ = writeln!(
                out,
                "# HELP pier_controller_{name} {help}\n# TYPE pier_controller_{name} {kind}\npier_controller_{name} {}",
                value.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP pier_controller_snapshot_info Version of the current snapshot.\n# TYPE pier_controller_snapshot_info gauge\npier_controller_snapshot_info{{version=\"{version}\"}} 1"
        );
        self.build.render(
            "pier_controller_snapshot_build_seconds",
            "Time to compile the stores into a snapshot.",
            &mut out,
        );
        self.push_to_ack.render(
            "pier_controller_push_to_ack_seconds",
            "Time from publishing a snapshot to each dataplane's acknowledgement.",
            &mut out,
        );
        self.change_to_ack.render(
            "pier_controller_change_to_ack_seconds",
            "Time from the watch event that woke a build (coalescing and build included) to each dataplane's acknowledgement of the snapshot it produced.",
            &mut out,
        );
        let dataplanes = fleet.dataplanes();
        let _ = writeln!(
            out,
            "# HELP pier_controller_dataplanes_connected Dataplanes holding a snapshot stream.\n# TYPE pier_controller_dataplanes_connected gauge\npier_controller_dataplanes_connected {}",
            dataplanes.len()
        );
        let _ = writeln!(
            out,
            "# HELP pier_controller_dataplane_applied_info Snapshot version each connected dataplane acknowledged.\n# TYPE pier_controller_dataplane_applied_info gauge"
        );
        for dataplane in dataplanes {
            let _ = writeln!(
                out,
                "pier_controller_dataplane_applied_info{{dataplane=\"{}\",version=\"{}\"}} 1",
                dataplane.name.escape_default(),
                dataplane.acked.as_deref().unwrap_or("")
            );
        }
        let _ = writeln!(
            out,
            "# HELP pier_controller_leader 1 while this replica is the leader (writes route status).
# TYPE pier_controller_leader gauge
pier_controller_leader {}",
            u8::from(leading)
        );
        pier_telemetry::render_process(&mut out);
        pier_telemetry::render_build_info(&mut out, "pier-controller", env!("CARGO_PKG_VERSION"));
        out
    }
}
