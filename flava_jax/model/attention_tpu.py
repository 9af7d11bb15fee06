"""Self-attention as one Pallas TPU kernel: the (length x length) scores and probabilities stay in on-chip memory.

XLA's attention writes each layer's f32 scores and probabilities to HBM, keeps them for the backward pass, and
reads them back: for 512-token texts that traffic, not the products, bounds a layer. This kernel computes one head
of one example per grid step with whole rows in VMEM (a head's 512 x 512 f32 scores are 1 MiB), writes only the
context, and recomputes the probabilities in the backward pass from the query and key, trading one more product
for the traffic. The numerics are the model's: f32 scores, softmax and its backward (torch's formula,
`layers.softmax`), probabilities cast to the compute dtype for the product with the values.

Any length up to 512 (Mosaic masks the partial tiles of other lengths itself; longer sequences would need the
scores in blocks, flash-attention style, to fit VMEM): the model keeps XLA's attention above it. Off a TPU, run it
under `jax.experimental.pallas.tpu.force_tpu_interpret_mode()`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

MAX_LENGTH = 512  # a backward step holds four (length x length) f32 arrays: 4 MiB at 512


def supported(length: int) -> bool:
    """Whether the kernel takes sequences of `length`."""
    return length <= MAX_LENGTH



def _probabilities(q: jax.Array, k: jax.Array, bias_ref: pltpu.MemoryRef | None, divisor: float | None) -> jax.Array:
    """Softmax over keys of the f32 scores q k^T (/ divisor, + bias), as `layers.softmax` computes it."""
    scores = jax.lax.dot_general(q, k, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    if divisor is not None:
        scores = scores / divisor
    if bias_ref is not None:
        scores = scores + bias_ref[0, 0]  # (1, L): one bias per key
    exp = jnp.exp(scores - scores.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


def _forward_kernel(*refs: pltpu.MemoryRef, divisor: float | None, masked: bool) -> None:
    q_ref, k_ref, v_ref, *rest = refs
    bias_ref = rest.pop(0) if masked else None
    (o_ref,) = rest
    v = v_ref[0, 0]
    probs = _probabilities(q_ref[0, 0], k_ref[0, 0], bias_ref, divisor)
    o_ref[0, 0] = jax.lax.dot(probs.astype(v.dtype), v, preferred_element_type=jnp.float32).astype(o_ref.dtype)


def _backward_kernel(*refs: pltpu.MemoryRef, divisor: float | None, masked: bool) -> None:
    q_ref, k_ref, v_ref, *rest = refs
    bias_ref = rest.pop(0) if masked else None
    do_ref, dq_ref, dk_ref, dv_ref = rest
    q, k, v, do = q_ref[0, 0], k_ref[0, 0], v_ref[0, 0], do_ref[0, 0]
    probs = _probabilities(q, k, bias_ref, divisor)
    dprobs = jax.lax.dot_general(do, v, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    dscores = probs * (dprobs - (probs * dprobs).sum(axis=-1, keepdims=True))
    if divisor is not None:
        dscores = dscores / divisor
    dv_ref[0, 0] = jax.lax.dot(probs.T.astype(do.dtype), do, preferred_element_type=jnp.float32).astype(dv_ref.dtype)
    dq_ref[0, 0] = jax.lax.dot(dscores.astype(k.dtype), k, preferred_element_type=jnp.float32).astype(dq_ref.dtype)
    dk_ref[0, 0] = jax.lax.dot(dscores.T.astype(q.dtype), q, preferred_element_type=jnp.float32).astype(dk_ref.dtype)


def _bytes(*arrays: jax.Array) -> int:
    return sum(a.size * a.dtype.itemsize for a in arrays)


def _call(kernel: object, inputs: tuple[jax.Array, ...], outputs: int, products: int, divisor: float | None,
          masked: bool) -> tuple[jax.Array, ...]:
    """pallas_call over a (batch, heads) grid: each step one head of one example, whole sequences."""
    q = inputs[0]
    batch, heads, length, dim = q.shape
    head = pl.BlockSpec((1, 1, length, dim), lambda b, h: (b, h, 0, 0))
    specs = [head, head, head] + ([pl.BlockSpec((1, 1, 1, length), lambda b, h: (b, 0, 0, 0))] if masked else [])
    specs += [head] * (len(inputs) - len(specs))
    out_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype)] * outputs
    # What the roofline (train/roofline.py) reads from the compiled program: the products, the exponentials and
    # the HBM traffic of inputs and outputs; nothing of length x length leaves the chip.
    cost = pl.CostEstimate(flops=products * 2 * batch * heads * length * length * dim,
                           transcendentals=batch * heads * length * length,
                           bytes_accessed=_bytes(*inputs) + outputs * _bytes(q))
    return pl.pallas_call(
        functools.partial(kernel, divisor=divisor, masked=masked), grid=(batch, heads), in_specs=specs,
        out_specs=[head] * outputs, out_shape=out_shape, cost_estimate=cost,
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel")))(*inputs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _attention(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array | None, divisor: float | None) -> jax.Array:
    inputs = (q, k, v) if bias is None else (q, k, v, bias)
    return _call(_forward_kernel, inputs, 1, 2, divisor, bias is not None)[0]


def _attention_forward(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array | None,
                       divisor: float | None) -> tuple[jax.Array, tuple]:
    return _attention(q, k, v, bias, divisor), (q, k, v, bias)


def _attention_backward(divisor: float | None, residuals: tuple, d_out: jax.Array) -> tuple:
    q, k, v, bias = residuals
    inputs = (q, k, v, d_out) if bias is None else (q, k, v, bias, d_out)
    # Five products: the scores again, then the gradients of the probabilities, values, queries and keys.
    dq, dk, dv = _call(_backward_kernel, inputs, 3, 5, divisor, bias is not None)
    return dq, dk, dv, None if bias is None else jnp.zeros_like(bias)


_attention.defvjp(_attention_forward, _attention_backward)


def attention(query: jax.Array, key: jax.Array, value: jax.Array, bias: jax.Array | None,
              divisor: float | None) -> jax.Array:
    """softmax(query key^T / divisor + bias) value, per example and head.

    query, key, value: (batch, heads, length, head_dim), length at most MAX_LENGTH; bias: (batch, 1, 1, length)
    f32 (0 or a large negative per key) or None; divisor: a static scale of the scores, or None when the query is
    already scaled. Returns (batch, heads, length, head_dim) in the query's dtype.
    """
    if not supported(query.shape[2]):
        raise ValueError(f"attention_tpu: length {query.shape[2]} is over {MAX_LENGTH}")
    return _attention(query, key, value, bias, divisor)
