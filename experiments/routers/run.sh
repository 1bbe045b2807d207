#!/usr/bin/env bash
# Every router at equal active parameters against the dense model of the same
# active size, on Fashion-MNIST (MLP-MoE, 2 blocks, n_embd 64, 8 experts per
# sparse block). Active FFN width per token is 128 everywhere: top-2 routers use
# experts of width 64, top-1 routers width 128, expert choice (2 experts per
# token on average) width 64, shared-expert = 1 shared + top-1 routed of width 64,
# and the dense model an FFN of width 128. shared-expert gates its routed expert with
# the raw router probability (DeepSeekMoE; router "switch", the same as "deepseek" at top-1, no jitter);
# shared-expert-renorm uses the renormalised top-1 softmax, whose gate is always 1,
# so its router learns from the balancing loss alone (kept to show the pitfall). Token-choice routers train with
# capacity factor 1.25 and evaluate with 2.0 (the Switch defaults). Seeds 1-5 by
# default (runs of about 13 s); THREADS threads per run (default 1).
#
#   [SEEDS="1 2 3 4 5"] [THREADS=1] [OUT=results/routers] [WORK=runs/routers] \
#     bash experiments/routers/run.sh [MOE_BINARY]
#
# Finished runs under WORK are kept and not run again (lib.sh done_run; the
# count is printed first); a run stopped half way is run again from scratch.
# Writes OUT/runs.csv, table.csv (mean, sample sd and 95% t-interval over seeds), command.txt, and
# routers.png when gnuplot is installed.
# Time per step is reported as a ratio to the dense model trained in the same
# seed loop (the machine is shared; a bare time would not repeat).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
[ $# -ge 1 ] && export MOE=$1
# shellcheck source=../common/lib.sh
. "$root/experiments/common/lib.sh"
check_moe
moe=$(moe_bin)
experiment_env routers "1 2 3 4 5" # sets seeds, threads, out, work
mkdir -p "$out" "$work"

# name | settings (space-separated key=value)
systems=(
  "dense|model.moe_every=99 model.n_ff_dense=128"
  "softmax-top2|moe.router=\"softmax\" model.n_expert_used=2 model.n_ff=64 moe.aux_loss=\"topk-all\" moe.aux_weight=0.01"
  "noisy-top2|moe.router=\"noisy-topk\" model.n_expert_used=2 model.n_ff=64 moe.aux_loss=\"shazeer\" moe.w_importance=0.1 moe.w_load=0.1"
  "switch|moe.router=\"switch\" model.n_expert_used=1 model.n_ff=128 moe.jitter=0.01 moe.aux_loss=\"switch\" moe.aux_weight=0.01"
  "gshard|moe.router=\"gshard\" model.n_expert_used=2 model.n_ff=64 moe.second_policy=\"random\" moe.aux_loss=\"gshard\" moe.aux_weight=0.01"
  "hash-random|moe.router=\"hash\" model.n_expert_used=1 model.n_ff=128 moe.hash_table=\"random\" moe.aux_loss=\"none\""
  "hash-balanced|moe.router=\"hash\" model.n_expert_used=1 model.n_ff=128 moe.hash_table=\"balanced\" moe.aux_loss=\"none\""
  "expert-choice|moe.router=\"expert-choice\" moe.ec_factor=2 model.n_ff=64 moe.aux_loss=\"none\""
  "shared-expert|moe.router=\"switch\" model.n_expert_used=1 model.n_expert_shared=1 model.n_ff=64 moe.jitter=0 moe.aux_loss=\"switch\" moe.aux_weight=0.01"
  "shared-expert-renorm|moe.router=\"softmax\" model.n_expert_used=1 model.n_expert_shared=1 model.n_ff=64 moe.aux_loss=\"topk-all\" moe.aux_weight=0.01"
  "bias-balance|moe.router=\"softmax\" model.n_expert_used=2 model.n_ff=64 moe.bias_balance=true moe.bias_rate=0.001 moe.aux_loss=\"none\""
)

dirs=()
for seed in "${seeds[@]}"; do for s in "${systems[@]}"; do dirs+=("$work/${s%%|*}-s$seed"); done; done
plan_runs ${#dirs[@]} "$(count_done "${dirs[@]}")" 13 \
  "${#systems[@]} systems x ${#seeds[@]} seeds; about 13 s each at 1 thread: 55 runs took about 12 minutes"
{ echo "$(env_line) bash experiments/routers/run.sh  # $(date -u +%Y-%m-%d), $("$moe" --version | head -1)"; provenance "$moe"; } > "$out/command.txt"

echo "system,seed,active_parameters,parameters,test_accuracy,test_load_cv,test_load_max_mean,test_importance_cv,train_dropped,router_entropy,ms_per_step,step_time_ratio" > "$out/runs.csv"
for seed in "${seeds[@]}"; do
  dense_ms=""
  for s in "${systems[@]}"; do
    name=${s%%|*}
    sets=()
    for kv in ${s#*|}; do sets+=(--set "$kv"); done
    d=$work/$name-s$seed
    if ! done_run "$d"; then
      fresh_dir "$d"
      "$moe" train --config "$root/experiments/common/fmnist-moe.json" --seed "$seed" --out "$d" --quiet --threads "$threads" \
        --set moe.capacity_factor=1.25 --set moe.eval_capacity_factor=2 "${sets[@]}" >/dev/null
    fi
    ms=$(jq -r '1000 * 128 / .train_rows_per_second' "$d/summary.json")
    [ "$name" = dense ] && dense_ms=$ms
    ratio=$(awk -v a="$ms" -v b="$dense_ms" 'BEGIN { printf "%.4g", a / b }')
    t=$(jq -r '[(.active_parameters // .parameters), .parameters, .final.test.accuracy, .final.test.load_cv, .final.test.load_max_mean, .final.test.importance_cv] | @csv' "$d/summary.json")
    echo "$name,$seed,$t,$(last_batch "$d" dropped_fraction),$(last_batch "$d" router_entropy),$ms,$ratio" >> "$out/runs.csv"
    echo "routers: $name seed=$seed: $t ms/step $ms (x$ratio dense)" >&2
  done
done

summarise_runs "$out/runs.csv" > "$out/table.csv"
column -s, -t < "$out/table.csv" >&2
# the figure of the README (experiments/routers/plot.gp), when gnuplot is installed
if command -v gnuplot >/dev/null; then gnuplot -e "out='$out'" "$root/experiments/routers/plot.gp"; fi
