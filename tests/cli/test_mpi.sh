#!/usr/bin/env bash
# test_mpi.sh: MPI in a build (lib/dist/dist.h) and training over processes
# (moe train --data-parallel N, lib/train/trainer.c; --expert-parallel N,
# lib/dist/expert_parallel.c).
# - `moe --version` has one "mpi:" line: "built with LIBRARY (MPI a.b)" in a
#   build that links an MPI library (meson -Dmpi), else "this build has no MPI
#   (how to get it)". Without MPI, --data-parallel is refused with that line,
#   exit 2, nothing written (--expert-parallel too); the rest is skipped.
# - With MPI and mpirun: for N = 1, 2, 4 processes on this machine (mpirun
#   --oversubscribe; --allow-run-as-root as root), an mlp-moe (noisy top-2,
#   Shazeer's losses) and a byte-level Transformer LM (Switch, dropout) give
#   metrics.csv, model.safetensors (and the LM's languages.csv, experts.csv)
#   byte-identical to `moe train` in one process with the same config;
#   a run of one epoch at N = 4 is extended (--resume --set train.epochs=2)
#   at N = 2 and in one process, both equal to a 2-epoch run; SIGTERM to the
#   processes stops them after a step with a checkpoint (exit 143) that a
#   resume in one process finishes with the uninterrupted run's files, and
#   so do SIGUSR1 to mpirun (exit 143) and SIGTERM to cmd/moe-mpirun; a
#   killed process ends the job (no hang) with one line from the survivor
#   naming it and the last checkpoint intact;
#   both also with --expert-parallel.
# - --expert-parallel N (each process holds n_expert/N experts of every sparse
#   layer): the mlp-moe, the LM and the LM with GShard top-2, SwiGLU experts,
#   expert hidden dropout and capacity drops give byte-identical files for
#   N = 2, 4 (and a short last step where some processes have no
#   micro-batch); a run checkpointed at N = 4 continues at N = 2 and in one
#   process; summary.json reports the exchange's bytes; refused with one
#   line: n_expert not a multiple of N, a model without sparse layers, frozen
#   experts.
# - Refused with one line from rank 0 and exit 2, nothing written: a process
#   count that differs from N, train.accumulate not a multiple of N, options
#   that differ between processes, bias balancing, --dry-run.
# Bad values of N are rows of bad_inputs.tsv (cli_*_parallel_*).
#
#   bash tests/cli/test_mpi.sh /path/to/moe
# shellcheck disable=SC2317  # check functions are called indirectly, via check
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tap.sh
. "$HERE/tap.sh"
tap_setup mpi "$@"

cat >m.json <<'JSON'
{ "data": { "source": "synthetic", "synthetic": { "kind": "regions", "n_train": 64, "n_test": 32, "n_in": 2, "n_out": 1, "n_regions": 2 } },
  "model": { "type": "mixture", "n_expert": 2 }, "loss": { "type": "nll" }, "train": { "epochs": 1 } }
JSON

MPI_LINE=$("$MOE" --version 2>/dev/null | grep '^mpi: ')
t_version_line() {
    local n
    n=$("$MOE" --version | grep -c '^mpi: ')
    [ "$n" -eq 1 ] || { fail "$n 'mpi:' lines in moe --version"; return 1; }
    [[ $MPI_LINE =~ ^mpi:\ built\ with\ .+\ \(MPI\ [0-9]+\.[0-9]+\)$ ]] ||
        [[ $MPI_LINE == "mpi: this build has no MPI (meson setup -Dmpi=enabled, "* ]] ||
        fail "unexpected line: $MPI_LINE"
}
check "moe --version: one mpi line, built with a named library or how to build one" t_version_line

HAS_MPI=0
[[ $MPI_LINE == "mpi: built with "* ]] && HAS_MPI=1

