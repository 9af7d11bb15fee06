"""Entry point: `python -m flava_jax.main --config=configs/<name>.py --workdir=DIR [--config.key=value ...]`.

Trains (or resumes) the configured run in DIR: checkpoints in DIR/checkpoints, metrics in DIR/metrics.jsonl and
DIR/tensorboard. After SIGTERM (a preemption) it saves the current step and exits with status 75; rerun the same
command to resume. With `--coordinator_address` (or `--distributed=auto` on TPU pods and Slurm) it first joins a
multi-process run through `jax.distributed.initialize`.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import traceback
from pathlib import Path

import jax
from absl import app, flags
from ml_collections import config_flags

from flava_jax.common.settings import ConfigError
from flava_jax.train import host_malloc
from flava_jax.train.checkpoint import CheckpointError
from flava_jax.train.config_check import check_keys
from flava_jax.train.metrics import MetricsFileError
from flava_jax.train.trainer import train

DISK_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EDQUOT)  # the filesystem refuses writes: one line, not a traceback
PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: SIGTERM was handled, a checkpoint saved; rerun the command to resume

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file, e.g. configs/debug.py.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for this run's checkpoints and metrics.")
_DISTRIBUTED = flags.DEFINE_enum("distributed", "off", ["off", "auto"], "auto: jax.distributed.initialize() with "
                                 "no arguments (TPU pods, Slurm, ...).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for explicit multi-process "
                                   "runs (with --num_processes and --process_id).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in an explicit multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in an explicit multi-process run.")


def disk_error(error: OSError, workdir: str) -> str:
    """One line for a write the filesystem refused: the path (or the workdir, when the error has none) and the
    project's code that was writing."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f"{os.sep}flava_jax{os.sep}" in f.filename]
    where = f" ({Path(frames[-1].filename).name}:{frames[-1].lineno}, {frames[-1].name})" if frames else ""
    path = error.filename or f"a file under {workdir}"
    return f"writing {path} failed: {error.strerror}{where}. Free space or fix the filesystem, then rerun the " \
           f"command to resume from the last checkpoint"


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _CONFIG.value is None or _WORKDIR.value is None:
        raise app.UsageError("both --config and --workdir are required")
    try:
        check_keys(_CONFIG.value)
        host_malloc.ensure(_CONFIG.value.host_malloc, _CONFIG.value.model)  # before any JAX backend exists
    except ConfigError as e:
        raise app.UsageError(str(e)) from e
    if _COORDINATOR.value:
        jax.distributed.initialize(_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
                                   process_id=_PROCESS_ID.value)
    elif _DISTRIBUTED.value == "auto":
        jax.distributed.initialize()
    cpu_processes = jax.process_count() > 1 and jax.default_backend() == "cpu"
    if cpu_processes:
        # XLA:CPU's collectives give peers only 30 s to meet, less than one process compiling alone can take. So
        # every process must leave every compile together: process 0 compiles and hands the program to the others,
        # and the persistent cache stays off (its entries, written by process 0, are hits for process 0 only).
        jax.config.update("jax_share_binary_between_hosts", True)
        jax.config.update("jax_enable_compilation_cache", False)
    # One progress log per run: the other processes report warnings and errors only.
    logging.getLogger("flava_jax").setLevel(logging.INFO if jax.process_index() == 0 else logging.WARNING)
    logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax and Grain log every file operation at INFO
    config = _CONFIG.value
    if host_malloc.in_effect():
        logging.getLogger(__name__).info("host malloc: freed memory kept for reuse (config.host_malloc=%s)",
                                         config.host_malloc)
    if config.compilation_cache_dir and not cpu_processes:
        # XLA compiles (random init especially) take tens of seconds on a CPU; later runs reuse them.
        jax.config.update("jax_compilation_cache_dir", str(Path(config.compilation_cache_dir).expanduser()))
    try:
        result = train(config, _WORKDIR.value)
    except ConfigError as e:
        raise app.UsageError(str(e)) from e
    except (CheckpointError, MetricsFileError) as e:
        sys.exit(f"error: {e}")
    except OSError as e:
        if e.errno not in DISK_ERRNOS:
            raise
        sys.exit(f"error: {disk_error(e, _WORKDIR.value)}")
    if result["preempted"]:
        # Saved and stopped early: a distinct status, so resume loops (launch/) know to run the command again.
        sys.exit(PREEMPTED_EXIT_CODE)


if __name__ == "__main__":
    app.run(main)
