#!/usr/bin/env bash
# Static-file benchmark: Pier beside nginx and lighttpd on the same machine.
# Each server is pinned to core 0, the load generator to core 1; servers run
# one at a time. Prints raw figures and Pier's ratios.
#
#   bash bench/static.sh            # RUNS=3 DURATION=10
#   QUICK=1 bash bench/static.sh    # one short run, a smoke check
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT_DIR=$(pwd)
RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
IDLE_CONNS=${IDLE_CONNS:-5000}
if [[ ${QUICK:-0} == 1 ]]; then RUNS=1; DURATION=3; fi
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}

source bench/lib/common.sh
install_missing lighttpd
build_pier

DOCROOT=$WORK/docroot
mkdir -p "$DOCROOT" "$WORK/routes"
head -c 4096 /dev/urandom >"$DOCROOT/4k.bin"
head -c $((1 << 30)) /dev/zero >"$DOCROOT/1g.bin"

PORT=18480
ADMIN_PORT=18481

cat >"$WORK/routes/bench.yaml" <<YAML
apiVersion: pier.dev/v1alpha1
kind: StaticRoute
metadata: {name: bench, namespace: default}
spec:
  root: $DOCROOT
YAML

nginx_conf nginx <<CONF
  sendfile on;
  tcp_nopush on;
  open_file_cache max=1000 inactive=60s;
  open_file_cache_valid 60s;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
  default_type application/octet-stream;
  server { listen 127.0.0.1:$PORT; root $DOCROOT; }
CONF

cat >"$WORK/lighttpd.conf" <<CONF
server.document-root = "$DOCROOT"
server.bind = "127.0.0.1"
server.port = $PORT
server.pid-file = "$WORK/lighttpd.pid"
server.errorlog = "$WORK/lighttpd.error.log"
server.max-keep-alive-requests = 1000000
server.max-keep-alive-idle = 75
server.max-connections = 10000
server.max-fds = 20000
CONF

start_server() { # name -> sets SERVER_PID (the process whose RSS counts)
  case $1 in
    pier | pier-before)
      taskset -c "$SERVER_CPU" "$(pier_bin "$1")" --routes "$WORK/routes" --listen "127.0.0.1:$PORT" --listen-tls 127.0.0.1:0 \
        --admin "127.0.0.1:$ADMIN_PORT" --workers 1 --log warn &
      SERVER_PID=$! ;;
    nginx)
      taskset -c "$SERVER_CPU" nginx -c "$WORK/nginx.conf" &
      local master=$!
      for _ in $(seq 100); do SERVER_PID=$(pgrep -P "$master" | head -n1 || true); [[ -n $SERVER_PID ]] && break; sleep 0.05; done ;;
    lighttpd)
      taskset -c "$SERVER_CPU" lighttpd -D -f "$WORK/lighttpd.conf" &
      SERVER_PID=$! ;;
  esac
  PIDS+=("$!")
  for _ in $(seq 200); do
    curl -sf -o /dev/null "http://127.0.0.1:$PORT/4k.bin" && return 0
    sleep 0.05
  done
  echo "$1 did not start" >&2
  return 1
}




measure_small() { # -> "rps p99_us" medians
  local rps=() p99=()
  taskset -c "$LOAD_CPU" wrk -t1 -c64 -d2s "http://127.0.0.1:$PORT/4k.bin" >/dev/null # warm-up
  for _ in $(seq "$RUNS"); do
    local out
    out=$(taskset -c "$LOAD_CPU" wrk -t1 -c64 -d"${DURATION}s" --latency "http://127.0.0.1:$PORT/4k.bin")
    rps+=("$(awk '/Requests\/sec/ {print $2}' <<<"$out")")
    p99+=("$(to_us "$(awk '$1 == "99%" {print $2}' <<<"$out")")")
  done
  echo "$(printf '%s\n' "${rps[@]}" | median) $(printf '%s\n' "${p99[@]}" | median)"
}

