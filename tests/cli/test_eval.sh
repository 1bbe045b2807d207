#!/usr/bin/env bash
# test_eval.sh: `moe eval` and `moe generate` end to end through the `moe`
# binary, on tiny models trained here (a few seconds in all, --threads 1).
#
#   bash tests/cli/test_eval.sh /path/to/moe
#
# TAP-like output ("ok N - name" / "not ok N - name" with "#" reasons), plan
# line "1..N", exit 1 if any check failed. Checks:
#   - eval's JSON object equals summary.json's final.test (default split) and
#     final.train (--data train), value for value (jq), for an mlp-moe on
#     synthetic classes (standardised features, evaluation in several chunks),
#     a mixture of experts on regression regions (its gate figures), a byte-level and a word-level transformer LM on a
#     generated corpus (--data valid = --data test = final.test);
#   - eval with --set data.* over the checkpoint's config, and --config FILE;
#   - expert choice in the LM: eval under each moe.ec_eval; a run trained with
#     ec_eval = prefix has the same weights, and its final.test is eval's under prefix;
#   - generate: deterministic for a seed, different across seeds, --temperature 0
#     equals itself across seeds (greedy), starts with the prompt; --trace has one
#     entry per generated token with one routing object per sparse layer, and the
#     same text; --top-k 1 equals greedy; word-level generation runs;
#   - eval --by-token: one row per target id (ascending), counts adding up to the
#     rows, loss_sum to the JSON's loss times rows (1e-9 relative), correct to
#     accuracy times rows; loss_mean = loss_sum / count; the same bytes run after
#     run; the stdout JSON unchanged by the option; bytes outside valid UTF-8 as
#     \xHH, UTF-8 words as they are, <unk>; the table of --data train.
# shellcheck disable=SC2317  # check functions are called indirectly, via check
set -u
export LC_ALL=C
. "$(dirname "$0")/tap.sh"
tap_setup eval "$@"

train() { # train NAME ARGS...: run directory NAME
    local name=$1
    shift
    "${TO[@]}" "$MOE" train "$@" --out "$name" --quiet --threads 1 >"$name.train.out" 2>"$name.train.err"
}
# eval_equals RUN SPLITKEY EVALARGS...: eval's stdout = summary.final.SPLITKEY
eval_equals() {
    local d=$1 key=$2
    shift 2
    [ -s "$d/summary.json" ] || { fail "training failed: $(head -c 600 "$d.train.err")"; return 1; }
    run "$d.$key" "${TO[@]}" "$MOE" eval --checkpoint "$d/model.safetensors" --quiet --threads 1 "$@"
    [ "$RC" -eq 0 ] || { fail "eval exit $RC: $(head -c 600 "$d.$key.err")"; return 1; }
    [ "$(wc -l <"$d.$key.out")" -eq 1 ] || { fail "expected one line on stdout"; return 1; }
    jq ".final.$key" "$d/summary.json" >"$d.$key.want"
    same_json "$d.$key.out" "$d.$key.want"
}

cat >moe.json <<'JSON'
{ "data": { "standardize": true, "synthetic": { "kind": "classes", "n_in": 4, "n_regions": 4, "n_train": 96, "n_test": 40 } },
  "model": { "type": "mlp-moe", "n_embd": 8, "n_layer": 2, "n_ff": 8, "n_expert": 4, "n_expert_used": 2 },
  "optim": { "batch_size": 16 }, "train": { "epochs": 3, "max_batch_eval": 24 } }
JSON
train moe --config moe.json
check "eval = final.test (mlp-moe, synthetic classes, standardised, chunks of 24)" eval_equals moe test
check "eval --data train = final.train (mlp-moe)" eval_equals moe train --data train
check "eval --data test = final.test (mlp-moe)" eval_equals moe test --data test
cat >reg.json <<'JSON'
{ "data": { "synthetic": { "kind": "regions", "n_train": 60, "n_test": 20 } },
  "model": { "type": "mixture", "n_expert": 3 }, "optim": { "batch_size": 32 }, "train": { "epochs": 2 } }
JSON
train reg --config reg.json
check "eval = final.test (dense mixture of experts, regression regions)" eval_equals reg test
check "eval --data train = final.train (mixture)" eval_equals reg train --data train

