#!/usr/bin/env bash
# test_tune.sh: partial fine-tuning (`moe train --trainable / --freeze`) and
# LoRA adapters (`moe lora`) end to end through the `moe` binary.
#
#   bash tests/cli/test_tune.sh /path/to/moe
#
# TAP-like output ("ok N - name" / "not ok N - name" with "#" reasons), plan
# line "1..N", exit 1 if any check failed. Everything runs in a mktemp -d
# directory removed on exit; the models are tiny (mlp-moe D = 8, a byte-level
# Transformer D = 16 over a generated 6 KB text) and use --threads 1 except
# where two thread counts are compared. Checks:
#   - `moe train --init BASE --freeze GLOB[,GLOB]`, `--trainable 'layers.*.moe.*'`
#     and `--trainable '*.router.*'`: the tensors not selected are byte-identical
#     to BASE in model.safetensors (AdamW with weight decay, so a frozen tensor the
#     optimizer touched would move), the selected ones moved; summary.tuning
#     (trained_tensors, trainable_parameters = their sizes, frozen_tensors,
#     base_parameters, trainable_fraction); --freeze given twice, and a config
#     list plus --freeze, freeze the union (the schema: "--freeze adds to it");
#     likewise --targets given twice;
#   - SIGTERM mid-run and `moe train --resume` of a --freeze run reproduce the
#     uninterrupted run byte for byte (the checkpoint's config keeps the freeze);
#   - expert ranges (GLOB@A-B): `--trainable 'layers.*.moe.experts.*@0-1'` and
#     `--freeze '*.experts.*@3' --freeze 'layers.1.moe.experts.w2@0'`: slice by
#     slice ([E, out, in], slice [e] = expert e), trained slices moved, the others
#     and every unselected tensor byte-identical to BASE; summary.tuning counts
#     only trained slices and lists trained_experts; a SIGTERM + --resume of a
#     ranged run equals the uninterrupted run byte for byte; `moe lora
#     --trainable 'layers.0.moe.experts.w1@0'`: that tensor gets no adapter and
#     only its slice 0 moves;
#   - `moe lora` on mlp-moe (per-expert, shared, --freeze-router) and on the
#     Transformer (attention, experts, head): adapters.safetensors holds exactly
#     <base>.lora_A [r, in] / [E, r, in] and <base>.lora_B [out, r] / [E, out, r]
#     per adapted matrix plus the routers trained in full; the step-0 metrics rows
#     equal the base run's final rows byte for byte (loss and every other column);
#     merged.safetensors is a plain model file (the base's tensor names and
#     shapes) on which route-stats and `moe train --init` evaluate the LoRA run's
#     final loss; tensors neither adapted nor trained are the base's bytes;
#     summary.tuning adds up (trainable_fraction = trainable / (base + adapter));
#   - the same seed twice, and --threads 1 vs 2: byte-identical metrics.csv,
#     experts.csv, adapters.safetensors, merged.safetensors;
#   - a LoRA run stopped by SIGTERM exits 143 saying it cannot be resumed;
#     without --quiet its progress lines say "moe lora:" and name its files.
# shellcheck disable=SC2317,SC2015  # check functions are called via check; A && B || fail is meant
set -u
export LC_ALL=C
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# shellcheck source=tap.sh
. "$HERE/tap.sh"
tap_setup tune "$@"

# ------------------------------------------------------------------ helpers
# st_shapes FILE: "name<TAB>shape<TAB>numel" per parameter tensor (F32, not the
# data.* / vocab.* extras), sorted by name.
st_shapes() {
    st_header "$1" | jq -r 'to_entries[] | select(.key != "__metadata__" and .value.dtype == "F32" and (.key | test("^(data|vocab)[.]") | not))
        | "\(.key)\t\(.value.shape | map(tostring) | join(","))\t\(.value.shape | reduce .[] as $d (1; . * $d))"' | sort
}
# digests_into ARRAY FILE: the associative ARRAY (declared by the caller) maps
# each tensor of the safetensors FILE to its digest.
digests_into() {
    local -n dst_=$1
    local n_ g_
    dst_=()
    # shellcheck disable=SC2034,SC2004  # dst_ is the caller's associative array
    while IFS=$'\t' read -r n_ g_; do dst_[$n_]=$g_; done < <(st_digests "$2")
}
# matches NAME GLOB[,GLOB...]: the name matches one of the globs (bash patterns:
# '*' crosses dots, as fnmatch without flags).
matches() {
    local n=$1 g
    local -a gs
    IFS=, read -ra gs <<<"$2"
    for g in "${gs[@]}"; do
        # shellcheck disable=SC2254  # the glob is meant as a pattern
        case $n in $g) return 0 ;; esac
    done
    return 1
}
# trainx OUT ARGS...: moe train --out OUT --threads 1 --quiet ARGS; RC set.
trainx() {
    local d=$1
    shift
    rm -rf "$d"
    run "$d" "${TO[@]}" "$MOE" train --out "$d" --threads 1 --quiet "$@"
}
# lorax OUT ARGS...: moe lora --out OUT --quiet ARGS (--threads 1 unless given); RC set.
lorax() {
    local d=$1
    shift
    rm -rf "$d"
    case " $* " in *" --threads "*) ;; *) set -- --threads 1 "$@" ;; esac
    run "$d" "${TO[@]}" "$MOE" lora --out "$d" --quiet "$@"
}
# eval_rows FILE STEP: the train and test rows of one evaluation without
# their step and epoch columns ("last" = the final evaluation, "0" = step 0).
eval_rows() {
    if [ "$2" = last ]; then
        awk -F, 'NR > 1 && $3 != "batch" { s = $1 } END { print s }' "$1" | {
            read -r s
            awk -F, -v s="$s" 'NR > 1 && $1 == s && $3 != "batch"' "$1"
        }
    else
        awk -F, -v s="$2" 'NR > 1 && $1 == s && $3 != "batch"' "$1"
    fi | cut -d, -f3-
}

