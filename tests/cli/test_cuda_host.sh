#!/usr/bin/env bash
# test_cuda_host.sh: `--device cuda` of every command, end to end, on the host
# emulation of the CUDA ops (moe-cuda-host: the moe command line built on
# tests/cuda_host.c, with one emulated device; tests/meson.build). No GPU is
# needed, and none is used.
#
#   bash tests/cli/test_cuda_host.sh /path/to/moe-cuda-host
#
# The emulation runs the device code of the command line (the device model,
# its uploads and copies back, checkpoints, traces, the teacher of a
# distillation, adapters) through the kernel bodies in the CPU library's order,
# so where a GPU is held to tolerances here the device runs must give the CPU
# run's bytes: metrics, tables, traces and every tensor of every checkpoint.
# Faults are injected through the emulation's environment
# (tests/cuda_host_probe.c): a full device, a kernel that faults mid-run.
# Prints TAP-like lines and "1..N"; exits 1 if any check failed.
# shellcheck disable=SC2317  # check functions are called indirectly, via check
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tap.sh
. "$HERE/tap.sh"
tap_setup cuda-host "$@"

# device-moe.json: mlp-moe with AdamW, bias balancing, jitter and a capacity
# that drops; 3 epochs of 19 steps, a checkpoint every 7 steps.
cp "$HERE/device-moe.json" moe.json
# A two-block byte-level Transformer LM (block 1 sparse: Switch, 4 experts)
# on a small generated corpus.
mkdir -p corpus
awk 'BEGIN { srand(11); split("the of and to in is was for on that with as by at from his it an were are which this be or", w, " ");
             for (i = 0; i < 1500; i++) printf "%s%s", w[int(rand() * 25) + 1], (i % 12 == 11) ? ".\n" : " " }' >corpus/en.txt
cat >lm.json <<EOF
{
  "data": { "source": "text", "text": { "path": "$TMP/corpus/en.txt", "valid_fraction": 0.15, "train_eval_windows": 64 } },
  "model": { "type": "transformer", "n_ctx": 16, "n_embd": 16, "n_head": 2, "n_layer": 2, "n_ff": 16,
             "moe_every": 2, "n_expert": 4, "n_expert_used": 1 },
  "moe": { "router": "switch" },
  "optim": { "lr": 0.01, "batch_size": 16 },
  "train": { "epochs": 2, "seed": 5 }
}
EOF

# mo, same_run, have, ckpt_step: tap.sh

t_version() {
    run v "$MOE" --version
    [ "$RC" -eq 0 ] && grep -qx 'cuda: built with CUDA none runtime; driver none; devices 1' v.out &&
        grep -q '^cuda:0 host emulation of the CUDA ops (tests/cuda_host.c), compute capability 0.0, ' v.out ||
        fail "$(describe v moe-cuda-host --version)"
}
check "--version: one emulated device, no CUDA runtime or driver named" t_version

mo cpu train --config moe.json
mo cpu-lm train --config lm.json
t_train() {
    have cpu && mo dev1 train --config moe.json --device cuda && ran dev1 && mo dev2 train --config moe.json --device cuda &&
        ran dev2 || return 1
    same_run dev1 dev2 metrics.csv experts.csv model.safetensors checkpoint.safetensors || return 1
    same_run cpu dev1 metrics.csv experts.csv model.safetensors checkpoint.safetensors || return 1
    jqe dev1.out '.device == "cuda:0" and (.device_name | startswith("host emulation")) and .device_memory_bytes > 0' \
        "the summary should name the device and its memory" '{device, device_name, device_memory_bytes}'
}
check "train mlp-moe --device cuda: twice the same bytes, and the CPU run's (metrics, experts.csv, model, checkpoint)" t_train