# eval over other data: the test split grown by --set, and the same by --config
check_other_data() {
    run moe.big "${TO[@]}" "$MOE" eval --checkpoint moe/model.safetensors --quiet --threads 1 \
        --set data.synthetic.n_test=80
    [ "$RC" -eq 0 ] || { fail "exit $RC: $(cat moe.big.err)"; return 1; }
    [ "$(jq .rows moe.big.out)" = 80 ] || { fail "rows $(jq .rows moe.big.out), expected 80"; return 1; }
    printf '{ "data": { "synthetic": { "n_test": 80 } } }\n' >big.json
    run moe.bigc "${TO[@]}" "$MOE" eval --checkpoint moe/model.safetensors --quiet --threads 1 --config big.json
    [ "$RC" -eq 0 ] || { fail "exit $RC: $(cat moe.bigc.err)"; return 1; }
    same_json moe.big.out moe.bigc.out
}
check "eval --set data.* and --config FILE evaluate other data (the same)" check_other_data

# ---- language models over a generated corpus (two files, two languages)
mkdir -p text
for i in $(seq 40); do printf 'The cat %d sat on the mat, and the dog ran off to the park. ' "$i"; done >text/en.txt
for i in $(seq 30); do printf 'Le chat %d est sur le tapis, et le chien court au parc. ' "$i"; done >text/fr.txt
cat >lm.json <<JSON
{ "data": { "source": "text", "text": { "path": "$TMP/text", "valid_fraction": 0.2 } },
  "model": { "type": "transformer", "n_ctx": 16, "n_embd": 16, "n_head": 2, "n_layer": 2, "n_ff": 16,
             "n_expert": 4, "n_expert_used": 2, "moe_every": 1 },
  "optim": { "batch_size": 8 }, "train": { "epochs": 2 } }
JSON
train lm --config lm.json
check "eval = final.test (byte-level transformer LM)" eval_equals lm test
check "eval --data valid = final.test (text: the held-out split is the validation part)" eval_equals lm test --data valid
check "eval --data train = final.train (byte-level transformer LM)" eval_equals lm train --data train
# expert choice (moe.ec_eval, docs/routing.md): eval under each mode; training does not depend on it
ec=(--set moe.router=expert-choice --set moe.ec_factor=1 --set model.n_expert_used=1)
train lmec --config lm.json "${ec[@]}"
train lmecp --config lm.json "${ec[@]}" --set moe.ec_eval=prefix
check "eval = final.test (transformer LM, expert choice, ec_eval full by default)" eval_equals lmec test
check_ec_eval() {
    local m
    [ -s lmecp/summary.json ] || { fail "training with ec_eval prefix failed: $(head -c 600 lmecp.train.err)"; return 1; }
    for m in full prefix position topk; do
        run "lmec.$m" "${TO[@]}" "$MOE" eval --checkpoint lmec/model.safetensors --quiet --threads 1 --set "moe.ec_eval=$m"
        [ "$RC" -eq 0 ] || { fail "ec_eval $m: exit $RC: $(head -c 600 "lmec.$m.err")"; return 1; }
        [ "$(jq .rows "lmec.$m.out")" = "$(jq .final.test.rows lmec/summary.json)" ] ||
            { fail "ec_eval $m: rows differ"; return 1; }
    done
    jq .final.test lmec/summary.json >lmec.want
    jq .final.test lmecp/summary.json >lmecp.want
    same_json lmec.full.out lmec.want || return 1
    [ "$(jq .loss lmec.full.out)" != "$(jq .loss lmec.topk.out)" ] || { fail "topk gave full's loss"; return 1; }
    # trained with ec_eval = prefix: the same training steps (the split=batch rows), and its final
    # evaluation is eval's under prefix of the run trained without it (so the same weights)
    cmp -s <(awk -F, '$3 == "batch"' lmec/metrics.csv) <(awk -F, '$3 == "batch"' lmecp/metrics.csv) ||
        { fail "ec_eval changed the training steps"; return 1; }
    same_json lmec.prefix.out lmecp.want
}
check "expert choice: eval --set moe.ec_eval=full|prefix|position|topk; training ignores the key, its final evaluation uses it" check_ec_eval
train lmw --config lm.json --set data.text.tokens=words --set data.text.vocab_size=64 --set optim.batch_size=0
check "eval = final.test (word-level LM, full-batch)" eval_equals lmw test
check "eval --data train = final.train (word-level LM, full-batch)" eval_equals lmw train --data train

