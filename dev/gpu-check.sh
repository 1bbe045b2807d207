#!/usr/bin/env bash
# dev/gpu-check.sh: what a session lent a GPU runs there, in one call (the device
# tool's `run`, from the repository root, carrying build-cuda):
#   here:  meson setup build-cuda -Dcuda=enabled -Dmpi=disabled && ninja -C build-cuda
#   there: bash dev/gpu-check.sh            (logs and JSON under $OUT, default ./gpu-out)
# Runs the GPU tests (device, ops, layer, model step) twice each (the second run must print the same bytes: the
# determinism check), then moe bench --device cuda at issue 16's layer shape, then moe train --device cuda on
# a small mlp-moe config twice (metrics and model must be the same bytes), once on the CPU, and
# moe train --check-device 20; then the Transformer: tests/cli/test_lm.sh (the byte-level LM on the
# device twice, against the CPU, --check-device), and issue 16's training tokens per second at D = 1024,
# 16 experts (experiments/common/gpu-lm.json, on a text of the repository's docs) on the GPU and, for 64
# windows, on the CPU beside it.
# Prints one line per step with its exit code; never stops at a failure.
set -uo pipefail
b=${BUILD:-build-cuda}
out=${OUT:-gpu-out}
mkdir -p "$out"
step() { # name, command...
    local name=$1
    shift
    local t0=$SECONDS
    "$@" >"$out/$name.log" 2>&1
    echo "$name: exit $? in $((SECONDS - t0)) s"
}
nvidia-smi >"$out/nvidia-smi.txt" 2>&1
"$b/cmd/moe" --version >"$out/version.txt" 2>&1
for t in cuda_device cuda_ops cuda_layer cuda_model; do
    step "test_$t" "$b/tests/test_$t"
    step "test_$t.2" "$b/tests/test_$t"
    cmp -s "$out/test_$t.log" "$out/test_$t.2.log" && echo "test_$t: two runs, same bytes" ||
        echo "test_$t: two runs DIFFER"
done
t0=$SECONDS
"$b/cmd/moe" bench --config experiments/common/gpu-layer.json --device cuda --tokens 65536 --repeats 5 --warmup 1 \
    >"$out/bench.json" 2>"$out/bench.log"
echo "bench: exit $? in $((SECONDS - t0)) s"
cfg=experiments/common/gpu-train.json
for r in gpu1 gpu2; do
    step "train_$r" "$b/cmd/moe" train --config "$cfg" --out "$out/$r" --device cuda --force
done
cmp -s "$out/gpu1/metrics.csv" "$out/gpu2/metrics.csv" && cmp -s "$out/gpu1/model.safetensors" "$out/gpu2/model.safetensors" &&
    echo "train --device cuda: two runs, same bytes" || echo "train --device cuda: two runs DIFFER"
step train_cpu "$b/cmd/moe" train --config "$cfg" --out "$out/cpu" --force
t0=$SECONDS
"$b/cmd/moe" train --config "$cfg" --device cuda --check-device 20 >"$out/check-device.json" 2>"$out/check-device.log"
echo "check-device: exit $? in $((SECONDS - t0)) s"
step test_lm bash tests/cli/test_lm.sh "$b/cmd/moe"
mkdir -p "$out/text"
cat README.md docs/*.md >"$out/text/docs.txt"
lm=(--config experiments/common/gpu-lm.json --set "data.text.path=\"$out/text\"" --force)
# the dry run's device memory for it, beside what the run held (summary's device_memory_bytes)
"$b/cmd/moe" train --dry-run --device cuda "${lm[@]}" >"$out/lm-dry.json" 2>"$out/lm-dry.log"
echo "lm dry run: $(jq -c '.device | {memory_bytes, extra_bytes, reserve_bytes, total_memory_bytes, fits}' "$out/lm-dry.json" 2>&1)"
step lm_gpu "$b/cmd/moe" train "${lm[@]}" --out "$out/lm-gpu" --device cuda
step lm_cpu "$b/cmd/moe" train "${lm[@]}" --out "$out/lm-cpu" --set data.text.windows_per_epoch=64
for r in lm-gpu lm-cpu; do
    echo "$r: $(jq -c '{device, device_name, device_memory_bytes, train_tokens_per_second, train_seconds, final: .final.test.loss}' "$out/$r/summary.json" 2>&1)"
done
grep -h "FAIL\|failures\|^not ok" "$out"/test_*.log | sort | uniq -c
