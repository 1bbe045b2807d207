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

# The statistics every table reports (mean, sample SD, 95% t-interval, paired
# differences) are stats.sh's: one implementation, here and in the READMEs.
# shellcheck source=stats.sh
. "$(dirname "${BASH_SOURCE[0]}")/stats.sh"

# mean_sd: read numbers on stdin, print "mean,sd" (sample sd; 0 for one number;
# both empty if none).
mean_sd() {
    stats_describe | awk -F, '{ if ($1 == 0) print ","; else print $2 "," ($3 == "" ? 0 : $3) }'
}

# summarise_runs RUNS.CSV: per system (column 1, in order of first appearance),
# the mean and sample sd over seeds of every column from the 5th on (columns 3
# and 4 are copied: the parameter counts), then, after all of those, the 95%
# t-interval of each mean (COLUMN_ci_lo, COLUMN_ci_hi), by stats.sh's report().
# A column with an empty cell for a system stays empty for it; one seed gives
# sd 0 and no interval.
summarise_runs() { summarise_from 5 "$1"; }

# summarise_from FIRST FILE: the same for a file whose column 2 is the seed and
# whose numbers start at column FIRST (3: nothing copied; 5: columns 3 and 4
# copied from the system's last row).
summarise_from() {
    awk -F, -v first="$1" "$_stats_awk"'
         NR == 1 { printf "%s,runs", $1; for (i = 3; i < first; i++) printf ",%s", $i
                   for (i = first; i <= NF; i++) printf ",%s_mean,%s_sd", $i, $i
                   for (i = first; i <= NF; i++) printf ",%s_ci_lo,%s_ci_hi", $i, $i; print ""; nf = NF; next }
         { k = $1; if (!(k in n)) order[++no] = k; n[k]++; for (i = 3; i < first; i++) cp[k, i] = $i
           for (i = first; i <= NF; i++) { if ($i == "") { miss[k, i] = 1; continue } s[k, i] += $i; ss[k, i] += $i * $i } }
         END { for (j = 1; j <= no; j++) { k = order[j]; printf "%s,%d", k, n[k]; for (i = 3; i < first; i++) printf ",%s", cp[k, i]; ci = ""
                 for (i = first; i <= nf; i++) {
                   if (miss[k, i]) { printf ",,"; ci = ci ",,"; continue }
                   split(report(n[k], s[k, i], ss[k, i]), f, ",")
                   printf ",%s,%s", f[2], (f[3] == "" ? 0 : f[3]); ci = ci "," f[4] "," f[5] }
                 print ci } }' "$2"
}

# done_run DIR: DIR holds a finished run (a summary.json with "final"). Scripts
# skip such runs, so an experiment stopped half way picks up where it stopped;
# a rerun would give the same bytes (fixed seeds; results do not depend on the
# thread count: README.md, Reproducibility).
done_run() { [ -s "$1/summary.json" ] && jq -e '.final' "$1/summary.json" >/dev/null 2>&1; }

# source_revision: the source tree's revision (git describe), "-dirty" when a
# tracked file differs from it. A results folder's command.txt does not count:
# the script that writes it has truncated it before it asks (the `{ ...; } >
# command.txt` of every script), so a rerun into a committed results folder
# would otherwise always read as dirty.
source_revision() {
    local r
    r=$(git -C "$root" describe --always --tags 2>/dev/null) || { echo unknown; return; }
    if git -C "$root" status --porcelain --untracked-files=no -- . ':(exclude)results/**/command.txt' 2>/dev/null |
        grep -q .; then
        r=$r-dirty
    fi
    echo "$r"
}

# provenance MOE: the lines every command.txt carries after its command line:
# the date, the source tree's revision, the thread count (the script's
# $threads, else THREADS), a forced BLIS kernel if any, and the full `moe
# --version` of the binary that ran (its BLIS sub-configuration, backends and
# the revision it was built from), so a result names the kernels it depends on
# (README, Reproducibility).
provenance() {
    local moe=$1
    echo "# date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "# source: $(source_revision)"
    echo "# THREADS: ${threads:-${THREADS:-unset: the script default}}"
    echo "# BLIS_ARCH_TYPE: ${BLIS_ARCH_TYPE:-unset: moe chooses}"
    "$moe" --version 2>&1 | sed 's/^/# moe --version: /'
}

# expected_time TEXT: how long the script takes on the 2-core build machine (AMD
# EPYC, BLIS skx kernels), on stderr at the start (finished runs are skipped, so
# a restart is shorter).
expected_time() {
    echo "$(basename "$(dirname "$0")")/$(basename "$0"): expected run time on the 2-core AMD EPYC build machine: $*; finished runs are skipped" >&2
}

# about_minutes SECONDS: SECONDS as "about N minutes" (rounded; "under a
# minute" below 60, "nothing" at 0), for expected_time.
about_minutes() {
    if [ "$1" -le 0 ]; then echo "nothing"
    elif [ "$1" -lt 60 ]; then echo "under a minute"
    elif [ "$1" -lt 90 ]; then echo "about 1 minute"
    else echo "about $(( ($1 + 30) / 60 )) minutes"; fi
}

