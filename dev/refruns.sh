#!/usr/bin/env bash
# refruns.sh: a fixed set of small runs covering every model, router, loss and
# subcommand, for checking that a refactor changes nothing users see.
#
#   bash dev/refruns.sh MOE OUTDIR        run the set with binary MOE into OUTDIR
#   bash dev/refruns.sh --compare A B     compare two such directories
#   bash dev/refruns.sh --against COMMIT  build COMMIT in a worktree, run the set
#                                         with it and with build/cmd/moe, compare
#
# Compared byte for byte: every metrics.csv, experts.csv, languages.csv,
# importance.csv, curves.csv, table.csv, config.json, every .safetensors file,
# (timing metadata aside), and summary.json / stdout / --dry-run JSON with the fields that measure time,
# speed, memory available or the build (wall_seconds, *_per_second, gflops,
# version, revision, argv, blis, memory_available*, memory_headroom*) removed; exit codes too. stderr is not
# compared (tests/cli/bad_inputs.tsv pins the messages). Single-threaded, small
# runs: the whole set takes a few seconds.
set -u
here=$(cd "$(dirname "$0")/.." && pwd)

volatile='walk(if type == "object" then with_entries(select(.key | test("seconds|per_second|gflops|^version$|^revision$|^argv$|^blis|memory_available|memory_headroom|^threads|^wall|^time") | not)) else . end)'

# st_norm FILE: a safetensors file with its timing metadata (train.seconds) and its
# checksum table (a function of the tensor bytes, which are compared) removed
st_norm() {
    python3 -c '
import json, struct, sys
d = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", d[:8])[0]
h = json.loads(d[8:8 + n])
h.get("__metadata__", {}).pop("train.seconds", None)
h.get("__metadata__", {}).pop("tensor_crc32", None)  # a function of the data, compared below
sys.stdout.buffer.write(json.dumps(h, sort_keys=True).encode() + d[8 + n:])' "$1"
}

compare() {
    local a=$1 b=$2 bad=0 f rel
    while IFS= read -r f; do
        rel=${f#"$a"/}
        if [ ! -e "$b/$rel" ]; then echo "missing in $b: $rel"; bad=1; continue; fi
        case $rel in
        *.json | *.out)
            if jq -e . "$f" >/dev/null 2>&1; then
                cmp -s <(jq -S "$volatile" "$f") <(jq -S "$volatile" "$b/$rel") ||
                    { echo "differs: $rel"; diff <(jq -S "$volatile" "$f") <(jq -S "$volatile" "$b/$rel") | head -8; bad=1; }
            else
                cmp -s "$f" "$b/$rel" || { echo "differs: $rel"; bad=1; }
            fi ;;
        *.safetensors)
            cmp -s <(st_norm "$f") <(st_norm "$b/$rel") || { echo "differs: $rel"; bad=1; } ;;
        *.err | *.log | */moe.lock) ;; # the run directory's lock holds a PID (cmd/run_dir.h)
        *) cmp -s "$f" "$b/$rel" || { echo "differs: $rel"; bad=1; } ;;
        esac
    done < <(find "$a" -type f | sort)
    while IFS= read -r f; do
        rel=${f#"$b"/}
        case $rel in */moe.lock) continue ;; esac # binaries before the lock wrote none
        [ -e "$a/$rel" ] || { echo "extra in $b: $rel"; bad=1; }
    done < <(find "$b" -type f | sort)
    [ "$bad" = 0 ] && echo "identical: $(find "$a" -type f | wc -l) files"
    return "$bad"
}

if [ "${1:-}" = --compare ]; then compare "$2" "$3"; exit; fi
if [ "${1:-}" = --against ]; then
    base=$2 wt=$(mktemp -d /tmp/refbase.XXXXXX)
    git -C "$here" worktree add -q --detach "$wt/src" "$base" || exit 1
    (cd "$wt/src" && meson setup "$wt/build" >/dev/null && ninja -C "$wt/build" >/dev/null) || exit 1
    bash "$0" "$wt/build/cmd/moe" "$wt/ref" && bash "$0" "$here/build/cmd/moe" "$wt/new" || exit 1
    compare "$wt/ref" "$wt/new"; rc=$?
    git -C "$here" worktree remove --force "$wt/src"
    echo "runs kept in $wt"
    exit $rc
