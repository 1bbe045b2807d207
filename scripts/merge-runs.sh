#!/usr/bin/env bash
# merge-runs.sh: one CSV from the same table of many run directories.
#
#   bash scripts/merge-runs.sh [--file NAME] DIR...     (default NAME: metrics.csv)
#
# Prints DIR1/NAME's header once, then the rows of every DIR/NAME in the order
# given. Every header must equal the first one byte for byte (runs with the same
# --tag keys, of the same command, write the same header): a mismatch is one
# line on stderr naming both files, exit 1, and nothing on stdout. A missing or
# unreadable file: exit 1; usage errors: exit 2. Rows are copied as they are
# (moe's tables are one line per row: tag values hold no line breaks).
set -euo pipefail
me=merge-runs.sh
name=metrics.csv
usage() { echo "$me: $1 (usage: merge-runs.sh [--file NAME] DIR...)" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case $1 in
    --file) [ $# -ge 2 ] && [ -n "$2" ] || usage "option '--file' needs a value"; name=$2; shift 2 ;;
    --file=*) name=${1#--file=}; [ -n "$name" ] || usage "option '--file' needs a value"; shift ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --) shift; break ;;
    -*) usage "unknown option '$1'" ;;
    *) break ;;
    esac
done
[ $# -ge 1 ] || usage "no run directory given"
first=
header=
for d in "$@"; do
    f=$d/$name
    [ -f "$f" ] && [ -r "$f" ] || { echo "$me: cannot read '$f'" >&2; exit 1; }
    h=$(head -n 1 "$f")
    if [ -z "$first" ]; then
        first=$f
        header=$h
    elif [ "$h" != "$header" ]; then
        echo "$me: the header of '$f' differs from that of '$first' ('$h' vs '$header')" >&2
        exit 1
    fi
done
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
printf '%s\n' "$header" > "$tmp"
for d in "$@"; do
    tail -n +2 "$d/$name" >> "$tmp"
done
cat "$tmp"
