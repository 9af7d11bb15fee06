"""Bad forward inputs fail with a message naming the argument, at trace time; bad values never pass silently."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import pytest

from flava_jax import FlavaConfig, FlavaForPreTraining, InputError, check_inputs
from tests.batches import pair_batch

TINY = FlavaConfig.from_preset("tiny")


@pytest.fixture
def params(tiny_params: Any) -> Any:
    return tiny_params


def _pairs(**changes: Any) -> dict[str, Any]:
    batch = pair_batch(TINY, np.random.default_rng(0), 3, 8, itm_labels=[1, 0, 1])
    batch.update(changes)
    return {k: v for k, v in batch.items() if v is not None}


BAD_SHAPES = {
    "input_ids": dict(input_ids=np.zeros((3, 8, 1), np.int32)),
    "input_ids_masked": dict(input_ids_masked=np.zeros((3, 7), np.int32)),
    "attention_mask": dict(attention_mask=np.ones((3, 9), np.int32)),
    "pixel_values": dict(pixel_values=np.zeros((3, 3, 30, 30), np.float32)),
    "codebook_pixel_values": dict(codebook_pixel_values=np.zeros((3, 3, 16, 16), np.float32)),
    "bool_masked_pos": dict(bool_masked_pos=np.zeros((3, 15), bool)),
    "mim_labels": dict(mim_labels=np.zeros((3, 5, 5), np.int32)),
    "mlm_labels": dict(mlm_labels=np.zeros((3, 9), np.int32)),
    "itm_labels": dict(itm_labels=np.zeros((3, 2), np.int32)),
    "batch": dict(itm_labels=np.zeros((4,), np.int32)),
}


@pytest.mark.parametrize("argument", list(BAD_SHAPES))
def test_wrong_shapes_fail_at_trace_time(params: Any, argument: str) -> None:
    batch = _pairs(**BAD_SHAPES[argument])
    forward = jax.jit(lambda p, b: FlavaForPreTraining(TINY).apply({"params": p}, **b).loss)
    with pytest.raises(InputError, match=rf"^{argument}: "):
        forward.trace(params, batch)  # tracing alone raises: no compilation, no device work


def test_other_input_errors() -> None:
    with pytest.raises(InputError, match="^input_ids: length 129 exceeds"):
        check_inputs(TINY, input_ids=np.zeros((1, 129), np.int32))
    with pytest.raises(InputError, match="^pixel_values: must be floating point"):
        check_inputs(TINY, pixel_values=np.zeros((1, 3, 32, 32), np.uint8))
    with pytest.raises(InputError, match="^mlm_labels: given without input_ids"):
        check_inputs(TINY, mlm_labels=np.zeros((1, 4), np.int32))
    with pytest.raises(InputError, match="^bool_masked_pos: given without pixel_values"):
        check_inputs(TINY, bool_masked_pos=np.zeros((1, 16), bool))
    with pytest.raises(InputError, match="^input_ids: must hold integers"):
        check_inputs(TINY, input_ids=np.zeros((1, 4), np.float32))


@pytest.mark.parametrize("argument, value, message", [
    ("input_ids", 512, r"1 values outside \[0, 512\), e.g. 512 at index \(1, 3\)"),
    ("input_ids_masked", -1, r"1 values outside \[0, 512\), e.g. -1"),
    ("mlm_labels", 700, r"1 values outside \[0, 512\) or \(-100,\)"),
    ("token_type_ids", 2, r"1 values outside \[0, 2\)"),
])
def test_out_of_vocabulary_values_are_named(params: Any, argument: str, value: int, message: str) -> None:
    batch = _pairs()
    array = np.array(batch.get(argument, np.zeros_like(batch["input_ids"])))
    array[1, 3] = value
    batch[argument] = array
    with pytest.raises(InputError, match=rf"^{argument}: {message}"):
        FlavaForPreTraining(TINY).apply({"params": params}, **batch)


def test_itm_and_mim_label_values(params: Any) -> None:
    with pytest.raises(InputError, match=r"^itm_labels: .*outside \[0, 2\)"):
        FlavaForPreTraining(TINY).apply({"params": params}, **_pairs(itm_labels=np.array([1, 2, 0])))
    mim = np.zeros((3, 16), np.int64)
    mim[0, 0] = 64
    with pytest.raises(InputError, match=r"^mim_labels: .*outside \[0, 64\)"):
        FlavaForPreTraining(TINY).apply({"params": params}, **_pairs(mim_labels=mim))


def test_inside_jit_a_bad_id_turns_the_loss_nan(params: Any) -> None:
    """Values are unknown while tracing; the embedding lookup then reads NaN instead of a clamped row."""
    forward = jax.jit(lambda p, b: FlavaForPreTraining(TINY).apply({"params": p}, **b).loss)
    good = _pairs()
    assert np.isfinite(float(forward(params, good)))
    bad = dict(good, input_ids_masked=np.where(good["input_ids_masked"] == 4, 10_000, good["input_ids_masked"]))
    assert np.isnan(float(forward(params, bad)))


def _jit_apply(**kwargs: Any) -> Any:
    return jax.jit(lambda p, b: FlavaForPreTraining(TINY).apply({"params": p}, **b, **kwargs))


def test_missing_codebook_inputs_are_explained(params: Any) -> None:
    with pytest.raises(ValueError, match="codebook_pixel_values are required"):
        _jit_apply().trace(params, _pairs(codebook_pixel_values=None))
    with pytest.raises(ValueError, match="needs bool_masked_pos"):
        _jit_apply().trace(params, _pairs(bool_masked_pos=None))
    # Without a loss neither is needed.
    out = _jit_apply(return_loss=False)(params, _pairs(codebook_pixel_values=None, bool_masked_pos=None))
    assert out.loss is None and out.itm_logits.shape == (3, 2)


@pytest.mark.slow
def test_empty_selection_gives_zero_not_nan(params: Any) -> None:
    """HF averages an empty selection to NaN; flava_jax returns 0 and says it scored 0 positions."""
    batch = _pairs(mlm_labels=np.full((3, 8), -100))
    out = _jit_apply()(params, batch)
    assert float(out.loss_info.mmm_text) == 0.0
    assert int(out.metrics["mmm_text"]["count"]) == 0
    assert np.isfinite(float(out.loss))
    grads = jax.jit(jax.grad(lambda p: FlavaForPreTraining(TINY).apply({"params": p}, **batch).loss))(params)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    assert not np.asarray(grads["mmm_text_head"]["decoder"]["kernel"]).any()
