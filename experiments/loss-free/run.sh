#!/usr/bin/env bash
# Auxiliary-loss-free load balancing (Wang et al. 2024, "Auxiliary-Loss-Free
# Load Balancing Strategy for Mixture-of-Experts"; the bias balancing of
# DeepSeek-V3) against the auxiliary balancing loss and against no balancing,
# in the byte-level Transformer LM of experiments/common/lm.json (4 blocks,
# n_embd 64, blocks 1 and 3 sparse: Switch top-1 of 8 experts of width 128).
# Equal everything but the balancing:
#   aux           moe.aux_loss=switch, moe.aux_weight 0.01 (lm.json's)
#   loss-free     moe.bias_balance=true, moe.aux_loss=none, moe.bias_rate 1e-3 (the paper's u)
#   loss-free-1e2 the same with moe.bias_rate 1e-2
#   none          moe.aux_loss=none, no bias
# Every system is dropless (capacity factor 0 in training and evaluation), as
# in the paper, so imbalance costs nothing but balance. The 1.5M training
# tokens of lm.json (24,000 random windows, 752 steps of 32) are cut into 4
# epochs of 6,000 windows so that the whole validation split is evaluated at
# steps 0, 188, 376, 564 and 752; train.log_every 1 writes one split=batch row
# (and its experts.csv rows) per training step.
#
# MaxVio (the paper's): max_e load_e / mean_e load_e - 1 per layer, loads =
# experts.csv `tokens` (tokens routed to e, selection including the bias).
#   MaxVio_global: over the whole validation split (split=test rows: the last
#                  10% of the corpus, 256,128 tokens), at each evaluation;
#   MaxVio_batch:  per training step (split=batch rows, one per step, 2,048
#                  tokens), averaged over all 752 steps (and in curves.csv
#                  over bins of 47 steps).
#
#   bash experiments/data/fortunes.sh        # once: the corpus
#   [SEEDS="1 2 3 4 5"] [THREADS=1] [OUT=results/loss-free] [WORK=runs/loss-free] \
#     bash experiments/loss-free/run.sh [MOE_BINARY]
#
# Writes OUT/runs.csv (one row per system and seed), table.csv (mean and
# sample SD over seeds), curves.csv (MaxVio and validation bits per byte
# against the step), stats.csv (paired comparisons, experiments/common/stats.sh),
# curves_mean.csv (their mean and SD over seeds), command.txt, and the figure loss-free.png (plot.gp) when gnuplot is there.
# SEEDS default 1-5 (runs of 42-83 s on the shared machine, about 45 s idle). Finished runs in WORK are
# kept and not run again (lib.sh done_run; the count is printed first); a run stopped half way is run
# again from scratch.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
[ $# -ge 1 ] && export MOE=$1
# shellcheck source=../common/lib.sh
. "$root/experiments/common/lib.sh"
need_lm_inputs # sets moe and corpus, or exits 2
experiment_env loss-free "1 2 3 4 5" # sets seeds, threads, out, work
mkdir -p "$out" "$work"

# name | settings (space-separated key=value)
systems=(
  "aux|moe.aux_loss=\"switch\" moe.aux_weight=0.01"
  "loss-free|moe.aux_loss=\"none\" moe.bias_balance=true moe.bias_rate=0.001"
  "loss-free-1e2|moe.aux_loss=\"none\" moe.bias_balance=true moe.bias_rate=0.01"
  "none|moe.aux_loss=\"none\""
)
common=(--set data.text.path="\"$corpus\"" --set data.text.windows_per_epoch=6000 --set train.epochs=4
        --set train.log_every=1 --set moe.capacity_factor=0 --set moe.eval_capacity_factor=0)
dirs=()
for seed in "${seeds[@]}"; do for s in "${systems[@]}"; do dirs+=("$work/${s%%|*}-s$seed"); done; done
plan_runs ${#dirs[@]} "$(count_done "${dirs[@]}")" 60 \
  "${#systems[@]} systems x ${#seeds[@]} seeds; about 60 s each at 1 thread while the machine was shared, 42-83 s measured, about 45 s on an idle one"
{ echo "$(env_line) bash experiments/loss-free/run.sh  # $(date -u +%Y-%m-%d), $("$moe" --version | head -1), corpus sha256 $(sha256sum "$corpus" | cut -c1-16)"; provenance "$moe"; } > "$out/command.txt"

# maxvio DIR SPLIT: "step,layer,maxvio" for every (step, layer) of SPLIT in DIR/experts.csv
maxvio() {
  awk -F, -v sp="$2" 'NR > 1 && $3 == sp { k = $1 "," $4; if (!(k in n)) order[++no] = k
                                           n[k]++; s[k] += $6; if ($6 > m[k]) m[k] = $6 }
       END { for (j = 1; j <= no; j++) { k = order[j]; mean = s[k] / n[k]
               printf "%s,%.6g\n", k, (mean > 0 ? m[k] / mean - 1 : 0) } }' "$1/experts.csv"
}
# column DIR SPLIT NAME: "step,value" of metrics.csv column NAME on the SPLIT rows
column_of() {
  awk -F, -v sp="$2" -v col="$3" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == col) c = i; next }
                                  $3 == sp { print $1 "," $c }' "$1/metrics.csv"
}

