#!/usr/bin/env bash
# Slow clients benchmark, "the lighttpd pitfall": N clients (default 50)
# each download one large response (default 2 GiB) through the proxy while
# reading at 1 MiB/s (curl --limit-rate 1M). The backend
# (bench/lib/bulk_backend.py) sends as fast as the socket takes it, so
# whatever the clients have not read yet piles up in the proxy: in its
# memory, on its disk, or back in the backend, which then stays held. A
# proxy that buffered whole responses in memory swapped a node to death
# this way; lighttpd's default (server.stream-response-body = 0) spools the
# whole body to disk and sends the client nothing until it has all of it.
#
# Pier, nginx (proxy_buffering on, temp files), lighttpd mod_proxy (its
# defaults) and HAProxy (its defaults: it streams, holding the backend) run
# one after the other in the same script run. Each proxy is pinned to core
# 0, the backend and the clients to core 1. A whole download at 1 MiB/s
# would take 34 minutes, so each proxy gets a window (WINDOW seconds) and
# is measured at its end:
#
#   - peak RSS: the sum of VmHWM over the proxy's processes (nginx: master
#     and worker), so an upper bound of what they held at once;
#   - time to first byte at the clients (curl's time_starttransfer), median
#     and max; a client without a byte in the window counts as "none";
#   - how long the backend was held: from each request's arrival at the
#     backend to its last byte written (or to the window's end while still
#     open), median and max, and how many of the N responses the backend
#     had finished ("released") by the end of the window;
#   - bytes the proxy wrote to disk (write_bytes of /proc/PID/io, summed
#     over its processes: what reached the page cache for the block layer;
#     socket writes are not in it);
#   - the temporary files the proxy had open at the window's end (allocated
#     blocks of the regular files behind /proc/PID/fd, deleted ones too),
#     and `du` of its temp directory. nginx and Pier unlink their temp
#     files as soon as they open them, so `du` shows nothing for them and
#     the open-file column is the one that counts; lighttpd keeps named
#     files in server.upload-dirs;
#   - bytes the clients received (a sanity column: about N × 1 MiB/s,
#     curl's rate limit lets a burst through at the start).
#
# Every proxy gets the same per-response disk cap, DISK_MIB (default 512):
# nginx proxy_max_temp_file_size, Pier's route `buffering.disk`. lighttpd
# has no such cap, so a guard stops any proxy whose disk writes pass N ×
# DISK_MIB (plus what the clients can drain in the window) or that leaves
# less than 2 GiB free, and the report says so.
#
#   bash bench/slow.sh                                   # N=50 SIZE_MIB=2048 WINDOW=60
#   QUICK=1 bash bench/slow.sh                           # N=10 SIZE_MIB=256 WINDOW=15 (each overridable)
#   SERVERS="nginx haproxy" bash bench/slow.sh           # some of the servers
#   PIER_BIN=target/release/pier-dataplane bash bench/slow.sh   # skip the build
#
# Also read from the environment: N, SIZE_MIB, WINDOW, DISK_MIB, PROXY_CPU
# (0), OTHER_CPU (1). Pier's /metrics at the window's end is saved next to
# the report.
set -euo pipefail

cd "$(dirname "$0")/.."
if [[ ${QUICK:-0} == 1 ]]; then N=${N:-10}; SIZE_MIB=${SIZE_MIB:-256}; WINDOW=${WINDOW:-15}; fi
N=${N:-50}
SIZE_MIB=${SIZE_MIB:-2048}
WINDOW=${WINDOW:-60}
DISK_MIB=${DISK_MIB:-512}
PROXY_CPU=${PROXY_CPU:-0}
OTHER_CPU=${OTHER_CPU:-1}
MiB=$((1024 * 1024))

