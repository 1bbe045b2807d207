#!/usr/bin/env bash
# valgrind.sh: run CLI smoke commands of the normal build (build/cmd/moe) under
# valgrind memcheck: happy paths (version, help, train of a 1991 mixture and of
# an mlp-moe, route-stats, compare-loss, lora, train --freeze) and error paths
# (bad config, missing file, corrupt checkpoints, --device cuda), so both are
# free of invalid accesses, uses of uninitialised values and leaks. In a build
# with CUDA, `--version` and `--device cuda` run the CUDA probe (libcudart).
#
#   bash scripts/valgrind.sh [path/to/moe]
#
# Prints one TAP line per command ("ok N - valgrind: WHAT" / "not ok ..."; the
# memcheck report follows a failure as "#" lines), then "1..N". Exits 1 if any
# command failed: a memcheck error or a definite/indirect leak (valgrind exits
# 99), or an exit status other than the one the command should give. Fixtures
# live in a mktemp -d directory, removed on exit (MOE_VG_KEEP=1 keeps it, with
# each command's N.out, N.err and memcheck log N.vg). Reports from inside
# system libraries (BLIS's buffer pool, the CUDA libraries) are suppressed by
# scripts/valgrind.supp, never ours. Commands run side by side, one per core
# (MOE_VG_JOBS=N sets how many): 36 s instead of 68 s on 2 cores.
#
# Valgrind cannot execute AVX-512; its emulated CPU reports AVX2, so BLIS runs
# its haswell kernels here (moe --version says "chosen by blis").
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
root=$PWD
bash scripts/deps.sh valgrind || exit 1

