"""Attention's softmax against torch's, and the query scaling it relies on being exact."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from flava_jax.model.layers import softmax
from tests.hf_reference import torch


def _scores(rng: np.random.Generator) -> np.ndarray:
    """(2, 3, 5, 7) attention-like scores, a key column masked as HF masks it (an added finfo(f32).min)."""
    scores = rng.normal(0, 3, (2, 3, 5, 7)).astype(np.float32)
    scores[0, :, :, 6] += np.finfo(np.float32).min
    return scores


def test_softmax_value_and_gradient_match_torch() -> None:
    rng = np.random.default_rng(0)
    x, upstream = _scores(rng), rng.normal(size=(2, 3, 5, 7)).astype(np.float32)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.softmax(tx, dim=-1)
    ty.backward(torch.tensor(upstream))

    y, vjp = jax.vjp(softmax, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(y), ty.detach().numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(vjp(jnp.asarray(upstream))[0]), tx.grad.numpy(), rtol=1e-5, atol=1e-7)
    assert np.all(np.asarray(y)[0, :, :, 6] == 0)


def test_softmax_forward_mode_matches_its_reverse_mode() -> None:
    """jvp and vjp are one linear map and its transpose: <J t, u> == <t, J^T u>."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(_scores(rng))
    t, u = (jnp.asarray(rng.normal(size=x.shape).astype(np.float32)) for _ in range(2))
    _, jt = jax.jvp(softmax, (x,), (t,))
    _, vjp = jax.vjp(softmax, x)
    np.testing.assert_allclose(float((jt * u).sum()), float((t * vjp(u)[0]).sum()), rtol=1e-5)


def test_scaling_the_query_by_a_power_of_two_gives_the_bits_of_scaling_the_scores() -> None:
    """SelfAttention multiplies the query by 1/8 at head size 64 where HF divides QK^T by 8: the same bits."""
    rng = np.random.default_rng(2)
    query, key = (jnp.asarray(rng.normal(size=(2, 16, 4, 64)).astype(np.float32)) for _ in range(2))
    folded = jnp.einsum("bqhd,bkhd->bhqk", query * jnp.float32(0.125), key)
    after = jnp.einsum("bqhd,bkhd->bhqk", query, key) / jnp.float32(8)
    np.testing.assert_array_equal(np.asarray(folded), np.asarray(after))