refused() { # refused ARGS...: one line, exit 2, nothing written (rank 0 alone, or the command itself)
    rm -rf out
    run r "${TO[@]}" "$@"
    [ "$RC" -eq 2 ] || { fail "exit $RC: $(cat r.err)"; return 1; }
    [ "$(grep -c '^moe ' r.err)" -eq 1 ] && [ ! -s r.out ] || { fail "stderr/stdout: $(cat r.err r.out)"; return 1; }
    [ ! -e out ] || { fail "out was created"; return 1; }
}
t_refused_msg() { # t_refused_msg TEXT ARGS...
    local text=$1
    shift
    refused "$@" || return 1
    grep -qF -- "$text" r.err || fail "message: $(cat r.err)"
}

if [ $HAS_MPI -eq 0 ]; then
    check "--data-parallel 2 without MPI: one line, exit 2, how to build with MPI" t_refused_msg \
        "option '--data-parallel' cannot be used: this build has no MPI" "$MOE" train --config m.json --out out --data-parallel 2
    check "--expert-parallel 2 without MPI: one line, exit 2" t_refused_msg \
        "option '--expert-parallel' cannot be used: this build has no MPI" "$MOE" train --config m.json --out out --expert-parallel 2
    echo "1..$N"
    [ "$FAILED" -eq 0 ]
    exit
fi
# The sanitizer build (scripts/sanitize.sh): Open MPI 4.1 leaves thousands of
# allocations unfreed at MPI_Finalize, most of them in its MCA components,
# which it has dlclose()d by then, so LeakSanitizer shows them from "<unknown
# module>" and no suppression (scripts/lsan.supp) can name them. Leak checking
# is off for the processes that start MPI; AddressSanitizer and UBSan still
# check them, and every one-process run here keeps leak checking.
NOLEAK=()
[ -z "${ASAN_OPTIONS:-}" ] || NOLEAK=(env "ASAN_OPTIONS=$ASAN_OPTIONS:detect_leaks=0")
check "--expert-parallel 2 in one process (no mpirun): one line, exit 2" t_refused_msg \
    "option '--expert-parallel 2' needs 2 processes, but this one was started as one of 1" \
    "${NOLEAK[@]}" "$MOE" train --config m.json --out out --expert-parallel 2
check "--data-parallel 2 in one process (no mpirun): one line, exit 2" t_refused_msg \
    "option '--data-parallel 2' needs 2 processes, but this one was started as one of 1" \
    "${NOLEAK[@]}" "$MOE" train --config m.json --out out --data-parallel 2
check "--data-parallel with --dry-run: one line, exit 2" t_refused_msg \
    "option '--data-parallel' cannot be combined with '--dry-run'" "$MOE" train --config m.json --data-parallel 2 --dry-run

if ! command -v mpirun >/dev/null 2>&1; then
    echo "# mpirun not found (Debian: openmpi-bin): the runs over processes are skipped"
    echo "1..$N"
    [ "$FAILED" -eq 0 ]
    exit
fi
# Open MPI: several processes per core here; as root (CI) it must be told that is fine.
MPIRUN=("${NOLEAK[@]}" mpirun --oversubscribe)
[ "$(id -u)" -eq 0 ] && MPIRUN+=(--allow-run-as-root)
export OMPI_MCA_btl_vader_single_copy_mechanism=none # no ptrace-based copies in containers
mpi() { "${TO[@]}" "${MPIRUN[@]}" "$@"; }

cat >mm.json <<'JSON'
{ "data": { "source": "synthetic", "synthetic": { "kind": "regions", "n_train": 512, "n_test": 128, "n_in": 8, "n_out": 1, "n_regions": 4 } },
  "model": { "type": "mlp-moe", "n_expert": 4, "n_expert_used": 2, "n_embd": 16, "n_ff": 32, "n_layer": 2 },
  "moe": { "router": "noisy-topk", "aux_loss": "shazeer" },
  "optim": { "type": "adamw", "lr": 0.01, "batch_size": 32 },
  "train": { "epochs": 3, "accumulate": 4, "log_every": 2, "seed": 5 } }
