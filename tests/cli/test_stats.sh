#!/usr/bin/env bash
# test_stats.sh: experiments/common/stats.sh, the statistics of the results
# READMEs, against values worked out by hand: mean, sample SD (n - 1), the 95%
# Student t interval (t(0.975, 2) = 4.303, t(0.975, 1) = 12.706), paired
# differences and "resolved" (the interval excludes 0), the runs.csv comparison
# (matched by seed, whatever the row order), and its refusals.
#
#   bash tests/cli/test_stats.sh /path/to/moe      (the binary is not used)
# shellcheck disable=SC2317  # check functions are called indirectly, via check
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STATS=$HERE/../../experiments/common/stats.sh
# shellcheck source=tap.sh
. "$HERE/tap.sh"
tap_setup stats "$@"

expect() { # expect WANT CMD...: stdout of CMD (stdin from $IN) is WANT
    local want=$1 got
    shift
    got=$(printf '%b' "$IN" | "$@" 2>&1) || { fail "exit $? from $*: $got"; return; }
    [ "$got" = "$want" ] || fail "got '$got', want '$want'"
}

# 1 2 3: mean 2, SD 1, 2 -/+ 4.303 / sqrt(3) = 2 -/+ 2.484338
IN='1\n2\n3\n'; check "describe: mean, sample SD, t interval" expect "3,2,1,-0.484338,4.48434" bash "$STATS" describe
IN='5\n'; check "describe: one value has no SD or interval" expect "1,5,,," bash "$STATS" describe
IN=''; check "describe: no values" expect "0,,,," bash "$STATS" describe
# differences 1, 1, 1: SD 0, the interval is the point, resolved
IN='1 2\n2,3\n3\t4\n'; check "paired: constant difference is resolved" expect "3,1,0,1,1,yes" bash "$STATS" paired
# differences +1, -1: mean 0, SD sqrt 2, 0 -/+ 12.706 sqrt(2) / sqrt(2)
IN='0 1\n0 -1\n'; check "paired: opposite signs are not resolved" expect "2,0,1.41421,-12.706,12.706,no" bash "$STATS" paired

cat >runs.csv <<'CSV'
system,seed,active_parameters,parameters,test_loss
b,2,1,1,3.5
a,1,1,1,1
a,2,1,1,2
b,1,1,1,2
a,3,1,1,3
b,3,1,1,3.9
c,1,1,1,
CSV
IN=''
check "compare: pairs by seed (B - A)" expect "3,1.13333,0.321455,0.33473,1.93194,yes" bash "$STATS" compare runs.csv test_loss a b
check "compare: empty cells are skipped" expect "0,,,,," bash "$STATS" compare runs.csv test_loss a c
no_column() {
    run r bash "$STATS" compare runs.csv accuracy a b
    [ "$RC" -ne 0 ] || { fail "exit 0 for a missing column"; return; }
    grep -q 'lacks a system, seed or accuracy column' r.err || fail "stderr: $(cat r.err)"
}
check "compare: a missing column is an error naming it" no_column
usage() {
    run u bash "$STATS" compare runs.csv
    [ "$RC" -eq 2 ] && grep -q usage u.err || fail "exit $RC, stderr: $(cat u.err)"
}
check "compare: wrong arguments exit 2 with the usage" usage


# experiments/common/lib.sh builds every table.csv from these statistics (stats.sh's report())
LIB=$HERE/../../experiments/common/lib.sh
{ cat runs.csv; echo 'd,1,1,1,7'; } >runs2.csv # the runs above, and a system with one seed
# b: 2, 3.5, 3.9: mean 3.13333, SD 1.00167, 3.13333 -/+ 4.303 * 1.00167 / sqrt(3)
table_want='system,runs,active_parameters,parameters,test_loss_mean,test_loss_sd,test_loss_ci_lo,test_loss_ci_hi
b,3,1,1,3.13333,1.00167,0.644858,5.62181
a,3,1,1,2,1,-0.484338,4.48434
c,1,1,1,,,,
d,1,1,1,7,0,,'
summarise() {
    local got
    got=$(bash -c '. "$1"; summarise_runs "$2"' _ "$LIB" runs2.csv 2>&1)
    [ "$got" = "$table_want" ] || fail "got:
$got"
}
check "lib.sh summarise_runs: mean, SD and t interval per system in first-seen order; empty cells stay empty" summarise
IN='1\n2\n3\n'; check "lib.sh mean_sd: mean and sample SD" expect "2,1" bash -c '. "$1"; mean_sd' _ "$LIB"
IN='5\n'; check "lib.sh mean_sd: one value has SD 0" expect "5,0" bash -c '. "$1"; mean_sd' _ "$LIB"
IN=''; check "lib.sh mean_sd: no values" expect "," bash -c '. "$1"; mean_sd' _ "$LIB"

# lib.sh source_revision (command.txt's "# source:" line): a rerun into a
# committed results folder truncates that folder's command.txt first, which
# must not make the tree dirty; any other tracked change does
revision() {
    local g=(git -C repo -c user.name=t -c user.email=t@t)
    rm -rf repo && mkdir -p repo/results/x && echo a >repo/results/x/command.txt && echo b >repo/notes.md &&
        git init -q repo && "${g[@]}" add -A && "${g[@]}" commit -qm one || { fail "git setup"; return; }
    local want r
    want=$("${g[@]}" rev-parse --short HEAD)
    r=$(root=$PWD/repo bash -c '. "$1"; source_revision' _ "$LIB")
    [ "$r" = "$want" ] || { fail "clean: '$r', want '$want'"; return; }
    : >repo/results/x/command.txt
    r=$(root=$PWD/repo bash -c '. "$1"; source_revision' _ "$LIB")
    [ "$r" = "$want" ] || { fail "command.txt truncated: '$r', want '$want'"; return; }
    echo c >>repo/notes.md
    r=$(root=$PWD/repo bash -c '. "$1"; source_revision' _ "$LIB")
    [ "$r" = "$want-dirty" ] || fail "notes.md changed: '$r', want '$want-dirty'"
}
if command -v git >/dev/null; then
    check "lib.sh source_revision: a truncated results command.txt is not dirty, another change is" revision
fi

echo "1..$N"
[ "$FAILED" -eq 0 ]
