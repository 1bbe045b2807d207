#!/usr/bin/env bash
# test_moebert.sh: `moe distill --mode moebert` (a dense model turned into an
# MoE, train/moebert.h) end to end through the `moe` binary.
#
#   bash tests/cli/test_moebert.sh /path/to/moe
#
# TAP-like output, plan line "1..N", exit 1 if any check failed. Everything runs
# in a mktemp -d directory removed on exit; the models are tiny (mlp-moe D = 8
# on synthetic classes; a byte-level Transformer D = 16 over a generated text).
# Checks:
#   - importance.csv: one row per (converted block, teacher neuron), ranks a
#     permutation in order of decreasing importance, the first --shared ranks
#     "shared", then n_expert * (n_ff - shared) "routed" rows dealt round-robin
#     (rank r to expert (r - shared) mod E), the rest "dropped";
#   - summary.distill.moebert: the split's numbers, the teacher's test quality
#     (equal to the teacher's own summary), the converted student's test quality
#     (equal to the run's step-0 test row in metrics.csv: the conversion is what
#     training starts from);
#   - --split random: the same importance column, another order, a random
#     permutation of ranks;
#   - the same seed twice and --threads 1 vs 2: byte-identical importance.csv,
#     metrics.csv, model.safetensors;
#   - SIGTERM mid-run and `moe train --resume`: byte-identical to the
#     uninterrupted run, the summary keeps distill.moebert;
#   - a Transformer LM: dense teacher -> hash-routed experts, bits per byte
#     right after conversion;
#   - and the opposite direction, `--mode sparse-to-dense`: an MoE teacher's
#     tensors that the dense student shares by name and shape (input, norms,
#     head) are the student's start, byte for byte (seen at lr 0), and are the
#     ones summary.distill.initialised_from_teacher lists;
#   - distill --baseline: fractions of the teacher-baseline gap only where there is one.
# shellcheck disable=SC2317,SC2015  # check functions are called via check; A && B || fail is meant
set -u
export LC_ALL=C
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# shellcheck source=tap.sh
. "$HERE/tap.sh"
tap_setup moebert "$@"

# distx OUT ARGS...: moe distill --mode moebert --out OUT --quiet ARGS (--threads 1 unless given); RC set.
distx() {
    local d=$1
    shift
    rm -rf "$d"
    case " $* " in *" --threads "*) ;; *) set -- --threads 1 "$@" ;; esac
    run "$d" "${TO[@]}" "$MOE" distill --mode moebert --out "$d" --quiet "$@"
}
# test_row DIR STEP: the test split's metrics.csv row of evaluation STEP, from the loss column on.
test_row() { awk -F, -v s="$2" 'NR > 1 && $1 == s && $3 == "test"' "$1/metrics.csv" | cut -d, -f4-; }

# ------------------------------------------------------------------ fixtures
# dense teacher: two blocks with FFNs of 16 neurons; the students: 4 experts per block
cat >dense.json <<'EOF'
{
  "data": { "source": "synthetic", "synthetic": { "kind": "classes", "n_in": 6, "n_regions": 4, "n_train": 400, "n_test": 120 } },
  "model": { "type": "mlp-moe", "n_embd": 8, "n_layer": 2, "moe_every": 9, "n_ff_dense": 16, "n_ff": 4, "n_expert": 4,
             "n_expert_used": 1 },
  "moe": { "router": "switch" },
  "optim": { "type": "adamw", "lr": 0.01, "batch_size": 16 },
  "train": { "epochs": 3, "seed": 3 }
}
EOF
run teacher "${TO[@]}" "$MOE" train --config dense.json --out teacher --threads 1 --quiet
[ "$RC" -eq 0 ] && [ -s teacher/model.safetensors ] || echo "Bail out! the teacher run failed: $(head -c 400 teacher.err)"
T=$TMP/teacher/model.safetensors
# experts of 5 neurons, 2 shared: 2 + 4 x 3 = 14 of 16 neurons used, 2 dropped per block
SPLIT=(--teacher "$T" --config dense.json --set model.moe_every=1 --set model.n_ff=5 --shared 2)

