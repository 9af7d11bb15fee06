"""The DALL-E-style image codebook that turns an image into MIM target tokens (HF `FlavaImageCodebook`).

The paper trained against this network randomly initialised and frozen (docs/reference.md#image-codebook): the MIM
labels are the argmax over `vocab_size` channels of a random conv net, a random-projection quantiser. Pretrained weights
(DALL-E's encoder, as FLAVA proper uses) load through `flava_jax.from_pretrained` like any other weight.

Layout is channels-last (NHWC) inside; `get_codebook_indices` takes HF's NCHW pixel values.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from flava_jax.model.config import CodebookConfig

Dtype = Any


class _Part(nn.Module):
    """Fields shared by the codebook's parts, and its conv (torch's "same" padding, HF's init)."""

    config: CodebookConfig
    dtype: Dtype
    param_dtype: Dtype

    def conv(self, features: int, kernel: int, name: str) -> nn.Conv:
        pad = (kernel - 1) // 2
        return nn.Conv(features, (kernel, kernel), padding=((pad, pad), (pad, pad)), dtype=self.dtype,
                       param_dtype=self.param_dtype, kernel_init=nn.initializers.normal(self.config.initializer_range),
                       bias_init=nn.initializers.zeros, name=name)


# Flax names only direct children, so each level of HF's nested nn.Sequential names (`res_path.path.conv_1`,
# `group_1.group.block_1`) is a small module of its own.


class _Path(_Part):
    """relu-conv3-relu-conv3-relu-conv3-relu-conv1 at a quarter of the output width."""

    out_size: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        hidden = self.out_size // 4
        for i, (width, kernel) in enumerate(((hidden, 3), (hidden, 3), (hidden, 3), (self.out_size, 1)), start=1):
            x = self.conv(width, kernel, f"conv_{i}")(jax.nn.relu(x))
        return x


class _ResPath(_Part):
    """HF `res_path`, whose `path` holds the convolutions."""

    out_size: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return _Path(self.config, self.dtype, self.param_dtype, self.out_size, name="path")(x)


class _Block(_Part):
    """id_path(x) + post_gain * res_path(x); id_path is a 1x1 conv when the width changes."""

    in_size: int
    out_size: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        num_layers = self.config.num_groups * self.config.num_blocks_per_group
        identity = self.conv(self.out_size, 1, "id_path")(x) if self.in_size != self.out_size else x
        residual = _ResPath(self.config, self.dtype, self.param_dtype, self.out_size, name="res_path")(x)
        return identity + (1.0 / num_layers**2) * residual


class _Blocks(_Part):
    """HF `group`: `num_blocks_per_group` blocks."""

    in_size: int
    out_size: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.config.num_blocks_per_group):
            in_size = self.in_size if i == 0 else self.out_size
            x = _Block(self.config, self.dtype, self.param_dtype, in_size, self.out_size, name=f"block_{i + 1}")(x)
        return x


class _Group(_Part):
    """HF `group_<n>`: its blocks, then a 2x2 max-pool unless it is the last group."""

    in_size: int
    out_size: int
    use_pool: bool

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = _Blocks(self.config, self.dtype, self.param_dtype, self.in_size, self.out_size, name="group")(x)
        return nn.max_pool(x, (2, 2), strides=(2, 2)) if self.use_pool else x


class _Output(_Part):
    """HF `output`: relu, then a 1x1 conv to the vocabulary."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(self.config.vocab_size, 1, "conv")(jax.nn.relu(x))


class _Network(_Part):
    """HF's `blocks` Sequential: input conv, four groups of widths 1, 2, 4, 8 x hidden_size, output."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.config.hidden_size
        x = self.conv(h, 7, "input")(x)
        widths = (h, h, 2 * h, 4 * h, 8 * h)
        for g in range(4):
            x = _Group(self.config, self.dtype, self.param_dtype, widths[g], widths[g + 1], g < 3,
                       name=f"group_{g + 1}")(x)
        return _Output(self.config, self.dtype, self.param_dtype, name="output")(x)


class FlavaImageCodebook(nn.Module):
    """Codebook encoder. `__call__` takes NHWC pixels in [0.1, 0.9] (the codebook transform) and gives NHWC logits."""

    config: CodebookConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self) -> None:
        self.blocks = _Network(self.config, self.dtype, self.param_dtype)

    def __call__(self, pixels_nhwc: jax.Array) -> jax.Array:
        return self.blocks(pixels_nhwc.astype(self.dtype))

    def get_codebook_indices(self, pixel_values: jax.Array) -> jax.Array:
        """(B, C, H, W) codebook pixels (HF layout) -> (B, H/8, W/8) int32 token ids, outside the gradient."""
        logits = self(jnp.transpose(pixel_values, (0, 2, 3, 1)))
        return jnp.argmax(jax.lax.stop_gradient(logits), axis=-1).astype(jnp.int32)

    def get_codebook_probs(self, pixel_values: jax.Array) -> jax.Array:
        """(B, C, H, W) -> (B, H/8, W/8, vocab) softmax over the codebook, outside the gradient."""
        logits = self(jnp.transpose(pixel_values, (0, 2, 3, 1)))
        return jax.nn.softmax(jax.lax.stop_gradient(logits).astype(jnp.float32), axis=-1)
