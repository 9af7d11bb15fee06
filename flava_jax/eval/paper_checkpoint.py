"""The paper's released checkpoints as exports: `python -m flava_jax.evaluate --model=REPO_ID_OR_DIR` and
`python -m flava_jax.export --from=REPO_ID_OR_DIR`.

The authors pushed their best half-size checkpoint of each grid cell to the Hugging Face Hub
(`theodor1289/bestckpt_half_sized_text{t}_vision{v}`). Those repositories hold a Lightning + torch.compile state dict
as a pickle (`pytorch_model.bin`, keys with `_orig_mod.`), a FLAVA config.json with `compile_submodels`, and BERT's
tokenizer files. `export_of` finds such a snapshot (a local directory, or a Hub id downloaded with huggingface_hub)
and converts it once: the weights through torch's `weights_only` loader (a pickle holding anything but tensors is
refused, and nothing in it runs), `_orig_mod.` dropped, loaded strictly into transformers' FlavaForPreTraining, and
written as model.safetensors with the config and tokenizer beside them (`<snapshot>.flava_jax/`, or `out`). From
then on it is scored as any export is.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from flava_jax.common.checkpoint_files import (
    TORCH_INDEX,
    TORCH_WEIGHTS,
    UnsafePickle,
    index_shards,
    read_pickle,
    uncompiled,
)
from flava_jax.eval.torch_pll import SAFETENSORS, BadExport

log = logging.getLogger("flava_jax")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
CONVERTED = ".flava_jax"  # the cached export's suffix, beside the snapshot
# Old transformers registered these buffers; they hold 0..n-1 and are not weights.
_BUFFERS = re.compile(r"(^|\.)position_ids$")


def is_paper_layout(path: Path) -> bool:
    """A directory with pickled weights and no safetensors: the layout of the paper's released checkpoints."""
    pickled = any((path / name).is_file() for name in (TORCH_WEIGHTS, TORCH_INDEX))
    return pickled and not any((path / name).is_file() for name in SAFETENSORS)


def snapshot(model: str) -> Path:
    """`model` as a local directory: itself, or the Hub repo `owner/name` downloaded (one line when it cannot be)."""
    path = Path(model).expanduser()
    if path.exists():
        return path
    if not HUB_ID.match(model):
        raise BadExport(f"--model={model} is neither a directory nor a Hugging Face Hub repo id (owner/name)")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model))
    except Exception as e:  # noqa: BLE001 - offline, unknown repo, refused: each raises its own type
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise BadExport(f"--model={model}: could not download it from the Hugging Face Hub ({type(e).__name__}: "
                        f"{reason}). Where there is network, run `huggingface-cli download {model} --local-dir DIR` "
                        f"(or `git clone https://huggingface.co/{model} DIR`), copy DIR here and pass --model=DIR") \
            from e


def export_of(model: str, out: str | os.PathLike | None = None) -> Path:
    """An export directory for `model` (an export, a snapshot in the paper's layout, or a Hub id): the export
    itself, or the snapshot converted into `out` (default: `<snapshot>.flava_jax`, reused when already there)."""
    path = snapshot(model)
    if not is_paper_layout(path):
        if out is not None:
            raise BadExport(f"{path} holds no pytorch_model.bin to convert (it is already an export, or not a "
                            f"checkpoint)")
        return path
    target = Path(out) if out is not None else path.with_name(path.name + CONVERTED)
    if out is None and any((target / name).is_file() for name in SAFETENSORS):
        log.info("%s: using its conversion in %s", path, target)
        return target
    if out is not None:
        return convert(path, target)
    partial = target.with_name(target.name + ".partial")  # renamed when complete: a cut-short one is never reused
    convert(path, partial)
    partial.rename(target)
    return target


def read_state_dict(path: Path) -> dict[str, Any]:
    """The snapshot's weights through `torch.load(weights_only=True)`, sharded or not, `_orig_mod.` dropped."""
    files = [path / TORCH_WEIGHTS] if (path / TORCH_WEIGHTS).is_file() else index_shards(path / TORCH_INDEX)
    state: dict[str, Any] = {}
    for file in files:
        try:
            state.update(read_pickle(file))
        except UnsafePickle as e:
            raise BadExport(str(e)) from e
    return {k: v for k, v in uncompiled(state).items() if not _BUFFERS.search(k)}


def convert(path: Path, out: Path) -> Path:
    """Write the paper-layout snapshot at `path` as an export at `out`: config, model.safetensors, tokenizer."""
    import transformers

    config = transformers.FlavaConfig.from_pretrained(path)
    for attribute in ("compile_submodels",):  # the paper's training switch, meaningless to transformers
        if hasattr(config, attribute):
            delattr(config, attribute)
    model = transformers.FlavaForPreTraining(config)
    missing, unexpected = model.load_state_dict(read_state_dict(path), strict=False)
    missing = [k for k in missing if not _BUFFERS.search(k)]
    if missing or unexpected:
        raise BadExport(f"{path}: its weights do not fit its config.json: missing {missing[:5]}"
                        f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                        f"{' ...' if len(unexpected) > 5 else ''}")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise BadExport(f"{path} has no loadable tokenizer ({e}); the paper's checkpoints carry BERT's") from e
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    log.info("converted %s (the paper's layout) to the export %s", path, out)
    return out
