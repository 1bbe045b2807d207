#!/usr/bin/env bash
# test_rundir.sh: live tables and safe run directories (issue 17, points 2 and 3).
#
#   bash tests/cli/test_rundir.sh /path/to/moe
#
# Live tables: metrics.csv and experts.csv grow by whole rows while a run goes
# (read here while the run is stopped with SIGSTOP, before it ends), and a row
# torn after the last checkpoint is cut off by --resume, which then ends
# byte-identical to a run never stopped.
# Run directories: a directory holding another run is refused (exit 2) unless
# --force, which clears moe's files and leaves the others; an interrupted one
# points to --resume; a second process on a directory in use fails at once
# (exit 1, naming the holder's PID); temporary files of dead processes are
# removed, those of live ones are not.
# TAP-like output ("ok N - name" / "not ok N - name"), plan line "1..N", exit 1
# if any check failed.
# shellcheck disable=SC2317  # check functions are called indirectly, via check
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tap.sh
. "$HERE/tap.sh"
tap_setup rundir "$@"

# A sparse model (experts.csv too) that takes a few seconds: rows every 5
# steps, a checkpoint every 7.
cat >slow.json <<'EOF'
{
  "data": { "source": "synthetic",
            "synthetic": { "kind": "classes", "n_train": 3000, "n_test": 500, "n_in": 16, "n_regions": 8 } },
  "model": { "type": "mlp-moe", "n_embd": 32, "n_layer": 2, "n_ff": 32, "n_expert": 8, "n_expert_used": 2 },
  "moe": { "router": "softmax", "bias_balance": true, "jitter": 0.01 },
  "optim": { "type": "adamw", "lr": 0.003, "batch_size": 32 },
  "train": { "epochs": 8, "seed": 3, "log_every": 5, "checkpoint_every": 7 }
}
EOF
# A dense mixture: writes no experts.csv.
cat >tiny.json <<'EOF'
{
  "data": { "source": "synthetic", "synthetic": { "kind": "regions", "n_train": 60, "n_test": 20 } },
  "model": { "type": "mixture", "n_expert": 3 },
  "optim": { "batch_size": 32 },
  "train": { "epochs": 1, "seed": 1 }
}
EOF

"$MOE" train --config slow.json --out ref --quiet >/dev/null 2>ref.err || echo "Bail out! reference run failed: $(cat ref.err)"
"$MOE" train --config tiny.json --out tiny-ref --quiet >/dev/null 2>tiny-ref.err || echo "Bail out! reference run failed: $(cat tiny-ref.err)"

lines() { if [ -f "$1" ]; then awk 'END { print NR }' "$1"; else echo 0; fi; }
# wait_for COND_CMD...: poll (up to 60 s) until the command succeeds.
wait_for() {
    local i
    for i in $(seq 600); do
        "$@" && return 0
        sleep 0.1
    done
    return 1
}
# whole_rows FILE: every line ends with a newline and has the header's cells.
whole_rows() {
    [ "$(tail -c 1 "$1" | od -An -c | tr -d ' ')" = '\n' ] || { fail "$1 does not end with a newline"; return 1; }
    awk -F, 'NR == 1 { n = NF } NF != n { bad = 1 } END { exit bad }' "$1" || { fail "$1 has a row with the wrong cells"; return 1; }
}

# ---------------------------------------------------------------- a run in progress
# Start the slow run, stop it with SIGSTOP once metrics.csv has rows beyond the
# header and a checkpoint exists; several checks look at it while it is stopped.
"$MOE" train --config slow.json --out live --quiet >live.out 2>live.err &
LIVE=$!
has_rows() { [ "$(lines live/metrics.csv)" -ge 4 ] && [ -f live/checkpoint.safetensors ]; }
wait_for has_rows
kill -STOP "$LIVE" 2>/dev/null
STOPPED_ROWS=$(lines live/metrics.csv)
STOPPED_EXPERTS=$(lines live/experts.csv)

