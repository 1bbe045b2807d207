#!/usr/bin/env bash
# dev/gpu-check.sh: what a session lent a GPU runs there, in one call of the device tool.
#   here:  bash dev/gpu-pack.sh                       (.gpu/: the binaries, their libraries, jq)
#   there: run(command="bash dev/gpu-check.sh", carry=[".gpu"], timeout_s=540)
# The device machine starts bare (no BLIS, SLEEF, cJSON, libcsv, jq): with .gpu/ present, its libraries
# and jq come first and its binaries are the ones run (else BUILD, default build-cuda).
#
# Runs the GPU tests (device, ops, layer, model step); moe bench --device cuda at issue 16's layer shape;
# moe train --device cuda on a small mlp-moe config twice (metrics and model must be the same bytes), once
# on the CPU, and moe train --check-device 20; the CLI tests' GPU branches: tests/cli/test_lm.sh (the
# byte-level LM on the device twice, against the CPU, --check-device) and tests/cli/test_cli.sh (distill,
# lora, eval and route-stats on the device); issue 16's training tokens per second at D = 1024, 16
# experts (experiments/common/gpu-lm.json, on a text of the repository's docs) on the GPU, again with
# launches queued (MOE_CUDA_ASYNC=1), and for 64 windows on the CPU beside it; the bench's layer routed by
# expert choice; last, the GPU tests again
# (the second run must print the same bytes: the determinism check).
#
# Prints one line per step with its exit code (also in steps.txt); never stops at a failure. Each step
# gets at most STEP_TIMEOUT seconds (default 240; exit 124 when it ran out), then SIGTERM, and SIGKILL 15 s
# later (moe train finishes its step on SIGTERM, which the host emulation showed can take minutes). Everything is written under
# WORK (default /tmp/gpu-check); after every step the results (logs, JSON, CSV; no checkpoints, whose
# SHA-256 sums are listed in checkpoints.sha256 instead) are packed into $OUT/gpu-check.tgz, with
# $OUT/steps.txt beside it: the device tool brings back at most 8 files from $OUT, and a call cut short
# still brings back what was done.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
if [ -x .gpu/cmd/moe ]; then
    export LD_LIBRARY_PATH=$PWD/.gpu/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    export PATH=$PWD/.gpu/bin:$PATH
fi
b=${BUILD:-$([ -x .gpu/cmd/moe ] && echo .gpu || echo build-cuda)}
b=$(cd "$b" && pwd)
out=${WORK:-/tmp/gpu-check}
ret=${OUT:-gpu-out}
limit=${STEP_TIMEOUT:-240}
rm -rf "$out"
mkdir -p "$out" "$ret"
ret=$(cd "$ret" && pwd)
say() {
    echo "$*"
    echo "$*" >>"$out/steps.txt"
}
pack() {
    find "$out" -name '*.safetensors' -print0 | sort -z | xargs -0 -r sha256sum | sed "s|$out/||" >"$out/checkpoints.sha256"
    tar czf "$ret/gpu-check.tgz.tmp" --exclude='*.safetensors' --exclude=./text -C "$out" . &&
        mv "$ret/gpu-check.tgz.tmp" "$ret/gpu-check.tgz"
    cp "$out/steps.txt" "$ret/steps.txt"
}
step() { # name, command...
    local name=$1
    shift
    local t0=$SECONDS
    timeout -k 15 "$limit" "$@" >"$out/$name.log" 2>&1
    say "$name: exit $? in $((SECONDS - t0)) s"
    pack
}
# the same for a command whose stdout is a result of its own (name.json), stderr to name.log
step_json() { # name, command...
    local name=$1
    shift
    local t0=$SECONDS
    timeout -k 15 "$limit" "$@" >"$out/$name.json" 2>"$out/$name.log"
    say "$name: exit $? in $((SECONDS - t0)) s"
    pack
}
say "gpu-check: binaries $b, $(date -u +%FT%TZ)"
nvidia-smi >"$out/nvidia-smi.txt" 2>&1
"$b/cmd/moe" --version >"$out/version.txt" 2>&1
sed -n '1,2p;/^cuda: /p' "$out/version.txt"
for t in cuda_device cuda_ops cuda_layer cuda_model; do
    step "test_$t" "$b/tests/test_$t"
done
step_json bench "$b/cmd/moe" bench --config experiments/common/gpu-layer.json --device cuda --tokens 65536 \
    --repeats 5 --warmup 1