JSON
# a small text: words drawn by a Park-Miller generator (the same bytes from every awk)
awk 'BEGIN { x = 7; n = split("the a of and to in is was that it he for on are as with his they at be this from or by", w, " ")
             for (s = 0; s < 3000; s++) { x = (x * 16807) % 2147483647; printf "%s%s", w[1 + int(x / 2147483647 * n)], (s % 11 == 10 ? ".\n" : " ") } }' >text.txt
cat >lm.json <<'JSON'
{ "data": { "source": "text", "text": { "path": "text.txt", "tokens": "bytes", "valid_fraction": 0.1, "windows_per_epoch": 256,
            "train_eval_windows": 64, "valid_eval_windows": 64 } },
  "model": { "type": "transformer", "n_ctx": 16, "n_embd": 16, "n_head": 2, "n_layer": 2, "moe_every": 2,
             "n_expert": 4, "n_expert_used": 1, "n_ff": 32, "n_ff_dense": 32, "dropout": { "residual": 0.1 } },
  "moe": { "router": "switch", "capacity_factor": 1.25, "aux_loss": "switch", "aux_weight": 0.01 },
  "optim": { "type": "adamw", "lr": 0.003, "batch_size": 8 },
  "train": { "epochs": 2, "accumulate": 4, "log_every": 4, "seed": 3 } }
JSON

same_files() { # same_files DIR_A DIR_B FILE...
    local a=$1 b=$2 f
    shift 2
    for f in "$@"; do
        [ -f "$a/$f" ] || { fail "no $a/$f"; return 1; }
        cmp -s "$a/$f" "$b/$f" || { fail "$b/$f differs from $a/$f"; return 1; }
    done
}
one() { # one DIR CONFIG ARGS...: a run in one process
    local d=$1 c=$2
    shift 2
    "${TO[@]}" "$MOE" train --config "$c" --out "$d" --quiet --threads 1 "$@" >"$d.out" 2>"$d.err" ||
        { fail "one process: exit $?: $(cat "$d.err")"; return 1; }
}
over() { # over N DIR CONFIG ARGS...: the same over N processes
    local n=$1 d=$2 c=$3
    shift 3
    mpi -np "$n" "$MOE" train --config "$c" --out "$d" --quiet --threads 1 "${PAR:---data-parallel}" "$n" "$@" >"$d.out" 2>"$d.err" ||
        { fail "$n processes: exit $?: $(cat "$d.err")"; return 1; }
    [ "$(jq -s length "$d.out")" = 1 ] || { fail "stdout is not one JSON summary (rank 0's): $(head -c 300 "$d.out")"; return 1; }
}

t_mlp_same() {
    one mm1 mm.json || return 1
    local n
    for n in 1 2 4; do
        over $n mm-n$n mm.json || return 1
        same_files mm1 mm-n$n metrics.csv model.safetensors || return 1
    done
}
check "mlp-moe over 1, 2, 4 processes: metrics.csv and model.safetensors byte-identical to one process" t_mlp_same

t_lm_same() {
    one lm1 lm.json || return 1
    local n
    for n in 2 4; do
        over $n lm-n$n lm.json || return 1
        same_files lm1 lm-n$n metrics.csv model.safetensors languages.csv experts.csv || return 1
    done
}
check "Transformer LM over 2 and 4 processes: every table and the model byte-identical to one process" t_lm_same

t_extend_across() {
    [ -f lm1/model.safetensors ] || { fail "no 2-epoch reference run"; return 1; }
    over 4 ext4 lm.json --set train.epochs=1 || return 1
    cp -r ext4 ext1
    rm -f ext1/moe.lock
    mpi -np 2 "$MOE" train --resume ext4 --set train.epochs=2 --quiet --threads 1 --data-parallel 2 >ext4.out 2>ext4.err ||
        { fail "extend over 2 processes: $(cat ext4.err)"; return 1; }
    "${TO[@]}" "$MOE" train --resume ext1 --set train.epochs=2 --quiet --threads 1 >ext1.out 2>ext1.err ||
        { fail "extend in one process: $(cat ext1.err)"; return 1; }
    same_files lm1 ext4 metrics.csv model.safetensors languages.csv experts.csv || return 1
    same_files lm1 ext1 metrics.csv model.safetensors languages.csv experts.csv
}
check "a run checkpointed over 4 processes continues over 2, or in one, to the uninterrupted run's files" t_extend_across

