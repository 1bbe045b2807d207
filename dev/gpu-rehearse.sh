#!/usr/bin/env bash
# dev/gpu-rehearse.sh: dev/gpu-check.sh run here, without a GPU, on a stand-in for the device: by default
# the CUDA simulator (tests/cuda_sim: moe-cuda-sim for moe and the *_sim GPU tests, which run lib/cuda/*.cu
# themselves in the GPU tests' GPU mode), or with STANDIN=host the host emulation of the CUDA ops
# (moe-cuda-host and the *_host tests; test_cuda_device exits 77). A check of the script itself (its steps,
# JSON filters, packing) before a session spends device time on it; the figures it prints are the
# stand-in's, not a GPU's. Steps at issue 16's sizes (the layer bench at T = 65536, the LM at D = 1024)
# run past STEP_TIMEOUT on a CPU: that they stop, and the script goes on, is part of the check.
#   BUILD   a build directory with the stand-in's binaries (default build)
#   STANDIN sim (default) or host
#   STEP_TIMEOUT   seconds a step may take (default 60)
# Results under /tmp/gpu-rehearse (WORK) and /tmp/gpu-rehearse-out (OUT: steps.txt, gpu-check.tgz).
set -euo pipefail
cd "$(dirname "$0")/.."
b=$(cd "${BUILD:-build}" && pwd)
standin=${STANDIN:-sim}
fake=$(mktemp -d /tmp/gpu-rehearse-bin.XXXXXX)
trap 'rm -rf "$fake"' EXIT
mkdir -p "$fake/cmd" "$fake/tests"
case $standin in
sim)
    ninja -C "$b" tests/cuda_sim/moe-cuda-sim tests/cuda_sim/libcublas.so.sim \
        tests/cuda_sim/test_cuda_{device,ops,layer,model}_sim >/dev/null
    # the binaries' run path names tests/cuda_sim, where libcublas.so.sim is
    ln -s "$b/tests/cuda_sim/moe-cuda-sim" "$fake/cmd/moe"
    for t in device ops layer model; do
        ln -s "$b/tests/cuda_sim/test_cuda_${t}_sim" "$fake/tests/test_cuda_$t"
    done ;;
host)
    ninja -C "$b" tests/moe-cuda-host tests/test_cuda_ops_host tests/test_cuda_layer_host tests/test_cuda_model_host >/dev/null
    ln -s "$b/tests/moe-cuda-host" "$fake/cmd/moe"
    for t in ops layer model; do
        ln -s "$b/tests/test_cuda_${t}_host" "$fake/tests/test_cuda_$t"
    done
    printf '#!/bin/sh\necho "no device: the host emulation has no test_cuda_device"\nexit 77\n' >"$fake/tests/test_cuda_device"
    chmod +x "$fake/tests/test_cuda_device" ;;
*)
    echo "STANDIN=$standin: sim or host" >&2
    exit 2 ;;
esac
BUILD=$fake WORK=/tmp/gpu-rehearse OUT=/tmp/gpu-rehearse-out STEP_TIMEOUT=${STEP_TIMEOUT:-60} bash dev/gpu-check.sh
