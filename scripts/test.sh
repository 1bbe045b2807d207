#!/usr/bin/env bash
# Build and run the whole test suite (unit tests and CLI tests); the last line
# is "N passed, N failed". Installs missing Debian packages first.
# The tests build in build-test/: the optimised release build users get in
# build/ (scripts/quickstart.sh), but with assert() kept on (b_ndebug=false).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
bash scripts/deps.sh || exit 1
[ -f build-test/build.ninja ] || meson setup build-test -Db_ndebug=false >/dev/null || exit 1
ninja -C build-test >/dev/null || { ninja -C build-test; exit 1; }
meson test -C build-test --print-errorlogs
status=$?
log=build-test/meson-logs/testlog.json
# Count individual checks (scripts/count-tests.sh: Check's summary lines, the
# CLI script's "ok"/"not ok" lines; a test that failed without either counts once;
# a test program meson reports as SKIP, exit 77, counts in neither and is named
# on a line of its own).
read -r passed failed skipped skipped_names < <(bash scripts/count-tests.sh "$log")
[ "${skipped:-0}" -eq 0 ] || echo "$skipped skipped (exit 77, e.g. no usable GPU; not counted): $skipped_names"
echo "$passed passed, $failed failed"
exit $status
