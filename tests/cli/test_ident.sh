#!/usr/bin/env bash
# test_ident.sh: run identity, tags, scripts/merge-runs.sh and resumable
# compare-loss sweeps (README, Run identity; Resumable sweeps).
#
#   bash tests/cli/test_ident.sh /path/to/moe
#
# TAP-like output (tap.sh). Checks: summary.json's version, revision (the one
# --version prints), BLAS sub-configuration (the one --version prints), run_id,
# argv, sets and tags; the run id is the same for a rerun at another thread
# count and differs with the seed or a tag; --tag puts its columns last on
# every row of every table of train (mlp-moe and a transformer LM: metrics.csv,
# experts.csv, languages.csv), distill (importance.csv), lora, route-stats and compare-loss, with the same
# value on every row, a value with a comma and quotes quoted (RFC 4180), and
# the tables without the tag columns byte-identical to an untagged run's;
# --resume keeps the tags; merge-runs.sh on 2 runs (one header, every row) and
# its refusal of mismatched headers; compare-loss stopped by SIGTERM after its
# first run and restarted ends byte-identical to an uninterrupted sweep, SIGINT
# exits 130, and a directory holding another sweep is refused. Bad --tag values
# are rows of bad_inputs.tsv (cli_tag_*).
# shellcheck disable=SC2317  # check functions are called indirectly, via check
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MERGE=$HERE/../../scripts/merge-runs.sh

# shellcheck source=tap.sh
. "$HERE/tap.sh"
tap_setup ident "$@"

cat >moe.json <<'EOF'
{
  "data": { "source": "synthetic", "synthetic": { "kind": "classes", "n_in": 4, "n_regions": 4, "n_train": 300, "n_test": 200 } },
  "model": { "type": "mlp-moe", "n_embd": 8, "n_layer": 2, "n_ff": 8, "n_expert": 4, "n_expert_used": 2 },
  "moe": { "router": "noisy-topk", "aux_loss": "shazeer" },
  "optim": { "batch_size": 32 },
  "train": { "epochs": 3, "seed": 1 }
}
EOF
mkdir corpus
for i in $(seq 1 150); do echo "the cat $i sat on the mat and the dog ran after it"; done >corpus/en.txt
for i in $(seq 1 150); do echo "le chat $i dort sur le tapis et le chien court"; done >corpus/fr.txt
cat >lm.json <<EOF
{
  "data": { "source": "text", "text": { "path": "$TMP/corpus", "valid_fraction": 0.2, "train_eval_windows": 32 } },
  "model": { "type": "transformer", "n_ctx": 16, "n_embd": 16, "n_head": 2, "n_layer": 2, "n_ff": 16,
             "moe_every": 2, "n_expert": 4, "n_expert_used": 1 },
  "moe": { "router": "switch" },
  "optim": { "lr": 0.01, "batch_size": 16 },
  "train": { "epochs": 2, "seed": 5 }
}
EOF
# The 1991 mixture, full batch: compare-loss's base (each run well under a second).
cat >q.json <<'EOF'
{
  "data": { "source": "synthetic", "synthetic": { "n_train": 400, "n_test": 200 } },
  "model": { "type": "mixture", "n_expert": 4, "expert": "linear" },
  "optim": { "type": "gd", "lr": 0.1 },
  "train": { "epochs": 400 }
}
EOF

