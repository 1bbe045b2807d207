#!/usr/bin/env bash
# Is expert-language MI more than script? Within the four Latin-script
# languages (deu eng fra spa), bytes do not reveal the script, so MI(expert;
# language) among them measures language specialisation proper. Reads the
# route-stats labels.csv of each MoE run of experiments/crosslingual/run.sh
# and writes results/crosslingual/mi_latin.csv: per system, seed and layer,
# the MI in bits over those languages' validation tokens, the tokens, and the
# plug-in estimator's expected bias under independence, (E - 1)(G - 1) / (2 N ln 2)
# (Miller 1955), the chance level to compare with.
#
#   bash experiments/crosslingual/latin_mi.sh     # after run.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work=${WORK:-$root/runs/crosslingual}
out=${OUT:-$root/results/crosslingual}
mkdir -p "$out"
langs=${LATIN:-deu eng fra spa}
echo "system,seed,layer,languages,tokens,mi_language,chance" > "$out/mi_latin.csv"
for d in "$work"/*-s*/route; do
    run=$(basename "$(dirname "$d")")
    sys=${run%-s*}
    seed=${run##*-s}
    awk -F, -v sys="$sys" -v seed="$seed" -v langs="$langs" '
        BEGIN { n = split(langs, l, " "); for (i = 1; i <= n; i++) keep[l[i]] = 1 }
        NR > 1 && $2 == "language" && ($3 in keep) {
            c[$1, $4, $3] += $5; re[$1, $4] += $5; rl[$1, $3] += $5; tot[$1] += $5
            if (!($1 in seen)) { seen[$1] = 1; layers[++nl] = $1 }
            if (!(($1, $4) in seenE)) { seenE[$1, $4] = 1; ne[$1]++ }
            ex[$4] = 1; lg[$3] = 1 }
        END {
            for (k = 1; k <= nl; k++) {
                L = layers[k]; N = tot[L]; mi = 0
                for (e in ex) for (g in lg) { x = c[L, e, g]; if (x > 0) mi += x / N * log(x * N / (re[L, e] * rl[L, g])) / log(2) }
                E = 0; for (e in ex) if (re[L, e] > 0) E++
                printf "%s,%s,%s,%s,%d,%.6g,%.6g\n", sys, seed, L, langs, N, mi, (E - 1) * (n - 1) / (2 * N * log(2))
            } }' "$d/labels.csv" >> "$out/mi_latin.csv"
done
column -s, -t < "$out/mi_latin.csv" >&2
