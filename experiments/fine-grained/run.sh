#!/usr/bin/env bash
# Fine-grained expert segmentation and shared-expert isolation (Dai et al. 2024,
# DeepSeekMoE, sec. 3 and Figure 3), in the byte-level Transformer LM of
# experiments/common/lm.json on the English `fortunes` corpus (4 pre-norm
# blocks, n_embd 64, context 64 bytes, blocks 1 and 3 sparse). Every sparse
# block holds 8 x 128 = 1,024 expert hidden units in all and a token passes
# through 128 of them, in every system (equal active and total parameters):
#   switch-8x128     the baseline: 8 experts of width 128, Switch top-1 (lm.json as is)
#   fine-m2          16 experts of width 64, top-2, deepseek router (raw probabilities as gates)
#   fine-m4          32 experts of width 32, top-4, deepseek router
#   fine-m2-shared   1 shared expert of width 64 + 15 routed of width 64, top-1, deepseek router
#   fine-m4-shared   1 shared expert of width 32 + 31 routed of width 32, top-3, deepseek router
# The deepseek systems balance with DeepSeekMoE's expert-level loss, alpha = 0.01:
# topk-all (alpha' E sum_e f_e P_e over all k choices, k at balance) with alpha' = 0.01 / k,
# which is the paper's normalisation (1 at balance). Capacity ceil(cf k T / E) at cf 1.25 in
# training and 2.0 in evaluation: 320 tokens per width-128 expert-equivalent of a 2,048-token batch
# in every system. 2 epochs of 12,000 random windows (1.5M training tokens).
# The baseline's runs are the same configuration and seed as expert-scaling's E8 runs: when
# REUSE (default $root/runs/expert-scaling) holds a finished E8-s<seed>, it is read from there.
#
#   [SEEDS="1 2 3 4 5"] [THREADS=1] [OUT=results/fine-grained] [WORK=runs/fine-grained] \
#     [REUSE=runs/expert-scaling] bash experiments/fine-grained/run.sh [MOE_BINARY]
#
# SEEDS default 1-5 (runs of 40-50 s). Finished runs under WORK (and REUSE's E8) are kept and not
# run again (done_run; the count is printed first); a run stopped half way is run again from scratch.
# Writes OUT/runs.csv,
# table.csv (mean, sample sd and 95% t-interval over seeds), command.txt, and OUT/fine-grained.png when
# gnuplot is installed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
[ $# -ge 1 ] && export MOE=$1
# shellcheck source=../common/lib.sh
. "$root/experiments/common/lib.sh"
need_lm_inputs # sets moe and corpus, or exits 2
experiment_env fine-grained "1 2 3 4 5" # sets seeds, threads, out, work
reuse=$(realpath -m -- "${REUSE:-$root/runs/expert-scaling}")
mkdir -p "$out" "$work"

ds='moe.router="deepseek" moe.aux_loss="topk-all"'
# name | settings (space-separated key=value)
systems=(
  "switch-8x128|model.n_expert=8"
  "fine-m2|$ds model.n_expert=16 model.n_ff=64 model.n_expert_used=2 moe.aux_weight=0.005"
  "fine-m4|$ds model.n_expert=32 model.n_ff=32 model.n_expert_used=4 moe.aux_weight=0.0025"
  "fine-m2-shared|$ds model.n_expert=15 model.n_expert_shared=1 model.n_ff=64 model.n_expert_used=1 moe.aux_weight=0.01"
  "fine-m4-shared|$ds model.n_expert=31 model.n_expert_shared=1 model.n_ff=32 model.n_expert_used=3 moe.aux_weight=0.003333"
)

n=0 n_done=0 n_reused=0
for seed in "${seeds[@]}"; do
  for s in "${systems[@]}"; do
    n=$((n + 1))
    if done_run "$work/${s%%|*}-s$seed"; then n_done=$((n_done + 1))
    elif [ "${s%%|*}" = switch-8x128 ] && done_run "$reuse/E8-s$seed"; then n_reused=$((n_reused + 1)); fi
  done
done
skip_note "$n_done" "$n"
skip_note "$n_reused" "${#seeds[@]}" "baseline runs (switch-8x128 = expert-scaling's E8)" "$reuse"
expected_time "$(about_minutes $(( n * 45 ))) for all $n runs (${#systems[@]} systems x ${#seeds[@]} seeds; about 40-50 s per run at 1 thread)," \
  "$(about_minutes $(( (n - n_done - n_reused) * 45 ))) for the $(( n - n_done - n_reused )) left"
{ echo "$(env_line) REUSE=$(printf %q "$(rel "$reuse")") bash experiments/fine-grained/run.sh  # $(date -u +%Y-%m-%d), $("$moe" --version | head -1), corpus sha256 $(sha256sum "$corpus" | cut -c1-16)"
  provenance "$moe"; } > "$out/command.txt"

echo "system,seed,active_parameters,parameters,valid_bits_per_byte,valid_loss,train_bits_per_byte,valid_load_cv,valid_load_max_mean,train_dropped,valid_dropped,router_entropy,tokens_per_second,speed_ratio,wall_seconds" > "$out/runs.csv"
for seed in "${seeds[@]}"; do
  base_tps=""
  for s in "${systems[@]}"; do
    name=${s%%|*}
    sets=()
    for kv in ${s#*|}; do sets+=(--set "$kv"); done
    d=$work/$name-s$seed
    if [ "$name" = switch-8x128 ] && ! done_run "$d" && done_run "$reuse/E8-s$seed"; then d=$reuse/E8-s$seed; fi
    if ! done_run "$d"; then
      fresh_dir "$d"
      "$moe" train --config "$root/experiments/common/lm.json" --set data.text.path="\"$corpus\"" --seed "$seed" \
        --threads "$threads" --out "$d" --force --quiet "${sets[@]}" >/dev/null
    fi
    tps=$(jq -r '.train_tokens_per_second' "$d/summary.json")
    [ "$name" = switch-8x128 ] && base_tps=$tps
    ratio=$(awk -v a="$tps" -v b="$base_tps" 'BEGIN { printf "%.4g", a / b }')
    t=$(jq -r '[(.active_parameters // .parameters), .parameters, .final.test.bits_per_byte, .final.test.loss, .final.train.bits_per_byte, .final.test.load_cv, .final.test.load_max_mean] | @csv' "$d/summary.json")
    t3=$(jq -r '[.final.test.dropped_fraction, .final.test.router_entropy] | @csv' "$d/summary.json")
    wall=$(jq -r '.wall_seconds' "$d/summary.json")
    echo "$name,$seed,$t,$(last_batch "$d" dropped_fraction),$t3,$tps,$ratio,$wall" >> "$out/runs.csv"
    echo "fine-grained: $name seed=$seed: $t tokens/s $tps (x$ratio baseline) ${wall}s" >&2
  done
done
summarise_runs "$out/runs.csv" > "$out/table.csv"
column -s, -t < "$out/table.csv" >&2
# the figure of the README (experiments/fine-grained/plot.gp), when gnuplot is installed
if command -v gnuplot >/dev/null; then gnuplot -e "out='$out'" "$root/experiments/fine-grained/plot.gp"; fi