echo "system,seed,active_parameters,parameters,valid_bits_per_byte,valid_loss,train_bits_per_byte,maxvio_global_l1,maxvio_global_l3,maxvio_global,maxvio_batch_l1,maxvio_batch_l3,maxvio_batch,maxvio_batch_last_epoch,wall_seconds" > "$out/runs.csv"
echo "system,seed,step,kind,layer,value" > "$out/curves.csv"
for seed in "${seeds[@]}"; do
  for s in "${systems[@]}"; do
    name=${s%%|*}
    sets=()
    for kv in ${s#*|}; do sets+=(--set "$kv"); done
    d=$work/$name-s$seed
    if ! done_run "$d"; then
      fresh_dir "$d"
      "$moe" train --config "$root/experiments/common/lm.json" --seed "$seed" --out "$d" --quiet \
        --threads "$threads" "${common[@]}" "${sets[@]}" >/dev/null
    fi
    t=$(jq -r '[(.active_parameters // .parameters), .parameters, .final.test.bits_per_byte, .final.test.loss,
                 .final.train.bits_per_byte] | @csv' "$d/summary.json")
    last=$(jq -r '.steps' "$d/summary.json")
    spe=$(jq -r '.steps_per_epoch' "$d/summary.json")
    mg=$(maxvio "$d" test | awk -F, -v last="$last" '$1 == last { v[$2] = $3 } END { printf "%.6g,%.6g,%.6g", v[1], v[3], (v[1] + v[3]) / 2 }')
    mb=$(maxvio "$d" batch | awk -F, -v from="$((last - spe))" '{ s[$2] += $3; n[$2]++; if ($1 > from) { sl += $3; nl++ } }
           END { printf "%.6g,%.6g,%.6g,%.6g", s[1] / n[1], s[3] / n[3], (s[1] / n[1] + s[3] / n[3]) / 2, sl / nl }')
    wall=$(jq -r '.wall_seconds | . * 10 | round / 10' "$d/summary.json")
    echo "$name,$seed,$t,$mg,$mb,$wall" >> "$out/runs.csv"
    # curves: validation MaxVio_global and bits per byte at each evaluation; MaxVio_batch in bins of 47 steps
    maxvio "$d" test | awk -F, -v n="$name" -v sd="$seed" '{ print n "," sd "," $1 ",maxvio_global," $2 "," $3 }' >> "$out/curves.csv"
    column_of "$d" test bits_per_byte | awk -F, -v n="$name" -v sd="$seed" '{ print n "," sd "," $1 ",valid_bits_per_byte,," $2 }' >> "$out/curves.csv"
    maxvio "$d" batch | awk -F, -v n="$name" -v sd="$seed" '{ b = int(($1 - 1) / 47); k = b "," $2; if (!(k in c)) order[++no] = k; c[k]++; s[k] += $3; hi[k] = $1 }
           END { for (j = 1; j <= no; j++) { k = order[j]; split(k, f, ","); printf "%s,%s,%d,maxvio_batch,%s,%.6g\n", n, sd, hi[k], f[2], s[k] / c[k] } }' >> "$out/curves.csv"
    echo "loss-free: $name seed=$seed: $t maxvio_global(l1,l3,mean)=$mg batch=$mb ${wall}s" >&2
  done
done
summarise_runs "$out/runs.csv" > "$out/table.csv"
# curves_mean.csv: mean and sample SD over seeds of every curve point, one contiguous block per
# (system, kind, layer) in step order (what plot.gp draws)
awk -F, 'NR > 1 { k = $1 "," $3 "," $4 "," $5; if (!(k in n)) order[++no] = k; n[k]++; s[k] += $6; ss[k] += $6 * $6 }
     END { print "system,step,kind,layer,runs,mean,sd"
           for (j = 1; j <= no; j++) { k = order[j]; m = s[k] / n[k]; v = n[k] > 1 ? (ss[k] - n[k] * m * m) / (n[k] - 1) : 0
             if (v < 0) v = 0; printf "%s,%d,%.6g,%.6g\n", k, n[k], m, sqrt(v) } }' "$out/curves.csv" |
  { IFS= read -r h; echo "$h"; sort -t, -s -k1,1 -k3,3 -k4,4n -k2,2n; } > "$out/curves_mean.csv"
# paired comparisons (B - A over seeds): n,mean_diff,sd_diff,ci_lo,ci_hi,resolved
{ echo "column,a,b,n,mean_diff,sd_diff,ci_lo,ci_hi,resolved"
  for col in valid_bits_per_byte maxvio_global maxvio_batch maxvio_batch_last_epoch; do
    for pair in "aux loss-free" "aux loss-free-1e2" "loss-free loss-free-1e2" "none aux" "none loss-free" "none loss-free-1e2"; do
      set -- $pair
      echo "$col,$1,$2,$(bash "$root/experiments/common/stats.sh" compare "$out/runs.csv" "$col" "$1" "$2")"
    done
  done; } > "$out/stats.csv"
column -s, -t < "$out/table.csv" >&2
column -s, -t < "$out/stats.csv" >&2
if command -v gnuplot >/dev/null; then gnuplot -e "out='$out'" "$root/experiments/loss-free/plot.gp"; fi
