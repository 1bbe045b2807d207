#!/usr/bin/env bash
# test_install.sh: `meson install` of the current build directory, into a
# scratch DESTDIR, gives a usable library, manual page and bash completion.
#
#   bash tests/cli/test_install.sh /path/to/moe
#
# tests/meson.build runs it with the build's install layout in the environment:
# MOE_BUILD_ROOT (the build directory), MOE_CC (its C compiler), MOE_SANITIZE
# (b_sanitize: the tiny program is built with the same sanitizers as libmoe),
# MOE_PREFIX, MOE_LIBDIR, MOE_INCLUDEDIR, MOE_MANDIR, MOE_DATADIR (absolute).
# TAP-like output as test_cli.sh (tap.sh). Checks: what is installed where
# (libmoe.a, libmoe.so, moe.pc, every public header, moe.1, the completion);
# a tiny C program built through `pkg-config --cflags --libs --static moe`
# against the installed libmoe.a, and one against libmoe.so, that use the public
# API (status names, the Philox RNG, a config parsed with the run schema, an
# mlp-moe model created and initialised); the manual page renders without
# warnings and names every command and option `moe help` prints; the bash
# completion completes commands, options, option values and config keys; and
# `moe help keys` lists exactly the keys of `moe help config`. About 3 s.
# shellcheck disable=SC2317  # check functions are called indirectly, via check
set -u
export LC_ALL=C
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

# shellcheck source=tap.sh
. "$HERE/tap.sh"
tap_setup install "$@"

for v in MOE_BUILD_ROOT MOE_CC MOE_PREFIX MOE_LIBDIR MOE_INCLUDEDIR MOE_MANDIR MOE_DATADIR; do
    [ -n "${!v:-}" ] || { echo "Bail out! $v is not set (run this test through meson test)"; exit 1; }
done
command -v pkg-config >/dev/null 2>&1 || { echo "Bail out! pkg-config is required (Debian package pkg-config)"; exit 1; }

DEST=$TMP/dest
P=$DEST$MOE_PREFIX
LIB=$DEST$MOE_LIBDIR
INC=$DEST$MOE_INCLUDEDIR/moe
MAN1=$DEST$MOE_MANDIR/man1/moe.1
COMPL=$DEST$MOE_DATADIR/bash-completion/completions/moe
# the installed moe.pc, its prefix moved into DESTDIR
pc() { PKG_CONFIG_PATH=$LIB/pkgconfig pkg-config --define-variable=prefix="$P" "$@"; }
SAN=()
[ -n "${MOE_SANITIZE:-}" ] && [ "$MOE_SANITIZE" != none ] && SAN=("-fsanitize=$MOE_SANITIZE" -fno-omit-frame-pointer)

