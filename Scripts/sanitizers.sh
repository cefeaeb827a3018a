#!/usr/bin/env bash
# Runs the whole test suite under a sanitizer: Scripts/sanitizers.sh thread|address [TEST ARGUMENTS…]
# (arguments after the kind go to the test bundle, e.g. --skip NAME or --filter NAME)
# Builds into its own scratch path (.build-tsan / .build-asan), runs the test
# bundle with every process's reports written to a directory, and prints how
# many reports each kind of finding produced. Exit status: the suite's.
#
# Options, and why:
# - handle_segv=0: a few tests make a helper crash with SIGSEGV on purpose and
#   check that the parent sees "signaled(SIGSEGV)"; the sanitizer's own SEGV
#   handler would turn that into exit code 66 (TSan) or 1 (ASan).
# - SWIFT_BACKTRACE=enable=no: a Swift process that crashes (some helpers do
#   on purpose; a service that loses a name race exits through an uncaught
#   error) spawns the runtime's backtracer; under ThreadSanitizer that child
#   died in the sanitizer's fork handling (CHECK failed, tsan_rtl.cpp:261)
#   and the crashing process never finished.
# - exitcode=0: a helper process with a report exits as it would have (tests
#   check exit statuses); its reports are counted below all the same.
# - detect_leaks=0 (ASan): LeakSanitizer reports the Swift runtime's weak-
#   reference side tables and libdispatch's per-thread caches, never ours.
# - INTERCOM_TEST_HANG_LIMIT=1500: the suite's watchdog ends a run whose test
#   takes over 300 s; under ThreadSanitizer the 40 process starts of
#   twoProcessesRacingForANameOneWinsEveryTime alone took longer.
# - Scripts/tsan/suppressions.supp: swift-subprocess guards its state with
#   Synchronization.Mutex, whose futexes ThreadSanitizer does not model (the
#   same false positive that made Intercom switch to `Locked`).
set -euo pipefail
cd "$(dirname "$0")/.."
kind=${1:?usage: Scripts/sanitizers.sh thread|address [test arguments…]}
shift
case $kind in
  thread) scratch=.build-tsan ;;
  address) scratch=.build-asan ;;
  *) echo "unknown sanitizer $kind" >&2; exit 2 ;;
esac
reports=$(mktemp -d /tmp/intercom-$kind.XXXXXX)
if ! swift build --build-tests --sanitize="$kind" --scratch-path "$scratch" > "$reports/build.log" 2>&1; then
  tail -30 "$reports/build.log"
  exit 1
fi
options="log_path=$reports/report handle_segv=0 halt_on_error=0 exitcode=0"
export TSAN_OPTIONS="$options suppressions=$PWD/Scripts/tsan/suppressions.supp"
export ASAN_OPTIONS="$options detect_leaks=0"
export SWIFT_BACKTRACE=enable=no
export INTERCOM_TEST_HANG_LIMIT=${INTERCOM_TEST_HANG_LIMIT:-1500}
status=0
"$scratch/x86_64-unknown-linux-gnu/debug/intercomPackageTests.xctest" --testing-library swift-testing "$@" \
  > "$reports/suite.log" 2>&1 || status=$?
grep -a "Test run with" "$reports/suite.log" || tail -5 "$reports/suite.log"
echo "reports in $reports:"
cat "$reports"/report.* 2>/dev/null | grep -h "SUMMARY" | sed 's/ in .*//' | sort | uniq -c | sort -rn || true
exit $status
