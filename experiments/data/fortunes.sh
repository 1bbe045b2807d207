#!/usr/bin/env bash
# fortunes.sh: the English text corpus for the byte- and word-level language
# models: every fortune of the Debian package `fortunes` in one plain text file,
#   experiments/data/cache/fortunes/fortunes.txt
# the fortune files directly in /usr/share/games/fortunes/ concatenated in
# sorted (C locale) file-name order, without their "%" separator lines: entries
# are separated by exactly one blank line (blank lines at the start and end of an
# entry are dropped; blank lines inside one are kept).
# Skipped: the *.dat index files, the *.u8 symlinks and subdirectories (off/).
# Installs the package when the folder is missing (apt-get, as root).
# Idempotent: the same installed package gives the same bytes. Prints the
# output file with its byte count and sha256.
# Not a cleaner: overstrike sequences (backspace) and tabs stay as they are.
#
#   bash experiments/data/fortunes.sh
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
src=/usr/share/games/fortunes
out_dir=$root/experiments/data/cache/fortunes
out=$out_dir/fortunes.txt

die() { echo "fortunes.sh: $*" >&2; exit 2; }

for tool in awk sort find sha256sum wc; do
    command -v "$tool" >/dev/null 2>&1 || die "missing tool '$tool'"
done
if [ ! -d "$src" ]; then
    command -v apt-get >/dev/null 2>&1 || die "'$src' is missing and apt-get is not available (install the Debian package 'fortunes')"
    [ "$(id -u)" = 0 ] || die "'$src' is missing: run as root to install it, or apt-get install fortunes"
    echo "fortunes.sh: installing the Debian package 'fortunes'" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fortunes >/dev/null
    [ -d "$src" ] || die "'$src' still missing after installing 'fortunes'"
fi

files=()
while IFS= read -r -d '' f; do
    files+=("$f")
done < <(find "$src" -mindepth 1 -maxdepth 1 -type f ! -name '*.dat' ! -name '*.u8' -print0 | LC_ALL=C sort -z)
[ ${#files[@]} -gt 0 ] || die "no fortune files in '$src'"

mkdir -p "$out_dir"
tmp=$(mktemp "$out.XXXXXX")
trap 'rm -f "$tmp"' EXIT
# An entry ends at a "%" line or at the end of its file. Blank lines are held
# back and written only when more text of the same entry follows.
LC_ALL=C awk '
    FNR == 1 { held = 0; started = 0 }
    $0 == "%" { held = 0; started = 0; next }
    $0 == "" { if (started) held++; next }
    {
        if (!started) {
            if (entries) print ""
            entries++
            started = 1
        }
        for (; held > 0; held--) print ""
        print
    }
' "${files[@]}" >"$tmp"
mv "$tmp" "$out"
trap - EXIT

bytes=$(wc -c <"$out")
sum=$(sha256sum "$out" | cut -d' ' -f1)
echo "${out#"$root"/}: $bytes bytes, sha256 $sum (${#files[@]} files)"
