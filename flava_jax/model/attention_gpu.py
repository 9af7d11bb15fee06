"""Self-attention as Pallas GPU (Triton) kernels, flash-attention style: the (length x length) scores and
probabilities never reach HBM.

XLA's attention on a GPU writes each layer's f32 scores, their softmax and its bf16 cast to HBM, and the layer scan
stacks the scores and probabilities of every layer for the backward pass: for 512-token texts that traffic, not
the products, bounds a layer (benchmarks/README.md has the roofline). These kernels read the model's (batch,
length, heads, head_dim) projections as they are, with no transpose:
- forward, one block of queries per program: a loop over blocks of keys keeps the running row maximum and sum of
  the exponentials (online softmax) and the unnormalised context in registers, then writes the context and each
  row's log-sum-exp;
- backward, two kernels that recompute the probabilities from the query, key and log-sum-exp: one per block of
  keys (their key and value gradients, looping over queries), one per block of queries (their gradient, looping
  over keys).

Numerics are the model's where the order of operations allows: f32 scores, softmax and gradients; the probabilities
cast to the compute dtype for their product with the values. The one difference is flash attention's: a block's
probabilities are cast before the division by the row sum, not after (bf16 rounding of the same relative size).

Any length (partial blocks are masked) and head size up to 256 (padded to a power of two in registers, as Triton's
tiles must be), on GPUs of compute capability MIN_COMPUTE_CAPABILITY and up. Off a GPU, run it under
`force_interpret_mode()`: the CPU then executes the same kernel code, which is how the tests check it.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

MIN_COMPUTE_CAPABILITY = (8, 0)  # Triton's floor: it refuses a T4 (7.5)
MAX_HEAD_DIM = 256  # a block of 64 queries and its f32 context then still fit a thread block's registers
BLOCK = 64  # queries and keys per tile: Triton's products need at least 16, and 64 keeps the tiles in registers
_WARPS, _STAGES = 4, 2
_INTERPRET = contextvars.ContextVar("attention_gpu_interpret", default=False)


@contextlib.contextmanager
def force_interpret_mode() -> Iterator[None]:
    """Kernels traced inside run their code on the CPU (Pallas' interpreter), as the tests do."""
    token = _INTERPRET.set(True)
    try:
        yield
    finally:
        _INTERPRET.reset(token)


def supported(head_dim: int) -> bool:
    """Whether the kernels take heads of `head_dim`."""
    return head_dim <= MAX_HEAD_DIM


def _inside(start: jax.Array, rows: int, length: int) -> jax.Array:
    """Which of rows [start, start + rows) are before the sequence's end."""
    return (start + jnp.arange(rows)) < length


def _tile_mask(start: jax.Array, rows: int, dims: int, head_dim: int, length: int) -> jax.Array:
    return _inside(start, rows, length)[:, None] & (jnp.arange(dims) < head_dim)[None, :]


def _tile(ref: object, start: jax.Array, rows: int, dims: int, head_dim: int, length: int) -> jax.Array:
    """Rows [start, start + rows) of a (length, head_dim) ref as a (rows, dims) tile, zeros past either end."""
    mask = _tile_mask(start, rows, dims, head_dim, length)
    return plgpu.load(ref.at[pl.ds(start, rows), pl.ds(0, dims)], mask=mask, other=0.0)


def _store_tile(ref: object, start: jax.Array, value: jax.Array, head_dim: int, length: int) -> None:
    rows, dims = value.shape
    mask = _tile_mask(start, rows, dims, head_dim, length)
    plgpu.store(ref.at[pl.ds(start, rows), pl.ds(0, dims)], value.astype(ref.dtype), mask=mask)


def _row(ref: object, start: jax.Array, rows: int, length: int) -> jax.Array:
    """Entries [start, start + rows) of a per-row (length,) ref, zeros past the end."""
    return plgpu.load(ref.at[pl.ds(start, rows)], mask=_inside(start, rows, length), other=0.0)


def _scores(q: jax.Array, k: jax.Array, bias_ref: object | None, key_start: jax.Array, divisor: float | None,
            length: int) -> jax.Array:
    """f32 q k^T (/ divisor, + the keys' bias), -inf at keys past the end."""
    scores = jax.lax.dot_general(q, k, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    if divisor is not None:
        scores = scores / divisor
    if bias_ref is not None:
        scores = scores + _row(bias_ref, key_start, k.shape[0], length)[None, :]
    return jnp.where(_inside(key_start, k.shape[0], length)[None, :], scores, -jnp.inf)


def _product(a: jax.Array, b: jax.Array, transpose_a: bool = False, transpose_b: bool = False) -> jax.Array:
    """a @ b in f32, a and b in their own dtype (bf16 products accumulate in f32 as XLA's do)."""
    dims = (((0,) if transpose_a else (1,), (1,) if transpose_b else (0,)), ((), ()))
    return jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


def _forward_kernel(q_ref, k_ref, v_ref, *refs, divisor: float | None, masked: bool, length: int, head_dim: int,
                    dims: int) -> None:
    bias_ref, o_ref, lse_ref = refs if masked else (None, *refs)
    start = pl.program_id(2) * BLOCK
    q = _tile(q_ref, start, BLOCK, dims, head_dim, length)

    def body(block: int, carry: tuple) -> tuple:
        context, row_max, row_sum = carry
        key_start = block * BLOCK
        scores = _scores(q, _tile(k_ref, key_start, BLOCK, dims, head_dim, length), bias_ref, key_start, divisor,
                         length)
        new_max = jnp.maximum(row_max, scores.max(axis=1))
        rescale = jnp.exp(row_max - new_max)
        probs = jnp.exp(scores - new_max[:, None])
        v = _tile(v_ref, key_start, BLOCK, dims, head_dim, length)
        context = context * rescale[:, None] + _product(probs.astype(v.dtype), v)
        return context, new_max, row_sum * rescale + probs.sum(axis=1)

    init = (jnp.zeros((BLOCK, dims), jnp.float32), jnp.full((BLOCK,), -jnp.inf, jnp.float32),
            jnp.zeros((BLOCK,), jnp.float32))
    context, row_max, row_sum = jax.lax.fori_loop(0, pl.cdiv(length, BLOCK), body, init)
    _store_tile(o_ref, start, context / row_sum[:, None], head_dim, length)
    plgpu.store(lse_ref.at[pl.ds(start, BLOCK)], row_max + jnp.log(row_sum), mask=_inside(start, BLOCK, length))


def _key_value_grad_kernel(q_ref, k_ref, v_ref, *refs, divisor: float | None, masked: bool, length: int,
                           head_dim: int, dims: int) -> None:
    bias_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref = refs if masked else (None, *refs)
    key_start = pl.program_id(2) * BLOCK
    k = _tile(k_ref, key_start, BLOCK, dims, head_dim, length)
    v = _tile(v_ref, key_start, BLOCK, dims, head_dim, length)

    def body(block: int, carry: tuple) -> tuple:
        dk, dv = carry
        start = block * BLOCK
        q = _tile(q_ref, start, BLOCK, dims, head_dim, length)
        do = _tile(do_ref, start, BLOCK, dims, head_dim, length)
        probs = jnp.exp(_scores(q, k, bias_ref, key_start, divisor, length)
                        - _row(lse_ref, start, BLOCK, length)[:, None])
        probs = jnp.where(_inside(start, BLOCK, length)[:, None], probs, 0.0)
        dv = dv + _product(probs.astype(do.dtype), do, transpose_a=True)
        dscores = probs * (_product(do, v, transpose_b=True) - _row(delta_ref, start, BLOCK, length)[:, None])
        return dk + _product(dscores.astype(q.dtype), q, transpose_a=True), dv

    zeros = jnp.zeros((BLOCK, dims), jnp.float32)
    dk, dv = jax.lax.fori_loop(0, pl.cdiv(length, BLOCK), body, (zeros, zeros))
    _store_tile(dk_ref, key_start, dk if divisor is None else dk / divisor, head_dim, length)
    _store_tile(dv_ref, key_start, dv, head_dim, length)


def _query_grad_kernel(q_ref, k_ref, v_ref, *refs, divisor: float | None, masked: bool, length: int, head_dim: int,
                       dims: int) -> None:
    bias_ref, do_ref, lse_ref, delta_ref, dq_ref = refs if masked else (None, *refs)
    start = pl.program_id(2) * BLOCK
    q = _tile(q_ref, start, BLOCK, dims, head_dim, length)
    do = _tile(do_ref, start, BLOCK, dims, head_dim, length)
    lse = _row(lse_ref, start, BLOCK, length)[:, None]
    delta = _row(delta_ref, start, BLOCK, length)[:, None]

    def body(block: int, dq: jax.Array) -> jax.Array:
        key_start = block * BLOCK
        k = _tile(k_ref, key_start, BLOCK, dims, head_dim, length)
        v = _tile(v_ref, key_start, BLOCK, dims, head_dim, length)
        probs = jnp.exp(_scores(q, k, bias_ref, key_start, divisor, length) - lse)
        dscores = probs * (_product(do, v, transpose_b=True) - delta)
        return dq + _product(dscores.astype(k.dtype), k)

    dq = jax.lax.fori_loop(0, pl.cdiv(length, BLOCK), body, jnp.zeros((BLOCK, dims), jnp.float32))
    _store_tile(dq_ref, start, dq if divisor is None else dq / divisor, head_dim, length)


def _bytes(*arrays: jax.Array | jax.ShapeDtypeStruct) -> int:
    return sum(a.size * a.dtype.itemsize for a in arrays)


def _call(kernel: object, inputs: tuple[jax.Array, ...], outputs: list[jax.ShapeDtypeStruct], products: int,
          divisor: float | None, masked: bool) -> tuple[jax.Array, ...]:
    """pallas_call over a (batch, heads, length / BLOCK) grid. Inputs: q, k, v (batch, length, heads, head_dim),
    the bias (batch, 1, 1, length) if masked, then any of (batch, length, heads, head_dim) or (batch, heads,
    length) f32; outputs likewise."""
    batch, length, heads, head_dim = inputs[0].shape
    head = pl.BlockSpec((None, length, None, head_dim), lambda b, h, i: (b, 0, h, 0))  # one head, whole sequence
    rows = pl.BlockSpec((None, None, length), lambda b, h, i: (b, h, 0))  # per-row f32 statistics

    def spec(x: jax.Array | jax.ShapeDtypeStruct) -> pl.BlockSpec:
        return head if x.ndim == 4 else rows

    # q, k, v, then the bias (one row of keys per example) if masked, then per-head or per-row arrays
    in_specs = [head] * 3 + [pl.BlockSpec((None, None, None, length), lambda b, h, i: (b, 0, 0, 0))] * masked
    in_specs += [spec(x) for x in inputs[len(in_specs):]]

    # Pallas drops a Triton kernel's CostEstimate; train/roofline.py reads these figures from the custom call's
    # metadata instead: the products, the exponentials, and the HBM traffic of inputs and outputs.
    cost = {"flops": str(products * 2 * batch * heads * length * length * head_dim),
            "transcendentals": str(batch * heads * length * length),
            "bytes_accessed": str(_bytes(*inputs, *outputs))}
    dims = max(16, pl.next_power_of_2(head_dim))
    body = functools.partial(kernel, divisor=divisor, masked=masked, length=length, head_dim=head_dim, dims=dims)
    return pl.pallas_call(
        body, grid=(batch, heads, pl.cdiv(length, BLOCK)), in_specs=in_specs,
        out_specs=[spec(o) for o in outputs], out_shape=outputs, metadata=cost, interpret=_INTERPRET.get(),
        compiler_params=plgpu.CompilerParams(num_warps=_WARPS, num_stages=_STAGES))(*inputs)


def _statistics(q: jax.Array) -> jax.ShapeDtypeStruct:
    batch, length, heads, _ = q.shape
    return jax.ShapeDtypeStruct((batch, heads, length), jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _attention(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array | None, divisor: float | None) -> jax.Array:
    return _attention_forward(q, k, v, bias, divisor)[0]


def _attention_forward(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array | None,
                       divisor: float | None) -> tuple[jax.Array, tuple]:
    inputs = (q, k, v) if bias is None else (q, k, v, bias)
    out, lse = _call(_forward_kernel, inputs, [jax.ShapeDtypeStruct(q.shape, q.dtype), _statistics(q)], 2,
                     divisor, bias is not None)
    return out, (q, k, v, bias, out, lse)


def _attention_backward(divisor: float | None, residuals: tuple, d_out: jax.Array) -> tuple:
    q, k, v, bias, out, lse = residuals
    # Each row's sum of probability x its gradient, as the softmax backward needs it: do . o over the head.
    delta = jnp.einsum("blhd,blhd->bhl", d_out.astype(jnp.float32), out.astype(jnp.float32))
    inputs = (q, k, v, *([] if bias is None else [bias]), d_out, lse, delta)
    masked = bias is not None
    # Four products per key block (the scores again, dv, the probabilities' gradient, dk), three per query block.
    dk, dv = _call(_key_value_grad_kernel, inputs, [jax.ShapeDtypeStruct(k.shape, k.dtype)] * 2, 4, divisor,
                   masked)
    (dq,) = _call(_query_grad_kernel, inputs, [jax.ShapeDtypeStruct(q.shape, q.dtype)], 3, divisor, masked)
    return dq, dk, dv, None if bias is None else jnp.zeros_like(bias)


_attention.defvjp(_attention_forward, _attention_backward)


def attention(query: jax.Array, key: jax.Array, value: jax.Array, bias: jax.Array | None,
              divisor: float | None) -> jax.Array:
    """softmax(query key^T / divisor + bias) value, per example and head.

    query, key, value: (batch, length, heads, head_dim), head_dim at most MAX_HEAD_DIM; bias: (batch, 1, 1,
    length) f32 (0 or a large negative per key) or None; divisor: a static scale of the scores, or None when the
    query is already scaled. Returns (batch, length, heads, head_dim) in the query's dtype.
    """
    if not supported(query.shape[3]):
        raise ValueError(f"attention_gpu: head_dim {query.shape[3]} is over {MAX_HEAD_DIM}")
    return _attention(query, key, value, bias, divisor)
