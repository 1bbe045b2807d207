#!/usr/bin/env bash
# test_compress.sh: `moe compress` end to end through the `moe` binary, on tiny
# models trained here (seconds, --threads 1). Checks:
#   - expert pruning (mlp-moe): the output has n_expert - N experts in its
#     config and tensors; the experts dropped are those of lowest routed-token
#     count in the summary's scores; the router rows and expert blocks kept are
#     the checkpoint's, bit for bit (the same bytes in the file);
#   - summary.quality.after is what `moe eval` says of the output, value for
#     value, for pruning, neuron pruning and int8 quantization (both schemes,
#     both granularities) of an mlp-moe and a byte-level transformer LM: the
#     model evaluated is the one the file gives every reader;
#   - quantization: the parameters' bytes shrink to about a quarter, the file
#     holds I8 tensors with scales (and zero points, asymmetric), --targets
#     picks the tensors; the figures before/after add up (parameters, bytes,
#     resident bytes per token);
#   - neuron pruning: per layer, every FFN loses floor(F x units); global, the
#     total; the masks (NAME.pruned) are in the file and the masked rows/columns
#     are zero; the reported sparsity is the tensors' zero fraction;
#   - every command that reads a checkpoint reads a compressed one: train
#     --init (with the output's config.json), eval, route-stats, distill
#     --teacher, lora --base, generate;
#   - byte-identical reruns (model.safetensors), random pruning depends on
#     --seed only.
# shellcheck disable=SC2317  # check functions are called indirectly, via check
set -u
export LC_ALL=C
. "$(dirname "$0")/tap.sh"
tap_setup compress "$@"

train() { # train NAME ARGS...: run directory NAME
    local name=$1
    shift
    "${TO[@]}" "$MOE" train "$@" --out "$name" --quiet --threads 1 >"$name.train.out" 2>"$name.train.err"
}
compress() { # compress NAME ARGS...: output directory NAME, RC set
    local name=$1
    shift
    run "$name" "${TO[@]}" "$MOE" compress --out "$name" --quiet --threads 1 "$@"
}
# header FILE: a safetensors file's JSON header
header() { dd if="$1" bs=1 skip=8 count="$(od -An -t u8 -N8 "$1" | tr -d ' ')" 2>/dev/null; }
# tensor_bytes FILE NAME: the tensor's data bytes, as hex
tensor_bytes() {
    local hl b e
    hl=$(od -An -t u8 -N8 "$1" | tr -d ' ')
    b=$(header "$1" | jq ".[\"$2\"].data_offsets[0]")
    e=$(header "$1" | jq ".[\"$2\"].data_offsets[1]")
    tail -c +$((9 + hl + b)) "$1" | head -c $((e - b)) | od -An -tx1 -v | tr -d ' \n'
}
# after_is_eval DIR [SPLIT]: moe eval of DIR/model.safetensors = DIR/summary.json's quality.after
after_is_eval() {
    local d=$1
    shift
    [ -s "$d/summary.json" ] || { fail "compress failed: $(head -c 600 "$d.err")"; return 1; }
    run "$d.eval" "${TO[@]}" "$MOE" eval --checkpoint "$d/model.safetensors" --quiet --threads 1 "$@"
    [ "$RC" -eq 0 ] || { fail "eval exit $RC: $(head -c 600 "$d.eval.err")"; return 1; }
    jq .quality.after "$d/summary.json" >"$d.want"
    same_json "$d.eval.out" "$d.want"
}

cat >moe.json <<'JSON'
{ "data": { "standardize": true, "synthetic": { "kind": "classes", "n_in": 6, "n_regions": 6, "n_train": 192, "n_test": 64 } },
  "model": { "type": "mlp-moe", "n_embd": 8, "n_layer": 2, "n_ff": 12, "n_expert": 6, "n_expert_used": 2 },
  "optim": { "batch_size": 32 }, "train": { "epochs": 3, "max_batch_eval": 40 } }
JSON
train moe --config moe.json
CK=moe/model.safetensors