NOTE='a, "quoted" note'
# train OUT ARGS...: moe train --out OUT --quiet ARGS (threads 1 unless given)
train() {
    local d=$1
    shift
    rm -rf "$d"
    run "$d" "${TO[@]}" "$MOE" train --out "$d" --quiet "$@"
}
ran() { [ "$RC" -eq 0 ] || { fail "$(describe "$1" moe ...)"; return 1; }; }
# tagged FILE N V1 V2: FILE's header ends with ",router,note" and every row with
# the cells router=V1 and note=NOTE (quoted), and it has N columns before them.
tagged() {
    local f=$1 n=$2 bad
    [ "$(head -1 "$f" | awk -F, '{ print $(NF - 1) "," $NF }')" = "router,note" ] ||
        { fail "$f: header '$(head -1 "$f")' does not end with router,note"; return 1; }
    [ "$(head -1 "$f" | awk -F, '{ print NF }')" -eq $((n + 2)) ] ||
        { fail "$f: header '$(head -1 "$f")' has not $n columns before the tags"; return 1; }
    [ "$(tail -n +2 "$f" | grep -c .)" -ge 1 ] || { fail "$f has no rows"; return 1; }
    bad=$(tail -n +2 "$f" | grep -v -F -- ',topk,"a, ""quoted"" note"' | head -3)
    [ -z "$bad" ] || { fail "$f: rows without the tag cells at the end: $bad"; return 1; }
    # the header has n + 2 names; every row n + 1 commas before the note (whose comma is quoted)
    bad=$(tail -n +2 "$f" | sed 's/,"a, ""quoted"" note"$//' | awk -F, -v n="$n" 'NF != n + 1' | head -3)
    [ -z "$bad" ] || { fail "$f: rows of another width: $bad"; return 1; }
}
# untag FILE: FILE without the last two columns (router, note: the note quoted)
untag() { sed -e '1s/,router,note$//' -e '2,$s/,topk,"a, ""quoted"" note"$//' "$1"; }
ncols() { head -1 "$1" | awk -F, '{ print NF }'; }

# ------------------------------------------------------------ identity in summary.json
t_identity() {
    train t1 --config moe.json --threads 1 --tag router=topk --tag "note=$NOTE" --set optim.lr=0.02
    ran t1 || return 1
    local rev arch
    rev=$("$MOE" --version | sed -n 's/^revision //p')
    arch=$("$MOE" --version | sed -n 's/^blis .*sub-configuration \([^ ]*\) .*/\1/p')
    [ -n "$rev" ] && [ -n "$arch" ] || { fail "moe --version has no revision or sub-configuration line: $("$MOE" --version)"; return 1; }
    jq -e --arg rev "$rev" --arg arch "$arch" --arg note "$NOTE" '
        .version == "0.1.0" and .revision == $rev and .blas.arch == $arch and (.blas.version | length) > 0 and
        (.run_id | test("^[0-9a-f]{16}$")) and .sets == ["optim.lr=0.02"] and
        .tags == { "router": "topk", "note": $note } and (.argv | index(["--tag", "router=topk"])) != null and
        .argv[1] == "train"' t1/summary.json >/dev/null ||
        { fail "summary.json lacks the identity: $(jq -c '{version, revision, blas, run_id, sets, tags, argv}' t1/summary.json)"; return 1; }
    cmp -s <(jq -S . t1.out) <(jq -S . t1/summary.json) || { fail "stdout differs from summary.json"; return 1; }
}
check "summary.json: version, revision and BLAS sub-configuration as --version prints them, run_id, argv, sets, tags" t_identity

t_run_id() {
    train t2 --config moe.json --threads 2 --tag router=topk --tag "note=$NOTE" --set optim.lr=0.02
    ran t2 || return 1
    train t3 --config moe.json --threads 1 --tag router=topk --tag "note=$NOTE" --set optim.lr=0.02 --seed 2
    ran t3 || return 1
    train t4 --config moe.json --threads 1 --tag router=other --tag "note=$NOTE" --set optim.lr=0.02
    ran t4 || return 1
    local id1 id2 id3 id4
    id1=$(jq -r .run_id t1/summary.json) id2=$(jq -r .run_id t2/summary.json)
    id3=$(jq -r .run_id t3/summary.json) id4=$(jq -r .run_id t4/summary.json)
    [ "$id1" = "$id2" ] || { fail "run_id differs between --threads 1 and 2: $id1 $id2"; return 1; }
    [ "$id1" != "$id3" ] || { fail "run_id is the same for seeds 1 and 2"; return 1; }
    [ "$id1" != "$id4" ] || { fail "run_id is the same for different tags"; return 1; }
    local f
    for f in metrics.csv experts.csv model.safetensors config.json; do
        cmp -s "t1/$f" "t2/$f" || { fail "$f differs between --threads 1 and 2"; return 1; }
    done
}
check "run_id: equal for --threads 1 and 2 (outputs byte-identical), different for another seed or tag" t_run_id

