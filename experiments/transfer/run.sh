#!/usr/bin/env bash
# Transfer: pretrain on one domain, adapt to another, and count the parameters
# each way of adapting tunes against the quality it reaches.
#
# Domains (each seed pretrains its own base, then adapts it once per system):
#   fmnist    the MLP-MoE of experiments/common/fmnist-moe.json (2 blocks, each
#             8 experts of width 64, top-2), pretrained 8 epochs on Fashion-MNIST
#             classes 0-4 (data.idx.classes; 30,000 rows), adapted on the first
#             2,000 training rows of classes 5-9 for 5 epochs (80 steps of 128),
#             tested on the 5,000 test rows of 5-9. The 10-way head is shared:
#             labels keep their values. data.standardize is off everywhere so
#             that a frozen input layer sees the inputs it was trained on.
#   udhr-ell  the byte-level Transformer LM of experiments/common/lm.json (4
#             blocks, blocks 1 and 3 Switch top-1 over 8 experts of width 128),
#             pretrained on 11 UDHR languages (4 epochs of 4,000 windows of 64
#             bytes), adapted to Greek, held out of pretraining (its own script
#             and its own branch of Indo-European; its lead bytes 0xCE/0xCF never
#             occur in the other 11 files), for 2 epochs of 1,000 windows (64
#             steps of 32). Quality: bits per byte on the last 15% of ell.txt.
#   udhr-deu  the same with German held out instead: a control whose script
#             (Latin) and nearly all bytes the pretraining saw (eng, fra, spa).
# Systems:
#   zero-shot      the base evaluated on the new domain (1 epoch at lr 0)
#   scratch        the same model trained from its initialisation on the new
#                  domain with the adaptation budget
#   full           every parameter fine-tuned (moe train --init)
#   lora-rR        moe lora, R in 1 2 4 8, alpha 8, one adapter per expert, on the
#                  expert matrices (fmnist: the only FFNs) and, for the LMs, the
#                  attention (wqkv, wo) and dense FFN matrices; the routers train
#                  in full (the tool's default), everything else is frozen
#   moe-only       --trainable 'layers.*.moe.*' (routers and experts)
#   non-moe        --freeze 'layers.*.moe.*' (everything else)
#   experts-0-1    --trainable 'layers.*.moe.experts.*@0-1' (experts 0 and 1 of
#                  every expert tensor; skipped when the binary lacks "@A-B")
#   head           fmnist: --trainable 'head.*'; LMs ("emb+head"): the byte
#                  embeddings and output head, --trainable 'tok_emb.*,head.*'
#   lora-r4+head   lora-r4 with the head (LMs: embeddings and head) in full
# Every run uses the same optimiser as its base (AdamW, lr 0.002), --threads
# $THREADS (default 1), seeds $SEEDS (default 1-5: on 2026-12-05 each LM base took
# 18-46 s and a seed about 2.5 minutes; the first binary's LM bases took 60-90 s). Finished runs in WORK are kept and not
# run again (lib.sh done_run; the count is printed first): a stopped script
# picks up where it stopped, running the run it stopped in again from scratch;
# delete WORK to start over. experiments/transfer/lr.sh reads the bases in WORK.
#
#   bash experiments/data/udhr.sh                  # once: the texts
#   [SEEDS="1 2 3 4 5"] [THREADS=1] [OUT=results/transfer] [WORK=runs/transfer] \
#     bash experiments/transfer/run.sh [MOE_BINARY]
#
# Writes OUT/runs.csv (one row per domain, system and seed;
# system = DOMAIN:SYSTEM; test_accuracy is next-byte accuracy for the LMs),
# table.csv (mean, sample sd and 95% t-interval over seeds), pretrain.csv (each base on its own
# domain's test split), command.txt, and transfer.png when gnuplot is
# installed; the run directories go under WORK.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
[ $# -ge 1 ] && export MOE=$1
# shellcheck source=../common/lib.sh
. "$root/experiments/common/lib.sh"
check_moe
moe=$(moe_bin)
texts=$root/experiments/data/cache/udhr/text
[ -d "$texts" ] || { echo "$0: no texts in '$texts' (run: bash experiments/data/udhr.sh)" >&2; exit 2; }
experiment_env transfer "1 2 3 4 5" # sets seeds, threads, out, work
mkdir -p "$out" "$work"

few=1
"$moe" help train | grep -q 'GLOB@A-B' || { few=0; echo "transfer: '$moe' has no GLOB@A-B: skipping experts-0-1" >&2; }
# the systems adapt() runs, in its order
adapted=(zero-shot scratch full lora-r1 lora-r2 lora-r4 lora-r8 moe-only non-moe)
[ "$few" = 0 ] || adapted+=(experts-0-1)
adapted+=(head lora-r4+head)

# what is already there, and the time: per seed a Fashion-MNIST base of about 5 s and its adaptations
# of under a second each, and per held-out language an LM base of 18-46 s and 12 adaptations
# of 2-7 s each (about 2.5 minutes per seed in all, at 1 thread on the 2026-12-05 build machine)
n=0 n_done=0 left=0
for seed in "${seeds[@]}"; do
  for dom in fmnist udhr-ell udhr-deu; do
    for sys in pretrain "${adapted[@]}"; do
      n=$((n + 1))
      if done_run "$work/$dom/s$seed/$sys"; then n_done=$((n_done + 1))
      elif [ "$dom" = fmnist ]; then left=$((left + 1))
      elif [ "$sys" = pretrain ]; then left=$((left + 35))
      else left=$((left + 4)); fi
    done
  done
done
skip_note "$n_done" "$n"
expected_time "$(about_minutes $(( 150 * ${#seeds[@]} ))) for all $n runs at 1 thread, 2.5 per seed (a Fashion-MNIST base of about 5 s" \
  "and its adaptations of under a second each; per held-out language an LM base of 18-46 s and 12 adaptations" \
  "of 2-7 s each), $(about_minutes "$left") for the $(( n - n_done )) left"
{ echo "$(env_line) bash experiments/transfer/run.sh  # $(date -u +%Y-%m-%d), $("$moe" --version | head -1)"; provenance "$moe"; } > "$out/command.txt"

echo "domain,seed,parameters,test_accuracy,test_bits_per_byte,wall_seconds" > "$out/pretrain.csv"
# pretrained DOMAIN SEED DIR: one line of pretrain.csv.
pretrained() {
  jq -r --arg n "$1" --arg s "$2" '[$n, ($s | tonumber), .parameters, (.final.test.accuracy // ""),
      (.final.test.bits_per_byte // ""), .wall_seconds] | @csv' "$3/summary.json" | tr -d '"' >> "$out/pretrain.csv"
  echo "transfer: pretrain $(tail -1 "$out/pretrain.csv")" >&2
}
echo "system,seed,trainable_parameters,parameters,trainable_fraction,test_accuracy,test_bits_per_byte,test_loss,wall_seconds" > "$out/runs.csv"
# row NAME SEED DIR: one line of runs.csv from DIR/summary.json. Zero-shot
# tunes nothing; full and scratch, which have no summary.tuning, tune everything.
row() {
  jq -r --arg n "$1" --arg s "$2" '
      (if $n | endswith(":zero-shot") then 0 else (.tuning.trainable_parameters // .parameters) end) as $t
    | [$n, ($s | tonumber), $t, .parameters,
       (if .tuning.trainable_fraction then .tuning.trainable_fraction else $t / .parameters end),
       (.final.test.accuracy // ""), (.final.test.bits_per_byte // ""), .final.test.loss, .wall_seconds] | @csv' \
    "$3/summary.json" | tr -d '"' >> "$out/runs.csv"
  echo "transfer: $(tail -1 "$out/runs.csv")" >&2
}

# fit DOMAIN SEED DIR SYSTEM CMD...: run CMD --out DIR/SYSTEM unless that run
# has finished (lib.sh run_once), then add its row.
fit() {
  local dom=$1 seed=$2 dir=$3/$4 sys=$4
  shift 4
  run_once "$dir" "$@" --out "$dir" >/dev/null
  row "$dom:$sys" "$seed" "$dir"
}

# adapt DOMAIN SEED BASE TARGETS HEAD ZERO ARGS...: every system on the new
# domain. ARGS (config, data and budget) are shared by all; BASE is the
# pretrained model; ZERO is the --set that shrinks the zero-shot run's
# (untrained) epoch.
adapt() {
  local dom=$1 seed=$2 base=$3 targets=$4 head=$5 zero=$6
  shift 6
  local a=("$@" --seed "$seed" --quiet --threads "$threads") d=$work/$dom/s$seed
  local train=("$moe" train "${a[@]}") lora=("$moe" lora "${a[@]}" --base "$base" --targets "$targets")
  fit "$dom" "$seed" "$d" zero-shot "${train[@]}" --init "$base" --set optim.lr=0 --set train.epochs=1 --set "$zero"
  fit "$dom" "$seed" "$d" scratch "${train[@]}"
  fit "$dom" "$seed" "$d" full "${train[@]}" --init "$base"
  for r in 1 2 4 8; do
    fit "$dom" "$seed" "$d" "lora-r$r" "${lora[@]}" --rank "$r"
  done
  fit "$dom" "$seed" "$d" moe-only "${train[@]}" --init "$base" --trainable 'layers.*.moe.*'
  fit "$dom" "$seed" "$d" non-moe "${train[@]}" --init "$base" --freeze 'layers.*.moe.*'
  [ "$few" = 0 ] || fit "$dom" "$seed" "$d" experts-0-1 "${train[@]}" --init "$base" --trainable 'layers.*.moe.experts.*@0-1'
  fit "$dom" "$seed" "$d" head "${train[@]}" --init "$base" --trainable "$head"
  fit "$dom" "$seed" "$d" lora-r4+head "${lora[@]}" --rank 4 --trainable "$head"
}

# ---- Fashion-MNIST: classes 0-4, then 5-9
fcfg=(--config "$root/experiments/common/fmnist-moe.json" --set data.standardize=false)
for seed in "${seeds[@]}"; do
  base=$work/fmnist/s$seed/pretrain
  run_once "$base" "$moe" train "${fcfg[@]}" --set 'data.idx.classes=0,1,2,3,4' --seed "$seed" --quiet \
    --threads "$threads" --out "$base" >/dev/null
  pretrained fmnist "$seed" "$base"
  adapt fmnist "$seed" "$base/model.safetensors" 'layers.*.moe.experts.*' 'head.*' data.idx.limit_train=128 \
    "${fcfg[@]}" --set 'data.idx.classes=5,6,7,8,9' --set data.idx.limit_train=2000 --set train.epochs=5
done

# ---- UDHR: 11 languages, then the 12th
lcfg=(--config "$root/experiments/common/lm.json" --set data.text.valid_fraction=0.15
      --set data.text.train_eval_windows=256)
lm_targets='layers.*.attn.wqkv,layers.*.attn.wo,layers.*.moe.experts.*,layers.*.ffn.w*'
for lang in ell deu; do
  dom=udhr-$lang
  pre=$work/data/$dom/pretrain new=$work/data/$dom/adapt
  rm -rf "$pre" "$new"
  mkdir -p "$pre" "$new"
  for f in "$texts"/*.txt; do
    if [ "$(basename "$f")" = "$lang.txt" ]; then ln -s "$f" "$new/"; else ln -s "$f" "$pre/"; fi
  done
  [ -e "$new/$lang.txt" ] || { echo "$0: no '$texts/$lang.txt'" >&2; exit 2; }
  for seed in "${seeds[@]}"; do
    base=$work/$dom/s$seed/pretrain
    run_once "$base" "$moe" train "${lcfg[@]}" --set data.text.path="\"$pre\"" \
      --set data.text.windows_per_epoch=4000 --set train.epochs=4 --seed "$seed" --quiet --threads "$threads" \
      --out "$base" >/dev/null
    pretrained "$dom" "$seed" "$base"
    adapt "$dom" "$seed" "$base/model.safetensors" "$lm_targets" 'tok_emb.*,head.*' data.text.windows_per_epoch=32 \
      "${lcfg[@]}" --set data.text.path="\"$new\"" --set data.text.windows_per_epoch=1000 --set train.epochs=2
  done
done

summarise_runs "$out/runs.csv" > "$out/table.csv"
column -s, -t < "$out/table.csv" >&2
# the figure of the README (experiments/transfer/plot.gp), when gnuplot is installed
if command -v gnuplot >/dev/null; then gnuplot -e "out='$out'" "$root/experiments/transfer/plot.gp"; fi