# check_importance DIR ORDERED: importance.csv of a run with 2 blocks of 16 neurons, 2 shared,
# 4 experts of 5; ORDERED=1: ranks follow decreasing importance.
check_importance() {
    local d=$1 ordered=$2 bad
    [ "$(head -1 "$d/importance.csv")" = "layer,neuron,importance,rank,role,expert" ] || { fail "importance.csv header: $(head -1 "$d/importance.csv")"; return 1; }
    [ "$(($(wc -l <"$d/importance.csv") - 1))" -eq 32 ] || { fail "importance.csv has $(($(wc -l <"$d/importance.csv") - 1)) rows, expected 2 x 16"; return 1; }
    bad=$(awk -F, -v ordered="$ordered" 'NR == 1 { next }
        { n[$1]++; r[$1, $4] = $3; c[$1, $4]++
          want = $4 < 2 ? "shared" : $4 < 14 ? "routed" : "dropped"
          if ($5 != want) print "layer " $1 " neuron " $2 " rank " $4 ": role " $5 ", expected " want
          e = $4 >= 2 && $4 < 14 ? ($4 - 2) % 4 : -1
          if ($6 != e) print "layer " $1 " rank " $4 ": expert " $6 ", expected " e
          if ($3 < 0) print "negative importance " $3 }
        END { for (l = 0; l < 2; l++) { if (n[l] != 16) print "layer " l ": " n[l] " rows"
                for (k = 0; k < 16; k++) { if (c[l, k] != 1) print "layer " l ": rank " k " appears " c[l, k] " times"
                  if (ordered && k > 0 && r[l, k] > r[l, k - 1]) print "layer " l ": rank " k " more important than rank " k - 1 } } }' "$d/importance.csv") ||
        { fail "awk failed on $d/importance.csv"; return 1; }
    [ -z "$bad" ] || { fail "$bad"; return 1; }
}

t_importance() {
    distx mb "${SPLIT[@]}"
    ran mb || return 1
    check_importance mb 1
}
check "moebert --shared 2, n_ff 5: importance.csv ranks by importance, 2 shared, 12 dealt round-robin, 2 dropped per block" t_importance

t_summary() {
    [ -s mb/summary.json ] || { fail "no summary"; return 1; }
    local acc
    acc=$(jq .final.test.accuracy teacher/summary.json)
    jqe mb/summary.json '.distill.moebert | .split == "importance" and .shared_neurons == 2 and .experts == 4 and .expert_neurons == 5 and .teacher_neurons == 16 and .weight == 5 and (.layers | map(.dropped_neurons) == [2, 2])' \
        "summary.distill.moebert" .distill.moebert || return 1
    jqe mb/summary.json ".distill.moebert.teacher_test.accuracy == $acc" "the teacher's test accuracy differs from its own summary's $acc" .distill.moebert.teacher_test || return 1
    jqe mb/summary.json '.distill.moebert.converted_test.accuracy | type == "number"' "no converted accuracy" .distill.moebert || return 1
    jqe mb/config.json '.distill.moebert == true and .distill.shared == 2 and .distill.split == "importance"' "config.json lacks the moebert keys" .distill || return 1
    # the step-0 evaluation is the converted model's
    local conv row
    conv=$(jq -r '.distill.moebert.converted_test | "\(.loss) \(.accuracy)"' mb/summary.json)
    row=$(test_row mb 0 | awk -F, '{ print $1 " " $3 }')
    awk -v a="$conv" -v b="$row" 'BEGIN { split(a, x, " "); split(b, y, " ")
        exit !(x[1] - y[1] < 1e-6 && y[1] - x[1] < 1e-6 && x[2] == y[2]) }' ||
        { fail "converted_test ($conv) is not the step-0 test row ($row)"; return 1; }
}
check "summary.distill.moebert: split, shared, dropped; teacher accuracy = its own summary's; converted = the step-0 test row" t_summary

t_random() {
    distx mbr "${SPLIT[@]}" --split random
    ran mbr || return 1
    check_importance mbr 0 || return 1
    [ "$(cut -d, -f1-3 mb/importance.csv)" = "$(cut -d, -f1-3 mbr/importance.csv)" ] || { fail "the random split changed the importance column"; return 1; }
    [ "$(cut -d, -f4 mb/importance.csv)" != "$(cut -d, -f4 mbr/importance.csv)" ] || { fail "--split random kept the importance order"; return 1; }
    jqe mbr/summary.json '.distill.moebert.split == "random"' "split not random" .distill.moebert
}
check "moebert --split random: the same importance, another (random) order, the same dealing rules" t_random

