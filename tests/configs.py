"""Configs for tests: configs/debug.py with overrides given as dotted keys, and settings from configs/base.py."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from typing import Any

from ml_collections import ConfigDict

from flava_jax.data.images import FetchSettings
from flava_jax.data.pipeline import PipelineSettings
from flava_jax.data.prepare import PrepareSettings

REPO = Path(__file__).resolve().parents[1]


def load_config(name: str, arg: str | None = None, **overrides: Any) -> ConfigDict:
    """configs/<name>.py's get_config() (get_config(arg) for `--config=configs/<name>.py:<arg>`), with overrides
    like `train__batch_size=8` ("__" for ".")."""
    spec = importlib.util.spec_from_file_location(f"configs.{name}", REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config() if arg is None else module.get_config(arg)
    for key, value in overrides.items():
        *parents, leaf = key.split("__")
        node = config
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return config


def debug_config(**overrides: Any) -> ConfigDict:
    return load_config("debug", **overrides)


def prepare_settings(**changes: Any) -> PrepareSettings:
    """configs/base.py's prepare settings with `changes` (seed 0, a SentencePiece tokenizer and no worker processes
    unless given)."""
    return dataclasses.replace(PrepareSettings.from_config(load_config("base")),
                               **{"seed": 0, "tokenizer": "sentencepiece", "prepare_workers": 1, **changes})


def pipeline_settings(data_dir: str, **changes: Any) -> PipelineSettings:
    """configs/base.py's pipeline settings for `data_dir` with `changes` (seed 0 and no worker processes unless
    given)."""
    settings = PipelineSettings.from_config(load_config("base"), data_dir)
    return dataclasses.replace(settings, **{"seed": 0, "workers": 0, **changes})


def fetch_settings(**changes: Any) -> FetchSettings:
    """configs/base.py's image fetch settings with `changes`."""
    return dataclasses.replace(prepare_settings().fetch, **changes)
