#!/usr/bin/env bash
# TLS benchmark: Pier beside nginx (one worker), each on core 0, wrk on
# core 1, serving a 4 KiB file over HTTPS with the same ECDSA P-256
# certificate. Two figures: requests/s on keep-alive connections, and new
# connections per second (`Connection: close`, so every request is a full
# TCP and TLS handshake). Servers take turns run by run.
#
#   bash bench/tls.sh            # RUNS=3 DURATION=10
#   QUICK=1 bash bench/tls.sh    # one short run, a smoke check
set -euo pipefail

cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
if [[ ${QUICK:-0} == 1 ]]; then RUNS=1; DURATION=3; fi
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}

source bench/lib/common.sh
install_missing openssl
build_pier

PORT=18540
ADMIN_PORT=18541
DOCROOT=$WORK/docroot
mkdir -p "$DOCROOT" "$WORK/routes"
head -c 4096 /dev/urandom >"$DOCROOT/4k.bin"

# One certificate for both: ECDSA P-256, as most sites now use.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
  -subj "/CN=bench.example" -addext "subjectAltName=DNS:bench.example" \
  -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null

indent() { sed 's/^/    /' "$1"; }
cat >"$WORK/routes/site.yaml" <<YAML
apiVersion: pier.dev/v1alpha1
kind: StaticRoute
metadata: {name: bench, namespace: default}
spec:
  hosts: [bench.example]
  root: $DOCROOT
  tls: {secretName: bench-tls}
---
apiVersion: v1
kind: Secret
metadata: {name: bench-tls, namespace: default}
type: kubernetes.io/tls
stringData:
  tls.crt: |
$(indent "$WORK/cert.pem")
  tls.key: |
$(indent "$WORK/key.pem")
YAML

nginx_conf nginx <<CONF
  sendfile on;
  open_file_cache max=1000 inactive=60s;
  keepalive_requests 1000000;
  default_type application/octet-stream;
  server {
    listen 127.0.0.1:$PORT ssl;
    server_name bench.example;
    ssl_certificate $WORK/cert.pem;
    ssl_certificate_key $WORK/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    root $DOCROOT;
  }
CONF

start_server() { # name -> sets SERVER_PID
  case $1 in
    pier)
      taskset -c "$SERVER_CPU" "$PIER_BIN" --routes "$WORK/routes" --listen 127.0.0.1:0 \
        --listen-tls "127.0.0.1:$PORT" --tls-default-cert "$WORK/cert.pem" --tls-default-key "$WORK/key.pem" \
        --admin "127.0.0.1:$ADMIN_PORT" --workers 1 --log warn &
      SERVER_PID=$! ;;
    nginx)
      taskset -c "$SERVER_CPU" nginx -c "$WORK/nginx.conf" &
      local master=$!
      for _ in $(seq 100); do SERVER_PID=$(pgrep -P "$master" | head -n1 || true); [[ -n $SERVER_PID ]] && break; sleep 0.05; done ;;
  esac
  PIDS+=("$!")
  for _ in $(seq 200); do
    curl -skf -o /dev/null --resolve "bench.example:$PORT:127.0.0.1" "https://bench.example:$PORT/4k.bin" && return 0
    sleep 0.05
  done
  echo "$1 did not start" >&2
  return 1
}

# wrk sends the address as SNI, which names no route: both servers answer
# with their one certificate (Pier's as --tls-default-cert).
wrk_run() { # extra wrk args... -> wrk output
  taskset -c "$LOAD_CPU" wrk -t1 "$@" "https://127.0.0.1:$PORT/4k.bin" -H "Host: bench.example"
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

declare -A KEEP HANDSHAKE KCPU HCPU
for run in $(seq "$RUNS"); do
  for server in pier nginx; do
    start_server "$server"
    wrk_run -c64 -d2s >/dev/null
    before=$(cpu_ticks "$SERVER_PID")
    out=$(wrk_run -c64 -d"${DURATION}s")
    after=$(cpu_ticks "$SERVER_PID")
    keep=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    kcpu=$(awk -v t=$((after - before)) -v n="$(awk '/requests in/ {print $1}' <<<"$out")" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.3f", t / hz / n * 100000 }')
    before=$(cpu_ticks "$SERVER_PID")
    out=$(wrk_run -c16 -d"${DURATION}s" -H "Connection: close")
    after=$(cpu_ticks "$SERVER_PID")
    hand=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    hcpu=$(awk -v t=$((after - before)) -v n="$(awk '/requests in/ {print $1}' <<<"$out")" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.3f", t / hz / n * 100000 }')
    if grep -q "Non-2xx\|errors" <<<"$out"; then echo "   errors: $(grep -E 'Non-2xx|errors' <<<"$out")" >&2; fi
    stop_last
    echo "   run $run $server: keep-alive $keep req/s ($kcpu CPU s/100k), handshakes $hand/s ($hcpu CPU s/100k)" >&2
    KEEP[$server]+="$keep "
    HANDSHAKE[$server]+="$hand "
    KCPU[$server]+="$kcpu "
    HCPU[$server]+="$hcpu "
  done
done
med() { tr ' ' '\n' <<<"$1" | grep . | median; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }

mkdir -p bench/results
report=bench/results/tls-$(date -u +%Y%m%dT%H%M%SZ).md
{
  echo "# TLS 4 KiB: Pier and nginx ($(date -u +%F), runs=$RUNS, ${DURATION}s each, one core per server, ECDSA P-256)"
  echo
  echo "| measure | Pier | nginx | Pier/nginx |"
  echo "|---|---|---|---|"
  for row in "keep-alive req/s, 64 conns:KEEP" "server CPU s per 100k keep-alive requests:KCPU" "new TLS connections/s, 16 conns:HANDSHAKE" "server CPU s per 100k handshakes:HCPU"; do
    label=${row%%:*}; var=${row##*:}
    declare -n values=$var
    p=$(med "${values[pier]}"); n=$(med "${values[nginx]}")
    echo "| $label | $p | $n | $(ratio "$p" "$n") |"
  done
} | tee "$report"
echo "written to $report" >&2
