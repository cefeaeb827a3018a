#!/usr/bin/env bash
# S1–S5 of two release builds of `intercom` over every transport, beside the C
# reference (../shared/bench/c_ipc.c), alternating in one run: the regression
# check of a change. Give it the machine to itself (no build, no test).
#
#   Scripts/bench-compare.sh BEFORE_BINARY AFTER_BINARY [ROUNDS] [PIN]
#
# PIN (e.g. "taskset -c 0") runs every program, C included, under that prefix.
# Prints every line; summarise medians per scenario from the output.
set -euo pipefail
before=$1 after=$2 rounds=${3:-3} pin=${4:-}
here=$(cd "$(dirname "$0")/.." && pwd)
cref=/tmp/c_ipc
gcc -O2 -o "$cref" "$here/../shared/bench/c_ipc.c" -lpthread
for round in $(seq 1 "$rounds"); do
  for transport in socketpair unix shm; do
    case $transport in socketpair) c=socketpair ;; unix) c=unixpath ;; shm) c=shm-futex ;; esac
    echo "## round $round transport $transport"
    echo "# C $c"; timeout 60 $pin "$cref" "$c" 2>&1 | grep -E '^S[1-5]|scenario=S[1-5]' || true
    for build in before after; do
      binary=$before; [ $build = after ] && binary=$after
      echo "# $build"; $pin "$binary" bench --transport "$transport" --scenario all 2>&1 | grep -E '^S[1-5]|scenario=S[1-5]' || true
    done
  done
done
