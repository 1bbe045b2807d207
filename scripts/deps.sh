#!/usr/bin/env bash
# Install the Debian packages moe needs, only those missing (run by the other
# scripts; safe to run by itself). Uses sudo when not root. Extra package names
# given as arguments are installed too (CI: clang libclang-rt-14-dev valgrind
# for scripts/fuzz.sh and scripts/valgrind.sh).
set -euo pipefail
moe_packages=(meson ninja-build gcc pkg-config libblis-openmp-dev libsleef-dev libcjson-dev libcsv-dev check zlib1g-dev jq
              dataset-fashion-mnist time "$@")
missing=()
for p in "${moe_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    echo "installing: ${missing[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
