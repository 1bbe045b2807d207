#!/usr/bin/env bash
# test_memory.sh: `moe train --dry-run`'s memory estimate covers the real peak.
#
#   bash tests/cli/test_memory.sh /path/to/moe
#
# TAP-like output as test_cli.sh (tap.sh). For each config, the run's peak RSS
# must be at most 1.25 x the dry run's memory_bytes.total, and at least 0.75 x
# (an estimate far above the peak is no more honest than one below it; the
# estimate aims at 0.8 to 1.25, the slack is for other builds of the libraries,
# whose code is most of a small run's memory).
#
# How the peak is measured: GNU time (/usr/bin/time -f %M, Debian package
# `time`) reports the child's ru_maxrss in KiB, the kernel's high-water mark of
# its resident set (VmHWM) over the whole run: loading the data, training,
# evaluation and the checkpoint and model writers. Without /usr/bin/time every
# check is skipped. Both commands run with --threads 1 (the estimate counts the
# threads).
#
# Configs: examples/quickstart.json (synthetic; almost all of its peak is the
# process itself); a generated ~0.8 MB text corpus, byte tokens and word tokens,
# with a tiny Transformer, so the corpus is most of the peak; Fashion-MNIST
# (experiments/common/fmnist-moe.json) limited to 1000 training and 500 test
# rows, where the IDX reader's decompressed files are most of the peak (skipped
# when /usr/share/datasets/fashion-mnist is not installed). Then commands that
# read a checkpoint that is a large share of their memory (a wide mlp-moe of 8.7
# M parameters trained one step: a 34.7 MB model.safetensors, a 104 MB
# checkpoint.safetensors with AdamW's moments): `moe lora --base`, `moe train
# --init`, `moe eval` and `moe compress` (int8 quantization, expert pruning,
# neuron pruning by Taylor scores: a second model, the int8 values or the
# gradient in doubles beside the first), whose estimate is the figure its
# refusal names under MOE_MEMORY_LIMIT=1K (eval and compress have no
# --dry-run). Then the memory check under resource limits (ulimit -v, ulimit
# -d). About 10 s.
# shellcheck disable=SC2317  # check functions are called indirectly, via check
set -u
export LC_ALL=C
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

# shellcheck source=tap.sh
. "$HERE/tap.sh"
tap_setup memory "$@"

TIME=/usr/bin/time
# Under AddressSanitizer (scripts/sanitize.sh sets ASAN_OPTIONS) shadow memory and
# quarantine make RSS several times the program's own: nothing to compare.
why="no GNU time at $TIME (Debian package time)"
[ -n "${ASAN_OPTIONS:-}" ] && why="an AddressSanitizer build (its shadow memory is not the program's)"
if [ -n "${ASAN_OPTIONS:-}" ] || ! [ -x "$TIME" ] || ! "$TIME" -f %M true >/dev/null 2>&1; then
    for name in quickstart "text (bytes)" "text (words)" fashion-mnist "wide base" "lora --base" "train --init" \
        eval "compress --quantize int8" "compress --prune-experts" "compress --prune-neurons" "ulimit -v" \
        "ulimit -d"; do
        N=$((N + 1))
        echo "ok $N # SKIP $name: $why"
    done
    echo "1..$N"
    exit 0
fi

# meson test sets MALLOC_PERTURB_, which makes glibc fill every block malloc
# hands out, so untouched pages (most of BLIS's 17 MB packing pool) become
# resident: not how moe runs.
unset MALLOC_PERTURB_

# ~0.8 MB of English-like text: 180,000 words from a Park-Miller generator.
awk 'BEGIN { x = 7; n = split("the a of and to in is was that it he for on are as with his they at be this from have or by one had not but what all were when we there can an your which their said if do will each about how up out them then she many some so these would other into has more her two like him see time could no make than first been its who now people my made over did down only way find use may water long little very after words called just where most know", w, " ");
             for (i = 0; i < 180000; i++) { x = (x * 16807) % 2147483647; printf "%s%s", w[1 + x % n], (i % 13 == 12 ? ".\n" : " ") } }' >corpus.txt
