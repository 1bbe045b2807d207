#!/usr/bin/env bash
# test_schedule.sh: the researcher's loop around a run's length and steps:
# extending a finished run (`moe train --resume DIR --set train.epochs=N`),
# learning-rate schedules (optim.schedule) and gradient accumulation
# (train.accumulate) as the CLI shows them.
#
#   bash tests/cli/test_schedule.sh /path/to/moe
#
# TAP-like output as test_cli.sh (tap.sh). The schedule's values and the
# accumulated gradients are checked in tests/test_train.c, resuming and
# extending at the library level in tests/test_checkpoint.c; the refused
# inputs are rows of bad_inputs.tsv (sched_*, accum_*, extend_*).
# shellcheck disable=SC2317  # check functions are called indirectly, via check
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# shellcheck source=tap.sh
. "$HERE/tap.sh"
tap_setup schedule "$@"

# A sparse model with state everywhere (AdamW, noisy routing, Shazeer's
# losses, batch rows every 4 steps). eval_every 3: a 2-epoch run writes rows
# at epoch 2 (its last) that a 4-epoch run does not.
cat >moe.json <<'EOF'
{ "data": { "synthetic": { "kind": "classes", "n_in": 6, "n_regions": 4, "n_train": 300, "n_test": 100 } },
  "model": { "type": "mlp-moe", "n_embd": 8, "n_layer": 2, "n_ff": 8, "n_expert": 4, "n_expert_used": 2 },
  "moe": { "router": "noisy-topk", "aux_loss": "shazeer" },
  "optim": { "batch_size": 32 }, "train": { "epochs": 2, "seed": 3, "log_every": 4, "eval_every": 3 } }
EOF
# A byte-level language model on a small generated text (languages.csv too).
for i in $(seq 1 300); do printf 'the quick brown fox %d jumps over the lazy dog %d times.\n' "$i" $((i * 7)); done >text.txt
cat >lm.json <<EOF
{ "data": { "source": "text", "text": { "path": "$TMP/text.txt", "windows_per_epoch": 64 } },
  "model": { "type": "transformer", "n_ctx": 16, "n_embd": 16, "n_layer": 2, "n_head": 2, "n_expert": 4,
             "n_expert_used": 1, "moe_every": 2 },
  "moe": { "router": "switch" },
  "optim": { "batch_size": 16 }, "train": { "epochs": 1, "seed": 2 } }
EOF

FILES=(metrics.csv experts.csv model.safetensors config.json)
# same A B FILES...: each file byte-identical in run directories A and B.
same() {
    local a=$1 b=$2 f
    shift 2
    for f in "$@"; do
        cmp -s "$a/$f" "$b/$f" || { fail "$a/$f differs from $b/$f: $(cmp "$a/$f" "$b/$f" 2>&1)"; return 1; }
    done
}

