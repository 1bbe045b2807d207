#!/usr/bin/env bash
# Expert choice (Zhou et al. 2022) inside the causal byte-level LM of experiments/common/lm.json
# (English `fortunes`, 4 pre-norm blocks, n_embd 64, context 64 bytes, blocks 1 and 3 sparse with
# 8 experts of width 128), and how much of its validation figure comes from looking at later tokens.
# Expert choice lets each expert pick its top tokens over the whole pass, so in a causal LM a
# token's route depends on later tokens of its own window: the evaluation as trained ("full") is
# not a language-model probability. The same checkpoints are evaluated again with moe.ec_eval
# (docs/routing.md), which never lets a token's route depend on later positions:
#   switch        the baseline: Switch top-1, capacity factor 1.25 train / 2 eval (lm.json as is)
#   ec-full       expert choice, ec_factor 1 (on average 1 expert per token: the active compute of
#                 top-1), evaluated as trained: each expert takes 1/8 of the pass's tokens (leaky)
#   ec-prefix     the same checkpoint; a token at position s is routed by each expert's pick over
#                 the tokens at positions <= s of the pass's windows (causal; the headline)
#   ec-position   the same checkpoint; each expert picks over the tokens at position s only (causal)
#   ec-topk       the same checkpoint; token choice: each token to its expert of largest p, no
#                 capacity (causal; the routing rule changes, not only its pool)
#   ec-full-w1    the same checkpoint evaluated as trained, but in passes of 1 window (64 tokens,
#                 train.max_batch_eval = 1): each expert picks 8 of one window's 64 tokens, so a
#                 token's route depends on its own window's future far more than in a pass of 32
#   ec-prefix-w1  the same passes of 1 window under prefix (causal)
# ec-* differ only in evaluation: one training run per seed, `moe eval --set moe.ec_eval=...` on
# its checkpoint (moe.* and train.* may change in eval). An evaluation pass holds optim.batch_size = 32
# windows (2,048 tokens), the training batch, except in the -w1 systems. 2 epochs of 12,000 random windows (1.5M training tokens).
#
#   [SEEDS="1 2 3 4 5"] [THREADS=1] [OUT=results/expert-choice-lm] [WORK=runs/expert-choice-lm] \
#     bash experiments/expert-choice-lm/run.sh [MOE_BINARY]
#
# SEEDS default 1-5 (training runs of 30-55 s). Finished training runs under WORK are kept and not
# run again (done_run; the count is printed first), a run stopped half way is run again from scratch;
# the evaluations are cached as WORK/ec-s<seed>/eval-<mode>-<split>.json and the route-stats passes
# as WORK/*-s<seed>/route-<mode>/ (also counted). Writes OUT/runs.csv (one row per system and
# seed), table.csv (mean, sample sd and 95% t-interval over seeds), stats.csv (paired per-seed differences with 95%
# t-intervals, experiments/common/stats.sh), command.txt, and OUT/expert-choice-lm.png when gnuplot
# is installed. Also checks that `moe eval` with ec_eval full gives the training summary's figure.
# valid_experts_per_token (moe route-stats under the same evaluation) is the active compute actually
# spent: ec_factor 1 gives exactly 1 under full, but prefix and position only on average over
# positions when the scores allow, and topk exactly 1.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
[ $# -ge 1 ] && export MOE=$1
# shellcheck source=../common/lib.sh
. "$root/experiments/common/lib.sh"
need_lm_inputs # sets moe and corpus, or exits 2
experiment_env expert-choice-lm "1 2 3 4 5" # sets seeds, threads, out, work
stats=$root/experiments/common/stats.sh
mkdir -p "$out" "$work"
# system | moe.ec_eval | windows per evaluation pass (empty: the default, optim.batch_size)
evals=("ec-full|full|" "ec-prefix|prefix|" "ec-position|position|" "ec-topk|topk|" "ec-full-w1|full|1" "ec-prefix-w1|prefix|1")

# what is already there: training runs (done_run), and per seed the 12 cached evaluations and 7
# route-stats passes (1 of Switch, 6 of expert choice) of a finished run
n=${#seeds[@]} runs_done=0 cached=0
for seed in "${seeds[@]}"; do
  ! done_run "$work/switch-s$seed" || { runs_done=$((runs_done + 1)); [ ! -s "$work/switch-s$seed/route-default/experts.csv" ] || cached=$((cached + 1)); }
  done_run "$work/ec-s$seed" || continue
  runs_done=$((runs_done + 1))
  for e in "${evals[@]}"; do
    IFS='|' read -r _ m w <<< "$e"
    for split in valid train; do [ ! -s "$work/ec-s$seed/eval-$m${w:+-w$w}-$split.json" ] || cached=$((cached + 1)); done
    [ ! -s "$work/ec-s$seed/route-$m${w:+-w$w}/experts.csv" ] || cached=$((cached + 1))
  done
done
skip_note "$runs_done" $((2 * n)) "training runs"
skip_note "$cached" $((19 * n)) "evaluations and route-stats passes"
expected_time "$(about_minutes $(( n * 2 * 50 + n * 70 ))) for all $((2 * n)) training runs and $((19 * n)) evaluations at 1 thread" \
  "($((2 * n)) training runs of 30-55 s, and per seed 6 evaluations of the validation split and 6 of 512 training windows," \
  "1-7 s each, and 7 route-stats passes; prefix and passes of 1 window are the slowest)," \
  "$(about_minutes $(( (2 * n - runs_done) * 50 + (19 * n - cached) * 70 / 19 ))) for what is left"
{ echo "$(env_line) bash experiments/expert-choice-lm/run.sh  # $(date -u +%Y-%m-%d), $("$moe" --version | head -1), corpus sha256 $(sha256sum "$corpus" | cut -c1-16)"
  provenance "$moe"; } > "$out/command.txt"

train() { # train DIR SETTINGS...: a finished run is kept; a half-finished one goes, with its caches
  local d=$1; shift
  done_run "$d" && return
  fresh_dir "$d"
  "$moe" train --config "$root/experiments/common/lm.json" --set data.text.path="\"$corpus\"" \
    --seed "$seed" --threads "$threads" --out "$d" --force --quiet "$@" >/dev/null
}
# evaluate DIR MODE SPLIT [WINDOWS]: the checkpoint under moe.ec_eval = MODE on SPLIT (valid or
# train), in passes of WINDOWS windows (default optim.batch_size), cached
evaluate() {
  local f=$1/eval-$2${4:+-w$4}-$3.json
  local pass=()
  [ -z "${4:-}" ] || pass=(--set train.max_batch_eval="$4")
  if [ ! -s "$f" ]; then
    local t0; t0=$(date +%s.%N)
    "$moe" eval --checkpoint "$1/model.safetensors" --data "$3" --threads "$threads" --quiet \
      --set moe.ec_eval="\"$2\"" "${pass[@]}" > "$f.tmp"
    jq --argjson s "$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')" '. + {eval_seconds: $s}' \
      "$f.tmp" > "$f" && rm -f "$f.tmp"
  fi
  echo "$f"
}

# experts_per_token DIR [MODE] [WINDOWS]: the experts a validation token is processed by (kept
# assignments over tokens, mean over the sparse layers), from moe route-stats under the same
# evaluation (moe.ec_eval = MODE, passes of WINDOWS windows); cached in DIR/route-MODE[-wWINDOWS]/
experts_per_token() {
  local r=$1/route-${2:-default}${3:+-w$3}
  local sets=()
  [ -z "${2:-}" ] || sets+=(--set moe.ec_eval="\"$2\"")
  [ -z "${3:-}" ] || sets+=(--set train.max_batch_eval="$3")
  if [ ! -s "$r/experts.csv" ]; then
    rm -rf "$r"
    "$moe" route-stats --checkpoint "$1/model.safetensors" --out "$r" --threads "$threads" --quiet "${sets[@]}" >/dev/null
  fi
  awk -F, 'FNR == 1 { next } FILENAME ~ /layers.csv$/ { tok += $2; next } { kept += $3 - $7 }
           END { printf "%.6g", kept / tok }' "$r/layers.csv" "$r/experts.csv"
}

echo "system,seed,active_parameters,parameters,valid_bits_per_byte,valid_loss,train_bits_per_byte,valid_load_cv,valid_load_max_mean,valid_dropped,router_entropy,tokens_per_second,wall_seconds,eval_seconds,valid_experts_per_token" > "$out/runs.csv"
for seed in "${seeds[@]}"; do
  d=$work/switch-s$seed
  train "$d"
  t=$(jq -r '[(.active_parameters // .parameters), .parameters, .final.test.bits_per_byte, .final.test.loss, .final.train.bits_per_byte, .final.test.load_cv, .final.test.load_max_mean, .final.test.dropped_fraction, .final.test.router_entropy, .train_tokens_per_second, .wall_seconds] | @csv' "$d/summary.json")
  echo "switch,$seed,$t,,$(experts_per_token "$d")" >> "$out/runs.csv"
  echo "expert-choice-lm: switch seed=$seed: $t" >&2

  d=$work/ec-s$seed
  train "$d" --set moe.router='"expert-choice"' --set moe.ec_factor=1
  head=$(jq -r '[(.active_parameters // .parameters), .parameters] | @csv' "$d/summary.json")
  tail=$(jq -r '[.train_tokens_per_second, .wall_seconds] | @csv' "$d/summary.json")
  # moe eval under full must give the training summary's figure, value for value
  fv=$(evaluate "$d" full valid)
  if [ "$(jq -c '{loss, bits_per_byte}' "$fv")" != "$(jq -c '.final.test | {loss, bits_per_byte}' "$d/summary.json")" ]; then
    echo "expert-choice-lm: seed $seed: moe eval (ec_eval full) differs from the training summary's final.test" >&2
    exit 1
  fi
  for e in "${evals[@]}"; do
    IFS='|' read -r name m w <<< "$e"
    v=$(evaluate "$d" "$m" valid "$w")
    tr=$(evaluate "$d" "$m" train "$w")
    t=$(jq -r '[.bits_per_byte, .loss] | @csv' "$v")
    tb=$(jq -r '.bits_per_byte' "$tr")
    t2=$(jq -r '[.load_cv, .load_max_mean, .dropped_fraction, .router_entropy] | @csv' "$v")
    es=$(jq -r '.eval_seconds' "$v")
    echo "$name,$seed,$head,$t,$tb,$t2,$tail,$es,$(experts_per_token "$d" "$m" "$w")" >> "$out/runs.csv"
    echo "expert-choice-lm: $name seed=$seed: valid bits/byte $t (${es}s to evaluate)" >&2
  done
done
summarise_runs "$out/runs.csv" > "$out/table.csv"
column -s, -t < "$out/table.csv" >&2

# paired per-seed differences (B - A), 95% t-intervals: the look-ahead gain of each causal-safe
# evaluation over the leaky one, and every expert-choice evaluation against Switch
{ echo "column,a,b,n,mean_diff,sd_diff,ci_lo,ci_hi,resolved"
  for col in valid_bits_per_byte train_bits_per_byte; do
    for b in ec-prefix ec-position ec-topk; do
      echo "$col,ec-full,$b,$(bash "$stats" compare "$out/runs.csv" "$col" ec-full "$b")"
    done
    echo "$col,ec-prefix,ec-position,$(bash "$stats" compare "$out/runs.csv" "$col" ec-prefix ec-position)"
    echo "$col,ec-full-w1,ec-prefix-w1,$(bash "$stats" compare "$out/runs.csv" "$col" ec-full-w1 ec-prefix-w1)"
    echo "$col,ec-full,ec-full-w1,$(bash "$stats" compare "$out/runs.csv" "$col" ec-full ec-full-w1)"
    echo "$col,ec-prefix,ec-prefix-w1,$(bash "$stats" compare "$out/runs.csv" "$col" ec-prefix ec-prefix-w1)"
    for b in ec-full ec-prefix ec-position ec-topk ec-full-w1 ec-prefix-w1; do
      echo "$col,switch,$b,$(bash "$stats" compare "$out/runs.csv" "$col" switch "$b")"
    done
  done; } > "$out/stats.csv"
column -s, -t < "$out/stats.csv" >&2
# the figure of the README (experiments/expert-choice-lm/plot.gp), when gnuplot is installed
if command -v gnuplot >/dev/null; then gnuplot -e "out='$out'" "$root/experiments/expert-choice-lm/plot.gp"; fi
