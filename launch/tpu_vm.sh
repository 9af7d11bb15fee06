#!/usr/bin/env bash
# Cloud TPU VMs (single host and pods) through gcloud: create, set up, stage data, train, train with automatic
# resume after preemptions, delete. Run with --help for the options; --dry-run prints the commands instead.
# Avoids bash 4 features: this one usually runs on a laptop, and macOS ships bash 3.2.
set -euo pipefail

PROG=${0##*/}
# On every worker. The ~ stays literal here and expands in the remote shell, which sees these paths unquoted.
# shellcheck disable=SC2088
REMOTE_REPO='~/flava_jax' REMOTE_VENV='~/flava_venv'
PYTHON_VERSION=3.12  # flava_jax needs Python >= 3.11; the TPU images ship Ubuntu 22.04's 3.10

usage() {
  cat <<EOF
Usage: $PROG COMMAND [options] [-- --config.key=value ...]

Cloud TPU VMs for flava_jax through gcloud (v4-8 ... v4-64, v5litepod-8 (v5e), v5p-8, ...).

Commands:
  create      gcloud compute tpus tpu-vm create (needs --name --zone --type)
  setup       install flava_jax on every worker (needs --name --zone --repo): a git URL is cloned at --ref;
              a local checkout ships --ref (default HEAD) with git archive + scp, so commit first. Installs
              Python $PYTHON_VERSION with uv (python3 -m pip install --user uv) into $REMOTE_VENV,
              then pip installs "jax[tpu]" and -e "${REMOTE_REPO}[gcs]". With --bucket BUCKET it then installs
              Cloud Storage FUSE (gcsfuse, from Google's apt repository) and mounts the bucket at /gcs/BUCKET.
  stage       copy a prepared data directory to Cloud Storage (needs --src --dest):
              gcloud storage rsync --recursive SRC gs://BUCKET/PATH (rsync, not cp -r: a rerun after an
              interrupted copy resumes, and the layout never depends on whether the destination already
              existed); then train with -- --config.data.dir=gs://BUCKET/PATH
  train       run the trainer on every worker (--worker=all, --distributed=auto; needs --name --zone --config
              --workdir); gcloud streams every worker's log. Arguments after -- go to the trainer. With
              --bucket it first mounts the bucket where it is not mounted (a reboot unmounts it).
  train-loop  train, resuming until the trainer exits 0: before each attempt the VM's state is read with
              gcloud compute tpus tpu-vm describe; a PREEMPTED/TERMINATED VM (or a failing describe) is
              deleted and re-created, then set up again (needs everything create, setup and train need).
              Exit 0 ends the loop; any other status starts the next attempt, 75 included (the trainer
              stopped on SIGTERM after saving a checkpoint).
  delete      gcloud compute tpus tpu-vm delete (needs --name --zone)

Options:
  --name NAME          TPU VM name
  --zone ZONE          e.g. us-central2-b (v4), us-west4-a (v5e), us-east5-a (v5p)
  --type TYPE          accelerator type, e.g. v4-8, v4-32, v5litepod-8, v5p-8
  --runtime VERSION    TPU software version; default from the type: tpu-ubuntu2204-base (v2, v3, v4),
                       v2-alpha-tpuv5-lite (v5litepod/v5e), v2-alpha-tpuv5 (v5p), v2-alpha-tpuv6e (v6e)
  --project PROJECT    passed to gcloud as --project=PROJECT (default: gcloud's configured project)
  --spot               create a Spot VM (cheap, preemptible: use train-loop)
  --repo URL|DIR       flava_jax git URL to clone, or a local checkout to copy
  --ref REF            branch, tag or commit (default: main for a URL, HEAD for a local checkout)
  --config PATH        config file, relative to the repo root, e.g. configs/10M_4M.py or
                       configs/100M_4M.py:model=half
  --workdir DIR        run directory; on a pod every worker must see the same one, so use /gcs/BUCKET/PATH
  --bucket BUCKET      (setup, train, train-loop) Cloud Storage bucket to mount at /gcs/BUCKET on every worker
  --src DIR            (stage) local prepared-data directory
  --dest gs://...      (stage) destination gs://BUCKET/PATH; then train with -- --config.data.dir=gs://BUCKET/PATH
  --max-restarts N     (train-loop) attempts after the first before giving up (default 10)
  --retry-delay SECS   (train-loop) pause before each retry (default 60)
  --dry-run            print the commands, one per line, instead of running them
  -h, --help           this help

The workers of a pod share no disk, and a re-created VM starts with an empty one. So the data goes to a bucket
(stage, once); with --config.data.dir=gs://BUCKET/PATH every worker copies it to its own disk before training
(hash-checked, resumable; ArrayRecord reads local files only). The workdir is written through local paths (a
gs:// --workdir is refused): put it in a bucket that every worker mounts at /gcs/BUCKET with Cloud Storage FUSE
(--bucket).

Examples:
  $PROG create --name flava --zone us-central2-b --type v4-32 --spot
  $PROG setup --name flava --zone us-central2-b --repo https://github.com/ORG/flava_jax.git --ref main \\
      --bucket BUCKET
  $PROG stage --src data/10M --dest gs://BUCKET/data/10M
  $PROG train --name flava --zone us-central2-b --config configs/10M_4M.py --workdir /gcs/BUCKET/runs/10M_4M \\
      -- --config.data.dir=gs://BUCKET/data/10M
  $PROG train-loop --name flava --zone us-central2-b --type v4-32 --spot --bucket BUCKET \\
      --repo https://github.com/ORG/flava_jax.git --config configs/10M_4M.py --workdir /gcs/BUCKET/runs/10M_4M \\
      -- --config.data.dir=gs://BUCKET/data/10M
  $PROG delete --name flava --zone us-central2-b
EOF
}

# The helpers that the launch scripts share: die, quote_word, print_cmd, need_value, gs_workdir.
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# Runs a command, or with --dry-run prints it.
run() {
  if ((dry_run)); then
    print_cmd "$@"
  else
    "$@"
  fi
}

# --- options ------------------------------------------------------------------------------------------------------
command='' name='' zone='' type='' runtime='' project='' spot=0 repo='' ref='' config='' workdir='' bucket=''
src='' dest='' max_restarts=10 retry_delay=60 dry_run=0
overrides=()

while (($#)); do
  case $1 in
    --) shift; overrides=("$@"); break ;;
    --config.*) die "trainer overrides like $1 go after --" ;;
    --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}"; continue ;;
    -h|--help) usage; exit 0 ;;
    --dry-run) dry_run=1 ;;
    --spot) spot=1 ;;
    --name) need_value "$@"; name=$2; shift ;;
    --zone) need_value "$@"; zone=$2; shift ;;
    --type) need_value "$@"; type=$2; shift ;;
    --runtime) need_value "$@"; runtime=$2; shift ;;
    --project) need_value "$@"; project=$2; shift ;;
    --repo) need_value "$@"; repo=$2; shift ;;
    --ref) need_value "$@"; ref=$2; shift ;;
    --config) need_value "$@"; config=$2; shift ;;
    --workdir) need_value "$@"; workdir=$2; shift ;;
    --bucket) need_value "$@"; bucket=$2; shift ;;
    --src) need_value "$@"; src=$2; shift ;;
    --dest) need_value "$@"; dest=$2; shift ;;
    --max-restarts) need_value "$@"; max_restarts=$2; shift ;;
    --retry-delay) need_value "$@"; retry_delay=$2; shift ;;
    -*) die "unknown option: $1" ;;
    *)
      [[ -z $command ]] || die "unexpected argument: $1 (trainer overrides go after --)"
      command=$1 ;;
  esac
  shift
