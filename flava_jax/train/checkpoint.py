"""Checkpoints over Orbax's CheckpointManager: train state + data iterator state + scheduler state, saved
asynchronously, keeping the last N and the best by a metric (pseudo-perplexity, lower is better).

Orbax writes each checkpoint under a temporary name and renames it when complete, so a run killed mid-save
leaves a directory that `latest_step` never returns: a resume always starts from a complete checkpoint.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

log = logging.getLogger("flava_jax")


class Checkpoints:
    """`save(step, state, data, scheduler, metrics)`, `restore(abstract_state)`, `latest_step()`."""

    def __init__(self, directory: str | os.PathLike, keep_last: int | None = None, best_metric: str | None = "pppl",
                 async_save: bool = True) -> None:
        """`keep_last`: the trainer's config.keep_checkpoints; None (a reader, such as export) deletes nothing."""
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

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, data: dict, scheduler: dict, metrics: dict[str, float] | None = None,
             force: bool = True) -> bool:
        """Start saving (asynchronously); `metrics` (e.g. {"pppl": 20.8}) rank it for keep-best."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data),
                                  scheduler=ocp.args.JsonSave(scheduler))
        return self.manager.save(step, args=args, metrics=metrics, force=force)

    def restore(self, abstract_state: Any = None, step: int | None = None) -> tuple[Any, dict, dict, int] | None:
        """(state, data state, scheduler state, step) of `step` (default: the latest), sharded like
        `abstract_state` (ShapeDtypeStructs with shardings), or as saved on this process's default device when it
        is None (export, inspection); None when there is no checkpoint."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
                                  scheduler=ocp.args.JsonRestore())
        try:
            restored = self.manager.restore(step, args=args)
        except Exception as e:  # noqa: BLE001 - Orbax raises many kinds of errors for a damaged checkpoint
            raise RuntimeError(f"checkpoint {self.directory}/{step} could not be restored ({type(e).__name__}: {e})."
                               " Move it aside to resume from an earlier one, or start a fresh workdir") from e
        return restored.state, restored.data, restored.scheduler, step

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying `shardings`, the restore targets."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