cat >text.json <<EOF
{
  "data": { "source": "text", "text": { "path": "$TMP/corpus.txt", "windows_per_epoch": 64, "train_eval_windows": 64,
                                        "valid_eval_windows": 64 } },
  "model": { "type": "transformer", "n_ctx": 16, "n_embd": 16, "n_head": 2, "n_layer": 2, "moe_every": 2,
             "n_expert": 4, "n_expert_used": 1, "n_ff": 32, "n_ff_dense": 32 },
  "moe": { "router": "switch" },
  "optim": { "lr": 0.002, "batch_size": 16 },
  "train": { "epochs": 1, "seed": 1 }
}
EOF

# within NAME EST KIB: the peak RSS (KiB, from $TIME) within [0.75, 1.25] x the estimate EST (bytes);
# the figures on a "#" line either way, with MEMORY (the estimate's memory_bytes, when known).
MEMORY=""
within() {
    local name=$1 est=$2 kib=$3 line ok
    [ -n "$kib" ] || { fail "$name: no maxrss line from $TIME"; return 1; }
    line=$(awk -v e="$est" -v k="$kib" 'BEGIN {
        r = k * 1024 / e
        printf "estimate %.1f MiB, peak RSS %.1f MiB, peak/estimate %.3f", e / 1048576, k / 1024, r
        exit !(r <= 1.25 && r >= 0.75) }')
    ok=$?
    echo "# $name: $line${MEMORY:+ ($MEMORY)}"
    [ "$ok" -eq 0 ] || { fail "$name: $line, outside [0.75, 1.25]${MEMORY:+: $MEMORY}"; return 1; }
}

# peak_cmd NAME CMD [ARGS...]: `moe CMD --dry-run`'s total against the peak RSS of `moe CMD`.
peak_cmd() {
    local name=$1 cmd=$2
    shift 2
    run "$TMP/$name-dry" "${TO[@]}" "$MOE" "$cmd" --dry-run --threads 1 "$@"
    [ "$RC" -eq 0 ] || { fail "$(describe "$TMP/$name-dry" moe "$cmd" --dry-run "$@")"; return 1; }
    local est
    est=$(jq -r '.memory_bytes.total' "$TMP/$name-dry.out")
    run "$TMP/$name" "${TO[@]}" "$TIME" -f 'maxrss %M' "$MOE" "$cmd" "$@" --out "$TMP/run-$name" --threads 1 --quiet
    [ "$RC" -eq 0 ] || { fail "$(describe "$TMP/$name" moe "$cmd" "$@")"; return 1; }
    MEMORY=$(jq -c '.memory_bytes' "$TMP/$name-dry.out")
    within "$name" "$est" "$(awk '$1 == "maxrss" { v = $2 } END { print v }' "$TMP/$name.err")"
}

# peak NAME CONFIG [ARGS...]: the same for `moe train --config CONFIG`.
peak() {
    local name=$1 cfg=$2
    shift 2
    peak_cmd "$name" train --config "$cfg" "$@"
}

t_quickstart() { peak quickstart "$ROOT/examples/quickstart.json"; }
check "examples/quickstart.json: peak RSS within [0.75, 1.25] x the dry run's estimate" t_quickstart
t_bytes() { peak bytes text.json; }
check "text corpus, byte tokens: peak RSS within [0.75, 1.25] x the estimate (corpus counted)" t_bytes
t_words() { peak words text.json --set data.text.tokens=words --set data.text.vocab_size=64; }
check "text corpus, word tokens: peak RSS within [0.75, 1.25] x the estimate (tokens counted)" t_words

FM=/usr/share/datasets/fashion-mnist
if [ -s "$FM/train-images-idx3-ubyte.gz" ] && [ -s "$FM/t10k-labels-idx1-ubyte.gz" ]; then
    t_fmnist() {
        peak fmnist "$ROOT/experiments/common/fmnist-moe.json" --set train.epochs=1 --set data.idx.limit_train=1000 \
            --set data.idx.limit_test=500
    }
    check "Fashion-MNIST, 1000 + 500 rows: peak RSS within [0.75, 1.25] x the estimate (IDX reader counted)" t_fmnist
