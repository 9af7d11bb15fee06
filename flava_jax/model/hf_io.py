"""Import from and export to transformers' FlavaForPreTraining: config.json + model.safetensors.

The Flax parameter tree mirrors HF's module names, so the mapping is a table built from leaf names alone:

    Flax leaf                      HF weight                 transform
    .../kernel  (2-D, Dense)       .../weight                transpose
    .../kernel  (4-D, Conv HWIO)   .../weight  (OIHW)        transpose(3, 2, 0, 1)
    .../scale   (LayerNorm)        .../weight                -
    .../embedding (Embed)          .../weight                -
    .../bias, cls_token, ...       same name                 -

Both directions visit every weight exactly once and fail with the names of missing, unexpected or misshapen
weights. Pickle is never unpickled: `pytorch_model.bin` goes through torch's `weights_only` loader.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from flava_jax.common.checkpoint_files import (
    TORCH_INDEX,
    TORCH_WEIGHTS,
    UnsafePickle,
    index_shards,
    read_pickle,
    uncompiled,
)
from flava_jax.model.config import FlavaConfig
from flava_jax.model.flava import FlavaForPreTraining
from flava_jax.model.layers import stack_layers, unstack_layers

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
CONFIG = "config.json"

# HF ties `<head>.bias` to `<head>.decoder.bias`; saved files hold only the latter, older state_dicts hold both.
_TIED_ALIASES = {f"{h}.bias": f"{h}.decoder.bias" for h in ("mim_head", "mlm_head", "mmm_image_head", "mmm_text_head")}
# Buffers that older transformers versions saved with the weights; they carry no learned values.
_BUFFERS = ("flava.text_model.embeddings.position_ids", "flava.text_model.embeddings.token_type_ids")


class CheckpointError(ValueError):
    """A checkpoint that does not match the model; the message lists the weights concerned and what to do."""


# ------------------------------------------------------------------------------------------------ name table
def _hf_name(path: tuple[str, ...], ndim: int) -> tuple[str, Callable[[np.ndarray], np.ndarray],
                                                       Callable[[np.ndarray], np.ndarray]]:
    """HF weight name for a Flax leaf, with the Flax->HF and HF->Flax array transforms."""
    leaf = path[-1]
    same = lambda a: a  # noqa: E731
    if leaf == "kernel" and ndim == 2:
        return ".".join(path[:-1] + ("weight",)), np.transpose, np.transpose
    if leaf == "kernel" and ndim == 4:
        return (".".join(path[:-1] + ("weight",)), lambda a: np.transpose(a, (3, 2, 0, 1)),
                lambda a: np.transpose(a, (2, 3, 1, 0)))
    if leaf in ("scale", "embedding"):
        return ".".join(path[:-1] + ("weight",)), same, same
    return ".".join(path), same, same


@functools.lru_cache(maxsize=16)
def _expected_leaves(config: FlavaConfig) -> dict[tuple[str, ...], jax.ShapeDtypeStruct]:
    """Shapes of every parameter of `config`'s model, in the loop (unscanned) layout (cached; do not mutate)."""
    loop = config.replace(scan_layers=False, remat_policy=None)
    shapes = jax.eval_shape(FlavaForPreTraining(loop).init_params, jax.random.key(0))
    return flatten_dict(shapes)


@functools.lru_cache(maxsize=16)
def hf_name_table(config: FlavaConfig) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
    """HF weight name -> (Flax path in the loop layout, Flax shape), for every weight of `config`'s model (cached;
    do not mutate)."""
    table = {}
    for path, leaf in _expected_leaves(config).items():
        name, _, _ = _hf_name(path, len(leaf.shape))
        table[name] = (path, tuple(leaf.shape))
    return table


def _report(problems: Mapping[str, list[str]], hint: str) -> None:
    lines = [f"{kind} ({len(names)}): {', '.join(sorted(names))}" for kind, names in problems.items() if names]
    if lines:
        raise CheckpointError("checkpoint does not match the model config:\n  " + "\n  ".join(lines) + f"\n{hint}")


# ------------------------------------------------------------------------------------------------ export
def to_hf_state_dict(config: FlavaConfig, params: Any) -> dict[str, np.ndarray]:
    """Flax parameters (either layout) -> HF state dict of numpy arrays, checked weight by weight."""
    flat = flatten_dict(unstack_layers(jax.tree.map(_host_array, params)))
    expected = _expected_leaves(config)
    problems: dict[str, list[str]] = {"missing": [], "unexpected": [], "wrong shape": []}
    state: dict[str, np.ndarray] = {}
    for path, leaf in expected.items():
        name, to_hf, _ = _hf_name(path, len(leaf.shape))
        if path not in flat:
            problems["missing"].append(name)
        elif flat[path].shape != tuple(leaf.shape):
            problems["wrong shape"].append(f"{name} {flat[path].shape} != {tuple(leaf.shape)}")
        else:
            state[name] = np.array(to_hf(flat.pop(path)), order="C")  # a copy; keeps 0-d arrays 0-d
    problems["unexpected"] = ["/".join(p) for p in flat]
    _report(problems, "The parameters were not made for this config; pass the config they were trained with.")
    return state


def _host_array(x: Any) -> np.ndarray:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(x)


