"""Checkpoints over Orbax's CheckpointManager: train state + data iterator state + scheduler state, saved
asynchronously, keeping the last N and the best by a metric (pseudo-perplexity, lower is better).

Orbax writes each checkpoint under a temporary name and renames it when complete, so a run killed mid-save
leaves a directory that `latest_step` never returns: a resume always starts from a complete checkpoint.

Integrity: once a save has finished (checked at the next save, `wait` or `close`), process 0 writes
STEP/sha256.json, the sha256 of every file of the step directory, so a checksum only ever describes a complete
checkpoint. Restores verify it first. With several processes the checkpoint directory is assumed to be one
filesystem all of them see (as Orbax's multi-process saves already need); process 0 hashes and decides, the others
follow. A checkpoint without the file (saved by an older version, or the run stopped between the save and its
checksum) is restored with a warning. One that fails verification or restore is moved to corrupt/STEP, never
deleted, and a resume falls back to the newest good one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers

log = logging.getLogger("flava_jax")
CHECKSUMS = "sha256.json"
CORRUPT_DIR = "corrupt"


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the one-line message names it and says what to do."""


class CorruptCheckpoint(CheckpointError):
    """A checkpoint failed verification or restore."""

    def __init__(self, step: int, message: str) -> None:
        super().__init__(message)
        self.step = step


def _cause(error: BaseException) -> str:
    """The first line of an error, shortened: Orbax's messages quote whole file paths and C++ status payloads."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    text = text if len(text) <= 300 else text[:300] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def file_checksums(step_dir: Path) -> dict[str, str]:
    """sha256 of each file under `step_dir` (relative path -> hex digest), the checksum file itself aside."""
    sums = {}
    for path in sorted(p for p in step_dir.rglob("*") if p.is_file() and not p.name.startswith(CHECKSUMS)):
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda f=f: f.read(1 << 24), b""):
                digest.update(block)
        sums[path.relative_to(step_dir).as_posix()] = digest.hexdigest()
    return sums


def verify(step_dir: Path) -> str | None:
    """What is wrong with the files of `step_dir` against its sha256.json ("" when it has none), None when they
    match."""
    path = step_dir / CHECKSUMS
    if not path.is_file():
        return ""
    try:
        expected = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return f"its {CHECKSUMS} cannot be read ({_cause(e)})"
    actual = file_checksums(step_dir)
    missing = sorted(set(expected) - set(actual))
    changed = sorted(name for name in expected.keys() & actual.keys() if expected[name] != actual[name])
    if missing:
        return f"{len(missing)} file(s) missing, e.g. {missing[0]}"
    if changed:
        return f"{len(changed)} file(s) differ from their sha256, e.g. {changed[0]}"
    return None


class _OneLineOrbaxErrors(logging.Filter):
    """Orbax logs a failed background save with a traceback from each of its threads, and asyncio one per array
    whose write never ran ("Future exception was never retrieved"); the error is raised once, so keep its lines
    short and drop the repeats."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "asyncio" and "exception was never retrieved" in str(record.msg):
            return False
        if f"{os.sep}orbax{os.sep}" in record.pathname and record.exc_info:
            record.exc_info, record.exc_text = None, None
        return True