# ------------------------------------------------------------ tags on every row
t_tags_mlp_moe() {
    [ -f t1/metrics.csv ] || { fail "no t1 run"; return 1; }
    tagged t1/metrics.csv 19 || return 1
    tagged t1/experts.csv 9 || return 1
    train u1 --config moe.json --threads 1 --set optim.lr=0.02
    ran u1 || return 1
    local f
    for f in metrics.csv experts.csv; do
        cmp -s <(untag "t1/$f") "u1/$f" || { fail "t1/$f without its tag columns differs from the untagged run's"; return 1; }
    done
    cmp -s t1/model.safetensors u1/model.safetensors || { fail "tags changed model.safetensors"; return 1; }
    cmp -s t1/config.json u1/config.json || { fail "tags changed config.json"; return 1; }
}
check "mlp-moe: tag columns last on every row of metrics.csv and experts.csv; without them, the untagged run's bytes" t_tags_mlp_moe

t_tags_lm() {
    train lm --config lm.json --threads 1 --tag router=topk --tag "note=$NOTE"
    ran lm || return 1
    tagged lm/metrics.csv 19 || return 1
    tagged lm/experts.csv 9 || return 1
    tagged lm/languages.csv 8 || return 1
    train lmu --config lm.json --threads 1
    ran lmu || return 1
    local f
    for f in metrics.csv experts.csv languages.csv; do
        cmp -s <(untag "lm/$f") "lmu/$f" || { fail "lm/$f without its tag columns differs from the untagged run's"; return 1; }
    done
}
check "transformer LM: tag columns on every row of metrics.csv, experts.csv and languages.csv" t_tags_lm

t_tags_route_stats() {
    [ -f t1/model.safetensors ] || { fail "no t1 run"; return 1; }
    run rs "${TO[@]}" "$MOE" route-stats --checkpoint t1/model.safetensors --out rs --quiet --threads 1 \
        --capacity-factors 1,2 --tag router=topk --tag "note=$NOTE"
    ran rs || return 1
    local f
    for f in layers:16 experts:7 labels:5 capacity:5 coselect:4; do
        tagged "rs/${f%:*}.csv" "${f#*:}" || return 1
    done
    jq -e --arg note "$NOTE" '.tags == { "router": "topk", "note": $note } and (.run_id | length) == 16' rs/summary.json >/dev/null ||
        { fail "route-stats summary: $(jq -c '{tags, run_id}' rs/summary.json)"; return 1; }
}
check "route-stats: tag columns on every row of layers, experts, labels, capacity and coselect.csv; tags in the summary" t_tags_route_stats

# distill (MoEBERT: importance.csv too) from a dense teacher, and lora on it.
cat >dense.json <<'EOF'
{
  "data": { "source": "synthetic", "synthetic": { "kind": "classes", "n_in": 6, "n_regions": 4, "n_train": 200, "n_test": 80 } },
  "model": { "type": "mlp-moe", "n_embd": 8, "n_layer": 2, "moe_every": 9, "n_ff_dense": 16, "n_ff": 4, "n_expert": 4,
             "n_expert_used": 1 },
  "moe": { "router": "switch" },
  "optim": { "type": "adamw", "lr": 0.01, "batch_size": 16 },
  "train": { "epochs": 2, "seed": 3 }
}
EOF
t_tags_distill_lora() {
    train dense --config dense.json --threads 1
    ran dense || return 1
    rm -rf mb
    run mb "${TO[@]}" "$MOE" distill --mode moebert --teacher dense/model.safetensors --config dense.json \
        --set model.moe_every=1 --set model.n_ff=5 --shared 2 --out mb --quiet --threads 1 --tag router=topk --tag "note=$NOTE"
    ran mb || return 1
    tagged mb/importance.csv 6 && tagged mb/metrics.csv 19 && tagged mb/experts.csv 9 || return 1
    rm -rf lo
    run lo "${TO[@]}" "$MOE" lora --base mb/model.safetensors --config dense.json --set model.moe_every=1 \
        --set model.n_ff=5 --rank 1 --targets '*.experts.*' --out lo --quiet --threads 1 --tag router=topk --tag "note=$NOTE"
    ran lo || return 1
    tagged lo/metrics.csv 19 && tagged lo/experts.csv 9 || return 1
    jq -e '.tags.router == "topk"' mb/summary.json lo/summary.json >/dev/null || { fail "distill or lora summary without tags"; return 1; }
}
check "distill (MoEBERT) and lora: tag columns on every row of importance.csv, metrics.csv and experts.csv" t_tags_distill_lora