# The device's two radix selections end to end: expert choice in training, and
# GShard's keep by priority (drop_policy probability) at a capacity that drops.
t_select() {
    local r
    for r in ec prob; do
        local set=(--set 'moe.router="expert-choice"' --set moe.bias_balance=false)
        [ $r = prob ] && set=(--set 'moe.router="gshard"' --set 'moe.drop_policy="probability"' --set moe.capacity_factor=0.5 --set moe.bias_balance=false)
        mo "cpu-$r" train --config moe.json "${set[@]}" && ran "cpu-$r" && mo "dev-$r" train --config moe.json --device cuda "${set[@]}" &&
            ran "dev-$r" || return 1
        same_run "cpu-$r" "dev-$r" metrics.csv experts.csv model.safetensors || return 1
    done
    jqe dev-prob.out '.final.train.dropped_fraction > 0' "the keep by priority should drop at capacity 0.5" '.final.train'
}
check "train --device cuda with expert choice, and with GShard's keep by priority at capacity 0.5 (it drops): the CPU run's bytes" t_select

t_train_lm() {
    have cpu-lm && mo dev-lm train --config lm.json --device cuda && ran dev-lm || return 1
    same_run cpu-lm dev-lm metrics.csv experts.csv model.safetensors checkpoint.safetensors || return 1
    run chk "${TO[@]}" "$MOE" train --config lm.json --check-device 4 --device cuda --quiet
    ran chk || return 1
    jqe chk.out '.check_device.max_rel == 0' "--check-device on the emulation: every difference must be 0" '.check_device'
}
check "train transformer --device cuda: the CPU run's bytes; --check-device 4 reports 0" t_train_lm

t_eval_route() {
    have dev1 || return 1
    local k
    for k in "" "--device cuda"; do
        # shellcheck disable=SC2086  # $k: no option, or --device cuda
        run "ev${k:+-dev}" "${TO[@]}" "$MOE" eval --checkpoint dev1/model.safetensors $k
        ran "ev${k:+-dev}" || return 1
        # shellcheck disable=SC2086
        mo "rs${k:+-dev}" route-stats --checkpoint dev1/model.safetensors --capacity-factors 0.5,1 --trace "rs${k:+-dev}.jsonl" $k
        ran "rs${k:+-dev}" || return 1
    done
    cmp -s ev.out ev-dev.out || { fail "eval: cpu $(cat ev.out), device $(cat ev-dev.out)"; return 1; }
    grep -q 'on host emulation of the CUDA ops' ev-dev.err || { fail "eval --device cuda should name the device: $(cat ev-dev.err)"; return 1; }
    same_run rs rs-dev layers.csv experts.csv capacity.csv coselect.csv || return 1
    cmp -s rs.jsonl rs-dev.jsonl || { fail "route-stats traces differ"; return 1; }
    jqe rs-dev.out '.device == "cuda:0"' "route-stats --device cuda should name the device" '{device}' || return 1
    cmp -s <(jq -S 'del(.device, .device_name, .argv, .out)' rs.out) <(jq -S 'del(.device, .device_name, .argv, .out)' rs-dev.out) ||
        fail "route-stats summaries differ beyond the device: $(diff <(jq -S 'del(.argv, .out)' rs.out) <(jq -S 'del(.argv, .out)' rs-dev.out) | head -6)"
}
check "eval and route-stats --device cuda: the CPU's output, tables and trace" t_eval_route

t_distill_lora() {
    have dev1 || return 1
    local k args
    for k in distill lora; do
        args=(distill --teacher dev1/model.safetensors --set model.n_embd=16 --alpha 0.6)
        [ $k = lora ] && args=(lora --base dev1/model.safetensors --rank 2 --targets '*.experts.w1,head.weight' --merge)
        mo "c$k" "${args[@]}" --config moe.json && ran "c$k" && mo "g$k" "${args[@]}" --config moe.json --device cuda &&
            ran "g$k" || return 1
    done
    same_run cdistill gdistill metrics.csv experts.csv model.safetensors || return 1
    same_run clora glora metrics.csv adapters.safetensors merged.safetensors
}
check "distill (the teacher on the device too) and lora --merge --device cuda: the CPU run's bytes" t_distill_lora

