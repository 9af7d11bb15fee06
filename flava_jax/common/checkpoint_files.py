"""What reading a transformers checkpoint needs whatever framework reads it: a sharded checkpoint's files (its index),
PyTorch pickles (`pytorch_model.bin`, a Lightning checkpoint) read as tensors only, and torch.compile's names.

A pickle goes through `torch.load(weights_only=True)`, never the unpickler that runs whatever code a file holds;
torch is imported only then (the eval extra)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

TORCH_WEIGHTS = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"
_COMPILED = re.compile(r"(^|\.)_orig_mod\.")  # torch.compile wraps a module as <name>._orig_mod


class UnsafePickle(ValueError):
    """A pickle that loading as tensors only refuses: it holds other objects, or is corrupt."""


def index_shards(index: Path) -> list[Path]:
    """The shard files a sharded checkpoint's index (`*.index.json`) names, beside it, each once, in name order."""
    return [index.parent / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]


def read_pickle(path: Path) -> dict[str, Any]:
    """The state dict in a PyTorch pickle (a Lightning checkpoint's `state_dict`), or UnsafePickle in one line."""
    import torch

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for unsafe or corrupt files
        # Not torch's message: it advises weights_only=False, which runs whatever code the pickle holds.
        raise UnsafePickle(f"{path} could not be read with torch.load(weights_only=True) ({type(e).__name__}): it "
                           "holds objects other than tensors, or is corrupt, and flava_jax never unpickles "
                           "arbitrary objects. Only if you trust the file: load it in a separate environment and "
                           "save its state dict with safetensors.torch.save_file, then pass that file") from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a Lightning checkpoint
    if not isinstance(state, dict):
        raise UnsafePickle(f"{path} holds a {type(state).__name__}, not a state dict of named tensors")
    return state


def uncompiled(state: dict[str, Any]) -> dict[str, Any]:
    """`state` with torch.compile's `_orig_mod.` dropped from its names (the paper's checkpoints carry it)."""
    return {_COMPILED.sub(r"\1", k): v for k, v in state.items()}
