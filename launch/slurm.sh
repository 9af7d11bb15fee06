#!/usr/bin/env bash
# Slurm, one or more GPU nodes: writes an sbatch script that runs one trainer per node (each sees all of its node's
# GPUs) and submits it. Run with --help for the options; --dry-run prints the script and the sbatch command instead.
set -euo pipefail

PROG=${0##*/}

usage() {
  cat <<EOF
Usage: $PROG --config PATH --workdir DIR [options] [-- --config.key=value ...]

Writes DIR/JOB.sbatch (or --script FILE) and submits it with sbatch. The job runs
  srun --kill-on-bad-exit=1 PY -m flava_jax.main --config=PATH --workdir=DIR --distributed=auto [overrides]
with one task per node, so jax.distributed.initialize() reads the process layout from Slurm's environment.
Submit from the repository root (the config path is relative to it) with the environment that has flava_jax
installed (pip install 'jax[cuda12]' && pip install -e .) active: sbatch passes it on to the job.
Arguments after -- go to the trainer. The log is DIR/JOB-<job id>.out. DIR is written through local paths (no
gs:// URL); --config.data.dir may be gs://BUCKET/PATH (each node copies it to local disk first).

Preemption and time limits: the job is requeue-able (#SBATCH --requeue) and asks for USR1 --grace seconds
before its time limit (#SBATCH --signal=B:USR1@SECS); on USR1 it sends SIGTERM to the trainers, which save a
checkpoint and exit 75. Whenever the trainers exit 75 the job requeues itself (unless it was itself sent SIGTERM:
scancel, or a preemption that Slurm requeues), and the requeued job resumes from that checkpoint. Exit 0 means
the run is finished; any other status is the job's.

Options:
  --config PATH          config file, e.g. configs/100M_4M.py or configs/100M_4M.py:model=half
  --workdir DIR          run directory on a filesystem every node shares
  --nodes N              nodes (default 1)
  --gpus-per-node G      GPUs per node (default 8)
  --time LIMIT           time limit, e.g. 24:00:00 (default: the partition's)
  --partition NAME       partition (default: the cluster's)
  --account NAME         account to charge (default: yours)
  --cpus-per-task N      CPUs for each node's trainer, e.g. for data loading (default: the cluster's)
  --job-name NAME        job name (default flava)
  --sbatch-arg ARG       extra #SBATCH line, e.g. --sbatch-arg=--mem=0 (repeatable)
  --grace SECS           seconds before the time limit to checkpoint and requeue (default 120)
  --python PY            Python interpreter on the nodes (default: python)
  --script FILE          where to write the sbatch script (default: DIR/JOB.sbatch)
  --dry-run              print the sbatch script and the sbatch command instead of writing and submitting
  -h, --help             this help

Example:
  $PROG --config configs/100M_4M.py --workdir /shared/runs/100M_4M --nodes 4 --gpus-per-node 8 \\
      --time 24:00:00 --partition gpu -- --config.data.dir=/shared/data/100M
EOF
}

# The helpers that the launch scripts share: die, quote_word, print_cmd, need_value, gs_workdir.
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

config='' workdir='' nodes=1 gpus=8 time_limit='' partition='' account='' cpus='' job_name=flava grace=120
python=python script='' dry_run=0
extra=() overrides=()

while (($#)); do
  case $1 in
    --) shift; overrides=("$@"); break ;;
    --config.*) die "trainer overrides like $1 go after --" ;;
    --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}"; continue ;;
    -h|--help) usage; exit 0 ;;
    --dry-run) dry_run=1 ;;
    --config) need_value "$@"; config=$2; shift ;;
    --workdir) need_value "$@"; workdir=$2; shift ;;
    --nodes) need_value "$@"; nodes=$2; shift ;;
    --gpus-per-node) need_value "$@"; gpus=$2; shift ;;
    --time) need_value "$@"; time_limit=$2; shift ;;
    --partition) need_value "$@"; partition=$2; shift ;;
    --account) need_value "$@"; account=$2; shift ;;
    --cpus-per-task) need_value "$@"; cpus=$2; shift ;;
    --job-name) need_value "$@"; job_name=$2; shift ;;
    --sbatch-arg) (($# > 1)) || need_value "$1"; extra+=("$2"); shift ;;  # its values are options: --mem=0
    --grace) need_value "$@"; grace=$2; shift ;;
    --python) need_value "$@"; python=$2; shift ;;
    --script) need_value "$@"; script=$2; shift ;;
    *) die "unknown option: $1" ;;
  esac
  shift
