#!/usr/bin/env bash
# stats.sh: the statistics every results README reports, from numbers on stdin.
#   stats.sh describe          one number per line
#       -> n,mean,sd,ci_lo,ci_hi
#   stats.sh paired            two numbers per line (a b, comma or space separated), one line per seed
#       -> n,mean_diff,sd_diff,ci_lo,ci_hi,resolved      (differences b - a)
#   stats.sh compare RUNS.CSV COLUMN A B
#       the paired comparison of systems A and B on COLUMN of a runs.csv (a header
#       row with `system` and `seed` columns; one row per system and seed): B - A
#       over the seeds both have, in the same format
# sd is the sample standard deviation (n - 1 in the denominator); [ci_lo, ci_hi]
# is the 95% Student t interval of the mean, mean -/+ t(0.975, n - 1) sd / sqrt(n).
# A paired comparison is "resolved" (yes) when its interval excludes 0, else "no":
# READMEs say "no difference resolved" for a "no". With n = 1 the sd and interval
# are empty. t quantiles: exact to 3 decimals for n - 1 <= 30 (standard tables),
# 1.96 + 2.5 / (n - 1) above (within 0.003 of the exact value).
# Source it for the shell functions stats_describe and stats_paired, or run it.
set -uo pipefail

_stats_awk='
function tq(df) {
    split("12.706 4.303 3.182 2.776 2.571 2.447 2.365 2.306 2.262 2.228 2.201 2.179 2.160 2.145 2.131 2.120 2.110 2.101 2.093 2.086 2.080 2.074 2.069 2.064 2.060 2.056 2.052 2.048 2.045 2.042", t, " ")
    return df <= 30 ? t[df] + 0 : 1.96 + 2.5 / df
}
function report(n, s, ss,    m, v, sd, h) {
    if (n == 0) return "0,,,,"
    m = s / n
    if (n < 2) return sprintf("%d,%.6g,,,", n, m)
    v = (ss - n * m * m) / (n - 1); if (v < 0) v = 0; sd = sqrt(v)
    h = tq(n - 1) * sd / sqrt(n)
    return sprintf("%d,%.6g,%.6g,%.6g,%.6g", n, m, sd, m - h, m + h)
}
'

stats_describe() {
    awk "$_stats_awk"'
        NF { x = $1 + 0; n++; s += x; ss += x * x }
        END { print report(n, s, ss) }'
}

stats_paired() {
    awk -F'[ ,\t]+' "$_stats_awk"'
        NF >= 2 { d = ($2 + 0) - ($1 + 0); n++; s += d; ss += d * d }
        END { r = report(n, s, ss); split(r, f, ",")
              res = (n < 2) ? "" : ((f[4] > 0 || f[5] < 0) ? "yes" : "no")
              print r "," res }'
}

stats_compare() {
    local file=$1 col=$2 a=$3 b=$4
    awk -F, -v col="$col" -v a="$a" -v b="$b" '
        NR == 1 { for (i = 1; i <= NF; i++) { if ($i == "system") cs = i; if ($i == "seed") cd = i; if ($i == col) cc = i }
                  if (!cs || !cd || !cc) { print "stats.sh: " FILENAME " lacks a system, seed or " col " column" > "/dev/stderr"; exit 2 }
                  next }
        $cs == a && $cc != "" { va[$cd] = $cc }
        $cs == b && $cc != "" { vb[$cd] = $cc; order[++n] = $cd }
        END { for (i = 1; i <= n; i++) if (order[i] in va) print va[order[i]], vb[order[i]] }' "$file" | stats_paired
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    case "${1:-}" in
    describe) stats_describe ;;
    paired) stats_paired ;;
    compare) [ $# -eq 5 ] || { echo "usage: $0 compare RUNS.CSV COLUMN A B" >&2; exit 2; }; stats_compare "$2" "$3" "$4" "$5" ;;
    *) echo "usage: $0 describe|paired < numbers, or $0 compare RUNS.CSV COLUMN A B" >&2; exit 2 ;;
    esac
fi
