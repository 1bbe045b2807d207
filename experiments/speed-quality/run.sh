#!/usr/bin/env bash
# Speed versus quality on this machine: dense, Switch top-1 and top-2 at equal
# wall-clock time (time-to-quality curves), the CPU analogue of the Switch
# Transformer's speed advantage figure (Fedus et al. 2021: Switch-Base reaches
# T5-Base's quality about 7x sooner in training time, at equal FLOPs per token).
#
# The byte-level Transformer LM of experiments/common/lm.json on `fortunes`
# (4 pre-norm blocks, n_embd 64, context 64, blocks 1 and 3 sparse, expert and
# dense FFN width 128, capacity factor 1.25 in training and 2.0 in evaluation):
#   dense   model.moe_every=99: an FFN of width 128 in every block
#   switch  lm.json as is: Switch top-1 of 8 experts, Switch balancing loss 0.01
#           (the same FFN FLOPs per token as dense, plus an 8-wide router)
#   top2    softmax top-2 of the same 8 experts (gates renormalised over the two,
#           Mixtral), both always dispatched, the top-k-all balancing loss 0.01:
#           twice the sparse blocks' FFN FLOPs per token
# Each trains the same 750 steps (1.54M tokens, as expert-scaling and
# lm-routers), cut into 30 epochs of 800 random windows so that the validation
# split (512 fixed windows, 32k bytes) is evaluated every 25 steps.
#
# The time axis: a shared machine makes each run's own wall clock noisy, so
# steps are turned into seconds with each system's median step time from
# `moe bench --repeats 21` (one whole training step on one batch; the fastest
# repeat of all rounds, the least disturbed by other jobs), measured in
# ROUNDS interleaved rounds (dense, switch, top2, ..., dense, ...) in one window
# before the training runs, the sparse systems dropless (see bench_variants
# below). Each run's own tokens/s (summary.json) is kept as a cross-check.
#
#   [SEEDS="1 2 3 4 5"] [THREADS=1] [ROUNDS=9] [REPEATS=21] [OUT=results/speed-quality] \
#     [WORK=runs/speed-quality] bash experiments/speed-quality/run.sh [MOE_BINARY]
#
# SEEDS default 1-5 (runs of 32-55 s). Finished runs under WORK are kept and not run again
# (done_run; the count is printed first), a run stopped half way is run again from scratch; the
# bench rounds are kept too (WORK/bench, delete it to measure again). Writes to OUT:
#   bench.csv     one row per round and bench variant: the 1-minute load average before
#                 it, step seconds (min, median, max of REPEATS) and GEMM FLOPs per step
#   steptime.csv  per bench variant: the fastest repeat of all rounds (step_seconds: the
#                 time axis) and its ratio to dense's, the median and slowest per-round
#                 fastest repeat, and the per-round ratio to dense (n, mean, sd, 95%
#                 interval, median)
#   curves.csv    validation bits/byte every 25 steps per system and seed, with
#                 seconds = step x the system's median step time
#   curves_mean.csv  the mean and sd over seeds of those curves
#   runs.csv      one row per system and seed: time to the same seed's dense final
#                 validation bits/byte (interpolated), speed-up over dense, quality
#                 at equal time (the shortest system's total time, so that every curve
#                 reaches it), time and speed-up from the run's own tokens/s, the mean
#                 dropped fraction in training (whole run, first 25 steps), and the
#                 speed-up with the step times of the bench at cf 1.25 and initial
#                 weights (speedup_init_timing: the upper bound, see bench_variants)
#   table.csv     mean, sample sd and 95% t-interval over seeds (summarise_runs)
#   headline.csv  n, mean, sd and 95% t-interval over seeds of the headline columns,
#                 and paired differences against dense (stats.sh)
#   command.txt, and speed-quality.png when gnuplot is installed
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
[ $# -ge 1 ] && export MOE=$1
# shellcheck source=../common/lib.sh
. "$root/experiments/common/lib.sh"
need_lm_inputs # sets moe and corpus, or exits 2
experiment_env speed-quality "1 2 3 4 5" # sets seeds, threads, out, work
rounds=${ROUNDS:-9}
repeats=${REPEATS:-21}
stats=$root/experiments/common/stats.sh
mkdir -p "$out" "$work/bench"

# name | settings (space-separated key=value)
systems=("dense|model.moe_every=99"
         "switch|"
         "top2|moe.router=\"softmax\" model.n_expert_used=2 moe.aux_loss=\"topk-all\"")
# the bench variants, interleaved in that order in every round. moe bench times a step at the
# initial weights, where the untrained router sends most tokens of a batch to a few experts and a
# capacity factor of 1.25 drops many of them (about two thirds of the sparse layers' tokens over the
# first 25 training steps, a few percent after 200): the sparse systems' steps would be timed cheaper
# than they are in training. The time axis therefore uses the sparse systems timed dropless
# (capacity factor 0: every routed token through its experts, the FLOPs of a balanced step), which
# is an upper bound of their step time in training; the variants timed as trained (cf 1.25, at
# initialisation) are measured beside them as the lower bound.
bench_variants=("${systems[0]}"
                "switch|moe.capacity_factor=0"
                "top2|${systems[2]#*|} moe.capacity_factor=0"
                "switch-cf1.25-init|"
                "top2-cf1.25-init|${systems[2]#*|}")
# every system: 30 epochs x 800 windows = 750 steps of 32 windows, validation every 25 steps
common=(data.text.windows_per_epoch=800 train.epochs=30 data.text.valid_eval_windows=512
        data.text.train_eval_windows=64 train.log_every=25)

n=0 n_done=0 nb=0 nb_done=0
for seed in "${seeds[@]}"; do
  for s in "${systems[@]}"; do n=$((n + 1)); ! done_run "$work/${s%%|*}-s$seed" || n_done=$((n_done + 1)); done
done
for r in $(seq 1 "$rounds"); do
  for s in "${bench_variants[@]}"; do nb=$((nb + 1)); [ ! -s "$work/bench/${s%%|*}-r$r.json" ] || nb_done=$((nb_done + 1)); done
done
skip_note "$nb_done" "$nb" "bench timings (rounds x variants)" "$work/bench"
skip_note "$n_done" "$n" "training runs"
# a bench timing takes about 2 s (REPEATS=21 steps); a training run about 45 s
expected_time "$(about_minutes $(( 60 + n * 45 ))) for all of it at 1 thread ($rounds bench rounds of ${#bench_variants[@]} variants, 1-2 minutes," \
    "and $n training runs, ${#systems[@]} systems x ${#seeds[@]} seeds, 32 s dense, 40-55 s sparse)," \
    "$(about_minutes $(( (nb - nb_done) * 60 / (nb > 0 ? nb : 1) + (n - n_done) * 45 ))) for what is left"
{ echo "$(env_line) ROUNDS=$rounds REPEATS=$repeats bash experiments/speed-quality/run.sh  # $(date -u +%Y-%m-%d), $("$moe" --version | head -1), corpus sha256 $(sha256sum "$corpus" | cut -c1-16)"
  provenance "$moe"; echo "# load average at start: $(cut -d" " -f1-3 /proc/loadavg) on $(nproc) cores"; } > "$out/command.txt"

set_args() {  # set_args SYSTEM-ENTRY: fills the array sets with --set pairs
    sets=(--set data.text.path="\"$corpus\"")
    for kv in "${common[@]}" ${1#*|}; do sets+=(--set "$kv"); done
}

# 1. step times, interleaved: round r times each bench variant one after the other. On a
#    machine shared with other jobs a repeat is often slowed by them, never sped up, so a
#    variant's step time is its fastest repeat over all rounds (as timeit advises: the minimum
#    is the estimate, the rest is interference). The per-round fastest repeats, their median
#    and the per-round ratios to dense show how far the interference reached.
echo "round,system,load1,step_seconds_min,step_seconds_median,step_seconds_max,gemm_flops" > "$out/bench.csv"
for r in $(seq 1 "$rounds"); do
  for s in "${bench_variants[@]}"; do
    name=${s%%|*}
    f=$work/bench/$name-r$r.json
    if [ ! -s "$f" ]; then
      set_args "$s"
      cut -d' ' -f1 /proc/loadavg > "$f.load"
      "$moe" bench --config "$root/experiments/common/lm.json" "${sets[@]}" --repeats "$repeats" --threads "$threads" --quiet > "$f.tmp"
      mv "$f.tmp" "$f"
    fi
    echo "$r,$name,$(cat "$f.load" 2>/dev/null),$(jq -r '[.step.seconds.min, .step.seconds.median, .step.seconds.max, .step.gemm_flops] | @csv' "$f")" >> "$out/bench.csv"
  done
done
median() { sort -g | awk '{ v[NR] = $1 } END { printf "%.6g", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# per variant: the fastest repeat of all rounds (the time axis) and its ratio to dense's; the
# median and the slowest of the per-round fastest repeats; the per-round ratio to dense
# (describe: n, mean, sd, 95% interval; median)
{ echo "system,rounds,repeats,step_seconds,ratio_best,step_seconds_round_median,step_seconds_round_max,gemm_flops,ratio_n,ratio_mean,ratio_sd,ratio_ci_lo,ratio_ci_hi,ratio_median"
  dbest=$(awk -F, '$2 == "dense" { print $4 }' "$out/bench.csv" | sort -g | head -1)
  for s in "${bench_variants[@]}"; do
    name=${s%%|*}
    col=$(awk -F, -v s="$name" '$2 == s { print $4 }' "$out/bench.csv" | sort -g)
    ratios=$(awk -F, -v s="$name" '$2 == "dense" { d[$1] = $4 } $2 == s { r[$1] = $4 }
                                   END { for (k in r) print r[k] / d[k] }' "$out/bench.csv" | sort -g)
    flops=$(awk -F, -v s="$name" '$2 == s { print $7; exit }' "$out/bench.csv")
    b=$(echo "$col" | head -1)
    echo "$name,$rounds,$repeats,$b,$(awk -v a="$b" -v d="$dbest" 'BEGIN { printf "%.6g", a / d }'),$(echo "$col" | median),$(echo "$col" | tail -1),$flops,$(echo "$ratios" | bash "$stats" describe),$(echo "$ratios" | median)"
  done; } > "$out/steptime.csv"
column -s, -t < "$out/steptime.csv" >&2
step_seconds() { awk -F, -v s="$1" '$1 == s { print $4 }' "$out/steptime.csv"; }

# 2. training runs
for seed in "${seeds[@]}"; do
  for s in "${systems[@]}"; do
    name=${s%%|*}
    d=$work/$name-s$seed
    set_args "$s"
    if ! done_run "$d"; then
      fresh_dir "$d"
      "$moe" train --config "$root/experiments/common/lm.json" --seed "$seed" --threads "$threads" --out "$d" \
        --force --quiet "${sets[@]}" >/dev/null
    fi
    echo "speed-quality: $name seed=$seed: valid bits/byte $(jq -r '.final.test.bits_per_byte' "$d/summary.json")," \
         "tokens/s $(jq -r '.train_tokens_per_second | floor' "$d/summary.json"), $(jq -r '.wall_seconds | floor' "$d/summary.json") s" >&2
  done
done

# 3. curves: the validation split (split=test rows of metrics.csv) every 25 steps
echo "system,seed,step,seconds,valid_bits_per_byte" > "$out/curves.csv"
for seed in "${seeds[@]}"; do
  for s in "${systems[@]}"; do
    name=${s%%|*}
    awk -F, -v s="$name" -v seed="$seed" -v t="$(step_seconds "$name")" '
        NR == 1 { for (i = 1; i <= NF; i++) if ($i == "bits_per_byte") c = i; next }
        $3 == "test" { printf "%s,%s,%d,%.6g,%s\n", s, seed, $1, $1 * t, $c }' "$work/$name-s$seed/metrics.csv" >> "$out/curves.csv"
  done
done
awk -F, 'NR > 1 { k = $1 "," $3; if (!(k in n)) order[++no] = k; n[k]++; sec[k] = $4; s[k] += $5; ss[k] += $5 * $5 }
         END { print "system,step,seconds,runs,valid_bits_per_byte_mean,valid_bits_per_byte_sd"
               for (j = 1; j <= no; j++) { k = order[j]; m = s[k] / n[k]; v = n[k] > 1 ? (ss[k] - n[k] * m * m) / (n[k] - 1) : 0
                 split(k, a, ","); printf "%s,%s,%s,%d,%.6g,%.6g\n", a[1], a[2], sec[k], n[k], m, sqrt(v < 0 ? 0 : v) } }' \
    "$out/curves.csv" > "$out/curves_mean.csv"

# 4. per run: steps to the dense final quality of the same seed (first crossing, linear between
#    evaluations), seconds, speed-up over dense, and quality at dense's total time
steps_to() {  # steps_to SYSTEM SEED TARGET -> interpolated step of the first evaluation at or below TARGET, or empty
    awk -F, -v s="$1" -v seed="$2" -v tg="$3" '
        $1 == s && $2 == seed { if ($5 + 0 <= tg + 0) { if (have) printf "%.6g\n", ps + (tg - pb) * ($3 - ps) / ($5 - pb); else print $3; found = 1; exit }
                                ps = $3; pb = $5; have = 1 }' "$out/curves.csv"
}
bpb_at_step() {  # bpb_at_step SYSTEM SEED STEP -> validation bits/byte interpolated at STEP, or empty past the last
                 # evaluation (less than 0.01 step past it, from rounding in STEP = seconds / step seconds, is the last)
    awk -F, -v s="$1" -v seed="$2" -v at="$3" '
        $1 == s && $2 == seed { if ($3 + 0 >= at + 0) { if (have && $3 > at) printf "%.6g\n", pb + (at - ps) * ($5 - pb) / ($3 - ps); else print $5; done = 1; exit }
                                ps = $3; pb = $5; have = 1 }
        END { if (!done && have && at - ps < 0.01) print pb }' "$out/curves.csv"
}
dropped() {  # dropped DIR -> "mean over the run, first 25 steps" of the training-mode dropped fraction (empty if dense)
    awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == "dropped_fraction") c = i; next }
             $3 == "batch" && $c != "" { n++; s += $c; if (n == 1) f = $c }
             END { if (n) printf "%.4g,%.4g", s / n, f; else printf "," }' "$1/metrics.csv"
}
dense_t=$(step_seconds dense)
total_steps=$(jq -r '.steps' "$work/dense-s${seeds[0]}/summary.json")
# equal time: the shortest of the systems' total times, which every curve covers
equal_t=$(for s in "${systems[@]}"; do step_seconds "${s%%|*}"; done | sort -g | head -1 | awk -v n="$total_steps" '{ printf "%.6g", n * $1 }')
echo "speed-quality: equal time $equal_t s (the shortest system's $total_steps steps)" >&2
echo "system,seed,active_parameters,parameters,step_seconds,step_ratio,valid_bits_per_byte,target_bits_per_byte,steps_to_target,seconds_to_target,speedup,speedup_steps,bits_per_byte_at_equal_time,equal_time_seconds,tokens_per_second,wall_seconds,own_seconds_to_target,own_speedup,train_dropped_run,train_dropped_first25,speedup_init_timing" > "$out/runs.csv"
for seed in "${seeds[@]}"; do
  dd=$work/dense-s$seed
  # the target: dense's last validation evaluation as metrics.csv has it (= summary.json's final, to 9 digits)
  target=$(awk -F, -v seed="$seed" '$1 == "dense" && $2 == seed { v = $5 } END { print v }' "$out/curves.csv")
  dense_steps=$(steps_to dense "$seed" "$target")
  dense_tps=$(jq -r '.train_tokens_per_second' "$dd/summary.json")
  for s in "${systems[@]}"; do
    name=${s%%|*}
    d=$work/$name-s$seed
    t=$(step_seconds "$name")
    tps=$(jq -r '.train_tokens_per_second' "$d/summary.json")
    st=$(steps_to "$name" "$seed" "$target")
    at=$(bpb_at_step "$name" "$seed" "$(awk -v e="$equal_t" -v b="$t" 'BEGIN { printf "%.6g", e / b }')")
    row=$(awk -v st="$st" -v ds="$dense_steps" -v t="$t" -v dt="$dense_t" -v tps="$tps" -v dtps="$dense_tps" 'BEGIN {
        # own: seconds per step from the run own tokens/s (2,048 tokens a step)
        if (st == "") { printf ",,,,,"; exit }
        printf "%s,%.6g,%.6g,%.6g,%.6g,%.6g", st, st * t, (ds * dt) / (st * t), ds / st, st * 2048 / tps, (ds * 2048 / dtps) / (st * 2048 / tps) }')
    act=$(jq -r '[(.active_parameters // .parameters), .parameters] | @csv' "$d/summary.json")
    echo "$name,$seed,$act,$t,$(awk -v a="$t" -v b="$dense_t" 'BEGIN { printf "%.6g", a / b }'),$(jq -r '.final.test.bits_per_byte' "$d/summary.json"),$target,$(echo "$row" | cut -d, -f1-4),$at,$equal_t,$tps,$(jq -r '.wall_seconds' "$d/summary.json"),$(echo "$row" | cut -d, -f5-6),$(dropped "$d"),$(awk -v sp="$(echo "$row" | cut -d, -f4)" -v r="$(step_seconds "$name-cf1.25-init")" -v t="$dense_t" \
        'BEGIN { if (sp == "") exit; printf "%.6g", (r == "" ? 1 : sp * t / r) }')" >> "$out/runs.csv"
  done
done
summarise_runs "$out/runs.csv" > "$out/table.csv"
column -s, -t < "$out/table.csv" >&2

# 5. headline statistics over seeds (stats.sh): describe per system, paired against dense
{ echo "system,column,n,mean,sd,ci_lo,ci_hi,resolved"
  for col in valid_bits_per_byte steps_to_target seconds_to_target speedup speedup_steps speedup_init_timing bits_per_byte_at_equal_time own_speedup tokens_per_second train_dropped_run train_dropped_first25; do
    for s in "${systems[@]}"; do
      name=${s%%|*}
      v=$(awk -F, -v s="$name" -v col="$col" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == col) c = i; next }
                                              $1 == s && $c != "" { print $c }' "$out/runs.csv" | bash "$stats" describe)
      echo "$name,$col,$v,"
    done
  done
  for col in valid_bits_per_byte bits_per_byte_at_equal_time; do
    for b in switch top2; do echo "dense->$b,$col,$(bash "$stats" compare "$out/runs.csv" "$col" dense "$b")"; done
    echo "switch->top2,$col,$(bash "$stats" compare "$out/runs.csv" "$col" switch top2)"
  done
  for col in seconds_to_target steps_to_target; do
    echo "switch->top2,$col,$(bash "$stats" compare "$out/runs.csv" "$col" switch top2)"
  done
} > "$out/headline.csv"
column -s, -t < "$out/headline.csv" >&2
# the figure of the README (experiments/speed-quality/plot.gp), when gnuplot is installed
if command -v gnuplot >/dev/null; then gnuplot -e "out='$out'" "$root/experiments/speed-quality/plot.gp"; fi
