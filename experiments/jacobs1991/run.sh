#!/usr/bin/env bash
# Jacobs, Jordan, Nowlan & Hinton (1991), vowel discrimination (their Table 1):
# mixtures of 4 and 8 linear experts under the mixture NLL and the competitive
# loss against back-propagation nets with 6 and 12 hidden units, full-batch
# gradient descent with a fixed step chosen per system from a grid, 25 seeds.
#
#   [SEEDS=1-25] [THREADS=1] [OUT=results/jacobs1991] [WORK=experiments/jacobs1991/work] \
#       bash experiments/jacobs1991/run.sh [MOE_BINARY]
#
# SEEDS: the reported seeds in compare-loss's --seeds form (a range A-B, a list
# a,b,c, or both: 1-20,31), not a space-separated list; default 1-25, the
# paper's count (the step-size search always uses seeds 101-105). Every
# compare-loss sweep (42 of the search, 6 to the criterion, 6 for a fixed
# budget) has its directory under WORK: a finished one is not run again
# (lib.sh done_sweep; the count is printed first), one stopped half way
# continues where it stopped (compare-loss keeps each finished run), and one
# over other seeds starts again (--force).
#
# Writes OUT: table.csv (one row per system, at the criterion),
# table-long.csv (fixed budget, no criterion), lr_search.csv, curves.csv (every
# reported run), summary-<system>.json, command.txt, and jacobs1991.png when
# gnuplot is installed.
# Needs Debian's praat to create the Peterson & Barney (1952) table.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
[ $# -ge 1 ] && export MOE=$1
# shellcheck source=../common/lib.sh
. "$root/experiments/common/lib.sh"
moe=$(moe_bin)
# threads: tiny GEMMs, one thread is fastest, and results do not depend on it
experiment_dirs jacobs1991 "$root/results/jacobs1991" "$here/work" # sets threads, out, work
data=$here/data/pb52.tsv
grid=(0.01 0.03 0.1 0.3 1 3 10)
select_seeds=101-105   # step-size search seeds, disjoint from the reported ones
seed_spec=${SEEDS:-1-25}
seeds=("$seed_spec") # for env_line
[[ $seed_spec =~ ^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$ ]] ||
    { echo "run.sh: SEEDS: '$seed_spec' is not in compare-loss's --seeds form (1-25, 1,2,7 or 1-3,10)" >&2; exit 2; }
n_seeds=$(seed_list "$seed_spec" | jq length)
max_epochs=20000
long_epochs=3000       # the second table: no criterion, a fixed budget

[ -x "$moe" ] || { echo "run.sh: no moe binary at '$moe' (build first: meson setup build && ninja -C build)" >&2; exit 2; }

mkdir -p "$work" "$out"
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

# sweep DIR SEEDS ARGS...: moe compare-loss over SEEDS into DIR, unless DIR holds that sweep finished;
# a sweep there over other seeds is cleared first (--force), a half-finished one continues
sweep() {
    local d=$1 s=$2
    shift 2
    done_sweep "$d" "$s" && return
    local force=()
    [ ! -s "$d/sweep.json" ] || jq -e --argjson want "$(seed_list "$s")" '.seeds == $want' "$d/sweep.json" >/dev/null || force=(--force)
    "$moe" compare-loss "${common[@]}" "$@" --seeds "$s" --out "$d" "${force[@]}" > /dev/null
}

# what is already there; the time: the search about 2 minutes (42 sweeps of 5 seeds, up to 20,000
# epochs each), then per reported seed about 0.1 s per system to the criterion and 0.6 s for the
# fixed budget (a fresh run at 25 seeds took 3.5 minutes)
n_done=0 left=0
for s in "${systems[@]}"; do
    name=${s%%|*}
    for lr in "${grid[@]}"; do
        if done_sweep "$work/search-$name-$lr" "$select_seeds"; then n_done=$((n_done + 1)); else left=$((left + 3)); fi
    done
    if done_sweep "$work/final-$name" "$seed_spec"; then n_done=$((n_done + 1)); else left=$((left + n_seeds / 10)); fi
    if done_sweep "$work/long-$name" "$seed_spec"; then n_done=$((n_done + 1)); else left=$((left + n_seeds * 6 / 10)); fi
done
skip_note "$n_done" $(( ${#systems[@]} * (${#grid[@]} + 2) )) "compare-loss sweeps"
expected_time "$(about_minutes $(( ${#systems[@]} * (${#grid[@]} * 3 + n_seeds * 7 / 10) ))) for all of it at 1 thread" \
  "(6 systems: a 7-step grid on 5 search seeds, then $n_seeds seeds to the criterion and $n_seeds for a fixed budget)," \
  "$(about_minutes "$left") for the sweeps left"

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

# 2. Step size per system: the grid value with the fewest mean epochs to criterion
#    among those where every search run reached it (ties: the smaller step).
echo "system,lr,runs,reached,diverged,epochs_mean,epochs_sd" > "$out/lr_search.csv"
declare -A best_lr
for s in "${systems[@]}"; do
    IFS='|' read -r name sys set <<< "$s"
    best=""; best_epochs=""
    for lr in "${grid[@]}"; do
        d=$work/search-$name-$lr
        sweep "$d" "$select_seeds" --set "$set" --set "optim.lr=$lr" --set train.eval_every=1000 --losses "$sys"
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

# 3. The reported runs: SEEDS (25 by default) per system at its chosen step.
first=1
for s in "${systems[@]}"; do
    IFS='|' read -r name sys set <<< "$s"
    d=$work/final-$name
    sweep "$d" "$seed_spec" --set "$set" --set "optim.lr=${best_lr[$name]}" --set train.eval_every=50 --losses "$sys"
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
    sweep "$d" "$seed_spec" --set "$set" --set "optim.lr=${best_lr[$name]}" --set train.criterion=none \
        --set "train.epochs=$long_epochs" --set train.eval_every=100 --losses "$sys"
    if [ $first = 1 ]; then
        echo "name,lr,$(head -1 "$d/table.csv")" > "$out/table-long.csv"
        first=0
    fi
    tail -n +2 "$d/table.csv" | sed "s/^/$name,${best_lr[$name]},/" >> "$out/table-long.csv"
done

{
  echo "# made by: $(env_line) bash experiments/jacobs1991/run.sh"
  provenance "$moe"
  echo "# data: $data sha256 $(sha256sum "$data" | cut -d' ' -f1)"
  echo "# grid: ${grid[*]}; search seeds $select_seeds; reported seeds $seed_spec; max epochs $max_epochs; fixed budget $long_epochs"
} > "$out/command.txt"
column -s, -t < "$out/table.csv" | cut -c1-200 >&2
echo "results in $out/" >&2
# the figure of the README (experiments/jacobs1991/plot.gp), when gnuplot is installed
if command -v gnuplot >/dev/null; then gnuplot -e "out='$out'" "$root/experiments/jacobs1991/plot.gp"; fi
