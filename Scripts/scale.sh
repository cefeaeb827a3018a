#!/usr/bin/env bash
# Reliability battery: one release `intercom echo` with 10 and then N idle
# clients held open; connect+call and call times at each level, and the
# service's state at the end (RELIABILITY.md records the figures).
#   Scripts/scale.sh [N]        (default 2000)
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-2000}
source Scripts/lib.sh
ulimit -n "$(ulimit -Hn)"
start_echo
"$bin/IntercomTestHelper" --scale "$count" --serve echo --bus "$bus"
printf 'service alive: %s  rss_kib=%s\n' "$(kill -0 $service && echo yes)" "$(awk '/VmRSS/ {print $2}' /proc/$service/status)"
