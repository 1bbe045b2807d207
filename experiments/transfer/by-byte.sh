#!/usr/bin/env bash
# Where the held-out language's bits go, for the transfer experiment's LMs: the
# test split's loss of each adapted model (run.sh must have run first: it reads
# runs/transfer/DOMAIN/sSEED/SYSTEM) broken down by the byte to be predicted,
# with `moe eval --by-token`, into three kinds of UTF-8 byte:
#   ascii         0x00-0x7F (space, punctuation, digits, Latin letters)
#   lead          0xC0-0xFF, the first byte of a multi-byte character (Greek:
#                 0xCE and 0xCF, never seen in pretraining; German: 0xC3 of
#                 ä ö ü ß, seen in French and Spanish)
#   continuation  0x80-0xBF, the other bytes of a multi-byte character
# Systems: zero-shot, scratch, full, lora-r4, moe-only, head, lora-r4+head, and
# three that run.sh does not have, trained here: lora-r4 with one frozen part
# of lora-r4+head set free, to tell which part matters (each from lora-r4's
# config.json, with --trainable GLOB and --merge, into sSEED/SYSTEM):
#   lora-r4+out    the output head (head.*: 16,384 parameters)
#   lora-r4+emb    the byte embeddings (tok_emb.*: 16,384)
#   lora-r4+norm   the final LayerNorm (norm.*: its 64 gains and 64 biases)
# run.sh's LoRA runs keep their adapters only, so the two LoRA systems are
# trained again here with --merge from their own config.json (the same command,
# seed and data: their final.test is checked to be the same bytes as run.sh's
# run) into sSEED/SYSTEM.merged, and the merged model is evaluated. The LoRA
# forward itself uses W0 + (alpha/R) B A rounded once (train/tune.c), as the
# merge does, so the merged model's loss is the run's (loss_delta, eval's loss
# minus the run's, says so for every run).
#
#   [SEEDS="1 2 3 4 5"] [THREADS=1] [OUT=results/transfer] [WORK=runs/transfer] \
#     bash experiments/transfer/by-byte.sh [MOE_BINARY]
#
# Writes OUT/by_byte.csv: one row per domain, system, seed and kind:
#   system (DOMAIN:SYSTEM), seed, kind, bytes (predicted positions of that
#   kind), bits_per_byte (mean bits per predicted byte of the kind), bits_share
#   (the kind's share of the split's bits), accuracy (next-byte accuracy on
#   the kind), loss_delta (eval's loss minus the run's final.test.loss, nats,
#   the same for every kind of a run);
# by_byte_table.csv (mean, sample sd and 95% t-interval over the seeds, system =
# DOMAIN:SYSTEM:KIND), and by-byte-command.txt. The per-token tables are kept
# in WORK/DOMAIN/sSEED/SYSTEM.tokens.csv.
# Then, when python3 is there, head_floor.csv: for each base and each lead byte
# of its test split, the most probability any final hidden state can give the
# byte through the base's frozen final norm and head (head_floor.py), the
# bound on what LoRA and moe-only can reach on it:
#   domain, seed, byte, count (test positions), best_log2_prob, runner_up, runner_up_prob
# and floor.csv: per domain and seed, the count-weighted mean of -best_log2_prob
# over the lead bytes (floor_bits: no frozen-head adaptation predicts the lead
# bytes in fewer bits per byte), beside the bits per lead byte of lora-r4,
# moe-only, full, lora-r4+norm and lora-r4+out (the floor holds for the first
# two; the norm and the head move it). About 75 s per seed at 1 thread.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
[ $# -ge 1 ] && export MOE=$1
# shellcheck source=../common/lib.sh
. "$root/experiments/common/lib.sh"
check_moe
moe=$(moe_bin)
experiment_env transfer "1 2 3 4 5"
mkdir -p "$out"
systems=(zero-shot scratch full lora-r4 moe-only head lora-r4+head lora-r4+out lora-r4+emb lora-r4+norm)
declare -A free=([lora-r4+out]='head.*' [lora-r4+emb]='tok_emb.*' [lora-r4+norm]='norm.*')
expected_time "$(about_minutes $(( 75 * ${#seeds[@]} ))) at 1 thread (per seed and language five LoRA runs of 3-7 s, ten evaluations of a second, and head_floor.py's second or two per lead byte)"
{ echo "$(env_line) bash experiments/transfer/by-byte.sh  # $(date -u +%Y-%m-%d), $("$moe" --version | head -1)"; provenance "$moe"; } > "$out/by-byte-command.txt"

echo "system,seed,kind,bytes,bits_per_byte,bits_share,accuracy,loss_delta" > "$out/by_byte.csv"
for dom in udhr-ell udhr-deu; do
  for seed in "${seeds[@]}"; do
    d=$work/$dom/s$seed base=$work/$dom/s$seed/pretrain/model.safetensors
    [ -s "$base" ] || { echo "$0: no base '$base' (run experiments/transfer/run.sh first)" >&2; exit 2; }
    for sys in "${systems[@]}"; do
      if [ -n "${free[$sys]:-}" ]; then
        run_once "$d/$sys" "$moe" lora --config "$d/lora-r4/config.json" --base "$base" --trainable "${free[$sys]}" \
          --merge --quiet --threads "$threads" --out "$d/$sys" >/dev/null
      fi
      done_run "$d/$sys" || { echo "$0: no finished run in '$d/$sys' (run run.sh first)" >&2; exit 2; }
      ckpt=$d/$sys/model.safetensors
      case $sys in lora-r4+out | lora-r4+emb | lora-r4+norm) ckpt=$d/$sys/merged.safetensors ;;
      lora-*)
        m=$d/$sys.merged
        run_once "$m" "$moe" lora --config "$d/$sys/config.json" --base "$base" --merge --quiet \
          --threads "$threads" --out "$m" >/dev/null
        [ "$(jq -c .final.test "$m/summary.json")" = "$(jq -c .final.test "$d/$sys/summary.json")" ] ||
          { echo "$0: '$m' did not repeat '$d/$sys' (final.test differs)" >&2; exit 1; }
        ckpt=$m/merged.safetensors ;;
      esac
      "$moe" eval --checkpoint "$ckpt" --by-token "$d/$sys.tokens.csv" --quiet --threads "$threads" > "$d/$sys.eval.json"
      delta=$(jq -n --slurpfile e "$d/$sys.eval.json" --slurpfile r "$d/$sys/summary.json" '$e[0].loss - $r[0].final.test.loss')
      # the kinds' sums ($(NF-3) count, $(NF-2) correct, $(NF-1) loss_sum: text may hold a quoted comma)
      awk -F, -v sys="$dom:$sys" -v seed="$seed" -v delta="$delta" '
        NR == 1 { next }
        { k = $1 < 128 ? "ascii" : $1 < 192 ? "continuation" : "lead"
          n[k] += $(NF - 3); c[k] += $(NF - 2); l[k] += $(NF - 1); total += $(NF - 1) }
        END { split("ascii lead continuation", ks, " ")
              for (i = 1; i <= 3; i++) { k = ks[i]; if (!n[k]) continue
                printf "%s,%d,%s,%d,%.6f,%.6f,%.6f,%.3g\n", sys, seed, k, n[k], l[k] / n[k] / log(2), l[k] / total,
                       c[k] / n[k], delta } }' "$d/$sys.tokens.csv" >> "$out/by_byte.csv"
      echo "transfer-by-byte: $(tail -3 "$out/by_byte.csv" | grep -F "$dom:$sys,$seed," | tr '\n' ' ')" >&2
    done
  done