source bench/lib/common.sh
SERVERS=${SERVERS:-$(pier_servers) nginx lighttpd haproxy}
SERVERS=${SERVERS//,/ }
install_missing haproxy lighttpd
if [[ " $SERVERS " == *" pier "* ]]; then build_pier; fi

BACKEND_PORT=18530
PORT=18531
ADMIN_PORT=18532

# Disk: at most N responses × DISK_MIB each may sit in temp files at once.
BUDGET_MIB=$((N * DISK_MIB))
GUARD_MIB=$((BUDGET_MIB + N * (WINDOW + 2))) # plus what the clients drain
RESERVE_MIB=2048
avail_mib=$(df -B1M --output=avail "$WORK" | tail -n1 | tr -d ' M')
echo "worst case on disk: $N × $DISK_MIB MiB = $((BUDGET_MIB / 1024)) GiB; $((avail_mib / 1024)) GiB free under $WORK" >&2
if ((avail_mib * 2 < BUDGET_MIB * 3)); then
  echo "refusing to run: less than 1.5 × $BUDGET_MIB MiB free; lower N or DISK_MIB" >&2
  exit 1
fi

mkdir -p "$WORK/docroot" "$WORK/routes" "$WORK/spill" "$WORK/lighttpd-tmp"

cat >"$WORK/routes/proxy.yaml" <<YAML
apiVersion: pier.dev/v1alpha1
kind: ProxyRoute
metadata: {name: bench, namespace: default}
spec:
  backends: [{address: "127.0.0.1:$BACKEND_PORT"}]
  buffering: {mode: Hybrid, memory: 64Ki, disk: ${DISK_MIB}Mi}
YAML

# nginx: buffering with temp files (proxy_buffering on is its default). Its
# 60 s timeouts are raised to HAProxy's 120 s so no proxy gives up within
# a window. nginx creates proxy_temp_path and hands it to its worker user.
nginx_conf nginx <<CONF
  proxy_temp_path $WORK/nginx-tmp;
  server {
    listen 127.0.0.1:$PORT;
    location / {
      proxy_pass http://127.0.0.1:$BACKEND_PORT;
      proxy_buffering on;
      proxy_max_temp_file_size ${DISK_MIB}m;
      proxy_read_timeout 120s;
      proxy_send_timeout 120s;
      send_timeout 120s;
    }
  }
CONF

# lighttpd: mod_proxy with its defaults; its temp files go to WORK (the
# default is /var/tmp) so they can be measured and removed.
cat >"$WORK/lighttpd.conf" <<CONF
server.modules += ("mod_proxy")
server.document-root = "$WORK/docroot"
server.bind = "127.0.0.1"
server.port = $PORT
server.upload-dirs = ("$WORK/lighttpd-tmp")
server.errorlog = "$WORK/lighttpd.error.log"
proxy.server = ("" => (("host" => "127.0.0.1", "port" => $BACKEND_PORT)))
CONF

cat >"$WORK/haproxy.cfg" <<CONF
global
  nbthread 1
  maxconn 9000
defaults
  mode http
  timeout connect 2s
  timeout client 120s
  timeout server 120s
frontend in
  bind 127.0.0.1:$PORT
  default_backend out
backend out
  server b1 127.0.0.1:$BACKEND_PORT
CONF

# The clients, killed on exit besides the servers in PIDS.
CLIENTS=()
trap 'for pid in "${CLIENTS[@]}"; do kill "$pid" 2>/dev/null || true; done; cleanup' EXIT

wait_ping() { # port name: waits for the backend's /ping through that port
  for _ in $(seq 200); do
    curl -sf -o /dev/null --max-time 1 "http://127.0.0.1:$1/ping" && return 0
    sleep 0.05
  done
  echo "$2 did not start" >&2
  return 1
}

start_backend() { # run directory
  taskset -c "$OTHER_CPU" python3 bench/lib/bulk_backend.py serve "$BACKEND_PORT" $((SIZE_MIB * MiB)) "$1/backend.log" &
  PIDS+=("$!")
  wait_ping "$BACKEND_PORT" backend
}

start_proxy() { # name run-directory -> sets PROXY_PID (the first process)
  case $1 in
    pier | pier-before)
      taskset -c "$PROXY_CPU" "$(pier_bin "$1")" --routes "$WORK/routes" --listen "127.0.0.1:$PORT" --listen-tls 127.0.0.1:0 \
        --admin "127.0.0.1:$ADMIN_PORT" --workers 1 --log warn --spill-dir "$WORK/spill" \
        --buffer-memory 64Mi --buffer-disk 64Gi 2>"$2/stderr" & ;;
    nginx) taskset -c "$PROXY_CPU" nginx -c "$WORK/nginx.conf" 2>"$2/stderr" & ;;
    lighttpd) taskset -c "$PROXY_CPU" lighttpd -D -f "$WORK/lighttpd.conf" 2>"$2/stderr" & ;;
    haproxy) taskset -c "$PROXY_CPU" haproxy -f "$WORK/haproxy.cfg" -db 2>"$2/stderr" & ;;
    *) echo "unknown server $1" >&2; return 1 ;;
  esac
  PROXY_PID=$!
  PIDS+=("$PROXY_PID")
  wait_ping "$PORT" "$1"
}

