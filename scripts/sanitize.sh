#!/usr/bin/env bash
# sanitize.sh: build the toolkit with AddressSanitizer + UndefinedBehaviorSanitizer
# in build-san/ and run the whole test suite there (unit tests and CLI tests);
# the last line is "N passed, N failed", as for scripts/test.sh. Exit status is
# meson test's: non-zero if any test failed.
#
#   bash scripts/sanitize.sh
#
# Every finding is fatal: ASan aborts on the first error, LeakSanitizer runs at
# exit of every process (every unit test, every `moe` call of the CLI test),
# and UBSan is compiled with -fno-sanitize-recover=all, so a report aborts the
# process and the test fails (halt_on_error=1 says the same at run time, for a
# binary built without the flag). Suppressions cover only reports from inside
# system libraries (libgomp, BLIS), never our code: see scripts/lsan.supp and
# scripts/ubsan.supp.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
root=$PWD
bash scripts/deps.sh || exit 1

if [ ! -f build-san/build.ninja ]; then
    # -O1, as AddressSanitizer's documentation advises: a fifth less time than
    # -O0 for the whole suite (344 s against 426 s on 2 cores), and it still
    # sees every access of the kernels (a row softmax planted to read one float
    # past its row fails test_kernels, test_cuda_ops_host and test_cuda_ops_sim).
    # Frame pointers and no sibling calls give the fast unwinder full stacks.
    # -Dcuda=disabled: nvcc's objects are not instrumented anyway (the CUDA
    # code runs instrumented here in the simulator and the host emulation,
    # tests/cuda_sim and tests/cuda_host.c, built in every configuration), so
    # this build is the one CI runs without the CUDA backend: the plain build a
    # machine without nvcc gets, with its refusals of --device cuda.
    meson setup build-san -Db_sanitize=address,undefined -Db_lundef=false -Doptimization=1 -Ddebug=true -Dcuda=disabled \
        -Dc_args='-fno-sanitize-recover=all -fno-omit-frame-pointer -fno-optimize-sibling-calls' >/dev/null || exit 1
fi
ninja -C build-san -j 2 >/dev/null || { ninja -C build-san -j 2; exit 1; }

# abort_on_error=1: a finding kills the process with SIGABRT (exit 134). The
# sanitizers' default is to exit 1, which is also moe's "runtime failure" code,
# so a CLI test expecting exit 1 from a bad input could not tell the two apart.
export ASAN_OPTIONS="halt_on_error=1:abort_on_error=1:detect_leaks=1:print_summary=1:detect_stack_use_after_return=1:strict_string_checks=1"
export LSAN_OPTIONS="suppressions=$root/scripts/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="halt_on_error=1:abort_on_error=1:print_stacktrace=1:print_summary=1:suppressions=$root/scripts/ubsan.supp"
# The ASan build runs the numeric kernels several times slower.
meson test -C build-san --print-errorlogs --timeout-multiplier 4
status=$?
passed=0 failed=1 skipped=0 skipped_names=-
read -r passed failed skipped skipped_names < <(bash scripts/count-tests.sh build-san/meson-logs/testlog.json)
[ "${skipped:-0}" -eq 0 ] || echo "$skipped skipped (exit 77, e.g. no usable GPU; not counted): $skipped_names"
echo "$passed passed, $failed failed"
exit $status