# ---- The interface of every experiments/NAME/run.sh (bench/run.sh aside: a
# benchmark, REPEATS and an output directory):
#
#   [SEEDS="1 2 3 4 5"] [THREADS=1] [OUT=results/NAME] [WORK=runs/NAME] bash experiments/NAME/run.sh [MOE_BINARY]
#
# SEEDS: the seeds, space-separated (each script says its default; jacobs1991
# takes compare-loss's range form); THREADS: threads per moe process (default 1;
# results do not depend on it: README.md, Reproducibility); OUT: the results
# directory (tables, command.txt, figure); WORK: the run directories. A run
# whose directory in WORK holds its final output is not run again (done_run;
# skip_note says how many); one that stopped half way is run again from
# scratch (fresh_dir). command.txt records all four (env_line).

# experiment_env NAME DEFAULT_SEEDS [DEFAULT_OUT [DEFAULT_WORK]]: sets exp
# (NAME), seeds (an array, from SEEDS), threads, out and work (absolute paths;
# defaults $root/results/NAME and $root/runs/NAME), or exits 2 naming the bad
# value. Callers set $root first.
experiment_env() {
    experiment_dirs "$1" "${3:-}" "${4:-}"
    local s
    read -r -a seeds <<< "${SEEDS:-$2}"
    [ ${#seeds[@]} -gt 0 ] || { echo "$0: SEEDS names no seed" >&2; exit 2; }
    for s in "${seeds[@]}"; do
        [[ $s =~ ^[0-9]+$ ]] || { echo "$0: SEEDS: '$s' is not a seed (space-separated numbers, e.g. SEEDS=\"1 2 3\")" >&2; exit 2; }
    done
}

# experiment_dirs NAME [DEFAULT_OUT [DEFAULT_WORK]]: experiment_env without the
# seeds (for a script that reads SEEDS its own way): exp, threads, out, work.
experiment_dirs() {
    exp=$1
    threads=${THREADS:-1}
    [[ $threads =~ ^[1-9][0-9]*$ ]] || { echo "$0: THREADS: '$threads' is not a positive number" >&2; exit 2; }
    out=$(realpath -m -- "${OUT:-${2:-$root/results/$1}}")
    work=$(realpath -m -- "${WORK:-${3:-$root/runs/$1}}")
}

# rel PATH: PATH relative to $root when inside it (for messages and command.txt).
rel() { case $1 in "$root") echo . ;; "$root"/*) echo "${1#"$root"/}" ;; *) echo "$1" ;; esac; }

# env_line: the settings experiment_env read, as the start of the command line
# in command.txt: SEEDS="..." THREADS=N OUT=DIR WORK=DIR (paths relative to the
# repository root when inside it).
env_line() {
    echo "SEEDS=\"${seeds[*]}\" THREADS=$threads OUT=$(printf %q "$(rel "$out")") WORK=$(printf %q "$(rel "$work")")"
}

# count_done DIR...: how many of DIR... hold finished runs (done_run).
count_done() {
    local n=0 d
    for d in "$@"; do ! done_run "$d" || n=$((n + 1)); done
    echo "$n"
}

# skip_note DONE TOTAL [WHAT [WHERE]]: the line on stderr, before the first run,
# saying how many of the TOTAL runs (or WHAT) are already finished in WORK (or
# WHERE) and so are not run again.
skip_note() {
    echo "$exp: $1 of $2 ${3:-runs} already finished in $(rel "${4:-$work}"), skipped" >&2
}

# plan_runs TOTAL DONE SECONDS DETAIL: skip_note and expected_time for a script
# of TOTAL runs of about SECONDS each at 1 thread on the build machine (DETAIL:
# what they are, the measured figures), DONE of them already finished.
plan_runs() {
    skip_note "$2" "$1"
    expected_time "$(about_minutes $(( $1 * $3 ))) for all $1 runs ($4), $(about_minutes $(( ($1 - $2) * $3 ))) for the $(( $1 - $2 )) left"
}

# fresh_dir DIR: clear what a stopped run left in DIR (its files and anything
# the script cached there from it), so that the run starts again from scratch.
fresh_dir() { rm -rf -- "$1"; }

# run_once DIR CMD...: run CMD (a moe command writing the run directory DIR)
# unless DIR holds a finished run (done_run); what a stopped run left in DIR
# goes first (fresh_dir).
run_once() {
    local d=$1
    shift
    ! done_run "$d" || return 0
    fresh_dir "$d"
    "$@"
}

# done_sweep DIR SEEDS: DIR holds a finished `moe compare-loss` sweep over the
# seeds SEEDS (compare-loss's --seeds form: 1-25, 1,2,7, 1-3,10): its
# summary.json names them and was not left by an interrupted sweep. A sweep
# stopped half way continues by itself (compare-loss keeps each finished run).
done_sweep() {
    [ -s "$1/summary.json" ] &&
        jq -e --argjson want "$(seed_list "$2")" '(.interrupted | not) and .seeds == $want' "$1/summary.json" >/dev/null 2>&1
}

# seed_list SEEDS: compare-loss's --seeds form as a JSON array ("1-3,7" -> [1,2,3,7]).
seed_list() {
    echo "$1" | awk -F, '{ printf "["; n = 0
        for (i = 1; i <= NF; i++) { lo = $i; hi = $i; if (split($i, r, "-") == 2) { lo = r[1]; hi = r[2] }
            for (s = lo + 0; s <= hi + 0; s++) printf "%s%d", (n++ ? "," : ""), s }
        print "]" }'
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
