#!/usr/bin/env bash
# fuzz.sh: build the libFuzzer harnesses of tests/fuzz/ with clang
# (-fsanitize=fuzzer,address,undefined) into build-fuzz/ and run each one for
# a fixed time, printing TAP.
#
#   bash scripts/fuzz.sh [--time SECONDS] [--jobs N] [NAME...]
#   bash scripts/fuzz.sh --build-only
#   bash scripts/fuzz.sh --gen-corpus      # rewrite the binary seeds (gen_corpus.c,
#                                          # and checkpoint/gen.sh with build/cmd/moe)
#
# NAME is a harness name (config, safetensors, checkpoint, ...: fuzz_NAME.c in
# tests/fuzz/); none = every harness. --time is the run time of each harness
# (default 20 s); --jobs runs N harnesses at once (default 1), each one a
# single libFuzzer process. Output: one line per harness,
#   ok N - fuzz_NAME: EXECS execs in S s
#   not ok N - fuzz_NAME: WHAT after EXECS execs
# followed on failure by '#' lines naming the reproducer and how to replay it,
# then a final "1..N". Exit status 1 when any harness failed (crash, leak,
# undefined behaviour, timeout of one input, out of memory, broken harness check).
#
# Each run fuzzes a scratch copy of tests/fuzz/corpus/NAME/ under
# build-fuzz/run/NAME/ (the committed corpus never grows), with the harness's
# dictionary tests/fuzz/NAME.dict when there is one, -max_len from the
# harness's "// fuzz-max-len: N" line (default 4096), -timeout=10,
# -rss_limit_mb=2048 and leak detection on. Reproducers are kept in
# build-fuzz/artifacts/NAME/; replay one with `build-fuzz/fuzz_NAME FILE`.
#
# The library sources the parsers need (lib/core and lib/io, less the BLIS
# wrapper gemm.c and the SLEEF wrapper vmath.c) are compiled directly
# with clang into build-fuzz/libmoe-fuzz.a and linked with -lcjson -lcsv -lz
# -lm: no BLIS, no OpenMP. A harness with the line "// fuzz-lib: full" links
# the whole library instead (every lib/*/*.c, gemm.c and the OpenMP pragmas
# included): build-fuzz/libmoe-fuzz-full.a, compiled and linked with -fopenmp
# (clang's libomp: Debian libomp-dev) and -lblis. Harnesses are run with
# MOE_FUZZ_ROOT set to the repository root (for files they read at start-up).
# Installs nothing: without clang it bails out.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
root=$PWD

time_s=20
jobs=1
build_only=0
gen_corpus=0
names=()
usage() { echo "usage: bash scripts/fuzz.sh [--time SECONDS] [--jobs N] [--build-only] [--gen-corpus] [NAME...]" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --time) [ $# -ge 2 ] || usage; time_s=$2; shift 2 ;;
        --time=*) time_s=${1#--time=}; shift ;;
        --jobs) [ $# -ge 2 ] || usage; jobs=$2; shift 2 ;;
        --jobs=*) jobs=${1#--jobs=}; shift ;;
        --build-only) build_only=1; shift ;;
        --gen-corpus) gen_corpus=1; shift ;;
        -h|--help) sed -n '2,36p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) usage ;;
        *) names+=("${1#fuzz_}"); shift ;;
    esac
done
[[ $time_s =~ ^[0-9]+$ && $time_s -ge 1 ]] || { echo "fuzz.sh: --time must be a positive integer, got '$time_s'" >&2; exit 2; }
[[ $jobs =~ ^[0-9]+$ && $jobs -ge 1 ]] || { echo "fuzz.sh: --jobs must be a positive integer, got '$jobs'" >&2; exit 2; }

if ! command -v clang >/dev/null 2>&1; then
    echo "Bail out! clang not found (apt-get install clang)"
    exit 1
fi

out=build-fuzz
mkdir -p "$out/obj" "$out/run" "$out/artifacts" || exit 1

