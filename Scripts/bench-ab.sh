#!/usr/bin/env bash
# Interleaved single-scenario runs of several `intercom` release binaries: the
# way to settle a cell that `bench-compare.sh` leaves to noise (one scenario at
# a time, builds alternating every round). Give it the machine to itself.
#
#   Scripts/bench-ab.sh ROUNDS "TRANSPORT:SCENARIO …" BINARY…
#   Scripts/bench-ab.sh 8 "shm:S1 socketpair:S4" /tmp/intercom-before .build/release/intercom
#
# Prints, per result line and binary, the median, minimum and maximum.
set -euo pipefail
rounds=$1 cases=$2
shift 2
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for _ in $(seq 1 "$rounds"); do
  for c in $cases; do
    transport=${c%%:*} scenario=${c##*:}
    for binary in "$@"; do
      "$binary" bench --transport "$transport" --scenario "$scenario" 2>/dev/null | grep '^peer=' | while read -r line; do
        name=$(echo "$line" | sed -E 's/peer=intercom-([^ ]*) scenario=(S[0-9]).*/\1-\2/')
        value=$(echo "$line" | awk '{print $3}' | cut -d= -f2)
        echo "$binary $name $value" >> "$out"
      done
    done
  done
done
python3 - "$out" <<'PY'
import collections, statistics, sys
results = collections.defaultdict(list)
for line in open(sys.argv[1]):
    binary, name, value = line.split()
    results[(name, binary)].append(float(value))
for (name, binary), values in sorted(results.items()):
    print(f"{name:36} {binary:40} median {statistics.median(values):12.2f}  min {min(values):12.2f}  max {max(values):12.2f}  n={len(values)}")
PY
