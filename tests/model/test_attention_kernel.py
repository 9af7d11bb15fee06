"""The Pallas attention kernel, run in TPU interpret mode on the CPU, against the model's XLA attention (which the
HF parity tests check) and a float64 numpy attention: outputs and gradients, with and without a padding mask, with
the scale on the query (power-of-two head_dim) or on the scores."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from flava_jax.model import attention_kernel
from flava_jax.model.config import TextConfig
from flava_jax.model.layers import Attention, attention_bias


def _numpy_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray, divisor: float) -> np.ndarray:
    scores = np.einsum("bhqd,bhkd->bhqk", q, k) / divisor + np.where(mask, 0.0, -np.inf)[:, None, None, :]
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    return np.einsum("bhqk,bhkd->bhqd", probs / probs.sum(-1, keepdims=True), v)


@pytest.mark.parametrize(("length", "masked"), [(128, True), (77, True), (197, False)])
def test_kernel_matches_float64_attention(length: int, masked: bool) -> None:
    """Any length up to 512, multiples of the TPU's 128 lanes or not."""
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, 3, length, 48)) for _ in range(3))
    mask = np.ones((2, length), bool)
    if masked:
        mask[0, 70:] = mask[1, 9:] = False
    bias = attention_bias(jnp.asarray(mask)) if masked else None
    with pltpu.force_tpu_interpret_mode():
        out = attention_kernel.attention(*(jnp.asarray(x, jnp.float32) for x in (q, k, v)), bias, np.sqrt(48.0))
    np.testing.assert_allclose(np.asarray(out), _numpy_attention(q, k, v, mask, np.sqrt(48.0)), rtol=0, atol=2e-6)


@pytest.mark.parametrize(("dtype", "head_dim", "length", "masked"), [("float32", 64, 128, True),
                                                                    ("float32", 48, 100, False),
                                                                    ("bfloat16", 64, 128, True)])
def test_model_attention_with_the_kernel_matches_xla(dtype: str, head_dim: int, length: int, masked: bool) -> None:
    """`Attention` (projections included) with attention="pallas" against "xla": the output and the gradient of
    every parameter and of the input, to f32 rounding in f32 and to bf16's in bf16 (the kernel keeps the
    probabilities' gradient in f32 where XLA's product rounds it to bf16)."""
    config = dataclasses.replace(TextConfig(), hidden_size=3 * head_dim, num_attention_heads=3,
                                 intermediate_size=64)
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((2, length, config.hidden_size)), jnp.float32)
    mask = np.ones((2, length), bool)
    mask[1, 90:] = False
    bias = attention_bias(jnp.asarray(mask)) if masked else None
    weights = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
    layers = {name: Attention(config, jnp.dtype(dtype), jnp.float32, deterministic=False, attention=name)
              for name in ("xla", "pallas")}
    params = layers["xla"].init(jax.random.key(0), x, bias)

    def run(name: str) -> tuple[jax.Array, tuple]:
        out, pullback = jax.vjp(lambda p, x: layers[name].apply(p, x, bias).astype(jnp.float32), params, x)
        return out, pullback(weights)

    with pltpu.force_tpu_interpret_mode():
        (out, grads), (reference, reference_grads) = run("pallas"), run("xla")
    tolerance = 1e-5 if dtype == "float32" else 2e-2
    pairs = zip(jax.tree_util.tree_leaves_with_path((out, grads)), jax.tree.leaves((reference, reference_grads)),
                strict=True)
    for (path, got), want in pairs:
        if "key" in jax.tree_util.keystr(path) and "bias" in jax.tree_util.keystr(path):
            continue  # its true gradient is 0 (softmax ignores a shift per row): both sides are rounding noise
        assert float(jnp.abs(got - want).max()) <= tolerance * float(jnp.abs(want).max()), jax.tree_util.keystr(path)


def test_lengths_over_512_are_refused() -> None:
    assert attention_kernel.supported(512) and not attention_kernel.supported(513)
    q = jnp.zeros((1, 1, 513, 64))
    with pytest.raises(ValueError, match="length 513 is over 512"):
        attention_kernel.attention(q, q, q, None, None)