# ---- expert pruning
compress pe --checkpoint $CK --prune-experts 2
check_prune_experts() {
    [ "$RC" -eq 0 ] || { fail "exit $RC: $(head -c 600 pe.err)"; return 1; }
    [ "$(jq .model.n_expert pe/config.json)" = 4 ] || { fail "config n_expert $(jq .model.n_expert pe/config.json)"; return 1; }
    local shape
    shape=$(header pe/model.safetensors | jq -c '.["layers.1.moe.experts.w1"].shape')
    [ "$shape" = "[4,12,8]" ] || { fail "w1 shape $shape"; return 1; }
    # the dropped experts are the two lowest scores (ties: the higher index), per layer
    local l
    for l in 0 1; do
        local want got
        want=$(jq -c ".compress.prune_experts.layers[$l].score | to_entries | sort_by(.value, -.key) | .[0:2] | map(.key) | sort" pe/summary.json)
        got=$(jq -c ".compress.prune_experts.layers[$l].dropped" pe/summary.json)
        [ "$want" = "$got" ] || { fail "layer $l: dropped $got, lowest scores $want"; return 1; }
        # kept blocks are the checkpoint's bytes: expert blocks of 12 x 8 floats, router rows of 8
        local kept i=0 e
        kept=$(jq -r ".compress.prune_experts.layers[$l].kept[]" pe/summary.json)
        local src dst rs rd
        src=$(tensor_bytes $CK "layers.$l.moe.experts.w1")
        dst=$(tensor_bytes pe/model.safetensors "layers.$l.moe.experts.w1")
        rs=$(tensor_bytes $CK "layers.$l.moe.router.weight")
        rd=$(tensor_bytes pe/model.safetensors "layers.$l.moe.router.weight")
        for e in $kept; do
            [ "${src:$((e * 768)):768}" = "${dst:$((i * 768)):768}" ] || { fail "layer $l: expert $e's w1 is not block $i"; return 1; }
            [ "${rs:$((e * 64)):64}" = "${rd:$((i * 64)):64}" ] || { fail "layer $l: router row $e is not row $i"; return 1; }
            i=$((i + 1))
        done
    done
    [ "$(jq '.after.parameters < .before.parameters' pe/summary.json)" = true ] || { fail "parameters did not shrink"; return 1; }
}
check "--prune-experts 2: 4 experts left, the lowest-usage ones dropped, the rest bit for bit" check_prune_experts
check "--prune-experts: quality.after = moe eval of the output" after_is_eval pe
compress pei --checkpoint $CK --prune-experts 1 --prune-by importance --data train
check "--prune-by importance --data train: quality.after = moe eval --data train" after_is_eval pei --data train
check_importance_scores() {
    [ "$(jq -r .compress.prune_experts.by pei/summary.json)" = importance ] || { fail "by: $(jq .compress.prune_experts.by pei/summary.json)"; return 1; }
    # importance is a sum of gate weights: at most the tokens routed (gates <= 1), not all integers
    jq -e '[.compress.prune_experts.layers[].score[]] | any(. != floor)' pei/summary.json >/dev/null ||
        { fail "importance scores are all integers (usage counts?)"; return 1; }
}
check "--prune-by importance scores are gate-weight sums" check_importance_scores

# random pruning: a function of --seed
compress r1 --checkpoint $CK --prune-experts 3 --prune-by random --seed 5
compress r2 --checkpoint $CK --prune-experts 3 --prune-by random --seed 5
compress r3 --checkpoint $CK --prune-experts 3 --prune-by random --seed 6
check_random() {
    cmp -s r1/model.safetensors r2/model.safetensors || { fail "the same seed gave different files"; return 1; }
    local a b
    a=$(jq -c '[.compress.prune_experts.layers[].dropped]' r1/summary.json)
    b=$(jq -c '[.compress.prune_experts.layers[].dropped]' r3/summary.json)
    [ "$a" != "$b" ] || { fail "seeds 5 and 6 dropped the same experts $a"; return 1; }
}
check "--prune-by random: the same seed, the same file; another seed, other experts" check_random

