# tap.sh: the check helpers the CLI test scripts share (sourced, not run).
# They print TAP-like lines: "ok N - name" / "not ok N - name" followed by "#"
# lines giving the reason. The caller sets TMP (a scratch directory) first and
# ends with: echo "1..$N"; exit with FAILED > 0.
# shellcheck shell=bash
N=0
FAILED=0
REASON=""

ok() { N=$((N + 1)); echo "ok $N - $1"; }
not_ok() {
    N=$((N + 1))
    FAILED=$((FAILED + 1))
    echo "not ok $N - $1"
    printf '%s\n' "$REASON" | sed 's/^/#   /'
}
# check NAME FUNC [ARGS...]: FUNC returns 0 on success, else sets REASON.
check() {
    local name=$1
    shift
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