# by_token RUN NAME ARGS...: eval --by-token NAME.csv of RUN; checks the table against the JSON
by_token() {
    local d=$1 t=$2
    shift 2
    run "$t" "${TO[@]}" "$MOE" eval --checkpoint "$d/model.safetensors" --quiet --threads 1 --by-token "$t.csv" "$@"
    [ "$RC" -eq 0 ] || { fail "eval --by-token exit $RC: $(head -c 600 "$t.err")"; return 1; }
    [ "$(head -1 "$t.csv")" = "token,text,count,correct,loss_sum,loss_mean" ] ||
        { fail "header: $(head -1 "$t.csv")"; return 1; }
    # the sums (the last four columns: text may hold quoted commas)
    awk -F, -v rows="$(jq .rows "$t.out")" -v loss="$(jq .loss "$t.out")" -v acc="$(jq .accuracy "$t.out")" '
        NR == 1 { next }
        { id = $1 + 0; if (NR > 2 && id <= last) bad = bad " ids not ascending at " id; last = id
          n += $(NF - 3); c += $(NF - 2); l += $(NF - 1)
          if ($(NF - 3) < 1) bad = bad " empty row " id
          m = $(NF - 1) / $(NF - 3); if ((m - $NF) * (m - $NF) > 1e-14 * m * m) bad = bad " loss_mean " id }
        END { if (n != rows) bad = bad " counts add to " n " not " rows
              if (c != sprintf("%.0f", acc * rows)) bad = bad " correct add to " c " not " acc * rows
              d = l - loss * rows; if (d * d > 1e-18 * l * l) bad = bad " loss_sum adds to " l " not " loss * rows
              if (bad) { print bad; exit 1 } }' "$t.csv" >"$t.sum" || { fail "$(cat "$t.sum")"; return 1; }
}
check_by_token() {
    by_token lm lmt || return 1
    same_json lmt.out lm.test.want || return 1 # the option changes nothing on stdout
    by_token lm lmt2 && cmp -s lmt.csv lmt2.csv || { fail "two runs differ"; return 1; }
    # byte-level: ids are bytes; every row's text is its byte (printable) or \xHH
    awk -F, 'NR > 1 && $1 == 32 && $2 == " " { s = 1 } NR > 1 && $1 == 116 && $2 == "t" { t = 1 }
             NR > 1 && $1 >= 128 { bad = 1 } END { exit !(s && t && !bad) }' lmt.csv ||
        { fail "byte rows: $(head -c 400 lmt.csv)"; return 1; }
    by_token lm lmtr --data train || return 1
    cmp -s lmt.csv lmtr.csv && { fail "train and test tables are the same"; return 1; }
    return 0
}
check "eval --by-token (byte-level LM): rows add up to the JSON's rows, loss and accuracy; reruns the same bytes" check_by_token
check_by_token_text() {
    mkdir -p utext
    for i in $(seq 30); do printf 'Η γάτα κάθεται στο χαλί %d. The cat is here. ' "$i"; done >utext/el.txt
    train lmu --config lm.json --set data.text.path="\"$TMP/utext\"" || return 1
    by_token lmu lmut || return 1
    grep -q '^206,\\xCE,' lmut.csv || { fail "lone lead byte 0xCE is not \\xCE: $(grep '^206,' lmut.csv)"; return 1; }
    train lmuw --config lm.json --set data.text.path="\"$TMP/utext\"" --set data.text.tokens=words \
        --set data.text.vocab_size=12 || return 1
    by_token lmuw lmuwt || return 1
    grep -q '^0,<unk>,' lmuwt.csv || { fail "no <unk> row: $(head -c 300 lmuwt.csv)"; return 1; }
    grep -q ',γάτα,' lmuwt.csv || { fail "the UTF-8 word is not as is: $(head -c 600 lmuwt.csv)"; return 1; }
}
check "eval --by-token: a lone UTF-8 lead byte as \\xHH, UTF-8 words as they are, <unk> (word-level LM)" check_by_token_text
check_by_token_refused() {
    run mt "${TO[@]}" "$MOE" eval --checkpoint moe/model.safetensors --quiet --threads 1 --by-token mt.csv
    [ "$RC" -eq 2 ] && [ ! -e mt.csv ] || { fail "mlp-moe: exit $RC, table left: $([ -e mt.csv ] && echo yes)"; return 1; }
}
check "eval --by-token: refused for a model that is not a language model, no table written" check_by_token_refused