# ---- neuron pruning
compress pn --checkpoint $CK --prune-neurons 0.25
check_neurons_layer() {
    [ "$RC" -eq 0 ] || { fail "exit $RC: $(head -c 600 pn.err)"; return 1; }
    # each FFN: 6 experts x 12 units = 72, floor(0.25 x 72) = 18 pruned
    jq -e '.compress.prune_neurons.ffns | length == 2 and all(.units == 72 and .pruned == 18)' pn/summary.json >/dev/null ||
        { fail "ffns: $(jq -c .compress.prune_neurons.ffns pn/summary.json)"; return 1; }
    # w1 and w2 each have 18 of 72 rows/columns zero: sparsity 0.25 (a weight that trained to exactly 0 would add)
    jq -e '.compress.prune_neurons.tensors | length == 4 and all(.sparsity >= 0.25 and .sparsity < 0.26)' pn/summary.json >/dev/null ||
        { fail "tensors: $(jq -c .compress.prune_neurons.tensors pn/summary.json)"; return 1; }
    local shape
    shape=$(header pn/model.safetensors | jq -c '.["layers.0.moe.experts.pruned"] | [.dtype, .shape]')
    [ "$shape" = '["U8",[6,12]]' ] || { fail "mask: $shape"; return 1; }
}
check "--prune-neurons 0.25 (per layer): 18 of 72 units of each FFN, masks in the file" check_neurons_layer
check "--prune-neurons: quality.after = moe eval of the output" after_is_eval pn
compress png --checkpoint $CK --prune-neurons 0.4 --neuron-scope global --neuron-score taylor
check_neurons_global() {
    [ "$RC" -eq 0 ] || { fail "exit $RC: $(head -c 600 png.err)"; return 1; }
    # 144 units in all, floor(0.4 x 144) = 57 pruned over both FFNs
    [ "$(jq '[.compress.prune_neurons.ffns[].pruned] | add' png/summary.json)" = 57 ] ||
        { fail "pruned: $(jq -c '[.compress.prune_neurons.ffns[].pruned]' png/summary.json)"; return 1; }
    [ "$(jq -r .compress.prune_neurons.score png/summary.json)" = taylor ] || { fail "score"; return 1; }
}
check "--neuron-scope global --neuron-score taylor: 57 of 144 units over both FFNs" check_neurons_global
check "--prune-neurons global taylor: quality.after = moe eval of the output" after_is_eval png

# ---- int8 quantization
compress q --checkpoint $CK --quantize int8
check_quant() {
    [ "$RC" -eq 0 ] || { fail "exit $RC: $(head -c 600 q.err)"; return 1; }
    local h
    h=$(header q/model.safetensors)
    [ "$(jq -r '.["layers.0.moe.experts.w1"].dtype' <<<"$h")" = I8 ] || { fail "w1 not I8"; return 1; }
    [ "$(jq -c '.["layers.0.moe.experts.w1.q_scale"].shape' <<<"$h")" = "[6,12]" ] || { fail "per-channel scales"; return 1; }
    [ "$(jq -r '.["layers.0.norm.weight"].dtype' <<<"$h")" = F32 ] || { fail "a vector was quantized"; return 1; }
    jq -e 'has("layers.0.moe.experts.w1.q_zero") | not' <<<"$h" >/dev/null || { fail "zero points in a symmetric file"; return 1; }
    # parameter bytes: 4 per float before; 1 per int8 + 4 per scale after
    jq -e '.after.parameter_bytes < 0.45 * .before.parameter_bytes and .after.parameters == .before.parameters
           and .after.resident_bytes_per_token < .before.resident_bytes_per_token
           and .after.file_bytes < .before.file_bytes' q/summary.json >/dev/null ||
        { fail "figures: $(jq -c '[.before, .after]' q/summary.json)"; return 1; }
}
check "--quantize int8: I8 tensors with per-channel scales, a quarter of the bytes" check_quant
check "--quantize int8: quality.after = moe eval of the output" after_is_eval q
compress qa --checkpoint $CK --quantize int8 --scheme asymmetric --granularity tensor --targets 'layers.*.moe.experts.*'
check_quant_asym() {
    [ "$RC" -eq 0 ] || { fail "exit $RC: $(head -c 600 qa.err)"; return 1; }
    local h
    h=$(header qa/model.safetensors)
    [ "$(jq -c '[.["layers.1.moe.experts.w2.q_scale"].shape, .["layers.1.moe.experts.w2.q_zero"].dtype]' <<<"$h")" = '[[],"I32"]' ] ||
        { fail "per-tensor asymmetric parts: $(jq -c '.["layers.1.moe.experts.w2.q_zero"]' <<<"$h")"; return 1; }
    [ "$(jq -r '.["input.weight"].dtype' <<<"$h")" = F32 ] || { fail "--targets: input.weight quantized"; return 1; }
    [ "$(jq -c .compress.quantize.tensors qa/summary.json)" = \
      '["layers.0.moe.experts.w1","layers.0.moe.experts.w2","layers.1.moe.experts.w1","layers.1.moe.experts.w2"]' ] ||
        { fail "tensors: $(jq -c .compress.quantize.tensors qa/summary.json)"; return 1; }
}
check "--scheme asymmetric --granularity tensor --targets: the experts only, scale [] and I32 zero" check_quant_asym
check "asymmetric per tensor: quality.after = moe eval of the output" after_is_eval qa