t_live_rows() {
    kill -0 "$LIVE" 2>/dev/null || { fail "the run ended before it could be looked at: $(cat live.err)"; return 1; }
    [ ! -e live/model.safetensors ] || { fail "model.safetensors exists: the run is over"; return 1; }
    [ "$STOPPED_ROWS" -ge 4 ] || { fail "metrics.csv had $STOPPED_ROWS lines while the run was stopped"; return 1; }
    [ "$STOPPED_EXPERTS" -gt 1 ] || { fail "experts.csv had $STOPPED_EXPERTS lines while the run was stopped"; return 1; }
    whole_rows live/metrics.csv && whole_rows live/experts.csv || return 1
    # what the run wrote so far is the start of what it will write
    head -n "$STOPPED_ROWS" ref/metrics.csv | cmp -s - live/metrics.csv ||
        { fail "metrics.csv so far is not the start of the reference's"; return 1; }
}
check "metrics.csv and experts.csv hold whole rows while the run goes (read with the run stopped)" t_live_rows

t_lock_train() {
    run second "$MOE" train --config tiny.json --out live --force --quiet
    [ "$RC" -eq 1 ] || { fail "expected exit 1; $(describe second train --out live --force)"; return 1; }
    grep -Fq "PID $LIVE " second.err || { fail "message does not name PID $LIVE: $(cat second.err)"; return 1; }
    [ "$(lines second.err)" -eq 1 ] && [ ! -s second.out ] || { fail "not one stderr line and empty stdout"; return 1; }
    [ -f live/checkpoint.safetensors ] && [ "$(lines live/metrics.csv)" -eq "$STOPPED_ROWS" ] ||
        { fail "the refused --force touched the running run's files"; return 1; }
}
check "a second train --force on a directory in use: exit 1 at once, names the holder's PID, clears nothing" t_lock_train

# A temporary file in the live process's name (one it does not write itself, an
# mlp-moe run has no vocabulary): a second --resume must fail on the lock and
# leave it alone.
: >"live/vocab.txt.tmp.$LIVE"
expect_fail "a second --resume on a directory in use: exit 1, names the holder's PID" 1 "PID $LIVE " "in use" -- \
    "${TO[@]}" "$MOE" train --resume live
t_live_tmp_kept() { [ -e "live/vocab.txt.tmp.$LIVE" ] || fail "the live process's temporary file was removed"; }
check "the refused --resume left the live process's temporary file alone" t_live_tmp_kept
expect_fail "compare-loss on a directory in use: exit 1, names the holder's PID" 1 "PID $LIVE " -- \
    "${TO[@]}" "$MOE" compare-loss --config tiny.json --losses nll --seeds 1 --out live --force --quiet
rm -f "live/vocab.txt.tmp.$LIVE"

kill -CONT "$LIVE" 2>/dev/null
wait "$LIVE"
LIVE_RC=$?
t_live_grew() {
    [ "$LIVE_RC" -eq 0 ] || { fail "the run failed after SIGCONT: exit $LIVE_RC: $(cat live.err)"; return 1; }
    [ "$(lines live/metrics.csv)" -gt "$STOPPED_ROWS" ] || { fail "metrics.csv did not grow after the stop"; return 1; }
    cmp -s ref/metrics.csv live/metrics.csv && cmp -s ref/experts.csv live/experts.csv &&
        cmp -s ref/model.safetensors live/model.safetensors || { fail "the stopped and continued run differs from the reference"; return 1; }
}
check "the run goes on after the stop: more rows, and the same bytes as the reference" t_live_grew

