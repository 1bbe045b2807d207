#!/usr/bin/env bash
# count-tests.sh: count individual checks in a meson testlog.json; prints
# "P F S NAMES" (checks passed, checks failed, test programs skipped, and their
# names joined by commas, "-" when none). Used by scripts/test.sh and
# scripts/sanitize.sh.
#
#   bash scripts/count-tests.sh build/meson-logs/testlog.json
#
# Check's "Checks: N, Failures: F, Errors: E" line and the CLI script's
# "ok"/"not ok" lines are counted; a test that failed without either (a crash,
# a sanitizer abort before Check's summary, a timeout) counts once as failed.
# A test program meson reports as SKIP (it exited 77: tests/test_cuda_device
# without a usable GPU) counts as neither passed nor failed, only as skipped.
set -uo pipefail
if [ $# -ne 1 ] || [ ! -r "$1" ]; then
    echo "usage: bash $0 TESTLOG.json" >&2
    exit 2
fi
jq -rs '
  [ .[] | (.stdout // "") as $o | .result as $r | .name as $name |
    (if ($o | test("Checks: [0-9]+")) then
       ($o | capture("Checks: (?<n>[0-9]+), Failures: (?<f>[0-9]+), Errors: (?<e>[0-9]+)")
           | {p: ((.n|tonumber) - (.f|tonumber) - (.e|tonumber)), f: ((.f|tonumber) + (.e|tonumber))})
     elif ($o | test("(?m)^(not )?ok [0-9]")) then
       {p: ([$o | scan("(?m)^ok [0-9]")] | length), f: ([$o | scan("(?m)^not ok [0-9]")] | length)}
     else {p: (if $r == "OK" then 1 else 0 end), f: 0} end)
    | if ($r != "OK" and $r != "SKIP" and .f == 0) then .f = 1 else . end
    | if $r == "SKIP" then {p: 0, f: 0, s: $name} else . end ]
  | [.[] | .s // empty] as $skipped
  | "\(map(.p) | add // 0) \(map(.f) | add // 0) \($skipped | length) \(if ($skipped | length) > 0 then ($skipped | join(",")) else "-" end)"' "$1"