# ---- build ----
lib_srcs=()
for f in lib/core/*.c lib/io/*.c; do
    # the BLIS wrapper and the SLEEF wrappers belong to the full library only
    case $f in lib/core/gemm.c | lib/core/vmath.c) continue ;; esac
    lib_srcs+=("$f")
done
full_srcs=()
for f in lib/*/*.c; do
    # built without MPI (and without CUDA, whose sources are .cu): lib/dist/mpi.c is for -Dmpi builds only
    [ "$f" = lib/dist/mpi.c ] || full_srcs+=("$f")
done
harness_srcs=(tests/fuzz/fuzz_*.c)
[ -e "${harness_srcs[0]}" ] || { echo "Bail out! no harness in tests/fuzz/"; exit 1; }
# Does a harness link the whole library ("// fuzz-lib: full")?
wants_full() { grep -q '^// fuzz-lib: *full *$' "$1"; }
need_full=0
for src in "${harness_srcs[@]}"; do
    wants_full "$src" && need_full=1
done

common=(-std=c11 -D_GNU_SOURCE -g -O1 -fno-omit-frame-pointer -Wall -Wextra -Ilib -Itests/fuzz)
# shellcheck disable=SC2054 # the commas belong to one clang flag
san=(-fsanitize=address,undefined -fno-sanitize-recover=undefined)
libs=(-lcjson -lcsv -lz -lm)
full_libs=(-fopenmp -lblis -lsleef)