say "bench: $(jq -c '.layer | {expert_gemms, s: .forward_backward.seconds.median, ratio: .forward_backward.ratio_to_sgemm.median, routing_share: .routing_share.median}' "$out/bench.json" 2>&1)"
cfg=experiments/common/gpu-train.json
for r in gpu1 gpu2; do
    step "train_$r" "$b/cmd/moe" train --config "$cfg" --out "$out/$r" --device cuda --force
done
if [ ! -s "$out/gpu1/model.safetensors" ] || [ ! -s "$out/gpu2/model.safetensors" ]; then
    say "train --device cuda: not compared (a run did not finish)"
elif cmp -s "$out/gpu1/metrics.csv" "$out/gpu2/metrics.csv" && cmp -s "$out/gpu1/model.safetensors" "$out/gpu2/model.safetensors"; then
    say "train --device cuda: two runs, same bytes"
else
    say "train --device cuda: two runs DIFFER"
fi
step train_cpu "$b/cmd/moe" train --config "$cfg" --out "$out/cpu" --force
step_json check-device "$b/cmd/moe" train --config "$cfg" --device cuda --check-device 20
say "check-device: $(jq -c '.check_device | {max_rel, max_at, max_tensor}' "$out/check-device.json" 2>&1)"
step test_lm bash tests/cli/test_lm.sh "$b/cmd/moe"
step test_cli bash tests/cli/test_cli.sh "$b/cmd/moe"
mkdir -p "$out/text"
cat README.md docs/*.md >"$out/text/docs.txt"
lm=(--config experiments/common/gpu-lm.json --set "data.text.path=\"$out/text\"" --force)
# the dry run's device memory for it, beside what the run held (summary's device_memory_bytes)
step_json lm-dry "$b/cmd/moe" train --dry-run --device cuda "${lm[@]}"
say "lm dry run: $(jq -c '.device | {memory_bytes, extra_bytes, reserve_bytes, total_memory_bytes, fits}' "$out/lm-dry.json" 2>&1)"
step lm_gpu "$b/cmd/moe" train "${lm[@]}" --out "$out/lm-gpu" --device cuda
# the same with launches queued, not each waited for (ops.cu's MOE_CUDA_ASYNC): its rate, and the same bytes
MOE_CUDA_ASYNC=1 step lm_gpu_async "$b/cmd/moe" train "${lm[@]}" --out "$out/lm-gpu-async" --device cuda
if [ ! -s "$out/lm-gpu/model.safetensors" ] || [ ! -s "$out/lm-gpu-async/model.safetensors" ]; then
    say "lm on the GPU, launches waited for and queued: not compared (a run did not finish)"
elif cmp -s "$out/lm-gpu/metrics.csv" "$out/lm-gpu-async/metrics.csv" &&
    cmp -s "$out/lm-gpu/model.safetensors" "$out/lm-gpu-async/model.safetensors"; then
    say "lm on the GPU, launches waited for and queued: same bytes"
else
    say "lm on the GPU, launches waited for and queued: DIFFER"
fi
step lm_cpu "$b/cmd/moe" train "${lm[@]}" --out "$out/lm-cpu" --set data.text.windows_per_epoch=64
for r in lm-gpu lm-gpu-async lm-cpu; do
    say "$r: $(jq -c '{device, device_name, device_memory_bytes, train_tokens_per_second, train_seconds, final: .final.test.loss}' "$out/$r/summary.json" 2>&1)"
done
# the bench's layer routed by expert choice (training's radix selection on the device)
step_json bench-ec "$b/cmd/moe" bench --config experiments/common/gpu-layer.json --device cuda --tokens 65536 \
    --set 'moe.router="expert-choice"' --repeats 3 --warmup 1
say "bench-ec: $(jq -c '.layer | {s: .forward_backward.seconds.median, ratio: .forward_backward.ratio_to_sgemm.median, routing_share: .routing_share.median}' "$out/bench-ec.json" 2>&1)"
# last, as it matters least if the call runs out of time: each GPU test again, for the same bytes (but
# the lines of wall times, which test_cuda_layer prints per case)
for t in cuda_device cuda_ops cuda_layer cuda_model; do
    step "test_$t.2" "$b/tests/test_$t"
    cmp -s <(grep -v ' timing: ' "$out/test_$t.log") <(grep -v ' timing: ' "$out/test_$t.2.log") &&
        say "test_$t: two runs, same bytes" || say "test_$t: two runs DIFFER"
done
say "failures: $(grep -h "FAIL\|failures\|^not ok" "$out"/test_*.log | sort | uniq -c | tr '\n' ';')"
pack
