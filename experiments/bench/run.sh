#!/usr/bin/env bash
# experiments/bench/run.sh: the speed figures of the README's Performance section.
#   bash experiments/bench/run.sh [OUT]          (default OUT: results/bench)
# Runs `moe bench` (one process per figure; every figure is a ratio to BLIS sgemm
# timed in the same process, or a time whose ratio across runs is reported):
#   layer.csv  the MoE layer at T = 4096, D = 256, F = 1024, k = 2 (softmax top-2),
#              E = 8, 16, 32, 64, at 1 and 2 threads (experiments/common/bench-mlp-moe.json)
#   step.csv   the training step of bench-mlp-moe.json (E = 8), experiments/common/lm.json
#              and experiments/common/lm-base.json at 1 and 2 threads
# plus each run's JSON under OUT/json/, and layer.png (layer time against E per thread
# count, and against threads per E) when gnuplot is installed. MOE=path picks the binary (default build/cmd/moe);
# REPEATS (default 7). About 3 minutes on a 2-core machine; run it on an idle machine.
# BLIS_ARCH_TYPE=N (a BLIS arch id, e.g. 6 for zen3) forces a BLIS sub-configuration.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
moe=${MOE:-$root/build/cmd/moe}
out=${1:-${OUT:-results/bench}}
repeats=${REPEATS:-7}
[ -x "$moe" ] || { echo "$0: no moe binary at '$moe' (meson setup build && ninja -C build)" >&2; exit 2; }
[ -s experiments/data/cache/fortunes/fortunes.txt ] || bash experiments/data/fortunes.sh >&2
mkdir -p "$out/json"
"$moe" --version > "$out/version.txt"
git -C "$root" rev-parse HEAD > "$out/revision.txt" 2>/dev/null || true

fig() { jq -r "$1 | \"\(.median),\(.min),\(.max)\""; }

echo "threads,n_expert,fb_seconds,fb_seconds_min,fb_seconds_max,ratio_to_sgemm,ratio_min,ratio_max,routing_share,share_min,share_max,blas_arch" > "$out/layer.csv"
for th in 1 2; do
    for E in 8 16 32 64; do
        j=$out/json/layer-E$E-t$th.json
        "$moe" bench --config experiments/common/bench-mlp-moe.json --set model.n_expert=$E --tokens 4096 \
            --repeats "$repeats" --threads $th --quiet > "$j"
        echo "$th,$E,$(fig .layer.forward_backward.seconds < "$j"),$(fig .layer.forward_backward.ratio_to_sgemm < "$j"),$(fig .layer.routing_share < "$j"),$(jq -r .blas.arch "$j")" >> "$out/layer.csv"
    done
done

echo "config,threads,tokens_per_second,tps_min,tps_max,ratio_to_sgemm,ratio_min,ratio_max,sgemm_gflops,blas_arch" > "$out/step.csv"
for cfg in bench-mlp-moe lm lm-base; do
    for th in 1 2; do
        j=$out/json/step-$cfg-t$th.json
        "$moe" bench --config experiments/common/$cfg.json --repeats "$repeats" --threads $th --quiet > "$j"
        echo "$cfg,$th,$(fig .step.tokens_per_second < "$j"),$(fig .step.ratio_to_sgemm < "$j"),$(jq -r .reference.sgemm_gflops.median "$j"),$(jq -r .blas.arch "$j")" >> "$out/step.csv"
    done
done

if command -v gnuplot >/dev/null; then
    gnuplot -e "out='$out'" experiments/bench/layer.gp
fi
column -s, -t "$out/layer.csv"
column -s, -t "$out/step.csv"
