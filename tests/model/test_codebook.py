"""The image codebook: HF's logits and tokens, and no gradient ever reaching it."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flava_jax import FlavaConfig, FlavaForPreTraining
from flava_jax.model.codebook import FlavaImageCodebook
from tests.batches import image_batch, pair_batch
from tests.hf_reference import flax_params, hf_model, torch

TINY = FlavaConfig.from_preset("tiny")


def test_codebook_matches_hf() -> None:
    """Logits (channels-last here, NCHW in HF) to 1e-5 and identical token ids; the top-2 gap dwarfs the error."""
    model = hf_model(TINY)
    params = flax_params(TINY, model)["image_codebook"]
    pixels = image_batch(TINY, np.random.default_rng(0), 4)["codebook_pixel_values"]
    codebook = FlavaImageCodebook(TINY.image_codebook_config)
    ours = np.asarray(codebook.apply({"params": params}, jnp.transpose(pixels, (0, 2, 3, 1))))
    with torch.no_grad():
        ref = model.image_codebook(torch.from_numpy(pixels)).permute(0, 2, 3, 1).numpy()
    err = np.abs(ours - ref).max()
    assert err <= 1e-5 * np.abs(ref).max()
    top2 = np.sort(ref, axis=-1)[..., -2:]
    assert (top2[..., 1] - top2[..., 0]).min() > 100 * err
    ids = codebook.apply({"params": params}, pixels, method=FlavaImageCodebook.get_codebook_indices)
    np.testing.assert_array_equal(ids, model.image_codebook.get_codebook_indices(torch.from_numpy(pixels)).numpy())
    probs = codebook.apply({"params": params}, pixels, method=FlavaImageCodebook.get_codebook_probs)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)


@pytest.mark.slow
def test_codebook_is_outside_the_gradient(tiny_params: Any) -> None:
    """The total loss gives the codebook exactly zero gradient, and so does a loss on its soft probabilities,
    which only the stop_gradient blocks (argmax alone would not be a test of it)."""
    batch = pair_batch(TINY, np.random.default_rng(0), 3, 8, itm_labels=[1, 0, 1])
    model = FlavaForPreTraining(TINY)

    def total(params: Any) -> jax.Array:
        return model.apply({"params": params}, **batch).loss

    grads = jax.jit(jax.grad(total))(tiny_params)
    codebook_grads = jax.tree.leaves(grads["image_codebook"])
    assert codebook_grads and not any(np.asarray(g).any() for g in codebook_grads)
    assert any(np.asarray(g).any() for g in jax.tree.leaves(grads["flava"]["image_model"]))

    codebook = FlavaImageCodebook(TINY.image_codebook_config)

    def soft(params: Any) -> jax.Array:
        probs = codebook.apply({"params": params}, batch["codebook_pixel_values"],
                               method=FlavaImageCodebook.get_codebook_probs)
        return (probs * jnp.arange(probs.shape[-1])).sum()

    soft_grads = jax.grad(soft)(tiny_params["image_codebook"])
    assert not any(np.asarray(g).any() for g in jax.tree.leaves(soft_grads))
    raw_grads = jax.grad(lambda p: codebook.apply({"params": p}, jnp.transpose(
        batch["codebook_pixel_values"], (0, 2, 3, 1))).sum())(tiny_params["image_codebook"])
    assert any(np.asarray(g).any() for g in jax.tree.leaves(raw_grads))  # the network itself is differentiable