t_repeat() {
    distx mb2 "${SPLIT[@]}" --threads 2
    ran mb2 || return 1
    local f
    for f in importance.csv metrics.csv experts.csv model.safetensors; do
        cmp -s "mb/$f" "mb2/$f" || { fail "$f differs between --threads 1 and --threads 2"; return 1; }
    done
}
check "moebert at --threads 1 and 2: byte-identical importance.csv, metrics.csv, experts.csv, model.safetensors" t_repeat

# ---------------------------------------------------------- resume
jq '.data.synthetic.n_train = 4000 | .train.epochs = 3 | .train.checkpoint_every = 25' dense.json >long.json
t_resume() {
    local args=(--teacher "$T" --config long.json --set model.moe_every=1 --set model.n_ff=5 --shared 2)
    distx ref "${args[@]}"
    ran ref || return 1
    local wall tries=0 d=int
    wall=$(jq -r .wall_seconds ref/summary.json)
    while :; do
        tries=$((tries + 1))
        rm -rf "$d"
        "$MOE" distill --mode moebert "${args[@]}" --threads 1 --quiet --out "$d" >"$d.out" 2>"$d.err" &
        local pid=$!
        sleep "$(awk -v w="$wall" -v r=$((RANDOM % 36 + 30)) -v k=$tries 'BEGIN { printf "%.3f", w * r / 100 / k }')"
        kill -TERM "$pid" 2>/dev/null
        wait "$pid"
        local rc=$?
        [ "$rc" -eq 143 ] && [ -f "$d/checkpoint.safetensors" ] && break
        [ $tries -lt 5 ] && continue
        fail "SIGTERM: exit $rc after $tries tries: $(head -c 400 "$d.err")"
        return 1
    done
    run "$d.2" "${TO[@]}" "$MOE" train --resume "$d" --threads 1 --quiet
    [ "$RC" -eq 0 ] || { fail "resume: $(describe "$d.2" moe train --resume "$d")"; return 1; }
    local f
    for f in importance.csv metrics.csv experts.csv model.safetensors; do
        cmp -s "ref/$f" "$d/$f" || { fail "$d/$f differs from the uninterrupted run's"; return 1; }
    done
    jqe "$d/summary.json" ".distill.moebert == $(jq -c .distill.moebert ref/summary.json)" "the resumed summary's distill.moebert differs" .distill.moebert
}
check "moebert stopped by SIGTERM and resumed with 'moe train --resume': byte-identical to the uninterrupted run" t_resume

# ---------------------------------------------------------- a Transformer LM
mkdir -p corpus
awk 'BEGIN { x = 7
    split("the a of and to in is was that it he for on are as with his they at be this from have or by one had not but what all were", w, " ")
    for (s = 0; s < 160; s++) { n = 4 + s % 5; line = ""
        for (i = 0; i < n; i++) { x = (x * 16807) % 2147483647; line = line (i ? " " : "") w[1 + int(x / 2147483647 * 40)] }
        printf "%s. ", line; if (s % 6 == 5) printf "\n" } }' >corpus/en.txt
cat >lm.json <<EOF
{
  "data": { "source": "text", "text": { "path": "$TMP/corpus", "valid_fraction": 0.15, "train_eval_windows": 48 } },
  "model": { "type": "transformer", "n_ctx": 16, "n_embd": 16, "n_head": 2, "n_layer": 2, "n_ff": 8,
             "n_ff_dense": 32, "moe_every": 9, "n_expert": 4, "n_expert_used": 1 },
  "moe": { "router": "hash", "hash_table": "balanced" },
  "optim": { "lr": 0.01, "batch_size": 16 },
  "train": { "epochs": 1, "seed": 5 }
}
EOF
t_lm() {
    run lmt "${TO[@]}" "$MOE" train --config lm.json --out lmt --threads 1 --quiet
    ran lmt || return 1
    distx lmmb --teacher "$TMP/lmt/model.safetensors" --config lm.json --set model.moe_every=2
    ran lmmb || return 1
    [ "$(($(wc -l <lmmb/importance.csv) - 1))" -eq 32 ] || { fail "importance.csv: $(($(wc -l <lmmb/importance.csv) - 1)) rows, expected 32 (block 1)"; return 1; }
    [ "$(awk -F, 'NR > 1 { print $1 }' lmmb/importance.csv | sort -u)" = 1 ] || { fail "importance.csv is not of block 1 only"; return 1; }
    jqe lmmb/summary.json '.distill.moebert | (.converted_test.bits_per_byte | type == "number") and .teacher_test.bits_per_byte == .teacher_test.bits_per_byte and .layers == [{"layer": 1, "dropped_neurons": 0}]' \
        "summary.distill.moebert of the LM" .distill.moebert || return 1
    jqe lmmb/summary.json ".distill.moebert.teacher_test.bits_per_byte == $(jq .final.test.bits_per_byte lmt/summary.json)" \
        "the teacher's bits per byte differ from its own summary's" .distill.moebert
}
check "moebert on a Transformer LM: block 1 split (32 neurons into 4 x 8), bits per byte of teacher and converted student" t_lm