# all three, then every reader
compress all --checkpoint $CK --prune-experts 1 --prune-neurons 0.5 --quantize int8
check "prune experts + neurons + int8: quality.after = moe eval of the output" after_is_eval all
compress all2 --checkpoint $CK --prune-experts 1 --prune-neurons 0.5 --quantize int8
check_rerun() {
    cmp -s all/model.safetensors all2/model.safetensors || { fail "model.safetensors differs between reruns"; return 1; }
    jq 'del(.argv)' all/summary.json >all.noargv
    jq 'del(.argv)' all2/summary.json >all2.noargv
    same_json all.noargv all2.noargv
}
check "a rerun writes the same bytes and the same summary (but argv)" check_rerun
check_readers() {
    local c=all/model.safetensors
    run tr "${TO[@]}" "$MOE" train --init $c --config all/config.json --set train.epochs=1 --out tr --quiet --threads 1
    [ "$RC" -eq 0 ] || { fail "train --init: exit $RC: $(head -c 400 tr.err)"; return 1; }
    run rs "${TO[@]}" "$MOE" route-stats --checkpoint $c --out rs --quiet --threads 1
    [ "$RC" -eq 0 ] || { fail "route-stats: exit $RC: $(head -c 400 rs.err)"; return 1; }
    run ds "${TO[@]}" "$MOE" distill --teacher $c --config moe.json --set model.moe_every=9 --set train.epochs=1 --out ds --quiet --threads 1
    [ "$RC" -eq 0 ] || { fail "distill --teacher: exit $RC: $(head -c 400 ds.err)"; return 1; }
    run lo "${TO[@]}" "$MOE" lora --base $c --config all/config.json --rank 2 --targets '*.w1' --set train.epochs=1 --out lo --quiet --threads 1
    [ "$RC" -eq 0 ] || { fail "lora --base: exit $RC: $(head -c 400 lo.err)"; return 1; }
}
check "train --init, route-stats, distill --teacher and lora --base read the compressed checkpoint" check_readers
# train --init starts from the dequantized weights: its epoch-0 evaluation is quality.after
check_init_exact() {
    jq -c '.final.test // empty' tr/summary.json >/dev/null || return 1
    local e0
    e0=$(awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
                  $col["epoch"] == 0 && $col["split"] == "test" { print $col["loss"]; exit }' tr/metrics.csv)
    local want
    want=$(jq .quality.after.loss all/summary.json)
    [ -n "$e0" ] || { fail "no epoch-0 test row in metrics.csv"; return 1; }
    # metrics.csv holds 9 significant digits
    awk -v a="$e0" -v b="$want" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= 1e-8 * (b < 0 ? -b : b)) }' ||
        { fail "epoch-0 test loss $e0, compress said $want"; return 1; }
}
check "train --init of the compressed checkpoint: epoch 0's test loss is quality.after's" check_init_exact

