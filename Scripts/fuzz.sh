#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer from the Swift toolchain) of every decoder
# that reads a stranger's bytes. Each target runs RUNS executions (default 10 M)
# from its corpus in Fuzz/corpus/TARGET; new inputs that add coverage are kept
# there after merging, so the corpus stays small. RELIABILITY.md has the figures.
#   Scripts/fuzz.sh [TARGET...]      (default: frame hello error binary json ring)
# SANITIZE=fuzzer runs without AddressSanitizer (5-10x more executions a second;
# Swift's own bounds and overflow checks still trap); the default adds ASan.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-10000000}
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(frame hello error binary json ring)
sanitize=${SANITIZE:-fuzzer,address}
scratch_path=.build-fuzz-${sanitize//,/-}
swift build -c release --scratch-path "$scratch_path" --product IntercomFuzz \
  -Xswiftc -sanitize="$sanitize" -Xswiftc -DINTERCOM_FUZZING >/dev/null
binary=$(swift build -c release --scratch-path "$scratch_path" --show-bin-path)/IntercomFuzz
for target in "${targets[@]}"; do
  corpus=Fuzz/corpus/$target
  scratch=$(mktemp -d)
  mkdir -p "$corpus"
  echo "== $target: $runs runs"
  INTERCOM_FUZZ_TARGET=$target "$binary" -runs="$runs" -max_len=4096 -timeout=10 \
    -print_final_stats=1 "$scratch" "$corpus" 2>&1 | grep -E "stat::number_of_executed_units|stat::new_units_added|Done|ERROR|SUMMARY" || true
  # Keep only what adds coverage.
  merged=$(mktemp -d)
  INTERCOM_FUZZ_TARGET=$target "$binary" -merge=1 "$merged" "$corpus" "$scratch" >/dev/null 2>&1 || true
  rm -rf "$corpus" && mv "$merged" "$corpus" && rm -rf "$scratch"
  echo "   corpus: $(ls "$corpus" | wc -l) files"
done