temp_dir() { # name -> the proxy's temp directory, if it has one
  case $1 in
    pier | pier-before) echo "$WORK/spill" ;;
    nginx) echo "$WORK/nginx-tmp" ;;
    lighttpd) echo "$WORK/lighttpd-tmp" ;;
  esac
}

proc_tree() { # pid -> it and its descendants, one a line
  local child
  [[ -d /proc/$1 ]] || return 0
  echo "$1"
  for child in $(pgrep -P "$1" || true); do proc_tree "$child"; done
}

sum_field() { # file field pid... -> sum of "field: value" over /proc/PID/file
  local file=$1 field=$2 total=0 pid value
  shift 2
  for pid in "$@"; do
    value=$(awk -v f="$field:" '$1 == f {print $2}' "/proc/$pid/$file" 2>/dev/null || true)
    total=$((total + ${value:-0}))
  done
  echo "$total"
}

open_file_bytes() { # pid... -> allocated bytes of the regular files they hold open
  local pid
  for pid in "$@"; do
    stat -L -c '%d:%i %b %B %F' "/proc/$pid/fd/"* 2>/dev/null || true
  done | awk '$4 == "regular" && !seen[$1]++ { total += $2 * $3 } END { print total + 0 }'
}

snapshot() { # name run-directory: the proxy's figures, into run/snapshot
  local pids dir du=-
  mapfile -t pids < <(proc_tree "$PROXY_PID")
  dir=$(temp_dir "$1")
  if [[ -n $dir ]]; then du=$(du -sb "$dir" 2>/dev/null | cut -f1); fi
  echo "$(sum_field status VmHWM "${pids[@]}") $(sum_field io write_bytes "${pids[@]}")" \
    "$(open_file_bytes "${pids[@]}") $du" >"$2/snapshot"
}

