#!/usr/bin/env bash
# MoEBERT (Zuo et al. 2022, "MoEBERT: from BERT to Mixture-of-Experts via
# Importance-Guided Adaptation") on Fashion-MNIST with the MLP-MoE of
# experiments/common/fmnist-moe.json: a dense teacher (2 blocks, FFNs of 256
# neurons, 8 epochs) is split into 4 experts of 64 neurons per block, routed by
# hash (one expert per example, gate 1, dropless, as in the paper), and trained
# 3 epochs with CE + 5 (block-output MSE + symmetric KL) against the teacher.
# The experts hold a quarter of the FFN each, so the student has the teacher's
# parameter count and a quarter of its FFN compute per example. Compared:
#   importance-s0   neurons in order of importance, dealt round-robin (no sharing)
#   random-s0       neurons in a seeded random order, dealt the same way
#   importance-s16  the 16 most important neurons in every expert, 48 dealt per
#                   expert; the 48 least important dropped (expert size fixed)
#   random-s16      the same with a random order
#   scratch         the same MoE from a random start, trained 3 epochs alone
#   scratch-11ep    the same, 11 epochs (the teacher's 8 + the student's 3)
#   importance-s0-w0  importance-s0 trained on CE alone (--weight 0): what the
#                   conversion gives without the distillation terms
# For each: test accuracy right after the conversion (summary
# distill.moebert.converted_test) and after the distillation. Seeds 1-5 by
# default (runs of 7-12 s), one thread per run (THREADS). Finished runs in WORK
# are kept and not run again (lib.sh done_run; the count is printed first); a
# run stopped half way is run again from scratch.
#
#   [SEEDS="1 2 3 4 5"] [THREADS=1] [OUT=results/moebert] [WORK=runs/moebert] \
#     bash experiments/moebert/run.sh [MOE_BINARY]
#
# Writes OUT/runs.csv, table.csv (mean, sample sd and 95% t-interval over seeds), command.txt, and
# moebert.png when gnuplot is installed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
[ $# -ge 1 ] && export MOE=$1
# shellcheck source=../common/lib.sh
. "$root/experiments/common/lib.sh"
check_moe
moe=$(moe_bin)
experiment_env moebert "1 2 3 4 5" # sets seeds, threads, out, work
mkdir -p "$out" "$work"
dirs=()
for seed in "${seeds[@]}"; do
  dirs+=("$work/teacher-s$seed" "$work/scratch-s$seed" "$work/scratch-11ep-s$seed" "$work/importance-s0-w0-seed$seed")
  for shared in 0 16; do for split in importance random; do dirs+=("$work/$split-s$shared-seed$seed"); done; done
done
plan_runs ${#dirs[@]} "$(count_done "${dirs[@]}")" 10 \
  "8 runs per seed x ${#seeds[@]} seeds; 7-12 s each at 1 thread: 24 runs took about 5 minutes on the shared machine, 40 about 5 minutes on an idle one"
{ echo "$(env_line) bash experiments/moebert/run.sh  # $(date -u +%Y-%m-%d), $("$moe" --version | head -1)"; provenance "$moe"; } > "$out/command.txt"
cfg=$root/experiments/common/fmnist-moe.json
dense=(--set model.moe_every=99 --set model.n_ff_dense=256)
moe_sets=(--set model.moe_every=1 --set model.n_expert=4 --set model.n_expert_used=1 --set model.n_ff=64
          --set 'moe.router="hash"' --set 'moe.aux_loss="none"' --set moe.capacity_factor=0
          --set moe.eval_capacity_factor=0 --set train.epochs=3)

echo "system,seed,active_parameters,parameters,converted_test_accuracy,test_accuracy,test_loss,dropped_neurons" > "$out/runs.csv"
row() { # name seed dir
  jq -r --arg n "$1" --arg s "$2" '[$n, ($s | tonumber), (.active_parameters // .parameters), .parameters,
        (.distill.moebert.converted_test.accuracy // ""), .final.test.accuracy, .final.test.loss,
        ((.distill.moebert.layers // []) | map(.dropped_neurons) | add // 0)] | @csv' "$3/summary.json" \
    | tr -d '"' >> "$out/runs.csv"
  echo "moebert: $(tail -1 "$out/runs.csv")" >&2
}
for seed in "${seeds[@]}"; do
  t=$work/teacher-s$seed
  run_once "$t" "$moe" train --config "$cfg" --seed "$seed" --out "$t" --quiet --threads "$threads" "${dense[@]}" >/dev/null
  row teacher "$seed" "$t"
  run_once "$work/scratch-s$seed" \
    "$moe" train --config "$cfg" --seed "$seed" --out "$work/scratch-s$seed" --quiet --threads "$threads" "${moe_sets[@]}" >/dev/null
  row scratch "$seed" "$work/scratch-s$seed"
  run_once "$work/scratch-11ep-s$seed" \
    "$moe" train --config "$cfg" --seed "$seed" --out "$work/scratch-11ep-s$seed" --quiet --threads "$threads" "${moe_sets[@]}" \
      --set train.epochs=11 >/dev/null
  row scratch-11ep "$seed" "$work/scratch-11ep-s$seed"
  for shared in 0 16; do
    for split in importance random; do
      d=$work/$split-s$shared-seed$seed
      run_once "$d" "$moe" distill --mode moebert --teacher "$t/model.safetensors" --split "$split" --shared "$shared" \
        --config "$cfg" --seed "$seed" --out "$d" --quiet --threads "$threads" "${moe_sets[@]}" >/dev/null
      row "$split-s$shared" "$seed" "$d"
    done
  done
  d=$work/importance-s0-w0-seed$seed
  run_once "$d" "$moe" distill --mode moebert --teacher "$t/model.safetensors" --weight 0 \
    --config "$cfg" --seed "$seed" --out "$d" --quiet --threads "$threads" "${moe_sets[@]}" >/dev/null
  row importance-s0-w0 "$seed" "$d"
done

summarise_runs "$out/runs.csv" > "$out/table.csv"
column -s, -t < "$out/table.csv" >&2
# the figure of the README (experiments/moebert/plot.gp), when gnuplot is installed
if command -v gnuplot >/dev/null; then gnuplot -e "out='$out'" "$root/experiments/moebert/plot.gp"; fi