def save_pretrained(config: FlavaConfig, params: Any, out_dir: str | os.PathLike, tokenizer: Any = None) -> Path:
    """Write `out_dir` with config.json and model.safetensors that `transformers.FlavaForPreTraining
    .from_pretrained(out_dir)` loads with no missing and no unexpected weights.

    `tokenizer`, if given, is anything with a `save_pretrained(out_dir)` method (an HF tokenizer, or the project's
    tokenizer); its files land beside the weights so `AutoTokenizer.from_pretrained(out_dir)` works.
    Only process 0 writes; every process must call this when parameters are sharded across hosts.
    """
    state = to_hf_state_dict(config, params)
    out = Path(out_dir)
    if jax.process_index() != 0:
        return out
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / SAFE_WEIGHTS), metadata={"format": "pt"})
    hf_config = config.to_hf_dict()
    hf_config["dtype"] = str(next(iter(state.values())).dtype) if state else config.param_dtype
    (out / CONFIG).write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    return out


# ------------------------------------------------------------------------------------------------ import
def from_hf_state_dict(config: FlavaConfig, state: Mapping[str, Any]) -> dict[str, Any]:
    """HF state dict -> Flax parameters in `config`'s layout, checked weight by weight.

    Accepts keys containing `_orig_mod.` (torch.compile'd submodules, as the paper's checkpoints have), the tied
    `<head>.bias` aliases (which must equal `<head>.decoder.bias`) and the old `position_ids` buffers.
    """
    state = uncompiled(state)
    table = hf_name_table(config)
    expected = _expected_leaves(config)
    problems: dict[str, list[str]] = {"missing": [], "unexpected": [], "wrong shape": [], "inconsistent": []}
    for alias, target in _TIED_ALIASES.items():
        if alias in state:
            value = state.pop(alias)
            if target not in state:
                state[target] = value
            elif not np.array_equal(_to_numpy(value), _to_numpy(state[target])):
                problems["inconsistent"].append(f"{alias} differs from its tied {target}")
    for buffer in _BUFFERS:
        if buffer in state:
            value = _to_numpy(state.pop(buffer))
            if buffer.endswith("position_ids") and not np.array_equal(value.reshape(-1), np.arange(value.size)):
                problems["inconsistent"].append(f"{buffer} is not 0..n-1, which flava_jax assumes")
    flat: dict[tuple[str, ...], np.ndarray] = {}
    for name, (path, shape) in table.items():
        if name not in state:
            problems["missing"].append(name)
            continue
        _, to_hf, to_flax = _hf_name(path, len(shape))
        raw = _to_numpy(state.pop(name))
        value = to_flax(raw)
        if value.shape != shape:
            wanted = to_hf(np.broadcast_to(np.float32(0), shape)).shape
            problems["wrong shape"].append(f"{name} is {tuple(raw.shape)}, the config needs {wanted}")
            continue
        flat[path] = np.array(value, dtype=expected[path].dtype, order="C")
    problems["unexpected"] = sorted(state)
    _report(problems, "Check that config.json belongs to these weights (sizes, layers, vocabularies, init_codebook).")
    params = unflatten_dict(flat)
    return stack_layers(params) if config.scan_layers else params


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if type(value).__module__.startswith("torch"):
        import ml_dtypes
        import torch

        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:
            return value.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return value.numpy()
    return np.asarray(value)


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    try:
        with safe_open(str(path), framework="np") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as e:
        raise CheckpointError(f"{path} is not a complete safetensors file ({e}), probably cut short while being "
                              "written or copied; write or copy it again") from e


def _read_torch(path: Path) -> dict[str, Any]:
    try:
        return read_pickle(path)
    except ImportError as e:  # torch belongs to the eval extra only
        raise CheckpointError(f"{path} is a PyTorch pickle; reading it needs torch (pip install "
                              "'flava_jax[eval]'), or convert it to model.safetensors") from e
    except UnsafePickle as e:
        raise CheckpointError(str(e)) from e


def _read_weights(path: Path) -> dict[str, Any]:
    """Weights from a .safetensors/.bin file, or from a directory (single file or sharded with an index)."""
    if path.is_file():
        return _read_safetensors(path) if path.suffix == ".safetensors" else _read_torch(path)
    for single, index, reader in ((SAFE_WEIGHTS, SAFE_INDEX, _read_safetensors), (TORCH_WEIGHTS, TORCH_INDEX,
                                                                                   _read_torch)):
        if (path / single).is_file():
            return reader(path / single)
        if (path / index).is_file():
            state: dict[str, Any] = {}
            for shard in index_shards(path / index):
                state.update(reader(shard))
            return state
    raise CheckpointError(f"{path} holds no {SAFE_WEIGHTS}, {SAFE_INDEX}, {TORCH_WEIGHTS} or {TORCH_INDEX}; "
                          "pass a directory written by save_pretrained or a weights file")


def from_pretrained(path: str | os.PathLike, config: FlavaConfig | None = None,
                    **runtime: Any) -> tuple[FlavaConfig, dict[str, Any]]:
    """Load `(config, params)` from an HF FLAVA directory, a .safetensors file or a pytorch_model.bin.

    The config comes from `config`, else from config.json in the directory (or beside the file). `runtime`
    sets flava_jax's run-time switches (dtype, param_dtype, remat_policy, scan_layers, multimodal_attention_mask);
    parameters are returned in `param_dtype` and in the scanned layout when `scan_layers` is set.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    state = dict(_read_weights(path))
    if config is None:
        config_file = (path if path.is_dir() else path.parent) / CONFIG
        if not config_file.is_file():
            raise CheckpointError(f"no {CONFIG} at {config_file}; pass config=FlavaConfig(...) for a bare weights "
                                  "file")
        config = FlavaConfig.from_hf_dict(json.loads(config_file.read_text()), **runtime)
    elif runtime:
        config = config.replace(**runtime)
    params = from_hf_state_dict(config, state)
    return config, jax.tree.map(jax.numpy.asarray, params)