fi

MOE=$(realpath "$1") O=$2
mkdir -p "$O/cfg" || exit 1
O=$(realpath "$O")
fortunes=$here/experiments/data/cache/fortunes/fortunes.txt
({ [ -s "$fortunes" ] || bash "$here/experiments/data/fortunes.sh" >/dev/null 2>&1; }) || { echo "no fortunes corpus" >&2; exit 1; }
# Everything runs inside OUTDIR with relative paths, so that two sets made in
# different directories record the same paths in their configs and summaries.
cd "$O" || exit 1
C=cfg
cp "$here/examples/quickstart.json" "$C/quick.json"

# r NAME ARGS...: run one command into $O/NAME (stdout NAME.out, stderr NAME.err, exit code NAME.rc)
r() {
    local n=$1; shift
    "$MOE" "$@" >"$n.out" 2>"$n.err"
    echo $? >"$n.rc"
}

cat >"$C/cls.json" <<'EOF'
{ "data": { "synthetic": { "kind": "classes", "n_in": 4, "n_regions": 4, "n_train": 300, "n_test": 200 } },
  "model": { "type": "mlp-moe", "n_embd": 8, "n_layer": 2, "n_ff": 8, "n_expert": 4, "n_expert_used": 2 },
  "moe": { "router": "noisy-topk", "aux_loss": "shazeer", "capacity_factor": 1.0 },
  "optim": { "batch_size": 32 }, "train": { "epochs": 3 } }
EOF
cat >"$C/lm.json" <<EOF
{ "data": { "source": "text", "text": { "path": "$fortunes", "tokens": "bytes", "valid_fraction": 0.1,
            "windows_per_epoch": 96, "train_eval_windows": 32, "valid_eval_windows": 32 } },
  "model": { "type": "transformer", "n_ctx": 16, "n_embd": 16, "n_head": 2, "n_layer": 2, "moe_every": 1,
             "n_expert": 4, "n_expert_used": 1, "n_ff": 16, "n_ff_dense": 16 },
  "moe": { "router": "switch", "aux_loss": "switch", "aux_weight": 0.01, "z_weight": 0.001 },
  "optim": { "batch_size": 8, "clip": 1.0 }, "train": { "epochs": 2, "seed": 3, "log_every": 4 } }
EOF
cat >"$C/dense.json" <<'EOF'
{ "data": { "synthetic": { "kind": "classes", "n_in": 4, "n_regions": 4, "n_train": 300, "n_test": 200 } },
  "model": { "type": "mlp-moe", "n_embd": 8, "n_layer": 2, "moe_every": 9, "n_ff_dense": 16, "n_ff": 4, "n_expert": 4,
             "n_expert_used": 1 },
  "optim": { "batch_size": 32 }, "train": { "epochs": 3 } }
EOF

T=(--threads 1 --quiet)
# the 1991 mixture and the MLP baseline
r quick train --config "$C/quick.json" --set train.epochs=4 --out "quick" "${T[@]}"
r quick_dry train --config "$C/quick.json" --dry-run
r compare compare-loss --config "$C/quick.json" --set train.epochs=3 --losses cooperative,competitive,nll,mlp \
    --seeds 1-2 --out "compare" "${T[@]}"
r mix_gauss train --config "$C/quick.json" --set model.expert=mlp --set model.n_expert_hidden=4 \
    --set loss.type=competitive --set train.epochs=3 --out "mix_gauss" "${T[@]}"

# every router on the MLP-MoE, with its usual aux loss
r softmax train --config "$C/cls.json" --set moe.router=softmax --set moe.aux_loss=switch --set moe.z_weight=0.01 --out "softmax" "${T[@]}"
r noisy train --config "$C/cls.json" --out "noisy" "${T[@]}"
r switch train --config "$C/cls.json" --set moe.router=switch --set model.n_expert_used=1 --set moe.aux_loss=switch \
    --set moe.jitter=0.01 --set moe.drop_policy=probability --out "switch" "${T[@]}"
