"""Transformer building blocks shared by FLAVA's three encoders: HF's pre-LN, ViT-style `FlavaLayer` stack.

Module and parameter names mirror transformers' (`attention.attention.query`, `intermediate.dense`, ...), so the
HF mapping in `hf_io.py` is a rename plus transposes. Numerics mirror HF too: exact-erf GELU, two-pass LayerNorm
variance, scores scaled by 1/sqrt(head_dim) (on the query where that is exact, see `SelfAttention`), an additive
mask of finfo(f32).min, and torch's softmax gradient.

Activations are named by logical axes for `activation_sharding.constrain` ("batch", "length", "embed", "heads",
"head_dim", "mlp"), no-ops unless a train step is traced under `train.sharding.shard_activations`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from flava_jax.model import attention_gpu, attention_tpu
from flava_jax.model.activation_sharding import constrain, map_shards
from flava_jax.model.config import EncoderConfig

Dtype = Any

_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_fast": functools.partial(jax.nn.gelu, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation function HF's ACT2FN gives for `name`."""
    return _ACTIVATIONS[name]


class _FlatDense(nn.Dense):
    """nn.Dense on the inputs flattened to (tokens, features): the kernel's gradient is then one plain matrix
    product, where (batch, length, features) inputs make XLA transpose them into a copy first."""

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        flat = inputs.reshape(-1, inputs.shape[-1]) if inputs.ndim > 2 else inputs
        return super().__call__(flat).reshape(*inputs.shape[:-1], self.features)


def dense(features: int, init_range: float, dtype: Dtype, param_dtype: Dtype, name: str,
          use_bias: bool = True) -> nn.Dense:
    """An `nn.Linear` as HF initialises it: weight ~ N(0, init_range), bias 0."""
    return _FlatDense(features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
                      kernel_init=nn.initializers.normal(init_range), bias_init=nn.initializers.zeros, name=name)


def layer_norm(eps: float, dtype: Dtype, param_dtype: Dtype, name: str) -> nn.LayerNorm:
    """torch's LayerNorm: f32 statistics, two-pass variance (with eps 1e-12, E[x^2] - E[x]^2 is too coarse)."""
    return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=param_dtype, use_fast_variance=False, name=name)


def accumulation_dtype(dtype: Dtype) -> Dtype:
    """At least f32: softmax, LayerNorm statistics and losses never run in bf16/f16."""
    return jnp.promote_types(dtype, jnp.float32)


@jax.custom_jvp
def softmax(x: jax.Array) -> jax.Array:
    """Softmax over the last axis, with the derivative torch's softmax backward computes: y * (t - sum(y * t)).

    jax.nn.softmax differentiates through its division (unless the global `jax_softmax_custom_jvp` flag is set), so
    its backward also reads the unnormalised exponentials and a full-size broadcast of 1/sum.
    """
    return jax.nn.softmax(x, axis=-1)


@softmax.defjvp
def _softmax_jvp(primals: tuple[jax.Array], tangents: tuple[jax.Array]) -> tuple[jax.Array, jax.Array]:
    (x,), (t,) = primals, tangents
    y = softmax(x)
    return y, y * (t - (y * t).sum(axis=-1, keepdims=True))


def attention_bias(mask: jax.Array | None) -> jax.Array | None:
    """(B, L) keep-mask (1 = attend) -> additive (B, 1, 1, L) bias, as HF's eager mask: 0 or finfo(f32).min."""
    if mask is None:
        return None
    return jnp.where(mask.astype(bool), 0.0, jnp.finfo(jnp.float32).min)[:, None, None, :].astype(jnp.float32)


class DenseBlock(nn.Module):
    """`dense` then dropout; HF's `FlavaSelfOutput`, `FlavaIntermediate` (with act) and `FlavaOutput` share this."""

    features: int
    init_range: float
    dropout: float
    dtype: Dtype
    param_dtype: Dtype
    deterministic: bool
    act: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = dense(self.features, self.init_range, self.dtype, self.param_dtype, "dense")(x)
        if self.act is not None:
            return activation(self.act)(x)
        return nn.Dropout(self.dropout)(x, deterministic=self.deterministic)


class _LayerPart(nn.Module):
    """Fields shared by the parts of a transformer layer."""

    config: EncoderConfig
    dtype: Dtype
    param_dtype: Dtype
    deterministic: bool
    attention: str = "xla"  # FlavaConfig.attention


