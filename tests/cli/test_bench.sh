#!/usr/bin/env bash
# test_bench.sh: `moe bench` end to end on tiny configs (an mlp-moe on
# synthetic data, a Transformer LM on a generated corpus, a dense mixture).
#
#   bash tests/cli/test_bench.sh /path/to/moe
#
# TAP-like output (tap.sh). Checks that stdout is one JSON object with every
# figure the README documents, each {median, min, max} with min <= median <=
# max, times and ratios positive and finite; that the layer shape follows
# --tokens and the config; that the routing share is the sum of its phases over
# the layer's time; that a dense model has no layer section; and that the
# training step leaves no file behind. Error paths are rows of bad_inputs.tsv (bench_*).
# shellcheck disable=SC2317  # check functions are called indirectly, via check
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# shellcheck source=tap.sh
. "$HERE/tap.sh"
tap_setup bench "$@"

cat >moe.json <<'JSON'
{ "data": { "source": "synthetic", "synthetic": { "kind": "classes", "n_in": 16, "n_regions": 4, "n_train": 512, "n_test": 64 } },
  "model": { "type": "mlp-moe", "n_embd": 16, "n_layer": 2, "moe_every": 1, "n_ff": 32, "n_expert": 4, "n_expert_used": 2 },
  "moe": { "router": "softmax", "aux_loss": "switch" },
  "loss": { "type": "ce" }, "optim": { "batch_size": 64 } }
JSON
awk 'BEGIN { for (i = 0; i < 3000; i++) printf "the quick brown fox %d jumps over the lazy dog %d\n", i % 17, i % 5 }' >corpus.txt
cat >lm.json <<JSON
{ "data": { "source": "text", "text": { "path": "$TMP/corpus.txt", "windows_per_epoch": 64, "train_eval_windows": 8 } },
  "model": { "type": "transformer", "n_ctx": 16, "n_embd": 16, "n_head": 2, "n_layer": 2, "moe_every": 2,
             "n_expert": 4, "n_expert_used": 1, "n_ff": 16, "ffn_activation": "gelu" },
  "moe": { "router": "switch" }, "optim": { "batch_size": 4 } }
JSON

# fig F PATH: PATH in F is {median, min, max}, finite, positive, min <= median <= max
fig() {
    jqe "$1" "$2 | (.median | isnormal) and .min > 0 and .min <= .median and .median <= .max" "$2 is a positive {median, min, max}" "$2"
}

run b1 "${TO[@]}" "$MOE" bench --config moe.json --tokens 128 --repeats 3 --threads 1 --quiet
figures() {
    ran b1 || return 1
    [ "$(wc -l <b1.out)" -eq 1 ] || fail "stdout is not one line: $(head -c 300 b1.out)" || return 1
    local p
    for p in .layer.forward.seconds .layer.forward_backward.seconds .layer.forward_backward.ratio_to_sgemm \
        .layer.routing_share .step.seconds .step.tokens_per_second .step.ratio_to_sgemm .reference.sgemm_gflops \
        .reference.layer_sgemm_gflops .layer.phases.ffn_gemm .layer.phases.router .step.phases.optimizer; do
        fig b1.out "$p" || return 1
    done
    jqe b1.out '.repeats == 3 and .tokens == 128 and .device == "cpu" and (.blas.arch | length > 0)' "run settings"
}
check "every documented figure is a positive {median, min, max}" figures

shape() {
    ran b1 || return 1
    jqe b1.out '.layer.shape == {tokens: 128, n_embd: 16, n_ff: 32, n_expert: 4, n_expert_used: 2, router: "softmax"}' \
        "layer shape" .layer.shape &&
        jqe b1.out '.step.rows == 128 and .step.tokens == 128' "step of 128 rows" .step
}
check "the layer and the step follow --tokens and the config" shape

share() {
    ran b1 || return 1
    jqe b1.out '.layer.routing_share.median < 1 and .layer.routing_share.min > 0' "routing share in (0, 1)" .layer.routing_share &&
        jqe b1.out '([.layer.phases | to_entries[] | select(.key != "other") | .value.min] | add) <= .layer.forward_backward.seconds.max' \
            "the phases' minima add up to at most the longest pass" .layer.phases
}
check "routing share and phases are parts of the layer's time" share

run b2 "${TO[@]}" "$MOE" bench --config lm.json --repeats 2 --threads 2 --quiet
lm() {
    ran b2 || return 1
    fig b2.out .step.tokens_per_second && fig b2.out .layer.forward_backward.ratio_to_sgemm &&
        jqe b2.out '.step.rows == 4 and .step.tokens == 64 and .layer.shape.tokens == 64' "one batch of 4 windows of 16" .step &&
        jqe b2.out '.step.phases | has("attention") and has("norm") and has("loss") and has("embedding")' "LM phases" .step.phases
}
check "a Transformer LM: one training batch by default, attention among the phases" lm

run b3 "${TO[@]}" "$MOE" bench --set model.type=mixture --repeats 1 --warmup 0 --threads 1 --quiet
dense() {
    ran b3 || return 1
    jqe b3.out '.layer == null and (.step.tokens_per_second.median | isnormal)' "a dense model has no layer section" '{layer, step}'
}
check "a model without sparse layers: no layer section, the step alone" dense

clean() {
    local left
    left=$(find . -newer moe.json -type f ! -name 'b[0-9].*' ! -name '*.json' ! -name corpus.txt | head -5)
    [ -z "$left" ] || fail "bench wrote files: $left"
}
check "bench writes nothing but stdout" clean

echo "1..$N"
[ "$FAILED" -eq 0 ]
