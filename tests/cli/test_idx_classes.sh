#!/usr/bin/env bash
# test_idx_classes.sh: `moe train` with data.idx.classes (keep only the IDX
# rows whose label is listed, in both splits; the limits count kept rows).
#
#   bash tests/cli/test_idx_classes.sh /path/to/moe
#
# TAP-like output as test_cli.sh (tap.sh). Fixtures are generated in a mktemp -d
# directory removed on exit: 6 images of 2x2 pixels labelled 0 1 0 1 0 1. The
# Fashion-MNIST checks (30,000 training and 5,000 test rows for classes 0-4)
# run when /usr/share/datasets/fashion-mnist is installed and are skipped
# otherwise. The error paths are rows of bad_inputs.tsv (idx_classes_*).
# shellcheck disable=SC2317  # check functions are called indirectly, via check
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# shellcheck source=tap.sh
. "$HERE/tap.sh"
tap_setup idxcls "$@"

IMG_HDR='\x00\x00\x08\x03\x00\x00\x00\x06\x00\x00\x00\x02\x00\x00\x00\x02'
{ printf '%b' "$IMG_HDR"; printf '\x00\x10\x20\x30\x40\x50\x60\x70\x80\x90\xa0\xb0\xc0\xd0\xe0\xf0\x01\x02\x03\x04\x05\x06\x07\x08'; } >img.idx
{ printf '\x00\x00\x08\x01\x00\x00\x00\x06'; printf '\x00\x01\x00\x01\x00\x01'; } >lab.idx
printf '{ "data": { "source": "idx", "idx": { "train_images": "%s", "train_labels": "%s", "test_images": "%s", "test_labels": "%s" } }, "model": { "n_expert": 2 }, "optim": { "batch_size": 4 }, "train": { "epochs": 1 } }\n' \
    "$TMP/img.idx" "$TMP/lab.idx" "$TMP/img.idx" "$TMP/lab.idx" >idx.json

# rows P TRAIN TEST: the run P (run's prefix) succeeded and its summary reports
# TRAIN training and TEST test rows.
rows() {
    [ "$RC" -eq 0 ] || fail "$(describe "$1")" || return 1
    local got
    got=$(jq -r '"\(.final.train.rows) \(.final.test.rows)"' "$1.out")
    [ "$got" = "$2 $3" ] || fail "expected train/test rows '$2 $3', got '$got'"
}

t_fixture() {
    run "$TMP/a" "$MOE" train --config idx.json --set 'data.idx.classes=[1]' --out run/a --quiet --threads 1
    rows "$TMP/a" 3 3
}
check "classes [1] keeps the 3 rows labelled 1 in each split" t_fixture

t_limit() {
    run "$TMP/b" "$MOE" train --config idx.json --set 'data.idx.classes=[0]' --set data.idx.limit_train=2 \
        --set data.idx.limit_test=1 --out run/b --quiet --threads 1
    rows "$TMP/b" 2 1
}
check "the limits count kept rows: classes [0], limit_train 2, limit_test 1 give 2 and 1 rows" t_limit

t_all() {
    run "$TMP/c" "$MOE" train --config idx.json --set 'data.idx.classes=[]' --out run/c --quiet --threads 1
    rows "$TMP/c" 6 6 || return 1
    cmp -s run/c/metrics.csv <("$MOE" train --config idx.json --out run/c2 --quiet --threads 1 >/dev/null && cat run/c2/metrics.csv) ||
        fail "classes [] gives a different metrics.csv from no classes key"
}
check "classes [] keeps every row, as without the key" t_all

FM=/usr/share/datasets/fashion-mnist
if [ -s "$FM/train-images-idx3-ubyte.gz" ] && [ -s "$FM/t10k-labels-idx1-ubyte.gz" ]; then
    printf '{ "data": { "source": "idx" }, "model": { "type": "mlp-moe", "n_embd": 8, "n_layer": 1, "n_ff": 8, "n_expert": 2 }, "optim": { "batch_size": 256 }, "train": { "epochs": 1 } }\n' >fm.json
    t_fmnist() {
        run "$TMP/f" "$MOE" train --config fm.json --set 'data.idx.classes=[0,1,2,3,4]' --out run/f --quiet --threads 1
        rows "$TMP/f" 30000 5000 || return 1
        # labels keep their values: the head still has 10 outputs
        local hl shape
        hl=$(od -An -t u8 -N8 run/f/model.safetensors | tr -d ' ')
        shape=$(dd if=run/f/model.safetensors bs=1 skip=8 count="$hl" 2>/dev/null | jq -c '.["head.weight"].shape')
        [ "$shape" = "[10,8]" ] || fail "head.weight has shape $shape, expected [10,8]"
    }
    check "Fashion-MNIST classes 0-4: 30000 training and 5000 test rows, 10 outputs" t_fmnist
    t_fmnist_limit() {
        run "$TMP/g" "$MOE" train --config fm.json --set 'data.idx.classes=[5,6,7,8,9]' --set data.idx.limit_train=1000 \
            --out run/g --quiet --threads 1
        rows "$TMP/g" 1000 5000
    }
    check "Fashion-MNIST classes 5-9 with limit_train 1000: 1000 and 5000 rows" t_fmnist_limit
else
    ok "# SKIP Fashion-MNIST not installed"
    ok "# SKIP Fashion-MNIST not installed"
fi

echo "1..$N"
if [ "$FAILED" -gt 0 ]; then
    echo "# $FAILED of $N checks failed"
    exit 1
fi
echo "# all $N checks passed"
exit 0
