#!/usr/bin/env bash
# cross-kernel.sh: the MoEBERT experiment (run.sh) under three BLIS
# sub-configurations on one machine, to measure how far results move when only
# the GEMM micro-kernels change (README, Reproducibility): skx (AVX-512, what
# moe picks on an AVX-512 CPU), haswell and zen3 (AVX2), forced with
# BLIS_ARCH_TYPE (0, 3, 6). Each kernel's runs go to OUT/KERNEL/ (runs.csv,
# table.csv, command.txt) and WORK/KERNEL/; then OUT/spread.csv gives, per
# system, the seed spread (sample SD over seeds, averaged over kernels) beside
# the kernel spread (sample SD over kernels, averaged over seeds) and the
# largest difference between two kernels on one seed.
#   [SEEDS="1 2 3 4 5"] [THREADS=1] [KERNELS="skx haswell zen3"] [OUT=results/moebert/cross-kernel] \
#       [WORK=runs/moebert-xk] bash experiments/moebert/cross-kernel.sh [MOE_BINARY]
#   bash experiments/moebert/cross-kernel.sh --spread-only    (spread.csv from OUT/*/runs.csv alone)
# About 6-8 minutes per kernel for 5 seeds on the 2-core build machine (run.sh
# once per kernel). Needs a CPU with AVX-512 for skx; finished runs are skipped,
# as in run.sh. A call with KERNELS naming fewer than the three leaves spread.csv
# alone: run --spread-only once every kernel has run.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${OUT:-$root/results/moebert/cross-kernel}
work=${WORK:-$root/runs/moebert-xk}
# shellcheck source=../common/stats.sh
. "$root/experiments/common/stats.sh" # the statistics: sample SD
all_kernels=(skx:0 haswell:3 zen3:6)
# KERNELS="zen3" (names from the three) runs only those, e.g. two calls in parallel on two cores;
# the spread is always over the three (each must have run)
kernels=()
for k in "${all_kernels[@]}"; do [[ " ${KERNELS:-skx haswell zen3} " == *" ${k%%:*} "* ]] && kernels+=("$k"); done
[ ${#kernels[@]} -gt 0 ] || { echo "cross-kernel.sh: KERNELS='${KERNELS:-}' names none of skx haswell zen3" >&2; exit 2; }
mkdir -p "$out"
spread_only=0
[ "${1:-}" = "--spread-only" ] && { spread_only=1; shift; }
[ "$spread_only" = 1 ] || echo "cross-kernel: run.sh once per kernel (${kernels[*]%%:*}), each printing its own expected time: 6-8 minutes per kernel for 5 seeds on the 2-core build machine at 1 thread, less where runs are already finished" >&2
for k in "${kernels[@]}"; do
    [ "$spread_only" = 1 ] && break
    name=${k%%:*}
    OUT=$out/$name WORK=$work/$name BLIS_ARCH_TYPE=${k##*:} bash "$here/run.sh" "$@"
    moe=${1:-${MOE:-$root/build/cmd/moe}}
    BLIS_ARCH_TYPE=${k##*:} "$moe" --version > "$out/$name/version.txt"
    rm -f "$out/$name"/*.png # the figure is drawn once, for the main results
done
if [ "$spread_only" = 0 ] && [ ${#kernels[@]} -lt ${#all_kernels[@]} ]; then
    echo "cross-kernel: spread.csv not remade (KERNELS='${KERNELS}'); once every kernel has run: bash $0 --spread-only" >&2
    exit 0
fi
# per (kernel, system, seed): test accuracy after training, and right after the conversion
for k in "${all_kernels[@]}"; do
    name=${k%%:*}
    awk -F, -v k="$name" 'NR > 1 { print k "," $1 "," $2 "," $5 "," $6 }' "$out/$name/runs.csv"
done | awk -F, "$_stats_awk"'
# sd(a, n): the sample SD of a[1..n], by stats.sh report()
function sd(a, n,    i, s, ss, f) { s = ss = 0; for (i = 1; i <= n; i++) { s += a[i]; ss += a[i] * a[i] }
                                     split(report(n, s, ss), f, ","); return f[3] + 0 }
{ if (!($2 in seen)) { seen[$2] = 1; order[++no] = $2 }
  if (!($1 in kseen)) { kseen[$1] = 1; kn[++nk] = $1 }
  if (!($3 in sseen)) { sseen[$3] = 1; sn[++ns] = $3 }
  acc[$1, $2, $3] = $5; conv[$1, $2, $3] = $4 }
# spread(v, s): seed SD averaged over kernels, kernel SD averaged over seeds, max |kernel difference|
function spread(v, s,    ki, si, a, x, y, d) {
    seedsd = 0; for (ki = 1; ki <= nk; ki++) { for (si = 1; si <= ns; si++) a[si] = v[kn[ki], s, sn[si]]; seedsd += sd(a, ns) }
    seedsd /= nk
    kersd = 0; maxd = 0
    for (si = 1; si <= ns; si++) {
        for (ki = 1; ki <= nk; ki++) a[ki] = v[kn[ki], s, sn[si]]
        kersd += sd(a, nk)
        for (x = 1; x <= nk; x++) for (y = 1; y <= nk; y++) { d = a[x] - a[y]; if (d > maxd) maxd = d }
    }
    kersd /= ns
}
END {
    print "system,kernels,seeds,test_accuracy_seed_sd,test_accuracy_kernel_sd,test_accuracy_max_kernel_diff,converted_seed_sd,converted_kernel_sd,converted_max_kernel_diff"
    for (j = 1; j <= no; j++) {
        s = order[j]
        spread(acc, s); line = sprintf("%s,%d,%d,%.4f,%.4f,%.4f", s, nk, ns, seedsd, kersd, maxd)
        if (conv[kn[1], s, sn[1]] != "") { spread(conv, s); line = line sprintf(",%.4f,%.4f,%.4f", seedsd, kersd, maxd) }
        else line = line ",,,"
        print line
    }
}' > "$out/spread.csv"
column -s, -t < "$out/spread.csv" >&2