# A longer run to stop: the LM with more windows per epoch.
LONG=(--set data.text.windows_per_epoch=20000 --set train.epochs=1 --set train.eval_every=5 --set train.checkpoint_every=4)
# HOW: procs (default: SIGTERM to the processes, as a scheduler sends it),
# usr1 (SIGUSR1 to mpirun, which passes it on, and to the processes), launcher
# (the job started by cmd/moe-mpirun, SIGTERM to the launcher); SIG: the
# signal moe's line names.
LAUNCHER=$HERE/../../cmd/moe-mpirun
t_sigterm() { # PAR: --data-parallel (default) or --expert-parallel
    [ -f long1/model.safetensors ] || one long1 lm.json "${LONG[@]}" || return 1
    rm -rf long
    local start=("${MPIRUN[@]}")
    [ "${HOW:-procs}" != launcher ] || start=(env "MPIRUN=${MPIRUN[0]}" "$LAUNCHER" "${MPIRUN[@]:1}")
    "${start[@]}" -np 2 "$MOE" train --config lm.json --out long --quiet --threads 1 "${PAR:---data-parallel}" 2 "${LONG[@]}" \
        >long.out 2>long.err &
    local pid=$! i
    for i in $(seq 300); do # until the first training rows are written
        [ -f long/metrics.csv ] && [ "$(wc -l <long/metrics.csv)" -ge 6 ] && break
        sleep 0.1
    done
    case ${HOW:-procs} in
    procs) pkill -TERM -P "$pid" ;; # the processes (a scheduler's SIGTERM), not mpirun
    usr1) kill -USR1 "$pid"; pkill -USR1 -P "$pid" ;; # as a scheduler signalling every process: each gets two
    launcher) kill -TERM "$pid" ;;
    esac
    wait "$pid"
    local rc=$?
    [ "$rc" -eq 143 ] || { fail "exit $rc, not 143: $(cat long.err)"; return 1; }
    grep -q "^moe train: interrupted by ${SIG:-SIGTERM} at step [0-9]*; checkpoint written" long.err ||
        { fail "no interruption line: $(cat long.err)"; return 1; }
    [ "$(grep -c '^moe train: interrupted' long.err)" -eq 1 ] || { fail "more than one process spoke: $(cat long.err)"; return 1; }
    [ -f long/checkpoint.safetensors ] || { fail "no checkpoint"; return 1; }
    rm -f long/moe.lock
    "${TO[@]}" "$MOE" train --resume long --quiet --threads 1 >long-r.out 2>long-r.err || { fail "resume: $(cat long-r.err)"; return 1; }
    same_files long1 long metrics.csv model.safetensors languages.csv experts.csv
}
check "SIGTERM to the processes: a checkpoint after a step, exit 143, one line; resumed in one process to the same files" t_sigterm
t_sigterm_ep() { PAR=--expert-parallel t_sigterm; }
check "the same with --expert-parallel 2" t_sigterm_ep
t_usr1() { HOW=usr1 SIG=SIGUSR1 PAR=--expert-parallel t_sigterm; }
check "SIGUSR1 to mpirun and to the processes (each gets two): the same checkpoint, one line, mpirun exits 143" t_usr1
t_launcher() { HOW=launcher SIG=SIGUSR1 t_sigterm; }
check "SIGTERM to cmd/moe-mpirun (mpirun in its own session): the same checkpoint, one line, exit 143" t_launcher