# A run stopped by SIGTERM once its first checkpoint is written, resumed: the
# tags come from the checkpoint, and the tables end as an uninterrupted run's.
t_resume_tags() {
    local args=(--config moe.json --set train.epochs=60 --set train.checkpoint_every=5 --tag router=topk --tag "note=$NOTE")
    train ref "${args[@]}" --threads 1
    ran ref || return 1
    rm -rf rr
    "$MOE" train --out rr --quiet --threads 1 "${args[@]}" >rr.out 2>rr.err &
    local pid=$! i
    for i in $(seq 1 400); do [ -s rr/checkpoint.safetensors ] && break; sleep 0.01; done
    kill -TERM "$pid" 2>/dev/null
    wait "$pid"
    run rr2 "${TO[@]}" "$MOE" train --resume rr --quiet --threads 2
    ran rr2 || return 1
    local f
    for f in metrics.csv experts.csv model.safetensors; do
        cmp -s "ref/$f" "rr/$f" || { fail "rr/$f differs from the uninterrupted run's: $(cmp "ref/$f" "rr/$f" 2>&1)"; return 1; }
    done
    jq -e --arg note "$NOTE" --arg id "$(jq -r .run_id ref/summary.json)" \
        '.tags == { "router": "topk", "note": $note } and .run_id == $id and
         .sets == ["train.epochs=60", "train.checkpoint_every=5"]' rr/summary.json >/dev/null ||
        { fail "the resumed run's summary: $(jq -c '{tags, run_id, sets}' rr/summary.json)"; return 1; }
}
check "--resume keeps the tags, the --set list and the run id; the tables end as an uninterrupted run's" t_resume_tags

# ------------------------------------------------------------ merge-runs.sh
t_merge() {
    train m1 --config moe.json --threads 1 --tag router=topk --tag "note=$NOTE" --seed 1
    ran m1 || return 1
    train m2 --config moe.json --threads 1 --tag router=topk --tag "note=$NOTE" --seed 2
    ran m2 || return 1
    run mg bash "$MERGE" m1 m2
    [ "$RC" -eq 0 ] || { fail "$(describe mg merge-runs.sh m1 m2)"; return 1; }
    cmp -s mg.out <(cat m1/metrics.csv; tail -n +2 m2/metrics.csv) || { fail "merged metrics.csv is not m1's then m2's rows"; return 1; }
    [ "$(grep -c '^step,' mg.out)" -eq 1 ] || { fail "more than one header"; return 1; }
    run mge bash "$MERGE" --file experts.csv m1 m2
    [ "$RC" -eq 0 ] && [ "$(wc -l <mge.out)" -eq $(($(wc -l <m1/experts.csv) + $(wc -l <m2/experts.csv) - 1)) ] ||
        { fail "merge-runs.sh --file experts.csv: $(describe mge)"; return 1; }
    # a run without the tags: another header, refused with one line and nothing on stdout
    run mgx bash "$MERGE" m1 u1
    [ "$RC" -eq 1 ] && [ ! -s mgx.out ] && [ "$(wc -l <mgx.err)" -eq 1 ] && grep -q "the header of 'u1/metrics.csv' differs" mgx.err ||
        { fail "mismatched headers: $(describe mgx merge-runs.sh m1 u1)"; return 1; }
    run mgn bash "$MERGE" m1 nothere
    [ "$RC" -eq 1 ] && [ ! -s mgn.out ] && [ "$(wc -l <mgn.err)" -eq 1 ] || { fail "a missing run: $(describe mgn)"; return 1; }
    run mgu bash "$MERGE"
    [ "$RC" -eq 2 ] && [ "$(wc -l <mgu.err)" -eq 1 ] || { fail "no directory: $(describe mgu)"; return 1; }
}
check "merge-runs.sh: 2 runs into one header and every row; mismatched headers and a missing file refused with one line" t_merge

