"""Image transforms of the reference (FlavaImageProcessor as facebook/flava-full configures it,
docs/reference.md#image-transforms).

Pure functions on PIL images and numpy arrays, channels-first float32 out, as HF's processor returns them (the
`device_*` twins do the same on the device from the pipeline's uint8 images, resizing included, bit for bit):

* encoder input: resize to `size` x `size` (bicubic, aspect ratio not kept), x/255, CLIP mean/std;
* codebook input: resize to `size` x `size` (LANCZOS), x/255, DALL-E's map_pixels x -> 0.8 x + 0.1.
"""

from __future__ import annotations

import functools
import io
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import jax

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
LOGIT_LAPLACE_EPS = 0.1


def load_rgb(source: str | Path | bytes | Image.Image) -> Image.Image:
    """An RGB image from a path, encoded bytes or a PIL image; transparency is flattened onto white, as the
    reference's download step does."""
    image = source if isinstance(source, Image.Image) else Image.open(
        io.BytesIO(source) if isinstance(source, bytes) else source)
    if image.mode == "RGB":
        return image
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _resized(image: Image.Image, size: int, resample: Image.Resampling) -> np.ndarray:
    return np.asarray(image.resize((size, size), resample=resample), np.float32) / 255.0


def encoder_pixels(image: Image.Image, size: int) -> np.ndarray:
    """(3, size, size) float32: bicubic squash, scaled to [0, 1], CLIP-normalised."""
    return normalize_encoder_pixels(encoder_resized(image, size))


def encoder_resized(image: Image.Image, size: int) -> np.ndarray:
    """(size, size, 3) uint8: the encoder transform's resize alone (a bicubic squash), for batching images of any
    size before `normalize_encoder_pixels` (or `device_encoder_pixels`, which leaves them unresized)."""
    return np.asarray(image.resize((size, size), resample=Image.Resampling.BICUBIC))


def normalize_encoder_pixels(pixels: np.ndarray) -> np.ndarray:
    """uint8 (..., H, W, 3) -> float32 (..., 3, H, W): scaled to [0, 1] and CLIP-normalised."""
    x = (np.asarray(pixels, np.float32) / 255.0 - CLIP_MEAN) / CLIP_STD
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))


def codebook_pixels(image: Image.Image, size: int) -> np.ndarray:
    """(3, size, size) float32 in [0.1, 0.9]: LANCZOS resize, scaled to [0, 1], then map_pixels."""
    pixels = (1 - 2 * LOGIT_LAPLACE_EPS) * _resized(image, size, Image.Resampling.LANCZOS) + LOGIT_LAPLACE_EPS
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


# ------------------------------------------------------------------------ PIL's resampling, on the device
# Pillow resizes 8-bit images with fixed-point filters: per output pixel, int32 weights scaled by 2**22, a
# horizontal pass rounded to uint8, then a vertical one. `device_resize` does the same integer arithmetic with jnp,
# so images resized on the device are bit-identical to PIL's, and the pipeline only has to decode JPEGs.
_PRECISION_BITS = 22


def _sinc(x: float) -> float:
    return 1.0 if x == 0.0 else math.sin(math.pi * x) / (math.pi * x)


def _lanczos(x: float) -> float:
    return _sinc(x) * _sinc(x / 3) if -3.0 <= x < 3.0 else 0.0


def _bicubic(x: float, a: float = -0.5) -> float:
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


_FILTERS = {"lanczos": (_lanczos, 3.0), "bicubic": (_bicubic, 2.0)}


@functools.lru_cache(maxsize=32)
def resample_weights(in_size: int, out_size: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc`: (source index, int32 weight), each (out, taps)."""
    f, support = _FILTERS[kind]
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support *= filterscale
    taps = int(math.ceil(support)) * 2 + 1
    index = np.zeros((out_size, taps), np.int32)
    weight = np.zeros((out_size, taps), np.int32)
    for out in range(out_size):
        center = (out + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        w = [f((x + lo - center + 0.5) / filterscale) for x in range(hi - lo)]
        total = sum(w)
        for x, value in enumerate(w):
            value = value / total if total != 0.0 else value
            weight[out, x] = int(value * (1 << _PRECISION_BITS) + (0.5 if value >= 0 else -0.5))
        index[out] = lo + np.minimum(np.arange(taps), hi - lo - 1)  # unused taps have weight 0
    return index, weight


def device_resize(pixels: jax.Array, size: int, kind: str) -> jax.Array:
    """uint8 (B, H, W, C) -> (B, size, size, C), bit-identical to PIL's resize with BICUBIC or LANCZOS."""
    import jax.numpy as jnp

    x = pixels.astype(jnp.int32)
    for axis in (2, 1):  # Pillow: horizontal pass first
        if x.shape[axis] == size:
            continue
        index, weight = resample_weights(x.shape[axis], size, kind)
        # Every tap in one gather, (..., out, taps, ...), weighted and summed over taps: a few ops to trace, not a
        # few per tap. Integer sums, so the order of the taps cannot change a bit.
        taps = jnp.take(x, jnp.asarray(index.reshape(-1)), axis=axis)
        taps = taps.reshape(x.shape[:axis] + index.shape + x.shape[axis + 1:])
        total = (taps * jnp.asarray(weight).reshape(index.shape + (1,) * (x.ndim - axis - 1))).sum(axis + 1) \
            + (1 << (_PRECISION_BITS - 1))
        x = jnp.clip(jnp.right_shift(total, _PRECISION_BITS), 0, 255)
    return x.astype(jnp.uint8)


def device_encoder_pixels(pixels: jax.Array, size: int) -> jax.Array:
    """Stored uint8 images (B, H, W, 3) -> `encoder_pixels`, (B, 3, size, size) f32, on the device."""
    import jax.numpy as jnp

    x = (device_resize(pixels, size, "bicubic").astype(jnp.float32) / 255.0 - CLIP_MEAN) / CLIP_STD
    return jnp.transpose(x, (0, 3, 1, 2))


def device_codebook_pixels(pixels: jax.Array, size: int) -> jax.Array:
    """Stored uint8 images (B, H, W, 3) -> `codebook_pixels`, (B, 3, size, size) f32, on the device."""
    import jax.numpy as jnp

    x = device_resize(pixels, size, "lanczos").astype(jnp.float32) / 255.0
    return jnp.transpose((1 - 2 * LOGIT_LAPLACE_EPS) * x + LOGIT_LAPLACE_EPS, (0, 3, 1, 2))


def model_inputs(batch: dict, image_size: int, codebook_size: int) -> dict:
    """One stream's pipeline batch as `FlavaForPreTraining` keyword arguments (jit-friendly): the stored images
    become the encoder's and the codebook's inputs, exactly as FlavaImageProcessor makes them from the same image."""
    out = {k: v for k, v in batch.items() if k != "pixels"}
    if "pixels" in batch:
        out["pixel_values"] = device_encoder_pixels(batch["pixels"], image_size)
        out["codebook_pixel_values"] = device_codebook_pixels(batch["pixels"], codebook_size)
    return out
