#!/usr/bin/env bash
# Expert scaling at fixed computation (Shazeer et al. 2017, Table 1 / Figure 2:
# perplexity falls with more experts at fixed computation per token; Fedus et
# al. 2021, Switch Transformer, Figure 4: loss improves steadily from 2 to 256
# experts at fixed FLOPs per token), in the byte-level Transformer LM of
# experiments/common/lm.json on the English `fortunes` corpus: 4 pre-norm
# blocks, n_embd 64, context 64 bytes, blocks 1 and 3 sparse, Switch top-1
# router (capacity factor 1.25 in training, 2.0 in evaluation, Switch balancing
# loss 0.01), expert width 128. The number of experts E in the sparse blocks is
# 1 (dense: model.moe_every=99, an FFN of width 128 in every block), 2, 4, 8,
# 16, 32 and 64; k = 1 and the expert width stay fixed, so the active
# parameters per token are the dense model's plus the router (+64 E per sparse
# block) while the total grows with E. 2 epochs of 12,000 random windows
# (1.5M training tokens), batch 32 windows = 2,048 tokens per batch, so at E =
# 64 each expert's share of a batch is 32 tokens (capacity 40).
#
#   [SEEDS="1 2 3 4 5"] [THREADS=1] [OUT=results/expert-scaling] [WORK=runs/expert-scaling] \
#     bash experiments/expert-scaling/run.sh [MOE_BINARY]
#
# SEEDS default 1-5 (runs of 30-46 s). Finished runs under WORK are kept and
# not run again (lib.sh done_run; the count is printed first); a run stopped
# half way is run again from scratch. Writes OUT/runs.csv (one row per system and seed), table.csv (mean, sample sd and 95% t-interval
# over seeds), command.txt, and OUT/expert-scaling.png when gnuplot is
# installed. Tokens per second is also given as a ratio to the dense model
# trained in the same seed loop (the machine is shared).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
[ $# -ge 1 ] && export MOE=$1
# shellcheck source=../common/lib.sh
. "$root/experiments/common/lib.sh"
need_lm_inputs # sets moe and corpus, or exits 2
experiment_env expert-scaling "1 2 3 4 5" # sets seeds, threads, out, work
mkdir -p "$out" "$work"

# name | settings (space-separated key=value)
systems=("E1|model.moe_every=99")
for e in 2 4 8 16 32 64; do systems+=("E$e|model.n_expert=$e"); done

dirs=()
for seed in "${seeds[@]}"; do for s in "${systems[@]}"; do dirs+=("$work/${s%%|*}-s$seed"); done; done
plan_runs ${#dirs[@]} "$(count_done "${dirs[@]}")" 40 \
  "${#systems[@]} systems x ${#seeds[@]} seeds; 30 s per dense run, 35-46 s per sparse run at 1 thread, longer with E"
{ echo "$(env_line) bash experiments/expert-scaling/run.sh  # $(date -u +%Y-%m-%d), $("$moe" --version | head -1), corpus sha256 $(sha256sum "$corpus" | cut -c1-16)"
  provenance "$moe"; } > "$out/command.txt"

echo "system,seed,active_parameters,parameters,n_expert,valid_bits_per_byte,valid_loss,train_bits_per_byte,valid_load_cv,valid_load_max_mean,train_dropped,valid_dropped,router_entropy,tokens_per_second,speed_ratio,wall_seconds" > "$out/runs.csv"
for seed in "${seeds[@]}"; do
  dense_tps=""
  for s in "${systems[@]}"; do
    name=${s%%|*}
    sets=()
    for kv in ${s#*|}; do sets+=(--set "$kv"); done
    d=$work/$name-s$seed
    if ! done_run "$d"; then
      fresh_dir "$d"
      "$moe" train --config "$root/experiments/common/lm.json" --set data.text.path="\"$corpus\"" --seed "$seed" \
        --threads "$threads" --out "$d" --force --quiet "${sets[@]}" >/dev/null
    fi
    tps=$(jq -r '.train_tokens_per_second' "$d/summary.json")
    [ "$name" = E1 ] && dense_tps=$tps
    ratio=$(awk -v a="$tps" -v b="$dense_tps" 'BEGIN { printf "%.4g", a / b }')
    t=$(jq -r '[(.active_parameters // .parameters), .parameters] | @csv' "$d/summary.json")
    t2=$(jq -r '[.final.test.bits_per_byte, .final.test.loss, .final.train.bits_per_byte, .final.test.load_cv, .final.test.load_max_mean] | @csv' "$d/summary.json")
    t3=$(jq -r '[.final.test.dropped_fraction, .final.test.router_entropy] | @csv' "$d/summary.json")
    wall=$(jq -r '.wall_seconds' "$d/summary.json")
    echo "$name,$seed,$t,${name#E},$t2,$(last_batch "$d" dropped_fraction),$t3,$tps,$ratio,$wall" >> "$out/runs.csv"
    echo "expert-scaling: $name seed=$seed: $t2 tokens/s $tps (x$ratio dense) ${wall}s" >&2
  done
done
summarise_runs "$out/runs.csv" > "$out/table.csv"
column -s, -t < "$out/table.csv" >&2
# the figure of the README (experiments/expert-scaling/plot.gp), when gnuplot is installed
if command -v gnuplot >/dev/null; then gnuplot -e "out='$out'" "$root/experiments/expert-scaling/plot.gp"; fi
