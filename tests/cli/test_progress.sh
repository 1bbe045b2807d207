#!/usr/bin/env bash
# test_progress.sh: the progress line of the training commands on stderr
# (cmd/progress.h).
#
#   bash tests/cli/test_progress.sh /path/to/moe
#
# TAP-like output (tap.sh). Checks, with stderr a file and a short
# --progress-every: every progress line has the documented format, steps
# increase, the last line is the last step (100%), the other stderr lines are
# the usual log lines; stdout is exactly one JSON object; --quiet leaves stderr
# empty; the outputs are byte-identical with and without the progress line;
# the default period (10 s) keeps a short run free of progress lines; moe lora,
# moe distill and moe compare-loss (each run labelled) print it too; a run
# stopped by SIGTERM ends its stderr with one clean line. Under a
# pseudo-terminal (script(1), skipped without it) the line is redrawn in place
# ('\r', clear to end of line) and ended with a newline before the next stderr
# line. Bad values of --progress-every are rows of bad_inputs.tsv (cli_progress_every_*).
# shellcheck disable=SC2317  # check functions are called indirectly, via check
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# shellcheck source=tap.sh
. "$HERE/tap.sh"
tap_setup progress "$@"

# A mixture of 4 linear experts, 2000 rows in batches of 64: 32 steps an epoch,
# 40 epochs = 1280 steps, about a second.
cat >q.json <<'EOF'
{
  "data": { "source": "synthetic", "synthetic": { "kind": "regions", "n_train": 2000, "n_test": 1000, "n_in": 2, "n_out": 1, "n_regions": 4, "noise": 0.1 } },
  "model": { "type": "mixture", "n_expert": 4, "expert": "linear" },
  "loss": { "type": "nll" },
  "optim": { "type": "adamw", "lr": 0.01, "batch_size": 64 },
  "train": { "epochs": 40, "eval_every": 1, "seed": 1 }
}
EOF
# mlp-moe, switch routing, 4 classes: the base of lora and the teacher of distill.
cat >moe.json <<'EOF'
{
  "data": { "source": "synthetic", "synthetic": { "kind": "classes", "n_in": 6, "n_regions": 4, "n_train": 240, "n_test": 80 } },
  "model": { "type": "mlp-moe", "n_embd": 8, "n_layer": 2, "n_ff": 8, "n_expert": 4, "n_expert_used": 1 },
  "moe": { "router": "switch" },
  "optim": { "type": "adamw", "lr": 0.01, "batch_size": 16 },
  "train": { "epochs": 2, "seed": 3 }
}
EOF

NUM='[0-9.]+[kM]?'
# progress_lines FILE TOTAL EPOCHS UNIT [PREFIX]: FILE's progress lines, each of the documented format:
#   step S/TOTAL (P%)  epoch E/EPOCHS  loss L  R UNIT/s  ETA M:SS
# (the first may lack the rate and ETA); steps strictly increasing, epochs not
# decreasing, the last line step TOTAL/TOTAL (100%); at least two lines.
progress_lines() {
    local f=$1 total=$2 epochs=$3 unit=$4 pre=${5:-}
    local re="^${pre}step [0-9]+/$total \\([0-9]+%\\)  epoch [0-9]+/$epochs  loss [-0-9.e+]+(  $NUM $unit/s  ETA [0-9]+:[0-9]{2}(:[0-9]{2})?)?\$"
    local lines bad
    lines=$(grep -a "^${pre}step " "$f")
    [ "$(printf '%s\n' "$lines" | grep -c .)" -ge 2 ] || { fail "fewer than 2 progress lines in $f: $(head -c 600 "$f")"; return 1; }
    bad=$(printf '%s\n' "$lines" | grep -Ev "$re")
    [ -z "$bad" ] || { fail "progress lines not of the format /$re/: $(printf '%s' "$bad" | head -3)"; return 1; }
    printf '%s\n' "$lines" | sed "s/^$pre//" | awk -v t="$total" '
        { s = $2; sub("/.*", "", s); e = $6; sub("/.*", "", e)
          if (NR > 1 && (s + 0 <= ps || e + 0 < pe)) { print "line " NR ": step " s " epoch " e " after step " ps " epoch " pe; exit 1 }
          ps = s + 0; pe = e + 0; last = $0 }
        END { if (last !~ ("^step " t "/" t " \\(100%\\)  ")) { print "last line is not step " t "/" t " (100%): " last; exit 1 } }' >why.txt ||
        { fail "$(cat why.txt)"; return 1; }
}
# one_json FILE: exactly one line, one JSON object.
one_json() {
    [ "$(wc -l <"$1")" -eq 1 ] && jq -e -s 'length == 1 and (.[0] | type == "object")' "$1" >/dev/null 2>&1 ||
        { fail "stdout is not exactly one JSON object: $(head -c 300 "$1")"; return 1; }
}

