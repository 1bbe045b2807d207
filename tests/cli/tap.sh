# tap.sh: the check helpers the CLI test scripts share (sourced, not run).
# They print TAP-like lines: "ok N - name" / "not ok N - name" followed by "#"
# lines giving the reason. The caller sets TMP (a scratch directory) first, or
# calls tap_setup, and ends with: echo "1..$N"; exit with FAILED > 0.
# shellcheck shell=bash
N=0
FAILED=0
REASON=""

# tap_setup NAME ARGS...: the start every CLI test script shares. ARGS is the
# script's command line (the moe binary); sets MOE (absolute), TMP (a fresh
# directory, removed on exit, and the working directory from here on) and TO
# (a per-command time limit, so a hang fails one check instead of the suite).
# Bails out without jq.
# shellcheck disable=SC2034  # MOE and TO are for the calling script
tap_setup() {
    local name=$1
    shift
    if [ $# -lt 1 ]; then
        echo "usage: bash $0 /path/to/moe" >&2
        exit 2
    fi
    MOE=$1
    case $MOE in /*) ;; *) MOE=$PWD/$MOE ;; esac
    [ -x "$MOE" ] || { echo "Bail out! '$MOE' is not an executable"; exit 1; }
    command -v jq >/dev/null 2>&1 || { echo "Bail out! jq is required"; exit 1; }
    TMP=$(mktemp -d "${TMPDIR:-/tmp}/moe-$name.XXXXXX") || { echo "Bail out! mktemp failed"; exit 1; }
    trap 'rm -rf "$TMP"' EXIT
    trap 'exit 130' INT TERM
    cd "$TMP" || exit 1
    TO=()
    command -v timeout >/dev/null 2>&1 && TO=(timeout 120)
}

ok() { N=$((N + 1)); echo "ok $N - $1"; }
not_ok() {
    N=$((N + 1))
    FAILED=$((FAILED + 1))
    echo "not ok $N - $1"
    printf '%s\n' "$REASON" | sed 's/^/#   /'
}
# tap_wanted NAME: whether the check NAME runs. With TAP_ONLY (an extended
# regular expression) set, only the checks whose names match it run (check,
# expect_fail); the others are left out and not counted. tests/meson.build
# runs the device checks of test_cli.sh and test_lm.sh this way on the host
# emulation's binary (moe-cuda-host).
tap_wanted() { [ -z "${TAP_ONLY:-}" ] || [[ $1 =~ $TAP_ONLY ]]; }

# check NAME FUNC [ARGS...]: FUNC returns 0 on success, else sets REASON.
check() {
    local name=$1
    shift
    tap_wanted "$name" || return 0
    REASON=""
    if "$@"; then ok "$name"; else not_ok "$name"; fi
}
fail() { REASON=$*; return 1; }

# run OUTPREFIX cmd...: run a command capturing OUTPREFIX.out / OUTPREFIX.err;
# sets RC.
RC=0
run() {
    local p=$1
    shift
    "$@" >"$p.out" 2>"$p.err"
    RC=$?
}
# Describe a finished command for a failure reason.
describe() {
    local p=$1
    shift
    printf 'command: %s\nexit: %s\nstdout: %s\nstderr: %s' "$*" "$RC" \
        "$(head -c 600 "$p.out")" "$(head -c 1200 "$p.err")"
}

# expect_fail NAME CODE FRAGMENT... -- CMD...
# CMD must exit with CODE, print nothing on stdout and exactly one line on
# stderr containing every FRAGMENT (fixed strings; a fragment written
# "re:EXPR" is an extended regular expression instead).
EF=0
expect_fail() {
    local name=$1 code=$2
    shift 2
    tap_wanted "$name" || return 0
    local frags=()
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do
        frags+=("$1")
        shift
    done
    [ $# -gt 0 ] && shift
    EF=$((EF + 1))
    local p="$TMP/ef$EF"
    run "$p" "$@"
    local why=()
    [ "$RC" -eq "$code" ] || why+=("expected exit $code, got $RC")
    [ ! -s "$p.out" ] || why+=("stdout is not empty")
    local lines
    lines=$(awk 'END { print NR }' "$p.err")
    [ "$lines" -eq 1 ] || why+=("expected exactly 1 line on stderr, got $lines")
    local f
    for f in "${frags[@]}"; do
        case $f in
        re:*) grep -Eq -- "${f#re:}" "$p.err" || why+=("stderr lacks /${f#re:}/") ;;
        *) grep -Fq -- "$f" "$p.err" || why+=("stderr lacks '$f'") ;;
        esac
    done
    if [ ${#why[@]} -eq 0 ]; then
        ok "$name"
    else
        REASON="$(printf '%s; ' "${why[@]}")"$'\n'"$(describe "$p" "$@")"
        not_ok "$name"
    fi
}

# ran OUT: the last `run` (of a command writing OUT) exited 0, else fail describing it.
ran() { [ "$RC" -eq 0 ] || { fail "$(describe "$1" "moe ... --out $1")"; return 1; }; }
# jqe FILE PROGRAM WHAT [SHOW]: jq -e PROGRAM on FILE, else fail with WHAT and
# FILE's SHOW part (jq path, default the whole file).
jqe() { jq -e "$2" "$1" >/dev/null 2>&1 || { fail "$3 (jq '$2' on $1: $(jq -c "${4:-.}" "$1" 2>&1 | head -c 800))"; return 1; }; }

# ---- safetensors files (the checkpoint format)
# st_header FILE: the JSON header of a safetensors file.
st_header() {
    local len
    len=$(od -An -t u8 -N 8 "$1" | tr -d ' ')
    [ -n "$len" ] || return 1
    dd if="$1" bs=4096 iflag=skip_bytes,count_bytes skip=8 count="$len" 2>/dev/null
}
# st_digests FILE: "name<TAB>md5 of the tensor's bytes" per tensor, sorted by name.
st_digests() {
    local f=$1 len name a b
    len=$(od -An -t u8 -N 8 "$f" | tr -d ' ')
    st_header "$f" | jq -r 'to_entries[] | select(.key != "__metadata__") | "\(.key) \(.value.data_offsets[0]) \(.value.data_offsets[1])"' |
        while read -r name a b; do
            printf '%s\t%s\n' "$name" "$(dd if="$f" bs=4096 iflag=skip_bytes,count_bytes skip=$((8 + len + a)) count=$((b - a)) 2>/dev/null | md5sum | cut -c1-32)"
        done | sort
}

# ---- run directories (tests/cli/test_cuda_host.sh, test_cuda_sim.sh)
# mo OUT ARGS...: $MOE ARGS --out OUT --quiet, under the time limit TO.
mo() {
    local out=$1
    shift
    run "$out" "${TO[@]}" "$MOE" "$@" --out "$out" --quiet
}
# same_run A B FILE...: the files are byte-identical in both run directories;
# checkpoints compared by their tensors (their metadata holds the wall time).
same_run() {
    local a=$1 b=$2 f
    shift 2
    for f in "$@"; do
        case $f in
        *.safetensors)
            [ -s "$a/$f" ] && cmp -s <(st_digests "$a/$f") <(st_digests "$b/$f") ||
                { fail "$a/$f and $b/$f: tensors differ: $(diff <(st_digests "$a/$f") <(st_digests "$b/$f") | head -4)"; return 1; } ;;
        *) [ -s "$a/$f" ] && cmp -s "$a/$f" "$b/$f" || { fail "$a/$f and $b/$f differ (or are missing)"; return 1; } ;;
        esac
    done
}
# have DIR: an earlier run finished in DIR (its model written), else fail.
have() { [ -s "$1/model.safetensors" ] || fail "the run in $1 did not finish: $(head -3 "$1.err" 2>/dev/null)"; }
# ckpt_step CKPT: the step a checkpoint was written at (its train.step).
ckpt_step() { st_header "$1" | jq -r '.__metadata__["train.step"]'; }

# same_json A B: two JSON files hold the same value (jq -S); writes A.s and B.s.
same_json() {
    jq -S . "$1" >"$1.s" 2>/dev/null && jq -S . "$2" >"$2.s" 2>/dev/null || { fail "not JSON: $1 or $2"; return 1; }
    cmp -s "$1.s" "$2.s" || fail "differ: $(diff "$1.s" "$2.s" | head -20)"
}