guard() { # name run-directory t_start: in the background, stops a proxy past the disk budget
  local pids written avail
  while sleep 0.5; do
    mapfile -t pids < <(proc_tree "$PROXY_PID")
    ((${#pids[@]})) || return 0
    written=$(sum_field io write_bytes "${pids[@]}")
    avail=$(df -B1M --output=avail "$WORK" | tail -n1 | tr -d ' M')
    if ((written > GUARD_MIB * MiB || avail < RESERVE_MIB)); then
      snapshot "$1" "$2"
      kill -9 "${pids[@]}" 2>/dev/null || true
      awk -v t="$3" -v now="$(date +%s.%N)" -v w=$((written / MiB)) -v a="$avail" \
        'BEGIN { printf "stopped by the disk guard after %.1f s (%d MiB written, %d MiB free)\n", now - t, w, a }' >"$2/guard"
      return 0
    fi
  done
}

# name: one window for that proxy; its table row goes to WORK/name/row.
measure() {
  local name=$1 run=$WORK/$1 t_start t_end i guard_pid
  mkdir -p "$run"
  start_backend "$run"
  start_proxy "$name" "$run"
  t_start=$(date +%s.%N)
  CLIENTS=()
  for i in $(seq "$N"); do
    taskset -c "$OTHER_CPU" curl -s -o /dev/null --limit-rate 1M --max-time $((WINDOW + 2)) \
      -w '%{time_starttransfer} %{size_download} %{http_code} %{exitcode}\n' \
      "http://127.0.0.1:$PORT/big/$i" >"$run/client.$i" &
    CLIENTS+=("$!")
  done
  guard "$name" "$run" "$t_start" &
  guard_pid=$!
  sleep "$WINDOW"
  # The window's end: the figures are read before the clients go (their
  # --max-time gives two more seconds), as proxies drop temp files then.
  t_end=$(date +%s.%N)
  kill "$guard_pid" 2>/dev/null || true
  wait "$guard_pid" 2>/dev/null || true
  if [[ -f $run/guard ]]; then
    echo "   $name: $(cat "$run/guard")" >&2
  else
    snapshot "$name" "$run"
  fi
  if [[ $name == pier ]]; then
    curl -s --max-time 5 "http://127.0.0.1:$ADMIN_PORT/metrics" >"${REPORT%.md}-pier-metrics.txt" || true
  fi
  for i in "${CLIENTS[@]}"; do wait "$i" 2>/dev/null || true; done
  CLIENTS=()
  stop_last # the proxy
  stop_last # the backend
  cat "$run"/client.* >"$run/clients"
  if awk '$3 != 200 && $4 != 28 { bad++ } END { exit !bad }' "$run/clients"; then
    echo "   $name: some clients failed (time_starttransfer size code exit):" >&2
    awk '$3 != 200 && $4 != 28' "$run/clients" | sort | uniq -c | head -n5 >&2
  fi

  local rss written open du started released aborted held_median held_max
  read -r rss written open du <"$run/snapshot"
  read -r started released aborted held_median held_max < <(python3 bench/lib/bulk_backend.py held "$run/backend.log" "$t_end")
  released="$released / $N"
  ((started == N)) || released+=" ($started started)"
  ((aborted == 0)) || released+=", $aborted aborted"
  local ttfb_median ttfb_max client
  # Clients without a byte (time_starttransfer 0, or no HTTP status) count
  # as infinite: left out of t, so the median is "none" when half had none.
  read -r ttfb_median ttfb_max client < <(sort -g "$run/clients" | awk -v n="$N" '
    $1 > 0 && $3 != "000" { t[++k] = $1 } { bytes += $2 }
    END {
      m = int((n + 1) / 2)
      median = k >= m ? sprintf("%.3f", t[m]) : "none in window"
      max = k == n ? sprintf("%.3f", t[k]) : sprintf("none (%d/%d without a byte)", n - k, n)
      printf "%s|%s|%.0f\n", median, max, bytes / 1048576
    }' | tr ' |' '_ ')
  echo "| $name | $(awk -v k="$rss" 'BEGIN { printf "%.1f", k / 1024 }') | ${ttfb_median//_/ } | ${ttfb_max//_/ }" \
    "| $held_median | $held_max | $released" \
    "| $(awk -v b="$written" -v o="$open" -v d="$du" 'BEGIN {
        printf "%.0f | %.0f | %s", b / 1048576, o / 1048576, d == "-" ? "-" : sprintf("%.0f", d / 1048576) }')" \
    "| $client |" >"$run/row"
  # Nothing of this proxy may stay on disk (or dirty in the page cache)
  # for the next one.
  rm -rf "$WORK/nginx-tmp" "$WORK/spill/"* "$WORK/lighttpd-tmp/"*
  sync
}

mkdir -p bench/results
REPORT=bench/results/slow-$(date -u +%Y%m%dT%H%M%SZ).md
for server in $SERVERS; do
  echo "   $server: $N clients × ${SIZE_MIB} MiB at 1 MiB/s for ${WINDOW}s" >&2
  measure "$server"
  echo "   $(cat "$WORK/$server/row")" >&2
done

{
  echo "# Slow clients: $N × ${SIZE_MIB} MiB downloads at 1 MiB/s, measured at ${WINDOW}s ($(date -u +%F), proxy on one core)"
  echo
  echo "Parameters: N=$N SIZE_MIB=$SIZE_MIB WINDOW=${WINDOW}s (clients stop at $((WINDOW + 2))s) DISK_MIB=$DISK_MIB" \
    "(per-response temp cap: nginx proxy_max_temp_file_size, Pier buffering.disk; lighttpd has none), proxy on core $PROXY_CPU," \
    "backend and clients on core $OTHER_CPU."
  echo
  echo "| server | peak RSS MiB | TTFB median s | TTFB max s | backend held median s | held max s | released / N | disk written MiB | open temp files MiB | temp dir du MiB | client MiB |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|"
  for server in $SERVERS; do cat "$WORK/$server/row"; done
  echo
  echo "Held times run to the window's end for responses still open then. Peak RSS sums VmHWM over the proxy's processes." \
    "nginx and Pier unlink their temp files: see the open temp files column, not du."
  for server in $SERVERS; do
    if [[ -f $WORK/$server/guard ]]; then echo; echo "$server $(cat "$WORK/$server/guard")."; fi
  done
} | tee "$REPORT"
echo "written to $REPORT" >&2