# ------------------------------------------------------------------ fixtures
# mlp-moe, two switch blocks of 4 experts (E = 4, D = F = 8, 6 inputs, 4
# classes), AdamW with weight decay; about 0.1 s.
cat >moe.json <<'EOF'
{
  "data": { "source": "synthetic", "synthetic": { "kind": "classes", "n_in": 6, "n_regions": 4, "n_train": 240, "n_test": 80 } },
  "model": { "type": "mlp-moe", "n_embd": 8, "n_layer": 2, "n_ff": 8, "n_expert": 4, "n_expert_used": 1 },
  "moe": { "router": "switch" },
  "optim": { "type": "adamw", "lr": 0.01, "weight_decay": 0.1, "batch_size": 16 },
  "train": { "epochs": 2, "seed": 3 }
}
EOF
trainx base --config moe.json
[ "$RC" -eq 0 ] && [ -s base/model.safetensors ] || echo "Bail out! the base run failed: $(head -c 400 base.err)"
BASE=$TMP/base/model.safetensors
st_digests "$BASE" >base.dig
st_shapes "$BASE" >base.shapes
declare -A BASED # tensor -> digest of the base's bytes
digests_into BASED "$BASE"
[ ${#BASED[@]} -ge 10 ] || echo "Bail out! cannot read the tensors of $BASE"

# ------------------------------------------------------- partial fine-tuning
# check_partial DIR PRED: DIR's model.safetensors against the base: tensors for
# which `PRED NAME` succeeds are trained (changed), the rest byte-identical;
# summary.tuning lists and counts exactly those.
check_partial() {
    local d=$1 pred=$2
    ran "$d" || return 1
    local -A drun
    digests_into drun "$d/model.safetensors"
    [ "$(printf '%s\n' "${!drun[@]}" | sort)" = "$(cut -f1 base.dig)" ] || { fail "$d/model.safetensors has other tensors than the base"; return 1; }
    local name db dr shape numel bad="" trained=() sum=0 total=0 nfrozen=0
    while IFS=$'\t' read -r name shape numel; do
        db=${BASED[$name]} dr=${drun[$name]}
        total=$((total + numel))
        if "$pred" "$name"; then
            trained+=("$name")
            sum=$((sum + numel))
            [ "$db" != "$dr" ] || bad+="trained tensor '$name' did not change"$'\n'
        else
            nfrozen=$((nfrozen + 1))
            [ "$db" = "$dr" ] || bad+="frozen tensor '$name' changed"$'\n'
        fi
    done <base.shapes
    [ -z "$bad" ] || { fail "${bad%$'\n'}"; return 1; }
    [ ${#trained[@]} -gt 0 ] || { fail "the predicate selects nothing (test bug)"; return 1; }
    local want
    want=$(printf '%s\n' "${trained[@]}" | jq -R . | jq -sc 'sort')
    jqe "$d/summary.json" "(.tuning.trained_tensors | sort) == $want" "summary.tuning.trained_tensors is not $want" .tuning || return 1
    jqe "$d/summary.json" ".tuning | .trainable_parameters == $sum and .base_parameters == $total and .adapter_parameters == 0
        and .frozen_tensors == $nfrozen and ((.trainable_fraction - $sum / $total) | fabs) < 1e-12" \
        "summary.tuning: expected trainable_parameters $sum, base_parameters $total, frozen_tensors $nfrozen, fraction $sum/$total" .tuning || return 1
    jqe "$d/summary.json" ".parameters == $total" "summary.parameters != the base's $total" || return 1
    jqe "$d/config.json" '.train | has("trainable") and has("freeze")' "config.json lacks train.trainable / train.freeze" .train
}

not_l0_input() { case $1 in layers.0.* | input.*) return 1 ;; *) return 0 ;; esac; }
moe_only() { case $1 in layers.*.moe.*) return 0 ;; *) return 1 ;; esac; }
router_only() { case $1 in *.router.*) return 0 ;; *) return 1 ;; esac; }
not_head_input() { case $1 in head.* | input.*) return 1 ;; *) return 0 ;; esac; }

t_freeze() {
    trainx fz --config moe.json --init "$BASE" --freeze 'layers.0.*,input.*'
    check_partial fz not_l0_input || return 1
    jqe fz/config.json '.train.freeze == ["layers.0.*", "input.*"] and .train.trainable == []' "config.json train.freeze" .train
}
check "train --init BASE --freeze 'layers.0.*,input.*': those tensors byte-identical to BASE, the others moved; summary.tuning" t_freeze

t_trainable_moe() {
    trainx trm --config moe.json --init "$BASE" --trainable 'layers.*.moe.*'
    check_partial trm moe_only
}
check "train --trainable 'layers.*.moe.*': only the MoE layers (routers, experts) change; summary.tuning" t_trainable_moe