else
    N=$((N + 1))
    echo "ok $N # SKIP Fashion-MNIST not installed ($FM)"
fi

# A checkpoint that is a large share of the memory. Every command that reads one reads the file whole;
# the model's tensors are copied out of that buffer, which the estimate counts (memory_bytes.checkpoint)
# as far as the buffers allocated after it is freed do not cover it.
cat >wide.json <<EOF
{
  "data": { "source": "synthetic", "synthetic": { "kind": "classes", "n_in": 512, "n_regions": 10, "n_train": 256,
                                                  "n_test": 128 } },
  "model": { "type": "mlp-moe", "n_embd": 512, "n_layer": 1, "n_ff": 1024, "n_expert": 8, "n_expert_used": 2 },
  "moe": { "router": "softmax" },
  "optim": { "type": "adamw", "lr": 0.001, "batch_size": 256 },
  "train": { "epochs": 1, "seed": 1 }
}
EOF
t_wide_base() {
    run "$TMP/wide" "${TO[@]}" "$MOE" train --config wide.json --out "$TMP/wide" --threads 1 --quiet
    [ "$RC" -eq 0 ] && [ -s "$TMP/wide/model.safetensors" ] && [ -s "$TMP/wide/checkpoint.safetensors" ] ||
        fail "$(describe "$TMP/wide" moe train --config wide.json)"
}
check "a wide model (34.7 MB model.safetensors, 104 MB checkpoint.safetensors) trained one step" t_wide_base
# moe lora: the base's bytes are freed once its weights are copied, before the adapters are made
t_lora_base() {
    peak_cmd lora-base lora --base "$TMP/wide/model.safetensors" --config wide.json --rank 4 --targets '*.experts.*'
}
check "lora --base (a 34.7 MB base): peak RSS within [0.75, 1.25] x lora --dry-run's estimate" t_lora_base
# moe train --init: a checkpoint three times the parameters, more than the moments allocated after it
t_train_init() { peak train-init wide.json --init "$TMP/wide/checkpoint.safetensors"; }
check "train --init (a 104 MB checkpoint): peak RSS within [0.75, 1.25] x train --dry-run's estimate" t_train_init
# peak_refused NAME ARGS...: for a command without --dry-run, the estimate `moe ARGS` checks, as its
# refusal under a 1 KiB budget names it ("needs about 85.1 MiB, ..."), against the peak RSS of `moe ARGS`.
peak_refused() {
    local name=$1
    shift
    MOE_MEMORY_LIMIT=1K run "$TMP/$name-refused" "${TO[@]}" "$MOE" "$@" --threads 1
    local est
    est=$(sed -n 's/.* needs about \([0-9.]*\) \([KMG]\)iB.*/\1 \2/p' "$TMP/$name-refused.err" |
        awk '{ print int($1 * ($2 == "K" ? 1024 : $2 == "M" ? 1048576 : 1073741824)) }')
    [ "$RC" -eq 1 ] && [ -n "$est" ] || { fail "no estimate in the refusal: $(describe "$TMP/$name-refused" moe "$@")"; return 1; }
    run "$TMP/$name" "${TO[@]}" "$TIME" -f 'maxrss %M' "$MOE" "$@" --threads 1 --quiet
    [ "$RC" -eq 0 ] || { fail "$(describe "$TMP/$name" moe "$@")"; return 1; }
    MEMORY=""
    within "$name" "$est" "$(awk '$1 == "maxrss" { v = $2 } END { print v }' "$TMP/$name.err")"
}
t_eval_ckpt() { peak_refused eval eval --checkpoint "$TMP/wide/checkpoint.safetensors"; }
check "eval --checkpoint (a 104 MB checkpoint): peak RSS within [0.75, 1.25] x the estimate it checks" t_eval_ckpt
# moe compress holds the checkpoint (file and model) and builds a second model from it; int8 quantization
# adds the values and scales the writer makes, Taylor scores the gradient summed in doubles
t_compress_int8() {
    peak_refused compress-int8 compress --checkpoint "$TMP/wide/checkpoint.safetensors" --out "$TMP/cp-int8" \
        --quantize int8
}
check "compress --quantize int8 (a 104 MB checkpoint): peak RSS within [0.75, 1.25] x the estimate it checks" \
    t_compress_int8
