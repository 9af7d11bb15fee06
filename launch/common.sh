# shellcheck shell=bash
# The helpers that launch/tpu_vm.sh, launch/gpu.sh and launch/slurm.sh share. Not a program: each of them sources
# this file (relative to its own location) after setting PROG, its name for messages. Avoids bash 4 features, like
# tpu_vm.sh: that one usually runs on a laptop, and macOS ships bash 3.2.

die() {  # die WORDS...: the message, its words joined by spaces
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  printf "Try '%s --help'.\n" "$PROG" >&2
  exit 2
}

# --- printing commands exactly as they would run ------------------------------------------------------------------
# REPLY=one word, quoted so that bash reads it back unchanged. Plain words stay bare; --flag=VALUE keeps the flag
# bare and single-quotes the value (--format='value(state)'), which is how one would type it.
quote_word() {
  local word=$1 safe='^[A-Za-z0-9_@%+=:,./-]+$' flag='^(--?[A-Za-z0-9_.-]+=)(.*)$' prefix='' sq="'" esc="'\\''"
  if [[ $word =~ $safe ]]; then
    REPLY=$word
    return
  fi
  if [[ $word =~ $flag ]]; then
    prefix=${BASH_REMATCH[1]}
    word=${BASH_REMATCH[2]}
  fi
  word=${word//"$sq"/"$esc"}  # each ' becomes '\'' (close, escaped quote, reopen)
  REPLY=$prefix$sq$word$sq
}

# Prints its arguments as one shell command line.
print_cmd() {
  local line='' word
  for word in "$@"; do
    quote_word "$word"
    line+=${line:+ }$REPLY
  done
  printf '%s\n' "$line"
}

# --- checking the options -----------------------------------------------------------------------------------------
# need_value "$@", in the option loop: the option in $1 takes a value, "--opt VALUE" (the --opt=VALUE form is split
# before this), and a missing one is an error. So is one that starts with --, most likely the next option; an option
# whose values may start with -- (slurm.sh's --sbatch-arg) calls need_value "$1" only when there is no value.
need_value() {
  if (($# < 2)) || [[ $2 == --* ]]; then
    die "$1 needs a value"
  fi
}

# gs_workdir WORKDIR: the trainer writes its workdir (metrics.jsonl appends, TensorBoard, checkpoints) with
# pathlib, so gs://B/x would quietly become a local directory gs:/B/x. Succeeds when WORKDIR is a gs:// URL.
# (--config.data.dir may be one: the trainer copies the prepared data to each host's disk first.)
gs_workdir() {
  [[ $1 == gs://* ]]
}
