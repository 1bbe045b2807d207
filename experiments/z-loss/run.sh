#!/usr/bin/env bash
# Router z-loss (Zoph et al. 2022, ST-MoE) on and off at learning rates that push
# the byte-level Transformer LM of experiments/common/lm.json towards
# instability: Switch top-1 of 8 experts in blocks 1 and 3, Switch balancing
# loss 0.01, capacity factor 1.25 (evaluation 2.0), AdamW, gradient clip 1,
# 2 epochs of 12,000 random windows (1.5M training tokens), as in lm.json; only
# optim.lr (LRS, default "0.002 0.01 0.03 0.1") and moe.z_weight (0, or the
# paper's 0.001) change. A run whose loss or gradient turns non-finite exits 1
# with a message naming the step: that is a result here (diverged = 1, the step
# recorded, its message kept in WORK/NAME-sSEED.err), not a failure of the script.
#
#   bash experiments/data/fortunes.sh        # once: the corpus
#   [SEEDS="1 2 3 4 5"] [THREADS=1] [LRS="..."] [OUT=results/z-loss] [WORK=runs/z-loss] \
#     bash experiments/z-loss/run.sh [MOE_BINARY]
#
# Writes OUT/runs.csv (one row per system and seed), table.csv (per system: runs,
# diverged, and over the runs that finished the mean, sample SD and 95% t-interval
# of validation bits per byte; the mean and SD of the validation max/mean expert load), stats.csv (z-loss minus no z-loss per learning
# rate, paired by seed over the seeds where both finished; experiments/common/stats.sh),
# curves.csv (training loss per 100 steps), command.txt and, with gnuplot, z-loss.png
# (plot.gp). SEEDS default 1-5 (runs of 32-64 s). Finished and diverged runs in WORK are kept and not
# run again (lib.sh done_run, .err files; the count is printed first); a run stopped half way is run
# again from scratch.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
[ $# -ge 1 ] && export MOE=$1
# shellcheck source=../common/lib.sh
. "$root/experiments/common/lib.sh"
stats=$root/experiments/common/stats.sh
need_lm_inputs # sets moe and corpus, or exits 2
experiment_env z-loss "1 2 3 4 5" # sets seeds, threads, out, work
read -r -a lrs <<< "${LRS:-0.002 0.01 0.03 0.1}"
zs=(0 0.001)
mkdir -p "$out" "$work"
# ended RUN: the run WORK/RUN finished, or diverged (its .err says so)
ended() { done_run "$work/$1" || grep -q 'not finite' "$work/$1.err" 2>/dev/null; }
n_runs=0 n_ended=0
for seed in "${seeds[@]}"; do for lr in "${lrs[@]}"; do for z in "${zs[@]}"; do
  n_runs=$((n_runs + 1)); ! ended "lr$lr-z$z-s$seed" || n_ended=$((n_ended + 1))
done; done; done
plan_runs "$n_runs" "$n_ended" 45 \
  "${#lrs[@]} learning rates x ${#zs[@]} z-loss weights x ${#seeds[@]} seeds; about 45 s each at 1 thread while the machine was shared, 32-64 s measured; a diverged run stops early"
{ echo "$(env_line) LRS=\"${lrs[*]}\" bash experiments/z-loss/run.sh  # $(date -u +%Y-%m-%d), $("$moe" --version | head -1), corpus sha256 $(sha256sum "$corpus" | cut -c1-16)"; provenance "$moe"; } > "$out/command.txt"

echo "system,seed,lr,z_weight,diverged,diverged_step,steps,valid_bits_per_byte,valid_loss,train_bits_per_byte,valid_z_loss,valid_load_max_mean,wall_seconds" > "$out/runs.csv"
echo "system,seed,step,train_loss" > "$out/curves.csv"
for seed in "${seeds[@]}"; do
  for lr in "${lrs[@]}"; do
    for z in "${zs[@]}"; do
      name=lr$lr-z$z
      d=$work/$name-s$seed
      err=$work/$name-s$seed.err
      if ! ended "$name-s$seed"; then
        fresh_dir "$d"
        "$moe" train --config "$root/experiments/common/lm.json" --set data.text.path="\"$corpus\"" --seed "$seed" \
          --out "$d" --quiet --threads "$threads" --set optim.lr="$lr" --set moe.z_weight="$z" >/dev/null 2>"$err"
        rc=$?
        if [ $rc -ne 0 ] && ! grep -q 'not finite' "$err"; then
          echo "z-loss: $name seed=$seed failed (exit $rc) without diverging:" >&2; cat "$err" >&2; exit 1
        fi
      fi
      if done_run "$d"; then
        t=$(jq -r '[.steps, .final.test.bits_per_byte, .final.test.loss, .final.train.bits_per_byte, .final.test.z_loss,
                     .final.test.load_max_mean, (.wall_seconds | . * 10 | round / 10)] | @csv' "$d/summary.json")
        echo "$name,$seed,$lr,$z,0,,$t" >> "$out/runs.csv"
      else
        step=$(sed -n 's/.*step \([0-9]*\) (epoch.*/\1/p' "$err" | head -1)
        echo "$name,$seed,$lr,$z,1,$step,$step,,,,,," >> "$out/runs.csv"
      fi
      [ -s "$d/metrics.csv" ] && awk -F, -v n="$name" -v sd="$seed" 'NR > 1 && $3 == "batch" { print n "," sd "," $1 "," $4 }' "$d/metrics.csv" >> "$out/curves.csv"
      echo "z-loss: $name seed=$seed: $(tail -1 "$out/runs.csv")" >&2
    done
  done
done
# table.csv: per system, the runs, how many diverged, and over the finished runs: n,mean,sd,ci_lo,ci_hi of valid bits per byte
{ echo "system,lr,z_weight,runs,diverged,finished,valid_bpb_mean,valid_bpb_sd,valid_bpb_ci_lo,valid_bpb_ci_hi,valid_z_loss_mean,valid_load_max_mean_mean,valid_load_max_mean_sd"
  for lr in "${lrs[@]}"; do for z in "${zs[@]}"; do
    name=lr$lr-z$z
    runs=$(awk -F, -v n="$name" '$1 == n' "$out/runs.csv" | wc -l)
    div=$(awk -F, -v n="$name" '$1 == n && $5 == 1' "$out/runs.csv" | wc -l)
    d=$(awk -F, -v n="$name" '$1 == n && $5 == 0 { print $8 }' "$out/runs.csv" | bash "$stats" describe)
    zl=$(awk -F, -v n="$name" '$1 == n && $5 == 0 { s += $11; k++ } END { if (k) printf "%.4g", s / k }' "$out/runs.csv")
    lm=$(awk -F, -v n="$name" '$1 == n && $5 == 0 { print $12 }' "$out/runs.csv" | bash "$stats" describe | cut -d, -f2,3)
    echo "$name,$lr,$z,$runs,$div,$d,$zl,$lm"
  done; done; } > "$out/table.csv"
{ echo "lr,column,a,b,n,mean_diff,sd_diff,ci_lo,ci_hi,resolved"
  for lr in "${lrs[@]}"; do
    for col in valid_bits_per_byte valid_load_max_mean; do
      echo "$lr,$col,lr$lr-z0,lr$lr-z0.001,$(bash "$stats" compare "$out/runs.csv" "$col" "lr$lr-z0" "lr$lr-z0.001")"
    done
  done; } > "$out/stats.csv"
column -s, -t < "$out/table.csv" >&2
column -s, -t < "$out/stats.csv" >&2
if command -v gnuplot >/dev/null; then gnuplot -e "out='$out'" "$root/experiments/z-loss/plot.gp"; fi
exit 0