t_dry() {
    run dry "$MOE" train --dry-run --config moe.json --device cuda
    ran dry || return 1
    jqe dry.out '.device.available and .device.fits and .device.memory_bytes > .device.reserve_bytes' \
        "the dry run should fit the emulated device" '.device' || return 1
    local need
    need=$(jq '.device.memory_bytes' dry.out)
    MOE_CUDA_HOST_MEMORY=$((need - 1)) run dry2 "$MOE" train --dry-run --config moe.json --device cuda
    ran dry2 && jqe dry2.out ".device.fits == false and .device.total_memory_bytes == $((need - 1))" \
        "a device one byte short should not fit" '.device' || return 1
    MOE_CUDA_HOST_MEMORY=$need run dry3 "$MOE" train --dry-run --config moe.json --device cuda
    ran dry3 && jqe dry3.out '.device.fits' "a device of exactly the figure should fit" '.device'
}
check "train --dry-run --device cuda: fits the emulated device; one byte less does not, exactly the figure does" t_dry

t_oom() {
    local n what
    for n in 1 3; do
        what=parameters
        [ $n = 3 ] && what='optimizer moments (m)'
        MOE_CUDA_HOST_FAIL_MALLOC=$n run "oom$n" "${TO[@]}" "$MOE" train --config moe.json --out "oom$n" --device cuda
        [ "$RC" -eq 1 ] && [ ! -s "oom$n.out" ] && [ "$(grep -vc '^moe train: mlp-moe model' "oom$n.err")" -eq 1 ] &&
            grep -Eq '^moe train: CUDA: cudaMalloc of [0-9]+ bytes for ' "oom$n.err" &&
            grep -Fq "bytes for $what failed: out of memory" "oom$n.err" ||
            { fail "allocation $n fails: $(describe "oom$n" moe-cuda-host train --device cuda)"; return 1; }
        [ "$(ls -A "oom$n")" = moe.lock ] ||
            { fail "a run that never took a step left files besides its lock: $(ls -A "oom$n" | tr '\n' ' ')"; return 1; }
    done
    mo oom1 train --config moe.json --device cuda # the same command again, the device no longer full
    ran oom1 && same_run cpu oom1 metrics.csv model.safetensors
}
check "a full device while the model is created: exit 1, one line naming the buffer, no run files left; the same command then runs" t_oom

# The optimizer's 12th launch (step 12) faults: the run stops with the kernel
# named, the checkpoint of step 7 stays, and --resume on the CPU and on the
# device both end with the uninterrupted run's bytes.
t_fault_resume() {
    have cpu || return 1
    local d
    for d in cpu cuda; do
        MOE_CUDA_HOST_FAIL_OPTIM=12 run "f$d" "${TO[@]}" "$MOE" train --config moe.json --out "f$d" --device cuda
        [ "$RC" -eq 1 ] && grep -q '^moe train: CUDA: optim_kernel failed: an illegal memory access was encountered$' "f$d.err" ||
            { fail "a kernel fault at step 12: $(describe "f$d" moe-cuda-host train --device cuda)"; return 1; }
        [ "$(ckpt_step "f$d/checkpoint.safetensors")" = 7 ] && [ ! -e "f$d/model.safetensors" ] ||
            { fail "after the fault: checkpoint at step $(ckpt_step "f$d/checkpoint.safetensors"), files $(ls "f$d" | tr '\n' ' ')"; return 1; }
        run "r$d" "${TO[@]}" "$MOE" train --resume "f$d" --device "$d" --quiet
        ran "r$d" || return 1
        same_run cpu "f$d" metrics.csv experts.csv model.safetensors checkpoint.safetensors || return 1
    done
}
check "a kernel fault at step 12: the kernel named, step 7's checkpoint intact; --resume on the CPU and on the device: the uninterrupted run's bytes" t_fault_resume

t_bench() {
    run bench "${TO[@]}" "$MOE" bench --config moe.json --device cuda --tokens 256 --repeats 1 --warmup 0
    ran bench || return 1
    jqe bench.out '.device == "cuda:0" and .layer.forward.seconds > 0 and .layer.expert_gemms != null' \
        "bench --device cuda on the emulation" '{device, layer}'
}
check "bench --device cuda runs its device layer (timings of the emulation, not of a GPU)" t_bench

echo "1..$N"
[ "$FAILED" -eq 0 ]
