#!/usr/bin/env bash
# Switch Transformer (Fedus et al. 2021) capacity and load-balancing sweeps on
# Fashion-MNIST: a Switch (top-1, raw-probability gate, input jitter 0.01) MLP-MoE
# with 8 experts in both blocks.
#  1. capacity: training capacity factor in {0.5, 0.75, 1.0, 1.25, 2.0} with
#     alpha = 0.01; each checkpoint evaluated (moe route-stats) at the same
#     factor and at 2.0: dropped fraction and test accuracy.
#  2. alpha in {0, 0.001, 0.01, 0.1} at capacity factor 1.25 (evaluation 2.0):
#     load balance (CV and max/mean of tokens per expert) and test accuracy.
# Seeds 1-5 each by default (runs of about 14 s); THREADS threads per run
# (default 1).
#
#   [SEEDS="1 2 3 4 5"] [THREADS=1] [OUT=results/switch-capacity] [WORK=runs/switch-capacity] \
#     bash experiments/switch-capacity/run.sh [MOE_BINARY]
#
# Finished runs under WORK (with their route-stats pass, WORK/cf*/route/) are
# kept and not run again (lib.sh done_run; the count is printed first); a run
# stopped half way is run again from scratch. Writes OUT/capacity-runs.csv,
# capacity.csv (mean/sd over seeds), alpha-runs.csv, alpha.csv, command.txt,
# and switch-capacity.png when gnuplot is installed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
[ $# -ge 1 ] && export MOE=$1
# shellcheck source=../common/lib.sh
. "$root/experiments/common/lib.sh"
check_moe
moe=$(moe_bin)
experiment_env switch-capacity "1 2 3 4 5" # sets seeds, threads, out, work
factors=(0.5 0.75 1.0 1.25 2.0)
alphas=(0 0.001 0.01 0.1)
mkdir -p "$out" "$work"
# routed DIR: the run's route-stats pass finished (summary.json comes last)
routed() { [ -s "$1/route/summary.json" ]; }
n=0 n_done=0
for seed in "${seeds[@]}"; do
  for cf in "${factors[@]}"; do n=$((n + 1)); ! { done_run "$work/cf$cf-s$seed" && routed "$work/cf$cf-s$seed"; } || n_done=$((n_done + 1)); done
  for a in "${alphas[@]}"; do n=$((n + 1)); ! done_run "$work/alpha$a-s$seed" || n_done=$((n_done + 1)); done
done
plan_runs "$n" "$n_done" 14 \
  "$(( ${#factors[@]} + ${#alphas[@]} )) systems x ${#seeds[@]} seeds, a route-stats pass after each capacity run; about 14 s per run at 1 thread: 45 runs and 25 passes took about 11 minutes"
{ echo "$(env_line) bash experiments/switch-capacity/run.sh  # $(date -u +%Y-%m-%d), $("$moe" --version | head -1)"; provenance "$moe"; } > "$out/command.txt"
switch=(--config "$root/experiments/common/fmnist-moe.json" --quiet
        --set model.n_expert=8 --set model.n_expert_used=1 --set moe.router='"switch"'
        --set moe.jitter=0.01 --set moe.aux_loss='"switch"')

# 1. capacity
echo "train_cf,seed,train_dropped,eval_same_dropped,eval_same_accuracy,eval_2_dropped,eval_2_accuracy,test_load_cv,test_load_max_mean" > "$out/capacity-runs.csv"
for cf in "${factors[@]}"; do
  for seed in "${seeds[@]}"; do
    d=$work/cf$cf-s$seed
    if ! done_run "$d"; then
      fresh_dir "$d"
      "$moe" train "${switch[@]}" --threads "$threads" --seed "$seed" --out "$d" --set moe.aux_weight=0.01 \
        --set moe.capacity_factor="$cf" --set moe.eval_capacity_factor="$cf" >/dev/null
    fi
    if ! routed "$d"; then
      fresh_dir "$d/route"
      "$moe" route-stats --checkpoint "$d/model.safetensors" --out "$d/route" --capacity-factors "$cf,2" --quiet --threads "$threads" > /dev/null
    fi
    same=$(jq -r '.capacity[0] | [(.dropped_fraction | add / length), .accuracy] | @csv' "$d/route/summary.json")
    two=$(jq -r '.capacity[1] | [(.dropped_fraction | add / length), .accuracy] | @csv' "$d/route/summary.json")
    bal=$(jq -r '[.final.test.load_cv, .final.test.load_max_mean] | @csv' "$d/summary.json")
    echo "$cf,$seed,$(last_batch "$d" dropped_fraction),$same,$two,$bal" >> "$out/capacity-runs.csv"
    echo "switch-capacity: cf=$cf seed=$seed: train dropped $(last_batch "$d" dropped_fraction), same $same, 2.0 $two" >&2
  done
done

# 2. alpha
echo "alpha,seed,test_accuracy,test_load_cv,test_load_max_mean,test_importance_cv,train_dropped,train_load_cv,aux_loss" > "$out/alpha-runs.csv"
for a in "${alphas[@]}"; do
  for seed in "${seeds[@]}"; do
    d=$work/alpha$a-s$seed
    if ! done_run "$d"; then
      fresh_dir "$d"
      "$moe" train "${switch[@]}" --threads "$threads" --seed "$seed" --out "$d" --set moe.aux_weight="$a" \
        --set moe.capacity_factor=1.25 --set moe.eval_capacity_factor=2 >/dev/null
    fi
    t=$(jq -r '.final.test | [.accuracy, .load_cv, .load_max_mean, .importance_cv] | @csv' "$d/summary.json")
    echo "$a,$seed,$t,$(last_batch "$d" dropped_fraction),$(last_batch "$d" load_cv),$(last_batch "$d" aux_loss)" >> "$out/alpha-runs.csv"
    echo "switch-capacity: alpha=$a seed=$seed: $t" >&2
  done
done

# mean, sample sd and 95% t-interval over seeds (lib.sh summarise_from: stats.sh)
summarise() { summarise_from 3 "$1"; }
summarise "$out/capacity-runs.csv" > "$out/capacity.csv"
summarise "$out/alpha-runs.csv" > "$out/alpha.csv"
column -s, -t < "$out/capacity.csv" >&2
column -s, -t < "$out/alpha.csv" >&2
# the figure of the README (experiments/switch-capacity/plot.gp), when gnuplot is installed
if command -v gnuplot >/dev/null; then gnuplot -e "out='$out'" "$root/experiments/switch-capacity/plot.gp"; fi