# ------------------------------------------------------------------ install
t_install() {
    run "$TMP/inst" meson install -C "$MOE_BUILD_ROOT" --no-rebuild --destdir "$DEST"
    [ "$RC" -eq 0 ] || fail "$(describe "$TMP/inst" meson install -C "$MOE_BUILD_ROOT" --no-rebuild --destdir "$DEST")" || return 1
    local f missing=()
    for f in "$P/bin/moe" "$LIB/libmoe.a" "$LIB/libmoe.so" "$LIB/pkgconfig/moe.pc" "$INC/core/status.h" "$MAN1" "$COMPL"; do
        [ -f "$f" ] || missing+=("${f#"$DEST"}")
    done
    # with MPI built in, the launcher that turns SIGTERM into moe's stop request
    if "$MOE" --version | grep -q '^mpi: built with '; then
        [ -x "$P/bin/moe-mpirun" ] || missing+=("${P#"$DEST"}/bin/moe-mpirun (executable)")
    fi
    [ ${#missing[@]} -eq 0 ] || fail "not installed: ${missing[*]}"
}
check "meson install --destdir: moe, libmoe.a, libmoe.so, moe.pc, headers, moe.1, completion (and moe-mpirun with MPI)" t_install

t_headers() {
    local want have
    want=$(cd "$ROOT/lib" && find . -name '*.h' -not -path './cuda/*' | sed 's|^\./||' | sort)
    have=$(cd "$INC" 2>/dev/null && find . -name '*.h' | sed 's|^\./||' | sort)
    [ "$want" = "$have" ] || fail "installed headers differ from lib/**/*.h without lib/cuda/ (add new headers to install_headers in lib/meson.build): $(diff <(echo "$want") <(echo "$have") | grep '^[<>]' | tr '\n' ' ')"
}
check "every public header lib/**/*.h (not lib/cuda/) is installed under include/moe/, same folders" t_headers

cat >"$TMP/tiny.c" <<'EOF'
#include <stdio.h>
#include <string.h>

#include <core/rng.h>
#include <core/status.h>
#include <io/config.h>
#include <io/dataset.h>
#include <model/model.h>
#include <train/train.h>

int main(void)
{
    struct moe_rng r = moe_rng_make(7, MOE_RNG_DATA, 0);
    uint32_t a = moe_rng_u32(&r, 3), b = moe_rng_u32(&r, 3);
    printf("%s|%s|%d\n", moe_status_name(MOE_OK), moe_status_name(MOE_ECONFIG), a == b);
    struct moe_config cfg;
    struct moe_err err;
    const char *json = "{\"model\": {\"type\": \"mlp-moe\"}}";
    if (moe_config_parse(&cfg, moe_run_schema(), moe_run_schema_len(), json, "tiny", NULL, 0, &err) != 0) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    struct moe_model m;
    if (moe_model_create(&m, &cfg, NULL, MOE_TASK_CLASSIFICATION, 4, 3, 8, &err) != 0) {
        fprintf(stderr, "%s\n", err.msg);
        moe_config_release(&cfg);
        return 1;
    }
    moe_model_init_weights(&m, 1);
    printf("%s %zu\n", m.ops->type, moe_params_count(&m.params) > 0 ? (size_t)1 : (size_t)0);
    moe_model_release(&m);
    moe_config_release(&cfg);
    return 0;
}
EOF
TINY_OUT=$'ok|config error|1\nmlp-moe 1'

t_pc() {
    local cflags
    cflags=$(pc --cflags moe 2>&1) || { fail "pkg-config --cflags moe: $cflags"; return 1; }
    case " $cflags " in *" -I$INC "*) ;; *) fail "pkg-config --cflags moe gives '$cflags', not -I$INC"; return 1 ;; esac
    [ "$(pc --modversion moe)" = "$("$MOE" --version | awk 'NR == 1 { print $2 }')" ] ||
        fail "moe.pc version $(pc --modversion moe) is not moe --version's"
}
check "pkg-config --cflags moe: -I<includedir>/moe; the version of moe --version" t_pc

# the static link: moe.pc's --static libs, with -lmoe as the installed libmoe.a
t_static() {
    local cflags libs l args=()
    cflags=$(pc --cflags moe) && libs=$(pc --libs --static moe) || { fail "pkg-config --libs --static moe failed"; return 1; }
    # shellcheck disable=SC2086  # pkg-config's words
    for l in $libs; do
        [ "$l" = -lmoe ] && l=$LIB/libmoe.a
        args+=("$l")
    done
    # shellcheck disable=SC2086
    run "$TMP/cc-static" "$MOE_CC" -std=c11 "${SAN[@]}" $cflags -o "$TMP/tiny-static" "$TMP/tiny.c" "${args[@]}"
    [ "$RC" -eq 0 ] || fail "$(describe "$TMP/cc-static" "$MOE_CC" $cflags tiny.c "${args[@]}")" || return 1
    if readelf -d "$TMP/tiny-static" 2>/dev/null | grep -q 'libmoe\.so'; then fail "tiny-static needs libmoe.so"; return 1; fi
    run "$TMP/tiny-s" "$TMP/tiny-static"
    [ "$RC" -eq 0 ] && [ "$(cat "$TMP/tiny-s.out")" = "$TINY_OUT" ] || fail "$(describe "$TMP/tiny-s" tiny-static)"
}
check "a tiny program builds with pkg-config --cflags --libs --static moe against the installed libmoe.a and runs" t_static

t_shared() {
    local cflags libs
    cflags=$(pc --cflags moe) && libs=$(pc --libs moe) || { fail "pkg-config --libs moe failed"; return 1; }
    # shellcheck disable=SC2086
    run "$TMP/cc-shared" "$MOE_CC" -std=c11 "${SAN[@]}" $cflags -o "$TMP/tiny-shared" "$TMP/tiny.c" $libs
    [ "$RC" -eq 0 ] || fail "$(describe "$TMP/cc-shared" "$MOE_CC" $cflags tiny.c $libs)" || return 1
    readelf -d "$TMP/tiny-shared" 2>/dev/null | grep -q 'NEEDED.*libmoe\.so\.0' || { fail "tiny-shared does not need libmoe.so.0"; return 1; }
    run "$TMP/tiny-d" env LD_LIBRARY_PATH="$LIB" "$TMP/tiny-shared"
    [ "$RC" -eq 0 ] && [ "$(cat "$TMP/tiny-d.out")" = "$TINY_OUT" ] || fail "$(describe "$TMP/tiny-d" tiny-shared)"
}
check "the same program builds with pkg-config --cflags --libs moe against the installed libmoe.so and runs" t_shared