t_compress_experts() {
    peak_refused compress-experts compress --checkpoint "$TMP/wide/checkpoint.safetensors" --out "$TMP/cp-experts" \
        --prune-experts 4
}
check "compress --prune-experts 4 of 8 (a 104 MB checkpoint): peak RSS within [0.75, 1.25] x the estimate it checks" \
    t_compress_experts
t_compress_neurons() {
    peak_refused compress-neurons compress --checkpoint "$TMP/wide/model.safetensors" --out "$TMP/cp-neurons" \
        --prune-neurons 0.5 --neuron-score taylor
}
check "compress --prune-neurons --neuron-score taylor (a 34.7 MB model): peak RSS within [0.75, 1.25] x the estimate it checks" \
    t_compress_neurons

# Resource limits: under `ulimit -v` (RLIMIT_AS) and `ulimit -d` (RLIMIT_DATA) of 250 MB the dry run's
# available memory is what the limit leaves, and a run whose data alone need 500 MB is refused before it
# allocates (exit 1, one line naming the limit, no run directory).
QS_BIG=(--set data.synthetic.n_train=2000000 --set data.synthetic.n_in=64)
# limited FLAG NAME: the two checks under `ulimit FLAG 250000` (KiB)
limited() {
    local flag=$1 name=$2
    run "$TMP/ul$flag-dry" bash -c "ulimit $flag 250000 && exec \"\$@\"" _ "$MOE" train --dry-run --threads 1 \
        --config "$ROOT/examples/quickstart.json"
    [ "$RC" -eq 0 ] || { fail "$(describe "$TMP/ul$flag-dry" "ulimit $flag 250000; moe train --dry-run")"; return 1; }
    # available = the limit's headroom + what the process already holds (memory_bytes.process)
    jqe "$TMP/ul$flag-dry.out" ".memory_available_source == \"$name\" and
        .memory_available_bytes <= 250000 * 1024 + .memory_bytes.process and
        .memory_available_bytes > 100 * 1048576 and .fits" "dry run under ulimit $flag" || return 1
    run "$TMP/ul$flag" bash -c "ulimit $flag 250000 && exec \"\$@\"" _ "$MOE" train --threads 1 \
        --config "$ROOT/examples/quickstart.json" "${QS_BIG[@]}" --out "$TMP/ul$flag-run" --quiet
    [ "$RC" -eq 1 ] || { fail "ulimit $flag: exit $RC, expected 1 ($(head -c 300 "$TMP/ul$flag.err"))"; return 1; }
    [ "$(wc -l <"$TMP/ul$flag.err")" -eq 1 ] && grep -q "left under this process's $name (ulimit $flag)" "$TMP/ul$flag.err" ||
        { fail "ulimit $flag: stderr is not one line naming $name: $(head -c 300 "$TMP/ul$flag.err")"; return 1; }
    [ ! -e "$TMP/ul$flag-run" ] || { fail "ulimit $flag: the refused run made its directory"; return 1; }
}
t_rlimit_as() { limited -v RLIMIT_AS; }
check "ulimit -v: the dry run's available memory is RLIMIT_AS's headroom; a 500 MB run is refused before allocating" t_rlimit_as
t_rlimit_data() { limited -d RLIMIT_DATA; }
check "ulimit -d: the same with RLIMIT_DATA" t_rlimit_data

echo "1..$N"
if [ "$FAILED" -gt 0 ]; then
    echo "# $FAILED of $N checks failed"
    exit 1
fi
echo "# all $N checks passed"
exit 0
