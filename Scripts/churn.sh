#!/usr/bin/env bash
# Reliability battery: connect/call/close churn against a release `intercom echo`.
# Prints the service's RSS, descriptors and mapping count before and after each
# phase (RELIABILITY.md records the figures).
#   Scripts/churn.sh [CYCLES]        (default 10000 per phase)
set -euo pipefail
cd "$(dirname "$0")/.."
cycles=${1:-10000}
source Scripts/lib.sh
start_echo

measure() {
  local rss fds maps
  rss=$(awk '/VmRSS/ {print $2}' /proc/$service/status)
  fds=$(ls /proc/$service/fd | wc -l)
  maps=$(wc -l < /proc/$service/maps)
  printf '%-32s rss_kib=%-8s fds=%-5s maps=%s\n' "$1" "$rss" "$fds" "$maps"
}

measure "baseline"
# One warm-up round so lazily created runtime state is not counted as growth.
"$bin/IntercomTestHelper" --churn 200 --serve echo --bus "$bus" >/dev/null
measure "after 200 warm-up cycles"
"$bin/IntercomTestHelper" --churn "$cycles" --serve echo --bus "$bus" >/dev/null
measure "after $cycles graceful (shm)"
INTERCOM_SHARED_MEMORY=off "$bin/IntercomTestHelper" --churn "$cycles" --serve echo --bus "$bus" >/dev/null
measure "after $cycles graceful (socket)"
"$bin/IntercomTestHelper" --churn "$cycles" --serve echo --bus "$bus" --abrupt >/dev/null
measure "after $cycles abrupt (socket)"
# Abrupt over shared memory: a process per cycle that connects, calls and
# vanishes (exit without closing), as a crashed client would.
vanishing=${VANISHING:-1000}
for _ in $(seq 1 "$vanishing"); do
  "$bin/IntercomTestHelper" --churn 1 --vanish --serve echo --bus "$bus" >/dev/null
done
sleep 1  # the service notices the last ones' sockets end
measure "after $vanishing vanished (shm)"