# ---- train.prune: the schedule's masks, kept by later runs; train.qat: exact against compress
# 192 rows / 32 = 6 steps an epoch, 3 epochs: 18 steps; the schedule prunes after steps 3, 6, 9, 12
train tp --init $CK --config moe.json --set train.prune.sparsity=0.5 --set train.prune.steps=12 --set train.prune.every=3
# neurons_of DIR: compress --prune-neurons 0 of DIR's model (prunes nothing more; reports the file's masks and zeros)
neurons_of() { compress "$1.pn0" --checkpoint "$1/model.safetensors" --prune-neurons 0; }
check_train_prune() {
    [ -s tp/summary.json ] || { fail "train failed: $(head -c 600 tp.train.err)"; return 1; }
    # each FFN 6 x 12 = 72 units, floor(0.5 x 72) = 36 pruned at the schedule's end
    jq -e '.prune | .units == 144 and .pruned == 72 and all(.ffns[]; .pruned == 36) and .sparsity == 0.5' tp/summary.json >/dev/null ||
        { fail "summary prune: $(jq -c .prune tp/summary.json)"; return 1; }
    [ "$(header tp/model.safetensors | jq -c '.["layers.1.moe.experts.pruned"] | [.dtype, .shape]')" = '["U8",[6,12]]' ] ||
        { fail "no mask in model.safetensors"; return 1; }
    neurons_of tp
    [ "$RC" -eq 0 ] || { fail "compress: exit $RC: $(head -c 400 tp.pn0.err)"; return 1; }
    # the file's masked rows and columns are zero: w1 and w2 half zero (or a hair more)
    jq -e '.compress.prune_neurons | all(.ffns[]; .pruned == 36) and all(.tensors[]; .sparsity >= 0.5 and .sparsity < 0.51)' \
        tp.pn0/summary.json >/dev/null || { fail "masks or zeros: $(jq -c .compress.prune_neurons tp.pn0/summary.json)"; return 1; }
}
check "train.prune: 36 of 72 units of each FFN at the end of the schedule, masks in model.safetensors, their weights zero" check_train_prune
train tk --init tp/model.safetensors --config moe.json --set train.epochs=2
check_masks_kept() {
    [ -s tk/summary.json ] || { fail "train failed: $(head -c 600 tk.train.err)"; return 1; }
    neurons_of tk
    [ "$(tensor_bytes tk/model.safetensors layers.0.moe.experts.pruned)" = "$(tensor_bytes tp/model.safetensors layers.0.moe.experts.pruned)" ] ||
        { fail "the masks changed"; return 1; }
    jq -e '.compress.prune_neurons | all(.ffns[]; .pruned == 36) and all(.tensors[]; .sparsity >= 0.5)' tk.pn0/summary.json >/dev/null ||
        { fail "pruned weights moved: $(jq -c .compress.prune_neurons.tensors tk.pn0/summary.json)"; return 1; }
    cmp -s tp/model.safetensors tk/model.safetensors && { fail "nothing trained"; return 1; }
    return 0
}
check "train --init of a pruned model keeps its masks fixed and its pruned weights zero" check_masks_kept
# qat_exact NAME COMPRESS-OPTIONS... -- TRAIN-SETS...: a QAT run's final test row = compress's quality.after of its model
qat_exact() {
    local d=$1 copts=() sets=()
    shift
    while [ "$1" != -- ]; do copts+=("$1"); shift; done
    shift
    for x in "$@"; do sets+=(--set "$x"); done
    train "$d" --init $CK --config moe.json --set train.qat.quantize=int8 "${sets[@]}"
    [ -s "$d/summary.json" ] || { fail "train failed: $(head -c 600 "$d.train.err")"; return 1; }
    compress "$d.q" --checkpoint "$d/model.safetensors" --quantize int8 "${copts[@]}"
    [ "$RC" -eq 0 ] || { fail "compress: exit $RC: $(head -c 400 "$d.q.err")"; return 1; }
    jq -S .final.test "$d/summary.json" >"$d.want"
    jq -S .quality.after "$d.q/summary.json" >"$d.got"
    same_json "$d.got" "$d.want" || return 1
    # and the float model is not the quantized one (QAT trained the float weights)
    jq -e '.quality.before.loss != .quality.after.loss' "$d.q/summary.json" >/dev/null || { fail "quantization changed nothing"; return 1; }
}
check "train.qat (symmetric per channel): the final test row is the int8 model's, as compress evaluates it" \
    qat_exact tq --