# Rebuild only when a source, a header, a flag or the compiler changed.
stamp=$( { clang --version; echo "${common[*]} ${san[*]} ${libs[*]} ${full_libs[*]} $need_full"; \
           cat lib/*/*.h lib/*/*.c tests/fuzz/*.c tests/fuzz/*.h; } \
         | sha256sum | cut -d' ' -f1)
if [ "$(cat "$out/stamp" 2>/dev/null)" != "$stamp" ]; then
    rm -f "$out/stamp" "$out"/obj/*.o "$out"/obj-full/*.o "$out/libmoe-fuzz.a" "$out/libmoe-fuzz-full.a"
    log="$out/build.log"
    : >"$log"
    # libFuzzer itself comes with clang's runtime package (only recommended by clang on Debian).
    printf '#include <stddef.h>\n#include <stdint.h>\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }\n' \
        >"$out/probe.c"
    if ! clang "${san[@]}" -fsanitize=fuzzer "$out/probe.c" -o "$out/probe" >>"$log" 2>&1; then
        echo "Bail out! clang cannot link -fsanitize=fuzzer (apt-get install libclang-rt-14-dev)"
        exit 1
    fi
    if [ "$need_full" = 1 ]; then
        printf '#include <omp.h>\n#include <blis.h>\nint main(void) { return omp_get_max_threads() < 1; }\n' >"$out/probe.c"
        if ! clang -fopenmp "$out/probe.c" -lblis -o "$out/probe" >>"$log" 2>&1; then
            echo "Bail out! clang cannot build with -fopenmp and BLIS (apt-get install libomp-dev libblis-openmp-dev)"
            exit 1
        fi
        rm -f "$out/probe" "$out/probe.c"
    fi
    # compile_lib OBJDIR [FLAG...]: compile the sources named on stdin into
    # OBJDIR, at most two compilers at once (shared 2-core machine).
    compile_lib() {
        local objdir=$1
        shift
        mkdir -p "$objdir" || return 1
        # shellcheck disable=SC2016 # $o and $@ expand in the inner shell
        xargs -P 2 -I{} sh -c \
            'o='"$objdir"'/$(echo "{}" | tr / _ | sed "s/\.c$/.o/"); exec clang "$@" -fsanitize=fuzzer-no-link -c "{}" -o "$o"' \
            sh "${common[@]}" "${san[@]}" "$@"
    }
    printf '%s\n' "${lib_srcs[@]}" | compile_lib "$out/obj" >>"$log" 2>&1 \
        || { echo "Bail out! building the library failed (see $log)"; tail -20 "$log" | sed 's/^/# /'; exit 1; }
    ar rcs "$out/libmoe-fuzz.a" "$out"/obj/*.o || { echo "Bail out! ar failed"; exit 1; }
    if [ "$need_full" = 1 ]; then
        # (-Wno-pass-failed: ASan keeps the `omp simd` loops of attention.c scalar)
        printf '%s\n' "${full_srcs[@]}" | compile_lib "$out/obj-full" -fopenmp -Wno-pass-failed >>"$log" 2>&1 \
            || { echo "Bail out! building the full library failed (see $log)"; tail -20 "$log" | sed 's/^/# /'; exit 1; }
        ar rcs "$out/libmoe-fuzz-full.a" "$out"/obj-full/*.o || { echo "Bail out! ar failed"; exit 1; }
    fi
    for src in "${harness_srcs[@]}"; do
        bin=$out/$(basename "$src" .c)
        if wants_full "$src"; then
            link=("$out/libmoe-fuzz-full.a" "${libs[@]}" "${full_libs[@]}")
        else
            link=("$out/libmoe-fuzz.a" "${libs[@]}")
        fi
        clang "${common[@]}" "${san[@]}" -fsanitize=fuzzer "$src" "${link[@]}" -o "$bin" \
            >>"$log" 2>&1 || { echo "Bail out! building $src failed (see $log)"; tail -20 "$log" | sed 's/^/# /'; exit 1; }
    done
    echo "$stamp" >"$out/stamp"
fi

if [ "$gen_corpus" = 1 ]; then
    clang "${common[@]}" tests/fuzz/gen_corpus.c "${lib_srcs[@]}" "${libs[@]}" -o "$out/gen_corpus" \
        || { echo "fuzz.sh: building gen_corpus failed" >&2; exit 1; }
    mkdir -p tests/fuzz/corpus/safetensors tests/fuzz/corpus/idx
    "$out/gen_corpus" tests/fuzz/corpus || exit 1
    echo "fuzz.sh: wrote tests/fuzz/corpus/safetensors and tests/fuzz/corpus/idx"
    # Training checkpoints come from the real binary (meson build in build/).
    if [ -x build/cmd/moe ]; then
        bash tests/fuzz/checkpoint/gen.sh build/cmd/moe || exit 1
    else
        echo "fuzz.sh: no build/cmd/moe: tests/fuzz/corpus/checkpoint not rewritten (ninja -C build, then again)"
    fi
    exit 0
fi
[ "$build_only" = 1 ] && { echo "fuzz.sh: harnesses built in $out/"; exit 0; }

# ---- which harnesses ----
all=()
for src in "${harness_srcs[@]}"; do
    n=$(basename "$src" .c)
    all+=("${n#fuzz_}")
done
if [ ${#names[@]} -eq 0 ]; then
    names=("${all[@]}")
else
    for n in "${names[@]}"; do
        [ -f "tests/fuzz/fuzz_$n.c" ] || { echo "fuzz.sh: no harness '$n' (have: ${all[*]})" >&2; exit 2; }
    done
fi

# Files the harnesses write (checkpoint round trips) go to memory when possible.
tmp_parent=/dev/shm
[ -d "$tmp_parent" ] && [ -w "$tmp_parent" ] || tmp_parent=${TMPDIR:-/tmp}
scratch_tmp=$(mktemp -d "$tmp_parent/moe-fuzz.XXXXXX") || exit 1
trap 'rm -rf "$scratch_tmp"' EXIT

# ---- run one harness: writes $dir/result ("ok|not ok<TAB>text") and # lines to $dir/notes ----
run_one() {
    local name=$1 dir=$root/$out/run/$1
    local bin=$root/$out/fuzz_$name art=$root/$out/artifacts/$name/
    rm -rf "$dir"
    mkdir -p "$dir/corpus" "$art"
    [ -d "tests/fuzz/corpus/$name" ] && cp -R "tests/fuzz/corpus/$name/." "$dir/corpus/"
    local max_len
    max_len=$(sed -n 's|^// fuzz-max-len: *\([0-9][0-9]*\).*|\1|p' "tests/fuzz/fuzz_$name.c" | head -1)
    local opts=(-max_total_time="$time_s" -timeout=10 -rss_limit_mb=2048 -max_len="${max_len:-4096}"
                -detect_leaks=1 -print_final_stats=1 -artifact_prefix="$art")
    [ -f "tests/fuzz/$name.dict" ] && opts+=(-dict="$root/tests/fuzz/$name.dict")
    local before
    before=$(ls "$art" 2>/dev/null | wc -l)
    # The outer timeout only guards against a wedged fuzzer; libFuzzer stops itself.
    (cd "$dir" && MOE_FUZZ_TMP=$scratch_tmp MOE_FUZZ_ROOT=$root UBSAN_OPTIONS=print_stacktrace=1 \
        timeout -k 10 $((time_s + 300)) nice -n 10 "$bin" "${opts[@]}" corpus >"$dir/log" 2>&1)
    local rc=$?
    local execs secs
    read -r execs secs < <(sed -n 's/^Done \([0-9][0-9]*\) runs in \([0-9][0-9]*\) second.*/\1 \2/p' "$dir/log" | tail -1)
    if [ $rc -eq 0 ] && [ -n "${execs:-}" ]; then
        : >"$dir/notes"
        printf 'ok\t%s execs in %s s\n' "$execs" "$secs" >"$dir/result.tmp"
        mv "$dir/result.tmp" "$dir/result"
        return
    fi
    # What went wrong: the first sanitizer / libFuzzer / harness-check line.
    local what n
    what=$(grep -m1 -E 'ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:|fuzz check failed' "$dir/log" \
           | sed -e 's/^==[0-9]*==//' -e 's/^[^:]*[0-9]:[0-9]*: runtime error/runtime error/' | sed "s/^[[:space:]]*//" | cut -c1-160)
    [ -n "$what" ] || what="exit status $rc"
    [ $rc -eq 124 ] || [ $rc -eq 137 ] && what="killed by the outer timeout"
    n=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$dir/log" | tail -1)
    [ -n "$n" ] || n=$(sed -n 's/^#\([0-9][0-9]*\).*/\1/p' "$dir/log" | tail -1)
    {
        local repro
        repro=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$dir/log" | tail -1)
        if [ -n "$repro" ]; then
            echo "# reproducer: ${repro#"$root"/}"
            echo "# replay: $out/fuzz_$name ${repro#"$root"/}"
        elif [ "$(ls "$art" | wc -l)" -gt "$before" ]; then
            echo "# reproducer: $(ls -t "$art" | head -1 | sed "s|^|${art#"$root"/}|")"
        fi
        grep -m1 '^SUMMARY:' "$dir/log" | sed 's/^/# /'
        echo "# log: ${dir#"$root"/}/log"
    } >"$dir/notes"
    printf 'not ok\t%s after %s execs\n' "$what" "${n:-?}" >"$dir/result.tmp"
    mv "$dir/result.tmp" "$dir/result"
}

# ---- run, at most $jobs at once; print results in order as they complete ----
count=${#names[@]}
next_print=0
failed=0
print_ready() {
    while [ "$next_print" -lt "$count" ]; do
        local name=${names[$next_print]} dir=$out/run/${names[$next_print]}
        [ -f "$dir/result" ] || return
        local status text
        IFS=$'\t' read -r status text <"$dir/result"
        echo "$status $((next_print + 1)) - fuzz_$name: $text"
        cat "$dir/notes"
        [ "$status" = ok ] || failed=1
        next_print=$((next_print + 1))
    done
}
for ((i = 0; i < count; i++)); do
    rm -f "$out/run/${names[$i]}/result"
done
for ((i = 0; i < count; i++)); do
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do
        sleep 1
        print_ready
    done
    run_one "${names[$i]}" &
done
wait
print_ready
echo "1..$count"
exit $failed
