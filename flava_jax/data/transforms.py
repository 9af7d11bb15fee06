"""Image transforms of the reference (FlavaImageProcessor as facebook/flava-full configures it, paper §4.4).

Pure functions on PIL images and numpy arrays, channels-first float32 out, as HF's processor returns them (the
`device_*` twins do the float part on the device, from the pipeline's uint8):

* encoder input: resize to `size` x `size` (bicubic, aspect ratio not kept), x/255, CLIP mean/std;
* codebook input: resize to `size` x `size` (LANCZOS), x/255, DALL-E's map_pixels x -> 0.8 x + 0.1.
"""

from __future__ import annotations

import io
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
    pixels = (_resized(image, size, Image.Resampling.BICUBIC) - CLIP_MEAN) / CLIP_STD
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def codebook_pixels(image: Image.Image, size: int) -> np.ndarray:
    """(3, size, size) float32 in [0.1, 0.9]: LANCZOS resize, scaled to [0, 1], then map_pixels."""
    pixels = (1 - 2 * LOGIT_LAPLACE_EPS) * _resized(image, size, Image.Resampling.LANCZOS) + LOGIT_LAPLACE_EPS
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def device_encoder_pixels(pixels: jax.Array) -> jax.Array:
    """uint8 (B, H, W, 3) from the pipeline -> `encoder_pixels` of each image, (B, 3, H, W) f32, on the device."""
    import jax.numpy as jnp

    x = (pixels.astype(jnp.float32) / 255.0 - CLIP_MEAN) / CLIP_STD
    return jnp.transpose(x, (0, 3, 1, 2))


def device_codebook_pixels(pixels: jax.Array) -> jax.Array:
    """uint8 (B, H, W, 3) from the pipeline -> `codebook_pixels` of each image, (B, 3, H, W) f32, on the device."""
    import jax.numpy as jnp

    x = (1 - 2 * LOGIT_LAPLACE_EPS) * (pixels.astype(jnp.float32) / 255.0) + LOGIT_LAPLACE_EPS
    return jnp.transpose(x, (0, 3, 1, 2))


def model_inputs(batch: dict) -> dict:
    """One stream's pipeline batch as `FlavaForPreTraining` keyword arguments (jit-friendly)."""
    out = {k: v for k, v in batch.items() if k not in ("pixels", "codebook_pixels")}
    if "pixels" in batch:
        out["pixel_values"] = device_encoder_pixels(batch["pixels"])
        out["codebook_pixel_values"] = device_codebook_pixels(batch["codebook_pixels"])
    return out
