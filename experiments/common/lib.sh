# lib.sh: shell helpers shared by the routing experiments (sourced, not run).
# Needs jq. Each run is one `moe train` into a run directory; the helpers read
# its summary.json and metrics.csv.

# moe binary and the common settings; callers set $root first.
moe_bin() { echo "${MOE:-$root/build/cmd/moe}"; }

check_moe() {
    local moe
    moe=$(moe_bin)
    [ -x "$moe" ] || { echo "$0: no moe binary at '$moe' (build first: meson setup build && ninja -C build)" >&2; exit 2; }
    [ -s /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] ||
        { echo "$0: Fashion-MNIST missing: apt-get install dataset-fashion-mnist" >&2; exit 2; }
}

# last_batch DIR COLUMN: the value of COLUMN in the last split=batch row of DIR/metrics.csv
# (training-mode means over the last epoch's steps).
last_batch() {
    awk -F, -v col="$2" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == col) c = i; next }
                         $3 == "batch" { v = $c } END { print v }' "$1/metrics.csv"
}

# mean_sd: read numbers on stdin, print "mean,sd" (sample sd; empty if none).
mean_sd() {
    awk '{ n++; s += $1; ss += $1 * $1 } END {
        if (n == 0) { print ","; exit }
        m = s / n; v = n > 1 ? (ss - n * m * m) / (n - 1) : 0; if (v < 0) v = 0
        printf "%.6g,%.6g\n", m, sqrt(v) }'
}

# summarise_runs RUNS.CSV: mean and sample sd over seeds per system (column 1),
# in order of first appearance, for every column from the 5th on (columns 3
# and 4 are copied: the parameter counts). Empty cells stay empty.
summarise_runs() {
    awk -F, 'NR == 1 { printf "system,runs,%s,%s", $3, $4; for (i = 5; i <= NF; i++) printf ",%s_mean,%s_sd", $i, $i; print ""; nf = NF; next }
         { k = $1; if (!(k in n)) order[++no] = k; n[k]++; act[k] = $3; par[k] = $4
           for (i = 5; i <= NF; i++) { if ($i == "") { miss[k, i] = 1; continue } s[k, i] += $i; ss[k, i] += $i * $i } }
         END { for (j = 1; j <= no; j++) { k = order[j]; printf "%s,%d,%s,%s", k, n[k], act[k], par[k]
                 for (i = 5; i <= nf; i++) { if (miss[k, i]) { printf ",,"; continue }
                   m = s[k, i] / n[k]; v = n[k] > 1 ? (ss[k, i] - n[k] * m * m) / (n[k] - 1) : 0
                   if (v < 0) v = 0; printf ",%.6g,%.6g", m, sqrt(v) }
                 print "" } }' "$1"
}

# done_run DIR: DIR holds a finished run (a summary.json with "final"). Scripts
# skip such runs, so an experiment stopped half way picks up where it stopped;
# a rerun would give the same bytes (fixed seeds; results do not depend on the
# thread count: README.md, Reproducibility).
done_run() { [ -s "$1/summary.json" ] && jq -e '.final' "$1/summary.json" >/dev/null 2>&1; }

# provenance MOE: the lines every command.txt carries after its command line:
# the date, the source tree's revision, the thread setting, a forced BLIS
# kernel if any, and the full `moe --version` of the binary that ran (its BLIS
# sub-configuration, backends and the revision it was built from), so a result
# names the kernels it depends on (README, Reproducibility).
provenance() {
    local moe=$1
    echo "# date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "# source: $(git -C "$root" describe --always --dirty --tags 2>/dev/null || echo unknown)"
    echo "# THREADS: ${THREADS:-unset: the script default}"
    echo "# BLIS_ARCH_TYPE: ${BLIS_ARCH_TYPE:-unset: moe chooses}"
    "$moe" --version 2>&1 | sed 's/^/# moe --version: /'
}

# thread_args: "--threads $THREADS" when THREADS is set, else nothing (moe's
# default: the cores other processes leave idle). Results do not depend on it.
# Scripts collect it once, threads=($(thread_args)), and pass "${threads[@]}".
thread_args() { [ -z "${THREADS:-}" ] || echo "--threads $THREADS"; }

# expected_time TEXT: how long the script takes on the 2-core build machine,
# on stderr at the start (finished runs are skipped, so a restart is shorter).
expected_time() {
    echo "$(basename "$(dirname "$0")")/$(basename "$0"): expected run time on the 2-core build machine: $*; finished runs are skipped" >&2
}

# need_lm_inputs: for the byte-level LM experiments, set moe (the binary) and
# corpus (Debian's fortunes, experiments/data/fortunes.sh), or exit 2 saying
# what is missing. Callers set $root first.
need_lm_inputs() {
    moe=$(moe_bin)
    [ -x "$moe" ] || { echo "$0: no moe binary at '$moe' (build first)" >&2; exit 2; }
    corpus=$root/experiments/data/cache/fortunes/fortunes.txt
    [ -s "$corpus" ] || { echo "$0: no corpus at '$corpus' (run: bash experiments/data/fortunes.sh)" >&2; exit 2; }
}
