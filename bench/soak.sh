#!/usr/bin/env bash
# Soak: does memory stay flat? (seed 001: a server whose memory crept up
# for days through allocator fragmentation.) Compressed into DURATION
# seconds (600): CLIENTS (10) HTTP/2 connections each upload 4 KiB every
# 10 ms through the proxy, and every BURST_EVERY seconds (60) a burst of
# BURST (1,000) concurrent streams downloads 256 KiB each over new
# connections, which fills the proxy's buffers. The proxy's anonymous RSS
# (RssAnon: its heap and stacks; file-backed pages such as the binary's
# own code, paged in by the first burst, are left out) is sampled every
# second. Flat means: after each burst, RSS returns to within 10% of
# the warmed-up baseline: the level after the first burst (the warm-up is
# one whole cycle of the load; see bench/lib/plot_rss.py). The level
# before the first burst (the median from WARMUP to it) is reported too.
# The curve is written as an SVG next to the report, and Pier's allocator
# statistics (/debug/allocator) before the first burst, after it, and at
# the end.
#
# Pier and nginx (h2c, proxy_buffering on) run one after the other, each
# pinned to core 0; the load and the backend (dataplane/examples/soak.rs)
# share core 1.
#
#   bash bench/soak.sh                     # DURATION=600 per server
#   QUICK=1 bash bench/soak.sh             # DURATION=90 BURST_EVERY=30
#   SERVERS=pier bash bench/soak.sh
set -euo pipefail

cd "$(dirname "$0")/.."
if [[ ${QUICK:-0} == 1 ]]; then DURATION=${DURATION:-90}; BURST_EVERY=${BURST_EVERY:-30}; fi
DURATION=${DURATION:-600}
BURST_EVERY=${BURST_EVERY:-60}
WARMUP=${WARMUP:-$((BURST_EVERY / 3))}
CLIENTS=${CLIENTS:-10}
BURST=${BURST:-1000}
SERVERS=${SERVERS:-pier nginx}
PROXY_CPU=${PROXY_CPU:-0}
OTHER_CPU=${OTHER_CPU:-1}

source bench/lib/common.sh
install_missing
if [[ -z ${PIER_BIN:-} || -z ${SOAK_BIN:-} ]]; then
  cargo build --release -q -p pier-dataplane --bin pier-dataplane --example soak
  PIER_BIN=${PIER_BIN:-$(pwd)/target/release/pier-dataplane}
  SOAK_BIN=${SOAK_BIN:-$(pwd)/target/release/examples/soak}
fi

BACKEND_PORT=18540
PORT=18541
ADMIN_PORT=18542
mkdir -p "$WORK/routes" "$WORK/spill"

taskset -c "$OTHER_CPU" "$SOAK_BIN" backend "$BACKEND_PORT" &
PIDS+=("$!")

cat >"$WORK/routes/proxy.yaml" <<YAML
apiVersion: pier.dev/v1alpha1
kind: ProxyRoute
metadata: {name: soak, namespace: default}
spec:
  backends: [{address: "127.0.0.1:$BACKEND_PORT"}]
YAML

nginx_conf nginx <<CONF
  client_body_temp_path $WORK/nginx-body;
  proxy_temp_path $WORK/nginx-proxy;
  upstream backend { server 127.0.0.1:$BACKEND_PORT; keepalive 64; }
  server {
    listen 127.0.0.1:$PORT http2;
    http2_max_concurrent_streams 128;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
CONF

start_server() { # name -> sets SERVER_PIDS (whose RSS is summed)
  case $1 in
    pier)
      taskset -c "$PROXY_CPU" "$PIER_BIN" --routes "$WORK/routes" --listen "127.0.0.1:$PORT" --listen-tls 127.0.0.1:0 \
        --admin "127.0.0.1:$ADMIN_PORT" --workers 1 --log warn --spill-dir "$WORK/spill" &
      PIDS+=("$!")
      SERVER_PIDS=("$!") ;;
    nginx)
      taskset -c "$PROXY_CPU" nginx -c "$WORK/nginx.conf" &
      PIDS+=("$!")
      SERVER_PIDS=("$!")
      for _ in $(seq 100); do
        local worker
        worker=$(pgrep -P "${SERVER_PIDS[0]}" | head -n1 || true)
        [[ -n $worker ]] && { SERVER_PIDS+=("$worker"); break; }
        sleep 0.05
      done ;;
  esac
  for _ in $(seq 200); do
    curl -sf --http2-prior-knowledge -o /dev/null -X POST -d x "http://127.0.0.1:$PORT/upload" && return 0
    sleep 0.05
  done
  echo "$1 did not start" >&2
  return 1
}