# sums DIR: checksums of a run directory's files, less moe.lock (the lock every
# moe process on the directory takes, holding that process's PID; README, Run directories).
sums() { md5sum "$1"/* | grep -v '/moe\.lock$'; }

# close A B: metrics.csv of runs A and B have the same step/epoch/split cells and
# every value within 1e-4 (relative, at least absolute).
close() {
    cut -d, -f1-3 "$1/metrics.csv" >"$1.keys"
    cut -d, -f1-3 "$2/metrics.csv" >"$2.keys"
    cmp -s "$1.keys" "$2.keys" || { fail "metrics rows differ in step/epoch/split: $(diff "$1.keys" "$2.keys" | head -5)"; return 1; }
    paste -d, "$1/metrics.csv" "$2/metrics.csv" | awk -F, -v n="$(head -1 "$1/metrics.csv" | awk -F, '{ print NF }')" '
        NR > 1 { for (i = 4; i <= n; i++) { a = $i; b = $(i + n); if (a == "" && b == "") continue;
                 d = a - b; if (d < 0) d = -d; s = (a < 0 ? -a : a); if (s < 1) s = 1;
                 if (d > 1e-4 * s) { print "line " NR " column " i ": " a " vs " b; bad = 1 } } }
        END { exit bad }' >"$1.diff" || { fail "values differ beyond 1e-4: $(head -3 "$1.diff")"; return 1; }
}

# an mlp-moe where accumulation must equal the large batch
DROPLESS=(--set moe.router=softmax --set moe.aux_loss=none --set moe.capacity_factor=0)

t_extend() {
    run ref "$MOE" train --config moe.json --set train.epochs=4 --out ref --quiet --threads 1 && ran ref || return 1
    run ext "$MOE" train --config moe.json --out ext --quiet --threads 1 && ran ext || return 1
    [ "$(grep -c ',test,' ext/metrics.csv)" -eq 2 ] || { fail "the 2-epoch run should have test rows at epochs 0 and 2"; return 1; }
    run ext2 "$MOE" train --resume ext --set train.epochs=4 --threads 2 && ran ext2 || return 1
    grep -q 'extending ext/ from 2 to 4 epochs' ext2.err || { fail "no log line saying what is extended: $(cat ext2.err)"; return 1; }
    same ext ref "${FILES[@]}" || return 1
    jqe ext2.out '.epochs == 4 and .extended_from_epochs == 2 and .steps == 40 and .resumed_at_step == 20' \
        "the summary of the extended run" || return 1
    jq -e --slurpfile r ref/summary.json '.final == $r[0].final and .config_hash == $r[0].config_hash' ext/summary.json \
        >/dev/null || { fail "summary.json's final metrics or config hash differ from the straight run's"; return 1; }
}
check "extend a finished run 2 -> 4 epochs (--threads 2): metrics.csv, experts.csv, model, config byte-identical to a 4-epoch run" t_extend

t_extend_again() {
    local before after
    before=$(sums ext)
    run again "$MOE" train --resume ext --set train.epochs=4 --quiet && ran again || return 1
    jqe again.out '.final.test and .epochs == 4' "stdout is the run's summary" || return 1
    after=$(sums ext)
    [ "$before" = "$after" ] || { fail "resuming the extended (finished) run changed its files"; return 1; }
}
check "the same length again: a finished run, its summary printed, nothing changed" t_extend_again

BEFORE=$(sums ext)
expect_fail "extend: fewer epochs than the run's: exit 2" 2 "train.epochs=3 is fewer than the 4 epochs of the run in ext/" -- \
        "$MOE" train --resume ext --set train.epochs=3
expect_fail "extend: another key with --resume: exit 2" 2 "'--set' cannot be combined with '--resume' for key 'optim.lr'" -- \
    "$MOE" train --resume ext --set train.epochs=6 --set optim.lr=0.5
t_unchanged() { [ "$BEFORE" = "$(sums ext)" ] || fail "a refused extension changed the run's files"; }
check "refused extensions leave every file as it was" t_unchanged

# An extension stopped by SIGTERM is an interrupted run of the new length: no
# model.safetensors (removed when the extension started), a summary marked
# interrupted, and a plain --resume finishes it with the straight run's bytes.
t_extend_stopped() {
    run s0 "$MOE" train --config moe.json --out stop --quiet --threads 1 && ran s0 || return 1
    "$MOE" train --resume stop --set train.epochs=60 --quiet --threads 1 >s1.out 2>s1.err &
    local pid=$! rc
    sleep 1
    kill -TERM "$pid" 2>/dev/null
    wait "$pid"
    rc=$?
    if [ "$rc" -eq 143 ]; then
        [ ! -e stop/model.safetensors ] || { fail "the stopped extension left the 2-epoch model.safetensors"; return 1; }
        jqe stop/summary.json '.interrupted' "the stopped extension's summary is marked interrupted" || return 1
        run s2 "$MOE" train --resume stop --quiet --threads 1 && ran s2 || return 1
    else
        [ "$rc" -eq 0 ] || { fail "extension: exit $rc: $(cat s1.err)"; return 1; }
        echo "# the extension finished before SIGTERM"
    fi
    run s3 "$MOE" train --config moe.json --set train.epochs=60 --out stop60 --quiet --threads 1 && ran s3 || return 1
    same stop stop60 "${FILES[@]}"
}
check "an extension stopped by SIGTERM, resumed: the files of a 60-epoch run" t_extend_stopped

t_extend_lm() {
    run lref "$MOE" train --config lm.json --set train.epochs=2 --out lref --quiet --threads 1 && ran lref || return 1
    run lext "$MOE" train --config lm.json --out lext --quiet --threads 1 && ran lext || return 1
    run lext2 "$MOE" train --resume lext --set train.epochs=2 --quiet --threads 1 && ran lext2 || return 1
    same lext lref "${FILES[@]}" languages.csv vocab.txt
}
check "extend a byte-level LM 1 -> 2 epochs: every table and the model byte-identical" t_extend_lm

t_cosine() {
    run c "$MOE" train --config moe.json --set optim.schedule=cosine --set optim.warmup_steps=4 --out cos --quiet &&
        ran c || return 1
    jqe c.out '.schedule.name == "cosine" and .schedule.decay_steps == 20 and .schedule.warmup_steps == 4 and
        .schedule.lr_last > 0 and .schedule.lr_last < 0.0001' "cosine's summary: decay over the 20 steps, last rate near 0" '.schedule' || return 1
    local before after
    before=$(sums cos)
    expect_fail "extend: cosine over the run's length: exit 2" 2 "cannot extend the run in cos/ from 2 to 3 epochs: its optim.schedule 'cosine' decays over the run's length" -- \
        "$MOE" train --resume cos --set train.epochs=3
    after=$(sums cos)
    [ "$before" = "$after" ] || { fail "the refused extension changed the run's files"; return 1; }
    # with optim.decay_steps the schedule no longer depends on the length: extension is exact
    run d1 "$MOE" train --config moe.json --set optim.schedule=linear --set optim.decay_steps=35 --out lin --quiet &&
        ran d1 || return 1
    run d2 "$MOE" train --resume lin --set train.epochs=3 --quiet && ran d2 || return 1
    run d3 "$MOE" train --config moe.json --set optim.schedule=linear --set optim.decay_steps=35 --set train.epochs=3 \
        --out lin3 --quiet && ran d3 || return 1
    same lin lin3 "${FILES[@]}"
}
check "cosine over the run's length: summary, extension refused; linear with decay_steps: extension exact" t_cosine

t_default() {
    jqe ref/summary.json '.schedule == {"name": "constant", "lr": 0.01, "min_lr": 0, "warmup_steps": 0,
        "decay_steps": null, "lr_last": 0.01} and .accumulate == 1 and .steps_per_epoch == 10' \
        "the default schedule in the summary" '{schedule, accumulate, steps_per_epoch}'
}
check "the default: constant rate, no accumulation, in the summary" t_default

t_accumulate() {
    run big "$MOE" train --config moe.json "${DROPLESS[@]}" --set optim.batch_size=64 --out big --quiet && ran big || return 1
    run acc "$MOE" train --config moe.json "${DROPLESS[@]}" --set optim.batch_size=16 --set train.accumulate=4 --out acc \
        --quiet && ran acc || return 1
    jqe acc.out '.steps == 10 and .steps_per_epoch == 5 and .accumulate == 4' "accumulate 4 x 16: 5 steps per epoch" \
        '{steps, steps_per_epoch, accumulate}' || return 1
    close big acc # the same rows at the same steps, the values equal up to float rounding
}
check "accumulate 4 x batch 16 = batch 64 (dropless, no aux loss): same steps and rows, metrics within 1e-4" t_accumulate

# The other commands that train: lora (adapters in the accumulated sum),
# distill (a teacher pass per micro-batch) and compare-loss.
t_commands() {
    local sched=(--set optim.schedule=cosine --set optim.warmup_steps=2)
    run l1 "$MOE" lora --base ref/model.safetensors --config moe.json --rank 2 --targets 'layers.*.moe.experts.*' \
        "${DROPLESS[@]}" "${sched[@]}" --set optim.batch_size=64 --out lora1 --quiet && ran l1 || return 1
    run l2 "$MOE" lora --base ref/model.safetensors --config moe.json --rank 2 --targets 'layers.*.moe.experts.*' \
        "${DROPLESS[@]}" "${sched[@]}" --set optim.batch_size=16 --set train.accumulate=4 --out lora2 --quiet &&
        ran l2 || return 1
    jqe l2.out '.steps == 10 and .accumulate == 4 and .schedule.name == "cosine"' "lora: accumulate 4, cosine" \
        '{steps, accumulate, schedule}' || return 1
    close lora1 lora2 || return 1
    run di "$MOE" distill --teacher ref/model.safetensors --config moe.json --set optim.schedule=linear \
        --set train.accumulate=2 --out dist --quiet && ran di || return 1
    jqe di.out '.steps == 10 and .accumulate == 2 and .schedule.decay_steps == 10' "distill: linear over 10 steps" \
        '{steps, accumulate, schedule}' || return 1
    run cl "$MOE" compare-loss --config moe.json --set model.n_expert=3 --losses nll,mlp --seeds 1 --set optim.schedule=inv_sqrt \
        --set optim.warmup_steps=3 --set train.accumulate=2 --out cl --quiet && ran cl || return 1
    [ "$(awk -F, 'NR > 1 && $4 == 10' cl/curves.csv | wc -l)" -eq 2 ] ||
        { fail "compare-loss: expected each system at step 10 (2 epochs of 5 steps): $(head -5 cl/curves.csv)"; return 1; }
}
check "lora (accumulate 4 x 16 = 64 within 1e-4), distill and compare-loss take schedules and accumulation" t_commands

t_progress_lr() {
    run p "$MOE" train --config moe.json --set optim.schedule=linear --set train.epochs=40 --out prog --progress-every 0.05 &&
        ran p || return 1
    local last
    last=$(grep '^step ' p.err | tail -1)
    [ -n "$last" ] || { fail "no progress line: $(cat p.err)"; return 1; }
    printf '%s\n' "$last" | grep -Eq '^step 400/400 \(100%\)  epoch 40/40  loss [-0-9.e+]+  lr 2\.5e-05  ' ||
        { fail "the last progress line lacks the last step's rate (2.5e-05): $last"; return 1; }
}
check "a schedule's rate on the progress line (linear: the last step's, lr/400)" t_progress_lr

echo "1..$N"
[ "$FAILED" -eq 0 ]
