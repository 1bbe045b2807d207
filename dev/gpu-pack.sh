#!/usr/bin/env bash
# dev/gpu-pack.sh: run here, on the build machine (no GPU needed), before a session's one call to the device
# machine. That machine starts bare: CUDA's toolkit, driver and cuBLAS, but no BLIS, SLEEF, cJSON, libcsv or jq,
# and nothing can be installed there. This makes .gpu/ (ignored by git) with what dev/gpu-check.sh needs:
#   .gpu/cmd/moe, .gpu/tests/test_cuda_{device,ops,layer,model}   from a CUDA build without MPI (BUILD,
#                                                                  default build-cuda, set up here if missing)
#   .gpu/lib/   every shared library they and jq load, except the C and C++ runtimes (the device machine's
#               are newer) and cuBLAS (dlopen'ed from the device machine's CUDA; too large to carry)
#   .gpu/bin/jq the CLI tests read JSON with it
# Then, with the device tool:  run(command="bash dev/gpu-check.sh", carry=[".gpu"], timeout_s=...)
# Prints the size of .gpu/ (the working tree and what is carried travel within 64 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
b=${BUILD:-build-cuda}
[ -f "$b/build.ninja" ] || meson setup "$b" --buildtype=release -Dcuda=enabled -Dmpi=disabled >/dev/null
ninja -C "$b" >/dev/null
rm -rf .gpu
mkdir -p .gpu/cmd .gpu/tests .gpu/lib .gpu/bin
cp "$b/cmd/moe" .gpu/cmd/
for t in cuda_device cuda_ops cuda_layer cuda_model; do
    cp "$b/tests/test_$t" .gpu/tests/
done
cp "$(command -v jq)" .gpu/bin/
for f in .gpu/cmd/moe .gpu/tests/* .gpu/bin/jq; do
    ldd "$f"
done | awk '$3 ~ /^\// { print $3 }' | sort -u | while read -r lib; do
    case "${lib##*/}" in
    libc.so.* | libm.so.* | libpthread.so.* | libdl.so.* | librt.so.* | libstdc++.so.* | libgcc_s.so.* | ld-linux*) ;;
    *) cp -L "$lib" .gpu/lib/ ;;
    esac
done
"$b/cmd/moe" --version | sed -n '1,2p'
echo ".gpu: $(du -sh .gpu | cut -f1) ($(ls .gpu/lib | tr '\n' ' '))"
echo "working tree: $(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1) bytes tracked"
