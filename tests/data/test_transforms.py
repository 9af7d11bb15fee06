"""Image transforms: host and device paths against PIL and transformers' FlavaImageProcessor, on real photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flava_jax.data.sample import SAMPLE_DIR
from flava_jax.data.transforms import (
    codebook_pixels,
    device_codebook_pixels,
    device_encoder_pixels,
    device_resize,
    encoder_pixels,
    load_rgb,
)

PHOTOS = sorted((SAMPLE_DIR / "images").iterdir())


@pytest.mark.parametrize("photo", PHOTOS, ids=lambda p: p.name)
def test_host_transforms_equal_flava_image_processor(photo: Path) -> None:
    processor = pytest.importorskip("transformers").FlavaImageProcessor()
    image = load_rgb(photo)  # grayscale PNGs too
    reference = processor(image, return_codebook_pixels=True, return_tensors="np")
    np.testing.assert_array_equal(encoder_pixels(image, 224), reference["pixel_values"][0])
    np.testing.assert_array_equal(codebook_pixels(image, 112), reference["codebook_pixel_values"][0])


@pytest.mark.parametrize("photo", PHOTOS, ids=lambda p: p.name)
@pytest.mark.parametrize("source", [224, 97, 300])
def test_device_resize_is_bit_identical_to_pil(photo: Path, source: int) -> None:
    image = load_rgb(photo).resize((source, source), Image.Resampling.BICUBIC)
    pixels = np.asarray(image)[None]
    for size in (112, 32, 224, 250):
        for kind, resample in (("bicubic", Image.Resampling.BICUBIC), ("lanczos", Image.Resampling.LANCZOS)):
            ours = np.asarray(device_resize(pixels, size, kind))[0]
            np.testing.assert_array_equal(ours, np.asarray(image.resize((size, size), resample)),
                                          err_msg=f"{kind} {source}->{size}")


def test_device_inputs_equal_the_host_ones() -> None:
    """The same uint8 resizes; the float steps may round differently in XLA by an ulp."""
    images = [load_rgb(p).resize((224, 224), Image.Resampling.BICUBIC) for p in PHOTOS]
    pixels = np.stack([np.asarray(im) for im in images])
    for size in (224, 32):  # a model smaller than the stored images resizes from the same image as the processor
        np.testing.assert_allclose(np.asarray(device_encoder_pixels(pixels, size)),
                                   np.stack([encoder_pixels(im, size) for im in images]), atol=1e-6, rtol=0)
    np.testing.assert_allclose(np.asarray(device_codebook_pixels(pixels, 112)),
                               np.stack([codebook_pixels(im, 112) for im in images]), atol=1e-6, rtol=0)
