#!/usr/bin/env bash
# Resident and private memory of an idle `intercom echo` service, for each binary given:
#   Scripts/idle-rss.sh .build/release/intercom [/tmp/intercom-before …]
# Each binary serves `echo` on a private bus for 3 s (one tick event a second,
# no clients), then its VmRSS is read from /proc; 3 rounds, binaries alternating.
# Also says whether the binary links full Foundation (libFoundation.so, ICU).
set -euo pipefail
for round in 1 2 3; do
  for binary in "$@"; do
    bus=$(mktemp -d /tmp/intercom-rss.XXXXXX)
    INTERCOM_BUS_DIR=$bus "$binary" echo >/dev/null 2>&1 &
    pid=$!
    sleep 3
    rss=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
    # Private pages are this process's own; the rest of RSS is library text
    # shared with every other Swift process on the machine.
    private=$(awk '/^Private_(Clean|Dirty):/ {sum += $2} END {print sum}' /proc/$pid/smaps_rollup)
    kill -TERM $pid; wait $pid 2>/dev/null || true
    rmdir "$bus" 2>/dev/null || true
    foundation=$(ldd "$binary" | grep -c 'libFoundation.so' || true)
    echo "round=$round binary=$binary rss_kib=$rss private_kib=$private links_full_foundation=$([ "$foundation" -gt 0 ] && echo yes || echo no)"
  done
done
