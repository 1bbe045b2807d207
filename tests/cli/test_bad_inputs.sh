#!/usr/bin/env bash
# test_bad_inputs.sh: the bad-input catalogue. Runs every row of
# tests/cli/bad_inputs.tsv (one malformed input per row: config, checkpoint,
# data file or command-line option) against a `moe` binary.
#
#   bash tests/cli/test_bad_inputs.sh /path/to/moe [TABLE]
#
# Each row's command must exit with the row's code (1 runtime failure, 2 usage
# or config error), print nothing on stdout, and print exactly one line on
# stderr that starts with "moe CMD: " ("moe: " outside a subcommand) and
# contains the row's fragment (a fixed string). The fixtures the rows name
# (configs, safetensors files, IDX files, CSV/TSV tables, tiny trained
# checkpoints) are generated here, in a mktemp -d directory that is removed on
# exit; every command runs from inside it, so nothing lands in the source tree.
#
# Table columns, tab-separated: id, category (config|checkpoint|data|cli),
# exit, fragment, command (the arguments after `moe`, as shell words). In the
# fragment and the command, @FIX@ is the fixture directory and @OUT@ a fresh,
# not yet existing output directory for that row. '#' lines are comments; the
# first non-comment line is the header.
#
# Output is TAP: "ok N - ID" / "not ok N - ID" with "#" reason lines (command,
# exit, stdout, stderr), then "1..N". Exits 1 if any check failed. With
# VERBOSE=1 in the environment, passing rows show their stderr line too.
# shellcheck disable=SC2016  # single-quoted jq programs
set -u
export LC_ALL=C # byte lengths for safetensors headers; stable messages

