#!/usr/bin/env bash
# plot-all.sh: redraw every results figure from the committed CSVs: each results/NAME/ from
# experiments/NAME/plot.gp (switch-distill twice: the Fashion-MNIST top level and lm/), and
# results/bench/layer.png from experiments/bench/layer.gp, results/cuda-bench/layer.png from
# experiments/bench/cuda-layer.gp and results/cuda-parity/parity.png from
# experiments/bench/cuda-parity.gp, results/expert-scaling/separate/separate.png from
# experiments/expert-scaling/separate.gp. Runs nothing but gnuplot (seconds).
#
#   bash experiments/plot-all.sh
#
# Without gnuplot (Debian: apt-get install gnuplot-nox) it says so and draws nothing.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
if ! command -v gnuplot >/dev/null; then
    echo "$0: gnuplot not found, no figures drawn (apt-get install gnuplot-nox)" >&2
    exit 0
fi
draw() {  # draw OUT SCRIPT
    if [ -d "$1" ]; then
        gnuplot -e "out='$1'" "$2"
        echo "$2 -> $1/" >&2
    else
        echo "$0: skipping $2: no $1/" >&2
    fi
}
for gp in experiments/*/plot.gp; do
    draw "results/$(basename "$(dirname "$gp")")" "$gp"
done
draw results/switch-distill/lm experiments/switch-distill/plot.gp
draw results/bench experiments/bench/layer.gp
draw results/cuda-bench experiments/bench/cuda-layer.gp
draw results/cuda-parity experiments/bench/cuda-parity.gp
draw results/expert-scaling/separate experiments/expert-scaling/separate.gp
