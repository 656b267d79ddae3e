#!/usr/bin/env bash
# Two builds of Pier side by side in one run: the dataplane of REV ("before")
# and of the working tree ("after"), each in the static, proxy and slow-client
# benchmarks beside the peers, on the same cores, with an after/before table.
# REV's binary is built once into a cache and reused.
#
#   bash bench/before_after.sh 14a3fac
#   PIER_BEFORE_BIN=/path/to/old/pier-dataplane bash bench/before_after.sh
#
# RUNS, DURATION and QUICK pass through to static.sh and proxy.sh; slow.sh
# runs the two builds only, QUICK=1 sized (N=10, 256 MiB, 15 s) unless
# SLOW_QUICK=0.
set -euo pipefail

cd "$(dirname "$0")/.."
if [[ -z ${PIER_BEFORE_BIN:-} ]]; then
  rev=$(git rev-parse --short "${1:?usage: bench/before_after.sh REV}")
  cache=${PIER_BENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pier-bench}/before-$rev
  if [[ ! -x $cache/pier-dataplane ]]; then
    mkdir -p "$cache"
    tree=$(mktemp -d)
    git worktree add -q --detach "$tree" "$rev"
    (cd "$tree" && CARGO_TARGET_DIR=$cache/target cargo build --release -q -p pier-dataplane)
    cp "$cache/target/release/pier-dataplane" "$cache/pier-dataplane"
    rm -rf "$cache/target"
    git worktree remove --force "$tree"
  fi
  PIER_BEFORE_BIN=$cache/pier-dataplane
fi
cargo build --release -q -p pier-dataplane
PIER_BIN=$(pwd)/target/release/pier-dataplane
export PIER_BIN PIER_BEFORE_BIN

bash bench/static.sh
bash bench/proxy.sh
SERVERS="pier-before pier" QUICK=${SLOW_QUICK:-1} bash bench/slow.sh