done

require() {  # require OPTION VALUE: the current command cannot run without OPTION
  [[ -n $2 ]] || die "$command needs $1"
}

case $command in
  create|delete|setup|train|train-loop) require --name "$name"; require --zone "$zone" ;;
  stage) require --src "$src"; require --dest "$dest" ;;
  '') die "missing COMMAND (create, setup, stage, train, train-loop or delete)" ;;
  *) die "unknown command: $command" ;;
esac
if [[ $command == create || $command == train-loop ]]; then
  require --type "$type"
  if [[ -z $runtime ]]; then
    case $type in
      v2-*|v3-*|v4-*) runtime=tpu-ubuntu2204-base ;;
      v5litepod-*|v5e-*) runtime=v2-alpha-tpuv5-lite ;;
      v5p-*) runtime=v2-alpha-tpuv5 ;;
      v6e-*) runtime=v2-alpha-tpuv6e ;;
      *) die "no default --runtime for --type $type: pass --runtime" ;;
    esac
  fi
fi
if [[ $command == setup || $command == train-loop ]]; then
  require --repo "$repo"
  if [[ -z $ref ]]; then
    if [[ -d $repo ]]; then ref=HEAD; else ref=main; fi
  fi
fi
if [[ $command == train || $command == train-loop ]]; then
  require --config "$config"
  require --workdir "$workdir"
  if gs_workdir "$workdir"; then  # written through local paths, on each worker
    path=${workdir#gs://}
    die "--workdir $workdir: the trainer writes its workdir through local paths: mount the bucket on the" \
      "workers with --bucket ${path%%/*} and pass /gcs/$path instead"
  fi
fi
if [[ -n $bucket ]]; then
  [[ $command == setup || $command == train || $command == train-loop ]] ||
    die "only setup, train and train-loop take --bucket"
  # A name, not a URL; the pattern also keeps it safe to put unquoted in the workers' command lines.
  [[ $bucket =~ ^[a-z0-9][a-z0-9._-]*[a-z0-9]$ ]] || die "--bucket takes a bucket's name, like my-bucket, not '$bucket'"
fi
if [[ $command == train-loop ]]; then
  if [[ $workdir != /gcs/* ]]; then
    echo "$PROG: warning: a re-created VM starts with an empty disk, so a --workdir outside /gcs/ loses its" \
      "checkpoints at every preemption: use /gcs/BUCKET/PATH with --bucket BUCKET" >&2
  elif [[ $workdir != "/gcs/$bucket/"* ]]; then
    path=${workdir#/gcs/}
    echo "$PROG: warning: nothing mounts /gcs/${path%%/*} on a re-created VM: pass --bucket ${path%%/*}" >&2
  fi
fi
[[ $command == train || $command == train-loop || ${#overrides[@]} -eq 0 ]] ||
  die "arguments after -- are trainer overrides: only train and train-loop take them"
[[ $max_restarts =~ ^[0-9]+$ ]] || die "--max-restarts must be a whole number, not '$max_restarts'"
[[ $retry_delay =~ ^[0-9]+$ ]] || die "--retry-delay must be a whole number of seconds, not '$retry_delay'"

# --- the commands -------------------------------------------------------------------------------------------------
# Every TPU command addresses the VM the same way.
where=("--zone=$zone")
[[ -z $project ]] || where+=("--project=$project")

create_vm() {
  local args=(gcloud compute tpus tpu-vm create "$name" "${where[@]}" "--accelerator-type=$type" "--version=$runtime")
  if ((spot)); then args+=(--spot); fi
  run "${args[@]}"
}

delete_vm() {  # delete_vm [--quiet]: the loop passes --quiet, since nobody is there to answer gcloud's prompt
  run gcloud compute tpus tpu-vm delete "$name" "${where[@]}" "$@"
}

# Runs one shell command line on every worker at once; gcloud streams their output and fails if any fails.
on_all_workers() {
  run gcloud compute tpus tpu-vm ssh "$name" "${where[@]}" --worker=all "--command=$1"
}

setup_workers() {
  local fetch install q_repo q_ref
  quote_word "$repo"; q_repo=$REPLY
  quote_word "$ref"; q_ref=$REPLY
  # A venv on uv's own Python: pip refuses flava_jax on the image's Python 3.10.
  install="python3 -m pip install --quiet --user uv; [ -x $REMOTE_VENV/bin/python ] || ~/.local/bin/uv venv"
  install+=" --python $PYTHON_VERSION $REMOTE_VENV; cd $REMOTE_REPO;"
  install+=" ~/.local/bin/uv pip install --python $REMOTE_VENV/bin/python \"jax[tpu]\" -e \".[gcs]\""
  if [[ -d $repo ]]; then
    # Ship exactly REF of the local checkout (what a clone would get), without build outputs or data.
    local archive=${TMPDIR:-/tmp}/flava_jax-$name.tar.gz
    run git -C "$repo" archive --format=tar.gz --prefix=flava_jax/ "--output=$archive" "$ref" || return 1
    run gcloud compute tpus tpu-vm scp "$archive" "$name:flava_jax.tar.gz" "${where[@]}" --worker=all || return 1
    fetch="rm -rf $REMOTE_REPO; tar -xzf ~/flava_jax.tar.gz -C ~"
  else
    # Fetching REF then checking out FETCH_HEAD works the same for a branch, a tag or a commit, and on a rerun.
    fetch="[ -d $REMOTE_REPO/.git ] || git clone --quiet $q_repo $REMOTE_REPO;"
    fetch+=" git -C $REMOTE_REPO fetch --quiet origin $q_ref; git -C $REMOTE_REPO checkout --quiet --detach FETCH_HEAD"
  fi
  on_all_workers "set -e; $fetch; $install" || return 1
  if [[ -n $bucket ]]; then mount_bucket; fi
}

# On every worker: installs Cloud Storage FUSE unless it is there (Google's apt repository for this Ubuntu release),
# then mounts the bucket at /gcs/BUCKET unless it is mounted, so that rerunning it (every train does) is cheap.
mount_bucket() {
  local dir=/gcs/$bucket install mount
  install="if ! command -v gcsfuse >/dev/null; then echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc]"
  install+=" https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -c -s) main\""
  install+=" | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null;"
  install+=" curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg"
  install+=" | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null; sudo apt-get update -q;"
  # The lock timeout: right after boot, unattended-upgrades may hold the dpkg lock for minutes.
  install+=" sudo apt-get -o DPkg::Lock::Timeout=600 install -y -q gcsfuse; fi"
  # --implicit-dirs: gcloud storage rsync uploads files only, no objects for their directories.
  # --rename-dir-limit: Orbax finishes each checkpoint by renaming its directory, which gcsfuse otherwise refuses.
  mount="mountpoint -q $dir || { sudo mkdir -p $dir && sudo chown \$USER $dir"
  mount+=" && gcsfuse --implicit-dirs --rename-dir-limit=100000 $bucket $dir; }"
  on_all_workers "set -e; $install; $mount"
}

train_on_workers() {
  local args
  if [[ -n $bucket ]]; then
    mount_bucket || return 1
  fi
  # --distributed=auto: jax.distributed.initialize() finds the other workers of a pod by itself.
  args=$(print_cmd -m flava_jax.main "--config=$config" "--workdir=$workdir" --distributed=auto \
    ${overrides[@]+"${overrides[@]}"})
  on_all_workers "cd $REMOTE_REPO && $REMOTE_VENV/bin/python $args"
}

# Prints the VM's state (READY, PREEMPTED, ...), or nothing when describe fails (e.g. the VM is gone).
vm_state() {
  gcloud compute tpus tpu-vm describe "$name" "${where[@]}" '--format=value(state)' 2>/dev/null || true
}

# Makes sure the VM is READY: re-creates (and sets up) a preempted or missing one. Fails while it is in any other
# state (CREATING, REPAIRING, ...) or when re-creating fails (e.g. no Spot capacity): the loop retries later.
ensure_vm() {
  local state
  state=$(vm_state)
  case $state in
    READY) return 0 ;;
    PREEMPTED|TERMINATED|'')
      echo "$PROG: VM '$name' is ${state:-missing}: re-creating it" >&2
      if [[ -n $state ]]; then
        delete_vm --quiet || return 1  # a preempted VM cannot be restarted, only deleted and created again
      fi
      create_vm && setup_workers ;;
    *)
      echo "$PROG: VM '$name' is $state" >&2
      return 1 ;;
  esac
}

train_loop() {
  local restarts=0 status
  if ((dry_run)); then
    # The loop's choices depend on what gcloud answers, so show each kind of step once.
    echo "# each attempt (at most $((max_restarts + 1))): read the VM's state"
    print_cmd gcloud compute tpus tpu-vm describe "$name" "${where[@]}" '--format=value(state)'
    echo "# only when it is PREEMPTED or TERMINATED (delete first) or the describe failed (create only):"
    delete_vm --quiet
    create_vm
    setup_workers
    echo "# then${bucket:+ mount the bucket again where a reboot unmounted it, and} train: exit 0 ends the loop;" \
      "any other status starts the next attempt (75: the trainer stopped on SIGTERM after saving a checkpoint)"
    train_on_workers
    return 0
  fi
  while :; do
    if ensure_vm; then
      status=0
      train_on_workers || status=$?
      # Only a finished run exits 0: after a preemption's SIGTERM the trainer saves and exits 75.
      case $status in
        0) return 0 ;;
        75) echo "$PROG: training stopped on SIGTERM (exit 75) after saving a checkpoint" >&2 ;;
        *) echo "$PROG: training failed (exit $status)" >&2 ;;
      esac
    fi
    if ((restarts >= max_restarts)); then
      echo "$PROG: giving up after $max_restarts restarts" >&2
      return 1
    fi
    restarts=$((restarts + 1))
    echo "$PROG: restart $restarts of $max_restarts in ${retry_delay}s" >&2
    sleep "$retry_delay"
  done
}

case $command in
  create) create_vm ;;
  setup) setup_workers ;;
  stage)
    [[ -d $src ]] || die "--src $src is not a directory"
    [[ $dest == gs://* ]] || die "--dest must be a gs:// path, not '$dest'"
    args=(gcloud storage rsync --recursive "$src" "$dest")
    [[ -z $project ]] || args+=("--project=$project")
    run "${args[@]}"
    ;;
  train) train_on_workers ;;
  train-loop) train_loop ;;
  delete) delete_vm ;;
esac