# ------------------------------------------------------------ compare-loss
CL=(--config q.json --losses nll,mlp --seeds 1-2 --threads 1 --quiet --tag router=topk --tag "note=$NOTE")
t_cl_tags() {
    rm -rf clref
    run clref "${TO[@]}" "$MOE" compare-loss "${CL[@]}" --out clref
    ran clref || return 1
    tagged clref/curves.csv 12 || return 1
    tagged clref/table.csv 16 || return 1
    [ "$(ls clref/parts | tr '\n' ' ')" = "mlp-seed1.json mlp-seed2.json nll-seed1.json nll-seed2.json " ] ||
        { fail "parts: $(ls clref/parts)"; return 1; }
    jq -e '.tags.router == "topk" and (.run_id | length) == 16 and .revision != null' clref/summary.json >/dev/null ||
        { fail "compare-loss summary: $(head -c 400 clref/summary.json)"; return 1; }
    # the same sweep again into its directory: every run is taken from its record, same bytes
    cp -r clref clref0
    run clagain "${TO[@]}" "$MOE" compare-loss "${CL[@]}" --out clref
    ran clagain || return 1
    local f
    for f in curves.csv table.csv summary.json; do
        cmp -s "clref0/$f" "clref/$f" || { fail "a rerun of a finished sweep changed $f"; return 1; }
    done
}
check "compare-loss: tag columns on curves.csv and table.csv, a record per run in parts/, a rerun changes nothing" t_cl_tags

