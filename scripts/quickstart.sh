#!/usr/bin/env bash
# One command from a fresh Debian 12 machine to a trained model:
# install what is missing, build with meson, run the quick start.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
[ -f build/build.ninja ] || meson setup build >/dev/null
ninja -C build >/dev/null
out=runs/quickstart
# --force: a rerun replaces the previous quick start (a run directory is otherwise refused)
./build/cmd/moe train --config examples/quickstart.json --out "$out" --force --quiet > /dev/null
echo "quick start done: a 4-expert mixture on synthetic regions; outputs in $out/ (config.json, metrics.csv, model.safetensors, summary.json)"
jq -r '"final test mse \(.final.test.mse | .*1000 | round / 1000), active experts \(.final.train.active_experts), I(expert; region) \(.final.train.expert_region_mi | .*100 | round / 100) bits of 2"' "$out/summary.json"
