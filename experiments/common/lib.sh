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