done

[[ -n $config ]] || die "missing --config"
[[ -n $workdir ]] || die "missing --workdir"
if gs_workdir "$workdir"; then
  die "--workdir $workdir: the trainer writes its workdir through local paths: use a filesystem that every" \
    "node mounts"
fi
for pair in "--nodes:$nodes" "--gpus-per-node:$gpus" "--grace:$grace" "--cpus-per-task:${cpus:-1}"; do
  [[ ${pair#*:} =~ ^[1-9][0-9]*$ ]] || die "${pair%%:*} must be a positive whole number, not '${pair#*:}'"
done
script=${script:-$workdir/$job_name.sbatch}

directives=("--job-name=$job_name" "--nodes=$nodes" --ntasks-per-node=1 "--gpus-per-node=$gpus")
[[ -z $cpus ]] || directives+=("--cpus-per-task=$cpus")
[[ -z $time_limit ]] || directives+=("--time=$time_limit")
[[ -z $partition ]] || directives+=("--partition=$partition")
[[ -z $account ]] || directives+=("--account=$account")
# append: a requeued job keeps its id, and its log continues in the same file.
directives+=("--output=$workdir/$job_name-%j.out" --open-mode=append --requeue "--signal=B:USR1@$grace")
directives+=(${extra[@]+"${extra[@]}"})
for directive in "${directives[@]}"; do
  # sbatch splits #SBATCH lines at white space.
  [[ $directive != *[[:space:]]* ]] || die "white space cannot go in an #SBATCH line: '$directive'"
done

# JAX's Slurm detection assumes one process per GPU and would show each process only GPU $SLURM_LOCALID;
# our one process per node drives all of the node's GPUs.
device_ids=0
for ((i = 1; i < gpus; i++)); do device_ids+=",$i"; done

srun_line=$(print_cmd srun --kill-on-bad-exit=1 "$python" -m flava_jax.main "--config=$config" \
  "--workdir=$workdir" --distributed=auto ${overrides[@]+"${overrides[@]}"})

# The job script. Only the #SBATCH lines and the srun line vary; the rest is literal (note the quoted EOF).
sbatch_script() {
  printf '%s\n' '#!/bin/bash'
  printf '#SBATCH %s\n' "${directives[@]}"
  printf '%s\n' "# Written by launch/slurm.sh."
  printf '%s\n' 'set -uo pipefail'
  printf '%s\n' "export JAX_LOCAL_DEVICE_IDS=$device_ids  # every GPU of the node for its one trainer"
  cat <<'EOF'

terminated=0
# USR1 comes shortly before the time limit (--signal above; at preemption too, where the cluster sets
# PreemptParameters=send_user_signal): on SIGTERM every trainer saves a checkpoint and exits 75.
# (scancel --signal signals the job steps, the trainers, and not this shell.)
trap 'signalled=1; scancel --signal=TERM "$SLURM_JOB_ID" || true' USR1
# A SIGTERM here (scancel, preemption) reached the trainers too: stay alive while they save, and leave the rest to
# Slurm: it requeues a preempted job itself (--requeue), and a cancelled one must stay cancelled.
trap 'signalled=1 terminated=1' TERM

EOF
  printf '%s &\n' "$srun_line"
  cat <<'EOF'
srun_pid=$!
# wait returns early (128+n) when a trapped signal arrives, and the traps set $signalled: then wait again, for
# srun's own status (bash keeps it until a wait has returned it, even when srun has already exited).
while :; do
  signalled=0 status=0
  wait "$srun_pid" || status=$?
  ((signalled)) || break
done
# 0: the run is finished. 75: the trainers stopped on SIGTERM after saving, so a rerun resumes: requeue (the
# job keeps its id and log). Any other status is a failure, passed on.
if ((status == 75 && !terminated)); then
  scontrol requeue "$SLURM_JOB_ID"
fi
exit "$status"
EOF
}

if ((dry_run)); then
  sbatch_script
  print_cmd sbatch "$script"
  exit 0
fi
# Slurm does not create the log's directory: a job whose --output directory is missing fails silently.
mkdir -p "$workdir" "$(dirname "$script")"
sbatch_script >"$script"
exec sbatch "$script"
