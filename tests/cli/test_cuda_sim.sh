#!/usr/bin/env bash
# test_cuda_sim.sh: what only the CUDA simulator (tests/cuda_sim) can show
# without a GPU, on moe-cuda-sim (the moe command line built on lib/cuda/*.cu
# run by the simulator): the .cu files' own probe, device memory, fault and
# library-fallback paths, driven through the simulator's environment (no
# device, a small device, a kernel that faults, a cuBLAS without grouped
# GEMMs). The runs' numbers are the simulator's, not a GPU's.
#
#   bash tests/cli/test_cuda_sim.sh /path/to/moe-cuda-sim
#
# Prints TAP-like lines and "1..N"; exits 1 if any check failed.
# shellcheck disable=SC2317  # check functions are called indirectly, via check
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tap.sh
. "$HERE/tap.sh"
tap_setup cuda-sim "$@"

# device-moe.json: mlp-moe with AdamW, bias balancing, jitter and a capacity
# that drops; 3 epochs of 19 steps, a checkpoint every 7 steps.
cp "$HERE/device-moe.json" moe.json

# mo, same_run, have, ckpt_step: tap.sh

t_version() {
    run v "$MOE" --version
    [ "$RC" -eq 0 ] && grep -qx 'cuda: built with CUDA 13.0 runtime; driver 13.0; devices 1' v.out &&
        grep -q '^cuda:0 CUDA simulator on the CPU (tests/cuda_sim), compute capability 9.0, 80.0 GiB$' v.out ||
        { fail "$(describe v moe-cuda-sim --version)"; return 1; }
    MOE_CUDA_SIM_DEVICES=0 run v0 "$MOE" --version
    [ "$RC" -eq 0 ] && grep -q '^cuda: built with CUDA 13.0 runtime; driver 13.0; devices 0 (.*cudaErrorNoDevice' v0.out ||
        fail "$(describe v0 moe-cuda-sim --version, no device)"
}
check "--version through device.cu: the simulated device; with none, cudaGetDeviceCount's error named" t_version

t_no_device() {
    MOE_CUDA_SIM_DEVICES=0 run nodev "$MOE" train --config moe.json --out nodev --device cuda
    [ "$RC" -eq 2 ] && [ "$(wc -l <nodev.err)" -eq 1 ] && grep -Fq "option '--device cuda' cannot be used: " nodev.err &&
        [ ! -e nodev ] || fail "$(describe nodev moe-cuda-sim train --device cuda, no device)"
}
check "train --device cuda where the runtime finds no device: one line, exit 2, no run directory" t_no_device

mo dev1 train --config moe.json --device cuda
t_dry() {
    have dev1 || return 1
    run dry "$MOE" train --dry-run --config moe.json --device cuda
    ran dry || return 1
    local need
    need=$(jq '.device.memory_bytes' dry.out)
    jqe dry.out '.device.available and .device.fits and .device.total_memory_bytes == 85899345920' \
        "the dry run should fit the simulated 80 GiB device" '.device' || return 1
    MOE_CUDA_SIM_MEMORY=$((need - 1)) run dry2 "$MOE" train --dry-run --config moe.json --device cuda
    ran dry2 && jqe dry2.out ".device.fits == false and .device.total_memory_bytes == $((need - 1))" \
        "a device one byte short should not fit" '.device' || return 1
    # the run's own peak stays within the plan's figure less the reserve
    jq -e --slurpfile d dry.out '.device_memory_bytes > 0 and .device_memory_bytes <= $d[0].device.memory_bytes - $d[0].device.reserve_bytes' \
        dev1.out >/dev/null || fail "the run's device memory $(jq .device_memory_bytes dev1.out) should be within the dry run's plan: $(jq -c .device dry.out)"
}
check "train --dry-run --device cuda: cudaGetDeviceProperties' memory; one byte short of the figure does not fit; the run stays within it" t_dry

