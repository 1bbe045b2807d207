#!/usr/bin/env bash
# test_resume.sh: interrupted runs. A run stopped at any moment and resumed with
# `moe train --resume DIR` must end with the same metrics.csv, experts.csv and
# model.safetensors, byte for byte, as the same config run without a stop; a
# stop must never leave a torn file behind.
#
#   bash tests/cli/test_resume.sh /path/to/moe
#
# TAP-like output ("ok N - name" / "not ok N - name" with "#" reasons), plan
# line "1..N", exit 1 if any check failed. Stops come three ways:
#   - SIGINT / SIGTERM at a random moment: the run must finish its step, write
#     a checkpoint and a summary saying "interrupted", and exit 130 / 143;
#   - SIGKILL at a random moment: nothing is flushed; files on disk must each be
#     complete (the old or the new version; the live tables whole rows up to
#     their last newline), and resuming from the last checkpoint must still
#     reproduce the reference;
#   - a run resumed twice in a row, and a resume of a finished run (a no-op).
# MOE_RESUME_TRIALS (default 6) sets the number of random kills; the random
# moments come from $RANDOM seeded by MOE_RESUME_SEED (default: the time), and
# the seed is printed so that a failure can be replayed.
# shellcheck disable=SC2317  # check functions are called indirectly, via check
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

