#!/usr/bin/env bash
# The cost of the request-phase policy filters on the static hot path: one
# Pier, routes to the same 4 KiB file: one bare ("plain"), one with an
# access list and CORS ("guarded", asked with an allowed Origin, so both
# filters run and the response is marked), and two behind basic
# authentication, asked with the right password: a bcrypt user (cost 10,
# htpasswd -B's recommendation) and an Apache MD5 ($apr1$) one. nginx
# serves the same file behind auth_basic with the same htpasswd file, side
# by side. With PIER_BEFORE_BIN, that build serves the plain route too (no
# filter code at all), in the same run. Each server on core 0, wrk on
# core 1, runs interleaved, medians.
#
#   bash bench/policy.sh                 # RUNS=5 DURATION=10
#   QUICK=1 bash bench/policy.sh
set -euo pipefail

cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
DURATION=${DURATION:-10}
if [[ ${QUICK:-0} == 1 ]]; then RUNS=1; DURATION=3; fi
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}

source bench/lib/common.sh
install_missing
build_pier

DOCROOT=$WORK/docroot
mkdir -p "$DOCROOT" "$WORK/plain" "$WORK/both"
head -c 4096 /dev/urandom >"$DOCROOT/4k.bin"
PORT=18490

plain="apiVersion: pier.dev/v1alpha1
kind: StaticRoute
metadata: {name: plain, namespace: default}
spec: {root: $DOCROOT, hosts: [plain.test]}"
guarded="apiVersion: pier.dev/v1alpha1
kind: StaticRoute
metadata: {name: guarded, namespace: default}
spec:
  root: $DOCROOT
  hosts: [guarded.test]
  access: {allow: [127.0.0.0/8, 10.0.0.0/8], deny: [127.0.0.66]}
  cors: {allowOrigins: [\"https://ui.test\"], allowCredentials: true}"
# `htpasswd -nbB -C 10 bench bench-password`, `htpasswd -nbm md5 bench-password`.
HTPASSWD='bench:$2y$10$BnALQlDVl90bJoSSdvervOOFLiCyEftQy4.IgW4gX7SExqcR1d7P2
md5:$apr1$rE67oOGk$QfsG.YD5JyfihwoZPBDE11'
printf '%s\n' "$HTPASSWD" >"$WORK/htpasswd"
authed="apiVersion: v1
kind: Secret
metadata: {name: users, namespace: default}
stringData:
  auth: |
$(sed 's/^/    /' "$WORK/htpasswd")
---
apiVersion: pier.dev/v1alpha1
kind: StaticRoute
metadata: {name: authed, namespace: default}
spec: {root: $DOCROOT, hosts: [authed.test], basicAuth: {secretName: users}}"
echo "$plain" >"$WORK/plain/plain.yaml"
echo "$plain" >"$WORK/both/plain.yaml"
echo "$guarded" >"$WORK/both/guarded.yaml"
echo "$authed" >"$WORK/both/authed.yaml"
BCRYPT="Authorization: Basic $(printf 'bench:bench-password' | base64)"
MD5="Authorization: Basic $(printf 'md5:bench-password' | base64)"

nginx_conf nginx <<CONF
  open_file_cache max=1000 inactive=60s;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$PORT;
    root $DOCROOT;
    auth_basic "bench";
    auth_basic_user_file $WORK/htpasswd;
  }
CONF

start() { # BIN ROUTES
  taskset -c "$SERVER_CPU" "$1" --routes "$2" --listen "127.0.0.1:$PORT" --listen-tls 127.0.0.1:0 \
    --admin 127.0.0.1:0 --workers 1 --log warn &
  PIDS+=("$!")
  for _ in $(seq 200); do
    curl -sf -o /dev/null -H 'Host: plain.test' "http://127.0.0.1:$PORT/4k.bin" && return 0
    sleep 0.05
  done
  echo "pier did not start" >&2
  return 1
}

start_nginx() {
  taskset -c "$SERVER_CPU" nginx -c "$WORK/nginx.conf" &
  PIDS+=("$!")
  for _ in $(seq 200); do
    curl -sf -o /dev/null -H "$MD5" "http://127.0.0.1:$PORT/4k.bin" && return 0
    sleep 0.05
  done
  echo "nginx did not start" >&2
  return 1
}

run_wrk() { # HOST [HEADER] -> "rps p99_us"
  local extra=()
  [[ -n ${2:-} ]] && extra=(-H "$2")
  local out
  out=$(taskset -c "$LOAD_CPU" wrk -t1 -c64 -d"${DURATION}s" --latency -H "Host: $1" "${extra[@]}" "http://127.0.0.1:$PORT/4k.bin")
  echo "$(awk '/Requests\/sec/ {print $2}' <<<"$out") $(to_us "$(awk '$1 == "99%" {print $2}' <<<"$out")")"
}

declare -a PLAIN_RPS GUARD_RPS BEFORE_RPS PLAIN_P99 GUARD_P99 BEFORE_P99
declare -a BC_RPS BC_P99 MD5_RPS MD5_P99 NBC_RPS NBC_P99 NMD5_RPS NMD5_P99
# The guarded route's answer carries the CORS headers: checked once.
start "$PIER_BIN" "$WORK/both"
curl -sf -D - -o /dev/null -H 'Host: guarded.test' -H 'Origin: https://ui.test' "http://127.0.0.1:$PORT/4k.bin" |
  grep -qi '^access-control-allow-origin: https://ui.test' || { echo "guarded route not marked" >&2; exit 1; }
# The authenticated route refuses without a password and serves with one.
[[ $(curl -s -o /dev/null -w '%{http_code}' -H 'Host: authed.test' "http://127.0.0.1:$PORT/4k.bin") == 401 ]] ||
  { echo "authed route served without a password" >&2; exit 1; }
curl -sf -o /dev/null -H 'Host: authed.test' -H "$BCRYPT" "http://127.0.0.1:$PORT/4k.bin" ||
  { echo "authed route refused the password" >&2; exit 1; }
stop_last
for i in $(seq "$RUNS"); do
  echo "== run $i" >&2
  start "$PIER_BIN" "$WORK/both"
  taskset -c "$LOAD_CPU" wrk -t1 -c64 -d2s -H 'Host: plain.test' "http://127.0.0.1:$PORT/4k.bin" >/dev/null
  read -r r p < <(run_wrk plain.test); PLAIN_RPS+=("$r"); PLAIN_P99+=("$p")
  read -r r p < <(run_wrk guarded.test "Origin: https://ui.test"); GUARD_RPS+=("$r"); GUARD_P99+=("$p")
  read -r r p < <(run_wrk authed.test "$BCRYPT"); BC_RPS+=("$r"); BC_P99+=("$p")
  read -r r p < <(run_wrk authed.test "$MD5"); MD5_RPS+=("$r"); MD5_P99+=("$p")
  stop_last
  start_nginx
  read -r r p < <(run_wrk nginx.test "$BCRYPT"); NBC_RPS+=("$r"); NBC_P99+=("$p")
  read -r r p < <(run_wrk nginx.test "$MD5"); NMD5_RPS+=("$r"); NMD5_P99+=("$p")
  stop_last
  if [[ -n ${PIER_BEFORE_BIN:-} ]]; then
    start "$PIER_BEFORE_BIN" "$WORK/plain"
    taskset -c "$LOAD_CPU" wrk -t1 -c64 -d2s -H 'Host: plain.test' "http://127.0.0.1:$PORT/4k.bin" >/dev/null
    read -r r p < <(run_wrk plain.test); BEFORE_RPS+=("$r"); BEFORE_P99+=("$p")
    stop_last
  fi
  echo "   plain ${PLAIN_RPS[-1]}, guarded ${GUARD_RPS[-1]}, bcrypt ${BC_RPS[-1]}, md5 ${MD5_RPS[-1]}, nginx bcrypt ${NBC_RPS[-1]}, nginx md5 ${NMD5_RPS[-1]} req/s${BEFORE_RPS:+, before ${BEFORE_RPS[-1]} req/s}" >&2
done

med() { printf '%s\n' "$@" | median; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "n/a" }'; }
mkdir -p bench/results
report=bench/results/policy-$(date -u +%Y%m%dT%H%M%SZ).md
{
  echo "# Policy filters on the static path ($(date -u +%F), runs=$RUNS, ${DURATION}s each, one core)"
  echo
  echo "| route | req/s (median) | p99 µs (median) | ratio to plain |"
  echo "|---|---|---|---|"
  pr=$(med "${PLAIN_RPS[@]}"); pp=$(med "${PLAIN_P99[@]}")
  gr=$(med "${GUARD_RPS[@]}"); gp=$(med "${GUARD_P99[@]}")
  echo "| plain (no filters) | $pr | $pp | 1.000 |"
  echo "| guarded (access list + CORS, allowed Origin) | $gr | $gp | $(ratio "$gr" "$pr") |"
  for row in "basic auth, bcrypt cost 10|BC" "basic auth, apr1 MD5|MD5" "nginx auth_basic, bcrypt cost 10|NBC" "nginx auth_basic, apr1 MD5|NMD5"; do
    name=${row%|*}; var=${row#*|}
    declare -n rps="${var}_RPS" p99="${var}_P99"
    r=$(med "${rps[@]}"); p=$(med "${p99[@]}")
    echo "| $name | $r | $p | $(ratio "$r" "$pr") |"
    unset -n rps p99
  done
  if [[ -n ${PIER_BEFORE_BIN:-} ]]; then
    br=$(med "${BEFORE_RPS[@]}"); bp=$(med "${BEFORE_P99[@]}")
    echo "| plain on $PIER_BEFORE_BIN | $br | $bp | $(ratio "$br" "$pr") |"
  fi
} | tee "$report"
echo "written to $report" >&2