# tail -f follows the run: a reader started with the run sees rows before the end.
t_tail() {
    rm -rf tailed
    mkdir tailed
    : >tailed.seen
    "$MOE" train --config slow.json --out tailed --quiet >/dev/null 2>tailed.err &
    local pid=$!
    wait_for test -f tailed/metrics.csv
    tail -n +1 -f tailed/metrics.csv >tailed.seen 2>/dev/null &
    local tpid=$!
    wait_for sh -c '[ "$(wc -l <tailed.seen)" -ge 3 ]'
    local seen_before_end=$(lines tailed.seen) done_then=0
    kill -0 "$pid" 2>/dev/null && [ ! -e tailed/summary.json ] && done_then=1
    wait "$pid"
    local rc=$?
    # tail -f may poll (about once a second): give it time to catch up
    wait_for sh -c '[ "$(wc -c <tailed.seen)" -ge "$(wc -c <tailed/metrics.csv)" ]'
    kill "$tpid" 2>/dev/null
    wait "$tpid" 2>/dev/null
    [ "$rc" -eq 0 ] || { fail "the run failed: $(cat tailed.err)"; return 1; }
    [ "$done_then" -eq 1 ] || { fail "the run ended before tail saw 3 lines ($seen_before_end)"; return 1; }
    cmp -s tailed.seen tailed/metrics.csv ||
        { fail "tail -f saw other bytes than the file's: $(wc -c <tailed.seen) vs $(wc -c <tailed/metrics.csv) bytes, $(cmp tailed.seen tailed/metrics.csv 2>&1 | head -1)"; return 1; }
}
check "tail -f metrics.csv sees rows before the run ends, and ends with the file's bytes" t_tail

# ---------------------------------------------------------------- a torn row
# SIGKILL after a checkpoint, then a row torn in the middle (no newline) at the
# end of each table, as a kill inside a write would leave: --resume cuts the
# tables back to the checkpoint and ends byte-identical to the reference.
t_torn() {
    rm -rf torn
    "$MOE" train --config slow.json --out torn --quiet >/dev/null 2>torn.err &
    local pid=$!
    wait_for sh -c '[ -f torn/checkpoint.safetensors ] && [ "$(wc -l <torn/metrics.csv)" -ge 6 ]'
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    [ ! -e torn/model.safetensors ] || { fail "the run finished before the kill"; return 1; }
    printf '999,9,test,0.25,,0.5' >>torn/metrics.csv
    printf '999,9,train,1,3,17' >>torn/experts.csv
    run torn-resume "$MOE" train --resume torn --quiet
    [ "$RC" -eq 0 ] || { fail "$(describe torn-resume train --resume torn)"; return 1; }
    local f
    for f in metrics.csv experts.csv model.safetensors; do
        cmp -s "ref/$f" "torn/$f" || { fail "torn/$f differs from ref/$f: $(cmp "ref/$f" "torn/$f" 2>&1 | head -1)"; return 1; }
    done
    [ -z "$(find torn -name '*.tmp.*')" ] || { fail "temporary files left: $(ls torn)"; return 1; }
}
check "a row torn after the last checkpoint: --resume cuts it off and ends byte-identical to the reference" t_torn

# The interrupted-run message, from a copy of a run's checkpoint alone.
mkdir -p interrupted
cp ref/checkpoint.safetensors ref/config.json ref/metrics.csv interrupted/
expect_fail "a new run in an interrupted run's directory: exit 2, points to --resume" 2 "interrupted run" \
    "moe train --resume interrupted" "--force" -- "$MOE" train --config tiny.json --out interrupted
t_header() {
    sed -i '1s/^step,/stepp,/' interrupted/metrics.csv
    run hdr "$MOE" train --resume interrupted --quiet
    [ "$RC" -eq 1 ] && grep -Fq "interrupted/metrics.csv' does not start with the expected header row" hdr.err ||
        { fail "$(describe hdr train --resume interrupted)"; return 1; }
}
check "--resume of a table whose header changed: exit 1, names the file" t_header

# ---------------------------------------------------------------- refusing and clearing
expect_fail "a new run in a directory holding another run: exit 2, names it and --force" 2 "'tiny-ref' holds another run" \
    "summary.json" "--force" -- "$MOE" train --config tiny.json --out tiny-ref
expect_fail "compare-loss in a directory holding a run: exit 2" 2 "'tiny-ref' holds another run" -- \
    "$MOE" compare-loss --config tiny.json --losses nll --seeds 1 --out tiny-ref --quiet
t_refused_untouched() {
    [ -f tiny-ref/model.safetensors ] && [ -f tiny-ref/summary.json ] || { fail "the refused runs removed files"; return 1; }
}
check "refused runs leave the old run's files in place" t_refused_untouched

