#!/usr/bin/env bash
# Control-plane scale benchmark: ROUTES StaticRoutes (default 10,000) through
# a real kube-apiserver and etcd to the release pier-controller and
# pier-dataplane, each its own process; then LATENCY_SAMPLES more routes
# (default 200) created one at a time, each timed until the dataplane serves
# it. The driver is e2e/examples/scale.rs; bench/README.md has the method
# and the latest figures.
#
#   bash bench/scale.sh                                  # 10,000 routes, 200 samples (~3 min once built)
#   ROUTES=1000 LATENCY_SAMPLES=50 bash bench/scale.sh   # a quicker look
#
# Also read from the environment: NAMESPACES (100), CONCURRENCY (32 creates
# in flight), SETTLE_TIMEOUT (1200 s), PIER_BIN_DIR (target/release).
#
# Nothing is pinned to a core, unlike bench/static.sh: this measures a whole
# system (API server, etcd, controller, dataplane and the driver share the
# two cores), so the figures include their contention, as in a small
# cluster. kube-apiserver and etcd come from KUBEBUILDER_ASSETS or the e2e
# harness's cache (see e2e/README.md).
set -euo pipefail

cd "$(dirname "$0")/.."
export ROUTES=${ROUTES:-10000}
export LATENCY_SAMPLES=${LATENCY_SAMPLES:-200}

cargo build --release -p pier-controller -p pier-dataplane
exec cargo run --release -q -p pier-e2e --example scale