t_trainable_router() {
    trainx trr --config moe.json --init "$BASE" --trainable '*.router.*'
    check_partial trr router_only
}
check "train --trainable '*.router.*': only the routers change; summary.tuning" t_trainable_router

t_trainable_freeze() {
    trainx trf --config moe.json --init "$BASE" --trainable 'layers.*' --freeze '*.experts.*,*.norm.*'
    check_partial trf router_only
}
check "train --trainable 'layers.*' --freeze '*.experts.*,*.norm.*': freeze has the last word (only routers change)" t_trainable_freeze

t_freeze_twice() {
    trainx fz2 --config moe.json --init "$BASE" --freeze 'layers.0.*' --freeze 'input.*'
    check_partial fz2 not_l0_input
}
check "train --freeze 'layers.0.*' --freeze 'input.*' freezes both (a second --freeze adds, it does not replace)" t_freeze_twice

t_freeze_config_plus_option() {
    jq '.train.freeze = ["head.*"]' moe.json >freeze-head.json
    trainx fz3 --config freeze-head.json --init "$BASE" --freeze 'input.*'
    check_partial fz3 not_head_input
}
check "config train.freeze [\"head.*\"] plus --freeze 'input.*' freezes both (schema: \"--freeze adds to it\")" t_freeze_config_plus_option

# ------------------------------------------------- resume keeps the freeze
# About 1 s uninterrupted: 20 checkpoints per run; SIGTERM at 25-60 % of it.
jq '.data.synthetic.n_train = 4000 | .train.epochs = 4 | .train.checkpoint_every = 25 | .train.log_every = 10' moe.json >long.json
t_resume_freeze() {
    trainx ref-long --config long.json --init "$BASE" --freeze '*.experts.w2,head.*'
    ran ref-long || return 1
    local wall tries=0 d=int-long
    wall=$(jq -r .wall_seconds ref-long/summary.json)
    while :; do
        tries=$((tries + 1))
        rm -rf "$d"
        "$MOE" train --config long.json --init "$BASE" --freeze '*.experts.w2,head.*' --threads 1 --quiet --out "$d" >"$d.out" 2>"$d.err" &
        local pid=$!
        sleep "$(awk -v w="$wall" -v r=$((RANDOM % 36 + 25)) -v k=$tries 'BEGIN { printf "%.3f", w * r / 100 / k }')"
        kill -TERM "$pid" 2>/dev/null
        wait "$pid"
        local rc=$?
        [ "$rc" -eq 143 ] && break
        [ "$rc" -eq 0 ] && [ $tries -lt 4 ] && continue
        fail "SIGTERM: exit $rc (try $tries): $(head -c 400 "$d.err")"
        return 1
    done
    [ -f "$d/checkpoint.safetensors" ] || { fail "no checkpoint after SIGTERM"; return 1; }
    jq -e '.train.freeze == ["*.experts.w2", "head.*"]' "$d/config.json" >/dev/null ||
        { fail "config.json of the stopped run lacks the freeze: $(jq -c .train "$d/config.json")"; return 1; }
    run "$d.2" "${TO[@]}" "$MOE" train --resume "$d" --threads 1 --quiet
    [ "$RC" -eq 0 ] || { fail "resume: $(describe "$d.2" moe train --resume "$d")"; return 1; }
    local f
    for f in metrics.csv experts.csv model.safetensors; do
        cmp -s "ref-long/$f" "$d/$f" || { fail "$d/$f differs from the uninterrupted run's: $(cmp "ref-long/$f" "$d/$f" 2>&1 | head -1)"; return 1; }
    done
    jqe "$d/summary.json" ".tuning == $(jq -c .tuning ref-long/summary.json)" "the resumed run's summary.tuning differs" .tuning || return 1
    local -A dres
    digests_into dres "$d/model.safetensors"
    local name bad=""
    for name in "${!BASED[@]}"; do
        case $name in *.experts.w2 | head.*) [ "${BASED[$name]}" = "${dres[$name]}" ] || bad+="$name changed; " ;; esac
    done
    [ -z "$bad" ] || { fail "frozen tensors changed across the resume: $bad"; return 1; }
}
check "--freeze run stopped by SIGTERM and resumed (--resume) = the uninterrupted run byte for byte; frozen tensors are the base's" t_resume_freeze

