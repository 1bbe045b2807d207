#!/usr/bin/env bash
# experiments/bench/share.sh: runs that share cores. Three short `moe train` runs of
# experiments/common/lm.json at the default thread count (all cores), first one after
# another, then all three at once: at the default (all cores that other processes
# leave idle, rechecked before each step), at a fixed --threads 2 (the old default on
# this 2-core machine), and at --threads 1.
# Writes OUT/share.csv: setting, seconds in sequence, seconds concurrently, their
# ratio (the issue's target: concurrent within 1.2x of sequential).
#   bash experiments/bench/share.sh [OUT]     (default OUT: results/bench; WINDOWS: training windows per run, default 1200)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
moe=${MOE:-$root/build/cmd/moe}
out=${1:-${OUT:-results/bench}}
[ -s experiments/data/cache/fortunes/fortunes.txt ] || bash experiments/data/fortunes.sh >&2
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
job() {
    "$moe" train --config experiments/common/lm.json --set data.text.windows_per_epoch=${WINDOWS:-1200} --set train.epochs=1 \
        --set data.text.train_eval_windows=32 --set data.text.valid_eval_windows=32 --seed "$1" \
        --out "$work/$2-$1" --quiet $THREADS_OPT >/dev/null
}
now() { date +%s.%N; }
echo "setting,sequential_seconds,concurrent_seconds,ratio" > "$out/share.csv"
for policy in default threads2 threads1; do
    env=(THREADS_OPT=)
    [ "$policy" = threads2 ] && env=(THREADS_OPT="--threads 2")
    [ "$policy" = threads1 ] && env=(THREADS_OPT="--threads 1")
    t0=$(now)
    for s in 1 2 3; do env "${env[@]}" bash -c "$(declare -f job); moe=$moe work=$work job $s seq-$policy"; done
    t1=$(now)
    for s in 1 2 3; do env "${env[@]}" bash -c "$(declare -f job); moe=$moe work=$work job $s par-$policy" & done
    wait
    t2=$(now)
    awk -v p="$policy" -v a="$t0" -v b="$t1" -v c="$t2" 'BEGIN { printf "%s,%.2f,%.2f,%.3f\n", p, b - a, c - b, (c - b) / (b - a) }' >> "$out/share.csv"
done
column -s, -t "$out/share.csv"
