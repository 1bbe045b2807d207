#!/usr/bin/env bash
# experiments/bench/ep.sh: expert parallelism over MPI processes on one machine
# (moe train --expert-parallel N, README "Training over several processes").
# CONFIG (default experiments/common/lm-base.json: Transformer LM, E = 8 Switch
# experts of D = 256, F = 1024 in 2 of 4 layers) with train.accumulate = 4
# micro-batches of BATCH windows (default 4) per optimizer step, one epoch of
# WINDOWS training windows (default 256), small evaluations; in one process
# (N = 1) and over N = 2 and 4 processes of one thread each (mpirun; 4 on a
# 2-core machine share its cores), REPEATS times (default 3), the settings
# interleaved. Every run's metrics.csv and model.safetensors must equal the
# one-process run's (the script stops otherwise). Then `moe bench
# --expert-parallel N` for N = 1, 2, 4 (the layer and the step on each process's
# own BATCH windows).
# Writes OUT/ep.csv: processes, repeat, training tokens per second, the expert
# exchanges' seconds, share of the training time and bytes sent per step
# (rows to and from the experts' processes; expert gradients stay there), the
# gradient exchange's bytes per step (the same sum as --data-parallel), steps;
# and a projection (a model, not a measurement): the exchanges' time per step
# between machines on a 100 Gbit/s network, all bytes / 12.5 GB/s plus 20 us
# per collective call (6 per sparse layer per micro-batch round, 5 per step).
# OUT/ep-bench.csv: per N, rank 0's layer and step seconds split into compute
# and exchange (medians of --repeats 5), bytes per pass.
#   bash experiments/bench/ep.sh [OUT]      (default OUT: results/bench)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
moe=${MOE:-$root/build/cmd/moe}
out=${1:-${OUT:-results/bench}}
config=${CONFIG:-experiments/common/lm-base.json}
# shellcheck source=mpi-lib.sh
. "$root/experiments/bench/mpi-lib.sh"
[ -s experiments/data/cache/fortunes/fortunes.txt ] || bash experiments/data/fortunes.sh >&2
mkdir -p "$out"
load0=$(cut -d' ' -f1-3 /proc/loadavg) # the machine is shared: the load goes into the command file
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
A=4
sparse=$(jq '.model.n_layer / (.model.moe_every // 1) | floor' "$config")
args=(--config "$config" --set train.epochs=1 --set data.text.windows_per_epoch="${WINDOWS:-256}"
      --set train.accumulate=$A --set optim.batch_size="${BATCH:-4}" --set data.text.train_eval_windows=16
      --set data.text.valid_eval_windows=16 --quiet --threads 1)
echo "bench/ep.sh: about $(( ${REPEATS:-3} * ${WINDOWS:-256} / 256 + 1 )) minute(s) on the 2-core build machine (3 repeats of 256 windows took 4)" >&2
echo "processes,repeat,tokens_per_second,ep_exchange_seconds,ep_exchange_share,ep_bytes_sent_per_step,dp_bytes_sent_per_step,steps,projected_100gbit_ms_per_step" > "$out/ep.csv"
for rep in $(seq "${REPEATS:-3}"); do
    for n in 1 2 4; do
        d=$work/n$n-r$rep
        train_over "$n" "$d" "$work/n1-r$rep" --expert-parallel "${args[@]}"
        jq -r --arg n "$n" --arg rep "$rep" --argjson A $A --argjson sp "$sparse" '
            ((.expert_parallel.bytes_sent_per_step // 0) + (.data_parallel.bytes_sent_per_step // 0)) as $b |
            (if ($n | tonumber) > 1 then (6 * $sp * ($A / ($n | tonumber)) + 5) else 0 end) as $calls |
            [$n, $rep, (.train_tokens_per_second | round),
            (.expert_parallel.exchange_seconds // 0), (.expert_parallel.exchange_share // 0),
            (.expert_parallel.bytes_sent_per_step // 0), (.data_parallel.bytes_sent_per_step // 0), .steps,
            (if ($n | tonumber) > 1 then (($b / 12.5e9 + $calls * 20e-6) * 1000) else 0 end)] | @csv' \
            "$d.json" >> "$out/ep.csv"
    done
done
echo "processes,layer_seconds,layer_exchange_seconds,layer_bytes_sent,step_seconds,step_compute_seconds,step_exchange_seconds,step_gradient_sum_seconds,step_exchange_bytes_sent,step_gradient_sum_bytes_sent,tokens_per_second_all_processes" > "$out/ep-bench.csv"
for n in 1 2 4; do
    j=$work/bench-$n.json
    "${mpirun[@]}" -np "$n" "$moe" bench --config "$config" --set optim.batch_size="${BATCH:-4}" --expert-parallel "$n" \
        --repeats 5 --threads 1 --quiet > "$j"
    cp "$j" "$out/json/ep-bench-n$n.json" 2>/dev/null || { mkdir -p "$out/json"; cp "$j" "$out/json/ep-bench-n$n.json"; }
    jq -r --arg n "$n" '[$n, .layer.forward_backward.seconds.median,
        (.expert_parallel.layer.exchange_seconds.median // 0), (.expert_parallel.layer.exchange_bytes_sent // 0),
        .step.seconds.median, (.expert_parallel.step.compute_seconds.median // .step.seconds.median),
        (.expert_parallel.step.exchange_seconds.median // 0), (.expert_parallel.step.gradient_sum_seconds.median // 0),
        (.expert_parallel.step.exchange_bytes_sent // 0), (.expert_parallel.step.gradient_sum_bytes_sent // 0),
        (.expert_parallel.step.tokens_per_second_all_processes.median // .step.tokens_per_second.median)] | @csv' \
        "$j" >> "$out/ep-bench.csv"
done
{ echo "bash experiments/bench/ep.sh $out  # $(date -u +%Y-%m-%d), CONFIG=$config REPEATS=${REPEATS:-3} WINDOWS=${WINDOWS:-256} BATCH=${BATCH:-4}, revision $(git rev-parse --short HEAD)"
  echo "# load average (1, 5, 15 min) before: $load0; after: $(cut -d' ' -f1-3 /proc/loadavg)"
  "$moe" --version | sed 's/^/# /'; } > "$out/ep-command.txt"
cat "$out/ep.csv" "$out/ep-bench.csv"