run p "${TO[@]}" "$MOE" train --config q.json --out p --threads 1 --progress-every 0.01
t_lines() {
    ran p || return 1
    progress_lines p.err 1280 40 rows || return 1
    local other
    other=$(grep -v '^step ' p.err | grep -v '^moe train: ')
    [ -z "$other" ] || { fail "stderr lines that are neither progress nor log lines: $(printf '%s' "$other" | head -c 300)"; return 1; }
    [ "$(grep -c '^moe train: ' p.err)" -eq 2 ] || { fail "expected the 2 log lines: $(grep '^moe' p.err)"; return 1; }
    grep -q $'\r' p.err && { fail "'\\r' in stderr that is not a terminal"; return 1; }
    return 0
}
check "--progress-every 0.01 (the run lasts about 0.1 s on a fast core), stderr a file: progress lines of the format, steps increasing, last line 1280/1280 (100%)" t_lines
check "stdout stays exactly one JSON object with progress lines on stderr" one_json p.out

run q "${TO[@]}" "$MOE" train --config q.json --out q --threads 1 --progress-every 0.1 --quiet
t_quiet() {
    ran q || return 1
    [ ! -s q.err ] || { fail "--quiet: stderr is not empty: $(head -c 300 q.err)"; return 1; }
    one_json q.out
}
check "--quiet: stderr empty, stdout one JSON object" t_quiet

t_same() {
    ran p && ran q || return 1
    local f
    for f in metrics.csv model.safetensors config.json; do
        cmp -s "p/$f" "q/$f" || { fail "p/$f differs from q/$f (with and without progress): $(cmp "p/$f" "q/$f" 2>&1)"; return 1; }
    done
    jq -e -s '.[0] == .[1]' <(jq -S 'del(.wall_seconds, .train_rows_per_second, .train_tokens_per_second, .train_gflops, .threads, .out, .argv)' p/summary.json) \
        <(jq -S 'del(.wall_seconds, .train_rows_per_second, .train_tokens_per_second, .train_gflops, .threads, .out, .argv)' q/summary.json) >/dev/null ||
        { fail "summaries differ beyond timing"; return 1; }
}
check "byte-identical metrics.csv and model.safetensors with and without the progress line" t_same

t_default() {
    run d "${TO[@]}" "$MOE" train --config q.json --set train.epochs=3 --out d --threads 1
    ran d || return 1
    ! grep -q '^step ' d.err || { fail "a run shorter than the default period (10 s) printed progress: $(head -c 300 d.err)"; return 1; }
    [ "$(wc -l <d.err)" -eq 2 ] || { fail "expected just the 2 log lines: $(head -c 300 d.err)"; return 1; }
    one_json d.out
}
check "default period 10 s: a short run prints no progress line, only its 2 log lines" t_default

t_lora_distill() {
    run base "${TO[@]}" "$MOE" train --config moe.json --out base --threads 1 --quiet
    ran base || return 1
    run lo "${TO[@]}" "$MOE" lora --base base/model.safetensors --config moe.json --set train.epochs=80 --rank 2 \
        --targets '*.experts.*' --out lo --threads 1 --progress-every 0.05
    ran lo || return 1
    progress_lines lo.err 1200 80 rows && one_json lo.out || return 1
    run di "${TO[@]}" "$MOE" distill --teacher base/model.safetensors --config moe.json --set train.epochs=80 \
        --out di --threads 1 --progress-every 0.05
    ran di || return 1
    progress_lines di.err 1200 80 rows && one_json di.out
}
check "moe lora and moe distill print the progress line (1200 steps, 80 epochs)" t_lora_distill

