"""Configs for tests: configs/debug.py with overrides given as dotted keys."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from ml_collections import ConfigDict

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
