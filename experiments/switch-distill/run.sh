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
#   bash experiments/switch-distill/run.sh [MOE_BINARY]
#
# Writes results/switch-distill/runs.csv, table.csv (mean and sd over seeds), command.txt.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
[ $# -ge 1 ] && export MOE=$1
# shellcheck source=../common/lib.sh
. "$root/experiments/common/lib.sh"
check_moe
moe=$(moe_bin)
out=$root/results/switch-distill
work=$root/runs/switch-distill
seeds=(1 2 3)
mkdir -p "$out" "$work"
echo "bash experiments/switch-distill/run.sh  # $(date -u +%Y-%m-%d), $("$moe" --version | head -1)" > "$out/command.txt"
cfg=$root/experiments/common/fmnist-moe.json
switch=(--set 'moe.router="switch"' --set model.n_expert_used=1 --set model.n_ff=128 --set moe.jitter=0.01
        --set 'moe.aux_loss="switch"' --set moe.aux_weight=0.01 --set moe.capacity_factor=1.25
        --set moe.eval_capacity_factor=2)
dense=(--set model.moe_every=99 --set model.n_ff_dense=128)
kd=(--alpha 0.25 --temperature 1)

echo "system,seed,active_parameters,parameters,test_accuracy,test_loss,gap_recovered_accuracy,gap_recovered_loss" > "$out/runs.csv"
row() { # name seed dir
  jq -r --arg n "$1" --arg s "$2" '[$n, ($s | tonumber), (.active_parameters // .parameters), .parameters, .final.test.accuracy, .final.test.loss,
        (.distill.gap.fraction_recovered // ""), (.distill.gap.fraction_recovered_loss // "")] | @csv' "$3/summary.json" \
    | tr -d '"' >> "$out/runs.csv"
  echo "switch-distill: $(tail -1 "$out/runs.csv")" >&2
}
for seed in "${seeds[@]}"; do
  t=$work/teacher-s$seed b=$work/baseline-s$seed
  "$moe" train --config "$cfg" --seed "$seed" --out "$t" --quiet "${switch[@]}" >/dev/null
  row teacher "$seed" "$t"
  "$moe" train --config "$cfg" --seed "$seed" --out "$b" --quiet "${dense[@]}" >/dev/null
  row baseline "$seed" "$b"
  for mode in kd sparse-to-dense; do
    name=$([ "$mode" = kd ] && echo kd || echo kd-init)
    d=$work/$name-s$seed
    "$moe" distill --teacher "$t/model.safetensors" --baseline "$b/model.safetensors" --mode "$mode" "${kd[@]}" \
      --config "$cfg" --seed "$seed" --out "$d" --quiet "${dense[@]}" >/dev/null
    row "$name" "$seed" "$d"
  done
done

summarise_runs "$out/runs.csv" > "$out/table.csv"
column -s, -t < "$out/table.csv" >&2