if [ $# -lt 1 ]; then
    echo "usage: bash $0 /path/to/moe" >&2
    exit 2
fi
MOE=$1
case $MOE in /*) ;; *) MOE=$PWD/$MOE ;; esac
[ -x "$MOE" ] || { echo "Bail out! '$MOE' is not an executable" >&2; exit 1; }
command -v jq >/dev/null 2>&1 || { echo "Bail out! jq is required" >&2; exit 1; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/moe-resume.XXXXXX") || { echo "Bail out! mktemp failed" >&2; exit 1; }
trap 'rm -rf "$TMP"' EXIT
trap 'exit 130' INT TERM
cd "$TMP" || exit 1

SEED=${MOE_RESUME_SEED:-$(date +%s)}
RANDOM=$SEED
TRIALS=${MOE_RESUME_TRIALS:-6}
echo "# random seed $SEED (replay with MOE_RESUME_SEED=$SEED)"

# shellcheck source=tap.sh
. "$HERE/tap.sh"

# A sparse model with every kind of state a resume must carry: AdamW moments,
# noisy routing (random draws keyed by step), bias balancing (a state tensor),
# split=batch rows (statistics accumulated between rows), shuffled batches.
# About 2-3 s on 2 cores; checkpoints every 7 steps as well as every epoch.
cat > moe.json <<'EOF'
{
  "data": { "source": "synthetic",
            "synthetic": { "kind": "classes", "n_train": 6000, "n_test": 1000, "n_in": 16, "n_regions": 8 } },
  "model": { "type": "mlp-moe", "n_embd": 32, "n_layer": 2, "n_ff": 32, "n_expert": 8, "n_expert_used": 2 },
  "moe": { "router": "softmax", "bias_balance": true, "capacity_factor": 1.0, "jitter": 0.01 },
  "optim": { "type": "adamw", "lr": 0.003, "batch_size": 32 },
  "train": { "epochs": 6, "seed": 3, "log_every": 10, "checkpoint_every": 7 }
}
EOF
# The 1991 mixture with SGD momentum: a different optimizer state and no routing tables.
cat > mix.json <<'EOF'
{
  "data": { "source": "synthetic", "synthetic": { "n_train": 20000, "n_test": 500 } },
  "model": { "type": "mixture", "n_expert": 4, "expert": "linear" },
  "loss": { "type": "nll" },
  "optim": { "type": "sgd", "lr": 0.05, "momentum": 0.9, "batch_size": 16 },
  "train": { "epochs": 8, "seed": 2, "checkpoint_every": 50 }
}
EOF

# moe.json with iterative pruning (masks that grow after steps 50, 100, ...,
# 500 of the 1128, kept in every checkpoint) and quantization-aware training:
# the masks and the float weights behind the quantized ones must survive a stop.
jq '.train.prune = { "sparsity": 0.5, "steps": 500, "every": 50 } | .train.qat = { "quantize": "int8" }' moe.json >prune.json

# same_outputs REF DIR: the files the promise covers are byte-identical.
same_outputs() {
    local f
    for f in metrics.csv model.safetensors; do
        cmp -s "$1/$f" "$2/$f" || { fail "$2/$f differs from $1/$f: $(cmp "$1/$f" "$2/$f" 2>&1 | head -1)"; return 1; }
    done
    if [ -f "$1/experts.csv" ]; then
        cmp -s "$1/experts.csv" "$2/experts.csv" || { fail "$2/experts.csv differs from $1/experts.csv"; return 1; }
    fi
    local a b
    a=$(jq -c .final "$1/summary.json") b=$(jq -c .final "$2/summary.json")
    [ "$a" = "$b" ] || { fail "summary .final differs: $a vs $b"; return 1; }
}

# no_torn DIR: every output present is complete: JSON parses, every CSV row has
# the header's number of cells and ends with a newline, no temporary files
# remain except those of a killed process (name.tmp.PID), which resume removes.
# (A table's last line may be a row torn by the kill; see below.)
no_torn() {
    local d=$1 f
    for f in config.json summary.json; do
        [ ! -e "$d/$f" ] || jq -e . "$d/$f" >/dev/null 2>&1 || { fail "$d/$f is not valid JSON"; return 1; }
    done
    for f in metrics.csv experts.csv; do
        [ -e "$d/$f" ] || continue
        [ -s "$d/$f" ] || { fail "$d/$f is empty"; return 1; }
        # The tables grow a row per write(2): a kill inside that write may leave a
        # last line without its newline, which readers ignore and --resume cuts
        # off (README "Output files"); every line before it must be a whole row.
        local whole size partial=0
        size=$(wc -c <"$d/$f")
        [ "$(tail -c 1 "$d/$f" | od -An -c | tr -d ' ')" = '\n' ] || partial=$(tail -n 1 "$d/$f" | LC_ALL=C wc -c)
        [ "$partial" -eq 0 ] || echo "# $d/$f ends with a torn row of $partial bytes (ignored)"
        whole=$((size - partial))
        head -c "$whole" "$d/$f" | awk -F, 'NR == 1 { n = NF } NF != n { bad = 1 } END { exit bad }' ||
            { fail "$d/$f has a row with the wrong number of cells"; return 1; }
    done
    for f in checkpoint.safetensors model.safetensors; do
        [ -e "$d/$f" ] || continue
        # 8-byte little-endian header length, then that much JSON: a torn file fails this.
        local len
        len=$(od -An -t u8 -N 8 "$d/$f" | tr -d ' ')
        head -c $((8 + len)) "$d/$f" | tail -c "$len" | jq -e . >/dev/null 2>&1 ||
            { fail "$d/$f: header is not complete JSON"; return 1; }
    done
}

# Reference runs, never interrupted.
"$MOE" train --config moe.json --out ref-moe --quiet >/dev/null 2>ref-moe.err || echo "Bail out! reference run failed: $(cat ref-moe.err)"
"$MOE" train --config mix.json --out ref-mix --quiet >/dev/null 2>ref-mix.err || echo "Bail out! reference run failed: $(cat ref-mix.err)"
"$MOE" train --config prune.json --out ref-prune --quiet >/dev/null 2>ref-prune.err || echo "Bail out! reference run failed: $(cat ref-prune.err)"
[ -f ref-moe/checkpoint.safetensors ] || echo "Bail out! no checkpoint.safetensors in the reference run"

t_reference_rerun() {
    "$MOE" train --config moe.json --out rerun --quiet >/dev/null 2>&1 || { fail "rerun failed"; return 1; }
    same_outputs ref-moe rerun
}
check "two uninterrupted runs of one config agree (the baseline for the rest)" t_reference_rerun

# interrupt CONFIG REF SIGNAL DELAY NAME: start a run, send SIGNAL after DELAY
# seconds, check the exit code and the files, resume, compare with REF.
interrupt() {
    local cfg=$1 ref=$2 sig=$3 delay=$4 d=$5
    rm -rf "$d"
    "$MOE" train --config "$cfg" --out "$d" --quiet >"$d.out" 2>"$d.err" &
    local pid=$!
    sleep "$delay"
    kill -s "$sig" "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    local rc=$?
    case $sig:$rc in
        INT:130 | TERM:143)
            jq -e '.interrupted and .steps >= 0' "$d/summary.json" >/dev/null 2>&1 ||
                { fail "$sig: summary.json does not record the interruption"; return 1; }
            jq -e '.interrupted' "$d.out" >/dev/null 2>&1 || { fail "$sig: stdout is not the summary"; return 1; }
            [ "$(wc -l <"$d.err")" -eq 1 ] && grep -q 'moe train --resume' "$d.err" ||
                { fail "$sig: expected one stderr line saying how to resume, got: $(cat "$d.err")"; return 1; }
            [ -f "$d/checkpoint.safetensors" ] || { fail "$sig: no checkpoint written"; return 1; } ;;
        KILL:137) ;;
        *:0) echo "# $d: the run finished before the $sig after ${delay}s" ;;
        *) fail "$sig after ${delay}s: exit $rc: $(head -c 400 "$d.err")"; return 1 ;;
    esac
    no_torn "$d" || return 1
    if [ ! -f "$d/checkpoint.safetensors" ]; then
        echo "# $d: killed before the first checkpoint; nothing to resume"
        return 0
    fi
    "$MOE" train --resume "$d" --quiet >"$d.out2" 2>"$d.err2" || { fail "resume failed: $(cat "$d.err2")"; return 1; }
    [ -z "$(find "$d" -name '*.tmp.*')" ] || { fail "temporary files left after resume: $(ls "$d")"; return 1; }
    same_outputs "$ref" "$d"
}

# Random moments: a uniform fraction (2%..98%) of how long the reference run took here.
WALL=$(jq -r .wall_seconds ref-moe/summary.json 2>/dev/null || echo 2)
WALL_MIX=$(jq -r .wall_seconds ref-mix/summary.json 2>/dev/null || echo 1)
echo "# reference runs took ${WALL}s (mlp-moe) and ${WALL_MIX}s (mixture)"
rand_delay() { # [WALL]
    awk -v w="${1:-$WALL}" -v r=$((RANDOM % 97 + 2)) 'BEGIN { printf "%.2f", w * r / 100 }'
}

t_sigterm() { interrupt moe.json ref-moe TERM "$(rand_delay)" term; }
t_sigint() { interrupt moe.json ref-moe INT "$(rand_delay)" int; }
t_sigterm_mix() { interrupt mix.json ref-mix TERM "$(rand_delay "$WALL_MIX")" term-mix; }
check "SIGTERM at a random moment: exit 143, checkpoint, resume reproduces the reference" t_sigterm
check "SIGINT at a random moment: exit 130, checkpoint, resume reproduces the reference" t_sigint
check "SIGTERM on the mixture with sgd momentum: resume reproduces the reference" t_sigterm_mix
WALL_PRUNE=$(jq -r .wall_seconds ref-prune/summary.json 2>/dev/null || echo 2)
t_sigterm_prune() { interrupt prune.json ref-prune TERM "$(rand_delay "$WALL_PRUNE")" term-prune; }
t_sigkill_prune() { interrupt prune.json ref-prune KILL "$(rand_delay "$WALL_PRUNE")" kill-prune; }
check "SIGTERM with train.prune and train.qat: resume reproduces the reference (masks, weights)" t_sigterm_prune
check "SIGKILL with train.prune and train.qat: resume from the last checkpoint reproduces the reference" t_sigkill_prune
# Deterministic: 3 epochs (564 steps, the schedule done), then --resume extends
# to 6: the masks come back from the checkpoint, so the pruned units stay zero.
t_extend_prune() {
    local d=extend-prune
    rm -rf "$d"
    "$MOE" train --config prune.json --set train.epochs=3 --out "$d" --quiet >/dev/null 2>"$d.err" ||
        { fail "3 epochs: $(cat "$d.err")"; return 1; }
    "$MOE" train --resume "$d" --set train.epochs=6 --quiet >/dev/null 2>"$d.err" || { fail "extension: $(cat "$d.err")"; return 1; }
    same_outputs ref-prune "$d"
}
check "train.prune and train.qat: 3 epochs extended to 6 by --resume reproduce the 6-epoch run" t_extend_prune
for i in $(seq 1 "$TRIALS"); do
    delay=$(rand_delay)
    t_kill() { interrupt moe.json ref-moe KILL "$delay" "kill$i"; }
    check "SIGKILL after ${delay}s (trial $i): no torn file; resume from the last checkpoint reproduces the reference" t_kill
done

# Stop twice: interrupt, resume, interrupt the resumed run, resume again.
t_twice() {
    local d=twice
    rm -rf "$d"
    "$MOE" train --config moe.json --out "$d" --quiet >/dev/null 2>&1 &
    local pid=$!
    sleep "$(awk -v w="$WALL" 'BEGIN { printf "%.2f", w * 0.3 }')"
    kill -TERM "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    "$MOE" train --resume "$d" --quiet >/dev/null 2>&1 &
    pid=$!
    sleep "$(awk -v w="$WALL" 'BEGIN { printf "%.2f", w * 0.3 }')"
    kill -INT "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    "$MOE" train --resume "$d" --quiet >/dev/null 2>"$d.err" || { fail "final resume failed: $(cat "$d.err")"; return 1; }
    same_outputs ref-moe "$d"
}
check "interrupted twice, resumed twice: still the reference" t_twice

t_finished() {
    local before after
    before=$(md5sum ref-moe/model.safetensors ref-moe/metrics.csv)
    "$MOE" train --resume ref-moe --quiet >resume-done.out 2>resume-done.err || { fail "exit $?: $(cat resume-done.err)"; return 1; }
    jq -e '.final.test' resume-done.out >/dev/null || { fail "stdout is not the run's summary"; return 1; }
    after=$(md5sum ref-moe/model.safetensors ref-moe/metrics.csv)
    [ "$before" = "$after" ] || { fail "resuming a finished run changed its files"; return 1; }
}
check "--resume of a finished run prints its summary and changes nothing" t_finished

mkdir -p empty-run
expect_fail "--resume of a directory without a checkpoint: exit 1, names the file" 1 "empty-run/checkpoint.safetensors" -- \
    "$MOE" train --resume empty-run
expect_fail "--resume with --config: exit 2" 2 "'--config' cannot be combined with '--resume'" -- \
    "$MOE" train --resume ref-moe --config moe.json
expect_fail "--resume with --set of a key other than train.epochs: exit 2" 2 "'--set' cannot be combined with '--resume'" -- \
    "$MOE" train --resume ref-moe --set optim.lr=0.5
cp -r ref-moe trunc
rm -f trunc/summary.json
head -c 100 ref-moe/checkpoint.safetensors >trunc/checkpoint.safetensors
expect_fail "--resume from a truncated checkpoint: exit 1, names the file" 1 "trunc/checkpoint.safetensors" -- \
    "$MOE" train --resume trunc
mkdir -p notckpt
cp ref-moe/model.safetensors notckpt/checkpoint.safetensors
expect_fail "--resume from a model file that is not a training checkpoint: exit 1" 1 "not a training checkpoint" -- \
    "$MOE" train --resume notckpt
mkdir -p shortcsv
cp ref-moe/checkpoint.safetensors shortcsv/
head -n 2 ref-moe/metrics.csv >shortcsv/metrics.csv
expect_fail "--resume when metrics.csv is shorter than the checkpoint says: exit 1, names the file" 1 "shortcsv/metrics.csv" -- \
    "$MOE" train --resume shortcsv

# NaN: a learning rate that diverges stops the run with exit 1, naming the step
# and a tensor, and leaves the last checkpoint intact.
t_nan() {
    local d=nan
    rm -rf "$d"
    "$MOE" train --config moe.json --set optim.lr=1000 --set optim.type='"sgd"' --out "$d" --quiet >"$d.out" 2>"$d.err"
    local rc=$?
    [ "$rc" -eq 1 ] || { fail "exit $rc, expected 1: $(cat "$d.err")"; return 1; }
    [ "$(wc -l <"$d.err")" -eq 1 ] || { fail "stderr is not one line: $(cat "$d.err")"; return 1; }
    grep -Eq "step [0-9]+ " "$d.err" && grep -Eq "'(layers|head|input|norm)[a-z0-9_.]*'" "$d.err" ||
        { fail "message does not name the step and a tensor: $(cat "$d.err")"; return 1; }
    [ ! -s "$d.out" ] || { fail "stdout not empty"; return 1; }
    [ ! -e "$d/model.safetensors" ] || { fail "a diverged run wrote model.safetensors"; return 1; }
}
check "a diverging run: exit 1, one line naming the step and the first non-finite tensor" t_nan

echo "1..$N"
[ "$FAILED" -eq 0 ]