if [ $# -ge 1 ]; then
    MOE=$1
    case $MOE in /*) ;; *) MOE=$root/$MOE ;; esac
else
    [ -f build/build.ninja ] || meson setup build >/dev/null || exit 1
    ninja -C build >/dev/null || { ninja -C build; exit 1; }
    MOE=$root/build/cmd/moe
fi
[ -x "$MOE" ] || { echo "Bail out! '$MOE' is not an executable" >&2; exit 1; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/moe-vg.XXXXXX") || { echo "Bail out! mktemp failed" >&2; exit 1; }
[ -n "${MOE_VG_KEEP:-}" ] || trap 'rm -rf "$TMP"' EXIT
trap 'exit 130' INT TERM
cd "$TMP" || exit 1

# shellcheck disable=SC2054  # the commas are inside option values
VG=(valgrind --tool=memcheck --error-exitcode=99 --leak-check=full
    --errors-for-leak-kinds=definite,indirect --show-leak-kinds=definite,indirect
    --track-origins=yes --num-callers=30 --suppressions="$root/scripts/valgrind.supp")

N=0
# Commands run $MOE_VG_JOBS at a time (default: one per core; memcheck runs a
# program on one core). vg starts one in the background once a slot is free;
# vg_sync waits for all, before commands that read what earlier ones wrote.
# Each command's TAP lines go to $TMP/N.tap and are printed in N's order.
JOBS=${MOE_VG_JOBS:-$(nproc 2>/dev/null || echo 1)}
[ "$JOBS" -ge 1 ] 2>/dev/null || JOBS=1
declare -A RUNNING=() # pid -> N
PRINTED=0
flush() { # print the TAP lines of the finished commands that come next in order
    while [ -e "$TMP/$((PRINTED + 1)).tap" ]; do
        PRINTED=$((PRINTED + 1))
        cat "$TMP/$PRINTED.tap"
    done
}
reap_one() {
    local pid
    wait -n -p pid
    unset "RUNNING[$pid]"
    flush
}
vg_sync() {
    while [ ${#RUNNING[@]} -gt 0 ]; do reap_one; done
}
# vg NAME WANT CMD...: run `moe CMD...` under memcheck; ok if it exits with
# WANT (an exit status, or several as "0|143") and memcheck found nothing.
# With STOP_AT=FILE set, send the command SIGTERM as soon as FILE exists (it
# ends its step, writes its checkpoint and exits 143; or it finished first).
# Output goes to $TMP/N.{out,err,vg}, the TAP lines to $TMP/N.tap.
vg() {
    N=$((N + 1))
    while [ ${#RUNNING[@]} -ge "$JOBS" ]; do reap_one; done
    { vg_one "$N" "$@" >"$TMP/$N.tap.part"; mv "$TMP/$N.tap.part" "$TMP/$N.tap"; } &
    RUNNING[$!]=$N
}
vg_one() {
    local n=$1 name=$2 want=$3
    shift 3
    local p="$TMP/$n" rc
    if [ -n "${STOP_AT:-}" ]; then
        "${VG[@]}" --log-file="$p.vg" "$MOE" "$@" >"$p.out" 2>"$p.err" &
        local pid=$! i=0
        while [ ! -e "$STOP_AT" ] && [ $i -lt 1200 ] && kill -0 "$pid" 2>/dev/null; do
            sleep 0.05
            i=$((i + 1))
        done
        kill -TERM "$pid" 2>/dev/null
        wait "$pid"
        rc=$?
    else
        "${VG[@]}" --log-file="$p.vg" "$MOE" "$@" >"$p.out" 2>"$p.err"
        rc=$?
    fi
    case "|$want|" in
    *"|$rc|"*)
        echo "ok $n - valgrind: $name"
        return 0
        ;;
    esac
    echo "not ok $n - valgrind: $name"
    {
        echo "command: moe $*"
        echo "stderr: $(head -c 600 "$p.err")"
        if [ "$rc" -eq 99 ]; then
            echo "memcheck found errors (exit 99):"
            # the report without valgrind's banner and the "==PID==" prefixes
            sed -e 's/^==[0-9]*== \{0,1\}//' "$p.vg" | sed -n '/^Parent PID:/,$p' | sed 1d |
                grep -v -e '^Reachable blocks' -e '^To see them' -e '^For lists of' | head -n 120
        else
            echo "exit $rc, expected $want"
            sed -e 's/^==[0-9]*== \{0,1\}//' "$p.vg" | sed -n '/^Process terminating/,/^$/p' | head -n 30
        fi
    } | sed 's/^/#   /'
    return 1
}
# bad_out: an output directory of its own for the next vg command, which
# fails (commands run side by side must not share one)
bad_out() { echo "bad$((N + 1))"; }

# ---------------------------------------------------------------- fixtures
# the 1991 mixture on a small regression task (compare-loss, --init)
cat >reg.json <<'EOF'
{
  "data": { "source": "synthetic", "synthetic": { "kind": "regions", "n_train": 100, "n_test": 50 } },
  "model": { "type": "mixture", "n_expert": 3 },
  "loss": { "type": "nll" },
  "optim": { "type": "adamw", "lr": 0.01, "batch_size": 32 },
  "train": { "epochs": 2, "seed": 1 }
}
EOF
# mlp-moe: 2 sparse blocks, noisy top-2 with Shazeer's losses, capacity 1.0 (drops)
cat >moe.json <<'EOF'
{
  "data": { "synthetic": { "kind": "classes", "n_in": 4, "n_regions": 4, "n_train": 120, "n_test": 60 } },
  "model": { "type": "mlp-moe", "n_embd": 8, "n_layer": 2, "n_ff": 8, "n_expert": 4, "n_expert_used": 2 },
  "moe": { "router": "noisy-topk", "aux_loss": "shazeer", "capacity_factor": 1.0 },
  "optim": { "batch_size": 32 },
  "train": { "epochs": 2 }
}
EOF
# a Peterson-Barney-like TSV (libcsv reader): speakers 1-6, 4 kept vowels and
# one dropped; the same with a non-numeric F1 cell on line 5
{
    printf 'Speaker\tVowel\tF0\tF1\tF2\n'
    for s in 1 2 3 4 5 6; do
        o=$((s * 7))
        printf '%d\tiy\t%d\t%d\t%d\n' $s $((120 + s)) $((270 + o)) $((2290 - o))
        printf '%d\tih\t%d\t%d\t%d\n' $s $((125 + s)) $((390 + o)) $((1990 - o))
        printf '%d\taa\t%d\t%d\t%d\n' $s $((118 + s)) $((730 + o)) $((1090 - o))
        printf '%d\tah\t%d\t%d\t%d\n' $s $((121 + s)) $((640 + o)) $((1190 - o))
        printf '%d\tuw\t%d\t%d\t%d\n' $s $((122 + s)) $((300 + o)) $((870 - o))
    done
} >vowels.tsv
awk 'BEGIN { FS = OFS = "\t" } NR == 5 { $4 = "abc" } { print }' vowels.tsv >vowels_bad.tsv
table_config() { # table_config PATH
    printf '{ "data": { "source": "table", "standardize": true, "table": { "path": "%s", "task": "classification", "features": ["F0", "F1", "F2"], "targets": ["Vowel"], "classes": ["iy", "ih", "aa", "ah"], "split_column": "Speaker", "train_range": [1, 4], "test_range": [5, 6] } }, "model": { "n_expert": 3 }, "optim": { "batch_size": 8 }, "train": { "epochs": 2 } }\n' "$1"
}
table_config vowels.tsv >table.json
table_config vowels_bad.tsv >table_bad.json
# IDX files (6 images of 2x2 pixels, 6 labels), gzipped (zlib reader); an image
# file whose header promises 24 data bytes and holds 10
IMG_HDR='\x00\x00\x08\x03\x00\x00\x00\x06\x00\x00\x00\x02\x00\x00\x00\x02'
{ printf '%b' "$IMG_HDR"; printf '\x00\x10\x20\x30\x40\x50\x60\x70\x80\x90\xa0\xb0\xc0\xd0\xe0\xf0\x01\x02\x03\x04\x05\x06\x07\x08'; } | gzip -c >img.idx.gz
{ printf '%b' "$IMG_HDR"; printf '\x00\x10\x20\x30\x40\x50\x60\x70\x80\x90'; } | gzip -c >img_trunc.idx.gz
{ printf '\x00\x00\x08\x01\x00\x00\x00\x06'; printf '\x00\x01\x00\x01\x00\x01'; } | gzip -c >lab.idx.gz
idx_config() { # idx_config TRAIN_IMAGES
    printf '{ "data": { "source": "idx", "idx": { "train_images": "%s", "train_labels": "lab.idx.gz", "test_images": "img.idx.gz", "test_labels": "lab.idx.gz" } }, "model": { "n_expert": 2 }, "optim": { "batch_size": 4 }, "train": { "epochs": 2 } }\n' "$1"
}
idx_config img.idx.gz >idx.json
idx_config img_trunc.idx.gz >idx_trunc.json
# text: two tiny languages; a byte-level Transformer with Switch layers and
# language-aware routing, and a word-level one with hash routing
mkdir -p text
for i in $(seq 40); do printf 'The cat sat on mat %d, then ran.\n' "$i"; done >text/en.txt
for i in $(seq 40); do printf 'Кошка сидела на ковре %d, потом убежала.\n' "$i"; done >text/ru.txt
cat >lm.json <<'EOF2'
{
  "data": { "source": "text", "text": { "path": "text", "windows_per_epoch": 24 } },
  "model": { "type": "transformer", "n_ctx": 8, "n_embd": 8, "n_head": 2, "n_layer": 2, "moe_every": 2,
             "n_ff": 8, "n_expert": 4, "n_expert_used": 1 },
  "moe": { "router": "switch", "lang_router": true },
  "optim": { "batch_size": 8 },
  "train": { "epochs": 2 }
}
EOF2
printf '{ "model": { "n_expertz": 3 } }\n' >unknown.json
printf '{\n  "model": {\n    "n_expert": 3,\n  oops\n}\n' >notjson.json

# ---------------------------------------------------------------- happy paths
# first the runs that read only the fixtures, side by side
vg "moe --version" 0 --version
vg "moe help" 0 help
vg "moe help train" 0 help train
vg "moe help config" 0 help config
vg "train examples/quickstart.json (2 epochs, --threads 1)" 0 \
    train --config "$root/examples/quickstart.json" --set train.epochs=2 --threads 1 --out q --quiet
vg "train mlp-moe, noisy top-2 (--threads 2)" 0 train --config moe.json --threads 2 --out mm --quiet
vg "train mlp-moe, gshard top-2, z-loss, jitter, drop by probability" 0 train --config moe.json --threads 1 --out gs --quiet \
    --set 'moe.router="gshard"' --set 'moe.aux_loss="gshard"' --set moe.z_weight=0.001 --set moe.jitter=0.01 \
    --set 'moe.drop_policy="probability"'
vg "train mlp-moe, switch + bias balancing + a shared expert" 0 train --config moe.json --threads 1 --out sw --quiet \
    --set 'moe.router="switch"' --set model.n_expert_used=1 --set moe.bias_balance=true --set 'moe.aux_loss="none"' \
    --set model.n_expert_shared=1
vg "train mlp-moe, expert choice" 0 train --config moe.json --threads 1 --out ec --quiet \
    --set 'moe.router="expert-choice"' --set 'moe.aux_loss="none"'
vg "train mlp-moe, hash routing (balanced table)" 0 train --config moe.json --threads 1 --out hs --quiet \
    --set 'moe.router="hash"' --set model.n_expert_used=1 --set 'moe.hash_table="balanced"' --set 'moe.aux_loss="none"'
vg "compare-loss nll,competitive,mlp x seeds 1-2" 0 \
    compare-loss --config reg.json --losses nll,competitive,mlp --seeds 1-2 --out cl --threads 1 --quiet
vg "train on a TSV table (split by speaker, standardize)" 0 train --config table.json --threads 1 --out tb --quiet
vg "train on gzipped IDX files" 0 train --config idx.json --threads 1 --out ix --quiet
vg "train --dry-run (estimate only)" 0 train --dry-run --config moe.json
# stopped by SIGTERM once its first checkpoint exists, then resumed (if the
# run finished first, the resume is the no-op of a finished run)
STOP_AT=st/checkpoint.safetensors vg "train mlp-moe, stopped by SIGTERM after its first checkpoint" "143|0" \
    train --config moe.json --set train.epochs=6 --threads 1 --out st --quiet
vg "train transformer, bytes, switch + language-aware routing (--threads 2)" 0 train --config lm.json --threads 2 --out lm --quiet
vg "train transformer, words, hash routing (balanced)" 0 train --config lm.json --threads 1 --out lmw --quiet \
    --set data.text.tokens=words --set moe.router=hash --set moe.hash_table=balanced --set moe.lang_router=false
vg "train mlp-moe with dense blocks (a MoEBERT teacher)" 0 \
    train --config moe.json --set model.moe_every=9 --threads 1 --out dn --quiet
vg_sync
# then those that read their checkpoints
vg "route-stats on the noisy top-2 checkpoint (capacity sweep, trace)" 0 \
    route-stats --checkpoint mm/model.safetensors --out rs --capacity-factors 0.5,0 --trace rs/trace.jsonl --quiet
vg "route-stats on the hash checkpoint (training split)" 0 \
    route-stats --checkpoint hs/model.safetensors --out hr --data train --threads 1 --quiet
vg "train --resume of the stopped run" 0 train --resume st --threads 1 --quiet
vg "route-stats on the transformer (MI with language and byte class, trace)" 0 \
    route-stats --checkpoint lm/model.safetensors --out lm/route --trace lm/trace.jsonl --quiet
vg "train --init from a checkpoint" 0 \
    train --config "$root/examples/quickstart.json" --set train.epochs=1 --threads 1 --out q2 --quiet --init q/model.safetensors
vg "lora on the noisy top-2 checkpoint (per-expert adapters on experts and head, --merge)" 0 \
    lora --base mm/model.safetensors --config moe.json --rank 2 --targets '*.experts.*,head.weight' --merge --threads 1 --out lo --quiet
vg "train --init --freeze (partial fine-tuning)" 0 \
    train --config moe.json --init mm/model.safetensors --freeze 'input.*,layers.0.*' --set train.epochs=1 --threads 1 --out fz --quiet
vg "train --init --trainable with an expert range (experts 0-1 only)" 0 \
    train --config moe.json --init mm/model.safetensors --trainable 'layers.*.moe.experts.*@0-1' --set train.epochs=1 --threads 1 --out fr --quiet
vg "distill --mode moebert (hash experts, 2 shared neurons, random order)" 0 \
    distill --mode moebert --teacher dn/model.safetensors --config moe.json --set model.n_ff=5 --shared 2 --split random \
    --set 'moe.router="hash"' --set model.n_expert_used=1 --set 'moe.aux_loss="none"' --threads 1 --out mb --quiet

# ---------------------------------------------------------------- error paths
CK=q/model.safetensors
printf 'this is not a safetensors file, just some text\n' >garbage.safetensors
if [ -s "$CK" ]; then
    head -c 100 "$CK" >trunc_header.safetensors
    head -c $(($(wc -c <"$CK") - 10)) "$CK" >trunc_data.safetensors
else
    : >trunc_header.safetensors
    : >trunc_data.safetensors
fi
printf 'text with a \000 byte\n' >nul.txt
if [ -s mm/model.safetensors ]; then
    head -c $(($(wc -c <mm/model.safetensors) - 10)) mm/model.safetensors >moe_trunc.safetensors
else
    : >moe_trunc.safetensors
fi
vg "error: unknown command" 2 trian
vg "error: unknown config key" 2 train --config unknown.json --out "$(bad_out)"
vg "error: config is not JSON" 2 train --config notjson.json --out "$(bad_out)"
vg "error: --set out of range" 2 train --config reg.json --out "$(bad_out)" --set model.n_expert=2000
vg "error: missing config file" 1 train --config no_such_config.json --out "$(bad_out)"
vg "error: --init checkpoint is not safetensors" 1 train --config reg.json --out "$(bad_out)" --init garbage.safetensors
vg "error: --init checkpoint cut in its header" 1 train --config reg.json --out "$(bad_out)" --init trunc_header.safetensors
vg "error: --init checkpoint cut in its data" 1 train --config reg.json --out "$(bad_out)" --init trunc_data.safetensors
vg "error: TSV table with a non-numeric cell" 1 train --config table_bad.json --out "$(bad_out)"
vg "error: truncated gzipped IDX images" 1 train --config idx_trunc.json --out "$(bad_out)"
vg "error: route-stats on a truncated checkpoint" 1 route-stats --checkpoint moe_trunc.safetensors --out "$(bad_out)"
vg "error: route-stats on a missing checkpoint" 1 route-stats --checkpoint no_such.safetensors --out "$(bad_out)"
vg "error: text data with a NUL byte" 1 train --config lm.json --out "$(bad_out)" --set data.text.path=nul.txt
vg "error: --init with another vocabulary" 2 train --config lm.json --out "$(bad_out)" --set data.text.tokens=words --init lm/model.safetensors
vg "error: route-stats --set to a model the checkpoint does not fit" 2 \
    route-stats --checkpoint mm/model.safetensors --out "$(bad_out)" --set model.n_embd=9
# refused in every build today; in a CUDA build this probes the CUDA runtime (and the driver, if any)
vg "error: --device cuda (the CUDA probe)" 2 train --config reg.json --out "$(bad_out)" --device cuda
vg "error: --device cuda:x (malformed; names the CUDA device count)" 2 train --config reg.json --out "$(bad_out)" --device cuda:x

vg_sync
echo "1..$N"
FAILED=$(cat "$TMP"/*.tap | grep -c '^not ok')
if [ "$FAILED" -gt 0 ]; then
    echo "# $FAILED of $N commands failed under valgrind"
    exit 1
fi
echo "# all $N commands ran clean under valgrind"
