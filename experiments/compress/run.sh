#!/usr/bin/env bash
# Compressing a trained MoE after training (moe compress): quality against
# memory for expert pruning (by routed-token usage, by gate importance, at
# random), one-shot neuron pruning of the FFNs (l1 per layer, and the Taylor
# score), int8 post-training quantization (symmetric per channel, asymmetric
# per tensor), and the three together. Published observations it sits beside:
# many experts of a trained MoE can be dropped with a small loss, and usage or
# importance beats random choice (Lu et al. 2024, "Not All Experts are Equal",
# on Mixtral 8x7B); int8 weights with per-channel scales are close to lossless
# for transformer FFNs (e.g. Dettmers et al. 2022; Frantar et al. 2023 find
# round-to-nearest adequate at 8 bits).
#
# `fmnist` (default): the mlp-moe of experiments/common/fmnist-moe.json (two
# sparse layers of 8 experts of width 64, top-2, 8 epochs); quality = test
# accuracy. `lm`: the byte-level LM of experiments/common/lm.json (fortunes;
# blocks 1 and 3 sparse, 8 Switch experts of width 128; 2 epochs); quality =
# validation bits per byte. For each seed the model is trained once, then
# compressed each way; expert and neuron pruning score on the training split.
#
#   [SEEDS="1 2 3"] [THREADS=1] [OUT=results/compress] [WORK=runs/compress] \
#     bash experiments/compress/run.sh [fmnist] [MOE_BINARY]
#   [SEEDS="1 2 3"] [THREADS=1] [OUT=results/compress/lm] [WORK=runs/compress-lm] \
#     bash experiments/compress/run.sh lm [MOE_BINARY]
#
# Then the systems that train (moe train --init of the base, FT epochs: 2 on
# Fashion-MNIST, 1 for the LM, at the base's settings): neuron pruning
# one-shot then fine-tuned (compress --prune-neurons F, then train --init with
# its masks kept fixed) against iterative pruning during the same fine-tuning
# (train.prune: Zhu & Gupta's cubic schedule to F over the first 3/4 of the
# steps, 10 prunes; at 0.9 also over the first half, "-half"); int8 after a float fine-tuning (the control: as many
# steps as QAT) against quantization-aware training (train.qat, then
# compress --quantize int8, which stores exactly the weights QAT's forward
# saw); and iterative pruning with QAT together. Their "before" is the base's
# quality, as for every other row.
# Writes OUT/runs.csv (one row per seed and system: the footprint after and
# the quality before and after), OUT/table.csv (mean, sample SD and 95%
# t-interval over seeds) and OUT/command.txt; OUT/compress.png when gnuplot
# is installed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
task=fmnist
case "${1:-}" in fmnist|lm) task=$1; shift ;; esac
[ $# -ge 1 ] && export MOE=$1
# shellcheck source=../common/lib.sh
. "$root/experiments/common/lib.sh"
moe=$(moe_bin)
if [ "$task" = fmnist ]; then
  check_moe
  experiment_env compress "1 2 3"
  cfg=$root/experiments/common/fmnist-moe.json
  metric=accuracy
else
  [ -x "$moe" ] || { echo "$0: no moe binary at '$moe'" >&2; exit 2; }
  [ -s "$root/experiments/data/cache/fortunes/fortunes.txt" ] ||
    { echo "$0: fortunes text missing: bash experiments/data/fortunes.sh" >&2; exit 2; }
  experiment_env compress "1 2 3" "$root/results/compress/lm" "$root/runs/compress-lm"
  cfg=$root/experiments/common/lm.json
  metric=bits_per_byte
  cd "$root" # lm.json names its text relative to the repository root
fi
mkdir -p "$out" "$work"
# system name, then moe compress's options
systems=(
  "int8|--quantize int8"
  "int8-asym-tensor|--quantize int8 --scheme asymmetric --granularity tensor"
  "experts-2-usage|--prune-experts 2 --prune-by usage"
  "experts-2-importance|--prune-experts 2 --prune-by importance"
  "experts-2-random|--prune-experts 2 --prune-by random"
  "experts-4-usage|--prune-experts 4 --prune-by usage"
  "experts-4-importance|--prune-experts 4 --prune-by importance"
  "experts-4-random|--prune-experts 4 --prune-by random"
  "experts-6-usage|--prune-experts 6 --prune-by usage"
  "experts-6-random|--prune-experts 6 --prune-by random"
  "neurons-0.25-l1|--prune-neurons 0.25"
  "neurons-0.5-l1|--prune-neurons 0.5"
  "neurons-0.75-l1|--prune-neurons 0.75"
  "neurons-0.9-l1|--prune-neurons 0.9"
  "neurons-0.5-taylor|--prune-neurons 0.5 --neuron-score taylor"
  "experts-2+neurons-0.25+int8|--prune-experts 2 --prune-neurons 0.25 --quantize int8"
)
done_compress() { [ -s "$1/summary.json" ] && jq -e '.quality.after' "$1/summary.json" >/dev/null 2>&1; }
n_total=$(( ${#seeds[@]} * (1 + ${#systems[@]}) )) n_done=0
# systems that fine-tune: name|what (oneshot F, iterative F, ft, qat, iterative-qat F)
if [ "$task" = fmnist ]; then ft_epochs=2; else ft_epochs=1; fi
tuned=(
  "neurons-0.5-oneshot-ft|oneshot 0.5"
  "neurons-0.5-iterative|iterative 0.5"
  "neurons-0.75-oneshot-ft|oneshot 0.75"
  "neurons-0.75-iterative|iterative 0.75"
  "neurons-0.9-oneshot-ft|oneshot 0.9"
  "neurons-0.9-iterative|iterative 0.9"
  "neurons-0.9-iterative-half|iterative 0.9 1/2"
  "ft-int8|ft"
  "qat-int8|qat"
  "neurons-0.5-iterative+qat-int8|iterative-qat 0.5"
)
for seed in "${seeds[@]}"; do
  ! done_run "$work/base-s$seed" || n_done=$((n_done + 1))
  for s in "${systems[@]}" "${tuned[@]}"; do ! done_compress "$work/${s%%|*}-s$seed" || n_done=$((n_done + 1)); done
done
n_total=$(( n_total + ${#seeds[@]} * ${#tuned[@]} ))
if [ "$task" = fmnist ]; then
  plan_runs "$n_total" "$n_done" 4 "per seed one Fashion-MNIST training of about 15 s, ${#systems[@]} compressions of 1-5 s each and ${#tuned[@]} fine-tunings of about 5 s at 1 thread"
else
  plan_runs "$n_total" "$n_done" 12 "per seed one LM training of 50-60 s, ${#systems[@]} compressions of 2-8 s each and ${#tuned[@]} fine-tunings of about 30 s at 1 thread"
fi
{ echo "$(env_line) bash experiments/compress/run.sh $task  # $(date -u +%Y-%m-%d), $("$moe" --version | head -1)"; provenance "$moe"; } > "$out/command.txt"

echo "system,seed,parameters,parameters_nonzero,parameter_bytes,resident_bytes_per_token,${metric}_before,${metric}_after,${metric}_change,loss_before,loss_after" > "$out/runs.csv"
row() { # name seed dir
  jq -r --arg n "$1" --arg s "$2" --arg m "$metric" '[$n, ($s | tonumber), .after.parameters, .after.parameters_nonzero,
        .after.parameter_bytes, .after.resident_bytes_per_token, .quality.before[$m], .quality.after[$m],
        (.quality.after[$m] - .quality.before[$m]), .quality.before.loss, .quality.after.loss] | @csv' "$3/summary.json" \
    | tr -d '"' >> "$out/runs.csv"
}
# fix_before: the last row's "before" (quality and loss) becomes the base's
# (the int8 compression's quality.before: the base model as compress evaluates it)
fix_before() {
  local before loss0
  before=$(jq --arg m "$metric" '.quality.before[$m]' "$work/int8-s$seed/summary.json")
  loss0=$(jq '.quality.before.loss' "$work/int8-s$seed/summary.json")
  awk -F, -v OFS=, -v CONVFMT=%.10g -v b="$before" -v l="$loss0" 'NR == FNR { n = FNR; next } FNR == n { $7 = b; $9 = $8 - b; $10 = l } { print }' \
    "$out/runs.csv" "$out/runs.csv" > "$out/runs.csv.tmp" && mv "$out/runs.csv.tmp" "$out/runs.csv"
}
for seed in "${seeds[@]}"; do
  b=$work/base-s$seed
  run_once "$b" "$moe" train --config "$cfg" --seed "$seed" --out "$b" --quiet --threads "$threads" >/dev/null
  # the uncompressed model as a row of its own: quality before = after
  jq -r --arg s "$seed" --arg m "$metric" '["none", ($s | tonumber), .parameters, .parameters, 4 * .parameters, null,
        .final.test[$m], .final.test[$m], 0, .final.test.loss, .final.test.loss] | @csv' "$b/summary.json" \
    | tr -d '"' >> "$out/runs.csv"
  for s in "${systems[@]}"; do
    name=${s%%|*}
    read -r -a opts <<<"${s#*|}"
    d=$work/$name-s$seed
    if ! done_compress "$d"; then
      fresh_dir "$d"
      "$moe" compress --checkpoint "$b/model.safetensors" --out "$d" --seed "$seed" --quiet --threads "$threads" "${opts[@]}" >/dev/null
    fi
    row "$name" "$seed" "$d"
    echo "compress: $(tail -1 "$out/runs.csv")" >&2
  done
  # the fine-tuning systems: their last step is a compress whose summary holds
  # the footprint and the quality after; "before" is the base's (the int8 row's)
  for s in "${tuned[@]}"; do
    name=${s%%|*}
    read -r kind frac part <<<"${s#*|}"
    part=${part:-3/4}
    d=$work/$name-s$seed t=$work/$name-train-s$seed
    if ! done_compress "$d"; then
      ft=("$moe" train --config "$cfg" --seed "$seed" --set "train.epochs=$ft_epochs" --quiet --threads "$threads")
      # the schedule: 3/4 of the fine-tuning's optimizer steps (or the system's part), 10 prunes
      steps=$(( $(jq .steps_per_epoch "$b/summary.json") * ft_epochs * ${part%/*} / ${part#*/} ))
      sched=(--set "train.prune.sparsity=$frac" --set "train.prune.steps=$steps" --set "train.prune.every=$(( steps / 10 ))")
      case $kind in
        oneshot)
          fresh_dir "$t.pruned"
          "$moe" compress --checkpoint "$b/model.safetensors" --out "$t.pruned" --prune-neurons "$frac" --quiet --threads "$threads" >/dev/null
          run_once "$t" "${ft[@]}" --init "$t.pruned/model.safetensors" --out "$t" >/dev/null ;;
        iterative) run_once "$t" "${ft[@]}" --init "$b/model.safetensors" "${sched[@]}" --out "$t" >/dev/null ;;
        ft) run_once "$t" "${ft[@]}" --init "$b/model.safetensors" --out "$t" >/dev/null ;;
        qat) run_once "$t" "${ft[@]}" --init "$b/model.safetensors" --set train.qat.quantize=int8 --out "$t" >/dev/null ;;
        iterative-qat) run_once "$t" "${ft[@]}" --init "$b/model.safetensors" "${sched[@]}" --set train.qat.quantize=int8 --out "$t" >/dev/null ;;
      esac
      case $kind in
        oneshot|iterative) copts=(--prune-neurons 0) ;; # prunes nothing more: the footprint and quality of the masked model
        *) copts=(--quantize int8) ;;
      esac
      fresh_dir "$d"
      "$moe" compress --checkpoint "$t/model.safetensors" --out "$d" --seed "$seed" --quiet --threads "$threads" "${copts[@]}" >/dev/null
    fi
    # ft-int8's float model (the quality before its quantization): the fine-tuned reference, ft-float
    if [ "$kind" = ft ]; then
      jq -r --arg s "$seed" --arg m "$metric" '["ft-float", ($s | tonumber), .before.parameters, .before.parameters_nonzero,
            .before.parameter_bytes, .before.resident_bytes_per_token, .quality.before[$m], .quality.before[$m],
            0, .quality.before.loss, .quality.before.loss] | @csv' "$d/summary.json" | tr -d '"' >> "$out/runs.csv"
      fix_before
    fi
    row "$name" "$seed" "$d"
    fix_before
    echo "train+compress: $(tail -1 "$out/runs.csv")" >&2
  done
done
# the base row has no resident figure of its own: take it from any compression's "before"
res=$(jq .before.resident_bytes_per_token "$work/int8-s${seeds[0]}/summary.json")
awk -F, -v OFS=, -v r="$res" '$1 == "none" { $6 = r } { print }' "$out/runs.csv" > "$out/runs.csv.tmp" && mv "$out/runs.csv.tmp" "$out/runs.csv"
summarise_from 3 "$out/runs.csv" > "$out/table.csv"
column -s, -t < "$out/table.csv" >&2
if command -v gnuplot >/dev/null; then gnuplot -e "out='$out'; metric='$metric'" "$here/plot.gp"; fi
