#!/usr/bin/env bash
# Build and run the whole test suite (unit tests and CLI tests); the last line
# is "N passed, N failed". Installs missing Debian packages first.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
bash scripts/deps.sh || exit 1
[ -f build/build.ninja ] || meson setup build >/dev/null || exit 1
ninja -C build >/dev/null || { ninja -C build; exit 1; }
meson test -C build --print-errorlogs
status=$?
log=build/meson-logs/testlog.json
# Count individual checks (scripts/count-tests.sh: Check's summary lines, the
# CLI script's "ok"/"not ok" lines; a test that failed without either counts once).
read -r passed failed < <(bash scripts/count-tests.sh "$log")
echo "$passed passed, $failed failed"
exit $status