# stop_after_first SIGNAL DIR: a sweep into DIR stopped by SIGNAL once its first
# run is recorded; RC its exit code.
stop_after_first() {
    local sig=$1 d=$2 i
    rm -rf "$d"
    "$MOE" compare-loss "${CL[@]}" --set train.epochs=2500 --out "$d" >"$d.out" 2>"$d.err" &
    local pid=$!
    for i in $(seq 1 3000); do [ -e "$d/parts/nll-seed1.json" ] && break; sleep 0.01; done
    kill "-$sig" "$pid" 2>/dev/null
    wait "$pid"
    RC=$?
}
t_cl_restart() {
    rm -rf cl
    run cl "${TO[@]}" "$MOE" compare-loss "${CL[@]}" --set train.epochs=2500 --out cl
    ran cl || return 1
    mv cl clfull
    stop_after_first TERM cl
    [ "$RC" -eq 143 ] || { fail "SIGTERM: exit $RC, expected 143: $(cat cl.err)"; return 1; }
    grep -q "interrupted by SIGTERM with [1-3] of 4 runs finished" cl.err || { fail "stderr: $(cat cl.err)"; return 1; }
    [ "$(wc -l <cl.err)" -eq 1 ] || { fail "more than one stderr line: $(cat cl.err)"; return 1; }
    jq -e '.interrupted == "SIGTERM" and .runs == 4' cl/summary.json >/dev/null || { fail "interrupted summary: $(cat cl/summary.json)"; return 1; }
    [ ! -e cl/table.csv ] || { fail "an interrupted sweep left table.csv"; return 1; }
    ls cl/parts/*.tmp.* >/dev/null 2>&1 && { fail "a half-written record is left: $(ls cl/parts)"; return 1; }
    local n
    n=$(ls cl/parts | wc -l)
    [ "$n" -ge 1 ] && [ "$n" -le 3 ] || { fail "$n records after the stop: $(ls cl/parts)"; return 1; }
    [ "$(tail -n +2 cl/curves.csv | cut -d, -f1,2 | sort -u | wc -l)" -eq "$n" ] ||
        { fail "curves.csv does not hold exactly the finished runs' rows"; return 1; }
    run cl2 "${TO[@]}" "$MOE" compare-loss "${CL[@]}" --set train.epochs=2500 --out cl
    ran cl2 || return 1
    local f
    for f in curves.csv table.csv summary.json; do
        cmp -s "clfull/$f" "cl/$f" || { fail "cl/$f differs from the uninterrupted sweep's: $(diff "clfull/$f" "cl/$f" | head -5)"; return 1; }
    done
}
check "compare-loss: SIGTERM after the first run (exit 143, finished runs kept), restart: byte-identical curves.csv, table.csv, summary.json" t_cl_restart

t_cl_sigint() {
    stop_after_first INT ci
    [ "$RC" -eq 130 ] || { fail "SIGINT: exit $RC, expected 130: $(cat ci.err)"; return 1; }
    grep -q "interrupted by SIGINT" ci.err || { fail "stderr: $(cat ci.err)"; return 1; }
}
check "compare-loss: SIGINT exits 130" t_cl_sigint

t_cl_other_settings() {
    [ -f clref/sweep.json ] || { fail "no clref sweep"; return 1; }
    local what args
    for what in seeds config tag; do
        case $what in
        seeds) args=(--config q.json --losses nll,mlp --seeds 1-3 --tag router=topk --tag "note=$NOTE") ;;
        config) args=(--config q.json --losses nll,mlp --seeds 1-2 --set train.epochs=10 --tag router=topk --tag "note=$NOTE") ;;
        tag) args=(--config q.json --losses nll,mlp --seeds 1-2 --tag router=other --tag "note=$NOTE") ;;
        esac
        cp -r clref "co-$what"
        run "co-$what" "$MOE" compare-loss "${args[@]}" --out "co-$what" --threads 1 --quiet
        [ "$RC" -eq 2 ] && [ ! -s "co-$what.out" ] && [ "$(wc -l <"co-$what.err")" -eq 1 ] &&
            grep -q "holds a compare-loss sweep with other settings" "co-$what.err" ||
            { fail "other $what: $(describe "co-$what" compare-loss)"; return 1; }
        cmp -s clref/curves.csv "co-$what/curves.csv" || { fail "the refused sweep changed curves.csv"; return 1; }
    done
}
check "compare-loss: a directory holding a sweep with other seeds, config or tags is refused (exit 2, one line, nothing changed)" t_cl_other_settings

# A config error in any system is refused before the directory is touched: no
# sweep.json is left to refuse the corrected command.
t_cl_config_error() {
    run ce "$MOE" compare-loss --config q.json --losses nll,mlp --seeds 1 --out ce_dir --quiet \
        --set optim.type=gd --set train.accumulate=2
    [ "$RC" -eq 2 ] || { fail "exit $RC: $(cat ce.err)"; return 1; }
    grep -q "system 'nll': key 'train.accumulate' (2) needs mini-batches" ce.err || { fail "stderr: $(cat ce.err)"; return 1; }
    [ ! -e ce_dir ] || { fail "ce_dir was created: $(ls -A ce_dir | tr '\n' ' ')"; return 1; }
    run ce2 "$MOE" compare-loss --config q.json --losses nll,mlp --seeds 1 --out ce_dir --quiet --threads 1
    [ "$RC" -eq 0 ] || fail "the corrected command: exit $RC: $(cat ce2.err)"
}
check "compare-loss: a config error writes nothing, and the corrected command then runs" t_cl_config_error

echo "1..$N"
[ "$FAILED" -eq 0 ]