t_compare() {
    run cl "${TO[@]}" "$MOE" compare-loss --config q.json --set train.epochs=300 --losses nll,competitive --seeds 1 --out cl \
        --threads 1 --progress-every 0.05
    ran cl || return 1
    progress_lines cl.err 9600 300 rows 'compare-loss: nll seed 1: ' &&
        progress_lines cl.err 9600 300 rows 'compare-loss: competitive seed 1: ' && one_json cl.out
}
check "moe compare-loss: a progress line per run, labelled with system and seed" t_compare

t_sigterm() {
    "$MOE" train --config q.json --set train.epochs=4000 --out s --threads 1 --progress-every 0.05 >s.out 2>s.err &
    local pid=$! i
    for i in $(seq 100); do grep -q '^step ' s.err 2>/dev/null && break; sleep 0.05; done
    kill -TERM "$pid"
    wait "$pid"
    local rc=$?
    [ "$rc" -eq 143 ] || { fail "exit $rc, expected 143: $(tail -c 300 s.err)"; return 1; }
    tail -n 1 s.err | grep -q '^moe train: interrupted by SIGTERM at step [0-9]*; checkpoint written' ||
        { fail "the last stderr line is not the interruption: $(tail -n 2 s.err)"; return 1; }
    local other
    other=$(grep -v '^step [0-9]*/128000 ([0-9]*%)  epoch [0-9]*/4000  ' s.err | grep -v '^moe train: ')
    [ -z "$other" ] || { fail "stray stderr lines: $(printf '%s' "$other" | head -c 300)"; return 1; }
    one_json s.out
}
check "SIGTERM: progress lines, then the interruption as one clean last line; stdout one JSON object" t_sigterm

# ---------------------------------------------------------------- a terminal
if command -v script >/dev/null 2>&1 && script -qec true /dev/null >/dev/null 2>&1; then
    t_tty() {
        # stderr is the pseudo-terminal; stdout goes to a file
        script -qec "$MOE train --config q.json --out t --threads 1 >t.out" /dev/null >t.tty 2>&1 </dev/null ||
            { fail "script exited $?: $(head -c 300 t.tty | cat -v)"; return 1; }
        grep -aq $'\rstep [0-9]*/1280 ([0-9]*%)  epoch [0-9]*/40  loss [^\r]*\e\\[K' t.tty ||
            { fail "no line redrawn with '\\r' and clear-to-end: $(head -c 400 t.tty | cat -v)"; return 1; }
        grep -aq $'\rstep 1280/1280 (100%)  epoch 40/40  [^\r]*\e\\[K\r$' t.tty ||
            { fail "the last redraw is not step 1280/1280 ended by a newline: $(tail -c 400 t.tty | cat -v)"; return 1; }
        grep -aq '^moe train: done in ' t.tty || { fail "the done line does not start a line: $(tail -c 300 t.tty | cat -v)"; return 1; }
        one_json t.out || return 1
        script -qec "$MOE train --config q.json --out tq --threads 1 --quiet >tq.out" /dev/null >tq.tty 2>&1 </dev/null
        [ ! -s tq.tty ] || { fail "--quiet at a terminal printed: $(head -c 300 tq.tty | cat -v)"; return 1; }
    }
    check "at a terminal: redrawn in place ('\\r', ESC[K), ended with a newline; --quiet prints nothing" t_tty
    t_tty_error() {
        # an error during training (divergence after some steps) ends the line drawn in place first
        script -qec "$MOE train --config q.json --set optim.lr=1000 --set optim.type=sgd --out te --threads 1 >te.out" /dev/null \
            >te.tty 2>&1 </dev/null
        grep -aq $'\rstep ' te.tty || { fail "no progress line before the error: $(tail -c 400 te.tty | cat -v)"; return 1; }
        grep -aq '^moe train: step [0-9]* (epoch 1): .*not finite' te.tty ||
            { fail "the error does not start a line: $(tail -c 400 te.tty | cat -v)"; return 1; }
        [ ! -s te.out ] || { fail "stdout not empty"; return 1; }
    }
    check "at a terminal: an error during training starts a line of its own" t_tty_error
else
    ok "# SKIP no script(1) for a pseudo-terminal"
fi

echo "1..$N"
[ "$FAILED" -eq 0 ]
