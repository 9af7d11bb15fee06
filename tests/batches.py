"""Random but well-formed FLAVA batches (numpy) for tests: padded text with BERT-style masks, images with masks."""

from __future__ import annotations

import numpy as np

from flava_jax import FlavaConfig

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4


def text_batch(config: FlavaConfig, rng: np.random.Generator, batch: int, length: int) -> dict[str, np.ndarray]:
    """[CLS] tokens [SEP] [PAD]..., rows of different lengths, 40% of real tokens masked 80/10/10."""
    vocab = config.text_config.vocab_size
    ids = np.full((batch, length), PAD, np.int64)
    lengths = rng.integers(3, length + 1, batch)
    lengths[0] = length  # one row without padding
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.integers(MASK + 1, vocab, n)
        ids[row, 0], ids[row, n - 1] = CLS, SEP
    special = np.isin(ids, (PAD, CLS, SEP))
    selected = (rng.random(ids.shape) < 0.4) & ~special
    selected[np.arange(batch), 1] = True  # every row has at least one target
    roll = rng.random(ids.shape)
    masked = np.where(selected & (roll < 0.8), MASK, ids)
    masked = np.where(selected & (roll >= 0.8) & (roll < 0.9), rng.integers(0, vocab, ids.shape), masked)
    return dict(input_ids=ids, input_ids_masked=masked, attention_mask=(ids != PAD).astype(np.int64),
                mlm_labels=np.where(selected, ids, -100))


def image_batch(config: FlavaConfig, rng: np.random.Generator, batch: int,
                masked: bool = True) -> dict[str, np.ndarray]:
    """Normalised-looking pixels, codebook pixels in [0.1, 0.9], and (optionally) a random patch mask."""
    image = config.image_config
    side = config.codebook_image_size
    out = dict(
        pixel_values=rng.standard_normal((batch, image.num_channels, image.image_size, image.image_size)).astype(
            np.float32),
        codebook_pixel_values=(0.1 + 0.8 * rng.random((batch, image.num_channels, side, side))).astype(np.float32),
    )
    if masked:
        mask = rng.random((batch, image.num_patches)) < 0.4
        mask[:, 0] = True
        out["bool_masked_pos"] = mask
    return out


def pair_batch(config: FlavaConfig, rng: np.random.Generator, batch: int, length: int,
               itm_labels: list[int] | None = None, masked_images: bool = True) -> dict[str, np.ndarray]:
    """Image-text pairs, with ITM labels (0 = the text was swapped for another) when given."""
    out = {**text_batch(config, rng, batch, length), **image_batch(config, rng, batch, masked_images)}
    if itm_labels is not None:
        out["itm_labels"] = np.asarray(itm_labels, np.int64)
    return out