class SelfAttention(_LayerPart):
    """Multi-head self-attention (HF `FlavaSelfAttention`), softmax in f32; with `attention="pallas_tpu"` or
    `"pallas_gpu"`, that platform's kernel (`attention_tpu`, `attention_gpu`) where no dropout applies to the
    probabilities."""

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array | None) -> jax.Array:
        c = self.config
        batch, length, _ = x.shape
        heads = c.num_attention_heads

        def project(name: str) -> jax.Array:
            y = dense(c.hidden_size, c.initializer_range, self.dtype, self.param_dtype, name, c.qkv_bias)(x)
            # Heads stay on their examples' devices: left alone, XLA may split them over fsdp like the projection's
            # FSDP-sharded kernel, and the batch-sharded attention then needs a full replica to change layout.
            return constrain(y.reshape(batch, length, heads, c.head_dim), "batch", "length", "heads", "head_dim")

        query, key, value = project("query"), project("key"), project("value")
        acc = accumulation_dtype(self.dtype)
        root = math.sqrt(c.head_dim)
        exact = math.frexp(root)[0] == 0.5
        if exact:
            # sqrt(head_dim) is a power of two (64 -> 8): scaling the query is exact and gives HF's bits, at a
            # (B, L, H, D) multiply instead of a (B, H, L, L) divide forward and backward.
            query = query * jnp.asarray(1 / root, query.dtype)
        no_dropout = self.deterministic or c.attention_probs_dropout_prob == 0
        divisor = None if exact else root
        if self.attention == "pallas_tpu" and no_dropout and attention_tpu.supported(length):
            heads_first = [jnp.swapaxes(x, 1, 2) for x in (query, key, value)]
            context = _sharded_kernel(attention_tpu.attention, heads_first, bias, divisor,
                                      ("batch", "heads", "length", "head_dim"))
            return self._merge_heads(jnp.swapaxes(context, 1, 2))
        if self.attention == "pallas_gpu" and no_dropout and attention_gpu.supported(c.head_dim):
            context = _sharded_kernel(attention_gpu.attention, [query, key, value], bias, divisor,
                                      ("batch", "length", "heads", "head_dim"))
            return self._merge_heads(context)
        scores = jnp.einsum("bqhd,bkhd->bhqk", query, key, preferred_element_type=acc)
        if not exact:
            scores = scores / jnp.asarray(root, acc)
        if bias is not None:
            scores = scores + bias
        probs = softmax(scores).astype(self.dtype)
        probs = nn.Dropout(c.attention_probs_dropout_prob)(probs, deterministic=self.deterministic)
        return self._merge_heads(jnp.einsum("bhqk,bkhd->bqhd", probs, value))

    def _merge_heads(self, context: jax.Array) -> jax.Array:
        batch, length = context.shape[:2]
        context = constrain(context, "batch", "length", "heads", "head_dim")
        return context.reshape(batch, length, self.config.hidden_size)


def _sharded_kernel(kernel: Callable[..., jax.Array], qkv: list[jax.Array], bias: jax.Array | None,
                    divisor: float | None, names: tuple[str, ...]) -> jax.Array:
    """kernel(query, key, value, bias, divisor) on each device's examples (`map_shards`: XLA cannot split a
    Pallas call); qkv's dimensions have the logical `names`, the bias is (batch, 1, 1, length) or None."""
    inputs, all_names = list(qkv), [names] * 3
    if bias is not None:
        inputs.append(bias)
        all_names.append(("batch", None, None, None))

    def run(query: jax.Array, key: jax.Array, value: jax.Array, bias: jax.Array | None = None) -> jax.Array:
        return kernel(query, key, value, bias, divisor)

    return map_shards(run, inputs, all_names)


class Attention(_LayerPart):
    """HF `FlavaAttention`: self-attention (`attention`) and its output projection (`output`)."""

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array | None) -> jax.Array:
        c = self.config
        context = SelfAttention(c, self.dtype, self.param_dtype, self.deterministic, self.attention,
                                name="attention")(x, bias)
        return DenseBlock(c.hidden_size, c.initializer_range, c.hidden_dropout_prob, self.dtype, self.param_dtype,
                          self.deterministic, name="output")(context)


