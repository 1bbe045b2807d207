#!/usr/bin/env bash
# experiments/bench/pairs.sh: the speed figures that compare two runs (E = 64 against E = 8, 2 threads
# against 1), from runs made back to back and repeated, so that a shared machine's drift between
# windows cancels in each pair.
#   bash experiments/bench/pairs.sh [OUT]          (default OUT: results/bench)
# Each round runs, one after another (every other round in reverse order):
#   the MoE layer of bench-mlp-moe.json (T = 4096, k = 2) at E = 8 and E = 64, 1 and 2 threads;
#   the training step of experiments/common/lm.json and lm-base.json at 1 and 2 threads;
# and forms from that round's medians (each over REPEATS repeats in one process):
#   layer_E64_over_E8_t1, _t2   layer time at E = 64 over E = 8 (the issue's target: at most 1.10)
#   layer_speedup_E8, _E64      layer time at 1 thread over 2 threads (target: at least 1.8)
#   lm_speedup, lm-base_speedup tokens/s at 2 threads over 1 thread (target: at least 1.7)
# Writes OUT/pairs.csv (one row per round and figure, with the two times or rates it divides) and
# OUT/pairs-summary.csv (per figure: rounds, median, min, max over the rounds), and prints the summary.
# ROUNDS (default 6), REPEATS (default 5), MOE=path picks the binary (default build/cmd/moe).
# About 8 minutes at the defaults on the 2-core build machine; run it on an otherwise idle machine.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
moe=${MOE:-$root/build/cmd/moe}
out=${1:-${OUT:-results/bench}}
rounds=${ROUNDS:-6}
repeats=${REPEATS:-5}
[ -x "$moe" ] || { echo "$0: no moe binary at '$moe' (meson setup build && ninja -C build)" >&2; exit 2; }
command -v jq >/dev/null || { echo "$0: needs jq" >&2; exit 2; }
[ -s experiments/data/cache/fortunes/fortunes.txt ] || bash experiments/data/fortunes.sh >&2
mkdir -p "$out"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
echo "$0: $rounds rounds of 8 runs, about $((rounds * 80 / 60)) minutes" >&2

# one figure of one run: layer fwd+bwd seconds, or step tokens/s (medians of the repeats)
layer() { "$moe" bench --config experiments/common/bench-mlp-moe.json --set model.n_expert="$1" --tokens 4096 \
              --repeats "$repeats" --threads "$2" --quiet | jq -r .layer.forward_backward.seconds.median; }
step() { "$moe" bench --config "experiments/common/$1.json" --repeats "$repeats" --threads "$2" --quiet |
             jq -r .step.tokens_per_second.median; }

runs=(layer:8:1 layer:64:1 layer:8:2 layer:64:2 step:lm:1 step:lm:2 step:lm-base:1 step:lm-base:2)
echo "round,figure,numerator,denominator,ratio" > "$out/pairs.csv"
for r in $(seq "$rounds"); do
    declare -A v=()
    order=("${runs[@]}")
    if [ $((r % 2)) -eq 0 ]; then
        order=()
        for ((i = ${#runs[@]} - 1; i >= 0; i--)); do order+=("${runs[$i]}"); done
    fi
    for run in "${order[@]}"; do
        IFS=: read -r kind what th <<< "$run"
        v[$what:$th]=$($kind "$what" "$th")
    done
    row() { echo "$r,$1,$2,$3,$(awk -v a="$2" -v b="$3" 'BEGIN { printf "%.4f", a / b }')" >> "$out/pairs.csv"; }
    row layer_E64_over_E8_t1 "${v[64:1]}" "${v[8:1]}"
    row layer_E64_over_E8_t2 "${v[64:2]}" "${v[8:2]}"
    row layer_speedup_E8 "${v[8:1]}" "${v[8:2]}"
    row layer_speedup_E64 "${v[64:1]}" "${v[64:2]}"
    row lm_speedup "${v[lm:2]}" "${v[lm:1]}"
    row lm-base_speedup "${v[lm-base:2]}" "${v[lm-base:1]}"
    echo "$0: round $r of $rounds done" >&2
done

# per figure: rounds, median, min, max of the ratio
awk -F, 'NR > 1 { n[$2]++; x[$2, n[$2]] = $5; if (!($2 in first)) { first[$2] = NR; ord[++k] = $2 } }
     END {
         print "figure,rounds,median,min,max"
         for (i = 1; i <= k; i++) {
             f = ord[i]; m = n[f]
             for (a = 1; a <= m; a++) s[a] = x[f, a] + 0
             for (a = 2; a <= m; a++) for (b = a; b > 1 && s[b - 1] > s[b]; b--) { t = s[b]; s[b] = s[b - 1]; s[b - 1] = t }
             med = m % 2 ? s[(m + 1) / 2] : (s[m / 2] + s[m / 2 + 1]) / 2
             printf "%s,%d,%.3f,%.3f,%.3f\n", f, m, med, s[1], s[m]
         }
     }' "$out/pairs.csv" > "$out/pairs-summary.csv"
{
    "$moe" --version
    echo "source tree: $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "ROUNDS=$rounds REPEATS=$repeats MOE=$moe bash experiments/bench/pairs.sh $out"
    echo "load average before: $load_before, after: $(cut -d' ' -f1-3 /proc/loadavg)"
} > "$out/pairs-command.txt"
column -s, -t "$out/pairs-summary.csv"
