#!/usr/bin/env bash
# One host, all of its GPUs: a single trainer process sees every local GPU, so no distributed set-up is needed.
# Run with --help for the options; --dry-run prints the command instead of running it.
set -euo pipefail

PROG=${0##*/}

usage() {
  cat <<EOF
Usage: $PROG --config PATH --workdir DIR [options] [-- --config.key=value ...]

Runs python -m flava_jax.main on this machine's GPUs (install with: pip install 'jax[cuda12]' && pip install -e .).
Arguments after -- go to the trainer. Rerunning the same command in the same DIR resumes from its latest checkpoint.
DIR is written through local paths (for a bucket, mount it first, e.g. with gcsfuse); --config.data.dir may be a
gs:// URL (copied to local disk first).

Options:
  --config PATH        config file, e.g. configs/10M_4M.py or configs/100M_4M.py:model=half
  --workdir DIR        run directory (checkpoints, metrics)
  --python PY          Python interpreter (default: python)
  --resume-loop        rerun the trainer until it exits 0: after a failure (a crash, a lost GPU, ...) and after
                       a SIGTERM to the trainer, which saves a checkpoint and exits 75; Ctrl-C stops the loop
  --max-restarts N     (--resume-loop) reruns after the first before giving up (default 10)
  --retry-delay SECS   (--resume-loop) pause before each rerun (default 10)
  --dry-run            print the command instead of running it
  -h, --help           this help

Example (layers unrolled: on GPUs they run faster than the configs' scanned ones, docs/scaling.md's GPU table):
  $PROG --config configs/10M_4M.py --workdir runs/10M_4M --resume-loop -- --config.data.dir=data/10M --config.model.scan_layers=False

Size a run before it starts, on any machine (memory per GPU, step time, MFU; no GPU needed; here 96 examples a
micro-step per GPU):
  python -m flava_jax.aot --config=configs/10M_4M.py --gpu=h100x8 --meshes=data --config.model.scan_layers=False --config.train.micro_batch_size=768
A step that needs more than 75% of a GPU's memory needs XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 in the environment
(JAX takes 75% of it by default).
EOF
}

# The helpers that the launch scripts share: die, quote_word, print_cmd, need_value, gs_workdir.
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

config='' workdir='' python=python resume_loop=0 max_restarts=10 retry_delay=10 dry_run=0
overrides=()

while (($#)); do
  case $1 in
    --) shift; overrides=("$@"); break ;;
    --config.*) die "trainer overrides like $1 go after --" ;;
    --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}"; continue ;;
    -h|--help) usage; exit 0 ;;
    --dry-run) dry_run=1 ;;
    --resume-loop) resume_loop=1 ;;
    --config) need_value "$@"; config=$2; shift ;;
    --workdir) need_value "$@"; workdir=$2; shift ;;
    --python) need_value "$@"; python=$2; shift ;;
    --max-restarts) need_value "$@"; max_restarts=$2; shift ;;
    --retry-delay) need_value "$@"; retry_delay=$2; shift ;;
    *) die "unknown option: $1" ;;
  esac
  shift
done

[[ -n $config ]] || die "missing --config"
[[ -n $workdir ]] || die "missing --workdir"
[[ $max_restarts =~ ^[0-9]+$ ]] || die "--max-restarts must be a whole number, not '$max_restarts'"
[[ $retry_delay =~ ^[0-9]+$ ]] || die "--retry-delay must be a whole number of seconds, not '$retry_delay'"
if gs_workdir "$workdir"; then
  die "--workdir $workdir: the trainer writes its workdir through local paths: mount the bucket (e.g. with" \
    "gcsfuse) and pass the mounted path"
fi

train=("$python" -m flava_jax.main "--config=$config" "--workdir=$workdir" ${overrides[@]+"${overrides[@]}"})

if ((dry_run)); then
  if ((resume_loop)); then
    echo "# rerun after a failure or a SIGTERM (exit 75) until it exits 0, at most $max_restarts restarts:"
  fi
  print_cmd "${train[@]}"
  exit 0
fi

if ((!resume_loop)); then
  exec "${train[@]}"
fi

# Ctrl-C reaches the trainer and this shell alike: stop instead of restarting.
trap 'echo "$PROG: interrupted" >&2; exit 130' INT
attempt=0
while :; do
  status=0
  "${train[@]}" || status=$?
  # 0 only when the run is finished; 75 when a SIGTERM stopped it after it saved a checkpoint.
  case $status in
    0) exit 0 ;;
    75) why="the trainer stopped on SIGTERM after saving a checkpoint (exit 75)" ;;
    *) why="the trainer failed (exit $status)" ;;
  esac
  if ((attempt >= max_restarts)); then
    echo "$PROG: $why; giving up after $max_restarts restarts" >&2
    exit "$status"
  fi
  attempt=$((attempt + 1))
  echo "$PROG: $why; restart $attempt of $max_restarts in ${retry_delay}s" >&2
  sleep "$retry_delay"
done
