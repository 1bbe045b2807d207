#!/usr/bin/env bash
# A byte-level Transformer LM over the Universal Declaration of Human Rights in
# 12 languages and 9 scripts (eng fra deu spa: Latin; rus: Cyrillic; ell: Greek;
# arb: Arabic; hin: Devanagari; cmn: Han; jpn: Han and kana; kor: Hangul; heb:
# Hebrew), MoE against dense at equal active parameters, with and without
# language-aware routing (moe.lang_router: a learned embedding of the window's
# language added to the router input). Model as experiments/common/lm.json
# (4 blocks, blocks 1 and 3 Switch top-1 over 8 experts of width 128; dense FFN
# 128); the last 15% of each language's text is its validation split; 5 epochs
# of 4,000 random windows of 64 bytes; seeds 1-5 by default (training runs of 22-41 s;
# the committed results are seeds 1-5). After training, `moe
# route-stats` routes the validation split and reports, per sparse layer, the
# mutual information between the first-choice expert and the language and
# between the expert and the byte class of the input byte, each beside its
# chance level (labels permuted across the same expert loads).
#
#   bash experiments/data/udhr.sh             # once: the texts
#   [SEEDS="1 2 3 4 5"] [THREADS=1] [OUT=results/crosslingual] [WORK=runs/crosslingual] \
#     bash experiments/crosslingual/run.sh [MOE_BINARY]
#
# Finished runs under WORK (with their route-stats pass, WORK/*/route/) are
# kept and not run again (lib.sh done_run; the count is printed first); a run
# stopped half way is run again from scratch.
#
# Writes OUT/runs.csv (one row per system and seed),
# table.csv (means and sds), languages.csv (validation bits per byte per
# language, system and seed), mi.csv (per layer, system and seed), mi_latin.csv
# (latin_mi.sh: the same MI among the Latin-script languages only), command.txt,
# and crosslingual.png when gnuplot is installed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
[ $# -ge 1 ] && export MOE=$1
# shellcheck source=../common/lib.sh
. "$root/experiments/common/lib.sh"
moe=$(moe_bin)
[ -x "$moe" ] || { echo "$0: no moe binary at '$moe' (build first)" >&2; exit 2; }
texts=$root/experiments/data/cache/udhr/text
[ -d "$texts" ] || { echo "$0: no texts in '$texts' (run: bash experiments/data/udhr.sh)" >&2; exit 2; }
experiment_env crosslingual "1 2 3 4 5" # sets seeds, threads, out, work
mkdir -p "$out" "$work"

systems=(
  "dense|model.moe_every=99"
  "switch|moe.router=\"switch\" moe.jitter=0.01"
  "switch-lang|moe.router=\"switch\" moe.jitter=0.01 moe.lang_router=true"
)
# finished NAME DIR: the run in DIR finished, and so did its route-stats pass (not for dense;
# route-stats writes summary.json last)
finished() { done_run "$2" && { [ "$1" = dense ] || [ -s "$2/route/summary.json" ]; }; }
n_done=0
for seed in "${seeds[@]}"; do for s in "${systems[@]}"; do ! finished "${s%%|*}" "$work/${s%%|*}-s$seed" || n_done=$((n_done + 1)); done; done
plan_runs $(( ${#systems[@]} * ${#seeds[@]} )) "$n_done" 45 \
  "${#systems[@]} systems x ${#seeds[@]} seeds; training runs of 22-41 s at 1 thread (1.28 M tokens at 31k-57k tokens/s on 2026-12-05), and a route-stats pass after each sparse one"
{ echo "$(env_line) bash experiments/crosslingual/run.sh  # $(date -u +%Y-%m-%d), $("$moe" --version | head -1), languages: $(ls "$texts" | sed 's/\.txt$//' | tr '\n' ' ')"; provenance "$moe"; } > "$out/command.txt"
common=(--set data.text.path="\"$texts\"" --set data.text.valid_fraction=0.15 --set data.text.windows_per_epoch=4000
        --set train.epochs=5)

echo "system,seed,active_parameters,parameters,valid_bits_per_byte,valid_loss,train_bits_per_byte,valid_load_cv,mi_language,mi_language_random,mi_byte_class,mi_byte_class_random,tokens_per_second" > "$out/runs.csv"
echo "system,seed,language,valid_tokens,valid_bytes,valid_bits_per_byte" > "$out/languages.csv"
echo "system,seed,layer,mi_language,mi_language_random,mi_byte_class,mi_byte_class_random,load_cv" > "$out/mi.csv"
for seed in "${seeds[@]}"; do
  for s in "${systems[@]}"; do
    name=${s%%|*}
    sets=()
    for kv in ${s#*|}; do sets+=(--set "$kv"); done
    d=$work/$name-s$seed
    if ! done_run "$d"; then
      fresh_dir "$d"
      "$moe" train --config "$root/experiments/common/lm.json" "${common[@]}" --seed "$seed" --out "$d" --quiet --threads "$threads" \
        "${sets[@]}" >/dev/null
    fi
    # validation bits per byte per language: the last evaluation's test rows
    awk -F, -v sys="$name" -v seed="$seed" 'NR > 1 && $3 == "test" { last = $1; row[$1, $4] = $5 "," $6 "," $8; if (!seen[$4]++) lang[++n] = $4 }
        END { for (i = 1; i <= n; i++) print sys "," seed "," lang[i] "," row[last, lang[i]] }' \
        "$d/languages.csv" >> "$out/languages.csv"
    mi=",,,"
    if [ "$name" != dense ]; then
      if ! finished "$name" "$d"; then
        fresh_dir "$d/route"
        "$moe" route-stats --checkpoint "$d/model.safetensors" --out "$d/route" --quiet --threads "$threads" >/dev/null
      fi
      awk -F, -v sys="$name" -v seed="$seed" 'NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i; next }
          { print sys "," seed "," $c["layer"] "," $c["expert_lang_mi"] "," $c["expert_lang_mi_random"] "," \
                  $c["expert_label_mi"] "," $c["expert_label_mi_random"] "," $c["load_cv"] }' \
          "$d/route/layers.csv" >> "$out/mi.csv"
      mi=$(awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i; next }
          { a += $c["expert_lang_mi"]; b += $c["expert_lang_mi_random"]; x += $c["expert_label_mi"]; y += $c["expert_label_mi_random"]; n++ }
          END { printf "%.6g,%.6g,%.6g,%.6g", a / n, b / n, x / n, y / n }' "$d/route/layers.csv")
    fi
    t=$(jq -r '[(.active_parameters // .parameters), .parameters, .final.test.bits_per_byte, .final.test.loss,
                 .final.train.bits_per_byte, .final.test.load_cv, .train_tokens_per_second] | @csv' "$d/summary.json")
    IFS=, read -r ap p vb vl tb lc tps <<< "$t"
    echo "$name,$seed,$ap,$p,$vb,$vl,$tb,$lc,$mi,$tps" >> "$out/runs.csv"
    echo "crosslingual: $name seed=$seed: valid bpb $vb, MI(lang, random, class, random) $mi" >&2
  done
done
summarise_runs "$out/runs.csv" > "$out/table.csv"
column -s, -t < "$out/table.csv" >&2
# MI(expert; language) within one script (results/crosslingual/mi_latin.csv)
OUT=$out WORK=$work bash "$here/latin_mi.sh"
# the figure of the README (experiments/crosslingual/plot.gp), when gnuplot is installed
if command -v gnuplot >/dev/null; then gnuplot -e "out='$out'" "$root/experiments/crosslingual/plot.gp"; fi