t_killed() {
    rm -rf dead
    "${MPIRUN[@]}" -np 2 "$MOE" train --config lm.json --out dead --quiet --threads 1 "${PAR:---data-parallel}" 2 "${LONG[@]}" \
        >dead.out 2>dead.err &
    local pid=$! i
    for i in $(seq 300); do
        [ -f dead/checkpoint.safetensors ] && break
        sleep 0.1
    done
    pkill -KILL -n -P "$pid" # one process dies
    local t0=$SECONDS
    wait "$pid"
    local rc=$?
    [ "$rc" -ne 0 ] || { fail "mpirun exit 0 after a process was killed"; return 1; }
    [ $((SECONDS - t0)) -lt 60 ] || { fail "the job took $((SECONDS - t0)) s to end"; return 1; }
    # the survivor's one line (Open MPI's own banners around it are mpirun's; -q drops them)
    [ "$(grep -c '^moe train: process [01] of 2 (pid [0-9]*) ended (killed or crashed) while process [01] waited for it in MPI_[A-Za-z]*; the last checkpoint, if one was written, is intact (continue with: moe train --resume dead)$' dead.err)" -eq 1 ] ||
        { fail "not one line from the survivor: $(cat dead.err)"; return 1; }
    [ -f dead/checkpoint.safetensors ] || { fail "no checkpoint left"; return 1; }
    rm -f dead/moe.lock
    "${TO[@]}" "$MOE" train --resume dead --quiet --threads 1 >dead-r.out 2>dead-r.err ||
        { fail "resume after the kill: $(cat dead-r.err)"; return 1; }
    same_files long1 dead metrics.csv model.safetensors languages.csv experts.csv
}
check "a killed process ends the job (no hang) with one line from the survivor naming it; the last checkpoint resumes to the uninterrupted run's files" t_killed
t_killed_ep() { PAR=--expert-parallel t_killed; }
check "the same with --expert-parallel 2 (a process dies inside the experts' exchanges)" t_killed_ep

# Expert parallelism: the same files, the experts spread over the processes.
t_ep_mlp() {
    [ -f mm1/model.safetensors ] || { fail "no one-process reference run"; return 1; }
    local n
    for n in 2 4; do
        PAR=--expert-parallel over $n mm-e$n mm.json || return 1
        same_files mm1 mm-e$n metrics.csv model.safetensors || return 1
        jq -e '.expert_parallel.processes == '$n' and .expert_parallel.bytes_sent_per_step > 0' mm-e$n.out >/dev/null ||
            { fail "summary.json expert_parallel: $(jq -c .expert_parallel mm-e$n.out)"; return 1; }
    done
}
check "mlp-moe with --expert-parallel 2 and 4: byte-identical to one process; summary gives the exchange's bytes" t_ep_mlp

t_ep_lm() {
    [ -f lm1/model.safetensors ] || { fail "no one-process reference run"; return 1; }
    local n
    for n in 2 4; do
        PAR=--expert-parallel over $n lm-e$n lm.json || return 1
        same_files lm1 lm-e$n metrics.csv model.safetensors languages.csv experts.csv || return 1
    done
}
check "Transformer LM with --expert-parallel 2 and 4: every table and the model byte-identical to one process" t_ep_lm

# top-2 with drops (capacity 0.5), SwiGLU experts with hidden dropout (its mask
# is keyed by token and slot, which travel with the rows); 200 windows of 8
# rows in steps of 8 x 8: the last step has one micro-batch, the other
# processes only serve their experts
G2=(--set moe.router='"gshard"' --set model.n_expert_used=2 --set moe.aux_loss='"gshard"'
    --set model.ffn_activation='"swiglu"' --set moe.capacity_factor=0.5 --set model.dropout.ffn=0.1
    --set train.accumulate=8 --set data.text.windows_per_epoch=200)
t_ep_top2() {
    one g1 lm.json "${G2[@]}" || return 1
    local n
    for n in 2 4; do
        PAR=--expert-parallel over $n g-e$n lm.json "${G2[@]}" || return 1
        same_files g1 g-e$n metrics.csv model.safetensors experts.csv || return 1
    done
}
check "LM with GShard top-2, SwiGLU, expert dropout, drops and a short last step over 2 and 4 processes: byte-identical" t_ep_top2