# ------------------------------------------------ sparse-to-dense (the reverse)
t_sparse_to_dense() {
    run sw "${TO[@]}" "$MOE" train --config dense.json --set model.moe_every=1 --out sw --threads 1 --quiet
    ran sw || return 1
    run s2d "${TO[@]}" "$MOE" distill --mode sparse-to-dense --teacher "$TMP/sw/model.safetensors" --config dense.json \
        --set optim.lr=0 --set train.epochs=1 --out s2d --threads 1 --quiet
    ran s2d || return 1
    local want got
    want=$(join -t $'\t' <(st_digests sw/model.safetensors) <(st_digests s2d/model.safetensors) | awk -F'\t' '$2 == $3 { print $1 }' |
           grep -v '^data[.]' | sort)
    got=$(jq -r '.distill.initialised_from_teacher[]' s2d/summary.json | sort)
    [ -n "$want" ] && [ "$want" = "$got" ] || { fail "tensors equal to the teacher's: [${want//$'\n'/ }]; initialised_from_teacher: [${got//$'\n'/ }]"; return 1; }
    [ "$got" = "$(printf '%s\n' head.bias head.weight input.bias input.weight layers.0.norm.bias layers.0.norm.weight \
                  layers.1.norm.bias layers.1.norm.weight norm.bias norm.weight)" ] ||
        { fail "initialised_from_teacher: [${got//$'\n'/ }], expected the input, norms and head"; return 1; }
    jqe s2d/summary.json '.distill.mode == "sparse-to-dense"' "distill.mode" .distill
}
check "distill --mode sparse-to-dense: input, norms and head start as the MoE teacher's bytes; the summary lists exactly those" t_sparse_to_dense

# ------------------------------------------------ distill --baseline: the gap
# A baseline as good as the teacher (the teacher itself) leaves no gap: the fractions are null with
# a reason; a worse baseline (an untrained copy: lr 0) gives numbers.
t_gap() {
    run same "${TO[@]}" "$MOE" distill --teacher "$T" --baseline "$T" --config dense.json --set train.epochs=1 \
        --out same --threads 1 --quiet
    ran same || return 1
    jqe same/summary.json '.distill.gap.fraction_recovered == null and
        (.distill.gap.fraction_recovered_reason | startswith("the teacher (accuracy ")) and
        .distill.gap.fraction_recovered_loss == null and (.distill.gap.fraction_recovered_loss_reason | test("does not beat"))' \
        "no gap: null fractions with reasons" .distill.gap || return 1
    run untrained "${TO[@]}" "$MOE" train --config dense.json --set optim.lr=0 --set train.epochs=1 --out untrained \
        --threads 1 --quiet
    ran untrained || return 1
    run worse "${TO[@]}" "$MOE" distill --teacher "$T" --baseline "$TMP/untrained/model.safetensors" --config dense.json \
        --set train.epochs=1 --out worse --threads 1 --quiet
    ran worse || return 1
    jqe worse/summary.json '.distill.gap.teacher > .distill.gap.baseline and
        (.distill.gap.fraction_recovered | type) == "number" and (.distill.gap | has("fraction_recovered_reason") | not) and
        (.distill.gap.fraction_recovered_loss | type) == "number"' "a gap: numeric fractions" .distill.gap
}
check "distill --baseline: no gap (baseline = teacher) gives null fractions with a reason; a worse baseline gives numbers" t_gap

echo "1..$N"
[ "$FAILED" -eq 0 ]