t_force() {
    rm -rf forced
    cp -r ref forced # an mlp-moe run: experts.csv; add a text run's files and one of the user's
    echo 'moe-vocab 1 bytes 256' >forced/vocab.txt
    echo 'step,epoch,split,language,tokens,bytes,loss,bits_per_byte' >forced/languages.csv
    echo 'my notes' >forced/notes.txt
    run forced "$MOE" train --config tiny.json --out forced --force
    [ "$RC" -eq 0 ] || { fail "$(describe forced train --force)"; return 1; }
    grep -Fq -- "--force: removed the previous run's files" forced.err ||
        { fail "no log line about the removed files: $(cat forced.err)"; return 1; }
    local f
    for f in experts.csv vocab.txt languages.csv; do
        [ ! -e "forced/$f" ] || { fail "forced/$f is left from the old run"; return 1; }
    done
    [ "$(cat forced/notes.txt)" = "my notes" ] || { fail "a file that is not moe's was touched"; return 1; }
    cmp -s tiny-ref/metrics.csv forced/metrics.csv && cmp -s tiny-ref/model.safetensors forced/model.safetensors ||
        { fail "the forced run differs from the same run in a fresh directory"; return 1; }
}
check "--force clears the old run (experts.csv, vocab.txt, languages.csv gone), keeps other files, same bytes" t_force

t_other_files() {
    rm -rf mine
    mkdir -p mine/empty-sub
    echo hello >mine/readme.txt
    run mine "$MOE" train --config tiny.json --out mine --quiet
    [ "$RC" -eq 0 ] || { fail "$(describe mine train --out mine)"; return 1; }
    [ "$(cat mine/readme.txt)" = hello ] || { fail "readme.txt changed"; return 1; }
    mkdir -p empty
    run empty "$MOE" train --config tiny.json --out empty --quiet
    [ "$RC" -eq 0 ] || { fail "$(describe empty train --out empty)"; return 1; }
}
check "an empty directory, or one with only files that are not moe's, is fine" t_other_files

# ---------------------------------------------------------------- stale temporary files
t_stale() {
    rm -rf stale
    cp -r tiny-ref stale
    rm -f stale/summary.json stale/model.safetensors # interrupted: resumable from its checkpoint
    sh -c 'exit 0' &
    local dead=$!
    wait "$dead"
    : >"stale/metrics.csv.tmp.$dead"
    : >"stale/checkpoint.safetensors.tmp.$dead"
    : >"stale/model.safetensors.tmp.$$" # this shell: alive, not moe, holds no lock
    : >"stale/notes.txt.tmp.$dead"      # not a name of moe's
    run stale "$MOE" train --resume stale --quiet
    [ "$RC" -eq 0 ] || { fail "$(describe stale train --resume stale)"; return 1; }
    [ ! -e "stale/metrics.csv.tmp.$dead" ] && [ ! -e "stale/checkpoint.safetensors.tmp.$dead" ] ||
        { fail "a dead process's temporary files were kept: $(ls stale)"; return 1; }
    [ -e "stale/model.safetensors.tmp.$$" ] || { fail "a live process's temporary file was removed"; return 1; }
    [ -e "stale/notes.txt.tmp.$dead" ] || { fail "a file that is not moe's was removed"; return 1; }
}
check "with the lock free, a dead process's temporary files go; a live process's and others' stay" t_stale

# ---------------------------------------------------------------- options
expect_fail "--force with --resume: exit 2" 2 "'--force' cannot be combined with '--resume'" -- \
    "$MOE" train --resume tiny-ref --force
expect_fail "--force where no run directory is written (eval): exit 2, names --ignore-memory" 2 \
    "unknown option '--force'" "--ignore-memory" -- "$MOE" eval --checkpoint tiny-ref/model.safetensors --force
t_ignore_memory() {
    run im "$MOE" eval --checkpoint tiny-ref/model.safetensors --ignore-memory --quiet
    [ "$RC" -eq 0 ] || { fail "$(describe im eval --ignore-memory)"; return 1; }
}
check "--ignore-memory is accepted (eval)" t_ignore_memory

echo "1..$N"
[ "$FAILED" -eq 0 ]