t_ep_extend() {
    [ -f lm1/model.safetensors ] || { fail "no 2-epoch reference run"; return 1; }
    PAR=--expert-parallel over 4 ee4 lm.json --set train.epochs=1 || return 1
    cp -r ee4 ee1
    rm -f ee1/moe.lock
    mpi -np 2 "$MOE" train --resume ee4 --set train.epochs=2 --quiet --threads 1 --expert-parallel 2 >ee4.out 2>ee4.err ||
        { fail "extend over 2 processes: $(cat ee4.err)"; return 1; }
    "${TO[@]}" "$MOE" train --resume ee1 --set train.epochs=2 --quiet --threads 1 >ee1.out 2>ee1.err ||
        { fail "extend in one process: $(cat ee1.err)"; return 1; }
    same_files lm1 ee4 metrics.csv model.safetensors languages.csv experts.csv || return 1
    same_files lm1 ee1 metrics.csv model.safetensors languages.csv experts.csv
}
check "--expert-parallel: checkpointed at N = 4, continued at N = 2 or in one process, to the uninterrupted run's files" t_ep_extend

# train.select = best_valid_loss: the snapshot of the best epoch goes through
# the checkpoint (gathered to rank 0) and back (each process its experts)
BEST=(--set data.synthetic.n_valid=64 --set train.select='"best_valid_loss"' --set train.epochs=4)
t_ep_best() {
    one mb1 mm.json "${BEST[@]}" || return 1
    PAR=--expert-parallel over 4 mb4 mm.json "${BEST[@]}" --set train.epochs=2 || return 1
    rm -f mb4/moe.lock
    mpi -np 2 "$MOE" train --resume mb4 --set train.epochs=4 --quiet --threads 1 --expert-parallel 2 >mb4.out 2>mb4.err ||
        { fail "extend over 2 processes: $(cat mb4.err)"; return 1; }
    same_files mb1 mb4 metrics.csv model.safetensors
}
check "--expert-parallel with train.select = best_valid_loss, checkpointed at N = 4 and continued at N = 2: the one-process files" t_ep_best

# Memory: each process holds its experts' weights, gradients and moments only.
# A model whose experts are most of it (2 layers of 16 experts, 128 x 2048):
# every process must peak well under one process's peak, rank 0 too, which
# writes the checkpoints and the model holding one whole expert tensor at a
# time.
cat >big.json <<'JSON'
{ "data": { "source": "synthetic", "synthetic": { "kind": "regions", "n_train": 128, "n_test": 32, "n_in": 8, "n_out": 1, "n_regions": 4 } },
  "model": { "type": "mlp-moe", "n_expert": 16, "n_expert_used": 1, "n_embd": 128, "n_ff": 2048, "n_layer": 2 },
  "moe": { "router": "switch", "aux_loss": "switch" },
  "optim": { "type": "adamw", "lr": 0.001, "batch_size": 32 },
  "train": { "epochs": 1, "accumulate": 4, "seed": 5 } }
JSON
t_ep_memory() {
    [ -x /usr/bin/time ] || { echo "# /usr/bin/time missing (Debian: time): memory not measured"; return 0; }
    [ -z "${ASAN_OPTIONS:-}" ] || { echo "# under AddressSanitizer the resident memory says nothing: not measured"; return 0; }
    /usr/bin/time -f "one %M" "${TO[@]}" "$MOE" train --config big.json --out big1 --quiet --threads 1 >/dev/null 2>big1.rss ||
        { fail "one process: $(cat big1.rss)"; return 1; }
    # each process's figure into its own file (-o): lines written to one shared
    # stderr by four processes can interleave mid-line
    rm -f big4.rss.*
    mpi -np 4 bash -c '/usr/bin/time -o "big4.rss.$OMPI_COMM_WORLD_RANK" -f "rank $OMPI_COMM_WORLD_RANK %M" "$0" train --config big.json --out big4 --quiet --threads 1 --expert-parallel 4 >/dev/null' \
        "$MOE" 2>big4.err || { fail "4 processes: $(cat big4.err)"; return 1; }
    cat big4.rss.* > big4.rss
    same_files big1 big4 metrics.csv model.safetensors || return 1
    local one
    one=$(awk '$1 == "one" { print $2 }' big1.rss)
    echo "# peak RSS (KiB): one process $one; over 4: $(grep '^rank' big4.rss | sort | tr '\n' ' ')"
    awk -v one="$one" '$1 == "rank" { n++; if ($3 > 0.5 * one) bad = bad " rank " $2 ": " $3 } END { exit !(n == 4 && bad == "") }' big4.rss ||
        { fail "a process peaked above half of one process's $one KiB: $(tr '\n' ' ' <big4.rss)"; return 1; }
}
check "--expert-parallel 4: every process peaks under half of one process's memory, the same files" t_ep_memory

