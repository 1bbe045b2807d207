#!/usr/bin/env bash
# gen.sh: rewrite the seeds of fuzz_checkpoint (tests/fuzz/corpus/checkpoint/):
# a real training checkpoint for each config here, written by the moe binary,
# and copies of them broken in one place each.
#
#   bash tests/fuzz/checkpoint/gen.sh [MOE]     # MOE defaults to build/cmd/moe
#
# (`bash scripts/fuzz.sh --gen-corpus` runs it when build/cmd/moe exists.)
# Each config trains 2 epochs with train.checkpoint_every = 1, so the last
# checkpoint the run leaves is a mid-epoch one of epoch 2 (the final step is
# not checkpointed). Broken copies (bad-*) each change one thing and must be
# refused: a hash-table entry outside [0, E), a NaN bias, train.finished = 2,
# optim.m reshaped, train.batch_stats read as F32, a vocabulary
# that does not parse, languages that are not the data's, and a weight that no
# longer matches its CRC-32 (bad-crc; the other poked copies drop the checksum
# table so that the check behind it is reached), and int8-quantized model files
# from moe compress with a zero scale (bad-scale-zero) and a zero point of 128
# (bad-zero-point). Needs jq and od.
# train.seconds differs from run to run; everything else is reproducible.
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/../../.."
moe=${1:-build/cmd/moe}
[ -x "$moe" ] || { echo "gen.sh: no moe binary at '$moe' (meson setup build && ninja -C build)" >&2; exit 1; }
out=tests/fuzz/corpus/checkpoint
mkdir -p "$out"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/moe-ckpt-seeds.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

for cfg in tests/fuzz/checkpoint/*.json; do
    name=$(basename "$cfg" .json)
    "$moe" train --config "$cfg" --out "$tmp/$name" --threads 1 --quiet >/dev/null
    cp "$tmp/$name/checkpoint.safetensors" "$out/$name.safetensors"
done

# int8-quantized model files written by moe compress from the mlp-moe-switch
# checkpoint: symmetric per channel, and asymmetric per tensor after neuron pruning
"$moe" compress --checkpoint "$out/mlp-moe-switch.safetensors" --out "$tmp/int8" --quantize int8 --threads 1 --quiet >/dev/null
cp "$tmp/int8/model.safetensors" "$out/mlp-moe-int8.safetensors"
"$moe" compress --checkpoint "$out/mlp-moe-switch.safetensors" --out "$tmp/int8a" --quantize int8 --scheme asymmetric \
    --granularity tensor --prune-neurons 0.3 --threads 1 --quiet >/dev/null
cp "$tmp/int8a/model.safetensors" "$out/mlp-moe-int8-asym-pruned.safetensors"

# header FILE: the JSON header; hlen FILE: its length.
hlen() { od -An -t u8 -N 8 "$1" | tr -d ' '; }
header() { dd if="$1" bs=1 skip=8 count="$(hlen "$1")" status=none; }
# rewrite SRC DST JQ-FILTER: the same data section under a header changed by the filter.
rewrite() {
    local n h
    n=$(hlen "$1")
    h=$(header "$1" | jq -ac "$3")
    {
        local i # the new length, 8 bytes little-endian (jq -a: ASCII, so characters are bytes)
        for i in 0 1 2 3 4 5 6 7; do
            printf '%b' "\\x$(printf %02x $(((${#h} >> (8 * i)) & 255)))"
        done
        printf '%s' "$h"
        tail -c +"$((9 + n))" "$1"
    } >"$2"
}
# poke_crc SRC DST TENSOR INDEX WIDTH HEXBYTES: overwrite element INDEX (WIDTH bytes) of a
# tensor; the file's checksum table no longer matches.
poke_crc() {
    local n begin
    n=$(hlen "$1")
    begin=$(header "$1" | jq -r --arg t "$3" '.[$t].data_offsets[0]')
    cp "$1" "$2"
    printf '%b' "$6" | dd of="$2" bs=1 seek="$((8 + n + begin + $4 * $5))" conv=notrunc status=none
}
# poke: the same, then without the checksum table (as another tool would write
# the file), so that the check behind the checksum is the one that refuses it.
poke() {
    poke_crc "$@"
    rewrite "$2" "$2.tmp" 'del(.__metadata__.tensor_crc32)'
    mv "$2.tmp" "$2"
}

# I32 7 in a table of 3 experts
poke "$out/mlp-moe-hash.safetensors" "$out/bad-hash-entry.safetensors" layers.0.moe.router.hash_table 5 4 '\x07\x00\x00\x00'
# F32 NaN bias
poke "$out/mlp-moe-switch.safetensors" "$out/bad-bias-nan.safetensors" layers.1.moe.router.bias 2 4 '\x00\x00\xc0\x7f'
rewrite "$out/mixture.safetensors" "$out/bad-finished.safetensors" '.__metadata__["train.finished"] = "2"'
# same bytes, other shape / dtype (tensors must tile the data section, so sizes stay)
rewrite "$out/mixture.safetensors" "$out/bad-optim-shape.safetensors" \
    '.["optim.m"].shape = [(.["optim.m"].shape[0] / 2), 2]'
rewrite "$out/mlp-moe-switch.safetensors" "$out/bad-stats-dtype.safetensors" \
    '.["train.batch_stats"].dtype = "F32" | .["train.batch_stats"].shape[0] *= 2'
poke "$out/lm.safetensors" "$out/bad-vocab.safetensors" vocab.text 0 1 'X'
rewrite "$out/lm.safetensors" "$out/bad-languages.safetensors" '.__metadata__["data.languages"] = "[\"de\",\"fr\"]"'
# a zero scale and an out-of-range zero point in the quantized files
poke "$out/mlp-moe-int8.safetensors" "$out/bad-scale-zero.safetensors" layers.0.moe.experts.w1.q_scale 3 4 '\x00\x00\x00\x00'
poke "$out/mlp-moe-int8-asym-pruned.safetensors" "$out/bad-zero-point.safetensors" layers.1.moe.experts.w2.q_zero 0 4 '\x80\x00\x00\x00'
# a changed weight under the file's own checksum table
poke_crc "$out/mixture.safetensors" "$out/bad-crc.safetensors" experts.w1 1 4 '\x00\x00\x80\x3f'
echo "gen.sh: wrote $(find "$out" -name '*.safetensors' | wc -l) seeds to $out/"
