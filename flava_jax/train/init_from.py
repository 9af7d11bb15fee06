"""`config.init_from`: a fresh run starts from an export's weights instead of a random init: one of ours
(`python -m flava_jax.export`), or one of the paper's released checkpoints converted by `python -m flava_jax.export
--from`. The export's architecture must be the run's, and a WordPiece run's vocabulary the export's; both are checked
at start-up, before any data is prepared. A run that has a checkpoint resumes from it and ignores `init_from`."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from flava_jax.common.settings import ConfigError
from flava_jax.data.tokenizer import AnyTokenizer
from flava_jax.data.wordpiece import WordPieceTokenizer
from flava_jax.model.config import RUNTIME_FIELDS, FlavaConfig
from flava_jax.model.hf_io import CheckpointError, from_pretrained

KEY = "config.init_from"


def _flat(config: Any, prefix: str = "") -> dict[str, Any]:
    out = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            out.update(_flat(value, f"{prefix}{field.name}."))
        elif field.name not in RUNTIME_FIELDS:
            out[f"{prefix}{field.name}"] = value
    return out


def check_architecture(path: str | os.PathLike, model_cfg: FlavaConfig) -> None:
    """ConfigError naming each config.model field in which the export at `path` differs from the run."""
    config_file = Path(path).expanduser() / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"{KEY}={path}: no config.json there; pass an export (python -m flava_jax.export, or "
                          f"python -m flava_jax.export --from=... for the paper's released checkpoints)")
    theirs, ours = _flat(FlavaConfig.from_hf_dict(json.loads(config_file.read_text()))), _flat(model_cfg)
    differ = [f"{key}: the export's {theirs.get(key)!r}, the run's {ours[key]!r}" for key in ours
              if theirs.get(key) != ours[key]]
    if differ:
        raise ConfigError(f"{KEY}={path} is another architecture than config.model ({'; '.join(differ)}); pick the "
                          f"matching model preset (e.g. configs/10M_40K.py:model=half for the paper's half-size "
                          f"checkpoints)")


def check_tokenizer(path: str | os.PathLike, tokenizer: AnyTokenizer) -> None:
    """ConfigError when the run's WordPiece vocabulary is not the export's vocab.txt (ids would mean other words)."""
    vocab = Path(path).expanduser() / "vocab.txt"
    if isinstance(tokenizer, WordPieceTokenizer) and vocab.is_file() \
            and vocab.read_text(encoding="utf-8").splitlines() != list(tokenizer.tokens):
        raise ConfigError(f"{KEY}={path}: its vocab.txt is not the run's tokenizer (config.data.tokenizer); "
                          f"prepare the data with the export's vocabulary")


def initial_params(path: str | os.PathLike, model_cfg: FlavaConfig) -> dict[str, Any]:
    """The export's parameters in the run's layout and dtype."""
    try:
        return from_pretrained(Path(path).expanduser(), config=model_cfg)[1]
    except CheckpointError as e:
        raise ConfigError(f"{KEY}={path}: {e}") from e
