# bash completion for moe (installed as share/bash-completion/completions/moe).
# Nothing here lists moe's commands, options or config keys: they come at
# completion time from the moe being completed, so they cannot go stale:
#   commands      the "commands:" section of `moe --help`
#   options       every --option that `moe help <command>` prints
#   config keys   `moe help keys` (one per line), offered as "key=" after --set
# Option values with a fixed set of choices are completed too, and files or
# directories after the options that take them.

# _moe_reply COMPGEN-ARGS...: COMPREPLY from compgen, one match per line
_moe_reply() { mapfile -t COMPREPLY < <(compgen "$@"); }

_moe()
{
    local cur=${COMP_WORDS[COMP_CWORD]}
    local prev=
    (( COMP_CWORD > 0 )) && prev=${COMP_WORDS[COMP_CWORD - 1]}
    # the moe being completed (./build/cmd/moe, or moe in PATH)
    local moe=${COMP_WORDS[0]}
    moe=${moe/#\~/$HOME}
    command -v -- "$moe" >/dev/null 2>&1 || moe=moe
    COMPREPLY=()

    local cmds
    cmds=$("$moe" --help 2>/dev/null | awk '/^commands:/ { on = 1; next } on && /^  [a-z]/ { print $1; next } on { exit }')

    if (( COMP_CWORD == 1 )); then
        _moe_reply -W "$cmds help --help --version" -- "$cur"
        return 0
    fi
    local cmd=${COMP_WORDS[1]}
    if [[ $cmd == help ]]; then
        (( COMP_CWORD == 2 )) && _moe_reply -W "$cmds config keys" -- "$cur"
        return 0
    fi

    case $prev in
        --set)
            compopt -o nospace 2>/dev/null
            _moe_reply -W "$("$moe" help keys 2>/dev/null | sed 's/$/=/')" -- "$cur"
            return 0 ;;
        --device) _moe_reply -W "cpu cuda" -- "$cur"; return 0 ;;
        --data|--prune-data) _moe_reply -W "train valid test" -- "$cur"; return 0 ;;
        --prune-by) _moe_reply -W "usage importance random" -- "$cur"; return 0 ;;
        --neuron-score) _moe_reply -W "l1 l2 taylor" -- "$cur"; return 0 ;;
        --neuron-scope) _moe_reply -W "layer global" -- "$cur"; return 0 ;;
        --quantize) _moe_reply -W "int8" -- "$cur"; return 0 ;;
        --scheme) _moe_reply -W "symmetric asymmetric" -- "$cur"; return 0 ;;
        --granularity) _moe_reply -W "channel tensor" -- "$cur"; return 0 ;;
        --mode) _moe_reply -W "kd sparse-to-dense moebert" -- "$cur"; return 0 ;;
        --expert-mode) _moe_reply -W "per-expert shared" -- "$cur"; return 0 ;;
        --split) _moe_reply -W "importance random" -- "$cur"; return 0 ;;
        --losses) _moe_reply -W "cooperative competitive nll nll-cat mlp" -- "$cur"; return 0 ;;
        --out|--resume)
            compopt -o filenames 2>/dev/null
            _moe_reply -d -- "$cur"; return 0 ;;
        --config|--init|--base|--teacher|--checkpoint|--baseline|--trace)
            compopt -o filenames 2>/dev/null
            _moe_reply -f -- "$cur"; return 0 ;;
        --seed|--threads|--rank|--alpha|--temperature|--shared|--weight|--tokens|--repeats|--warmup|\
        --seeds|--targets|--trainable|--freeze|--capacity-factors|--tag|--expert-parallel|--data-parallel|\
        --prune-experts|--prune-neurons)
            return 0 ;; # a value of the user's own
    esac

    if [[ $cur == -* ]]; then
        _moe_reply -W "$("$moe" help "$cmd" 2>/dev/null | grep -o -- '--[a-z][a-z0-9-]*' | sort -u)" -- "$cur"
    else
        compopt -o filenames 2>/dev/null
        _moe_reply -f -- "$cur"
    fi
    return 0
}
complete -F _moe moe