measure_large() { # -> MB/s median of one stream
  local speeds=()
  for _ in $(seq 3); do
    speeds+=("$(taskset -c "$LOAD_CPU" curl -s -o /dev/null -w '%{speed_download}' "http://127.0.0.1:$PORT/1g.bin")")
  done
  printf '%s\n' "${speeds[@]}" | median | awk '{printf "%.0f", $1 / 1e6}'
}

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

measure_idle() { # -> bytes per idle keep-alive connection
  local before after holder
  before=$(rss_kib "$SERVER_PID")
  coproc IDLE { taskset -c "$LOAD_CPU" python3 "$ROOT_DIR/bench/lib/idle_conns.py" 127.0.0.1 "$PORT" "$IDLE_CONNS" /4k.bin 30; }
  holder=$IDLE_PID
  local line
  read -r line <&"${IDLE[0]}"
  if [[ $line != ready ]]; then echo "idle connections failed: $line" >&2; echo NaN; return; fi
  sleep 1
  after=$(rss_kib "$SERVER_PID")
  kill "$holder" 2>/dev/null || true
  wait "$holder" 2>/dev/null || true
  echo $(( (after - before) * 1024 / IDLE_CONNS ))
}

declare -A RPS P99 MBPS IDLE
read -ra SERVERS <<<"$(pier_servers) nginx lighttpd"
for server in "${SERVERS[@]}"; do
  echo "== $server" >&2
  start_server "$server"
  read -r RPS[$server] P99[$server] < <(measure_small)
  MBPS[$server]=$(measure_large)
  IDLE[$server]=$(measure_idle)
  stop_last
  echo "   4KiB: ${RPS[$server]} req/s, p99 ${P99[$server]} us; 1GiB: ${MBPS[$server]} MB/s; idle: ${IDLE[$server]} B/conn" >&2
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
verdict() { awk -v r="$1" -v op="$2" -v f="$3" 'BEGIN { ok = (op == ">=") ? (r >= f) : (r <= f); print ok ? "PASS" : "FAIL" }'; }

r_rps_n=$(ratio "${RPS[pier]}" "${RPS[nginx]}");   r_rps_l=$(ratio "${RPS[pier]}" "${RPS[lighttpd]}")
r_p99_n=$(ratio "${P99[pier]}" "${P99[nginx]}");   r_p99_l=$(ratio "${P99[pier]}" "${P99[lighttpd]}")
r_mb_n=$(ratio "${MBPS[pier]}" "${MBPS[nginx]}");  r_mb_l=$(ratio "${MBPS[pier]}" "${MBPS[lighttpd]}")
r_idle_n=$(ratio "${IDLE[pier]}" "${IDLE[nginx]}")

mkdir -p bench/results
report=bench/results/static-$(date -u +%Y%m%dT%H%M%SZ).md
{
  echo "# Static files: Pier, nginx, lighttpd ($(date -u +%F), runs=$RUNS, ${DURATION}s each, one core per server)"
  echo
  echo "| measure | Pier | nginx | lighttpd | Pier/nginx | Pier/lighttpd | floor |"
  echo "|---|---|---|---|---|---|---|"
  echo "| 4 KiB req/s, 64 conns | ${RPS[pier]} | ${RPS[nginx]} | ${RPS[lighttpd]} | $r_rps_n | $r_rps_l | ≥ 1.0× nginx: $(verdict "$r_rps_n" ">=" 1.0) |"
  echo "| 4 KiB p99 (µs) | ${P99[pier]} | ${P99[nginx]} | ${P99[lighttpd]} | $r_p99_n | $r_p99_l | |"
  echo "| 1 GiB MB/s, one stream | ${MBPS[pier]} | ${MBPS[nginx]} | ${MBPS[lighttpd]} | $r_mb_n | $r_mb_l | ≥ 0.8× nginx: $(verdict "$r_mb_n" ">=" 0.8) |"
  echo "| bytes per idle keep-alive conn ($IDLE_CONNS) | ${IDLE[pier]} | ${IDLE[nginx]} | ${IDLE[lighttpd]} | $r_idle_n | | ≤ 1024: $(verdict "${IDLE[pier]}" "<=" 1024) |"
  before_after_rows RPS P99 MBPS IDLE
} | tee "$report"
echo "written to $report" >&2