gen() { # gen OUTPREFIX ARGS...
    local p=$1
    shift
    run "$p" "${TO[@]}" "$MOE" generate --checkpoint lm/model.safetensors --prompt "The cat " --quiet --threads 1 "$@"
    [ "$RC" -eq 0 ] || { fail "generate $* exit $RC: $(head -c 400 "$p.err")"; return 1; }
}
check_seeds() {
    gen g1 --tokens 24 --seed 1 && gen g1b --tokens 24 --seed 1 && gen g2 --tokens 24 --seed 2 || return 1
    cmp -s g1.out g1b.out || { fail "seed 1 twice differs"; return 1; }
    ! cmp -s g1.out g2.out || { fail "seeds 1 and 2 give the same text: $(cat g1.out)"; return 1; }
    [ "$(head -c 8 g1.out)" = "The cat " ] || fail "output does not start with the prompt: $(cat g1.out)"
}
check "generate: the same text for a seed, another for another seed; prompt first" check_seeds
check_greedy() {
    gen t0a --tokens 20 --temperature 0 --seed 1 && gen t0b --tokens 20 --temperature 0 --seed 7 &&
        gen k1 --tokens 20 --top-k 1 --seed 3 || return 1
    cmp -s t0a.out t0b.out || { fail "temperature 0 depends on the seed"; return 1; }
    cmp -s t0a.out k1.out || fail "--top-k 1 differs from greedy: $(cat k1.out) vs $(cat t0a.out)"
}
check "generate: temperature 0 is greedy (seed-independent, = --top-k 1)" check_greedy
check_trace() {
    gen tr --tokens 24 --seed 1 --trace || return 1
    [ "$(jq '.tokens | length' tr.out)" = 24 ] || { fail "expected 24 entries: $(head -c 300 tr.out)"; return 1; }
    [ "$(jq '.generated_tokens' tr.out)" = 24 ] || { fail "generated_tokens != 24"; return 1; }
    [ "$(jq '[.tokens[] | .layers | length] | unique' -c tr.out)" = "[2]" ] ||
        { fail "expected 2 sparse layers per token"; return 1; }
    [ "$(jq '[.tokens[].layers[].experts | length] | unique' -c tr.out)" = "[2]" ] ||
        { fail "expected 2 experts per layer (top-2)"; return 1; }
    # the traced token ids (byte-level: id = byte) spell the plain run's output
    { printf 'The cat '; for id in $(jq '.tokens[].id' tr.out); do printf "\\x$(printf %02x "$id")"; done; printf '\n'; } >tr.bytes
    cmp -s tr.bytes g1.out || fail "the traced tokens differ from the plain run's text"
}
check "generate --trace: one entry per generated token, experts per sparse layer, the same text" check_trace
check_words() {
    run w "${TO[@]}" "$MOE" generate --checkpoint lmw/model.safetensors --prompt "The cat sat" --tokens 5 \
        --seed 1 --quiet --threads 1 --trace
    [ "$RC" -eq 0 ] || { fail "exit $RC: $(cat w.err)"; return 1; }
    [ "$(jq '.tokens | length' w.out)" = 5 ] && [ "$(jq .prompt_tokens w.out)" = 5 ] ||
        fail "expected 5 prompt tokens (The, space, cat, space, sat) and 5 generated: $(head -c 300 w.out)"
}
check "generate on a word-level LM (the run's vocabulary)" check_words

echo "1..$N"
[ "$FAILED" -eq 0 ] || { echo "# $FAILED of $N checks failed"; exit 1; }
echo "# all $N checks passed"
