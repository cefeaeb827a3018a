#!/usr/bin/env bash
# Reliability battery: one release `intercom echo` with 10 and then N idle
# clients held open; connect+call and call times at each level, and the
# service's state at the end (RELIABILITY.md records the figures).
#   Scripts/scale.sh [N]        (default 2000)
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-2000}
config=${CONFIG:-release}
swift build -c "$config" --product intercom >/dev/null
swift build -c "$config" --product IntercomTestHelper >/dev/null
bin=$(swift build -c "$config" --show-bin-path)
bus=$(mktemp -d /tmp/intercom-scale.XXXXXX)
chmod 700 "$bus"
ulimit -n "$(ulimit -Hn)"
INTERCOM_BUS_DIR=$bus "$bin/intercom" echo --name echo 2>/dev/null &
service=$!
trap 'kill $service 2>/dev/null; wait $service 2>/dev/null; rm -rf "$bus"' EXIT
for _ in $(seq 1 200); do [ -S "$bus/echo.sock" ] && [ -f "$bus/echo.json" ] && break; sleep 0.05; done
"$bin/IntercomTestHelper" --scale "$count" --serve echo --bus "$bus"
printf 'service alive: %s  rss_kib=%s\n' "$(kill -0 $service && echo yes)" "$(awk '/VmRSS/ {print $2}' /proc/$service/status)"