check "train.qat asymmetric per tensor, experts only: the same for compress with those options" \
    qat_exact tqa --scheme asymmetric --granularity tensor --targets 'layers.*.moe.experts.*' -- \
    train.qat.scheme=asymmetric train.qat.granularity=tensor 'train.qat.targets=["layers.*.moe.experts.*"]'
train tpq --init $CK --config moe.json --set train.prune.sparsity=0.25 --set train.prune.steps=6 --set train.qat.quantize=int8
check_prune_qat() {
    [ -s tpq/summary.json ] || { fail "train failed: $(head -c 600 tpq.train.err)"; return 1; }
    jq -e '.prune.pruned == 36 and .qat.scheme == "symmetric"' tpq/summary.json >/dev/null ||
        { fail "summary: $(jq -c '[.prune.pruned, .qat]' tpq/summary.json)"; return 1; }
    compress tpq.q --checkpoint tpq/model.safetensors --quantize int8
    jq -S .final.test tpq/summary.json >tpq.want
    jq -S .quality.after tpq.q/summary.json >tpq.got
    same_json tpq.got tpq.want
}
check "train.prune with train.qat: both, and the final row is still the int8 model's" check_prune_qat

# ---- a byte-level transformer LM
mkdir -p text
for i in $(seq 60); do printf 'The cat %d sat on the mat, and the dog ran off to the park. ' "$i"; done >text/en.txt
cat >lm.json <<JSON
{ "data": { "source": "text", "text": { "path": "$TMP/text", "valid_fraction": 0.2 } },
  "model": { "type": "transformer", "n_ctx": 16, "n_embd": 16, "n_head": 2, "n_layer": 2, "n_ff": 16,
             "n_expert": 4, "n_expert_used": 1, "moe_every": 2 },
  "moe": { "router": "switch" }, "optim": { "batch_size": 8 }, "train": { "epochs": 2 } }
JSON
train lm --config lm.json
compress lmc --checkpoint lm/model.safetensors --prune-experts 1 --prune-neurons 0.25 --quantize int8 --scheme asymmetric
check "transformer LM, all three: quality.after = moe eval of the output" after_is_eval lmc
check_lm() {
    jq -e '.quality.before.bits_per_byte > 0 and .quality.after.bits_per_byte > 0' lmc/summary.json >/dev/null ||
        { fail "bits per byte: $(jq -c '[.quality.before.bits_per_byte, .quality.after.bits_per_byte]' lmc/summary.json)"; return 1; }
    # the dense FFN of block 0 and the experts of block 1 are both pruned
    [ "$(jq -c '[.compress.prune_neurons.ffns[].ffn]' lmc/summary.json)" = '["layers.0.ffn","layers.1.moe.experts"]' ] ||
        { fail "ffns: $(jq -c '[.compress.prune_neurons.ffns[].ffn]' lmc/summary.json)"; return 1; }
    run gen "${TO[@]}" "$MOE" generate --checkpoint lmc/model.safetensors --prompt 'The cat' --tokens 8 --seed 1 --quiet
    [ "$RC" -eq 0 ] || { fail "generate: exit $RC: $(head -c 400 gen.err)"; return 1; }
}
check "transformer LM: bits per byte before and after, dense and expert FFNs pruned, generate reads it" check_lm

echo "1..$N"
[ "$FAILED" -eq 0 ] || { echo "# $FAILED of $N checks failed"; exit 1; }
echo "# all $N checks passed"