check "--expert-parallel with n_expert not a multiple of N: one line naming both, exit 2, nothing written" t_refused_msg \
    "key 'model.n_expert' (6) must be a multiple of the 4 processes of --expert-parallel" \
    "${MPIRUN[@]}" -np 4 "$MOE" train --config mm.json --out out --expert-parallel 4 --set model.n_expert=6
check "--expert-parallel with a model without sparse layers: one line, exit 2, nothing written" t_refused_msg \
    "expert parallelism needs sparse MoE layers, and model.type 'mixture' has none" \
    "${MPIRUN[@]}" -np 2 "$MOE" train --config m.json --out out --expert-parallel 2 --set train.accumulate=2
check "--expert-parallel with frozen experts: one line, exit 2, nothing written" t_refused_msg \
    "expert parallelism does not cover frozen tensors or experts yet" \
    "${MPIRUN[@]}" -np 2 "$MOE" train --config mm.json --out out --expert-parallel 2 --freeze '*.experts.*@0'

t_ep_bench() {
    run r mpi -np 2 "$MOE" bench --config lm.json --expert-parallel 2 --repeats 2 --warmup 0 --threads 1 --quiet
    [ "$RC" -eq 0 ] || { fail "exit $RC: $(cat r.err)"; return 1; }
    [ "$(jq -s length r.out)" = 1 ] || { fail "stdout is not one JSON object: $(head -c 300 r.out)"; return 1; }
    jq -e '.expert_parallel.processes == 2 and .expert_parallel.layer.exchange_bytes_sent > 0 and
           .expert_parallel.step.exchange_bytes_sent > 0 and .expert_parallel.step.gradient_sum_bytes_sent > 0 and
           .expert_parallel.step.exchange_seconds.median >= 0 and .expert_parallel.step.compute_seconds.median > 0 and
           .step.tokens_per_second.median > 0' r.out >/dev/null || { fail "report: $(jq -c .expert_parallel r.out)"; return 1; }
}
check "moe bench --expert-parallel 2: one report with the exchanges' seconds and bytes beside the compute" t_ep_bench

check "processes started with different options: one line from rank 0, exit 2, nothing written" t_refused_msg \
    "moe train: rank 1: this process was started with other options than rank 0" \
    "${MPIRUN[@]}" -np 1 "$MOE" train --config mm.json --out out --data-parallel 2 : \
    -np 1 "$MOE" train --config mm.json --out out --data-parallel 2 --set optim.lr=0.1
check "train.accumulate not a multiple of N: one line, exit 2, nothing written" t_refused_msg \
    "key 'train.accumulate' (3) must be a multiple of the 2 processes of --data-parallel" \
    "${MPIRUN[@]}" -np 2 "$MOE" train --config mm.json --out out --data-parallel 2 --set train.accumulate=3
check "bias balancing over processes: one line, exit 2, nothing written" t_refused_msg \
    "key 'moe.bias_balance': the router offsets change after every micro-batch" \
    "${MPIRUN[@]}" -np 2 "$MOE" train --config lm.json --out out --data-parallel 2 --set moe.bias_balance=true --set moe.aux_loss='"none"'
check "--data-parallel 2 started as 4 processes: one line, exit 2" t_refused_msg \
    "option '--data-parallel 2' needs 2 processes, but this one was started as one of 4" \
    "${MPIRUN[@]}" -np 4 "$MOE" train --config mm.json --out out --data-parallel 2

echo "1..$N"
[ "$FAILED" -eq 0 ]
