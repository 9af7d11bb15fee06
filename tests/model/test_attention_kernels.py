"""The Pallas attention kernels, their code run by Pallas' interpreter on the CPU (TPU interpret mode for
attention_tpu, the generic interpreter for attention_gpu's Triton kernels), against a float64 numpy attention and
the model's XLA attention (which the HF parity tests check): outputs and gradients, with and without a padding mask,
with the scale on the query (power-of-two head_dim) or on the scores, lengths and head sizes that fill no tile."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from types import ModuleType

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from flava_jax.model import attention_gpu, attention_tpu
from flava_jax.model.config import TextConfig
from flava_jax.model.layers import Attention, attention_bias

# kernel -> (its module, its interpreter on the CPU, whether it takes (batch, heads, length, dim) rather than the
# model's (batch, length, heads, dim))
KERNELS: dict[str, tuple[ModuleType, Callable[[], contextlib.AbstractContextManager], bool]] = {
    "pallas_tpu": (attention_tpu, pltpu.force_tpu_interpret_mode, True),
    "pallas_gpu": (attention_gpu, attention_gpu.force_interpret_mode, False),
}


def _numpy_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray, divisor: float) -> np.ndarray:
    scores = np.einsum("bhqd,bhkd->bhqk", q, k) / divisor + np.where(mask, 0.0, -np.inf)[:, None, None, :]
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    return np.einsum("bhqk,bhkd->bhqd", probs / probs.sum(-1, keepdims=True), v)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize(("length", "head_dim", "masked"), [(128, 48, True), (77, 48, True), (197, 43, False)])
def test_kernel_matches_float64_attention(kernel: str, length: int, head_dim: int, masked: bool) -> None:
    """Lengths that are multiples of the TPU's 128 lanes and of the GPU kernels' 64-row tiles or neither; the
    thesis size's 43-wide heads, which Triton pads to 64 in registers."""
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, 3, length, head_dim)) for _ in range(3))
    mask = np.ones((2, length), bool)
    if masked:
        mask[0, 70:] = mask[1, 9:] = False
    bias = attention_bias(jnp.asarray(mask)) if masked else None
    module, interpreter, heads_first = KERNELS[kernel]
    inputs = [jnp.asarray(x if heads_first else x.swapaxes(1, 2), jnp.float32) for x in (q, k, v)]
    with interpreter():
        out = np.asarray(module.attention(*inputs, bias, np.sqrt(head_dim)))
    out = out if heads_first else out.swapaxes(1, 2)
    np.testing.assert_allclose(out, _numpy_attention(q, k, v, mask, np.sqrt(head_dim)), rtol=0, atol=2e-6)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize(("dtype", "head_dim", "length", "masked"), [("float32", 64, 128, True),
                                                                    ("float32", 48, 100, False),
                                                                    ("bfloat16", 64, 128, True)])
def test_model_attention_with_the_kernel_matches_xla(kernel: str, dtype: str, head_dim: int, length: int,
                                                     masked: bool) -> None:
    """`Attention` (projections included) with a kernel against attention="xla": the output and the gradient of
    every parameter and of the input, to f32 rounding in f32 and to bf16's in bf16 (the kernels keep the
    probabilities' gradient in f32 where XLA's product rounds it to bf16; the GPU kernels round the probabilities
    before dividing by the row sum, flash attention's order)."""
    config = dataclasses.replace(TextConfig(), hidden_size=3 * head_dim, num_attention_heads=3,
                                 intermediate_size=64)
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((2, length, config.hidden_size)), jnp.float32)
    mask = np.ones((2, length), bool)
    mask[1, 90:] = False
    bias = attention_bias(jnp.asarray(mask)) if masked else None
    weights = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
    layers = {name: Attention(config, jnp.dtype(dtype), jnp.float32, deterministic=False, attention=name)
              for name in ("xla", kernel)}
    params = layers["xla"].init(jax.random.key(0), x, bias)

    def run(name: str) -> tuple[jax.Array, tuple]:
        out, pullback = jax.vjp(lambda p, x: layers[name].apply(p, x, bias).astype(jnp.float32), params, x)
        return out, pullback(weights)

    with KERNELS[kernel][1]():
        (out, grads), (reference, reference_grads) = run(kernel), run("xla")
    tolerance = 1e-5 if dtype == "float32" else 2e-2
    pairs = zip(jax.tree_util.tree_leaves_with_path((out, grads)), jax.tree.leaves((reference, reference_grads)),
                strict=True)
    for (path, got), want in pairs:
        if "key" in jax.tree_util.keystr(path) and "bias" in jax.tree_util.keystr(path):
            continue  # its true gradient is 0 (softmax ignores a shift per row): both sides are rounding noise
        assert float(jnp.abs(got - want).max()) <= tolerance * float(jnp.abs(want).max()), jax.tree_util.keystr(path)


def test_what_each_kernel_refuses() -> None:
    """The TPU kernel holds whole rows of scores (lengths up to 512); the GPU kernels tile the length but hold a
    block's context in registers (heads up to 256 wide). The model keeps XLA's attention beyond either."""
    assert attention_tpu.supported(512) and not attention_tpu.supported(513)
    q = jnp.zeros((1, 1, 513, 64))
    with pytest.raises(ValueError, match="length 513 is over 512"):
        attention_tpu.attention(q, q, q, None, None)
    assert attention_gpu.supported(256) and not attention_gpu.supported(257)
    q = jnp.zeros((1, 8, 1, 257))
    with pytest.raises(ValueError, match="head_dim 257 is over 256"):
        attention_gpu.attention(q, q, q, None, None)