rss_kib() { # sum of RssAnon over the given pids
  local total=0 pid v
  for pid in "$@"; do
    v=$(awk '/^RssAnon:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    total=$((total + ${v:-0}))
  done
  echo "$total"
}

stamp=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p bench/results
samples=bench/results/soak-$stamp.csv
: >"$samples"
declare -A OK ERRORS BURSTS
for server in $SERVERS; do
  echo "soak: $server for ${DURATION}s" >&2
  start_server "$server"
  taskset -c "$OTHER_CPU" "$SOAK_BIN" load "127.0.0.1:$PORT" "$DURATION" "$CLIENTS" "$BURST_EVERY" "$BURST" >"$WORK/$server.load" &
  load=$!
  t=0
  while kill -0 "$load" 2>/dev/null; do
    echo "$t,$server,$(rss_kib "${SERVER_PIDS[@]}")" >>"$samples"
    if [[ $server == pier ]] && ((t == BURST_EVERY - 1 || t == 2 * BURST_EVERY - 1)); then
      curl -s "http://127.0.0.1:$ADMIN_PORT/debug/allocator" >"bench/results/soak-$stamp-pier-allocator-${t}s.txt" || true
    fi
    sleep 1
    t=$((t + 1))
  done
  wait "$load" || true
  read -r _ OK[$server] ERRORS[$server] BURSTS[$server] < <(tail -n1 "$WORK/$server.load")
  if [[ $server == pier ]]; then
    curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" >"bench/results/soak-$stamp-pier-metrics.txt" || true
    curl -s "http://127.0.0.1:$ADMIN_PORT/debug/allocator" >"bench/results/soak-$stamp-pier-allocator-end.txt" || true
  fi
  kill "${SERVER_PIDS[0]}" 2>/dev/null || true
  wait "${SERVER_PIDS[0]}" 2>/dev/null || true
  sleep 1
done

svg=bench/results/soak-$stamp.svg
figures=$(python3 bench/lib/plot_rss.py "$samples" "$svg" "$BURST_EVERY" "$WARMUP")
report=bench/results/soak-$stamp.md
{
  echo "# Soak: RSS over ${DURATION}s ($(date -u +%F)): $CLIENTS HTTP/2 clients uploading 4 KiB every 10 ms, $BURST concurrent 256 KiB streams every ${BURST_EVERY}s"
  echo
  echo "| server | before the first burst MiB | warmed-up baseline (after burst 1) MiB | worst later after-burst / warmed-up | worst after-burst / before the first burst | peak RSS MiB | requests ok | errors | burst streams ok |"
  echo "|---|---|---|---|---|---|---|---|---|"
  while IFS=$'\t' read -r server before warmed later worst_before peak _; do
    echo "| $server | $before | $warmed | $later | $worst_before | $peak | ${OK[$server]} | ${ERRORS[$server]} | ${BURSTS[$server]} |"
  done <<<"$figures"
  echo
  echo "After-burst levels as ratios to the warmed-up baseline, burst by burst:"
  echo
  while IFS=$'\t' read -r server _ _ _ _ _ ratios; do
    echo "- $server: $ratios"
  done <<<"$figures"
  echo
  echo "Curve: $svg; samples: $samples"
} | tee "$report"
echo "written to $report" >&2