t_oom() {
    MOE_CUDA_SIM_MEMORY=4096 run oom "${TO[@]}" "$MOE" train --config moe.json --out oom --device cuda
    [ "$RC" -eq 1 ] && [ ! -s oom.out ] && [ "$(grep -vc '^moe train: mlp-moe model' oom.err)" -eq 1 ] &&
        grep -Eq '^moe train: CUDA: cudaMalloc of [0-9]+ bytes for .* failed: out of memory$' oom.err ||
        { fail "a 4 KiB device: $(describe oom moe-cuda-sim train --device cuda)"; return 1; }
    [ "$(ls -A oom)" = moe.lock ] || { fail "a run that never took a step left files besides its lock: $(ls -A oom | tr '\n' ' ')"; return 1; }
    mo oom train --config moe.json --device cuda # the same command again, on the full-size device
    ran oom && same_run dev1 oom metrics.csv model.safetensors
}
check "a device too small for the model: exit 1, one line naming the buffer cudaMalloc could not get, no run files left; then the same command runs" t_oom

# optim_kernel's 12th launch faults: the run stops with the kernel named, the
# checkpoint of step 7 stays; --resume on the device gives the uninterrupted
# device run's bytes, --resume on the CPU finishes.
t_fault_resume() {
    have dev1 || return 1
    MOE_CUDA_SIM_FAULT=optim_kernel:12 run fault "${TO[@]}" "$MOE" train --config moe.json --out fault --device cuda
    [ "$RC" -eq 1 ] && grep -q '^moe train: CUDA: optim_kernel failed: an illegal memory access was encountered$' fault.err ||
        { fail "a kernel fault at step 12: $(describe fault moe-cuda-sim train --device cuda)"; return 1; }
    [ "$(ckpt_step fault/checkpoint.safetensors)" = 7 ] && [ ! -e fault/model.safetensors ] ||
        { fail "after the fault: checkpoint at step $(ckpt_step fault/checkpoint.safetensors), files $(ls fault | tr '\n' ' ')"; return 1; }
    cp -r fault fault-cpu
    run rdev "${TO[@]}" "$MOE" train --resume fault --device cuda --quiet
    ran rdev && same_run dev1 fault metrics.csv experts.csv model.safetensors checkpoint.safetensors || return 1
    run rcpu "${TO[@]}" "$MOE" train --resume fault-cpu --device cpu --quiet
    ran rcpu && [ -s fault-cpu/model.safetensors ] || fail "--resume on the CPU: $(describe rcpu moe-cuda-sim train --resume)"
}
check "a kernel fault at step 12 (sticky, as on a GPU): the kernel named, step 7's checkpoint intact; --resume on the device: the uninterrupted run's bytes; on the CPU: finishes" t_fault_resume

# A libcublas whose cublasGemmGroupedBatchedEx answers NOT_SUPPORTED: blas.cu
# falls back to a cublasSgemm per group, the same products.
t_grouped_fallback() {
    have dev1 || return 1
    MOE_CUDA_SIM_GROUPED=unsupported run nogrp "${TO[@]}" "$MOE" train --config moe.json --out nogrp --device cuda --quiet
    ran nogrp && same_run dev1 nogrp metrics.csv experts.csv model.safetensors || return 1
    run b1 "$MOE" bench --config moe.json --device cuda --tokens 256 --repeats 1 --warmup 0
    ran b1 && jqe b1.out '.layer.expert_gemms == "cublasGemmGroupedBatchedEx"' "bench's grouped path" '.layer.expert_gemms' || return 1
    MOE_CUDA_SIM_GROUPED=unsupported run b2 "$MOE" bench --config moe.json --device cuda --tokens 256 --repeats 1 --warmup 0
    ran b2 && jqe b2.out '.layer.expert_gemms == "cublasSgemm per group"' "bench's fallback path" '.layer.expert_gemms'
}
check "grouped GEMMs refused by cuBLAS (NOT_SUPPORTED): the per-group fallback, the same bytes; bench names each path" t_grouped_fallback

echo "1..$N"
[ "$FAILED" -eq 0 ]
