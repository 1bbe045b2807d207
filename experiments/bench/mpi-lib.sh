# experiments/bench/mpi-lib.sh: what dp.sh and ep.sh share (sourced, after
# `moe` is set): mpirun's options on this machine, and one training run in one
# process or over N, checked against the one-process run.
command -v mpirun >/dev/null || { echo "$0: no mpirun (apt-get install openmpi-bin)" >&2; exit 2; }
"$moe" --version | grep -q '^mpi: built with' || { echo "$0: $moe has no MPI (meson setup -Dmpi=enabled)" >&2; exit 2; }
mpirun=(mpirun --oversubscribe) # several processes per core here; as root Open MPI must be told that is fine
[ "$(id -u)" -eq 0 ] && mpirun+=(--allow-run-as-root)

# train_over N DIR REF OPT ARGS...: `moe train ARGS --out DIR` in one process (N = 1)
# or over N processes with OPT N (--data-parallel, --expert-parallel), summary in
# DIR.json; DIR's metrics.csv and model.safetensors must equal REF's (N > 1).
train_over() {
    local n=$1 d=$2 ref=$3 opt=$4 f
    shift 4
    if [ "$n" -eq 1 ]; then
        "$moe" train "$@" --out "$d" > "$d.json"
        return
    fi
    "${mpirun[@]}" -np "$n" "$moe" train "$@" --out "$d" "$opt" "$n" > "$d.json"
    for f in metrics.csv model.safetensors; do
        cmp -s "$ref/$f" "$d/$f" || { echo "$0: $d/$f differs from one process's" >&2; exit 1; }
    done
}
