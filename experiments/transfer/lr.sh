#!/usr/bin/env bash
# Learning-rate check for the transfer experiment: run.sh adapts every system
# at the base's lr, 0.002; LoRA and the partial fine-tunes are often run at a
# higher one. This re-runs six systems (scratch and five adaptations) at lr
# 0.006 and 0.02, the adaptations from the same bases (run.sh must have run first: it reads runs/transfer/DOMAIN/sSEED/
# pretrain/model.safetensors) with the same data and budget, and copies the
# lr 0.002 rows from run.sh's run directories. Seeds $SEEDS (default 1-5:
# every adaptation takes under a minute).
#
#   [SEEDS="1 2 3 4 5"] [THREADS=1] [OUT=results/transfer] [WORK=runs/transfer] \
#     bash experiments/transfer/lr.sh [MOE_BINARY]
#
# Writes results/transfer/lr.csv (one row per domain, system, lr and seed) and
# lr_table.csv (mean, sample sd and 95% t-interval over seeds; system = DOMAIN:SYSTEM@LR) and
# lr-command.txt (this command and the binary's provenance). Finished runs are
# kept (lib.sh done_run).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
[ $# -ge 1 ] && export MOE=$1
# shellcheck source=../common/lib.sh
. "$root/experiments/common/lib.sh"
check_moe
moe=$(moe_bin)
out=${OUT:-$root/results/transfer}
mkdir -p "$out"
work=${WORK:-$root/runs/transfer}
read -r -a seeds <<< "${SEEDS:-1 2 3 4 5}"
threads=${THREADS:-1}
lrs=(0.006 0.02)
expected_time "about $(( 4 * ${#seeds[@]} )) minutes at 1 thread, 4 per seed (per domain six systems at two rates: Fashion-MNIST adaptations of under half a second, LM adaptations of 7-13 s)"

{ echo "$(env_line) bash experiments/transfer/lr.sh  # $(date -u +%Y-%m-%d), $("$moe" --version | head -1)"; provenance "$moe"; } > "$out/lr-command.txt"
echo "system,seed,trainable_parameters,parameters,trainable_fraction,test_accuracy,test_bits_per_byte,test_loss,wall_seconds" > "$out/lr.csv"
row() { # NAME SEED DIR
  jq -r --arg n "$1" --arg s "$2" '(.tuning.trainable_parameters // .parameters) as $t
    | [$n, ($s | tonumber), $t, .parameters, (.tuning.trainable_fraction // ($t / .parameters)),
       (.final.test.accuracy // ""), (.final.test.bits_per_byte // ""), .final.test.loss, .wall_seconds] | @csv' \
    "$3/summary.json" | tr -d '"' >> "$out/lr.csv"
  echo "transfer-lr: $(tail -1 "$out/lr.csv")" >&2
}

# the data and budget of run.sh's adaptation runs (keep in step with run.sh)
fcfg=(--config "$root/experiments/common/fmnist-moe.json" --set data.standardize=false
      --set 'data.idx.classes=5,6,7,8,9' --set data.idx.limit_train=2000 --set train.epochs=5)
lcfg=(--config "$root/experiments/common/lm.json" --set data.text.valid_fraction=0.15
      --set data.text.train_eval_windows=256 --set data.text.windows_per_epoch=1000 --set train.epochs=2)
lm_targets='layers.*.attn.wqkv,layers.*.attn.wo,layers.*.moe.experts.*,layers.*.ffn.w*'

for dom in fmnist udhr-ell udhr-deu; do
  if [ "$dom" = fmnist ]; then
    args=("${fcfg[@]}") targets='layers.*.moe.experts.*' head='head.*'
  else
    args=("${lcfg[@]}" --set data.text.path="\"$work/data/$dom/adapt\"") targets=$lm_targets head='tok_emb.*,head.*'
  fi
  for seed in "${seeds[@]}"; do
    d=$work/$dom/s$seed base=$work/$dom/s$seed/pretrain/model.safetensors
    [ -s "$base" ] || { echo "$0: no base '$base' (run experiments/transfer/run.sh first)" >&2; exit 2; }
    for sys in scratch full lora-r1 lora-r4 moe-only lora-r4+head; do
      [ -s "$d/$sys/summary.json" ] || { echo "$0: no '$d/$sys/summary.json' (run run.sh first)" >&2; exit 2; }
      row "$dom:$sys@0.002" "$seed" "$d/$sys"
      for lr in "${lrs[@]}"; do
        a=("${args[@]}" --set optim.lr="$lr" --seed "$seed" --quiet --threads "$threads") o=$d/lr$lr/$sys
        done_run "$o" || case $sys in
          scratch) "$moe" train "${a[@]}" --out "$o" >/dev/null ;;
          full) "$moe" train "${a[@]}" --init "$base" --out "$o" >/dev/null ;;
          lora-r1) "$moe" lora "${a[@]}" --base "$base" --rank 1 --targets "$targets" --out "$o" >/dev/null ;;
          lora-r4) "$moe" lora "${a[@]}" --base "$base" --rank 4 --targets "$targets" --out "$o" >/dev/null ;;
          moe-only) "$moe" train "${a[@]}" --init "$base" --trainable 'layers.*.moe.*' --out "$o" >/dev/null ;;
          lora-r4+head) "$moe" lora "${a[@]}" --base "$base" --rank 4 --targets "$targets" --trainable "$head" \
                          --out "$o" >/dev/null ;;
        esac
        row "$dom:$sys@$lr" "$seed" "$o"
      done
    done
  done
done
summarise_runs "$out/lr.csv" > "$out/lr_table.csv"
column -s, -t < "$out/lr_table.csv" >&2