# ------------------------------------------------------------------ manual page
commands() { "$MOE" --help | awk '/^commands:/ { on = 1; next } on && /^  [a-z]/ { print $1; next } on { exit }'; }

t_man_render() {
    command -v groff >/dev/null 2>&1 || { echo "# groff not installed: rendering not checked"; return 0; }
    local w
    w=$(groff -man -ww -z -Tutf8 "$MAN1" 2>&1) && [ -z "$w" ] || fail "groff -man -ww warns about moe.1: $w"
}
check "moe.1 renders with groff -man -ww without a warning" t_man_render

t_man_names() {
    local src c o missing=()
    src=$(sed 's/\\-/-/g; s/\\f[BIRP]//g' "$MAN1")
    for c in $(commands) help; do
        grep -qx ".B $c" <<<"$src" || missing+=("command $c")
        for o in $("$MOE" help "$c" 2>/dev/null | grep -o -- '--[a-z][a-z0-9-]*' | sort -u); do
            grep -Fq -- "$o" <<<"$src" || missing+=("$c $o")
        done
    done
    for o in --version --set --config --seed --threads --device --quiet --force --ignore-memory; do
        grep -Fq -- "$o" <<<"$src" || missing+=("$o")
    done
    local v
    v=$("$MOE" --version | awk 'NR == 1 { print $2 }')
    grep -q "^\.TH MOE 1 .*\"moe $v\"" "$MAN1" || missing+=("the version $v in .TH")
    [ ${#missing[@]} -eq 0 ] || fail "moe.1 lacks: ${missing[*]}"
}
check "moe.1 names every command of moe --help, every option of moe help <command>, and moe's version" t_man_names

# ------------------------------------------------------------------ bash completion
# complete WORDS...: COMPREPLY of the installed completion for the command line
# WORDS (the last word is the one being completed), one per line, sorted.
complete_words() {
    PATH="$P/bin:$PATH" bash -c '
        . "$1"; shift
        COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1))
        COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
        _moe moe "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
        printf "%s\n" "${COMPREPLY[@]}" | sort' _ "$COMPL" "$@"
}

t_complete() {
    local got want
    got=$(complete_words moe "")
    want=$({ commands; printf '%s\n' help --help --version; } | sort)
    [ "$got" = "$want" ] || { fail "moe <TAB>: got '${got//$'\n'/ }', want '${want//$'\n'/ }'"; return 1; }
    got=$(complete_words moe route-)
    [ "$got" = route-stats ] || { fail "moe route-<TAB>: got '${got//$'\n'/ }'"; return 1; }
    got=$(complete_words moe help c)
    [ "$got" = $'compare-loss\ncompress\nconfig' ] || { fail "moe help c<TAB>: got '${got//$'\n'/ }'"; return 1; }
    got=$(complete_words moe train --res)
    [ "$got" = --resume ] || { fail "moe train --res<TAB>: got '${got//$'\n'/ }'"; return 1; }
    got=$(complete_words moe lora --expert)
    [ "$got" = --expert-mode ] || { fail "moe lora --expert<TAB>: got '${got//$'\n'/ }'"; return 1; }
    got=$(complete_words moe bench --set model.n_expert_u)
    [ "$got" = model.n_expert_used= ] || { fail "moe bench --set model.n_expert_u<TAB>: got '${got//$'\n'/ }'"; return 1; }
    got=$(complete_words moe train --set "" | wc -l)
    [ "$got" -eq "$("$MOE" help keys | wc -l)" ] || { fail "moe train --set <TAB>: $got keys, moe help keys has $("$MOE" help keys | wc -l)"; return 1; }
    got=$(complete_words moe train --device "")
    [ "$got" = $'cpu\ncuda' ] || fail "moe train --device <TAB>: got '${got//$'\n'/ }'"
}
check "bash completion: commands, help topics, options per command, --set keys (key=), --device values" t_complete

t_help_keys() {
    local keys ref
    keys=$("$MOE" help keys) || { fail "moe help keys exited $?"; return 1; }
    ref=$("$MOE" help config | sed -n 's/^| `\([a-z_.0-9]*\)` |.*/\1/p')
    [ -n "$keys" ] && [ "$keys" = "$ref" ] || fail "moe help keys differs from the keys of moe help config: $(diff <(echo "$ref") <(echo "$keys") | grep '^[<>]' | head -5 | tr '\n' ' ')"
}
check "moe help keys lists exactly the keys of moe help config, one per line, in order" t_help_keys

echo "1..$N"
[ "$FAILED" -eq 0 ]
