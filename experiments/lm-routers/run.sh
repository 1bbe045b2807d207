#!/usr/bin/env bash
# Routers inside a byte-level Transformer LM on the English `fortunes` corpus,
# at equal active parameters: dense, Switch top-1, GShard top-2, hash routing
# by token id (random and balanced tables) and a shared expert. The model
# (experiments/common/lm.json): 4 pre-norm blocks, n_embd 64, 4 heads, context
# 64 bytes, blocks 1 and 3 sparse with 8 experts. The FFN width a token passes
# through is 128 in every system: dense FFN 128; switch and hash experts of
# width 128 (top-1); gshard experts of width 64 (top-2); shared-expert = one
# always-on expert of width 64 plus a top-1 routed expert of width 64 (raw
# router probability as the gate, DeepSeekMoE style). Token-choice routers
# train at capacity factor 1.25 and evaluate at 2.0. 2 epochs of 12,000 random
# windows (1.5M training tokens), seeds 1-5 by default (runs of about 35 s).
#
#   bash experiments/data/fortunes.sh        # once: the corpus
#   [SEEDS="1 2 3 4 5"] [THREADS=1] [OUT=results/lm-routers] [WORK=runs/lm-routers] \
#     bash experiments/lm-routers/run.sh [MOE_BINARY]
#
# Finished runs under WORK are kept and not run again (lib.sh done_run; the
# count is printed first); a run stopped half way is run again from scratch.
# Writes OUT/runs.csv, table.csv (mean, sample sd and 95% t-interval over seeds), command.txt, and
# lm-routers.png when gnuplot is installed. Tokens per second is also given as
# a ratio to the dense model trained in the same seed loop (the machine is
# shared).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
[ $# -ge 1 ] && export MOE=$1
# shellcheck source=../common/lib.sh
. "$root/experiments/common/lib.sh"
need_lm_inputs # sets moe and corpus, or exits 2
experiment_env lm-routers "1 2 3 4 5" # sets seeds, threads, out, work
mkdir -p "$out" "$work"

# name | settings (space-separated key=value)
systems=(
  "dense|model.moe_every=99"
  "switch|moe.router=\"switch\" model.n_expert_used=1 model.n_ff=128 moe.jitter=0.01 moe.aux_loss=\"switch\""
  "gshard-top2|moe.router=\"gshard\" model.n_expert_used=2 model.n_ff=64 moe.second_policy=\"random\" moe.aux_loss=\"gshard\""
  "hash-random|moe.router=\"hash\" model.n_expert_used=1 model.n_ff=128 moe.hash_table=\"random\""
  "hash-balanced|moe.router=\"hash\" model.n_expert_used=1 model.n_ff=128 moe.hash_table=\"balanced\""
  "shared-expert|moe.router=\"switch\" model.n_expert_used=1 model.n_expert_shared=1 model.n_ff=64 moe.aux_loss=\"switch\""
)

dirs=()
for seed in "${seeds[@]}"; do for s in "${systems[@]}"; do dirs+=("$work/${s%%|*}-s$seed"); done; done
plan_runs ${#dirs[@]} "$(count_done "${dirs[@]}")" 35 \
  "${#systems[@]} systems x ${#seeds[@]} seeds; about 35 s each at 1 thread on the shared machine: 30 runs took about 17 minutes"
{ echo "$(env_line) bash experiments/lm-routers/run.sh  # $(date -u +%Y-%m-%d), $("$moe" --version | head -1), corpus sha256 $(sha256sum "$corpus" | cut -c1-16)"; provenance "$moe"; } > "$out/command.txt"

echo "system,seed,active_parameters,parameters,valid_bits_per_byte,valid_loss,train_bits_per_byte,valid_load_cv,valid_load_max_mean,train_dropped,valid_dropped,router_entropy,expert_byte_class_mi,tokens_per_second,speed_ratio" > "$out/runs.csv"
for seed in "${seeds[@]}"; do
  dense_tps=""
  for s in "${systems[@]}"; do
    name=${s%%|*}
    sets=()
    for kv in ${s#*|}; do sets+=(--set "$kv"); done
    d=$work/$name-s$seed
    if ! done_run "$d"; then
      fresh_dir "$d"
      "$moe" train --config "$root/experiments/common/lm.json" --set data.text.path="\"$corpus\"" --seed "$seed" --threads "$threads" \
        --out "$d" --quiet "${sets[@]}" >/dev/null
    fi
    tps=$(jq -r '.train_tokens_per_second' "$d/summary.json")
    [ "$name" = dense ] && dense_tps=$tps
    ratio=$(awk -v a="$tps" -v b="$dense_tps" 'BEGIN { printf "%.4g", a / b }')
    t=$(jq -r '[(.active_parameters // .parameters), .parameters, .final.test.bits_per_byte, .final.test.loss,
                 .final.train.bits_per_byte, .final.test.load_cv, .final.test.load_max_mean] | @csv' "$d/summary.json")
    t2=$(jq -r '[.final.test.dropped_fraction, .final.test.router_entropy, .final.test.expert_label_mi] | @csv' "$d/summary.json")
    vd=${t2%%,*}
    rest=${t2#*,}
    echo "$name,$seed,$t,$(last_batch "$d" dropped_fraction),$vd,$rest,$tps,$ratio" >> "$out/runs.csv"
    echo "lm-routers: $name seed=$seed: $t tokens/s $tps (x$ratio dense)" >&2
  done
done
summarise_runs "$out/runs.csv" > "$out/table.csv"
column -s, -t < "$out/table.csv" >&2
# the figure of the README (experiments/lm-routers/plot.gp), when gnuplot is installed
if command -v gnuplot >/dev/null; then gnuplot -e "out='$out'" "$root/experiments/lm-routers/plot.gp"; fi
