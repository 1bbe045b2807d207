#!/usr/bin/env bash
# Jacobs, Jordan, Nowlan & Hinton (1991), vowel discrimination (their Table 1):
# mixtures of 4 and 8 linear experts under the mixture NLL and the competitive
# loss against back-propagation nets with 6 and 12 hidden units, full-batch
# gradient descent with a fixed step chosen per system from a grid, 25 seeds.
#
#   [SEEDS=1-25] [THREADS=1] [OUT=results/jacobs1991] [WORK=experiments/jacobs1991/work] \
#       bash experiments/jacobs1991/run.sh [MOE_BINARY]
#
# SEEDS: the reported seeds in compare-loss's --seeds form (a range A-B or a
# list a,b,c). A sweep directory under WORK that holds the same sweep continues
# where it stopped, and a finished one is not run again (compare-loss, sweep.json).
#
# Writes results/jacobs1991/: table.csv (one row per system, at the criterion),
# table-long.csv (fixed budget, no criterion), lr_search.csv, curves.csv (every
# reported run), summary-<system>.json, and command.txt.
# Needs Debian's praat to create the Peterson & Barney (1952) table.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
[ $# -ge 1 ] && export MOE=$1
# shellcheck source=../common/lib.sh
. "$root/experiments/common/lib.sh"
moe=$(moe_bin)
out=${OUT:-$root/results/jacobs1991}
work=${WORK:-$here/work}
data=$here/data/pb52.tsv
grid=(0.01 0.03 0.1 0.3 1 3 10)
select_seeds=101-105   # step-size search seeds, disjoint from the reported ones
seeds=${SEEDS:-1-25}
max_epochs=20000
long_epochs=3000       # the second table: no criterion, a fixed budget
threads=${THREADS:-1}  # tiny GEMMs: one thread is fastest, and results do not depend on it

[ -x "$moe" ] || { echo "run.sh: no moe binary at '$moe' (build first: meson setup build && ninja -C build)" >&2; exit 2; }
expected_time "about 4 minutes at 1 thread (6 systems: a 7-step grid on 5 search seeds, then 25 seeds to the criterion and 25 for a fixed budget)"

# 1. Data: Praat ships the Peterson & Barney formant table.
if [ ! -s "$data" ]; then
    if ! command -v praat >/dev/null; then
        sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
        $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq praat >/dev/null
    fi
    mkdir -p "$(dirname "$data")"
    script=$(mktemp --suffix=.praat)
    printf 'Create formant table (Peterson & Barney 1952)\nSave as tab-separated file: "%s"\n' "$data" > "$script"
    praat --run "$script"
    rm -f "$script"
fi
rows=$(($(wc -l < "$data") - 1))
[ "$rows" = 1520 ] || { echo "run.sh: expected 1520 rows in $data, found $rows" >&2; exit 1; }

rm -rf "$work"; mkdir -p "$work" "$out"
# The six systems of Table 1: name, compare-loss system, extra --set.
systems=(
  "mixture-4-nll|nll|model.n_expert=4"
  "mixture-4-competitive|competitive|model.n_expert=4"
  "mixture-8-nll|nll|model.n_expert=8"
  "mixture-8-competitive|competitive|model.n_expert=8"
  "bp-6|mlp|model.n_hidden=6"
  "bp-12|mlp|model.n_hidden=12"
)
common=(--config "$here/vowels.json" --set "data.table.path=$data" --set "train.epochs=$max_epochs"
        --threads "$threads" --quiet)

# 2. Step size per system: the grid value with the fewest mean epochs to criterion
#    among those where every search run reached it (ties: the smaller step).
echo "system,lr,runs,reached,diverged,epochs_mean,epochs_sd" > "$out/lr_search.csv"
declare -A best_lr
for s in "${systems[@]}"; do
    IFS='|' read -r name sys set <<< "$s"
    best=""; best_epochs=""
    for lr in "${grid[@]}"; do
        d=$work/search-$name-$lr
        "$moe" compare-loss "${common[@]}" --set "$set" --set "optim.lr=$lr" --set train.eval_every=1000 \
            --losses "$sys" --seeds "$select_seeds" --out "$d" > /dev/null
        row=$(jq -r '.systems[0] | [.runs, .reached, .diverged, (.epochs_mean // ""), (.epochs_sd // "")] | @csv' "$d/summary.json")
        echo "$name,$lr,$row" >> "$out/lr_search.csv"
        ok=$(jq -r '.systems[0] | (.reached == .runs)' "$d/summary.json")
        m=$(jq -r '.systems[0].epochs_mean // empty' "$d/summary.json")
        if [ "$ok" = true ] && { [ -z "$best" ] || awk -v a="$m" -v b="$best_epochs" 'BEGIN{exit !(a < b)}'; }; then
            best=$lr; best_epochs=$m
        fi
    done
    [ -n "$best" ] || { echo "run.sh: no step size in the grid lets every search run of $name reach the criterion" >&2; exit 1; }
    best_lr[$name]=$best
    echo "$name: lr $best (mean $best_epochs epochs on seeds $select_seeds)" >&2
done

# 3. The reported runs: 25 seeds per system at its chosen step.
first=1
for s in "${systems[@]}"; do
    IFS='|' read -r name sys set <<< "$s"
    d=$work/final-$name
    "$moe" compare-loss "${common[@]}" --set "$set" --set "optim.lr=${best_lr[$name]}" --set train.eval_every=50 \
        --losses "$sys" --seeds "$seeds" --out "$d" > /dev/null
    cp "$d/summary.json" "$out/summary-$name.json"
    if [ $first = 1 ]; then
        echo "name,lr,$(head -1 "$d/table.csv")" > "$out/table.csv"
        echo "name,$(head -1 "$d/curves.csv")" > "$out/curves.csv"
        first=0
    fi
    tail -n +2 "$d/table.csv" | sed "s/^/$name,${best_lr[$name]},/" >> "$out/table.csv"
    tail -n +2 "$d/curves.csv" | sed "s/^/$name,/" >> "$out/curves.csv"
done

# 4. The same systems and steps without a criterion, for a fixed budget: where
#    does each system end up, and how many experts stay in use?
first=1
for s in "${systems[@]}"; do
    IFS='|' read -r name sys set <<< "$s"
    d=$work/long-$name
    "$moe" compare-loss "${common[@]}" --set "$set" --set "optim.lr=${best_lr[$name]}" --set train.criterion=none \
        --set "train.epochs=$long_epochs" --set train.eval_every=100 --losses "$sys" --seeds "$seeds" --out "$d" > /dev/null
    if [ $first = 1 ]; then
        echo "name,lr,$(head -1 "$d/table.csv")" > "$out/table-long.csv"
        first=0
    fi
    tail -n +2 "$d/table.csv" | sed "s/^/$name,${best_lr[$name]},/" >> "$out/table-long.csv"
done

{
  echo "# made by: SEEDS=$seeds THREADS=$threads bash experiments/jacobs1991/run.sh"
  provenance "$moe"
  echo "# data: $data sha256 $(sha256sum "$data" | cut -d' ' -f1)"
  echo "# grid: ${grid[*]}; search seeds $select_seeds; reported seeds $seeds; max epochs $max_epochs; fixed budget $long_epochs"
} > "$out/command.txt"
column -s, -t < "$out/table.csv" | cut -c1-200 >&2
echo "results in $out/" >&2
# the figure of the README (experiments/jacobs1991/plot.gp), when gnuplot is installed
if command -v gnuplot >/dev/null; then gnuplot -e "out='$out'" "$root/experiments/jacobs1991/plot.gp"; fi
