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
# for loss. 3 seeds.
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
#   [SEEDS="1 2 3"] [THREADS=2] bash experiments/switch-distill/run.sh [fmnist|lm] [MOE_BINARY]
#
# Finished runs under runs/ are kept and not run again.
#
# Writes results/switch-distill/runs.csv (lm: results/switch-distill/lm/runs.csv),
# table.csv (mean and sd over seeds), command.txt.
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
expected_time "about 10 minutes (Fashion-MNIST, 12 runs) or, with the argument lm, about 50 minutes at THREADS=1 (18 runs)"
read -r -a seeds <<< "${SEEDS:-1 2 3}"
threads=(--threads "${THREADS:-2}")
if [ "$task" = fmnist ]; then
  out=${OUT:-$root/results/switch-distill}
  work=${WORK:-$root/runs/switch-distill}
  cfg=$root/experiments/common/fmnist-moe.json
  switch=(--set 'moe.router="switch"' --set model.n_expert_used=1 --set model.n_ff=128 --set moe.jitter=0.01
          --set 'moe.aux_loss="switch"' --set moe.aux_weight=0.01 --set moe.capacity_factor=1.25
          --set moe.eval_capacity_factor=2)
  dense=(--set model.moe_every=99 --set model.n_ff_dense=128)
else
  [ -s "$root/experiments/data/cache/fortunes/fortunes.txt" ] ||
    { echo "$0: fortunes text missing: bash experiments/data/fortunes.sh" >&2; exit 2; }
  out=${OUT:-$root/results/switch-distill/lm}
  work=${WORK:-$root/runs/switch-distill-lm}
  cfg=$root/experiments/common/lm.json
  switch=()   # lm.json is the switch teacher
  dense=(--set model.moe_every=99)
  cd "$root"  # lm.json names its text relative to the repository root
fi
mkdir -p "$out" "$work"
{ echo "SEEDS=\"${seeds[*]}\" THREADS=${THREADS:-2} bash experiments/switch-distill/run.sh $task  # $(date -u +%Y-%m-%d), $("$moe" --version | head -1)"; provenance "$moe"; } > "$out/command.txt"
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
  done_run "$t" || "$moe" train --config "$cfg" --seed "$seed" --out "$t" --quiet "${threads[@]}" "${switch[@]}" >/dev/null
  row teacher "$seed" "$t"
  done_run "$b" || "$moe" train --config "$cfg" --seed "$seed" --out "$b" --quiet "${threads[@]}" "${dense[@]}" >/dev/null
  row baseline "$seed" "$b"
  for mode in kd sparse-to-dense; do
    name=$([ "$mode" = kd ] && echo kd || echo kd-init)
    d=$work/$name-s$seed
    done_run "$d" || "$moe" distill --teacher "$t/model.safetensors" --baseline "$b/model.safetensors" --mode "$mode" "${kd[@]}" \
      --config "$cfg" --seed "$seed" --out "$d" --quiet "${threads[@]}" "${dense[@]}" >/dev/null
    row "$name" "$seed" "$d"
  done
  [ "$task" = lm ] || continue
  d=$work/init-only-s$seed
  done_run "$d" || "$moe" distill --teacher "$t/model.safetensors" --baseline "$b/model.safetensors" --mode sparse-to-dense \
    --alpha 0 --temperature 1 --config "$cfg" --seed "$seed" --out "$d" --quiet "${threads[@]}" "${dense[@]}" >/dev/null
  row init-only "$seed" "$d"
  d=$work/baseline-4ep-s$seed
  done_run "$d" || "$moe" train --config "$cfg" --seed "$seed" --out "$d" --quiet "${threads[@]}" "${dense[@]}" \
    --set train.epochs=4 >/dev/null
  row baseline-4ep "$seed" "$d"
done

summarise_runs "$out/runs.csv" > "$out/table.csv"
column -s, -t < "$out/table.csv" >&2
# the figure of the README (experiments/switch-distill/plot.gp), when gnuplot is installed
if command -v gnuplot >/dev/null; then gnuplot -e "out='$out'" "$root/experiments/switch-distill/plot.gp"; fi