r gshard train --config "$C/cls.json" --set moe.router=gshard --set moe.second_policy=random --set moe.aux_loss=gshard \
    --out "gshard" "${T[@]}"
r hash train --config "$C/cls.json" --set moe.router=hash --set model.n_expert_used=1 --set moe.aux_loss=none --out "hash" "${T[@]}"
r ec train --config "$C/cls.json" --set moe.router=expert-choice --set moe.ec_factor=1.5 --set moe.aux_loss=none --out "ec" "${T[@]}"
r bias train --config "$C/cls.json" --set moe.router=softmax --set moe.bias_balance=true --set moe.aux_loss=none \
    --set model.n_expert_shared=1 --out "bias" "${T[@]}"
r sgd train --config "$C/cls.json" --set optim.type=sgd --set optim.momentum=0.9 --out "sgd" "${T[@]}"
r noisy_dry train --config "$C/cls.json" --dry-run
r ec_dry train --config "$C/cls.json" --set moe.router=expert-choice --set moe.aux_loss=none --dry-run
r rstats route-stats --checkpoint "gshard/model.safetensors" --out "rstats" --capacity-factors 0.5,0 \
    --trace "rstats/trace.jsonl" "${T[@]}"

# the Transformer LM: switch, hash, expert choice, rmsnorm/swiglu
r lm train --config "$C/lm.json" --out "lm" "${T[@]}"
r lm_dry train --config "$C/lm.json" --dry-run
r lm_hash train --config "$C/lm.json" --set moe.router=hash --set moe.hash_table=balanced --set moe.aux_loss=none \
    --out "lm_hash" "${T[@]}"
r lm_ec train --config "$C/lm.json" --set moe.router=expert-choice --set moe.aux_loss=none --set model.norm=rmsnorm \
    --set model.ffn_activation=swiglu --set model.n_layer=3 --set model.moe_every=2 --out "lm_ec" "${T[@]}"
r lm_gshard train --config "$C/lm.json" --set moe.router=gshard --set model.n_expert_used=2 --set moe.aux_loss=gshard \
    --set model.tie_embeddings=true --out "lm_gshard" "${T[@]}"
r lm_rstats route-stats --checkpoint "lm/model.safetensors" --out "lm_rstats" "${T[@]}"

# resume of a finished run (a no-op that loads the checkpoint); tests/cli/test_resume.sh kills runs
r lm_resume train --resume "lm" "${T[@]}"

# distillation (kd, moebert, sparse-to-dense), LoRA
r teacher train --config "$C/dense.json" --out "teacher" "${T[@]}"
r kd distill --teacher "teacher/model.safetensors" --config "$C/cls.json" --temperature 3 --alpha 0.7 --out "kd" "${T[@]}"
r moebert distill --mode moebert --teacher "teacher/model.safetensors" --config "$C/dense.json" \
    --set model.moe_every=1 --set model.n_ff=5 --shared 2 --out "moebert" "${T[@]}"
r s2d distill --mode sparse-to-dense --teacher "noisy/model.safetensors" --config "$C/dense.json" \
    --baseline "teacher/model.safetensors" --out "s2d" "${T[@]}"
r lm_kd distill --teacher "lm/model.safetensors" --config "$C/lm.json" --set moe.router=hash --set moe.aux_loss=none \
    --out "lm_kd" "${T[@]}"
r lora lora --base "lm/model.safetensors" --config "$C/lm.json" --rank 2 --targets '*attn*,*experts*' --merge \
    --out "lora" "${T[@]}"
r lora_cls lora --base "noisy/model.safetensors" --config "$C/cls.json" --rank 2 --targets '*experts*' \
    --expert-mode shared --freeze-router --out "lora_cls" "${T[@]}"

rm -rf "$C"
fails=0
for f in *.rc; do [ "$(cat "$f")" = 0 ] || { echo "$(basename "$f" .rc): exit $(cat "$f"): $(head -c 300 "${f%.rc}.err")"; fails=$((fails + 1)); }; done
echo "$(ls *.rc | wc -l) commands, $fails failed, into $(pwd)"
