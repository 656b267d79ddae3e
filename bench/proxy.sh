#!/usr/bin/env bash
# Proxy benchmark: Pier beside nginx and HAProxy, each proxying a 1 KiB
# response from the same fast backend (nginx serving a file, one worker).
# The proxy under test is pinned to core 0; the backend and the load
# generator share core 1, so on two cores they may saturate before a good
# proxy does: besides requests/s the script reports the proxy's CPU seconds
# per 100,000 requests (utime + stime from /proc/PID/stat), which does not
# depend on who saturates first. Every proxy sets the same forwarding
# headers (X-Forwarded-For, -Proto, -Host, Forwarded), as a deployment
# would, and the three take turns run by run so drift hits them alike.
#
# With STICKY=1 (the default) a second Pier, whose route keeps clients
# by cookie affinity, takes its turn too: wrk keeps no cookies, so every
# answer carries a Set-Cookie, the feature's dearest case.
#
#   bash bench/proxy.sh            # RUNS=3 DURATION=10
#   QUICK=1 bash bench/proxy.sh    # one short run, a smoke check
#   PEERS="" bash bench/proxy.sh   # Pier with and without affinity only
set -euo pipefail

cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
if [[ ${QUICK:-0} == 1 ]]; then RUNS=1; DURATION=3; fi
PROXY_CPU=${PROXY_CPU:-0}
OTHER_CPU=${OTHER_CPU:-1}
# The peers beside Pier; PEERS="" compares two builds of Pier alone.
PEERS=${PEERS-nginx haproxy}
STICKY=${STICKY:-1}

source bench/lib/common.sh
install_missing haproxy
build_pier

BACKEND_PORT=18510
PORT=18511
ADMIN_PORT=18512
mkdir -p "$WORK/docroot" "$WORK/routes" "$WORK/sticky"
head -c 1024 /dev/urandom >"$WORK/docroot/1k.bin"

# The backend: nginx, one worker, on the other core.
nginx_conf backend <<CONF
  keepalive_requests 1000000;
  open_file_cache max=100;
  default_type application/octet-stream;
  server { listen 127.0.0.1:$BACKEND_PORT; root $WORK/docroot; }
CONF
taskset -c "$OTHER_CPU" nginx -c "$WORK/backend.conf" &
PIDS+=("$!")

cat >"$WORK/routes/proxy.yaml" <<YAML
apiVersion: pier.dev/v1alpha1
kind: ProxyRoute
metadata: {name: bench, namespace: default}
spec:
  backends: [{address: "127.0.0.1:$BACKEND_PORT"}]
YAML
sed 's/^spec:$/spec:\n  affinity: {cookie: {name: sticky}}/' "$WORK/routes/proxy.yaml" >"$WORK/sticky/proxy.yaml"

nginx_conf nginx <<CONF
  keepalive_requests 1000000;
  upstream backend { server 127.0.0.1:$BACKEND_PORT; keepalive 64; }
  server {
    listen 127.0.0.1:$PORT;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header X-Forwarded-Host \$host;
      proxy_set_header Forwarded "for=\$remote_addr;host=\$host;proto=\$scheme";
    }
  }
CONF

cat >"$WORK/haproxy.cfg" <<CONF
global
  nbthread 1
  maxconn 9000
defaults
  mode http
  timeout connect 2s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend in
  bind 127.0.0.1:$PORT
  option forwardfor
  http-request set-header X-Forwarded-Proto http
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  http-request add-header Forwarded "for=%[src];host=%[req.hdr(host)];proto=http"
  default_backend out
backend out
  server b1 127.0.0.1:$BACKEND_PORT
CONF

start_proxy() { # name -> sets PROXY_PID (the process whose CPU counts)
  case $1 in
    pier | pier-before | pier-sticky)
      local routes=$WORK/routes
      [[ $1 == pier-sticky ]] && routes=$WORK/sticky
      taskset -c "$PROXY_CPU" "$(pier_bin "${1/-sticky/}")" --routes "$routes" --listen "127.0.0.1:$PORT" --listen-tls 127.0.0.1:0 \
        --admin "127.0.0.1:$ADMIN_PORT" --workers 1 --log warn &
      PROXY_PID=$! ;;
    nginx)
      taskset -c "$PROXY_CPU" nginx -c "$WORK/nginx.conf" &
      local master=$!
      for _ in $(seq 100); do PROXY_PID=$(pgrep -P "$master" | head -n1 || true); [[ -n $PROXY_PID ]] && break; sleep 0.05; done ;;
    haproxy)
      taskset -c "$PROXY_CPU" haproxy -f "$WORK/haproxy.cfg" -db &
      PROXY_PID=$! ;;
  esac
  PIDS+=("$!")
  for _ in $(seq 200); do
    curl -sf -o /dev/null "http://127.0.0.1:$PORT/1k.bin" && return 0
    sleep 0.05
  done
  echo "$1 did not start" >&2
  return 1
}


cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

measure() { # one run -> "rps p99_us cpu_s_per_100k"
  local hz before after out requests
  hz=$(getconf CLK_TCK)
  taskset -c "$OTHER_CPU" wrk -t1 -c64 -d2s "http://127.0.0.1:$PORT/1k.bin" >/dev/null
  before=$(cpu_ticks "$PROXY_PID")
  out=$(taskset -c "$OTHER_CPU" wrk -t1 -c64 -d"${DURATION}s" --latency "http://127.0.0.1:$PORT/1k.bin")
  after=$(cpu_ticks "$PROXY_PID")
  if grep -q "Non-2xx" <<<"$out"; then echo "non-2xx answers: $out" >&2; fi
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  echo "$(awk '/Requests\/sec/ {print $2}' <<<"$out")" \
    "$(to_us "$(awk '$1 == "99%" {print $2}' <<<"$out")")" \
    "$(awk -v t=$((after - before)) -v hz="$hz" -v n="$requests" 'BEGIN { printf "%.3f", t / hz / n * 100000 }')"
}

declare -A RPS P99 CPU
SERVERS="$(pier_servers) $PEERS"
[[ $STICKY == 1 ]] && SERVERS+=" pier-sticky"
for run in $(seq "$RUNS"); do
  for proxy in $SERVERS; do
    start_proxy "$proxy"
    read -r rps p99 cpu < <(measure)
    stop_last
    echo "   run $run $proxy: $rps req/s, p99 $p99 us, $cpu CPU s per 100k requests" >&2
    RPS[$proxy]+="$rps "
    P99[$proxy]+="$p99 "
    CPU[$proxy]+="$cpu "
  done
done
for proxy in $SERVERS; do
  RPS[$proxy]=$(tr ' ' '\n' <<<"${RPS[$proxy]}" | grep . | median)
  P99[$proxy]=$(tr ' ' '\n' <<<"${P99[$proxy]}" | grep . | median)
  CPU[$proxy]=$(tr ' ' '\n' <<<"${CPU[$proxy]}" | grep . | median)
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }

mkdir -p bench/results
report=bench/results/proxy-$(date -u +%Y%m%dT%H%M%SZ).md
{
  echo "# Proxying 1 KiB: Pier, nginx, HAProxy ($(date -u +%F), runs=$RUNS, ${DURATION}s each, proxy on one core)"
  echo
  echo "| measure | Pier | nginx | HAProxy | Pier/nginx | Pier/HAProxy |"
  echo "|---|---|---|---|---|---|"
  echo "| req/s, 64 conns | ${RPS[pier]} | ${RPS[nginx]:-} | ${RPS[haproxy]:-} | $(ratio "${RPS[pier]}" "${RPS[nginx]:-}") | $(ratio "${RPS[pier]}" "${RPS[haproxy]:-}") |"
  echo "| p99 (µs) | ${P99[pier]} | ${P99[nginx]:-} | ${P99[haproxy]:-} | $(ratio "${P99[pier]}" "${P99[nginx]:-}") | $(ratio "${P99[pier]}" "${P99[haproxy]:-}") |"
  echo "| proxy CPU s per 100k requests | ${CPU[pier]} | ${CPU[nginx]:-} | ${CPU[haproxy]:-} | $(ratio "${CPU[pier]}" "${CPU[nginx]:-}") | $(ratio "${CPU[pier]}" "${CPU[haproxy]:-}") |"
  before_after_rows RPS P99 CPU
  if [[ $STICKY == 1 ]]; then
    echo
    echo "| Pier with cookie affinity (Set-Cookie on every answer) | req/s | p99 (µs) | CPU s per 100k |"
    echo "|---|---|---|---|"
    echo "| value | ${RPS[pier-sticky]} | ${P99[pier-sticky]} | ${CPU[pier-sticky]} |"
    echo "| ratio to Pier without | $(ratio "${RPS[pier-sticky]}" "${RPS[pier]}") | $(ratio "${P99[pier-sticky]}" "${P99[pier]}") | $(ratio "${CPU[pier-sticky]}" "${CPU[pier]}") |"
  fi
} | tee "$report"
echo "written to $report" >&2
