#!/usr/bin/env bash
# Why expert scaling turns over past 16 experts (results/expert-scaling): the
# run.sh sweep found the byte-level LM better with more experts up to E = 8-16
# and worse from 32 on, at fixed computation per token, and named two causes it
# could not separate: tokens dropped over capacity (18.6% of the sparse layers'
# tokens at E = 64 in training) and too little data per expert (each of 64
# experts trains on about 24k tokens). This script separates them, on the same
# model (experiments/common/lm.json: Switch top-1, capacity factor 1.25 in
# training and 2.0 in evaluation, expert width 128) and the same seeds:
#
#   E{1,8,16,32,64}        run.sh's systems, rerun here (pairs need runs of the same binary and BLIS kernel)
#   E{8,16,32,64}-dropless capacity factor 0 (dropless) in training and in evaluation: no token is
#                          ever dropped; the balancing loss, router and everything else as above
#   E{1,8,64}-x4           4x the training windows (48,000 per epoch, 6.1M tokens): at E = 64 each
#                          expert then sees about as many tokens as one of 16 at 1x; drops as in E64
#   E{8,64}-x4-dropless    both
#   E{1,8,64}-b4, E{8,64}-b4-dropless
#                          the same 4x tokens in batches 4x as large (128 windows, 8,192 tokens;
#                          each expert's fair share of a batch 4x too), so in run.sh's 750 steps:
#                          the x4 systems add steps, these only tokens (at the same learning rate)
#
# Every run is also evaluated with moe eval at evaluation capacity factor 0
# (dropless evaluation of the same checkpoint: valid_bits_dropless_eval), which
# separates drops at evaluation from drops in training.
#
#   [SEEDS="1 2 3 4 5"] [THREADS=1] [JOBS=1] [OUT=results/expert-scaling/separate] \
#     [WORK=runs/expert-scaling-separate] bash experiments/expert-scaling/separate.sh [MOE_BINARY]
#
# JOBS: runs at a time (each of THREADS threads; results do not depend on
# either, only tokens/s does). Finished runs under WORK are kept and not run
# again. Writes OUT/runs.csv (one row per system and seed), OUT/table.csv (mean,
# sample sd and 95% t-interval over seeds), OUT/pairs.csv (the paired
# comparisons the README reads), OUT/command.txt and, when gnuplot is installed,
# OUT/separate.png (experiments/expert-scaling/separate.gp).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
[ $# -ge 1 ] && export MOE=$1
# shellcheck source=../common/lib.sh
. "$root/experiments/common/lib.sh"
need_lm_inputs # sets moe and corpus, or exits 2
experiment_env expert-scaling-separate "1 2 3 4 5" "$root/results/expert-scaling/separate"
jobs=${JOBS:-1}
[[ $jobs =~ ^[1-9][0-9]*$ ]] || { echo "$0: JOBS: '$jobs' is not a positive number" >&2; exit 2; }
mkdir -p "$out" "$work"

dropless="moe.capacity_factor=0 moe.eval_capacity_factor=0"
x4="data.text.windows_per_epoch=48000"
b4="$x4 optim.batch_size=128"
# name | settings (space-separated key=value) | seconds per run at 1 thread on the build machine
systems=("E1|model.moe_every=99|40")
for e in 8 16 32 64; do systems+=("E$e|model.n_expert=$e|$((40 + e / 3))"); done
for e in 8 16 32 64; do systems+=("E$e-dropless|model.n_expert=$e $dropless|$((40 + e / 3))"); done
systems+=("E1-x4|model.moe_every=99 $x4|160")
for e in 8 64; do systems+=("E$e-x4|model.n_expert=$e $x4|$((160 + 4 * e / 3))"); done
for e in 8 64; do systems+=("E$e-x4-dropless|model.n_expert=$e $x4 $dropless|$((160 + 4 * e / 3))"); done
systems+=("E1-b4|model.moe_every=99 $b4|150")
for e in 8 64; do systems+=("E$e-b4|model.n_expert=$e $b4|$((150 + 4 * e / 3))"); done
for e in 8 64; do systems+=("E$e-b4-dropless|model.n_expert=$e $b4 $dropless|$((150 + 4 * e / 3))"); done

dirs=() secs=0
for s in "${systems[@]}"; do
    for seed in "${seeds[@]}"; do
        d=$work/${s%%|*}-s$seed
        dirs+=("$d")
        done_run "$d" || secs=$((secs + ${s##*|}))
    done
done
skip_note "$(count_done "${dirs[@]}")" ${#dirs[@]}
expected_time "$(about_minutes $((secs / jobs))) for the runs left, $jobs at a time (${#systems[@]} systems x ${#seeds[@]} seeds; 40-60 s per run at 1x, 4x that at x4 and b4, at 1 thread)"
{ echo "$(env_line) JOBS=$jobs bash experiments/expert-scaling/separate.sh  # $(date -u +%Y-%m-%d), $("$moe" --version | head -1), corpus sha256 $(sha256sum "$corpus" | cut -c1-16)"
  provenance "$moe"; } > "$out/command.txt"

# one training run and its dropless evaluation (eval.json), into DIR
one() { # dir, settings
    local d=$1 sets=() kv
    for kv in $2; do sets+=(--set "$kv"); done
    # a run trained again starts from an empty DIR (run_once), so its old eval.json goes with it
    run_once "$d" "$moe" train --config "$root/experiments/common/lm.json" --set data.text.path="\"$corpus\"" \
        --seed "${d##*-s}" --threads "$threads" --out "$d" --force --quiet "${sets[@]}" >/dev/null
    if [ ! -s "$d/eval.json" ]; then
        "$moe" eval --checkpoint "$d/model.safetensors" --set moe.eval_capacity_factor=0 --threads "$threads" \
            --quiet >"$d/eval.json.tmp"
        mv "$d/eval.json.tmp" "$d/eval.json"
    fi
    echo "$exp: $(basename "$d"): valid $(jq -r '.final.test.bits_per_byte' "$d/summary.json") bits/byte," \
        "dropless eval $(jq -r '.bits_per_byte' "$d/eval.json")" >&2
}

# seeds outermost, so a run stopped early has every system for its first seeds
fail=0
for seed in "${seeds[@]}"; do
    for s in "${systems[@]}"; do
        while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || fail=1; done
        rest=${s#*|}
        one "$work/${s%%|*}-s$seed" "${rest%|*}" &
    done
done
while [ "$(jobs -rp | wc -l)" -gt 0 ]; do wait -n || fail=1; done
[ "$fail" -eq 0 ] || { echo "$exp: a run failed (its message is above)" >&2; exit 1; }

echo "system,seed,active_parameters,parameters,n_expert,valid_bits_per_byte,valid_bits_dropless_eval,train_bits_per_byte,valid_load_cv,valid_load_max_mean,train_dropped,valid_dropped,tokens_per_second,wall_seconds" > "$out/runs.csv"
for s in "${systems[@]}"; do
    name=${s%%|*}
    for seed in "${seeds[@]}"; do
        d=$work/$name-s$seed
        t=$(jq -r '[(.active_parameters // .parameters), .parameters] | @csv' "$d/summary.json")
        e=${name%%-*}
        v=$(jq -r '[.final.test.bits_per_byte] | @csv' "$d/summary.json")
        ev=$(jq -r '.bits_per_byte' "$d/eval.json")
        t2=$(jq -r '[.final.train.bits_per_byte, .final.test.load_cv, .final.test.load_max_mean] | @csv' "$d/summary.json")
        t3=$(jq -r '[.final.test.dropped_fraction, .train_tokens_per_second, .wall_seconds] | @csv' "$d/summary.json")
        t3=${t3/#,/0,} # the dense model has no drops
        dr=$(last_batch "$d" dropped_fraction)
        echo "$name,$seed,$t,${e#E},$v,$ev,$t2,${dr:-0},$t3" >> "$out/runs.csv"
    done
done
summarise_runs "$out/runs.csv" > "$out/table.csv"
column -s, -t < "$out/table.csv" >&2

# the paired comparisons (B - A, valid bits/byte): what dropping costs, what more
# experts buy with and without drops, at 1x and 4x the data
pairs=("E8 E8-dropless" "E16 E16-dropless" "E32 E32-dropless" "E64 E64-dropless"
       "E1 E8" "E1 E16" "E1 E32" "E1 E64" "E8 E16" "E16 E32" "E32 E64" "E8 E64"
       "E1 E8-dropless" "E1 E64-dropless" "E8-dropless E16-dropless" "E16-dropless E32-dropless"
       "E32-dropless E64-dropless" "E8-dropless E64-dropless"
       "E1-x4 E8-x4" "E1-x4 E64-x4" "E8-x4 E64-x4" "E8-x4-dropless E64-x4-dropless" "E64-x4 E64-x4-dropless"
       "E8 E8-x4" "E64 E64-x4"
       "E1-b4 E8-b4" "E1-b4 E64-b4" "E8-b4 E64-b4" "E8-b4-dropless E64-b4-dropless" "E64-b4 E64-b4-dropless"
       "E8-x4 E8-b4" "E64-x4 E64-b4" "E8-x4-dropless E8-b4-dropless" "E64-x4-dropless E64-b4-dropless")
echo "a,b,column,n,mean_diff,sd_diff,ci_lo,ci_hi,resolved" > "$out/pairs.csv"
for p in "${pairs[@]}"; do
    read -r a b <<< "$p"
    for col in valid_bits_per_byte valid_bits_dropless_eval; do
        echo "$a,$b,$col,$(bash "$root/experiments/common/stats.sh" compare "$out/runs.csv" "$col" "$a" "$b")" >> "$out/pairs.csv"
    done
done
column -s, -t < "$out/pairs.csv" >&2
# the figure of the README, when gnuplot is installed
if command -v gnuplot >/dev/null; then gnuplot -e "out='$out'" "$root/experiments/expert-scaling/separate.gp"; fi
