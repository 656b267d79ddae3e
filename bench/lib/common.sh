# Shared by the benchmark scripts: sourced after `cd` to the repository.

# install_missing PEER_PACKAGE PEER_COMMAND...: wrk, nginx and curl, plus
# the given peers, from Debian when missing. Debian starts the packaged
# services; the benchmarks run their own, so those are stopped.
install_missing() {
  local need=()
  command -v wrk >/dev/null || need+=(wrk)
  command -v nginx >/dev/null || need+=(nginx-light)
  command -v curl >/dev/null || need+=(curl)
  local peer
  for peer in "$@"; do command -v "$peer" >/dev/null || need+=("$peer"); done
  if ((${#need[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    service nginx stop >/dev/null 2>&1 || true
    for peer in "$@"; do service "$peer" stop >/dev/null 2>&1 || true; done
  fi
  ulimit -n 20000 2>/dev/null || true
}

# Builds the dataplane unless PIER_BIN names one; sets PIER_BIN.
build_pier() {
  if [[ -z ${PIER_BIN:-} ]]; then
    cargo build --release -q -p pier-dataplane
    PIER_BIN=$(pwd)/target/release/pier-dataplane
  fi
}

# Two builds of Pier side by side: with PIER_BEFORE_BIN set (see
# bench/before_after.sh), the scripts also run that binary as the server
# "pier-before", in the same run and on the same cores as "pier".
pier_servers() { if [[ -n ${PIER_BEFORE_BIN:-} ]]; then echo "pier-before pier"; else echo pier; fi; }
pier_bin() { if [[ $1 == pier-before ]]; then echo "$PIER_BEFORE_BIN"; else echo "$PIER_BIN"; fi; }

# before_after_rows NAME...: for each measure NAME (an associative array
# keyed by server), a row "| NAME | before | after | after/before |" when
# pier-before ran; nothing otherwise.
before_after_rows() {
  [[ -n ${PIER_BEFORE_BIN:-} ]] || return 0
  echo
  echo "Two builds of Pier in this run: before = $PIER_BEFORE_BIN, after = $PIER_BIN."
  echo
  echo "| measure | before | after | after/before |"
  echo "|---|---|---|---|"
  local name
  for name in "$@"; do
    local -n values=$name
    echo "| $name | ${values[pier-before]} | ${values[pier]} | $(awk -v a="${values[pier]}" -v b="${values[pier-before]}" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "n/a" }') |"
  done
}

# A work directory (WORK) and the PIDS killed on exit.
WORK=$(mktemp -d)
chmod 755 "$WORK" # nginx workers run as www-data
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# Stops the most recently started server.
stop_last() {
  kill "${PIDS[-1]}" 2>/dev/null || true
  wait "${PIDS[-1]}" 2>/dev/null || true
  unset 'PIDS[-1]'
  sleep 0.5
}

# nginx_conf NAME: writes WORK/NAME.conf for one nginx worker in the
# foreground (pid and error log under WORK, 10,000 connections, no access
# log); the contents of its http block come from stdin.
nginx_conf() {
  {
    cat <<CONF
worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
pid $WORK/$1.pid;
error_log $WORK/$1.error.log;
events { worker_connections 10000; }
http {
  access_log off;
CONF
    cat
    echo "}"
  } >"$WORK/$1.conf"
}

median() { sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }

to_us() { # wrk latency such as 812.00us, 1.20ms, 2.01s
  awk -v v="$1" 'BEGIN {
    if (v ~ /us$/) { sub(/us$/, "", v); print v }
    else if (v ~ /ms$/) { sub(/ms$/, "", v); print v * 1000 }
    else { sub(/s$/, "", v); print v * 1000000 } }'
}
