"""WORKDIR/run.json: what an export needs besides a checkpoint (the model config, the tokenizer's path) and the
run's whole config, written by the trainer when a run starts and read by `python -m flava_jax.export`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax

from flava_jax.model.config import FlavaConfig

RUN_FILE = "run.json"


def write_run_file(workdir: str | os.PathLike, model: FlavaConfig, tokenizer: str | os.PathLike,
                   tokenizer_sha256: str, config: dict[str, Any]) -> None:
    if jax.process_index() == 0:
        run = {"model": model.to_dict(), "tokenizer": str(Path(tokenizer).resolve()),
               "tokenizer_sha256": tokenizer_sha256, "config": config}
        (Path(workdir) / RUN_FILE).write_text(json.dumps(run, indent=1, default=str) + "\n")


def read_run_file(workdir: str | os.PathLike) -> dict[str, Any] | None:
    """The workdir's run.json, or None where a run has not started there."""
    path = Path(workdir) / RUN_FILE
    return json.loads(path.read_text()) if path.is_file() else None
