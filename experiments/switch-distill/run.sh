#!/usr/bin/env bash
# Distilling a Switch Transformer-style sparse teacher into a dense student
# (Fedus, Zoph & Shazeer 2021, sec. 5.1, Table 6), on Fashion-MNIST with the
# MLP-MoE of experiments/common/fmnist-moe.json: the teacher has 8 experts of
# width 128 per block (top-1 switch routing, capacity 1.25 in training, 2.0 in
# evaluation), the dense baseline and the students one FFN of width 128 (the
# teacher's active size). For each seed:
#   teacher   moe train (switch)
#   baseline  moe train (dense), no teacher
#   kd        moe distill --mode kd: the dense student from its own init
#   kd-init   moe distill --mode sparse-to-dense: the non-expert weights (input
#             projection, norms, head) start from the teacher's
# The distillation objective mixes 0.25 of the teacher's probabilities with 0.75
# of the labels (alpha 0.25, temperature 1), the paper's mix. The summary of
# each student reports the fraction of the teacher-baseline gap it recovers on
# the test split, (student - baseline) / (teacher - baseline), for accuracy and
# for loss.
#
# `lm` runs the same four systems on the byte-level language model of
# experiments/common/lm.json (fortunes, 4 blocks, every second one an 8-expert
# switch layer; the dense model has FFNs of width 128 everywhere), where the
# Switch teacher does beat dense (results/lm-routers); the quality is bits per
# byte on the validation split. Two controls run for `lm` only, because a
# student started from the teacher has had the teacher's training too:
#   init-only     --mode sparse-to-dense with alpha 0: the teacher's non-expert
#                 weights, then labels alone (what the initialisation gives
#                 without the teacher's outputs)
#   baseline-4ep  the dense model trained 4 epochs (the teacher's 2 + the
#                 student's 2) without a teacher
#
#   [SEEDS="1 2 3 4 5"] [THREADS=1] [OUT=results/switch-distill] [WORK=runs/switch-distill] \
#     bash experiments/switch-distill/run.sh [fmnist] [MOE_BINARY]
#   [SEEDS="1 2 3 4 5"] [THREADS=1] [OUT=results/switch-distill/lm] [WORK=runs/switch-distill-lm] \
#     bash experiments/switch-distill/run.sh lm [MOE_BINARY]
#
# SEEDS default: 1-5 for both (Fashion-MNIST runs of about 15 s; lm runs of 50-60 s
# at 1 thread on the 2026-12-05 build machine, 30 runs in about 27 minutes). Finished runs under WORK are kept and not run again (lib.sh
# done_run; the count is printed first); a run stopped half way is run again
# from scratch.
#
# Writes OUT/runs.csv, table.csv (mean, sample sd and 95% t-interval over seeds), command.txt, and
# switch-distill.png (lm: switch-distill-lm.png) when gnuplot is installed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
task=fmnist
case "${1:-}" in fmnist|lm) task=$1; shift ;; esac
[ $# -ge 1 ] && export MOE=$1
# shellcheck source=../common/lib.sh
. "$root/experiments/common/lib.sh"
check_moe
moe=$(moe_bin)
if [ "$task" = fmnist ]; then
  experiment_env switch-distill "1 2 3 4 5" # sets seeds, threads, out, work
  cfg=$root/experiments/common/fmnist-moe.json
  switch=(--set 'moe.router="switch"' --set model.n_expert_used=1 --set model.n_ff=128 --set moe.jitter=0.01
          --set 'moe.aux_loss="switch"' --set moe.aux_weight=0.01 --set moe.capacity_factor=1.25
          --set moe.eval_capacity_factor=2)
  dense=(--set model.moe_every=99 --set model.n_ff_dense=128)
else
  [ -s "$root/experiments/data/cache/fortunes/fortunes.txt" ] ||
    { echo "$0: fortunes text missing: bash experiments/data/fortunes.sh" >&2; exit 2; }
  experiment_env switch-distill "1 2 3 4 5" "$root/results/switch-distill/lm" "$root/runs/switch-distill-lm"
  cfg=$root/experiments/common/lm.json
  switch=()   # lm.json is the switch teacher
  dense=(--set model.moe_every=99)
  cd "$root"  # lm.json names its text relative to the repository root
fi
mkdir -p "$out" "$work"
systems=(teacher baseline kd kd-init)
[ "$task" = fmnist ] || systems+=(init-only baseline-4ep)
dirs=()
for seed in "${seeds[@]}"; do for name in "${systems[@]}"; do dirs+=("$work/$name-s$seed"); done; done
if [ "$task" = fmnist ]; then
  plan_runs ${#dirs[@]} "$(count_done "${dirs[@]}")" 15 \
    "Fashion-MNIST, ${#systems[@]} runs per seed x ${#seeds[@]} seeds; about 15 s each at 1 thread: 20 runs took about 5 minutes"
else
  plan_runs ${#dirs[@]} "$(count_done "${dirs[@]}")" 60 \
    "byte-level LM, ${#systems[@]} runs per seed x ${#seeds[@]} seeds; 50-60 s each at 1 thread (2026-12-05; the first binary took about 3 minutes)"
fi
{ echo "$(env_line) bash experiments/switch-distill/run.sh $task  # $(date -u +%Y-%m-%d), $("$moe" --version | head -1)"; provenance "$moe"; } > "$out/command.txt"
kd=(--alpha 0.25 --temperature 1)

metric=$([ "$task" = lm ] && echo bits_per_byte || echo accuracy)
echo "system,seed,active_parameters,parameters,test_$metric,test_loss,gap_recovered_$metric,gap_recovered_loss" > "$out/runs.csv"
row() { # name seed dir
  jq -r --arg n "$1" --arg s "$2" --arg m "$metric" '[$n, ($s | tonumber), (.active_parameters // .parameters), .parameters, .final.test[$m], .final.test.loss,
        (.distill.gap.fraction_recovered // ""), (.distill.gap.fraction_recovered_loss // "")] | @csv' "$3/summary.json" \
    | tr -d '"' >> "$out/runs.csv"
  echo "switch-distill: $(tail -1 "$out/runs.csv")" >&2
}
for seed in "${seeds[@]}"; do
  t=$work/teacher-s$seed b=$work/baseline-s$seed
  run_once "$t" "$moe" train --config "$cfg" --seed "$seed" --out "$t" --quiet --threads "$threads" "${switch[@]}" >/dev/null
  row teacher "$seed" "$t"
  run_once "$b" "$moe" train --config "$cfg" --seed "$seed" --out "$b" --quiet --threads "$threads" "${dense[@]}" >/dev/null
  row baseline "$seed" "$b"
  for mode in kd sparse-to-dense; do
    name=$([ "$mode" = kd ] && echo kd || echo kd-init)
    d=$work/$name-s$seed
    run_once "$d" "$moe" distill --teacher "$t/model.safetensors" --baseline "$b/model.safetensors" --mode "$mode" "${kd[@]}" \
      --config "$cfg" --seed "$seed" --out "$d" --quiet --threads "$threads" "${dense[@]}" >/dev/null
    row "$name" "$seed" "$d"
  done
  [ "$task" = lm ] || continue
  d=$work/init-only-s$seed
  run_once "$d" "$moe" distill --teacher "$t/model.safetensors" --baseline "$b/model.safetensors" --mode sparse-to-dense \
    --alpha 0 --temperature 1 --config "$cfg" --seed "$seed" --out "$d" --quiet --threads "$threads" "${dense[@]}" >/dev/null
  row init-only "$seed" "$d"
  d=$work/baseline-4ep-s$seed
  run_once "$d" "$moe" train --config "$cfg" --seed "$seed" --out "$d" --quiet --threads "$threads" "${dense[@]}" \
    --set train.epochs=4 >/dev/null
  row baseline-4ep "$seed" "$d"
done

summarise_runs "$out/runs.csv" > "$out/table.csv"
column -s, -t < "$out/table.csv" >&2
# the figure of the README (experiments/switch-distill/plot.gp), when gnuplot is installed
if command -v gnuplot >/dev/null; then gnuplot -e "out='$out'" "$root/experiments/switch-distill/plot.gp"; fi
