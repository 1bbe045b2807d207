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
# Count individual checks: Check's "Checks: N, Failures: F, Errors: E" line, the
# CLI script's "ok"/"not ok" lines; a test that failed without either counts once.
read -r passed failed < <(jq -rs '
  [ .[] | (.stdout // "") as $o | .result as $r |
    (if ($o | test("Checks: [0-9]+")) then
       ($o | capture("Checks: (?<n>[0-9]+), Failures: (?<f>[0-9]+), Errors: (?<e>[0-9]+)")
           | {p: ((.n|tonumber) - (.f|tonumber) - (.e|tonumber)), f: ((.f|tonumber) + (.e|tonumber))})
     elif ($o | test("(?m)^(not )?ok [0-9]")) then
       {p: ([$o | scan("(?m)^ok [0-9]")] | length), f: ([$o | scan("(?m)^not ok [0-9]")] | length)}
     else {p: (if $r == "OK" then 1 else 0 end), f: 0} end)
    | if ($r != "OK" and $r != "SKIP" and .f == 0) then .f = 1 else . end ]
  | "\(map(.p) | add // 0) \(map(.f) | add // 0)"' "$log")
echo "$passed passed, $failed failed"
exit $status
