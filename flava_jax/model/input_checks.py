"""Checks on the inputs of a FLAVA forward pass, so bad input fails with a message instead of a wrong number.

Shapes, dtypes and batch sizes are checked at trace time. Values (token ids inside the vocabulary, labels, ITM
labels) are checked whenever they are concrete: always in eager calls, and by `check_inputs` on host batches
before they go to the device. Inside `jax.jit` values are unknown at trace time; there an out-of-vocabulary id
reads NaN from the embedding table, so the loss turns NaN rather than silently wrong.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from flava_jax.model.config import FlavaConfig


class InputError(ValueError):
    """A forward-pass input with the wrong shape, dtype or values; the message names the argument."""


def _concrete(x: Any) -> np.ndarray | None:
    """`x` as a numpy array when its values are known (not a tracer), else None."""
    if x is None or isinstance(x, jax.core.Tracer):
        return None
    return np.asarray(x)


def _fail(name: str, message: str) -> None:
    """Raise the `InputError` for argument `name`."""
    raise InputError(f"{name}: {message}")


def _check_ids(name: str, x: Any, low: int, high: int, allowed: tuple[int, ...] = ()) -> None:
    """Integer dtype always; values in [low, high) or `allowed` when concrete."""
    if not np.issubdtype(np.dtype(x.dtype), np.integer):
        _fail(name, f"must hold integers, got dtype {x.dtype}")
    values = _concrete(x)
    if values is None or values.size == 0:
        return
    bad = ~((values >= low) & (values < high))
    for a in allowed:
        bad &= values != a
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        extra = f" or {allowed}" if allowed else ""
        _fail(name, f"{int(bad.sum())} values outside [{low}, {high}){extra}, e.g. {values[where]} at index {where}")


def check_inputs(config: FlavaConfig, *, input_ids: Any = None, input_ids_masked: Any = None,
                 pixel_values: Any = None, codebook_pixel_values: Any = None, attention_mask: Any = None,
                 token_type_ids: Any = None, bool_masked_pos: Any = None, position_ids: Any = None,
                 mlm_labels: Any = None, mim_labels: Any = None, itm_labels: Any = None) -> None:
    """Raise `InputError` naming the first argument whose shape, dtype or (concrete) values do not fit `config`."""
    text_shape = _check_text_ids(config, input_ids, input_ids_masked)
    if text_shape is None:
        _check_absent("given without input_ids or input_ids_masked", attention_mask=attention_mask,
                      token_type_ids=token_type_ids, position_ids=position_ids, mlm_labels=mlm_labels)
    else:
        _check_text_extras(config, text_shape, attention_mask, token_type_ids, position_ids)
    if pixel_values is None:
        _check_absent("given without pixel_values", bool_masked_pos=bool_masked_pos, mim_labels=mim_labels,
                      codebook_pixel_values=codebook_pixel_values)
    else:
        _check_pixels(config, pixel_values)
    _check_patch_inputs(config, bool_masked_pos, mim_labels)
    _check_codebook_pixels(config, codebook_pixel_values)
    _check_labels(config, text_shape, mlm_labels, itm_labels)
    _check_batch_sizes(input_ids=input_ids, input_ids_masked=input_ids_masked, pixel_values=pixel_values,
                       bool_masked_pos=bool_masked_pos, mim_labels=mim_labels,
                       codebook_pixel_values=codebook_pixel_values, mlm_labels=mlm_labels, itm_labels=itm_labels)


def _check_absent(reason: str, **inputs: Any) -> None:
    """Fail on the first of `inputs` that is given although what it refers to is not."""
    for name, x in inputs.items():
        if x is not None:
            _fail(name, reason)


def _check_text_ids(config: FlavaConfig, input_ids: Any, input_ids_masked: Any) -> tuple[int, ...] | None:
    """The (batch, length) shared by the given token ids, which must hold ids of the vocabulary; None without text."""
    text_shape = None
    for name, ids in (("input_ids", input_ids), ("input_ids_masked", input_ids_masked)):
        if ids is None:
            continue
        if ids.ndim != 2:
            _fail(name, f"must be (batch, length), got shape {ids.shape}")
        if text_shape is not None and ids.shape != text_shape:
            _fail(name, f"shape {ids.shape} differs from input_ids {text_shape}")
        text_shape = ids.shape
        _check_ids(name, ids, 0, config.text_config.vocab_size)
    return text_shape


def _check_text_extras(config: FlavaConfig, text_shape: tuple[int, ...], attention_mask: Any, token_type_ids: Any,
                       position_ids: Any) -> None:
    """The text length fits the position table, and the per-token inputs match the text shape and value ranges."""
    text = config.text_config
    if position_ids is None and text_shape[1] > text.max_position_embeddings:
        _fail("input_ids", f"length {text_shape[1]} exceeds text_config.max_position_embeddings="
              f"{text.max_position_embeddings}")
    for name, x in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
        if x is not None and tuple(x.shape) != tuple(text_shape):
            _fail(name, f"shape {x.shape} must equal the text shape {text_shape}")
    if position_ids is not None:
        if position_ids.ndim != 2 or position_ids.shape[1] != text_shape[1] or position_ids.shape[0] not in (
                1, text_shape[0]):
            _fail("position_ids", f"shape {position_ids.shape} must be (1 or batch, {text_shape[1]})")
        _check_ids("position_ids", position_ids, 0, text.max_position_embeddings)
    if token_type_ids is not None:
        _check_ids("token_type_ids", token_type_ids, 0, text.type_vocab_size)
    if attention_mask is not None:
        _check_ids("attention_mask", attention_mask.astype(np.int32) if attention_mask.dtype == bool
                   else attention_mask, 0, 2)


def _check_pixels(config: FlavaConfig, pixel_values: Any) -> None:
    """Floating-point NCHW images of the configured size."""
    image = config.image_config
    expected = (image.num_channels, image.image_size, image.image_size)
    if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != expected:
        _fail("pixel_values", f"must be (batch, {', '.join(map(str, expected))}) (NCHW), got {pixel_values.shape}")
    if not np.issubdtype(np.dtype(pixel_values.dtype), np.floating):
        _fail("pixel_values", f"must be floating point (normalised pixels), got dtype {pixel_values.dtype}")


def _check_patch_inputs(config: FlavaConfig, bool_masked_pos: Any, mim_labels: Any) -> None:
    """Patch mask and MIM labels: one entry per patch (flat or on the grid), a 0/1 mask, codebook-vocabulary labels."""
    image = config.image_config
    grid, num_patches = image.grid_size, image.num_patches
    for name, x in (("bool_masked_pos", bool_masked_pos), ("mim_labels", mim_labels)):
        if x is not None and tuple(x.shape[1:]) not in ((num_patches,), (grid, grid)):
            _fail(name, f"must be (batch, {num_patches}) or (batch, {grid}, {grid}), got {x.shape}")
    if bool_masked_pos is not None and bool_masked_pos.dtype != bool:
        _check_ids("bool_masked_pos", bool_masked_pos, 0, 2)
    if mim_labels is not None:
        _check_ids("mim_labels", mim_labels, 0, image.vocab_size, allowed=(config.ce_ignore_index,))


def _check_codebook_pixels(config: FlavaConfig, codebook_pixel_values: Any) -> None:
    """NCHW codebook images whose side gives one codebook token per image patch."""
    if codebook_pixel_values is None:
        return
    side = config.codebook_image_size
    expected = (config.image_codebook_config.input_channels, side, side)
    if codebook_pixel_values.ndim != 4 or tuple(codebook_pixel_values.shape[1:]) != expected:
        _fail("codebook_pixel_values", f"must be (batch, {', '.join(map(str, expected))}) (NCHW): the codebook's "
              f"three 2x poolings must give one token per image patch; got {codebook_pixel_values.shape}")


def _check_labels(config: FlavaConfig, text_shape: tuple[int, ...] | None, mlm_labels: Any, itm_labels: Any) -> None:
    """MLM labels no longer than the text and in its vocabulary; ITM labels one 0/1 per example."""
    if mlm_labels is not None:
        if mlm_labels.ndim != 2 or mlm_labels.shape[1] > text_shape[1]:
            _fail("mlm_labels", f"must be (batch, length <= {text_shape[1]}), got {mlm_labels.shape}")
        _check_ids("mlm_labels", mlm_labels, 0, config.text_config.vocab_size, allowed=(config.ce_ignore_index,))
    if itm_labels is not None:
        if itm_labels.ndim not in (1, 2) or (itm_labels.ndim == 2 and itm_labels.shape[1] != 1):
            _fail("itm_labels", f"must be (batch,) or (batch, 1), got {itm_labels.shape}")
        _check_ids("itm_labels", itm_labels, 0, 2)


def _check_batch_sizes(**inputs: Any) -> None:
    """Every given input has the same leading (batch) dimension."""
    batch_sizes = {name: x.shape[0] for name, x in inputs.items() if x is not None}
    if len(set(batch_sizes.values())) > 1:
        _fail("batch", f"inputs disagree on the batch size: {batch_sizes}")
