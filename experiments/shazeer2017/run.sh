#!/usr/bin/env bash
# Shazeer et al. (2017), Table 6: how the importance and load losses balance a
# noisy top-k gate. Here: noisy top-2 over E = 8 or 16 experts in both blocks of
# an MLP-MoE on Fashion-MNIST, w_importance = w_load = w in {0, 0.01, 0.1, 1},
# seeds 1-5 by default (runs of about 25 s; THREADS threads per run, default 1),
# dropless (so load figures show the router, not the capacity).
#
#   [SEEDS="1 2 3 4 5"] [THREADS=1] [OUT=results/shazeer2017] [WORK=runs/shazeer2017] \
#     bash experiments/shazeer2017/run.sh [MOE_BINARY]
#
# Finished runs under WORK are kept and not run again (lib.sh done_run; the
# count is printed first); a run stopped half way is run again from scratch.
# Writes OUT/runs.csv (one row per run), table.csv (mean and sd over seeds),
# command.txt, and shazeer2017.png when gnuplot is installed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
[ $# -ge 1 ] && export MOE=$1
# shellcheck source=../common/lib.sh
. "$root/experiments/common/lib.sh"
check_moe
moe=$(moe_bin)
experiment_env shazeer2017 "1 2 3 4 5" # sets seeds, threads, out, work
experts=(8 16)
weights=(0 0.01 0.1 1)
mkdir -p "$out" "$work"
dirs=()
for E in "${experts[@]}"; do for w in "${weights[@]}"; do for seed in "${seeds[@]}"; do dirs+=("$work/E$E-w$w-s$seed"); done; done; done
plan_runs ${#dirs[@]} "$(count_done "${dirs[@]}")" 25 \
  "${#experts[@]} expert counts x ${#weights[@]} weights x ${#seeds[@]} seeds; about 25 s each at 1 thread: 40 runs took about 17 minutes"
{ echo "$(env_line) bash experiments/shazeer2017/run.sh  # $(date -u +%Y-%m-%d), $("$moe" --version | head -1)"; provenance "$moe"; } > "$out/command.txt"

cols="experts,w,seed,test_accuracy,test_importance_cv,test_load_cv,test_load_max_mean,train_importance_cv,train_load_cv,train_load_max_mean,aux_loss"
echo "$cols" > "$out/runs.csv"
for E in "${experts[@]}"; do
  for w in "${weights[@]}"; do
    for seed in "${seeds[@]}"; do
      d=$work/E$E-w$w-s$seed
      if ! done_run "$d"; then
        fresh_dir "$d"
        "$moe" train --config "$root/experiments/common/fmnist-moe.json" --seed "$seed" --out "$d" --quiet --threads "$threads" \
          --set model.n_expert="$E" --set model.n_expert_used=2 --set moe.router='"noisy-topk"' \
          --set moe.aux_loss='"shazeer"' --set moe.w_importance="$w" --set moe.w_load="$w" \
          --set moe.capacity_factor=0 --set moe.eval_capacity_factor=0 >/dev/null
      fi
      t=$(jq -r '.final.test | [.accuracy, .importance_cv, .load_cv, .load_max_mean] | @csv' "$d/summary.json")
      echo "$E,$w,$seed,$t,$(last_batch "$d" importance_cv),$(last_batch "$d" load_cv),$(last_batch "$d" load_max_mean),$(last_batch "$d" aux_loss)" >> "$out/runs.csv"
      echo "shazeer2017: E=$E w=$w seed=$seed: $t" >&2
    done
  done
done

# mean and sd over seeds per (experts, w)
{
  echo "experts,w,runs,test_accuracy_mean,test_accuracy_sd,test_importance_cv_mean,test_importance_cv_sd,test_load_cv_mean,test_load_cv_sd,test_load_max_mean_mean,test_load_max_mean_sd,train_importance_cv_mean,train_load_cv_mean,train_load_max_mean_mean"
  for E in "${experts[@]}"; do
    for w in "${weights[@]}"; do
      sel() { awk -F, -v E="$E" -v w="$w" -v c="$1" 'NR > 1 && $1 == E && $2 == w { print $c }' "$out/runs.csv"; }
      n=$(sel 3 | wc -l)
      m() { sel "$1" | mean_sd; }
      echo "$E,$w,$n,$(m 4),$(m 5),$(m 6),$(m 7),$(m 8 | cut -d, -f1),$(m 9 | cut -d, -f1),$(m 10 | cut -d, -f1)"
    done
  done
} > "$out/table.csv"
column -s, -t < "$out/table.csv" >&2
# the figure of the README (experiments/shazeer2017/plot.gp), when gnuplot is installed
if command -v gnuplot >/dev/null; then gnuplot -e "out='$out'" "$root/experiments/shazeer2017/plot.gp"; fi