class FlavaLayer(_LayerPart):
    """One pre-LN block: x + Attn(LN(x)), then x + FFN(LN(x)) (HF `FlavaLayer`)."""

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array | None) -> jax.Array:
        c = self.config
        residual = ("batch", "length", "embed")
        x = constrain(x, *residual)
        ln = functools.partial(layer_norm, c.layer_norm_eps, self.dtype, self.param_dtype)
        block = functools.partial(DenseBlock, init_range=c.initializer_range, dropout=c.hidden_dropout_prob,
                                  dtype=self.dtype, param_dtype=self.param_dtype, deterministic=self.deterministic)
        x = x + Attention(c, self.dtype, self.param_dtype, self.deterministic, self.attention, name="attention")(
            ln("layernorm_before")(x), bias)
        x = constrain(x, *residual)
        hidden = block(c.intermediate_size, act=c.hidden_act, name="intermediate")(ln("layernorm_after")(x))
        hidden = constrain(hidden, "batch", "length", "mlp")
        return constrain(x + block(c.hidden_size, name="output")(hidden), *residual)


class _LayerStack(nn.Module):
    """Layers as children "0", "1", ... so parameter paths read `encoder/layer/3/...` like HF's `encoder.layer.3`."""

    layer_cls: Any
    num_layers: int
    kwargs: Any

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array | None) -> jax.Array:
        for i in range(self.num_layers):
            x = self.layer_cls(**dict(self.kwargs), name=str(i))(x, bias)
        return x


def _scan_body(layer: FlavaLayer, x: jax.Array, bias: jax.Array | None) -> tuple[jax.Array, None]:
    return layer(x, bias), None


class FlavaEncoder(nn.Module):
    """HF `FlavaEncoder`: `num_hidden_layers` FlavaLayers, optionally rematerialised and/or scanned.

    Returns the last layer's output, before any final LayerNorm (the encoders apply their own).
    """

    config: EncoderConfig
    dtype: Dtype
    param_dtype: Dtype
    deterministic: bool
    remat_policy: str | None = None
    scan_layers: bool = False
    attention: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array | None) -> jax.Array:
        layer_cls: Any = FlavaLayer
        if self.remat_policy is not None:
            layer_cls = nn.remat(FlavaLayer, policy=getattr(jax.checkpoint_policies, self.remat_policy),
                                 prevent_cse=not self.scan_layers)
        kwargs = dict(config=self.config, dtype=self.dtype, param_dtype=self.param_dtype,
                      deterministic=self.deterministic, attention=self.attention)
        if not self.scan_layers:
            return _LayerStack(layer_cls, self.config.num_hidden_layers, tuple(kwargs.items()), name="layer")(x, bias)
        scan = nn.scan(_scan_body, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                       in_axes=nn.broadcast, length=self.config.num_hidden_layers)
        x, _ = scan(layer_cls(**kwargs, name="layer"), x, bias)
        return x


def _map_layer_stacks(params: Any, fn: Callable[[Any], Any]) -> Any:
    """Apply `fn` to the `layer` subtree of every `encoder` in a parameter tree."""
    if not isinstance(params, dict):
        return params
    out = {}
    for key, value in params.items():
        if key == "encoder" and isinstance(value, dict) and "layer" in value:
            out[key] = {**value, "layer": fn(value["layer"])}
        else:
            out[key] = _map_layer_stacks(value, fn)
    return out


def unstack_layers(params: Any) -> Any:
    """Scanned layout (`layer/...` with a leading layer axis) -> loop layout (`layer/0/...`, `layer/1/...`)."""

    def unstack(layer: Any) -> Any:
        if all(k.isdigit() for k in layer):
            return layer  # already the loop layout
        count = jax.tree.leaves(layer)[0].shape[0]
        return {str(i): jax.tree.map(lambda x, i=i: x[i], layer) for i in range(count)}

    return _map_layer_stacks(params, unstack)


def stack_layers(params: Any) -> Any:
    """Loop layout -> scanned layout, the inverse of `unstack_layers`."""

    def stack(layer: Any) -> Any:
        if not all(k.isdigit() for k in layer):
            return layer  # already scanned
        ordered = [layer[str(i)] for i in range(len(layer))]
        return jax.tree.map(lambda *xs: jnp.stack(xs), *ordered)

    return _map_layer_stacks(params, stack)