if [ $# -lt 1 ]; then
    echo "usage: bash $0 /path/to/moe [bad_inputs.tsv]" >&2
    exit 2
fi
MOE=$1
case $MOE in /*) ;; *) MOE=$PWD/$MOE ;; esac
TABLE=${2:-$(dirname "$0")/bad_inputs.tsv}
case $TABLE in /*) ;; *) TABLE=$PWD/$TABLE ;; esac
if [ ! -x "$MOE" ]; then
    echo "Bail out! '$MOE' is not an executable"
    exit 1
fi
if [ ! -r "$TABLE" ]; then
    echo "Bail out! cannot read the table '$TABLE'"
    exit 1
fi
command -v jq >/dev/null 2>&1 || { echo "Bail out! jq is required"; exit 1; }

# Placeholders are substituted into shell words unquoted: keep the fixture
# directory free of characters the shell would treat specially.
base=${TMPDIR:-/tmp}
case $base in *[!A-Za-z0-9/._-]*) base=/tmp ;; esac
FIX=$(mktemp -d "$base/moe-bad.XXXXXX") || { echo "Bail out! mktemp failed"; exit 1; }
trap 'rm -rf "$FIX"' EXIT
trap 'exit 130' INT TERM
cd "$FIX" || exit 1
mkdir -p "$FIX/out" "$FIX/run"

N=0
FAILED=0
ok() { N=$((N + 1)); echo "ok $N - $1"; }
not_ok() { # not_ok NAME REASON
    N=$((N + 1))
    FAILED=$((FAILED + 1))
    echo "not ok $N - $1"
    printf '%s\n' "$2" | sed 's/^/#   /'
}
# A per-command time limit, so a hang fails one row instead of the suite.
TIMEOUT=()
command -v timeout >/dev/null 2>&1 && TIMEOUT=(timeout 60)

# ------------------------------------------------------------ the table itself
t_table() {
    local why
    why=$(awk -F'\t' '
        /^#/ || /^[ \t]*$/ { next }
        !hdr { hdr = 1
               if ($0 != "id\tcategory\texit\tfragment\tcommand") print "header is not id, category, exit, fragment, command"
               next }
        { rows++ }
        NF != 5 { print "line " NR ": " NF " fields, expected 5" }
        $1 !~ /^[a-z0-9_]+$/ { print "line " NR ": id \"" $1 "\" is not [a-z0-9_]+" }
        seen[$1]++ { print "line " NR ": duplicate id " $1 }
        $2 != "config" && $2 != "checkpoint" && $2 != "data" && $2 != "cli" { print "line " NR ": bad category \"" $2 "\"" }
        $3 != "1" && $3 != "2" { print "line " NR ": exit must be 1 or 2, got \"" $3 "\"" }
        $4 == "" { print "line " NR ": empty fragment" }
        { cat[$2]++ }
        END {
            if (rows < 40) print "only " rows " rows, expected at least 40"
            split("config checkpoint data cli", c, " ")
            for (i = 1; i <= 4; i++) if (!cat[c[i]]) print "no rows of category " c[i]
        }' "$TABLE")
    if [ -z "$why" ]; then ok "table: header, >= 40 rows, unique ids, 5 fields, valid categories and exit codes"; else
        not_ok "table: header, >= 40 rows, unique ids, 5 fields, valid categories and exit codes" "$why"; fi
}
t_table

# ---------------------------------------------------------------- fixtures
# Configs. reg.json is the tiny valid base (mixture, 3 linear experts, 2 inputs,
# 1 output, 1 epoch); every cfg_*.json breaks one thing.
cat >reg.json <<'EOF'
{
  "data": { "source": "synthetic", "synthetic": { "kind": "regions", "n_train": 60, "n_test": 20 } },
  "model": { "type": "mixture", "n_expert": 3 },
  "optim": { "batch_size": 32 },
  "train": { "epochs": 1, "seed": 1 }
}
EOF
w() { printf '%s\n' "$2" >"$1"; } # w FILE TEXT
w cfg_unknown_key.json '{ "model": { "n_expertz": 3 } }'
w cfg_unknown_section.json '{ "modle": { "n_expert": 3 } }'
w cfg_key_top_level.json '{ "seed": 3 }'
w cfg_key_wrong_section.json '{ "model": { "lr": 0.1 } }'
w cfg_key_case.json '{ "Model": { "n_expert": 3 } }'
w cfg_empty_key.json '{ "": 1 }'
w cfg_type_string_for_number.json '{ "optim": { "lr": "fast" } }'
w cfg_type_bool_for_int.json '{ "model": { "n_expert": true } }'
w cfg_type_string_for_int.json '{ "model": { "n_expert": "3" } }'
w cfg_type_number_for_enum.json '{ "loss": { "type": 3 } }'
w cfg_type_string_for_list.json '{ "data": { "table": { "features": "F1" } } }'
w cfg_type_list_element.json '{ "data": { "table": { "features": ["F1", 3] } } }'
w cfg_type_range_element.json '{ "data": { "table": { "train_range": [1, "a"] } } }'
w cfg_null_value.json '{ "model": { "n_expert": null } }'
w cfg_section_not_object.json '{ "model": 3 }'
w cfg_duplicate_key.json '{ "model": { "n_expert": 3, "n_expert": 4 } }'
w cfg_duplicate_section.json '{ "model": { "n_expert": 3 }, "model": { "n_expert": 4 } }'
w cfg_duplicate_escaped.json '{ "model": { "n_e\u0078pert": 3, "n_expert": 4 } }'
w cfg_non_integer.json '{ "model": { "n_expert": 2.5 } }'
w cfg_huge_number.json '{ "optim": { "lr": 1e400 } }'
w cfg_huge_negative.json '{ "optim": { "lr": -1e400 } }'
w cfg_huge_integer.json '{ "model": { "n_expert": 1e400 } }'
w cfg_negative_size.json '{ "data": { "synthetic": { "n_train": -5 } } }'
w cfg_zero_experts.json '{ "model": { "n_expert": 0 } }'
w cfg_too_many_experts.json '{ "model": { "n_expert": 2000 } }'
w cfg_lr_out_of_range.json '{ "optim": { "lr": 1001 } }'
w cfg_seed_out_of_range.json '{ "train": { "seed": 4294967296 } }'
w cfg_criterion_out_of_range.json '{ "train": { "criterion_value": 1e31 } }'
w cfg_bad_enum.json '{ "loss": { "type": "bogus" } }'
w cfg_enum_case.json '{ "loss": { "type": "NLL" } }'
w cfg_trailing_garbage.json '{ "model": { "n_expert": 3 } } xyz'
w cfg_trailing_comma.json '{ "model": { "n_expert": 3, } }'
w cfg_comment.json '{ // a comment
  "model": { "n_expert": 3 } }'
printf '{\n  "model": {\n    "n_expert": 3,\n  oops\n}\n' >cfg_not_json.json
: >cfg_empty.json
printf '  \n\t\n' >cfg_whitespace.json
w cfg_array.json '[ { "model": { "n_expert": 3 } } ]'
w cfg_string.json '"model"'
w cfg_null.json 'null'
printf '{ "model": { "n_expert": 3\000 } }\n' >cfg_nul_byte.json
{
    printf '{ "model": '
    for _ in $(seq 1200); do printf '{ "a": '; done
    printf '1'
    for _ in $(seq 1201); do printf '}'; done
    printf '\n'
} >cfg_deep.json
w cfg_mlp_nll.json '{ "model": { "type": "mlp" }, "loss": { "type": "nll" } }'
w cfg_nll_cat_regression.json '{ "loss": { "type": "nll-cat" } }'
w cfg_used_above_experts.json '{ "model": { "type": "mlp-moe", "n_expert": 3, "n_expert_used": 5 } }'
w cfg_switch_k2.json '{ "model": { "type": "mlp-moe", "n_expert": 4, "n_expert_used": 2 }, "moe": { "router": "switch" } }'
w cfg_table_no_path.json '{ "data": { "source": "table", "table": { "features": ["F1"], "targets": ["Vowel"] } } }'

# A Peterson-Barney-like TSV: speakers 1-6, two vowels each.
{
    printf 'Type\tSex\tSpeaker\tVowel\tIPA\tF0\tF1\tF2\tF3\n'
    for s in 1 2 3 4 5 6; do
        o=$((s * 7))
        printf 'M\tm\t%d\tiy\ti\t%d\t%d\t%d\t%d\n' $s $((120 + s)) $((270 + o)) $((2290 - o)) $((3010 + o))
        printf 'W\tf\t%d\taa\tA\t%d\t%d\t%d\t%d\n' $s $((218 + s)) $((730 + o)) $((1090 - o)) $((2440 + o))
    done
} >vowels.tsv
# table_config OUT TABLE [EXTRA_TABLE_JSON]: classification of Vowel from F1, F2.
table_config() {
    cat >"$1" <<EOF
{ "data": { "source": "table", "standardize": true,
    "table": { "path": "$FIX/$2", "task": "classification", "features": ["F1", "F2"], "targets": ["Vowel"],
               "split_column": "Speaker", "train_range": [1, 4], "test_range": [5, 6]${3:+, $3} } },
  "model": { "n_expert": 2 }, "optim": { "batch_size": 8 }, "train": { "epochs": 1 } }
EOF
}
tsv_edit() { awk -v n="$2" -v c="$3" -v v="$4" 'BEGIN { FS = OFS = "\t" } NR == n { $c = v } { print }' vowels.tsv >"$1"; }
table_config table_ok.json vowels.tsv
awk 'NR == 4 { print $0 "\textra"; next } { print }' vowels.tsv >tab_ragged_long.tsv
awk 'NR == 5 { sub(/\t[^\t]*$/, "") } { print }' vowels.tsv >tab_ragged_short.tsv
tsv_edit tab_text_cell.tsv 5 7 abc
tsv_edit tab_inf_cell.tsv 3 7 inf
tsv_edit tab_hex_cell.tsv 4 7 0x10
tsv_edit tab_empty_cell.tsv 6 8 ''
tsv_edit tab_dup_column.tsv 1 9 F2
: >tab_empty.tsv
head -n 1 vowels.tsv >tab_header_only.tsv
{ head -n 3 vowels.tsv; printf 'M\tm\t2\tiy\ti\t121\t2\0003\t2290\t3010\n'; tail -n +4 vowels.tsv; } >tab_nul.tsv
tr '\t' ',' <vowels.tsv | awk 'BEGIN { FS = OFS = "," } NR == 3 { $2 = "f\"x" } { print }' >tab_bad_quote.csv
tr '\t' ',' <vowels.tsv | awk 'BEGIN { FS = OFS = "," } NR == 3 { $2 = "\"f" } { print }' >tab_unterminated.csv
for t in tab_ragged_long.tsv tab_ragged_short.tsv tab_text_cell.tsv tab_inf_cell.tsv tab_hex_cell.tsv tab_empty_cell.tsv \
    tab_dup_column.tsv tab_empty.tsv tab_header_only.tsv tab_nul.tsv tab_bad_quote.csv tab_unterminated.csv \
    no_such_table.tsv; do
    table_config "${t%.*}.json" "$t"
done
table_config tab_no_column.json vowels.tsv '"where": []' && sed -i 's/"F2"\]/"F9"]/' tab_no_column.json
table_config tab_no_class_rows.json vowels.tsv '"classes": ["uw", "oo"]'
table_config cfg_table_bad_filter.json vowels.tsv '"where": ["F1~3"]'
table_config cfg_table_filter_not_number.json vowels.tsv '"where": ["F1<=abc"]'
table_config tab_filter_column.json vowels.tsv '"where": ["Nope=1"]'
table_config cfg_table_range_reversed.json vowels.tsv && sed -i 's/"train_range": \[1, 4\]/"train_range": [4, 1]/' cfg_table_range_reversed.json
table_config cfg_table_range_overlap.json vowels.tsv && sed -i 's/"train_range": \[1, 4\]/"train_range": [1, 5]/' cfg_table_range_overlap.json
table_config cfg_table_range_three.json vowels.tsv && sed -i 's/"train_range": \[1, 4\]/"train_range": [1, 2, 3]/' cfg_table_range_three.json
table_config cfg_table_feature_twice.json vowels.tsv && sed -i 's/"F1", "F2"/"F1", "F1"/' cfg_table_feature_twice.json
table_config cfg_table_feature_is_target.json vowels.tsv && sed -i 's/"F1", "F2"/"F1", "Vowel"/' cfg_table_feature_is_target.json
table_config tab_text_target.json vowels.tsv '"task": "regression"' && sed -i 's/"task": "classification", //' tab_text_target.json

# IDX: 6 images of 2x2 pixels and 6 labels (valid), then one broken file each.
IMG_HDR='\x00\x00\x08\x03\x00\x00\x00\x06\x00\x00\x00\x02\x00\x00\x00\x02'
PIX='\x00\x10\x20\x30\x40\x50\x60\x70\x80\x90\xa0\xb0\xc0\xd0\xe0\xf0\x01\x02\x03\x04\x05\x06\x07\x08'
{ printf '%b' "$IMG_HDR"; printf '%b' "$PIX"; } >img.idx
printf '\x00\x00\x08\x01\x00\x00\x00\x06\x00\x01\x00\x01\x00\x01' >lab.idx
{ printf '\x00\x01\x08\x03\x00\x00\x00\x06\x00\x00\x00\x02\x00\x00\x00\x02'; printf '%b' "$PIX"; } >idx_magic.idx
{ printf '\x00\x00\x0d\x03\x00\x00\x00\x06\x00\x00\x00\x02\x00\x00\x00\x02'; printf '%b' "$PIX"; } >idx_dtype.idx
printf '\x00\x00\x08\x05\x00\x00\x00\x01' >idx_ndim5.idx
printf '\x00\x00\x08' >idx_short.idx
printf '\x00\x00\x08\x03\x00\x00\x00\x06\x00\x00' >idx_header_cut.idx
{ printf '%b' "$IMG_HDR"; printf '\x00\x10\x20\x30\x40\x50\x60\x70\x80\x90'; } >idx_trunc.idx
{ printf '%b' "$IMG_HDR"; printf '%b' "$PIX"; printf 'XX'; } >idx_trailing.idx
printf '\x00\x00\x08\x03\x00\x00\x00\x06\x00\x00\x00\x00\x00\x00\x00\x02' >idx_zero_dim.idx
printf '\x00\x00\x08\x01\x00\x00\x00\x05\x00\x01\x00\x01\x00' >idx_lab5.idx
printf '\x00\x00\x08\x01\x00\x00\x00\x06\xff\xff\xff\xff\xff\xff' >idx_lab255.idx
printf '\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03garbage, not a deflate stream' >idx_corrupt.idx.gz
gzip -c img.idx | head -c 20 >idx_gz_cut.idx.gz
gzip -c idx_trunc.idx >idx_trunc.idx.gz
gzip -c img.idx >idx_crc.idx.gz
printf '\xff' | dd of=idx_crc.idx.gz bs=1 seek=$(($(wc -c <idx_crc.idx.gz) - 8)) conv=notrunc 2>/dev/null
# gzip streams cut exactly before their 8-byte trailer (CRC-32, length), and inside it: the data are
# whole, so only the missing trailer can refuse them
gzip -c img.idx | head -c -8 >idx_gz_notrailer.idx.gz
gzip -c img.idx | head -c -4 >idx_gz_halftrailer.idx.gz
# test images of 3x2 pixels where training has 2x2
{ printf '\x00\x00\x08\x03\x00\x00\x00\x02\x00\x00\x00\x03\x00\x00\x00\x02'; printf '\x01\x02\x03\x04\x05\x06\x01\x02\x03\x04\x05\x06'; } >idx_img32.idx
printf '\x00\x00\x08\x01\x00\x00\x00\x02\x00\x01' >idx_lab2.idx
# idx_config OUT TRAIN_IMAGES TRAIN_LABELS [TEST_IMAGES TEST_LABELS]
idx_config() {
    printf '{ "data": { "source": "idx", "idx": { "train_images": "%s", "train_labels": "%s", "test_images": "%s", "test_labels": "%s" } }, "model": { "n_expert": 2 }, "optim": { "batch_size": 4 }, "train": { "epochs": 1 } }\n' \
        "$FIX/$2" "$FIX/$3" "$FIX/${4:-img.idx}" "$FIX/${5:-lab.idx}" >"$1"
}
idx_config idx_ok.json img.idx lab.idx
# Not regular files: a FIFO (no writer: opening it for reading would wait forever) and /dev/zero
# (reading it never ends); every reader refuses both at once.
mkfifo fifo
idx_config idx_fifo.json fifo lab.idx
idx_config idx_zero.json img.idx lab.idx && sed -i "s|\"$FIX/img.idx\", \"train_labels\"|\"/dev/zero\", \"train_labels\"|" idx_zero.json
table_config tab_fifo.json fifo
table_config tab_zero.json vowels.tsv && sed -i "s|\"$FIX/vowels.tsv\"|\"/dev/zero\"|" tab_zero.json
for f in idx_magic idx_dtype idx_ndim5 idx_short idx_header_cut idx_trunc idx_trailing idx_zero_dim; do
    idx_config "$f.json" "$f.idx" lab.idx
done
for f in idx_corrupt idx_gz_cut idx_trunc idx_crc idx_gz_notrailer idx_gz_halftrailer; do idx_config "${f}_gz.json" "$f.idx.gz" lab.idx; done
idx_config idx_count.json img.idx idx_lab5.idx
idx_config idx_labels_as_images.json lab.idx lab.idx
idx_config idx_images_as_labels.json img.idx img.idx
idx_config idx_missing.json no_such_images.idx lab.idx
idx_config idx_directory.json . lab.idx
idx_config idx_classes.json img.idx idx_lab255.idx
idx_config idx_test_size.json img.idx lab.idx idx_img32.idx idx_lab2.idx

# Safetensors. le64 N: the 8-byte little-endian length as printf escapes.
le64() {
    local v=$1 s=""
    for _ in 1 2 3 4 5 6 7 8; do
        s+=$(printf '\\%03o' $((v & 255)))
        v=$((v >> 8))
    done
    printf '%s' "$s"
}
# st_file OUT HEADER [DATA_FILE | NBYTES]: length + header (as is) + data.
st_file() {
    printf '%b' "$(le64 ${#2})" >"$1"
    printf '%s' "$2" >>"$1"
    case ${3:-} in
    '') ;;
    *[!0-9]*) cat "$3" >>"$1" ;;
    *) head -c "$3" /dev/zero >>"$1" ;;
    esac
}
# st_file_b OUT HEADER_WITH_ESCAPES NBYTES: the same, header through printf %b
# (for NUL and other raw bytes).
st_file_b() {
    printf '%b' "$2" >"$1.h"
    printf '%b' "$(le64 "$(wc -c <"$1.h")")" >"$1"
    cat "$1.h" >>"$1"
    rm -f "$1.h"
    head -c "$3" /dev/zero >>"$1"
}
st_header() { dd if="$1" bs=1 skip=8 count="$(od -An -t u8 -N8 "$1" | tr -d ' ')" 2>/dev/null; }
st_data() { tail -c +$((9 + $(od -An -t u8 -N8 "$1" | tr -d ' '))) "$1"; }
# st_jq OUT IN JQ_PROGRAM: IN with its header rewritten by jq, data kept.
st_jq() {
    local h
    h=$(st_header "$2" | jq -c "$3") || return 1
    st_data "$2" >"$1.data"
    st_file "$1" "$h" "$1.data"
    rm -f "$1.data"
}
# A hand-written checkpoint for reg.json's model (E=3, D=2, O=1): 72 bytes of data.
META='"__metadata__":{"format":"moe","format_version":"1"}'
GW='"gate.weight":{"dtype":"F32","shape":[3,2],"data_offsets":[0,24]}'
GB='"gate.bias":{"dtype":"F32","shape":[3],"data_offsets":[24,36]}'
EW='"experts.weight":{"dtype":"F32","shape":[3,1,2],"data_offsets":[36,60]}'
EB='"experts.bias":{"dtype":"F32","shape":[3,1],"data_offsets":[60,72]}'
st_file ck_good.st "{$META,$GW,$GB,$EW,$EB}" 72
: >ck_empty.st
printf '\x10\x00\x00\x00\x00' >ck_short.st
printf '\x00\x00\x00\x00\x00\x00\x00\x00' >ck_hlen_zero.st
{ printf '\xe8\x03\x00\x00\x00\x00\x00\x00'; printf '{"__metadata__":{}}'; } >ck_hlen_past_eof.st
{ printf '\xff\xff\xff\xff\xff\xff\xff\xff'; printf '{}'; } >ck_hlen_huge.st
printf 'this is not a safetensors file, just some text\n' >ck_text.st
st_file ck_not_json.st '{not json at all, not at all!!!}' 0
st_file ck_array.st '[{"gate.weight":{}}]' 0
st_file ck_trailing.st "{$META,$GW,$GB,$EW,$EB} xx" 72
st_file_b ck_nul.st "{\"__metadata__\":{\"format\":\"mo\\0000e\"},$GW,$GB,$EW,$EB}" 72
st_file_b ck_control.st "{\"__metadata__\":{\"format\":\"mo\\001e\"},$GW,$GB,$EW,$EB}" 72
st_file_b ck_bad_utf8.st "{\"__metadata__\":{\"format\":\"mo\\377e\"},$GW,$GB,$EW,$EB}" 72
st_file ck_meta_array.st "{\"__metadata__\":[\"moe\"],$GW,$GB,$EW,$EB}" 72
st_file ck_meta_number.st "{\"__metadata__\":{\"format\":\"moe\",\"format_version\":1},$GW,$GB,$EW,$EB}" 72
st_file ck_meta_dup_key.st "{\"__metadata__\":{\"format\":\"moe\",\"format\":\"moe\"},$GW,$GB,$EW,$EB}" 72
st_file ck_meta_twice.st "{$META,$GW,$META,$GB,$EW,$EB}" 72
st_file ck_dup_tensor.st "{$META,$GW,$GB,$EW,$EB,$GB}" 72
st_file ck_tensor_not_object.st "{$META,$GW,\"gate.bias\":3,$EW,$EB}" 72
st_file ck_dtype_f16.st "{$META,$GW,${GB/F32/F16},$EW,$EB}" 72
st_file ck_dtype_number.st "{$META,$GW,${GB/\"F32\"/32},$EW,$EB}" 72
st_file ck_dtype_f64.st "{$META,$GW,\"gate.bias\":{\"dtype\":\"F64\",\"shape\":[3],\"data_offsets\":[24,48]},${EW/36,60/48,72},${EB/60,72/72,84}}" 84
st_file ck_shape_string.st "{$META,$GW,${GB/\[3\]/\"3\"},$EW,$EB}" 72
st_file ck_shape_negative.st "{$META,$GW,${GB/\[3\]/[-3]},$EW,$EB}" 72
st_file ck_shape_many_dims.st "{$META,$GW,${GB/\[3\]/[3,1,1,1,1,1,1,1,1,1]},$EW,$EB}" 72
st_file ck_shape_fraction.st "{$META,${GW/\[3,2\]/[1.5,4]},$GB,$EW,$EB}" 72
st_file ck_no_offsets.st "{$META,$GW,\"gate.bias\":{\"dtype\":\"F32\",\"shape\":[3]},$EW,$EB}" 72
st_file ck_offsets_reversed.st "{$META,$GW,${GB/24,36/36,24},$EW,$EB}" 72
st_file ck_offsets_past_end.st "{$META,$GW,$GB,$EW,${EB/60,72/72,84}}" 72
st_file ck_offsets_overlap.st "{$META,$GW,${GB/24,36/20,32},$EW,$EB}" 72
st_file ck_offsets_gap.st "{$META,$GW,$GB,$EW,${EB/60,72/64,76}}" 76
st_file ck_size_mismatch.st "{$META,$GW,${GB/24,36/24,40},${EW/36,60/40,64},${EB/60,72/64,76}}" 76
st_file ck_data_cut.st "{$META,$GW,$GB,$EW,$EB}" 60
st_file ck_missing_tensor.st "{$META,$GW,$GB,$EW}" 60
st_file ck_wrong_shape.st "{$META,${GW/\[3,2\]/[2,3]},$GB,$EW,$EB}" 72

# --out / --trace targets that cannot be directories.
: >a_regular_file

# ------------------------------------------------- fixtures that need moe
# fixture NAME CMD...: a command that must succeed to build a fixture.
fixture() {
    local name=$1
    shift
    local rc
    { "${TIMEOUT[@]}" "$@" >"$FIX/run/fixture.out" 2>"$FIX/run/fixture.err"; rc=$?; } 2>/dev/null
    if [ "$rc" -eq 0 ]; then
        ok "fixture: $name"
    else
        not_ok "fixture: $name" "command: moe ${*:2}"$'\n'"exit: $rc"$'\n'"stderr: $(head -c 800 "$FIX/run/fixture.err")"
    fi
}
fixture "reg.json trains" "$MOE" train --config reg.json --out run/reg --quiet --threads 1
fixture "the hand-written checkpoint loads with --init" "$MOE" train --config reg.json --init ck_good.st --out run/init --quiet --threads 1
fixture "table_ok.json trains" "$MOE" train --config table_ok.json --out run/table --quiet --threads 1
fixture "idx_ok.json trains" "$MOE" train --config idx_ok.json --out run/idx --quiet --threads 1
cat >moe.json <<'EOF'
{ "data": { "standardize": true, "synthetic": { "kind": "classes", "n_in": 4, "n_regions": 4, "n_train": 64, "n_test": 32 } },
  "model": { "type": "mlp-moe", "n_embd": 4, "n_layer": 1, "n_ff": 4, "n_expert": 4, "n_expert_used": 2 },
  "optim": { "batch_size": 32 }, "train": { "epochs": 1 } }
EOF
HASH_SETS=(--set moe.router=hash --set model.n_expert_used=1 --set moe.aux_loss=none --set moe.hash_vocab=16)
fixture "mlp-moe (softmax top-2) trains" "$MOE" train --config moe.json --out run/moe --quiet --threads 1
fixture "reg.json with a cosine schedule trains 2 epochs" "$MOE" train --config reg.json --set optim.schedule=cosine --set train.epochs=2 --out run/cos --quiet --threads 1
fixture "mlp-moe (hash) trains" "$MOE" train --config moe.json "${HASH_SETS[@]}" --out run/hash --quiet --threads 1
cp run/moe/model.safetensors moe.st 2>/dev/null
cp run/hash/model.safetensors hash.st 2>/dev/null
cp run/reg/model.safetensors dense.st 2>/dev/null
# the same mlp-moe with a dense FFN (8 neurons) instead of experts: a MoEBERT teacher
fixture "mlp-moe (dense block) trains" "$MOE" train --config moe.json --set model.moe_every=9 --out run/dmoe --quiet --threads 1
cp run/dmoe/model.safetensors dmoe.st 2>/dev/null
fixture "route-stats runs on the mlp-moe checkpoint" "$MOE" route-stats --checkpoint moe.st --out run/rs --quiet --threads 1
fixture "route-stats runs on the hash checkpoint" "$MOE" route-stats --checkpoint hash.st --out run/rsh --quiet --threads 1
# Variants of the trained checkpoints (missing fixtures make their rows fail).
if [ -s moe.st ]; then
    st_jq rs_no_config.st moe.st 'del(.__metadata__.config)'
    st_jq rs_config_not_json.st moe.st '.__metadata__.config = "{\"model\": "'
    # what switch wrote at top-2 before it became top-1 only; deepseek reads it
    st_jq rs_switch_k2.st moe.st '.__metadata__.config |= (fromjson | .moe.router = "switch" | tojson)'
    fixture "route-stats reads a switch top-2 checkpoint with --set moe.router=deepseek" "$MOE" route-stats \
        --checkpoint rs_switch_k2.st --set moe.router=deepseek --out run/rs_switch_k2 --quiet --threads 1
    st_jq rs_no_mean.st moe.st '.["data.average"] = .["data.mean"] | del(.["data.mean"])'
    st_jq rs_mean_dtype.st moe.st '.["data.mean"].dtype = "I32"'
    st_jq rs_w1_shape.st moe.st '.["layers.0.moe.experts.w1"].shape = [4, 2, 8]'
fi
# Non-finite weights: NaN in the mlp-moe checkpoint's expert weights (element 3 of w1), +infinity in
# the hand-written one's gate.weight (element 0).
# st_poke OUT IN TENSOR ELEMENT BYTES: IN with one float of TENSOR overwritten (BYTES as printf escapes).
st_poke() {
    local off hl
    off=$(st_header "$2" | jq ".[\"$3\"].data_offsets[0]")
    hl=$(od -An -t u8 -N8 "$2" | tr -d ' ')
    cp "$2" "$1"
    printf '%b' "$5" | dd of="$1" bs=1 seek=$((8 + hl + off + 4 * $4)) conv=notrunc 2>/dev/null
}
# st_nocrc OUT IN: IN without its checksum table, as another tool would write it
st_nocrc() { st_jq "$1" "$2" 'del(.__metadata__.tensor_crc32)'; }
# a NaN poked into a written checkpoint: its checksum no longer matches (moe_crc.st);
# without the table, the finiteness check must catch it (moe_nan.st)
[ -s moe.st ] && st_poke moe_crc.st moe.st layers.0.moe.experts.w1 3 '\x00\x00\xc0\x7f' && st_nocrc moe_nan.st moe_crc.st
[ -s moe.st ] && st_jq moe_crc_table.st moe.st '.__metadata__.tensor_crc32 |= (fromjson | .["layers.0.moe.experts.w1"] = "xyz" | tojson)'
[ -s moe.st ] && st_jq moe_crc_missing.st moe.st '.__metadata__.tensor_crc32 |= (fromjson | del(.["layers.0.moe.experts.w2"]) | tojson)'
# moe compress: the mlp-moe quantized (symmetric and asymmetric, per channel),
# then with a scale or zero point poked out of range; without the checksum
# table (as another tool would write it) the reader's own checks must catch them
fixture "compress quantizes the mlp-moe checkpoint" "$MOE" compress --checkpoint moe.st --out run/q --quantize int8 --quiet --threads 1
fixture "compress quantizes it asymmetrically" "$MOE" compress --checkpoint moe.st --out run/qa --quantize int8 --scheme asymmetric --quiet --threads 1
cp run/q/model.safetensors q.st 2>/dev/null
cp run/qa/model.safetensors qa.st 2>/dev/null
if [ -s q.st ] && [ -s qa.st ]; then
    W=layers.0.moe.experts.w1
    st_nocrc q_nocrc.st q.st
    st_poke q_scale_zero.st q_nocrc.st "$W.q_scale" 1 '\x00\x00\x00\x00'
    st_poke q_scale_nan.st q_nocrc.st "$W.q_scale" 2 '\x00\x00\xc0\x7f'
    st_poke q_scale_neg.st q_nocrc.st "$W.q_scale" 0 '\x00\x00\x80\xbf'
    st_poke q_scale_inf.st q_nocrc.st "$W.q_scale" 3 '\x00\x00\x80\x7f'
    st_nocrc qa_nocrc.st qa.st
    st_poke qa_zero_range.st qa_nocrc.st "$W.q_zero" 1 '\x2c\x01\x00\x00'
    st_jq q_scale_missing.st q_nocrc.st ".[\"$W.q_scales\"] = .[\"$W.q_scale\"] | del(.[\"$W.q_scale\"])"
    st_jq q_scale_shape.st q_nocrc.st ".[\"$W.q_scale\"].shape = [16]"
    st_jq q_scale_dtype.st q_nocrc.st ".[\"$W.q_scale\"].dtype = \"I32\""
fi
# pruned FFN units (NAME.pruned): a flag other than 0 or 1, a mask of another dtype
fixture "compress prunes the mlp-moe's neurons" "$MOE" compress --checkpoint moe.st --out run/pn --prune-neurons 0.5 --quiet --threads 1
cp run/pn/model.safetensors pn.st 2>/dev/null
if [ -s pn.st ]; then
    st_nocrc pn_nocrc.st pn.st
    st_poke pn_flag2.st pn_nocrc.st layers.0.moe.experts.pruned 0 '\x02'
    st_jq pn_mask_dtype.st pn_nocrc.st '.["layers.0.moe.experts.pruned"].dtype = "I8"'
fi
# a run directory whose checkpoint is a FIFO
mkdir -p resume_fifo && cp run/moe/config.json run/moe/metrics.csv resume_fifo/ 2>/dev/null
[ -p resume_fifo/checkpoint.safetensors ] || mkfifo resume_fifo/checkpoint.safetensors
# a text corpus directory whose only entries are a FIFO and a link to /dev/zero
mkdir -p text_specials
[ -p text_specials/a.txt ] || mkfifo text_specials/a.txt
ln -sf /dev/zero text_specials/b.txt
st_poke ck_inf.st ck_good.st gate.weight 0 '\x00\x00\x80\x7f'
# hash tables whose entries name experts that do not exist (E = 4)
if [ -s hash.st ]; then
    off=$(st_header hash.st | jq '.["layers.0.moe.router.hash_table"].data_offsets[0]')
    hl=$(od -An -t u8 -N8 hash.st | tr -d ' ')
    cp hash.st rs_hash_big.st
    cp hash.st rs_hash_negative.st
    for _ in $(seq 16); do printf '\x63\x00\x00\x00'; done | dd of=rs_hash_big.st bs=1 seek=$((8 + hl + off)) conv=notrunc 2>/dev/null
    for _ in $(seq 16); do printf '\xff\xff\xff\xff'; done | dd of=rs_hash_negative.st bs=1 seek=$((8 + hl + off)) conv=notrunc 2>/dev/null
fi

# ------------------------------------------------- text data and the Transformer LM
# text_dir: two small languages (en, ru), enough for windows of n_ctx 8; lm.json
# is a tiny valid byte-level LM over it (one sparse block, switch router).
mkdir -p text_dir text_empty_dir text_dir_nul text_dir_empty_file
for i in $(seq 12); do printf 'The cat %d sat on the mat, and the dog ran off. ' "$i"; done >text_dir/en.txt
for i in $(seq 8); do printf 'Кошка %d сидела на окне, а собака спала. ' "$i"; done >text_dir/ru.txt
cp text_dir/en.txt text_dir_nul/en.txt
printf 'hello\000world, some text after a NUL byte\n' >text_dir_nul/xx.txt
cp text_dir/en.txt text_dir_empty_file/en.txt
: >text_dir_empty_file/ru.txt
: >text_empty.txt
printf 'hello\000world, some text after a NUL byte\n' >text_nul.txt
printf 'too short\n' >text_short.txt
printf '%s\n' "{ \"data\": { \"source\": \"text\", \"text\": { \"path\": \"$FIX/text_dir\", \"valid_fraction\": 0.2 } },
  \"model\": { \"type\": \"transformer\", \"n_ctx\": 8, \"n_embd\": 8, \"n_head\": 2, \"n_layer\": 1, \"n_ff\": 8,
             \"n_expert\": 2, \"n_expert_used\": 1 },
  \"moe\": { \"router\": \"switch\" }, \"optim\": { \"batch_size\": 8 }, \"train\": { \"epochs\": 1 } }" >lm.json
jq 'del(.data.text.path)' lm.json >lm_no_path.json
# vocabulary files: a bad header, a duplicate token, a wrong count, a valid words vocabulary
printf 'moe-vocab 2 words 3\n<unk>\na\nb\n' >vocab_bad_header.txt
printf 'moe-vocab 1 words 3\n<unk>\na\na\n' >vocab_dup.txt
printf 'moe-vocab 1 words 3\nthe\na\nb\n' >vocab_no_unk.txt
printf 'moe-vocab 1 words 4\n<unk>\na\nb\n' >vocab_count.txt
printf 'moe-vocab 1 words 3\n<unk>\nthe\ncat\n' >vocab_words.txt
fixture "lm.json (byte-level transformer) trains" "$MOE" train --config lm.json --out run/lm --quiet --threads 1
fixture "lm.json with moe.lang_router trains" "$MOE" train --config lm.json --set moe.lang_router=true --out run/lmlang --quiet --threads 1
cp run/lm/model.safetensors lm.st 2>/dev/null
cp run/lmlang/model.safetensors lm_lang.st 2>/dev/null
if [ -s lm.st ]; then
    st_jq lm_vocab_dtype.st lm.st '.["vocab.text"].dtype = "I8"'
    # vocab.text whose header reads "moe-vocab 9 ..."
    off=$(st_header lm.st | jq '.["vocab.text"].data_offsets[0]')
    hl=$(od -An -t u8 -N8 lm.st | tr -d ' ')
    cp lm.st lm_vocab_crc.st
    printf 'moe-vocab 9' | dd of=lm_vocab_crc.st bs=1 seek=$((8 + hl + off)) conv=notrunc 2>/dev/null
    st_nocrc lm_vocab_corrupt.st lm_vocab_crc.st
fi

# Run directories of an interrupted run (summary.json removed, so --resume does
# not take them for finished) with one file replaced by a FIFO or a directory:
# the tables and the checkpoint are read back (refused as not regular files);
# a directory where the run will write a file is refused before the first step.
# run_dir NAME FROM FILE fifo|dir
run_dir() {
    [ -d "run/$2" ] || return 0
    rm -rf "$1" && cp -r "run/$2" "$1" && rm -f "$1/summary.json" "$1/$3" || return 0
    if [ "$4" = fifo ]; then mkfifo "$1/$3"; else mkdir -p "$1/$3/sub"; fi
}
run_dir resume_metrics_fifo moe metrics.csv fifo
run_dir resume_metrics_dir moe metrics.csv dir
run_dir resume_experts_fifo moe experts.csv fifo
run_dir resume_experts_dir moe experts.csv dir
run_dir resume_languages_fifo lm languages.csv fifo
run_dir resume_languages_dir lm languages.csv dir
run_dir resume_ck_dir moe checkpoint.safetensors dir
run_dir resume_model_dir moe model.safetensors dir
run_dir resume_summary_dir moe summary.json dir
run_dir resume_vocab_dir lm vocab.txt dir
mkdir -p out_model_dir/model.safetensors/sub
# Run directories a new run refuses: one holding another run, one holding an
# interrupted run (a checkpoint, no model file), one whose lock file is a FIFO.
mkdir -p held_run held_ck lock_fifo
echo '{}' >held_run/summary.json
: >held_ck/checkpoint.safetensors
[ -e lock_fifo/moe.lock ] || mkfifo lock_fifo/moe.lock
# Interrupted run directories whose checkpoint carries a malformed run identity
# (run.tags, run.id, run.sets: README, Run identity), refused by --resume.
# ck_meta_dir NAME JQ_PROGRAM (applied to the checkpoint's header)
ck_meta_dir() {
    [ -s run/moe/checkpoint.safetensors ] || return 0
    rm -rf "$1" && cp -r run/moe "$1" && rm -f "$1/summary.json" || return 0
    st_jq "$1/checkpoint.safetensors" run/moe/checkpoint.safetensors "$2"
}
ck_meta_dir resume_tags_not_json '.__metadata__["run.tags"] = "{\"a\":"'
ck_meta_dir resume_tags_bad_key '.__metadata__["run.tags"] = "{\"a-b\":\"1\"}"'
ck_meta_dir resume_tags_newline '.__metadata__["run.tags"] = "{\"a\":\"x\\ny\"}"'
ck_meta_dir resume_tags_not_string '.__metadata__["run.tags"] = "{\"a\":1}"'
ck_meta_dir resume_run_id '.__metadata__["run.id"] = "xyz"'
ck_meta_dir resume_sets_not_array '.__metadata__["run.sets"] = "{}"'

# ------------------------------------------------------------------ the rows
CMDS=(train compare-loss route-stats lora distill bench eval generate compress)
row=0
while IFS= read -r line || [ -n "$line" ]; do
    case $line in '#'* | '') continue ;; esac
    row=$((row + 1))
    [ "$row" -eq 1 ] && continue # header
    IFS=$'\t' read -r id category code fragment command <<<"$line"
    fragment=${fragment//@FIX@/$FIX}
    command=${command//@FIX@/$FIX}
    command=${command//@OUT@/$FIX/out/$id}
    args=()
    eval "args=($command)"
    p="$FIX/run/$id"
    # (the braces keep bash's "Aborted" notice for a crashing command off the TAP stream)
    { "${TIMEOUT[@]}" "$MOE" "${args[@]}" >"$p.out" 2>"$p.err"; rc=$?; } 2>/dev/null
    why=()
    [ "$rc" -eq "$code" ] || why+=("expected exit $code, got $rc")
    [ ! -s "$p.out" ] || why+=("stdout is not empty")
    lines=$(awk 'END { print NR }' "$p.err")
    [ "$lines" -eq 1 ] || why+=("expected exactly 1 line on stderr, got $lines")
    prefix="moe: "
    for c in "${CMDS[@]}"; do [ "${args[0]:-}" = "$c" ] && prefix="moe $c: "; done
    [ "$(head -c ${#prefix} "$p.err")" = "$prefix" ] || why+=("stderr does not start with '$prefix'")
    grep -Fq -- "$fragment" "$p.err" || why+=("stderr lacks '$fragment'")
    # compress checks everything before it claims its directory: a refusal writes nothing
    [ "${args[0]:-}" != compress ] || [ ! -e "$FIX/out/$id" ] || why+=("compress made its --out directory")
    if [ ${#why[@]} -eq 0 ]; then
        ok "$id"
        [ -n "${VERBOSE:-}" ] && sed 's/^/#   /' "$p.err"
    else
        not_ok "$id" "$(printf '%s; ' "${why[@]}")
category: $category
command: moe $command
exit: $rc
stdout: $(head -c 400 "$p.out")
stderr: $(head -c 1200 "$p.err")"
    fi
done <"$TABLE"

echo "1..$N"
if [ "$FAILED" -gt 0 ]; then
    echo "# $FAILED of $N checks failed"
    exit 1
fi
echo "# all $N checks passed"
exit 0