done
# mean and sd over seeds per DOMAIN:SYSTEM:KIND (stats.sh's report, as the other tables)
awk -F, -v OFS=, 'NR == 1 { $1 = "system"; $3 = ""; print; next } { $1 = $1 ":" $3; $3 = ""; print }' "$out/by_byte.csv" |
  cut -d, -f1,2,4- > "$out/by_byte.tmp"
summarise_from 3 "$out/by_byte.tmp" > "$out/by_byte_table.csv"
rm -f "$out/by_byte.tmp"
column -s, -t < "$out/by_byte_table.csv" | cut -c1-160 >&2

command -v python3 >/dev/null || { echo "$0: no python3: head_floor.csv and floor.csv not written" >&2; exit 0; }
echo "domain,seed,byte,count,best_log2_prob,runner_up,runner_up_prob" > "$out/head_floor.csv"
echo "domain,seed,lead_bytes,floor_bits,lora_r4_bits,moe_only_bits,full_bits,lora_r4_norm_bits,lora_r4_out_bits" > "$out/floor.csv"
# lead_bits SYSTEM: by_byte.csv's bits per lead byte of $dom:SYSTEM, seed $seed
lead_bits() { awk -F, -v s="$dom:$1" -v seed="$seed" '$1 == s && $2 == seed && $3 == "lead" { print $5 }' "$out/by_byte.csv"; }
for dom in udhr-ell udhr-deu; do
  for seed in "${seeds[@]}"; do
    d=$work/$dom/s$seed
    # the lead bytes of the test split and their counts (the zero-shot table: every target is there)
    awk -F, 'NR > 1 && $1 >= 192 { print $1 "," $(NF - 3) }' "$d/zero-shot.tokens.csv" > "$d/lead.counts"
    [ -s "$d/lead.counts" ] || continue
    # shellcheck disable=SC2046  # one argument per byte
    python3 "$here/head_floor.py" "$d/pretrain/model.safetensors" $(cut -d, -f1 "$d/lead.counts") |
      awk -F, -v dom="$dom" -v seed="$seed" 'NR == FNR { n[$1] = $2; next } FNR > 1 {
        print dom "," seed "," $1 "," n[$1] "," $2 "," $3 "," $4 }' "$d/lead.counts" - >> "$out/head_floor.csv"
    awk -F, -v dom="$dom" -v seed="$seed" '$1 == dom && $2 == seed { n += $4; b -= $4 * $5; k++ } END {
        printf "%s,%d,%d,%.6f", dom, seed, k, b / n }' "$out/head_floor.csv" >> "$out/floor.csv"
    echo ",$(lead_bits lora-r4),$(lead_bits moe-only),$(lead_bits full),$(lead_bits lora-r4+norm),$(lead_bits lora-r4+out)" >> "$out/floor.csv"
    echo "transfer-by-byte: floor $(tail -1 "$out/floor.csv")" >&2
  done
done
