"""The tiny preset exported with the bundled sample's tokenizer, as the evaluator's tests score it."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def tiny_export(params: Any, debug_data: Path, out: Path) -> Path:
    """`params` of the tiny preset saved for transformers at `out`, with `debug_data`'s tokenizer."""
    from flava_jax import FlavaConfig, save_pretrained
    from flava_jax.data.tokenizer import Tokenizer

    tokenizer = Tokenizer.load(debug_data / "tokenizer.model")
    save_pretrained(FlavaConfig.from_preset("tiny"), params, out, tokenizer=tokenizer)
    return out
