#!/usr/bin/env bash
# experiments/bench/dp.sh: data parallelism over MPI processes on one machine
# (moe train --data-parallel N, README "Training over several processes").
# The byte-level LM of experiments/common/lm.json with train.accumulate = 4
# micro-batches of BATCH windows (default 8) per optimizer step, one epoch of
# WINDOWS training windows (default 4096), small evaluations; in one process
# (N = 1) and over N = 2 and 4 processes of one thread each (mpirun; 4 on a
# 2-core machine share its cores), REPEATS times (default 3), the settings
# interleaved. Every run's metrics.csv and model.safetensors must equal the
# one-process run's (the script stops otherwise).
# Writes OUT/dp.csv: processes, repeat, training tokens per second, the step
# exchanges' seconds and share of the training time, bytes each process sent
# per step (rank 0's, from summary.json's data_parallel), and a projection
# (a model, not a measurement): the exchange's time per step on a 100 Gbit/s
# network, bytes / 12.5 GB/s plus 4 collectives of 20 us each.
#   bash experiments/bench/dp.sh [OUT]      (default OUT: results/bench)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
moe=${MOE:-$root/build/cmd/moe}
out=${1:-${OUT:-results/bench}}
# shellcheck source=mpi-lib.sh
. "$root/experiments/bench/mpi-lib.sh"
[ -s experiments/data/cache/fortunes/fortunes.txt ] || bash experiments/data/fortunes.sh >&2
mkdir -p "$out"
load0=$(cut -d' ' -f1-3 /proc/loadavg) # the machine is shared: the load goes into the command file
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
args=(--config experiments/common/lm.json --set train.epochs=1 --set data.text.windows_per_epoch="${WINDOWS:-4096}"
      --set train.accumulate=4 --set optim.batch_size="${BATCH:-8}" --set data.text.train_eval_windows=32
      --set data.text.valid_eval_windows=32 --quiet --threads 1)
echo "bench/dp.sh: about $(( ${REPEATS:-3} * ${WINDOWS:-4096} / 8192 + 1 )) minute(s) on the 2-core build machine" >&2
echo "processes,repeat,tokens_per_second,exchange_seconds,exchange_share,bytes_sent_per_step,steps,projected_100gbit_ms_per_step" > "$out/dp.csv"
for rep in $(seq "${REPEATS:-3}"); do
    for n in 1 2 4; do
        d=$work/n$n-r$rep
        train_over "$n" "$d" "$work/n1-r$rep" --data-parallel "${args[@]}"
        jq -r --arg n "$n" --arg rep "$rep" '[$n, $rep, (.train_tokens_per_second | round),
            (.data_parallel.exchange_seconds // 0), (.data_parallel.exchange_share // 0),
            (.data_parallel.bytes_sent_per_step // 0), .steps,
            (if .data_parallel then ((.data_parallel.bytes_sent_per_step / 12.5e9 + 4 * 20e-6) * 1000) else 0 end)] | @csv' \
            "$d.json" >> "$out/dp.csv"
    done
done
{ echo "bash experiments/bench/dp.sh $out  # $(date -u +%Y-%m-%d), REPEATS=${REPEATS:-3} WINDOWS=${WINDOWS:-4096} BATCH=${BATCH:-8}"
  echo "# load average (1, 5, 15 min) before: $load0; after: $(cut -d' ' -f1-3 /proc/loadavg)"
  "$moe" --version | sed 's/^/# /'; } > "$out/dp-command.txt"
cat "$out/dp.csv"
