#!/usr/bin/env bash
# test_cli.sh: end-to-end checks of the `moe` command line.
#
#   bash tests/cli/test_cli.sh /path/to/moe
#
# Prints one TAP-like line per check ("ok N - name" / "not ok N - name", with
# "#" lines giving the reason on failure), then a plan line "1..N". Exits 1 if
# any check failed. Every fixture (configs, a small TSV table, IDX files,
# broken checkpoints) is generated at run time in a mktemp -d directory, which
# is removed on exit. Contracts checked:
#   - stdout carries exactly one JSON summary object; logs go to stderr;
#   - exit 0 success, 1 runtime failure (I/O, corrupt data or checkpoint, NaN),
#     2 usage/config error;
#   - every error is ONE line on stderr naming the file, key path or line at
#     fault, and a failing command prints nothing on stdout.
# MOE_TEST_DATA (tests/data) is accepted but not needed: nothing here reads it.
# shellcheck disable=SC2317  # check functions are called indirectly, via check
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

if [ $# -lt 1 ]; then
    echo "usage: bash $0 /path/to/moe" >&2
    exit 2
fi
MOE=$1
case $MOE in /*) ;; *) MOE=$PWD/$MOE ;; esac
if [ ! -x "$MOE" ]; then
    echo "Bail out! '$MOE' is not an executable" >&2
    exit 1
fi
command -v jq >/dev/null 2>&1 || { echo "Bail out! jq is required" >&2; exit 1; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/moe-cli.XXXXXX") || { echo "Bail out! mktemp failed" >&2; exit 1; }
trap 'rm -rf "$TMP"' EXIT
trap 'exit 130' INT TERM
# Run from inside the temp dir so that nothing (e.g. a default runs/ directory)
# lands in the source tree.
cd "$TMP" || exit 1

# shellcheck source=tap.sh
. "$HERE/tap.sh"

# tensor_bytes CKPT: the data section of a safetensors file (everything after
# the 8-byte little-endian header length and the JSON header) on stdout.
tensor_bytes() {
    local hl
    hl=$(od -An -t u8 -N8 "$1" | tr -d ' ')
    [ -n "$hl" ] || return 1
    tail -c +$((9 + hl)) "$1"
}
# header_text CKPT: the JSON header of a safetensors file.
header_text() {
    local hl
    hl=$(od -An -t u8 -N8 "$1" | tr -d ' ')
    [ -n "$hl" ] || return 1
    dd if="$1" bs=1 skip=8 count="$hl" 2>/dev/null
}

# ---------------------------------------------------------------- fixtures
# Small synthetic regression problem.
cat >"$TMP/reg.json" <<'EOF'
{
  "data": { "source": "synthetic", "synthetic": { "kind": "regions", "n_train": 200, "n_test": 100 } },
  "model": { "type": "mixture", "n_expert": 3 },
  "loss": { "type": "nll" },
  "optim": { "type": "adamw", "lr": 0.01, "batch_size": 32 },
  "train": { "epochs": 4, "seed": 1 }
}
EOF
# A somewhat larger one (mlp experts) so threaded BLIS calls have work to split.
cat >"$TMP/big.json" <<'EOF'
{
  "data": { "synthetic": { "n_train": 400, "n_test": 100, "n_in": 8, "n_out": 2, "n_regions": 4 } },
  "model": { "n_expert": 6, "expert": "mlp", "n_expert_hidden": 32 },
  "optim": { "batch_size": 64 },
  "train": { "epochs": 3 }
}
EOF
cat >"$TMP/cls.json" <<'EOF'
{
  "data": { "synthetic": { "kind": "classes", "n_train": 200, "n_test": 100, "n_regions": 3, "n_out": 3 } },
  "model": { "n_expert": 3 },
  "optim": { "batch_size": 32 },
  "train": { "epochs": 5 }
}
EOF
cat >"$TMP/mlp.json" <<'EOF'
{
  "data": { "synthetic": { "n_train": 200, "n_test": 100 } },
  "model": { "type": "mlp", "n_hidden": 8 },
  "loss": { "type": "mse" },
  "optim": { "batch_size": 32 },
  "train": { "epochs": 4 }
}
EOF

# A Peterson-Barney-like TSV: speakers 1-10, vowels iy ih aa ah (kept) and uw
# (dropped by data.table.classes).
{
    printf 'Type\tSex\tSpeaker\tVowel\tIPA\tF0\tF1\tF2\tF3\n'
    for s in 1 2 3 4 5 6 7 8 9 10; do
        if [ $((s % 2)) -eq 0 ]; then t=W sx=f; else t=M sx=m; fi
        o=$((s * 7))
        printf '%s\t%s\t%d\tiy\ti\t%d\t%d\t%d\t%d\n' $t $sx $s $((120 + s)) $((270 + o)) $((2290 - o)) $((3010 + o))
        printf '%s\t%s\t%d\tih\tI\t%d\t%d\t%d\t%d\n' $t $sx $s $((125 + s)) $((390 + o)) $((1990 - o)) $((2550 + o))
        printf '%s\t%s\t%d\taa\tA\t%d\t%d\t%d\t%d\n' $t $sx $s $((118 + s)) $((730 + o)) $((1090 - o)) $((2440 + o))
        printf '%s\t%s\t%d\tah\tV\t%d\t%d\t%d\t%d\n' $t $sx $s $((121 + s)) $((640 + o)) $((1190 - o)) $((2390 + o))
        printf '%s\t%s\t%d\tuw\tu\t%d\t%d\t%d\t%d\n' $t $sx $s $((122 + s)) $((300 + o)) $((870 - o)) $((2240 + o))
    done
} >"$TMP/vowels.tsv"
# Same table with a non-numeric F1 cell on physical line 5 (header = line 1).
awk 'BEGIN { FS = OFS = "\t" } NR == 5 { $7 = "abc" } { print }' "$TMP/vowels.tsv" >"$TMP/vowels_bad.tsv"
table_config() { # table_config PATH [FEATURES_JSON]
    local features='["F0", "F1", "F2", "F3"]'
    [ $# -ge 2 ] && features=$2
    cat <<EOF
{
  "data": {
    "source": "table",
    "standardize": true,
    "table": {
      "path": "$1",
      "task": "classification",
      "features": $features,
      "targets": ["Vowel"],
      "classes": ["iy", "ih", "aa", "ah"],
      "split_column": "Speaker",
      "train_range": [1, 6],
      "test_range": [7, 10]
    }
  },
  "model": { "n_expert": 3 },
  "optim": { "batch_size": 8 },
  "train": { "epochs": 5 }
}
EOF
}
table_config "$TMP/vowels.tsv" >"$TMP/table.json"
table_config "$TMP/vowels.tsv" '["F1", "F9"]' >"$TMP/table_nocol.json"
table_config "$TMP/vowels_bad.tsv" >"$TMP/table_badcell.json"
table_config "$TMP/no_such_table.tsv" >"$TMP/table_nofile.json"
printf '{ "data": { "source": "table", "table": { "features": ["F1"], "targets": ["Vowel"] } } }\n' >"$TMP/table_nopath.json"

# IDX files: 6 images of 2x2 pixels, 6 labels; a truncated image file (header
# promises 24 data bytes, 10 present), raw and gzipped; a 5-label file.
IMG_HDR='\x00\x00\x08\x03\x00\x00\x00\x06\x00\x00\x00\x02\x00\x00\x00\x02'
{ printf '%b' "$IMG_HDR"; printf '\x00\x10\x20\x30\x40\x50\x60\x70\x80\x90\xa0\xb0\xc0\xd0\xe0\xf0\x01\x02\x03\x04\x05\x06\x07\x08'; } >"$TMP/img.idx"
{ printf '%b' "$IMG_HDR"; printf '\x00\x10\x20\x30\x40\x50\x60\x70\x80\x90'; } >"$TMP/img_trunc.idx"
gzip -c "$TMP/img_trunc.idx" >"$TMP/img_trunc.idx.gz"
{ printf '\x00\x00\x08\x01\x00\x00\x00\x06'; printf '\x00\x01\x00\x01\x00\x01'; } >"$TMP/lab.idx"
{ printf '\x00\x00\x08\x01\x00\x00\x00\x05'; printf '\x00\x01\x00\x01\x00'; } >"$TMP/lab5.idx"
idx_config() { # idx_config TRAIN_IMAGES TRAIN_LABELS
    printf '{ "data": { "source": "idx", "idx": { "train_images": "%s", "train_labels": "%s", "test_images": "%s", "test_labels": "%s" } }, "model": { "n_expert": 2 }, "optim": { "batch_size": 4 }, "train": { "epochs": 2 } }\n' \
        "$1" "$2" "$TMP/img.idx" "$TMP/lab.idx"
}
idx_config "$TMP/img.idx" "$TMP/lab.idx" >"$TMP/idx_ok.json"
idx_config "$TMP/img_trunc.idx" "$TMP/lab.idx" >"$TMP/idx_trunc.json"
idx_config "$TMP/img_trunc.idx.gz" "$TMP/lab.idx" >"$TMP/idx_trunc_gz.json"
idx_config "$TMP/img.idx" "$TMP/lab5.idx" >"$TMP/idx_count.json"

METRICS_HEADER='step,epoch,split,loss,mse,accuracy,gate_entropy,active_experts,expert_region_mi,aux_loss,z_loss,load_cv,importance_cv,load_max_mean,dropped_fraction,router_entropy,expert_label_mi,bits_per_byte,expert_lang_mi'
CURVES_HEADER='system,seed,epoch,step,train_loss,train_mse,train_accuracy,test_loss,test_mse,test_accuracy,active_experts,gate_entropy'

# ------------------------------------------------------------ A. happy paths
t_version() {
    run "$TMP/v" "$MOE" --version
    [ "$RC" -eq 0 ] || fail "$(describe "$TMP/v" moe --version)" || return 1
    grep -Eq '^blis [^ ]+, sub-configuration [A-Za-z0-9_]+ \(chosen by [^)]+\)' "$TMP/v.out" ||
        fail "no 'blis X, sub-configuration Y (chosen by Z)' line"$'\n'"$(describe "$TMP/v" moe --version)"
}
check "moe --version names blis and its sub-configuration" t_version

# The cuda line of --version says which of three builds this is; the --device
# checks below expect that build's message. The host emulation's binary
# (moe-cuda-host, tests/cuda_host_probe.c: no runtime or driver, one emulated
# device) counts as a build with a device.
CUDA_LINE=$("$MOE" --version 2>/dev/null | grep '^cuda: ')
EMULATED=0
case $CUDA_LINE in
"cuda: this build has no CUDA backend;"*) CUDA_BUILD=none ;;
"cuda: built with CUDA "*"; devices 0 ("*) CUDA_BUILD=nodevice ;;
"cuda: built with CUDA none runtime; driver none; devices 1") CUDA_BUILD=devices EMULATED=1 ;;
*) CUDA_BUILD=devices ;;
esac
t_version_backends() {
    run "$TMP/vb" "$MOE" --version
    [ "$RC" -eq 0 ] || fail "$(describe "$TMP/vb" moe --version)" || return 1
    grep -Eq '^cpu: .+, [0-9.]+ [KMGT]?i?B$' "$TMP/vb.out" ||
        fail "no 'cpu: NAME, MEMORY' line"$'\n'"$(describe "$TMP/vb" moe --version)" || return 1
    [ "$(grep -c '^cuda: ' "$TMP/vb.out")" -eq 1 ] ||
        fail "expected one 'cuda: ' line"$'\n'"$(describe "$TMP/vb" moe --version)" || return 1
    case $CUDA_BUILD in
    none) grep -Fq -- "'meson setup -Dcuda=enabled BUILDDIR' builds one" "$TMP/vb.out" ||
        fail "the cuda line of a build without CUDA should say how to build one"$'\n'"$(describe "$TMP/vb" moe --version)" ;;
    nodevice) grep -Eq '^cuda: built with CUDA [0-9]+\.[0-9]+ runtime; driver [^;]+; devices 0 \(.+\)$' "$TMP/vb.out" ||
        fail "expected 'cuda: built with CUDA X.Y runtime; driver D; devices 0 (why)'"$'\n'"$(describe "$TMP/vb" moe --version)" ;;
    devices) [ $EMULATED = 1 ] && { grep -q '^cuda:0 host emulation of the CUDA ops (tests/cuda_host.c), compute capability 0.0, ' "$TMP/vb.out" ||
        fail "expected the emulated device's line"$'\n'"$(describe "$TMP/vb" moe-cuda-host --version)"; return; }
        grep -Eq '^cuda: built with CUDA [0-9]+\.[0-9]+ runtime; driver [0-9]+\.[0-9]+; devices [1-9][0-9]*$' "$TMP/vb.out" &&
        grep -Eq '^cuda:0 .+, compute capability [0-9]+\.[0-9]+, [0-9.]+ [KMGT]?i?B$' "$TMP/vb.out" ||
        fail "expected 'cuda: built with CUDA X.Y runtime; driver D; devices N' and a 'cuda:0 NAME, compute capability C, MEMORY' line"$'\n'"$(describe "$TMP/vb" moe --version)" ;;
    esac
}
check "moe --version names the backends: a cpu line, and a cuda line for this build ($CUDA_BUILD)" t_version_backends

t_version_arch() {
    run "$TMP/va" env BLIS_ARCH_TYPE=3 "$MOE" --version
    [ "$RC" -eq 0 ] || fail "$(describe "$TMP/va" BLIS_ARCH_TYPE=3 moe --version)" || return 1
    grep -Eq 'sub-configuration haswell \(chosen by BLIS_ARCH_TYPE\)' "$TMP/va.out" ||
        fail "expected 'sub-configuration haswell (chosen by BLIS_ARCH_TYPE)'"$'\n'"$(describe "$TMP/va" BLIS_ARCH_TYPE=3 moe --version)"
}
check "BLIS_ARCH_TYPE=3 moe --version: haswell, chosen by BLIS_ARCH_TYPE" t_version_arch

t_help_config() {
    run "$TMP/hc" "$MOE" help config
    [ "$RC" -eq 0 ] || fail "$(describe "$TMP/hc" moe help config)" || return 1
    grep -Fq 'model.n_expert' "$TMP/hc.out" || fail "'moe help config' does not list model.n_expert"
}
check "moe help config lists model.n_expert" t_help_config

# The documentation's relative links: every link in a Markdown file of the source
# tree (README.md, docs/, results/, tests/; outside code blocks) names a file that
# exists, and an anchor into a Markdown file names one of its headings (GitHub's
# ids: lower case, ASCII letters, digits, spaces as '-', '_' and '-' kept).
md_anchors() {
    awk '/^[[:space:]]*```/ { fence = !fence; next } !fence && /^#+ / { sub(/^#+ +/, ""); print }' "$1" |
        LC_ALL=C tr '[:upper:]' '[:lower:]' | LC_ALL=C sed -E 's/[^a-z0-9 _-]//g; s/ /-/g'
}
t_doc_links() {
    local root f t path anchor target bad=()
    root=$(cd "$HERE/../.." && pwd)
    while IFS= read -r f; do
        while IFS= read -r t; do
            case $t in *://* | mailto:*) continue ;; esac
            path=${t%%#*}
            anchor=
            [ "$path" = "$t" ] || anchor=${t#*#}
            target=$f
            [ -z "$path" ] || target=$(dirname "$f")/$path
            if [ ! -e "$target" ]; then
                bad+=("${f#"$root"/}: $t")
            elif [ -n "$anchor" ] && [ "${target%.md}" != "$target" ] && ! md_anchors "$target" | grep -Fxq -- "$anchor"; then
                bad+=("${f#"$root"/}: $t (no such heading)")
            fi
        done < <(awk '/^[[:space:]]*```/ { fence = !fence; next } !fence' "$f" | grep -oE '\]\([^) ]+\)' | sed 's/^](//; s/)$//')
    done < <(find "$root" \( -path "$root/.*" -o -path "$root/build*" -o -path "$root/runs" -o -path "$root/out" \
        -o -path "$root/experiments/*/work" -o -path "$root/experiments/*/data" -o -path "$root/experiments/data/cache" \) \
        -prune -o -type f -name '*.md' -print)
    [ ${#bad[@]} -eq 0 ] || fail "Markdown links to missing files or headings: ${bad[*]}"
}
check "the Markdown files' relative links name existing files and headings" t_doc_links

t_help_cmds() {
    local c
    for c in train compare-loss; do
        run "$TMP/h" "$MOE" help "$c"
        { [ "$RC" -eq 0 ] && grep -q '^usage: moe '"$c" "$TMP/h.out"; } || fail "$(describe "$TMP/h" moe help "$c")" || return 1
    done
}
check "moe help train / help compare-loss print usage (exit 0)" t_help_cmds

# verify_run DIR PREFIX: a finished `moe train` run (stdout in PREFIX.out).
verify_run() {
    local d=$1 p=$2 f
    for f in config.json metrics.csv model.safetensors summary.json; do
        [ -s "$d/$f" ] || fail "missing or empty $d/$f" || return 1
    done
    local hdr
    hdr=$(head -n 1 "$d/metrics.csv")
    [ "$hdr" = "$METRICS_HEADER" ] || fail "metrics.csv header is '$hdr', expected '$METRICS_HEADER'" || return 1
    [ "$(awk 'END { print NR }' "$p.out")" -eq 1 ] || fail "stdout is not exactly one line: $(head -c 400 "$p.out")" || return 1
    jq -e 'type == "object"' "$p.out" >/dev/null 2>&1 || fail "stdout is not a JSON object: $(head -c 400 "$p.out")" || return 1
    jq -e . "$d/config.json" >/dev/null 2>&1 || fail "config.json is not valid JSON" || return 1
    [ "$(jq -S . "$p.out")" = "$(jq -S . "$d/summary.json")" ] || fail "stdout JSON differs from summary.json" || return 1
    [ "$(head -c 8 "$d/model.safetensors" | od -An -t u8 | tr -d ' ')" -gt 0 ] || fail "model.safetensors has no header" || return 1
}

t_train() {
    run "$TMP/r1" "$MOE" train --config "$TMP/reg.json" --out "$TMP/r1" --threads 1
    [ "$RC" -eq 0 ] || fail "$(describe "$TMP/r1" moe train --config reg.json --out r1 --threads 1)" || return 1
    verify_run "$TMP/r1" "$TMP/r1" || return 1
    # 4 epochs + epoch 0, train and test rows each, plus a batch row (training-mode means) per epoch 1-4
    local rows
    rows=$(tail -n +2 "$TMP/r1/metrics.csv" | awk 'END { print NR }')
    [ "$rows" -eq 14 ] || fail "metrics.csv has $rows data rows, expected 14 (epochs 0-4 x train/test + 4 batch)" || return 1
    rows=$(awk -F, '$3 == "batch"' "$TMP/r1/metrics.csv" | awk 'END { print NR }')
    [ "$rows" -eq 4 ] || fail "metrics.csv has $rows batch rows, expected 4" || return 1
    jq -e '.command == "train" and .epochs == 4 and .final.train.rows == 200 and .final.test.rows == 100 and (.final.train.loss | type) == "number"' \
        "$TMP/r1/summary.json" >/dev/null || fail "unexpected summary: $(head -c 600 "$TMP/r1/summary.json")"
}
check "train (synthetic regression): run dir complete, stdout = one JSON line = summary.json" t_train

t_quiet() {
    run "$TMP/rq" "$MOE" train --config "$TMP/reg.json" --out "$TMP/rq" --threads 1 --quiet
    [ "$RC" -eq 0 ] || fail "$(describe "$TMP/rq" moe train --quiet)" || return 1
    [ ! -s "$TMP/rq.err" ] || fail "--quiet still logs: $(head -c 300 "$TMP/rq.err")" || return 1
    cmp -s "$TMP/r1/metrics.csv" "$TMP/rq/metrics.csv" || fail "--quiet changed metrics.csv"
}
check "train --quiet: nothing on stderr, same metrics" t_quiet

t_reproduce() {
    run "$TMP/r1b" "$MOE" train --config "$TMP/r1/config.json" --out "$TMP/r1b" --threads 1
    [ "$RC" -eq 0 ] || fail "$(describe "$TMP/r1b" moe train --config r1/config.json)" || return 1
    cmp -s "$TMP/r1/metrics.csv" "$TMP/r1b/metrics.csv" ||
        fail "metrics.csv differs: $(diff "$TMP/r1/metrics.csv" "$TMP/r1b/metrics.csv" | head -5)" || return 1
    cmp -s "$TMP/r1/config.json" "$TMP/r1b/config.json" || fail "config.json does not round-trip" || return 1
    [ "$(jq -r .config_hash "$TMP/r1/summary.json")" = "$(jq -r .config_hash "$TMP/r1b/summary.json")" ] ||
        fail "config_hash differs between the run and its re-run from config.json"
}
check "config.json re-used as --config reproduces metrics.csv" t_reproduce

# summary.parameters must count the model's weights: the sum over the
# checkpoint's tensors (data.* statistics excluded) of the product of shapes.
ckpt_params() {
    header_text "$1" | jq '[to_entries[] | select(.key != "__metadata__" and (.key | startswith("data.") | not))
                            | .value.shape | reduce .[] as $d (1; . * $d)] | add'
}
t_param_count() {
    local want got
    want=$(ckpt_params "$TMP/r1/model.safetensors")
    got=$(jq .parameters "$TMP/r1/summary.json")
    { [ -n "$want" ] && [ "$want" = "$got" ]; } ||
        fail "summary.json parameters = $got, but the checkpoint's tensors hold $want weights ($(header_text "$TMP/r1/model.safetensors" | jq -c '[to_entries[] | select(.key != "__metadata__") | {(.key): .value.shape}] | add'))"
}
check "train: summary.parameters equals the weights in model.safetensors" t_param_count

t_threads() {
    run "$TMP/t1" "$MOE" train --config "$TMP/big.json" --out "$TMP/t1" --threads 1
    [ "$RC" -eq 0 ] || fail "$(describe "$TMP/t1" moe train --config big.json --threads 1)" || return 1
    run "$TMP/t2" "$MOE" train --config "$TMP/big.json" --out "$TMP/t2" --threads 2
    [ "$RC" -eq 0 ] || fail "$(describe "$TMP/t2" moe train --config big.json --threads 2)" || return 1
    [ "$(jq .threads "$TMP/t2/summary.json")" = 2 ] || fail "summary.threads is not 2 for --threads 2" || return 1
    cmp "$TMP/t1/metrics.csv" "$TMP/t2/metrics.csv" >/dev/null ||
        fail "metrics.csv differs: $(diff "$TMP/t1/metrics.csv" "$TMP/t2/metrics.csv" | head -4)" || return 1
    cmp "$TMP/t1/model.safetensors" "$TMP/t2/model.safetensors" >/dev/null || fail "model.safetensors differs"
}
check "--threads 1 and --threads 2 give byte-identical metrics.csv and model.safetensors" t_threads

# Without --threads the thread count follows the cores other processes leave idle
# (rechecked before each step); two busy loops beside the run make it change.
t_threads_adaptive() {
    [ -s "$TMP/t1/metrics.csv" ] || fail "no --threads 1 run to compare with" || return 1
    local h1 h2
    timeout 60 sh -c 'while :; do :; done' & h1=$!
    timeout 60 sh -c 'while :; do :; done' & h2=$!
    run "$TMP/ta" "$MOE" train --config "$TMP/big.json" --out "$TMP/ta"
    kill "$h1" "$h2" 2>/dev/null
    wait "$h1" "$h2" 2>/dev/null
    [ "$RC" -eq 0 ] || fail "$(describe "$TMP/ta" moe train --config big.json)" || return 1
    [ "$(jq .threads_adaptive "$TMP/ta/summary.json")" = true ] || fail "summary.threads_adaptive is not true" || return 1
    cmp "$TMP/t1/metrics.csv" "$TMP/ta/metrics.csv" >/dev/null ||
        fail "metrics.csv differs: $(diff "$TMP/t1/metrics.csv" "$TMP/ta/metrics.csv" | head -4)" || return 1
    cmp "$TMP/t1/model.safetensors" "$TMP/ta/model.safetensors" >/dev/null || fail "model.safetensors differs"
}
check "default threads (adapting to busy cores) give the bytes of --threads 1" t_threads_adaptive

t_seed() {
    run "$TMP/s2" "$MOE" train --config "$TMP/reg.json" --out "$TMP/s2" --seed 2 --threads 1
    [ "$RC" -eq 0 ] || fail "$(describe "$TMP/s2" moe train --seed 2)" || return 1
    [ "$(jq .seed "$TMP/s2/summary.json")" = 2 ] || fail "summary.seed is not 2" || return 1
    [ "$(jq .train.seed "$TMP/s2/config.json")" = 2 ] || fail "config.json train.seed is not 2 (--seed must reach the config)" || return 1
    tensor_bytes "$TMP/r1/model.safetensors" >"$TMP/s1.bin"
    tensor_bytes "$TMP/s2/model.safetensors" >"$TMP/s2.bin"
    [ -s "$TMP/s1.bin" ] || fail "no tensor data in r1/model.safetensors" || return 1
    ! cmp -s "$TMP/s1.bin" "$TMP/s2.bin" || fail "--seed 2 gives the same tensors as seed 1"
}
check "a different --seed gives a different model" t_seed

t_init() {
    # continue from r1's checkpoint with lr 0: the weights must not move
    run "$TMP/i0" "$MOE" train --config "$TMP/reg.json" --set optim.lr=0 --init "$TMP/r1/model.safetensors" --out "$TMP/i0" --threads 1
    [ "$RC" -eq 0 ] || fail "$(describe "$TMP/i0" moe train --set optim.lr=0 --init r1/model.safetensors)" || return 1
    verify_run "$TMP/i0" "$TMP/i0" || return 1
    [ "$(jq -r .init "$TMP/i0/summary.json")" = "$TMP/r1/model.safetensors" ] || fail "summary.init does not name the checkpoint" || return 1
    tensor_bytes "$TMP/r1/model.safetensors" >"$TMP/a.bin"
    tensor_bytes "$TMP/i0/model.safetensors" >"$TMP/b.bin"
    [ -s "$TMP/a.bin" ] || fail "no tensor data in r1/model.safetensors" || return 1
    cmp -s "$TMP/a.bin" "$TMP/b.bin" || fail "with optim.lr 0 the tensors differ from the --init checkpoint" || return 1
    local want got
    want=$(awk -F, '$3 == "train" { l = $4 } END { print l }' "$TMP/r1/metrics.csv")
    got=$(awk -F, '$2 == 0 && $3 == "train" { print $4 }' "$TMP/i0/metrics.csv")
    { [ -n "$want" ] && [ "$want" = "$got" ]; } ||
        fail "epoch-0 train loss after --init is '$got', previous run's final train loss is '$want'"
}
check "--init with matching shapes and optim.lr 0 keeps the checkpoint's tensors" t_init

t_init_train() {
    run "$TMP/i1" "$MOE" train --config "$TMP/reg.json" --init "$TMP/r1/model.safetensors" --out "$TMP/i1" --threads 1
    [ "$RC" -eq 0 ] || fail "$(describe "$TMP/i1" moe train --init r1/model.safetensors)" || return 1
    local want got
    want=$(awk -F, '$3 == "train" { l = $4 } END { print l }' "$TMP/r1/metrics.csv")
    got=$(awk -F, '$2 == 0 && $3 == "train" { print $4 }' "$TMP/i1/metrics.csv")
    [ "$want" = "$got" ] || fail "epoch-0 train loss after --init is '$got', expected '$want'"
}
check "--init then training starts from the checkpoint's loss" t_init_train

t_classes() {
    run "$TMP/c" "$MOE" train --config "$TMP/cls.json" --out "$TMP/c" --threads 1
    [ "$RC" -eq 0 ] || fail "$(describe "$TMP/c" moe train --config cls.json)" || return 1
    verify_run "$TMP/c" "$TMP/c" || return 1
    jq -e '(.final.train.accuracy | type) == "number" and .final.train.accuracy >= 0 and .final.train.accuracy <= 1 and (.final.test.accuracy | type) == "number"' \
        "$TMP/c/summary.json" >/dev/null || fail "no accuracy in summary: $(jq -c .final "$TMP/c/summary.json")" || return 1
    awk -F, 'NR > 1 && $6 == "" { bad = 1 } END { exit bad }' "$TMP/c/metrics.csv" ||
        fail "metrics.csv has rows without accuracy"
}
check "classification (synthetic kind classes) reports accuracy" t_classes

# The schema documents data.synthetic.n_out as "regression targets (ignored for
# kind classes)", so kind classes must work with n_out left at its default.
t_classes_default_nout() {
    run "$TMP/c2" "$MOE" train --config "$TMP/cls.json" --set data.synthetic.n_out=1 --out "$TMP/c2" --threads 1
    [ "$RC" -eq 0 ] || fail "$(describe "$TMP/c2" moe train --config cls.json --set data.synthetic.n_out=1)" || return 1
    jq -e '(.final.train.accuracy | type) == "number"' "$TMP/c2/summary.json" >/dev/null || fail "no accuracy in summary"
}
check "kind classes ignores data.synthetic.n_out (as documented)" t_classes_default_nout

t_mlp() {
    run "$TMP/m" "$MOE" train --config "$TMP/mlp.json" --out "$TMP/m" --threads 1
    [ "$RC" -eq 0 ] || fail "$(describe "$TMP/m" moe train --config mlp.json)" || return 1
    verify_run "$TMP/m" "$TMP/m" || return 1
    jq -e '.model == "mlp" and .loss == "mse"' "$TMP/m/summary.json" >/dev/null ||
        fail "summary model/loss: $(jq -c '[.model, .loss]' "$TMP/m/summary.json")"
}
check "model.type mlp trains" t_mlp

t_compare() {
    local d="$TMP/cl"
    run "$TMP/cl" "$MOE" compare-loss --config "$TMP/reg.json" --losses nll,competitive,mlp --seeds 1-3 --out "$d" --threads 1
    [ "$RC" -eq 0 ] || fail "$(describe "$TMP/cl" moe compare-loss --losses nll,competitive,mlp --seeds 1-3)" || return 1
    local f
    for f in curves.csv table.csv summary.json; do
        [ -s "$d/$f" ] || fail "missing $d/$f" || return 1
    done
    [ "$(head -n 1 "$d/curves.csv")" = "$CURVES_HEADER" ] ||
        fail "curves.csv header is '$(head -n 1 "$d/curves.csv")'" || return 1
    # 3 systems x 3 seeds x (epochs 0-4)
    local rows
    rows=$(tail -n +2 "$d/curves.csv" | awk 'END { print NR }')
    [ "$rows" -eq 45 ] || fail "curves.csv has $rows data rows, expected 45" || return 1
    rows=$(tail -n +2 "$d/table.csv" | awk 'END { print NR }')
    [ "$rows" -eq 3 ] || fail "table.csv has $rows data rows, expected 3" || return 1
    awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == "runs") c = i; if (!c) exit 1; next }
             $c != 3 { exit 1 }' "$d/table.csv" || fail "table.csv: runs column missing or not 3: $(cat "$d/table.csv")" || return 1
    [ "$(cut -d, -f1 "$d/table.csv" | tail -n +2 | tr '\n' ' ')" = "nll competitive mlp " ] ||
        fail "table.csv systems: $(cut -d, -f1 "$d/table.csv" | tr '\n' ' ')" || return 1
    [ "$(awk 'END { print NR }' "$TMP/cl.out")" -eq 1 ] || fail "stdout is not one line" || return 1
    [ "$(jq -S . "$TMP/cl.out" 2>/dev/null)" = "$(jq -S . "$d/summary.json")" ] || fail "stdout differs from summary.json" || return 1
    jq -e '(.systems | length) == 3 and all(.systems[]; .runs == 3) and .seeds == [1, 2, 3]' "$d/summary.json" >/dev/null ||
        fail "summary.json: $(jq -c '[.seeds, [.systems[] | {system, runs}]]' "$d/summary.json")"
}
check "compare-loss nll,competitive,mlp x seeds 1-3: curves.csv, table.csv (3 rows, runs=3), summary.json" t_compare

t_compare_params() {
    local want_mix want_mlp got_mix got_mlp
    want_mix=$(ckpt_params "$TMP/r1/model.safetensors")
    # the mlp system is mlp.json's model (n_hidden 8) on reg.json's data: 2 -> 8 -> 1
    want_mlp=$(ckpt_params "$TMP/m/model.safetensors")
    got_mix=$(jq '.systems[] | select(.system == "nll") | .parameters' "$TMP/cl/summary.json")
    got_mlp=$(jq '.systems[] | select(.system == "mlp") | .parameters' "$TMP/cl/summary.json")
    { [ -n "$want_mix" ] && [ "$want_mix" = "$got_mix" ] && [ "$want_mlp" = "$got_mlp" ]; } ||
        fail "compare-loss parameters: nll $got_mix (checkpoint holds $want_mix), mlp $got_mlp (checkpoint holds $want_mlp)"
}
check "compare-loss: parameters of each system equal the weights of its model" t_compare_params

t_table() {
    run "$TMP/tb" "$MOE" train --config "$TMP/table.json" --out "$TMP/tb" --threads 1
    [ "$RC" -eq 0 ] || fail "$(describe "$TMP/tb" moe train --config table.json)" || return 1
    verify_run "$TMP/tb" "$TMP/tb" || return 1
    # speakers 1-6 x 4 vowels train, 7-10 x 4 test; the uw rows are dropped
    jq -e '.final.train.rows == 24 and .final.test.rows == 16 and (.final.test.accuracy | type) == "number"' \
        "$TMP/tb/summary.json" >/dev/null ||
        fail "expected 24 train / 16 test rows with accuracy, got $(jq -c '.final | map_values({rows, accuracy})' "$TMP/tb/summary.json")" || return 1
    header_text "$TMP/tb/model.safetensors" >"$TMP/tb.hdr"
    grep -Fq '"data.mean"' "$TMP/tb.hdr" || fail "checkpoint header lacks data.mean" || return 1
    grep -Fq '"data.std"' "$TMP/tb.hdr" || fail "checkpoint header lacks data.std"
}
check "table source (TSV, split by Speaker, 4 classes, standardize): trains, checkpoint has data.mean/data.std" t_table

t_idx() {
    run "$TMP/ix" "$MOE" train --config "$TMP/idx_ok.json" --out "$TMP/ix" --threads 1
    [ "$RC" -eq 0 ] || fail "$(describe "$TMP/ix" moe train --config idx_ok.json)" || return 1
    verify_run "$TMP/ix" "$TMP/ix" || return 1
    jq -e '.final.train.rows == 6' "$TMP/ix/summary.json" >/dev/null || fail "expected 6 train rows"
}
check "idx source (tiny hand-written IDX files) trains" t_idx

# ------------------------------------------------------------ sparse routing (mlp-moe, route-stats)
MOECFG="$TMP/moe.json"
printf '%s\n' '{ "data": { "synthetic": { "kind": "classes", "n_in": 4, "n_regions": 4, "n_train": 300, "n_test": 200 } },' \
    '  "model": { "type": "mlp-moe", "n_embd": 8, "n_layer": 2, "n_ff": 8, "n_expert": 4, "n_expert_used": 2 },' \
    '  "moe": { "router": "noisy-topk", "aux_loss": "shazeer", "capacity_factor": 1.0 },' \
    '  "optim": { "batch_size": 32 }, "train": { "epochs": 3 } }' >"$MOECFG"
t_mlp_moe() {
    run "$TMP/mm1" "$MOE" train --config "$MOECFG" --out "$TMP/mm1" --threads 1
    verify_run "$TMP/mm1" "$TMP/mm1" || return 1
    run "$TMP/mm2" "$MOE" train --config "$MOECFG" --out "$TMP/mm2" --threads 2 --quiet
    [ "$RC" = 0 ] || { describe "$TMP/mm2"; return 1; }
    for f in metrics.csv experts.csv model.safetensors; do
        cmp -s "$TMP/mm1/$f" "$TMP/mm2/$f" || fail "$f differs between --threads 1 and 2" || return 1
    done
    [ "$(head -1 "$TMP/mm1/experts.csv")" = "step,epoch,split,layer,expert,tokens,dropped,gate_mean,importance" ] ||
        fail "experts.csv header is '$(head -1 "$TMP/mm1/experts.csv")'" || return 1
    local m e
    m=$(tail -n +2 "$TMP/mm1/metrics.csv" | awk 'END { print NR }')
    e=$(tail -n +2 "$TMP/mm1/experts.csv" | awk 'END { print NR }')
    [ "$e" -eq $((m * 2 * 4)) ] || fail "experts.csv has $e rows, expected $((m * 8)) (metrics rows x 2 layers x 4 experts)" || return 1
    # every batch row's tokens per layer = 2 slots x 300 training rows; some dropped at capacity factor 1.0
    awk -F, 'NR > 1 && $3 == "batch" { t[$1 "," $4] += $6; d += $7 } END { for (k in t) if (t[k] != 600) exit 1; exit d > 0 ? 0 : 1 }' \
        "$TMP/mm1/experts.csv" || fail "batch rows of experts.csv do not route 600 assignments per layer with some dropped" || return 1
    jq -e '.routing.router == "noisy-topk" and .routing.aux_loss == "shazeer" and (.final.test.load_cv | type) == "number"
           and (.final.test.dropped_fraction | type) == "number" and .active_parameters < .parameters' "$TMP/mm1/summary.json" >/dev/null ||
        fail "summary.json lacks the routing record: $(jq -c '.routing' "$TMP/mm1/summary.json")"
}
check "train mlp-moe (noisy top-2, 2 layers): experts.csv, routing summary, byte-identical for --threads 1 and 2" t_mlp_moe

# --dry-run --device cuda: the device memory the plan needs, and whether it fits
# when a device is usable; refused in a build without CUDA and for a model the
# CUDA backend does not take (the mixture of reg.json)
t_dry_device() {
    run "$TMP/dd" "$MOE" train --dry-run --device cuda --config "$MOECFG"
    if [ "$CUDA_BUILD" = none ]; then
        [ "$RC" -eq 2 ] && grep -Fq "option '--device cuda' cannot be used: this build has no CUDA backend" "$TMP/dd.err" ||
            fail "$(describe "$TMP/dd" moe train --dry-run --device cuda)"
        return
    fi
    [ "$RC" -eq 0 ] || fail "$(describe "$TMP/dd" moe train --dry-run --device cuda)" || return 1
    # need = parameters + gradients + optimizer + activations + the device's extra (64 KiB and 64 bytes a
    # token of the largest batch: rows here) + the runtime's reserve, bytes
    jq -e '.device.device == "cuda:0" and .device.reserve_bytes == 536870912 and
           .device.extra_bytes >= 65536 + 64 and (.device.extra_bytes - 65536) % 64 == 0 and
           .device.memory_bytes == .memory_bytes.params + .memory_bytes.grads + .memory_bytes.optimizer +
                                   .memory_bytes.activations + .device.extra_bytes + .device.reserve_bytes' \
        "$TMP/dd.out" >/dev/null ||
        fail "device memory is not the plan's device buffers, the device's extra and the reserve: $(jq -c '{device, memory_bytes}' "$TMP/dd.out")" ||
        return 1
    case $CUDA_BUILD in
    nodevice) jq -e '.device.available == false and .device.fits == null and (.device.reason | length) > 0' \
                  "$TMP/dd.out" >/dev/null || fail "without a device: available false, fits null, a reason: $(jq -c .device "$TMP/dd.out")" ;;
    devices) jq -e '.device.available == true and (.device.fits | type) == "boolean" and .device.total_memory_bytes > 0 and
                    .device.fits == (.device.memory_bytes <= .device.total_memory_bytes)' \
                 "$TMP/dd.out" >/dev/null || fail "with a device: its memory and fits: $(jq -c .device "$TMP/dd.out")" ;;
    esac || return 1
    run "$TMP/ddm" "$MOE" train --dry-run --device cuda --config "$TMP/reg.json"
    [ "$RC" -eq 2 ] && grep -Fq "option '--device cuda' cannot be used with model.type 'mixture': the CUDA backend is for mlp-moe and transformer models" "$TMP/ddm.err" ||
        fail "a mixture model should be refused: $(describe "$TMP/ddm" moe train --dry-run --device cuda --config reg.json)"
}
check "train --dry-run --device cuda: device memory (plan + reserve), available/fits for this build ($CUDA_BUILD); a mixture refused" t_dry_device

# train --device cuda (only where a device is usable): the steps on the GPU,
# twice with the same seed (byte-identical metrics and weights), the summary
# naming the device; against the CPU run, the same rows and the same
# evaluated losses within 1e-3 (the GPU's GEMMs and exp round differently);
# the checkpoint loads on the CPU (route-stats). Elsewhere: refused, exit 2.
DEVCFG="$TMP/dev.json"
printf '%s\n' '{ "data": { "synthetic": { "kind": "classes", "n_in": 4, "n_regions": 4, "n_train": 300, "n_test": 200 } },' \
    '  "model": { "type": "mlp-moe", "n_embd": 16, "n_layer": 2, "n_ff": 32, "n_expert": 4, "n_expert_used": 2 },' \
    '  "moe": { "router": "softmax", "aux_loss": "switch", "capacity_factor": 1.25 },' \
    '  "optim": { "batch_size": 32 }, "train": { "epochs": 3, "log_every": 4 } }' >"$DEVCFG"
t_train_device() {
    run "$TMP/gd1" "$MOE" train --config "$DEVCFG" --out "$TMP/gd1" --device cuda
    if [ "$CUDA_BUILD" != devices ]; then
        [ "$RC" -eq 2 ] && grep -Fq "option '--device cuda' cannot be used: " "$TMP/gd1.err" && [ ! -e "$TMP/gd1" ] ||
            fail "$(describe "$TMP/gd1" moe train --device cuda): expected exit 2 and no run directory"
        return
    fi
    [ "$RC" -eq 0 ] || fail "$(describe "$TMP/gd1" moe train --device cuda)" || return 1
    run "$TMP/gd2" "$MOE" train --config "$DEVCFG" --out "$TMP/gd2" --device cuda
    [ "$RC" -eq 0 ] || fail "$(describe "$TMP/gd2" moe train --device cuda, again)" || return 1
    cmp -s "$TMP/gd1/metrics.csv" "$TMP/gd2/metrics.csv" && cmp -s "$TMP/gd1/model.safetensors" "$TMP/gd2/model.safetensors" ||
        fail "two --device cuda runs with one seed differ" || return 1
    jq -e '.device == "cuda:0" and (.device_name | length) > 0' "$TMP/gd1/summary.json" >/dev/null ||
        fail "summary.json should name the device: $(jq -c '{device, device_name}' "$TMP/gd1/summary.json")" || return 1
    run "$TMP/gc" "$MOE" train --config "$DEVCFG" --out "$TMP/gc"
    [ "$RC" -eq 0 ] || fail "$(describe "$TMP/gc" moe train --device cpu)" || return 1
    [ "$(wc -l <"$TMP/gc/metrics.csv")" = "$(wc -l <"$TMP/gd1/metrics.csv")" ] || fail "CPU and GPU runs have different rows" || return 1
    jq -e --slurpfile g "$TMP/gd1/summary.json" '((.final.test.loss - $g[0].final.test.loss) | fabs) <= 1e-3 * (.final.test.loss | fabs)' \
        "$TMP/gc/summary.json" >/dev/null ||
        fail "final test loss: cpu $(jq .final.test.loss "$TMP/gc/summary.json"), gpu $(jq .final.test.loss "$TMP/gd1/summary.json")" || return 1
    run "$TMP/grs" "$MOE" route-stats --checkpoint "$TMP/gd1/model.safetensors" --out "$TMP/grs"
    [ "$RC" -eq 0 ] || fail "$(describe "$TMP/grs" moe route-stats on the checkpoint of the GPU run)" || return 1
    # route-stats on the GPU: the summary names it; its loss within 1e-3 of the CPU's, the same tables
    run "$TMP/grg" "$MOE" route-stats --checkpoint "$TMP/gd1/model.safetensors" --out "$TMP/grg" --device cuda \
        --capacity-factors 0.5,1 --trace "$TMP/grg.jsonl"
    [ "$RC" -eq 0 ] || fail "$(describe "$TMP/grg" moe route-stats --device cuda)" || return 1
    jq -e --slurpfile c "$TMP/grs/summary.json" '.device == "cuda:0" and
        ((.loss - $c[0].loss) | fabs) <= 1e-3 * ($c[0].loss | fabs)' "$TMP/grg/summary.json" >/dev/null ||
        fail "route-stats --device cuda: loss $(jq .loss "$TMP/grg/summary.json"), cpu $(jq .loss "$TMP/grs/summary.json")" || return 1
    [ "$(wc -l <"$TMP/grg/experts.csv")" = "$(wc -l <"$TMP/grs/experts.csv")" ] && [ -s "$TMP/grg.jsonl" ] ||
        fail "route-stats --device cuda: tables or trace missing" || return 1
    # eval on the GPU: the same keys, the loss within 1e-3 of the CPU's eval
    run "$TMP/gev" "$MOE" eval --checkpoint "$TMP/gd1/model.safetensors" --device cuda
    [ "$RC" -eq 0 ] || fail "$(describe "$TMP/gev" moe eval --device cuda)" || return 1
    run "$TMP/cev" "$MOE" eval --checkpoint "$TMP/gd1/model.safetensors"
    [ "$RC" -eq 0 ] || fail "$(describe "$TMP/cev" moe eval)" || return 1
    jq -e --slurpfile c "$TMP/cev.out" '(keys == ($c[0] | keys)) and .rows == $c[0].rows and
        ((.loss - $c[0].loss) | fabs) <= 1e-3 * ($c[0].loss | fabs)' "$TMP/gev.out" >/dev/null ||
        fail "eval --device cuda: $(cat "$TMP/gev.out"); cpu $(cat "$TMP/cev.out")" || return 1
    # distill (the teacher's passes on the GPU too) and lora on the GPU: the CPU's rows, the final test
    # loss within 1e-3 of the CPU's; a teacher the device cannot run (an mlp) refused, exit 2
    local k
    for k in distill lora; do
        local args=(distill --teacher "$TMP/gd1/model.safetensors" --set model.n_embd=8 --alpha 0.6)
        [ $k = lora ] && args=(lora --base "$TMP/gd1/model.safetensors" --rank 2 --targets '*.experts.w1,head.weight')
        run "$TMP/g$k" "$MOE" "${args[@]}" --config "$DEVCFG" --out "$TMP/g$k" --device cuda
        [ "$RC" -eq 0 ] || fail "$(describe "$TMP/g$k" moe $k --device cuda)" || return 1
        run "$TMP/c$k" "$MOE" "${args[@]}" --config "$DEVCFG" --out "$TMP/c$k"
        [ "$RC" -eq 0 ] || fail "$(describe "$TMP/c$k" moe $k --device cpu)" || return 1
        [ "$(wc -l <"$TMP/c$k/metrics.csv")" = "$(wc -l <"$TMP/g$k/metrics.csv")" ] &&
            jq -e --slurpfile g "$TMP/g$k/summary.json" '((.final.test.loss - $g[0].final.test.loss) | fabs) <= 1e-3 * (.final.test.loss | fabs)' \
                "$TMP/c$k/summary.json" >/dev/null ||
            fail "moe $k: final test loss cpu $(jq .final.test.loss "$TMP/c$k/summary.json"), gpu $(jq .final.test.loss "$TMP/g$k/summary.json")" || return 1
    done
    run "$TMP/gmt" "$MOE" train --config "$DEVCFG" --set model.type=mlp --out "$TMP/gmt" --quiet
    [ "$RC" -eq 0 ] || fail "$(describe "$TMP/gmt" moe train model.type=mlp)" || return 1
    run "$TMP/gem" "$MOE" eval --checkpoint "$TMP/gmt/model.safetensors" --device cuda
    [ "$RC" -eq 2 ] && grep -Fq "option '--device cuda' cannot be used with model.type 'mlp': the CUDA backend is for mlp-moe and transformer models" "$TMP/gem.err" ||
        fail "an mlp checkpoint on the device: $(describe "$TMP/gem" moe eval --device cuda)" || return 1
    run "$TMP/gkm" "$MOE" distill --teacher "$TMP/gmt/model.safetensors" --config "$DEVCFG" --out "$TMP/gkm" --device cuda
    [ "$RC" -eq 2 ] && grep -Fq "is model.type 'mlp'; on the CUDA device the teacher must be mlp-moe or transformer too" "$TMP/gkm.err" &&
        [ ! -e "$TMP/gkm" ] || fail "an mlp teacher on the device: $(describe "$TMP/gkm" moe distill --device cuda)"
}
check "train --device cuda ($CUDA_BUILD): deterministic on the GPU, the CPU's rows, a checkpoint the CPU loads, route-stats, eval, distill and lora on the GPU; refused without a device" t_train_device

t_route_stats() {
    run "$TMP/gs" "$MOE" train --config "$MOECFG" --out "$TMP/gs" --quiet --set 'moe.router="gshard"' --set 'moe.aux_loss="gshard"'
    [ "$RC" = 0 ] || { describe "$TMP/gs"; return 1; }
    run "$TMP/rs" "$MOE" route-stats --checkpoint "$TMP/gs/model.safetensors" --out "$TMP/rs" --capacity-factors 0.5,0 --trace "$TMP/rs/trace.jsonl" --quiet
    [ "$RC" = 0 ] || { describe "$TMP/rs"; return 1; }
    [ "$(wc -l <"$TMP/rs.out")" -eq 1 ] && jq -e . "$TMP/rs.out" >/dev/null || fail "stdout is not one JSON line" || return 1
    cmp -s <(jq -S . "$TMP/rs.out") <(jq -S . "$TMP/rs/summary.json") || fail "stdout differs from summary.json" || return 1
    for f in layers.csv experts.csv capacity.csv coselect.csv trace.jsonl; do
        [ -s "$TMP/rs/$f" ] || fail "missing $f" || return 1
    done
    jq -e '.rows == 200 and (.layers | length) == 2 and all(.layers[]; (.tokens_per_expert | add) == 400)
           and .capacity[0].dropped_fraction[0] > 0 and .capacity[1].dropped_fraction == [0, 0]
           and all(.layers[]; (.coselect | length) == 4 and .expert_label_mi >= 0)' "$TMP/rs.out" >/dev/null ||
        fail "unexpected statistics: $(jq -c '{rows, capacity, layers: [.layers[] | {tokens_per_expert, expert_label_mi}]}' "$TMP/rs.out")" || return 1
    [ "$(wc -l <"$TMP/rs/trace.jsonl")" -eq 400 ] || fail "trace has $(wc -l <"$TMP/rs/trace.jsonl") lines, expected 200 rows x 2 layers" || return 1
    jq -e -s 'map(select(.index == 7 and .layer == 1)) | length == 1 and (.[0] | (.experts | length) == 2 and (.gates | length) == 2 and (.dropped | length) == 2)' \
        "$TMP/rs/trace.jsonl" >/dev/null || fail "trace line for token 7, layer 1 is malformed" || return 1
    # the trace agrees with experts.csv: assignments per (layer, expert)
    cmp -s <(jq -r '.layer as $l | .experts[] | "\($l),\(.)"' "$TMP/rs/trace.jsonl" | sort | uniq -c | awk '{ print $2 "," $1 }' | sort) \
           <(awk -F, 'NR > 1 && $3 > 0 { print $1 "," $2 "," $3 }' "$TMP/rs/experts.csv" | sort) ||
        fail "trace and experts.csv disagree on tokens per expert"
}
check "route-stats on a gshard checkpoint: tables, capacity sweep, co-selection, trace agrees with experts.csv" t_route_stats

t_hash_reload() {
    run "$TMP/hs" "$MOE" train --config "$MOECFG" --out "$TMP/hs" --quiet --set 'moe.router="hash"' --set model.n_expert_used=1 \
        --set 'moe.hash_table="balanced"' --set 'moe.aux_loss="none"'
    [ "$RC" = 0 ] || { describe "$TMP/hs"; return 1; }
    local a b
    run "$TMP/hr1" "$MOE" route-stats --checkpoint "$TMP/hs/model.safetensors" --out "$TMP/hr1" --trace "$TMP/hr1/t.jsonl" --data train --quiet
    run "$TMP/hr2" "$MOE" route-stats --checkpoint "$TMP/hs/model.safetensors" --out "$TMP/hr2" --trace "$TMP/hr2/t.jsonl" --data train --quiet --threads 1
    cmp -s "$TMP/hr1/t.jsonl" "$TMP/hr2/t.jsonl" || fail "two route-stats runs of one hash checkpoint route differently" || return 1
    # the routing seen in training (last batch row: every training row once) equals route-stats on the training split
    a=$(awk -F, 'NR > 1 && $3 == "batch" { last = $1 } END { print last }' "$TMP/hs/experts.csv")
    b=$(awk -F, -v s="$a" 'NR > 1 && $1 == s && $3 == "batch" { print $4 "," $5 "," $6 }' "$TMP/hs/experts.csv" | sort)
    [ "$b" = "$(awk -F, 'NR > 1 { print $1 "," $2 "," $3 }' "$TMP/hr1/experts.csv" | sort)" ] ||
        fail "hash routing after reload differs from training's: train '$b'" || return 1
    jq -e '.layers[0].router_entropy == null and .routing.router == "hash"' "$TMP/hr1.out" >/dev/null ||
        fail "hash routing should report no router entropy"
}
check "hash routing: the table reloaded from the checkpoint routes exactly as in training" t_hash_reload

# ------------------------------------------------------------ B. bad inputs
CFG="$TMP/reg.json"
O="$TMP/fail-out"

expect_fail "unknown command suggests the nearest" 2 "did you mean" "train" -- "$MOE" trian
expect_fail "unknown option --confgi suggests --config" 2 "--confgi" "--config" -- "$MOE" train --confgi "$CFG"
expect_fail "option without its value" 2 "--config" -- "$MOE" train --config
expect_fail "--threads 0" 2 "--threads" -- "$MOE" train --config "$CFG" --out "$O" --threads 0
expect_fail "--seed -1" 2 "--seed" -- "$MOE" train --config "$CFG" --out "$O" --seed -1
expect_fail "--device tpu" 2 "--device" "tpu" -- "$MOE" train --config "$CFG" --out "$O" --device tpu
expect_fail "--device cuda:x names the CUDA device count" 2 "expects cpu, cuda or cuda:N, got 'cuda:x'; CUDA devices: " \
    -- "$MOE" train --config "$CFG" --out "$O" --device cuda:x
case $CUDA_BUILD in
none)
    expect_fail "--device cuda, a build without CUDA: says how to build one" 2 \
        "option '--device cuda' cannot be used: this build has no CUDA backend; 'meson setup -Dcuda=enabled BUILDDIR'" \
        -- "$MOE" train --config "$CFG" --out "$O" --device cuda
    expect_fail "--device cuda:1, a build without CUDA" 2 "option '--device cuda:1' cannot be used: this build has no CUDA backend" \
        -- "$MOE" route-stats --checkpoint none.safetensors --out "$O" --device cuda:1 ;;
nodevice)
    expect_fail "--device cuda, no usable device: the driver's reason" 2 \
        "option '--device cuda' cannot be used: no usable CUDA device (" "; use --device cpu" \
        -- "$MOE" train --config "$CFG" --out "$O" --device cuda
    expect_fail "--device cuda:1, no usable device" 2 "option '--device cuda:1' cannot be used: no usable CUDA device (" \
        -- "$MOE" route-stats --checkpoint none.safetensors --out "$O" --device cuda:1 ;;
devices)
    expect_fail "--device cuda, a usable device, a command that does not run on one yet" 2 \
        "option '--device cuda' cannot be used: this command does not run on a CUDA device yet (cuda:0 is " \
        -- "$MOE" generate --checkpoint none.safetensors --device cuda
    expect_fail "train --device cuda, a mixture model" 2 \
        "option '--device cuda' cannot be used with model.type 'mixture': the CUDA backend is for mlp-moe and transformer models" \
        -- "$MOE" train --config "$CFG" --out "$O" --device cuda
    expect_fail "--device cuda:4096, out of range: names the device count" 2 \
        "option '--device cuda:4096' cannot be used: no CUDA device 4096; CUDA devices: " \
        -- "$MOE" route-stats --checkpoint none.safetensors --out "$O" --device cuda:4096 ;;
esac
expect_fail "unexpected positional argument" 2 "stray" -- "$MOE" train --config "$CFG" --out "$O" stray

# config files
printf '{\n  "model": {\n    "n_expert": 3,\n  oops\n}\n' >"$TMP/notjson.json"
printf '{ "model": { "n_expert": 3, "n_expert": 4 } }\n' >"$TMP/dup.json"
printf '{ "model": { "n_expertz": 3 } }\n' >"$TMP/unknown.json"
printf '{ "optim": { "lr": "fast" } }\n' >"$TMP/type.json"
printf '{ "model": { "n_expert": 2.5 } }\n' >"$TMP/nonint.json"
printf '{ "model": { "n_expert": 0 } }\n' >"$TMP/range.json"
printf '{ "optim": { "lr": 1e400 } }\n' >"$TMP/huge.json"
printf '{ "loss": { "type": "bogus" } }\n' >"$TMP/enum.json"
expect_fail "missing config file (names the path)" 1 "$TMP/no_such_config.json" -- "$MOE" train --config "$TMP/no_such_config.json" --out "$O"
expect_fail "config is not JSON (names file and line)" 2 "notjson.json" "line" -- "$MOE" train --config "$TMP/notjson.json" --out "$O"
expect_fail "duplicate key" 2 "duplicate" "n_expert" -- "$MOE" train --config "$TMP/dup.json" --out "$O"
expect_fail "unknown key model.n_expertz (suggests model.n_expert)" 2 "model.n_expertz" "'model.n_expert'" -- "$MOE" train --config "$TMP/unknown.json" --out "$O"
expect_fail "wrong type: string for optim.lr" 2 "optim.lr" -- "$MOE" train --config "$TMP/type.json" --out "$O"
expect_fail "non-integer 2.5 for model.n_expert" 2 "model.n_expert" -- "$MOE" train --config "$TMP/nonint.json" --out "$O"
expect_fail "out of range: model.n_expert 0" 2 "model.n_expert" -- "$MOE" train --config "$TMP/range.json" --out "$O"
expect_fail "non-finite number 1e400 for optim.lr" 2 "optim.lr" -- "$MOE" train --config "$TMP/huge.json" --out "$O"
expect_fail "bad enum value for loss.type" 2 "loss.type" "bogus" -- "$MOE" train --config "$TMP/enum.json" --out "$O"
expect_fail "--set without '='" 2 "--set" "model.n_expert" -- "$MOE" train --config "$CFG" --out "$O" --set model.n_expert
expect_fail "--set unknown key" 2 "model.foo" -- "$MOE" train --config "$CFG" --out "$O" --set model.foo=3
expect_fail "--set out-of-range value" 2 "model.n_expert" -- "$MOE" train --config "$CFG" --out "$O" --set model.n_expert=2000

# loss / model / data mismatches
expect_fail "model.type mlp with loss.type nll" 2 "loss.type" -- "$MOE" train --config "$CFG" --out "$O" --set model.type=mlp --set loss.type=nll
expect_fail "nll-cat on a regression task" 2 "loss.type" "nll-cat" -- "$MOE" train --config "$CFG" --out "$O" --set loss.type=nll-cat

# checkpoints for --init (r1/model.safetensors comes from the happy-path run)
CK="$TMP/r1/model.safetensors"
: >"$TMP/empty.safetensors"
head -c 100 "$CK" >"$TMP/trunc_header.safetensors"
if [ -s "$CK" ]; then
    head -c $(($(wc -c <"$CK") - 10)) "$CK" >"$TMP/trunc_data.safetensors"
else
    : >"$TMP/trunc_data.safetensors"
fi
printf 'this is not a safetensors file, just some text\n' >"$TMP/garbage.safetensors"
# a plausible header length (32) followed by 32 bytes that are not JSON
printf '\x20\x00\x00\x00\x00\x00\x00\x00{not json at all, not at all!!!}' >"$TMP/badjson.safetensors"
expect_fail "--init: nonexistent checkpoint" 1 "$TMP/no_such.safetensors" -- "$MOE" train --config "$CFG" --out "$O" --init "$TMP/no_such.safetensors"
expect_fail "--init: empty file" 1 "empty.safetensors" -- "$MOE" train --config "$CFG" --out "$O" --init "$TMP/empty.safetensors"
expect_fail "--init: checkpoint cut inside its header" 1 "checkpoint" "trunc_header.safetensors" -- "$MOE" train --config "$CFG" --out "$O" --init "$TMP/trunc_header.safetensors"
expect_fail "--init: checkpoint cut inside its tensor data" 1 "checkpoint" "trunc_data.safetensors" -- "$MOE" train --config "$CFG" --out "$O" --init "$TMP/trunc_data.safetensors"
expect_fail "--init: garbage instead of a header" 1 "garbage.safetensors" -- "$MOE" train --config "$CFG" --out "$O" --init "$TMP/garbage.safetensors"
expect_fail "--init: header that is not JSON" 1 "badjson.safetensors" -- "$MOE" train --config "$CFG" --out "$O" --init "$TMP/badjson.safetensors"
expect_fail "--init: shape mismatch (3 experts into 4) names both shapes" 2 "shape" "re:\[3, ?2\]" "re:\[4, ?2\]" -- \
    "$MOE" train --config "$CFG" --out "$O" --set model.n_expert=4 --init "$CK"
# an mlp checkpoint (m/model.safetensors, from the happy-path run) into a mixture
expect_fail "--init: checkpoint of another model type (missing tensor)" 2 "checkpoint" "gate.weight" -- \
    "$MOE" train --config "$CFG" --out "$O" --init "$TMP/m/model.safetensors"

# table data
expect_fail "table: feature column missing (names it)" 1 "F9" "vowels.tsv" -- "$MOE" train --config "$TMP/table_nocol.json" --out "$O"
expect_fail "table: non-numeric feature cell (names file and line 5)" 1 "vowels_bad.tsv" "line 5" -- "$MOE" train --config "$TMP/table_badcell.json" --out "$O"
expect_fail "table: data.table.path unset" 2 "data.table.path" -- "$MOE" train --config "$TMP/table_nopath.json" --out "$O"
expect_fail "table: nonexistent file" 1 "no_such_table.tsv" -- "$MOE" train --config "$TMP/table_nofile.json" --out "$O"

# IDX
expect_fail "idx: truncated images file" 1 "truncated" "img_trunc.idx" -- "$MOE" train --config "$TMP/idx_trunc.json" --out "$O"
expect_fail "idx: truncated gzipped images file" 1 "truncated" "img_trunc.idx.gz" -- "$MOE" train --config "$TMP/idx_trunc_gz.json" --out "$O"
expect_fail "idx: images/labels count mismatch" 1 "lab5.idx" -- "$MOE" train --config "$TMP/idx_count.json" --out "$O"

# compare-loss
expect_fail "compare-loss: missing --losses" 2 "--losses" -- "$MOE" compare-loss --config "$CFG" --seeds 1-3 --out "$O"
expect_fail "compare-loss: unknown system foo" 2 "foo" -- "$MOE" compare-loss --config "$CFG" --losses nll,foo --seeds 1-3 --out "$O"
expect_fail "compare-loss: bad --seeds 5-1" 2 "--seeds" "5-1" -- "$MOE" compare-loss --config "$CFG" --losses nll --seeds 5-1 --out "$O"

# divergence (--quiet: without it the progress line also goes to stderr)
printf '{ "data": { "synthetic": { "n_train": 200, "n_test": 100 } }, "loss": { "type": "cooperative" }, "optim": { "type": "gd", "lr": 500 }, "train": { "epochs": 60 } }\n' >"$TMP/diverge.json"
printf '{ "data": { "synthetic": { "n_train": 200, "n_test": 100 } }, "optim": { "type": "gd", "lr": 500 }, "train": { "epochs": 60 } }\n' >"$TMP/diverge_nll.json"
expect_fail "divergence (gd, lr 500, cooperative): epoch and non-finite loss" 1 "re:epoch [0-9]+" "loss" "re:not finite|non-finite" -- \
    "$MOE" train --config "$TMP/diverge.json" --out "$TMP/div1" --quiet --threads 1
expect_fail "divergence (gd, lr 500, nll): epoch/step and non-finite value" 1 "re:(epoch|step) [0-9]+" "re:not finite|non-finite" -- \
    "$MOE" train --config "$TMP/diverge_nll.json" --out "$TMP/div2" --quiet --threads 1

# sparse routing configs and route-stats
expect_fail "mlp-moe: gshard with n_expert_used 1" 2 "model.n_expert_used" "gshard" -- "$MOE" train --config "$MOECFG" --out "$O" --set 'moe.router="gshard"' --set model.n_expert_used=1
expect_fail "mlp-moe: hash with n_expert_used 2" 2 "model.n_expert_used" "hash" -- "$MOE" train --config "$MOECFG" --out "$O" --set 'moe.router="hash"'
expect_fail "mlp-moe: switch with n_expert_used 2" 2 "model.n_expert_used" "switch" -- "$MOE" train --config "$MOECFG" --out "$O" --set 'moe.router="switch"'
expect_fail "mlp-moe: n_expert_used above n_expert" 2 "model.n_expert_used" -- "$MOE" train --config "$MOECFG" --out "$O" --set model.n_expert_used=5
expect_fail "mlp-moe: bias balancing with gshard" 2 "moe.bias_balance" -- "$MOE" train --config "$MOECFG" --out "$O" --set 'moe.router="gshard"' --set moe.bias_balance=true
expect_fail "mlp-moe: smooth load loss without noisy-topk" 2 "moe.w_load" "noisy-topk" -- "$MOE" train --config "$MOECFG" --out "$O" --set 'moe.router="softmax"'
expect_fail "mlp-moe: unknown router" 2 "moe.router" "top3" -- "$MOE" train --config "$MOECFG" --out "$O" --set 'moe.router="top3"'
expect_fail "mlp-moe: loss nll" 2 "loss.type" "mlp-moe" -- "$MOE" train --config "$MOECFG" --out "$O" --set 'loss.type="nll"'
expect_fail "mlp-moe: negative capacity factor" 2 "moe.capacity_factor" -- "$MOE" train --config "$MOECFG" --out "$O" --set moe.capacity_factor=-1
expect_fail "route-stats: --checkpoint missing" 2 "--checkpoint" -- "$MOE" route-stats --out "$O"
expect_fail "route-stats: --data val" 2 "--data" "val" -- "$MOE" route-stats --checkpoint "$TMP/gs/model.safetensors" --out "$O" --data val
expect_fail "route-stats: --capacity-factors 1,x" 2 "--capacity-factors" "'x'" -- "$MOE" route-stats --checkpoint "$TMP/gs/model.safetensors" --out "$O" --capacity-factors 1,x
expect_fail "route-stats: --capacity-factors -1" 2 "--capacity-factors" -- "$MOE" route-stats --checkpoint "$TMP/gs/model.safetensors" --out "$O" --capacity-factors -1
expect_fail "route-stats: --config does not apply" 2 "--config" -- "$MOE" route-stats --checkpoint "$TMP/gs/model.safetensors" --out "$O" --config "$CFG"
expect_fail "route-stats: checkpoint without sparse layers" 2 "nothing to route" -- "$MOE" route-stats --checkpoint "$TMP/r1/model.safetensors" --out "$O"
expect_fail "route-stats: truncated checkpoint" 1 "trunc_data.safetensors" -- "$MOE" route-stats --checkpoint "$TMP/trunc_data.safetensors" --out "$O"
expect_fail "route-stats: --set to a model the checkpoint does not fit" 2 "shape" -- "$MOE" route-stats --checkpoint "$TMP/gs/model.safetensors" --out "$O" --set model.n_embd=9

# output directory
: >"$TMP/a_regular_file"
expect_fail "train --out names a regular file" 1 "a_regular_file" -- "$MOE" train --config "$CFG" --out "$TMP/a_regular_file"
expect_fail "compare-loss --out names a regular file" 1 "a_regular_file" -- "$MOE" compare-loss --config "$CFG" --losses nll --seeds 1 --out "$TMP/a_regular_file"

# ------------------------------------------------------------ resources (--dry-run, memory check)
t_dry_run() {
    run "$TMP/dry" "$MOE" train --dry-run --config "$MOECFG" --out "$TMP/dry-out"
    [ "$RC" -eq 0 ] || { fail "exit $RC: $(cat "$TMP/dry.err")"; return 1; }
    [ ! -e "$TMP/dry-out" ] || { fail "--dry-run created the run directory"; return 1; }
    local p a m
    p=$(jq -r .parameters "$TMP/dry.out") a=$(jq -r .active_parameters "$TMP/dry.out")
    m=$(jq -r '.memory_bytes.total > 0 and .flops_per_token > 0 and (.fits | type) == "boolean"' "$TMP/dry.out")
    [ "$m" = true ] || { fail "memory, flops or fits missing: $(head -c 600 "$TMP/dry.out")"; return 1; }
    # the estimate's counts are the trained model's
    "$MOE" train --config "$MOECFG" --out "$TMP/dry-real" --quiet >"$TMP/dry-real.out" 2>/dev/null ||
        { fail "training the same config failed"; return 1; }
    [ "$p" = "$(jq -r .parameters "$TMP/dry-real.out")" ] && [ "$a" = "$(jq -r .active_parameters "$TMP/dry-real.out")" ] ||
        { fail "dry-run says $p / $a parameters, the run $(jq -c '[.parameters, .active_parameters]' "$TMP/dry-real.out")"; return 1; }
}
check "train --dry-run: JSON estimate, no run directory, counts equal the trained model's" t_dry_run
t_memory_refusal() {
    MOE_MEMORY_LIMIT=64K run "$TMP/mem" "$MOE" train --config "$MOECFG" --out "$TMP/mem-out"
    [ "$RC" -eq 1 ] || { fail "exit $RC, expected 1"; return 1; }
    [ "$(awk 'END { print NR }' "$TMP/mem.err")" -eq 1 ] && grep -q "MOE_MEMORY_LIMIT" "$TMP/mem.err" ||
        { fail "stderr: $(cat "$TMP/mem.err")"; return 1; }
    [ ! -e "$TMP/mem-out" ] || { fail "the refused run created its directory"; return 1; }
}
check "a run that does not fit the memory limit is refused before it allocates (exit 1, one line)" t_memory_refusal
# A distillation teacher counts: a budget that holds the student's run but not the teacher beside it
# refuses the run before the teacher is made (one line naming the teacher, exit 1, no run directory);
# a budget with room for both runs it.
t_memory_teacher() {
    local s="$TMP/mt-student.json"
    printf '%s\n' '{ "data": { "synthetic": { "kind": "classes", "n_in": 4, "n_regions": 4, "n_train": 300, "n_test": 200 } },' \
        '  "model": { "type": "mlp-moe", "n_embd": 8, "n_layer": 1, "n_ff": 8, "n_expert": 2, "n_expert_used": 1 },' \
        '  "optim": { "batch_size": 32 }, "train": { "epochs": 1 } }' >"$s"
    run "$TMP/mt-t" "$MOE" train --config "$s" --set model.n_embd=128 --set model.n_ff=512 --set model.n_expert=8 \
        --set model.n_layer=2 --out "$TMP/mt-t" --quiet
    [ "$RC" -eq 0 ] || fail "$(describe "$TMP/mt-t" moe train the teacher)" || return 1
    local need
    need=$("$MOE" train --dry-run --config "$s" | jq .memory_bytes.total)
    MOE_MEMORY_LIMIT=$((need + 1048576)) run "$TMP/mt-d1" "$MOE" distill --teacher "$TMP/mt-t/model.safetensors" \
        --config "$s" --out "$TMP/mt-d1"
    [ "$RC" -eq 1 ] && [ "$(awk 'END { print NR }' "$TMP/mt-d1.err")" -eq 1 ] &&
        grep -Fq "this config, with distill.teacher '$TMP/mt-t/model.safetensors', needs about" "$TMP/mt-d1.err" &&
        [ ! -e "$TMP/mt-d1" ] || fail "a teacher beyond the budget: $(describe "$TMP/mt-d1" moe distill)" || return 1
    MOE_MEMORY_LIMIT=$((need + 67108864)) run "$TMP/mt-d2" "$MOE" distill --teacher "$TMP/mt-t/model.safetensors" \
        --config "$s" --out "$TMP/mt-d2" --quiet
    [ "$RC" -eq 0 ] || fail "room for both: $(describe "$TMP/mt-d2" moe distill)" || return 1
    # --dry-run: writes nothing; the teacher's object (its parameters as trained) and its bytes in the
    # total, which is exactly the figure the run checks: a budget one byte short is refused, that figure runs
    run "$TMP/mt-dry" "$MOE" distill --dry-run --teacher "$TMP/mt-t/model.safetensors" --config "$s" --out "$TMP/mt-d3"
    [ "$RC" -eq 0 ] && [ ! -e "$TMP/mt-d3" ] || fail "$(describe "$TMP/mt-dry" moe distill --dry-run)" || return 1
    jq -e --argjson need "$need" --slurpfile t "$TMP/mt-t/summary.json" \
        '.dry_run and .command == "distill" and .distill.teacher.parameters == $t[0].parameters and
         .distill.teacher.model == "mlp-moe" and .memory_bytes.total == $need + .distill.teacher.memory_bytes' \
        "$TMP/mt-dry.out" >/dev/null ||
        fail "distill --dry-run: the teacher's object and bytes: $(jq -c '{distill, total: .memory_bytes.total}' "$TMP/mt-dry.out"), student alone $need" ||
        return 1
    local total
    total=$(jq .memory_bytes.total "$TMP/mt-dry.out")
    MOE_MEMORY_LIMIT=$((total - 1)) run "$TMP/mt-d4" "$MOE" distill --teacher "$TMP/mt-t/model.safetensors" \
        --config "$s" --out "$TMP/mt-d4" --quiet
    [ "$RC" -eq 1 ] && grep -Fq "with distill.teacher" "$TMP/mt-d4.err" ||
        fail "a budget one byte under the dry run's total: $(describe "$TMP/mt-d4" moe distill)" || return 1
    MOE_MEMORY_LIMIT=$total run "$TMP/mt-d5" "$MOE" distill --teacher "$TMP/mt-t/model.safetensors" \
        --config "$s" --out "$TMP/mt-d5" --quiet
    [ "$RC" -eq 0 ] || fail "a budget of the dry run's total: $(describe "$TMP/mt-d5" moe distill)" || return 1
    # --device cuda: the teacher's device bytes in the device's memory_bytes (refused without CUDA)
    run "$TMP/mt-dd" "$MOE" distill --dry-run --device cuda --teacher "$TMP/mt-t/model.safetensors" --config "$s"
    if [ "$CUDA_BUILD" = none ]; then
        [ "$RC" -eq 2 ] || fail "$(describe "$TMP/mt-dd" moe distill --dry-run --device cuda): expected exit 2"
        return
    fi
    run "$TMP/mt-ds" "$MOE" train --dry-run --device cuda --config "$s"
    [ "$RC" -eq 0 ] && [ "$(jq '.device.memory_bytes' "$TMP/mt-ds.out")" != null ] || fail "$(describe "$TMP/mt-ds" moe train --dry-run --device cuda)" || return 1
    [ "$RC" -eq 0 ] && jq -e --slurpfile st "$TMP/mt-ds.out" '.device.teacher_bytes > 0 and
        .device.memory_bytes == $st[0].device.memory_bytes + .device.teacher_bytes' "$TMP/mt-dd.out" >/dev/null ||
        fail "distill --dry-run --device cuda: the teacher's device bytes: $(jq -c .device "$TMP/mt-dd.out" 2>&1), student $(jq -c .device.memory_bytes "$TMP/mt-ds.out")"
}
check "distill: the teacher counts in the memory check, before it is made; --dry-run gives that figure" t_memory_teacher
# moe lora --dry-run: the estimate the lora run checks (train.h MOE_RUN_LORA), printed with nothing
# trained or written (no --out directory, nothing in the working directory); a budget one byte under its
# total refuses the run before it allocates (exit 1, one line, no run directory) and that total runs; its
# "tuning" is the run's summary.tuning. The figures are also worked out here from the base's shapes, so an
# estimate that dropped the adapters, or kept moments for the frozen base, fails even though the dry run
# and the run, sharing it, would still agree: optimizer = AdamW's two moments (each a 64-byte multiple)
# of the trained floats (routers and adapters: tuning.trainable_parameters; the adapter tensors, [4, 2, 8]
# and [4, 8, 2], are 16-float multiples, so the registry adds no padding); adapters = their values and
# gradients, each adapted matrix's W0 and one (out x in) scratch, each a 64-byte multiple; every other
# figure is train --dry-run's of the same config.
t_memory_lora() {
    local s="$TMP/ml.json" d="$TMP/ml-cwd"
    printf '%s\n' '{ "data": { "synthetic": { "kind": "classes", "n_in": 4, "n_regions": 4, "n_train": 300, "n_test": 200 } },' \
        '  "model": { "type": "mlp-moe", "n_embd": 8, "n_layer": 2, "n_ff": 8, "n_expert": 4, "n_expert_used": 1 },' \
        '  "moe": { "router": "switch" }, "optim": { "type": "adamw", "batch_size": 32 }, "train": { "epochs": 1 } }' >"$s"
    run "$TMP/ml-base" "$MOE" train --config "$s" --out "$TMP/ml-base" --quiet
    [ "$RC" -eq 0 ] || fail "$(describe "$TMP/ml-base" moe train the base)" || return 1
    local args=(--base "$TMP/ml-base/model.safetensors" --config "$s" --rank 2 --targets '*.experts.*')
    mkdir "$d" && (cd "$d" && "$MOE" lora --dry-run "${args[@]}" --out "$TMP/ml-dry" >"$TMP/ml-dry.out" 2>"$TMP/ml-dry.err")
    RC=$?
    [ "$RC" -eq 0 ] && [ ! -e "$TMP/ml-dry" ] && [ -z "$(ls -A "$d")" ] ||
        fail "lora --dry-run wrote something: $(describe "$TMP/ml-dry" moe lora --dry-run) cwd: $(ls -A "$d")" || return 1
    jqe "$TMP/ml-dry.out" '.dry_run and .command == "lora" and (.memory_bytes.total | type) == "number" and
        .fits == true and .tuning.rank == 2 and (.tuning.adapted_tensors | length) == 4' "lora --dry-run's JSON" || return 1
    run "$TMP/ml-train" "$MOE" train --dry-run --config "$s"
    [ "$RC" -eq 0 ] || fail "$(describe "$TMP/ml-train" moe train --dry-run)" || return 1
    st_header "$TMP/ml-base/model.safetensors" >"$TMP/ml-base.header" || fail "no header in the base" || return 1
    jq -e --slurpfile t "$TMP/ml-train.out" --slurpfile h "$TMP/ml-base.header" '
        def r64: ((. + 63) / 64 | floor) * 64;
        ($h[0] as $h | .tuning.adapted_tensors | map($h[.].shape)) as $sh |
        (2 * ((4 * .tuning.trainable_parameters) | r64)) as $opt |
        (2 * ((4 * .tuning.adapter_parameters) | r64) + ($sh | map(4 * .[0] * .[1] * .[2] | r64) | add) +
         ($sh | map(4 * .[1] * .[2]) | max | r64)) as $ad |
        .memory_bytes.optimizer == $opt and .memory_bytes.adapters == $ad and
        .memory_bytes.total == $t[0].memory_bytes.total - $t[0].memory_bytes.optimizer + $opt + $ad and
        .tuning.adapter_parameters == 4 * 4 * (2 * 8 + 8 * 2) and
        .tuning.trainable_parameters == .tuning.adapter_parameters + 2 * 4 * 8' "$TMP/ml-dry.out" >/dev/null ||
        fail "lora --dry-run's figures are not the frozen base, the trained floats' moments and the adapters: $(jq -c '{memory_bytes, tuning}' "$TMP/ml-dry.out"), train --dry-run $(jq -c .memory_bytes "$TMP/ml-train.out")" ||
        return 1
    local total
    total=$(jq .memory_bytes.total "$TMP/ml-dry.out")
    MOE_MEMORY_LIMIT=$((total - 1)) run "$TMP/ml-r1" "$MOE" lora "${args[@]}" --out "$TMP/ml-r1" --quiet
    [ "$RC" -eq 1 ] && [ "$(awk 'END { print NR }' "$TMP/ml-r1.err")" -eq 1 ] && [ ! -s "$TMP/ml-r1.out" ] &&
        grep -Fq "moe lora: this config needs about" "$TMP/ml-r1.err" && [ ! -e "$TMP/ml-r1" ] ||
        fail "a budget one byte under the dry run's total: $(describe "$TMP/ml-r1" moe lora)" || return 1
    MOE_MEMORY_LIMIT=$total run "$TMP/ml-r2" "$MOE" lora "${args[@]}" --out "$TMP/ml-r2" --quiet
    [ "$RC" -eq 0 ] || fail "a budget of the dry run's total: $(describe "$TMP/ml-r2" moe lora)" || return 1
    [ "$(jq -S -c .tuning "$TMP/ml-dry.out")" = "$(jq -S -c .tuning "$TMP/ml-r2/summary.json")" ] ||
        fail "the dry run's tuning $(jq -c .tuning "$TMP/ml-dry.out") is not the run's $(jq -c .tuning "$TMP/ml-r2/summary.json")" ||
        return 1
    # --device cuda: the adapters, W0 and scratch in the device's memory_bytes too (refused without CUDA)
    run "$TMP/ml-dd" "$MOE" lora --dry-run --device cuda "${args[@]}"
    if [ "$CUDA_BUILD" = none ]; then
        [ "$RC" -eq 2 ] || fail "$(describe "$TMP/ml-dd" moe lora --dry-run --device cuda): expected exit 2"
        return
    fi
    [ "$RC" -eq 0 ] && jq -e '.memory_bytes.adapters > 0 and .device.memory_bytes == .memory_bytes.params +
        .memory_bytes.grads + .memory_bytes.optimizer + .memory_bytes.adapters + .memory_bytes.activations +
        .device.extra_bytes + .device.reserve_bytes' "$TMP/ml-dd.out" >/dev/null ||
        fail "lora --dry-run --device cuda: $(describe "$TMP/ml-dd" moe lora --dry-run --device cuda)"
}
check "lora: --dry-run writes nothing and gives the figure the run checks (frozen base, adapters); a byte less is refused" t_memory_lora
expect_fail "an absurd size is a config error naming its keys" 2 "model.n_expert x model.n_ff x model.n_embd" -- "$MOE" train --config "$MOECFG" --out "$O" --set model.n_expert=1024 --set model.n_ff=65536 --set model.n_embd=65536
expect_fail "--dry-run of an absurd size: the same config error" 2 "more than any machine has" -- "$MOE" train --dry-run --config "$MOECFG" --set model.n_expert=1024 --set model.n_ff=65536 --set model.n_embd=65536

# The failing commands must not have created their output directory's files.
t_no_partial() {
    if [ -e "$O/summary.json" ] || [ -e "$O/model.safetensors" ]; then
        fail "a failed command left summary.json / model.safetensors in $O"
    fi
}
check "failed commands leave no summary.json or model.safetensors behind" t_no_partial

# ---------------------------------------------------------------- validation split
# data.synthetic.n_valid: split=valid rows between train and test at every evaluation, the same at
# 1 and 2 threads; the train and test rows are those of the run without it; train.criterion_split
# = valid stops at the first epoch whose validation loss meets the value.
t_valid_split() {
    local t
    for t in 1 2; do
        "$MOE" train --config "$TMP/reg.json" --set data.synthetic.n_valid=50 --out "$TMP/val$t" --threads "$t" --quiet \
            >/dev/null 2>"$TMP/val$t.err" || { fail "n_valid run: $(cat "$TMP/val$t.err")"; return 1; }
    done
    "$MOE" train --config "$TMP/reg.json" --out "$TMP/val0" --threads 1 --quiet >/dev/null 2>&1 || { fail "plain run"; return 1; }
    cmp -s "$TMP/val1/metrics.csv" "$TMP/val2/metrics.csv" || { fail "metrics.csv differs between 1 and 2 threads"; return 1; }
    cmp -s <(grep -v ',valid,' "$TMP/val1/metrics.csv") "$TMP/val0/metrics.csv" ||
        { fail "the train and test rows changed with a validation split"; return 1; }
    [ "$(grep -c ',valid,' "$TMP/val1/metrics.csv")" = 5 ] || { fail "expected 5 valid rows (epochs 0-4)"; return 1; }
    awk -F, 'NR > 1 && $3 != "batch" { s = s $3 " " } END { exit !(s ~ /^(train valid test )+$/) }' "$TMP/val1/metrics.csv" ||
        { fail "rows are not train, valid, test at each evaluation"; return 1; }
    jqe "$TMP/val1/summary.json" '.final.valid.rows == 50 and .final.test.rows == 100 and .final.train.rows == 200' \
        "summary final.valid" || return 1
    # moe eval --data valid: the summary's final.valid, value for value
    "$MOE" eval --checkpoint "$TMP/val1/model.safetensors" --data valid --quiet >"$TMP/val1.eval" 2>&1 ||
        { fail "eval --data valid: $(cat "$TMP/val1.eval")"; return 1; }
    [ "$(jq -S -c . "$TMP/val1.eval")" = "$(jq -S -c .final.valid "$TMP/val1/summary.json")" ] ||
        { fail "eval --data valid differs from final.valid"; return 1; }
    # the criterion on the validation loss: the value of epoch 2's valid row
    local v want
    v=$(awk -F, '$2 == 2 && $3 == "valid" { print $4 }' "$TMP/val1/metrics.csv")
    want=$(awk -F, -v v="$v" '$3 == "valid" && $2 > 0 && $4 + 0 <= v + 0 { print $2; exit }' "$TMP/val1/metrics.csv")
    "$MOE" train --config "$TMP/reg.json" --set data.synthetic.n_valid=50 --set train.criterion=loss \
        --set train.criterion_value="$v" --set train.criterion_split=valid --out "$TMP/valc" --threads 1 --quiet \
        >/dev/null 2>"$TMP/valc.err" || { fail "criterion run: $(cat "$TMP/valc.err")"; return 1; }
    jqe "$TMP/valc/summary.json" ".criterion_epoch == $want and .epochs == $want" "criterion on the validation split" || return 1
}
check "validation split: valid rows, thread-independent, train/test unchanged; criterion_split=valid" t_valid_split

# route-stats --data valid routes the validation split (50 rows here), --data test the test split.
t_route_valid() {
    cat >"$TMP/rsv.json" <<'JSON'
{ "data": { "source": "synthetic", "synthetic": { "kind": "classes", "n_in": 8, "n_regions": 4, "n_train": 200, "n_test": 100, "n_valid": 50 } },
  "model": { "type": "mlp-moe", "n_embd": 16, "n_layer": 1, "moe_every": 1, "n_ff": 16, "n_expert": 4, "n_expert_used": 1 },
  "moe": { "router": "switch" }, "loss": { "type": "ce" }, "optim": { "type": "adamw", "lr": 0.01, "batch_size": 64 },
  "train": { "epochs": 2 } }
JSON
    "$MOE" train --config "$TMP/rsv.json" --out "$TMP/rsv" --threads 1 --quiet >/dev/null 2>"$TMP/rsv.err" ||
        { fail "train: $(cat "$TMP/rsv.err")"; return 1; }
    local sp want
    for sp in valid test; do
        want=$([ $sp = valid ] && echo 50 || echo 100)
        "$MOE" route-stats --checkpoint "$TMP/rsv/model.safetensors" --out "$TMP/rsv-$sp" --data $sp --quiet \
            >"$TMP/rsv-$sp.json" 2>"$TMP/rsv-$sp.err" || { fail "route-stats --data $sp: $(cat "$TMP/rsv-$sp.err")"; return 1; }
        jqe "$TMP/rsv-$sp.json" ".split == \"$sp\" and .layers[0].tokens == $want" "route-stats --data $sp" || return 1
    done
}
check "route-stats --data valid routes the validation split" t_route_valid

# train.select = best_valid_loss: a small noisy training set overfits, so the validation loss
# turns up; the run ends with the epoch of the lowest validation row, and its final rows and
# model.safetensors are that epoch's. A SIGTERM and --resume end with the same selection.
QUICK=$HERE/../../examples/quickstart.json
SEL=(--set data.synthetic.n_valid=100 --set data.synthetic.n_train=24 --set data.synthetic.noise=0.8
     --set optim.lr=0.05 --set train.eval_every=5 --set train.select=best_valid_loss)
t_select() {
    "$MOE" train --config "$QUICK" "${SEL[@]}" --set train.epochs=40 --out "$TMP/sel" --threads 1 --quiet \
        >/dev/null 2>"$TMP/sel.err" || { fail "select run: $(cat "$TMP/sel.err")"; return 1; }
    local best row
    best=$(awk -F, '$3 == "valid" { if (b == "" || $4 + 0 < v + 0) { b = $2; v = $4 } } END { print b }' "$TMP/sel/metrics.csv")
    [ "$best" -gt 0 ] && [ "$best" -lt 40 ] || { fail "the fixture should select an inner epoch, got $best"; return 1; }
    jqe "$TMP/sel/summary.json" ".select == \"best_valid_loss\" and .selected_epoch == $best and .epochs == 40" \
        "selected_epoch is the epoch of the lowest validation loss ($best)" || return 1
    for row in valid test train; do
        awk -F, -v e="$best" -v s="$row" -v f="$(jq .final.$row.loss "$TMP/sel/summary.json")" \
            '$2 == e && $3 == s { d = $4 - f; if (d < 0) d = -d; found = 1; ok = d <= 1e-8 * (f < 0 ? -f : f) + 1e-12 }
             END { exit !(found && ok) }' "$TMP/sel/metrics.csv" ||
            { fail "final.$row.loss is not epoch $best's $row row"; return 1; }
    done
    "$MOE" eval --checkpoint "$TMP/sel/model.safetensors" --data test --quiet >"$TMP/sel.eval" 2>&1 &&
        [ "$(jq -S -c . "$TMP/sel.eval")" = "$(jq -S -c .final.test "$TMP/sel/summary.json")" ] ||
        { fail "model.safetensors is not the selected model (eval --data test vs final.test)"; return 1; }
}
check "train.select=best_valid_loss: the epoch of the lowest validation loss; final rows and model are its" t_select
t_select_resume() {
    "$MOE" train --config "$QUICK" "${SEL[@]}" --set train.epochs=300 --set train.checkpoint_every=3 \
        --out "$TMP/selr" --threads 1 --quiet >/dev/null 2>&1 || { fail "select reference run"; return 1; }
    rm -rf "$TMP/selt"
    "$MOE" train --config "$QUICK" "${SEL[@]}" --set train.epochs=300 --set train.checkpoint_every=3 \
        --out "$TMP/selt" --threads 1 --quiet >/dev/null 2>"$TMP/selt.err" &
    local pid=$! i=0
    while [ ! -e "$TMP/selt/checkpoint.safetensors" ] && [ $i -lt 1000 ] && kill -0 "$pid" 2>/dev/null; do
        sleep 0.01
        i=$((i + 1))
    done
    sleep 0.1
    kill -s TERM "$pid" 2>/dev/null
    wait "$pid"
    local rc=$?
    [ "$rc" = 143 ] || [ "$rc" = 0 ] || { fail "exit $rc: $(cat "$TMP/selt.err")"; return 1; }
    echo "# select resume: stopped with exit $rc at step $(jq .steps "$TMP/selt/summary.json" 2>/dev/null)"
    "$MOE" train --resume "$TMP/selt" --threads 1 --quiet >/dev/null 2>"$TMP/selt.err2" ||
        { fail "resume: $(cat "$TMP/selt.err2")"; return 1; }
    cmp -s "$TMP/selr/metrics.csv" "$TMP/selt/metrics.csv" || { fail "metrics.csv differs after resume"; return 1; }
    cmp -s <(tensor_bytes "$TMP/selr/model.safetensors") <(tensor_bytes "$TMP/selt/model.safetensors") ||
        { fail "model.safetensors tensors differ after resume"; return 1; }
    [ "$(header_text "$TMP/selr/model.safetensors" | jq -S -c 'del(.__metadata__["train.seconds"])')" = \
      "$(header_text "$TMP/selt/model.safetensors" | jq -S -c 'del(.__metadata__["train.seconds"])')" ] ||
        { fail "model.safetensors header differs after resume"; return 1; }
    [ "$(jq -c '[.selected_epoch, .final]' "$TMP/selr/summary.json")" = "$(jq -c '[.selected_epoch, .final]' "$TMP/selt/summary.json")" ] ||
        { fail "selection differs after resume"; return 1; }
}
check "train.select=best_valid_loss: SIGTERM and --resume end with the same selection, rows and model" t_select_resume

echo "1..$N"
if [ "$FAILED" -gt 0 ]; then
    echo "# $FAILED of $N checks failed"
    exit 1
fi
echo "# all $N checks passed"
exit 0