# ------------------------------------------------------------ expert ranges
# st_slices FILE NAME: "e<TAB>md5" per slice [e] (first dimension) of tensor NAME.
st_slices() {
    local f=$1 len a b n sz e
    len=$(od -An -t u8 -N 8 "$f" | tr -d ' ')
    read -r a b n < <(st_header "$f" | jq -r --arg n "$2" '.[$n] | "\(.data_offsets[0]) \(.data_offsets[1]) \(.shape[0])"')
    sz=$(((b - a) / n))
    for ((e = 0; e < n; e++)); do
        printf '%s\t%s\n' "$e" "$(dd if="$f" bs=4096 iflag=skip_bytes,count_bytes skip=$((8 + len + a + e * sz)) count=$sz 2>/dev/null | md5sum | cut -c1-32)"
    done
}
# check_slices DIR PRED: DIR's model.safetensors against the base, expert slice
# by expert slice: `PRED NAME E` says whether slice [E] of the expert tensor
# NAME ([E, out, in], '*.experts.*') is trained, `PRED NAME ""` whether another
# tensor is. Trained slices and tensors moved, the rest is byte-identical;
# summary.tuning counts exactly the trained slices and lists the tensors trained
# in part under trained_experts.
check_slices() {
    local d=$1 pred=$2
    ran "$d" || return 1
    local name shape numel e n_e k g bad="" trained=() partial="" sum=0 total=0 nfrozen=0
    local -A drun sb sr
    digests_into drun "$d/model.safetensors"
    while IFS=$'\t' read -r name shape numel; do
        total=$((total + numel))
        case $name,$shape in
        *.experts.*,*,*,*)
            n_e=${shape%%,*}
            sb=() sr=()
            while IFS=$'\t' read -r k g; do sb[$k]=$g; done < <(st_slices "$BASE" "$name")
            while IFS=$'\t' read -r k g; do sr[$k]=$g; done < <(st_slices "$d/model.safetensors" "$name")
            local on=()
            for ((e = 0; e < n_e; e++)); do
                if "$pred" "$name" "$e"; then
                    on+=("$e")
                    sum=$((sum + numel / n_e))
                    [ "${sb[$e]}" != "${sr[$e]}" ] || bad+="trained slice '$name'[$e] did not change"$'\n'
                else
                    [ "${sb[$e]}" = "${sr[$e]}" ] || bad+="frozen slice '$name'[$e] changed"$'\n'
                fi
            done
            if [ ${#on[@]} -eq 0 ]; then
                nfrozen=$((nfrozen + 1))
            else
                trained+=("$name")
                [ ${#on[@]} -eq "$n_e" ] || partial+="{\"tensor\": \"$name\", \"experts\": [$(IFS=,; echo "${on[*]}")]}"$'\n'
            fi
            ;;
        *)
            if "$pred" "$name" ""; then
                trained+=("$name")
                sum=$((sum + numel))
                [ "${BASED[$name]}" != "${drun[$name]}" ] || bad+="trained tensor '$name' did not change"$'\n'
            else
                nfrozen=$((nfrozen + 1))
                [ "${BASED[$name]}" = "${drun[$name]}" ] || bad+="frozen tensor '$name' changed"$'\n'
            fi
            ;;
        esac
    done <base.shapes
    [ -z "$bad" ] || { fail "${bad%$'\n'}"; return 1; }
    [ -n "$partial" ] || { fail "the predicate trains no tensor in part (test bug)"; return 1; }
    local want_t want_p
    want_t=$(printf '%s\n' "${trained[@]}" | jq -R . | jq -sc 'sort')
    want_p=$(printf '%s' "$partial" | jq -sc 'sort_by(.tensor)')
    jqe "$d/summary.json" "(.tuning.trained_tensors | sort) == $want_t" "summary.tuning.trained_tensors is not $want_t" .tuning || return 1
    jqe "$d/summary.json" "(.tuning.trained_experts | sort_by(.tensor)) == $want_p" "summary.tuning.trained_experts is not $want_p" .tuning.trained_experts || return 1
    jqe "$d/summary.json" ".tuning | .trainable_parameters == $sum and .base_parameters == $total and .adapter_parameters == 0
        and .frozen_tensors == $nfrozen and ((.trainable_fraction - $sum / $total) | fabs) < 1e-12" \
        "summary.tuning: expected trainable_parameters $sum, base_parameters $total, frozen_tensors $nfrozen, fraction $sum/$total" .tuning
}

# experts 0-1 of every expert tensor, nothing else
experts_01() { [ -n "$2" ] && [ "$2" -le 1 ]; }
t_trainable_experts() {
    trainx tre --config moe.json --init "$BASE" --trainable 'layers.*.moe.experts.*@0-1'
    check_slices tre experts_01 || return 1
    jqe tre/config.json '.train.trainable == ["layers.*.moe.experts.*@0-1"]' "config.json train.trainable" .train || return 1
    jqe tre/summary.json '.tuning.trained_experts | length == 4 and all(.experts == [0, 1])' \
        "expected trained_experts [0, 1] for the 4 expert tensors" .tuning.trained_experts
}
check "train --trainable 'layers.*.moe.experts.*@0-1': slices 0-1 of every expert tensor move, slices 2-3 and all other tensors byte-identical; summary.tuning.trained_experts" t_trainable_experts

# everything but expert 3 everywhere and expert 0 of layers.1's w2; a plain
# --trainable glob plus ranged --freeze globs
not_e3() {
    [ -z "$2" ] && return 0
    [ "$2" -ne 3 ] && { [ "$1" != layers.1.moe.experts.w2 ] || [ "$2" -ne 0 ]; }
}
t_freeze_experts() {
    trainx fze --config moe.json --init "$BASE" --freeze '*.experts.*@3' --freeze 'layers.1.moe.experts.w2@0'
    check_slices fze not_e3
}
check "train --freeze '*.experts.*@3' --freeze 'layers.1.moe.experts.w2@0': those slices byte-identical, all the rest moves; summary.tuning" t_freeze_experts

# A resumed expert-range run ends with the bytes of one never stopped.
t_resume_experts() {
    local args=(--config long.json --init "$BASE" --trainable 'layers.*.moe.*' --freeze '*.experts.*@1-2')
    trainx ref-exp "${args[@]}"
    ran ref-exp || return 1
    local wall tries=0 d=int-exp rc pid
    wall=$(jq -r .wall_seconds ref-exp/summary.json)
    while :; do
        tries=$((tries + 1))
        rm -rf "$d"
        "$MOE" train "${args[@]}" --threads 1 --quiet --out "$d" >"$d.out" 2>"$d.err" &
        pid=$!
        sleep "$(awk -v w="$wall" -v r=$((RANDOM % 36 + 25)) -v k=$tries 'BEGIN { printf "%.3f", w * r / 100 / k }')"
        kill -TERM "$pid" 2>/dev/null
        wait "$pid"
        rc=$?
        [ "$rc" -eq 143 ] && break
        [ "$rc" -eq 0 ] && [ $tries -lt 4 ] && continue
        fail "SIGTERM: exit $rc (try $tries): $(head -c 400 "$d.err")"
        return 1
    done
    run "$d.2" "${TO[@]}" "$MOE" train --resume "$d" --threads 1 --quiet
    [ "$RC" -eq 0 ] || { fail "resume: $(describe "$d.2" moe train --resume "$d")"; return 1; }
    local f
    for f in metrics.csv experts.csv model.safetensors; do
        cmp -s "ref-exp/$f" "$d/$f" || { fail "$d/$f differs from the uninterrupted run's: $(cmp "ref-exp/$f" "$d/$f" 2>&1 | head -1)"; return 1; }
    done
    jqe "$d/summary.json" ".tuning == $(jq -c .tuning ref-exp/summary.json)" "the resumed run's summary.tuning differs" .tuning || return 1
    jqe "$d/summary.json" '.tuning.trained_experts | length == 4 and all(.experts == [0, 3])' \
        "expected trained_experts [0, 3] for the 4 expert tensors" .tuning.trained_experts || return 1
    local name bad=""
    for name in layers.0.moe.experts.w1 layers.1.moe.experts.w2; do
        [ "$(st_slices "$BASE" "$name" | sed -n '2,3p')" = "$(st_slices "$d/model.safetensors" "$name" | sed -n '2,3p')" ] ||
            bad+="slices 1-2 of $name changed; "
    done
    [ -z "$bad" ] || { fail "frozen slices changed across the resume: $bad"; return 1; }
}
check "--freeze '*.experts.*@1-2' run stopped by SIGTERM and resumed = the uninterrupted run byte for byte; frozen slices are the base's" t_resume_experts

# moe lora with an expert range in train.trainable: the tensor trained in part
# gets no adapter; its other slices stay the base's in merged.safetensors.
t_lora_expert_range() {
    lorax lxr --base "$BASE" --config moe.json --rank 2 --targets '*.experts.*' --freeze-router --trainable 'layers.0.moe.experts.w1@0' --merge
    ran lxr || return 1
    jqe lxr/summary.json '.tuning | .trained_tensors == ["layers.0.moe.experts.w1"]
        and .trained_experts == [{"tensor": "layers.0.moe.experts.w1", "experts": [0]}]
        and (.adapted_tensors | sort) == ["layers.0.moe.experts.w2", "layers.1.moe.experts.w1", "layers.1.moe.experts.w2"]
        and .trainable_parameters == .adapter_parameters + 64' \
        "summary.tuning: expected experts.w1 of layer 0 trained in part (expert 0, 64 values), the three other expert tensors adapted" .tuning || return 1
    local b m
    b=$(st_slices "$BASE" layers.0.moe.experts.w1) m=$(st_slices lxr/merged.safetensors layers.0.moe.experts.w1)
    [ "$(sed -n 1p <<<"$b")" != "$(sed -n 1p <<<"$m")" ] && [ "$(sed -n '2,$p' <<<"$b")" = "$(sed -n '2,$p' <<<"$m")" ] ||
        { fail "layers.0.moe.experts.w1: expected slice 0 moved and slices 1-3 the base's: base $b merged $m"; return 1; }
    [ "$(st_digests lxr/adapters.safetensors | cut -f1 | grep -c lora_)" -eq 6 ] ||
        { fail "adapters.safetensors: expected 6 adapter tensors: $(st_digests lxr/adapters.safetensors | cut -f1 | tr '\n' ' ')"; return 1; }
}
check "lora --trainable 'layers.0.moe.experts.w1@0': that tensor is trained in part (no adapter), its other slices stay the base's; summary.tuning" t_lora_expert_range

# ----------------------------------------------------------------- moe lora
# check_lora DIR BASE_DIR MODE RANK TARGETS FREEZE_ROUTER [ALPHA]: a finished
# `moe lora ... --merge` run against its base run (BASE_DIR/model.safetensors
# and metrics.csv). MODE per-expert|shared.
check_lora() {
    local d=$1 bd=$2 mode=$3 r=$4 targets=$5 frz=$6 alpha=${7:-8}
    local base=$bd/model.safetensors
    ran "$d" || return 1
    local f
    for f in config.json metrics.csv experts.csv summary.json adapters.safetensors merged.safetensors; do
        [ -s "$d/$f" ] || { fail "no $d/$f"; return 1; }
    done
    [ ! -e "$d/model.safetensors" ] && [ ! -e "$d/checkpoint.safetensors" ] ||
        { fail "a LoRA run wrote model.safetensors or checkpoint.safetensors: $(ls "$d")"; return 1; }
    cmp -s <(jq -S . "$d.out") <(jq -S . "$d/summary.json") || { fail "stdout is not summary.json"; return 1; }
    jqe "$d/summary.json" '.command == "lora"' "summary.command is not lora" .command || return 1
    # expected adapter tensors and fully trained tensors, from the base's header
    st_shapes "$base" >"$d.base.shapes"
    local name shape numel adapted=() trained=() want="" n_base=0 n_adapter=0 n_trained=0 o i e
    while IFS=$'\t' read -r name shape numel; do
        n_base=$((n_base + numel))
        local router=0
        case $name in *.router.* | *.lang_emb) [ "$frz" = 1 ] || router=1 ;; esac
        if [ $router = 1 ]; then
            trained+=("$name")
            n_trained=$((n_trained + numel))
            want+="$name"$'\t'"$shape"$'\n'
            continue
        fi
        matches "$name" "$targets" || continue
        IFS=, read -r e o i <<<"$shape"
        if [ -z "$i" ]; then # 2-d [out, in]
            [ -n "$o" ] || continue # 1-d: never adapted
            i=$o o=$e e=1
        fi
        adapted+=("$name")
        if [ "$e" -gt 1 ] && [ "$mode" = per-expert ]; then
            want+="$name.lora_A"$'\t'"$e,$r,$i"$'\n'"$name.lora_B"$'\t'"$e,$o,$r"$'\n'
            n_adapter=$((n_adapter + e * r * (i + o)))
        else
            want+="$name.lora_A"$'\t'"$r,$i"$'\n'"$name.lora_B"$'\t'"$o,$r"$'\n'
            n_adapter=$((n_adapter + r * (i + o)))
        fi
    done <"$d.base.shapes"
    [ ${#adapted[@]} -gt 0 ] || { fail "no tensor of the base matches '$targets' (test bug)"; return 1; }
    local got
    got=$(st_shapes "$d/adapters.safetensors" | cut -f1,2)
    [ "$got" = "$(printf '%s' "$want" | sort)" ] ||
        { fail "adapters.safetensors tensors (name, shape) differ from the expected: $(diff <(printf '%s' "$want" | sort) <(echo "$got") | head -12)"; return 1; }
    # summary.tuning
    local wa wt
    wa=$(printf '%s\n' "${adapted[@]}" | jq -R . | jq -sc 'sort')
    wt=$( ( [ ${#trained[@]} -gt 0 ] && printf '%s\n' "${trained[@]}" ) | jq -R . | jq -sc 'sort')
    local tp=$((n_adapter + n_trained))
    jqe "$d/summary.json" ".tuning | (.adapted_tensors | sort) == $wa and (.trained_tensors | sort) == $wt" \
        "summary.tuning adapted_tensors / trained_tensors: expected $wa / $wt" .tuning || return 1
    jqe "$d/summary.json" ".tuning | .base_parameters == $n_base and .adapter_parameters == $n_adapter
        and .trainable_parameters == $tp and .rank == $r and .alpha == $alpha
        and .frozen_tensors == $(($(wc -l <"$d.base.shapes") - ${#trained[@]}))
        and ((.trainable_fraction - .trainable_parameters / (.base_parameters + .adapter_parameters)) | fabs) < 1e-12" \
        "summary.tuning: expected base $n_base, adapter $n_adapter, trainable $tp, rank $r, alpha $alpha" .tuning || return 1
    # step 0 is the base model: the first evaluation rows equal the base run's last ones
    local b0 l0
    b0=$(eval_rows "$bd/metrics.csv" last) l0=$(eval_rows "$d/metrics.csv" 0)
    [ -n "$l0" ] && [ "$b0" = "$l0" ] ||
        { fail "step-0 rows differ from the base run's final rows:"$'\n'"base: $b0"$'\n'"lora: $l0"; return 1; }
    # merged.safetensors: the base's tensors and shapes; untouched ones are the base's bytes
    [ "$(st_shapes "$d/merged.safetensors")" = "$(cat "$d.base.shapes")" ] &&
        [ "$(st_header "$d/merged.safetensors" | jq -c 'del(.__metadata__) | map_values(del(.data_offsets))')" = \
          "$(st_header "$base" | jq -c 'del(.__metadata__) | map_values(del(.data_offsets))')" ] ||
        { fail "merged.safetensors has other tensors, dtypes or shapes than the base"; return 1; }
    local -A dbase dmerged dadapt role
    digests_into dbase "$base"
    digests_into dmerged "$d/merged.safetensors"
    digests_into dadapt "$d/adapters.safetensors"
    for name in "${adapted[@]}"; do role[$name]=adapted; done
    for name in "${trained[@]}"; do role[$name]=trained; done
    local bad=""
    for name in "${!dbase[@]}"; do
        case ${role[$name]:-} in
        adapted) [ "${dbase[$name]}" != "${dmerged[$name]}" ] || bad+="adapted tensor '$name' equals the base in merged.safetensors"$'\n' ;;
        trained)
            [ "${dbase[$name]}" != "${dmerged[$name]}" ] || bad+="trained tensor '$name' did not change"$'\n'
            [ "${dmerged[$name]}" = "${dadapt[$name]:-}" ] || bad+="'$name' differs between merged and adapters"$'\n' ;;
        *) [ "${dbase[$name]}" = "${dmerged[$name]}" ] || bad+="tensor '$name' (neither adapted nor trained) differs from the base"$'\n' ;;
        esac
    done
    [ -z "$bad" ] || { fail "${bad%$'\n'}"; return 1; }
}

# route-stats and `moe train --init` on merged.safetensors evaluate the LoRA
# run's final losses. merged_eval DIR CONFIG
merged_eval() {
    local d=$1 cfg=$2 s want got
    for s in test train; do
        run "$d.rs-$s" "${TO[@]}" "$MOE" route-stats --checkpoint "$d/merged.safetensors" --out "$d.rs-$s" --data "$s" --threads 1 --quiet
        [ "$RC" -eq 0 ] || { fail "route-stats: $(describe "$d.rs-$s" moe route-stats --checkpoint "$d/merged.safetensors")"; return 1; }
        want=$(jq ".final.$s.loss" "$d/summary.json") got=$(jq .loss "$d.rs-$s.out")
        [ "$want" = "$got" ] && [ "$want" != null ] ||
            { fail "route-stats --data $s on merged.safetensors: loss $got, the LoRA run's final $s loss $want"; return 1; }
    done
    trainx "$d.init" --config "$cfg" --init "$d/merged.safetensors" --set train.epochs=1
    ran "$d.init" || return 1
    local a b
    a=$(eval_rows "$d/metrics.csv" last) b=$(eval_rows "$d.init/metrics.csv" 0)
    [ "$a" = "$b" ] || { fail "moe train --init merged.safetensors: step-0 rows differ from the LoRA run's final rows:"$'\n'"lora: $a"$'\n'"init: $b"; return 1; }
}

t_lora_per_expert() {
    lorax lpe --base "$BASE" --config moe.json --rank 2 --targets '*.experts.*,head.weight' --merge
    check_lora lpe base per-expert 2 '*.experts.*,head.weight' 0 || return 1
    jqe lpe/config.json '.lora | .rank == 2 and .targets == ["*.experts.*", "head.weight"] and .expert_mode == "per-expert"' \
        "config.json lora.*" .lora
}
check "lora mlp-moe per-expert (experts + head, --merge): adapter names/shapes, routers trained, step 0 = base, merged has the base's untouched bytes, summary.tuning" t_lora_per_expert

t_lora_merged_eval() { merged_eval lpe moe.json; }
check "lora: route-stats (test, train) and moe train --init on merged.safetensors evaluate the LoRA run's final losses" t_lora_merged_eval

t_lora_shared() {
    lorax lsh --base "$BASE" --config moe.json --rank 3 --alpha 6 --targets '*.experts.w1,*.experts.w2' --expert-mode shared --merge
    check_lora lsh base shared 3 '*.experts.w1,*.experts.w2' 0 6 || return 1
    merged_eval lsh moe.json
}
check "lora mlp-moe shared adapters (rank 3, alpha 6): A [r, in], B [out, r] per expert tensor; step 0 = base; merged evaluates to the final loss" t_lora_shared

t_lora_freeze_router() {
    lorax lfr --base "$BASE" --config moe.json --rank 1 --targets '*.experts.w1' --freeze-router --merge
    check_lora lfr base per-expert 1 '*.experts.w1' 1 || return 1
    jqe lfr/summary.json '.tuning.trained_tensors == []' "--freeze-router: trained_tensors not empty" .tuning
}
check "lora --freeze-router: router weights byte-identical to the base, not in adapters.safetensors" t_lora_freeze_router

t_lora_targets_twice() {
    lorax ltt --base "$BASE" --config moe.json --rank 2 --targets '*.experts.w1' --targets 'head.weight'
    ran ltt || return 1
    jqe ltt/summary.json '(.tuning.adapted_tensors | sort) == ["head.weight", "layers.0.moe.experts.w1", "layers.1.moe.experts.w1"]' \
        "--targets given twice: expected adapters on both globs' tensors" .tuning.adapted_tensors
}
check "lora --targets '*.experts.w1' --targets 'head.weight' adapts both (a second --targets adds, it does not replace)" t_lora_targets_twice

t_lora_no_merge() {
    lorax lnm --base "$BASE" --config moe.json --rank 2 --targets '*.experts.*'
    ran lnm || return 1
    [ -s lnm/adapters.safetensors ] && [ ! -e lnm/merged.safetensors ] && [ ! -e lnm/model.safetensors ] ||
        { fail "without --merge: expected adapters.safetensors only: $(ls lnm)"; return 1; }
}
check "lora without --merge writes adapters.safetensors and no merged.safetensors" t_lora_no_merge

t_lora_same_seed() {
    lorax lpe2 --base "$BASE" --config moe.json --rank 2 --targets '*.experts.*,head.weight' --merge
    ran lpe2 || return 1
    lorax lpe-t2 --base "$BASE" --config moe.json --rank 2 --targets '*.experts.*,head.weight' --merge --threads 2
    ran lpe-t2 || return 1
    local d f bad=""
    for d in lpe2 lpe-t2; do
        for f in metrics.csv experts.csv adapters.safetensors merged.safetensors; do
            cmp -s "lpe/$f" "$d/$f" || bad+="$d/$f differs from lpe/$f: $(cmp "lpe/$f" "$d/$f" 2>&1 | head -1)"$'\n'
        done
    done
    [ -z "$bad" ] || { fail "${bad%$'\n'}"; return 1; }
    lorax lpe-s9 --base "$BASE" --config moe.json --rank 2 --targets '*.experts.*,head.weight' --merge --seed 9
    ran lpe-s9 || return 1
    ! cmp -s lpe/adapters.safetensors lpe-s9/adapters.safetensors || { fail "--seed 9 gave the same adapters as seed 3"; return 1; }
}
check "lora: the same seed twice and --threads 2 give byte-identical metrics.csv, experts.csv, adapters and merged model; another seed other adapters" t_lora_same_seed

t_lora_sigterm() {
    local d=lint
    rm -rf "$d"
    jq '.train.epochs = 12' long.json >long-lora.json
    "$MOE" lora --base "$BASE" --config long-lora.json --rank 2 --targets '*.experts.*' --threads 1 --quiet --out "$d" >"$d.out" 2>"$d.err" &
    local pid=$! i
    # signal once metrics.csv has a batch row (train.log_every = 10 steps), so that steps
    # have been taken however slow the build (sanitizers) or busy the machine
    for i in $(seq 1 200); do
        grep -q ',batch,' "$d/metrics.csv" 2>/dev/null && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    kill -TERM "$pid" 2>/dev/null
    wait "$pid"
    local rc=$?
    if [ "$rc" -eq 0 ]; then
        echo "# $d: the LoRA run finished before the SIGTERM"
        return 0
    fi
    [ "$rc" -eq 143 ] || { fail "exit $rc, expected 143: $(head -c 400 "$d.err")"; return 1; }
    [ "$(wc -l <"$d.err")" -eq 1 ] && grep -q 'moe lora: interrupted by SIGTERM at step [0-9]*; a LoRA run cannot be resumed' "$d.err" ||
        { fail "stderr: $(cat "$d.err")"; return 1; }
    jqe "$d.out" '.interrupted == "SIGTERM" and .steps > 0 and (has("checkpoint") | not)' "stdout summary" || return 1
    [ ! -e "$d/checkpoint.safetensors" ] && [ ! -e "$d/adapters.safetensors" ] ||
        { fail "an interrupted LoRA run left $(ls "$d")"; return 1; }
}
check "lora stopped by SIGTERM: exit 143, one line saying it cannot be resumed, no checkpoint, summary says interrupted" t_lora_sigterm

# Without --quiet a command's progress lines name the command and the files it wrote.
t_lora_log() {
    rm -rf llog
    run llog "${TO[@]}" "$MOE" lora --base "$BASE" --config moe.json --rank 2 --targets '*.experts.*' --merge --threads 1 --out llog
    ran llog || return 1
    local bad=""
    grep -v '^moe lora: ' llog.err >/dev/null && bad+="stderr lines that do not start with 'moe lora: '; "
    grep -q 'model\.safetensors' llog.err && bad+="stderr names model.safetensors, which a LoRA run does not write; "
    grep -q 'adapters\.safetensors' llog.err || bad+="stderr does not name adapters.safetensors; "
    [ -z "$bad" ] || { fail "$bad"$'\n'"stderr: $(cat llog.err)"; return 1; }
}
check "lora without --quiet: progress lines say 'moe lora:' and list the files a LoRA run writes (adapters, merged), not model.safetensors" t_lora_log

# ---------------------------------------------------- LoRA on a Transformer
mkdir -p corpus
awk 'BEGIN { x = 7
    split("the a of and to in is was that it he for on are as with his they at be this from have or by one had not but what all were", w, " ")
    for (s = 0; s < 160; s++) { n = 4 + s % 5; line = ""
        for (i = 0; i < n; i++) { x = (x * 16807) % 2147483647; line = line (i ? " " : "") w[1 + int(x / 2147483647 * 40)] }
        printf "%s. ", line; if (s % 6 == 5) printf "\n" } }' >corpus/en.txt
cat >lm.json <<EOF
{
  "data": { "source": "text", "text": { "path": "$TMP/corpus", "valid_fraction": 0.15, "train_eval_windows": 48 } },
  "model": { "type": "transformer", "n_ctx": 16, "n_embd": 16, "n_head": 2, "n_layer": 2, "n_ff": 16,
             "moe_every": 2, "n_expert": 4, "n_expert_used": 1 },
  "moe": { "router": "switch" },
  "optim": { "lr": 0.01, "batch_size": 16 },
  "train": { "epochs": 1, "seed": 5 }
}
EOF
trainx lmbase --config lm.json
[ "$RC" -eq 0 ] && [ -s lmbase/model.safetensors ] || echo "Bail out! the Transformer base run failed: $(head -c 400 lmbase.err)"

t_lora_lm() {
    lorax llm --base "$TMP/lmbase/model.safetensors" --config lm.json --rank 2 --targets '*.attn.*,*.experts.*,head.weight' --merge
    check_lora llm lmbase per-expert 2 '*.attn.*,*.experts.*,head.weight' 0 || return 1
    jqe llm/summary.json '.tuning.adapted_tensors | length == 7' "expected 7 adapted tensors (wqkv, wo x 2, w1, w2, head)" .tuning || return 1
    jqe llm/summary.json '.final.test.bits_per_byte | type == "number"' "no final.test.bits_per_byte" .final || return 1
    merged_eval llm lm.json
}
check "lora on a byte-level Transformer (attention, experts, head): adapters, step 0 = base, merged evaluates to the final loss" t_lora_lm

t_lora_lm_shared() {
    lorax llms --base "$TMP/lmbase/model.safetensors" --config lm.json --rank 2 --targets '*.experts.*,layers.0.ffn.*' --expert-mode shared --merge --threads 2
    check_lora llms lmbase shared 2 '*.experts.*,layers.0.ffn.*' 0
}
check "lora on the Transformer, shared adapters on experts and the dense FFN (--threads 2)" t_lora_lm_shared

echo "1..$N"
[ "$FAILED" -eq 0 ]
