"""WORKDIR/run.json: what an export needs besides a checkpoint (the model config, the tokenizer's path), the run's
whole config and the changes a resume accepted, written by the trainer once its checks pass and read by
`python -m flava_jax.export`. A resume compares its config with the run's: changes to what a step computes are
refused unless config.allow_config_change says to accept them (then recorded, with the step, under "changes")."""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax

from flava_jax.common.settings import ConfigError
from flava_jax.model.config import FlavaConfig

RUN_FILE = "run.json"
ABSENT = "<absent>"  # a key one of the two configs lacks
# Keys a resume may change freely (fnmatch patterns over dotted keys): how long the run goes, how often it logs,
# evaluates and saves, where it caches and how fast it reads, what BLiMP scores (it never steers training); none
# changes what a step computes.
FREE_KEYS = ("config.total_steps", "config.checkpoint_every_steps", "config.keep_checkpoints",
             "config.log_every_steps", "config.compilation_cache_dir", "config.host_malloc",
             "config.allow_config_change", "config.data.stage_dir", "config.data.cache_dir", "config.data.download",
             "config.data.fetch.*", "config.data.prepare_workers", "config.data.workers", "config.data.worker_buffer",
             "config.data.read_threads", "config.data.read_buffer", "config.model.remat_policy",
             "config.model.attention", "config.sharding.gather_weights",
             "config.eval.every_steps", "config.eval.evaluators.*.every_steps", "config.eval.evaluators.*.dir",
             "config.eval.evaluators.*.limit", "config.eval.evaluators.*.paradigms")


def write_run_file(workdir: str | os.PathLike, model: FlavaConfig, tokenizer: str | os.PathLike,
                   tokenizer_sha256: str, config: dict[str, Any], changes: list[dict[str, Any]]) -> None:
    """run.json, replaced whole (a kill mid-write leaves the previous one)."""
    if jax.process_index() == 0:
        run = {"model": model.to_dict(), "tokenizer": str(Path(tokenizer).resolve()),
               "tokenizer_sha256": tokenizer_sha256, "config": config, "changes": changes}
        path = Path(workdir) / RUN_FILE
        partial = path.with_name(f"{RUN_FILE}.partial")
        partial.write_text(json.dumps(run, indent=1, default=str) + "\n")
        os.replace(partial, path)


def read_run_file(workdir: str | os.PathLike) -> dict[str, Any] | None:
    """The workdir's run.json, or None where a run has not started there."""
    path = Path(workdir) / RUN_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _leaves(tree: Any, prefix: str = "config") -> dict[str, Any]:
    """Dotted key -> value of a config as JSON holds it (tuples are lists; sections recursed)."""
    if not isinstance(tree, Mapping):
        return {prefix: tree}
    return {key: value for name, sub in tree.items() for key, value in _leaves(sub, f"{prefix}.{name}").items()}


def config_changes(previous: Mapping[str, Any], config: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, old, new) of each key whose value differs between the run's config and `config`, FREE_KEYS aside."""
    old = _leaves(json.loads(json.dumps(previous, default=str)))
    new = _leaves(json.loads(json.dumps(config, default=str)))
    return [(key, old.get(key, ABSENT), new.get(key, ABSENT)) for key in sorted(old.keys() | new.keys())
            if old.get(key, ABSENT) != new.get(key, ABSENT)
            and not any(fnmatch.fnmatchcase(key, pattern) for pattern in FREE_KEYS)]


def check_resume(workdir: str | os.PathLike, previous: Mapping[str, Any],
                 config: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """The changes from `previous` (the config of the run whose checkpoints `workdir` holds) to `config`; a
    ConfigError listing them unless `config["allow_config_change"]`."""
    changes = config_changes(previous, config)
    if changes and not config.get("allow_config_change"):
        listed = "; ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in changes)
        raise ConfigError(f"{workdir} holds checkpoints of a run whose config differs in what it trains: {listed}. "
                          f"Resume with the run's values (its {RUN_FILE} has them), use a new workdir, or pass "
                          f"--config.allow_config_change=True to go on with the new ones (recorded in {RUN_FILE})")
    return changes


def change_log(previous: Mapping[str, Any] | None, changes: list[tuple[str, Any, Any]],
               step: int) -> list[dict[str, Any]]:
    """run.json's "changes": the run's earlier ones, then `changes` accepted at `step`."""
    return [*(previous or {}).get("changes", []),
            *({"step": step, "key": key, "old": old, "new": new} for key, old, new in changes)]