def _install_quiet_failures() -> None:
    """The filter above, and an unraisable hook: after a failed Orbax write, tensorstore calls back into the save
    thread's closed asyncio loop once per pending array ("Event loop is closed", a traceback each)."""
    if any(isinstance(f, _OneLineOrbaxErrors) for f in logging.getLogger("absl").filters):
        return
    for name in ("absl", "asyncio"):
        logging.getLogger(name).addFilter(_OneLineOrbaxErrors())
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if not (isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"):
            previous(unraisable)

    sys.unraisablehook = hook


class Checkpoints:
    """`save(step, state, data, scheduler, metrics)`, `restore(abstract_state)`, `restore_newest_good(...)`,
    `latest_step()`."""

    def __init__(self, directory: str | os.PathLike, keep_last: int | None = None, best_metric: str | None = "pppl",
                 async_save: bool = True) -> None:
        """`keep_last`: the trainer's config.keep_checkpoints; None (a reader, such as export) deletes nothing."""
        _install_quiet_failures()
        policies = [] if keep_last is None else [checkpoint_managers.LatestN(keep_last)]
        if best_metric:
            policies.append(checkpoint_managers.BestN(get_metric_fn=lambda metrics: metrics[best_metric], n=1,
                                                      keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=async_save,
            preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
            cleanup_tmp_directories=True,
        )
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "data", "scheduler"))
        self._unsealed: list[int] = []  # saved (or saving), no sha256.json yet

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def step_dir(self, step: int) -> Path:
        return self.directory / str(step)

    def save(self, step: int, state: Any, data: dict, scheduler: dict, metrics: dict[str, float] | None = None,
             force: bool = True) -> bool:
        """Start saving (asynchronously) after sealing the previous save; `metrics` (e.g. {"pppl": 20.8}) rank it
        for keep-best. A failed write raises CheckpointError naming the step directory."""
        self._seal()
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data),
                                  scheduler=ocp.args.JsonSave(scheduler))
        try:
            saved = self.manager.save(step, args=args, metrics=metrics, force=force)
        except (OSError, ValueError) as e:  # tensorstore reports a failed write as a ValueError
            raise self._write_error(step, e) from e
        self._unsealed.append(step)
        return saved

    def _write_error(self, step: int | None, error: BaseException) -> CheckpointError:
        good = [s for s in self.all_steps() if s != step and s not in self._unsealed]
        last = f"the last complete checkpoint, step {max(good)}, is intact" if good else "there is no earlier one"
        where = f"checkpoint step {step} to {self.step_dir(step)}" if step is not None else f"a checkpoint to " \
            f"{self.directory}"
        return CheckpointError(f"writing {where} failed ({_cause(error)}); {last}. Free space or fix the filesystem, "
                               f"then rerun the command to resume")

    def _seal(self) -> None:
        """Wait for the saves in flight; a failed one raises CheckpointError, each complete one gets sha256.json."""
        steps, self._unsealed = self._unsealed, []
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001 - the background save's error, whatever the writer raised
            raise self._write_error(steps[-1] if steps else None, e) from e
        if jax.process_index() != 0:  # process 0 renamed the step directories into place; it checks and hashes
            return
        done = set(self.all_steps())
        for step in steps:
            if step not in done or not self.step_dir(step).is_dir():
                raise self._write_error(step, RuntimeError("Orbax did not finalise it"))
            self._write_checksums(step)

    def _write_checksums(self, step: int) -> None:
        path = self.step_dir(step) / CHECKSUMS
        partial = path.with_name(CHECKSUMS + ".partial")
        try:
            partial.write_text(json.dumps(file_checksums(self.step_dir(step)), indent=0) + "\n")
            os.replace(partial, path)
        except OSError as e:
            with contextlib.suppress(OSError):
                partial.unlink()
            raise CheckpointError(f"writing {path} failed ({_cause(e)}); checkpoint step {step} is complete but "
                                  f"unverified. Free space or fix the filesystem, then rerun to resume") from e

    def check(self, step: int) -> None:
        """Raise CorruptCheckpoint when `step` fails verification (process 0 decides); warn when it cannot be
        verified."""
        problem = verify(self.step_dir(step)) if jax.process_index() == 0 else None
        status = 0 if problem is None else 1 if problem == "" else 2
        if jax.process_count() > 1:  # the others wait (not in a collective, which gives peers 30 s) for process 0
            ocp.multihost.sync_global_processes(f"flava_jax_verified_{step}", timeout=3600,
                                                processes=set(range(jax.process_count())))
            status = int(multihost_utils.broadcast_one_to_all(np.int32(status)))
        if status == 2:
            raise CorruptCheckpoint(step, f"checkpoint step {step} in {self.directory} is corrupt: "
                                          f"{problem or 'it failed verification on process 0'}")
        if status == 1:
            log.warning("checkpoint step %d in %s has no %s (saved by an older version, or the run stopped before "
                        "it was written): restoring it unverified", step, self.directory, CHECKSUMS)

    def restore(self, abstract_state: Any = None, step: int | None = None) -> tuple[Any, dict, dict, int] | None:
        """(state, data state, scheduler state, step) of `step` (default: the latest), verified, sharded like
        `abstract_state` (ShapeDtypeStructs with shardings), or as saved on this process's default device when it
        is None (export, inspection); None when there is no checkpoint. A bad step raises CorruptCheckpoint."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        self.check(step)
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
                                  scheduler=ocp.args.JsonRestore())
        try:
            restored = self.manager.restore(step, args=args)
        except Exception as e:  # noqa: BLE001 - Orbax raises many kinds of errors for a damaged checkpoint
            raise CorruptCheckpoint(step, f"checkpoint step {step} in {self.directory} could not be restored "
                                          f"({_cause(e)})") from e
        return restored.state, restored.data, restored.scheduler, step

    def restore_newest_good(self, abstract_state: Any = None) -> tuple[tuple[Any, dict, dict, int] | None, list[int]]:
        """(the newest checkpoint that verifies and restores, or None when there is none, the bad steps skipped).
        Each bad one is reported in one line and moved to corrupt/; a workdir whose every checkpoint is bad raises
        CheckpointError rather than starting over."""
        bad = []
        for step in sorted(self.all_steps(), reverse=True):
            try:
                return self.restore(abstract_state, step), bad
            except CorruptCheckpoint as e:
                log.error("%s; moved to %s", e, self.quarantine(step))
                bad.append(step)
        if bad:
            raise CheckpointError(f"no checkpoint in {self.directory} is intact (steps {bad} are in "
                                  f"{self.directory / CORRUPT_DIR}); start a new workdir, or restore a backup")
        return None, bad

    def quarantine(self, step: int) -> Path:
        """Move step's directory to corrupt/STEP (corrupt/STEP.N if that is taken) and forget it."""
        destination = self.directory / CORRUPT_DIR / str(step)
        if jax.process_index() == 0:
            destination.parent.mkdir(exist_ok=True)
            n = 0
            while destination.exists():
                n += 1
                destination = destination.with_name(f"{step}.{n}")
            os.rename(self.step_dir(step), destination)
        if jax.process_count() > 1:
            ocp.multihost.sync_global_processes(f"flava_jax_quarantine_{step}",
                                                processes=set(range(jax.process_count())))
        self.manager.reload()
        return destination

    def wait(self) -> None:
        self._seal()

    def close(self) -> None:
        """Seal the last save and release Orbax's threads (also after a failed save: Orbax raises its error once)."""
        try:
            self._seal()
        finally:
            self.manager.close()


def abstract(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying `shardings`, the restore targets."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
