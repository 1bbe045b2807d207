#!/usr/bin/env bash
# test_mpi.sh: what a build says about MPI (lib/dist/dist.h). `moe --version`
# has one "mpi:" line: "built with LIBRARY (MPI a.b)" in a build that links an
# MPI library (meson -Dmpi), else "this build has no MPI (how to get it)".
# --expert-parallel N and --data-parallel N are refused with one line, exit 2,
# nothing written: the line names the library in an MPI build and says how to
# build one otherwise (training over MPI processes does not exist yet). Bad
# values of N are rows of bad_inputs.tsv (cli_*_parallel_*).
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

refused() { # refused OPTION: one line, exit 2, naming this build's MPI state; no --out written
    local opt=$1
    run r "$MOE" train --config m.json --out "out$opt" "$opt" 2
    [ "$RC" -eq 2 ] || { fail "exit $RC"; return 1; }
    [ "$(wc -l <r.err)" -eq 1 ] && [ ! -s r.out ] || { fail "stderr/stdout: $(cat r.err r.out)"; return 1; }
    [ ! -e "out$opt" ] || { fail "out$opt was created"; return 1; }
    if [[ $MPI_LINE == "mpi: built with "* ]]; then
        local lib=${MPI_LINE#mpi: built with }
        lib=${lib% (MPI *}
        grep -qF "option '$opt' cannot be used: training over MPI processes is not implemented yet (this build has $lib)" r.err ||
            fail "message: $(cat r.err)"
    else
        grep -qF "option '$opt' cannot be used: this build has no MPI" r.err || fail "message: $(cat r.err)"
    fi
}
check "--expert-parallel 2: one line, exit 2, nothing written" refused --expert-parallel
check "--data-parallel 2: one line, exit 2, nothing written" refused --data-parallel

echo "1..$N"
[ "$FAILED" -eq 0 ]
