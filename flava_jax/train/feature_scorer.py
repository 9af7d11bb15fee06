"""Contrastive embeddings in JAX, for zero-shot classification and retrieval during training: texts and images
through their encoders and projections in fixed-size batches (texts padded to a multiple of 16 tokens, so few
shapes compile), placed over the mesh as the PLL scorer places its copies."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from flava_jax.common.text_batches import by_length
from flava_jax.data.transforms import device_encoder_pixels
from flava_jax.model.flava import FlavaForPreTraining


class FeatureScorer:
    """`texts(params, ids)` and `images(params, pixels)`: (N, projection_dim) float32, L2-normalised; `itm(params,
    ids, pixels)`: the ITM head's matched-minus-unmatched logit of each (text, image) pair."""

    def __init__(self, model: FlavaForPreTraining, pad_id: int, batch_size: int = 128, length_multiple: int = 16,
                 sharding: NamedSharding | None = None) -> None:
        self.batch_size, self.length_multiple, self.sharding = batch_size, length_multiple, sharding
        self.pad_id, self.projection_dim = pad_id, model.config.projection_dim
        size = model.config.image_config.image_size

        def texts(params: Any, ids: jax.Array) -> jax.Array:
            return model.apply({"params": params}, ids, ids != pad_id, method=model.text_features)

        def images(params: Any, pixels: jax.Array) -> jax.Array:
            # the pixels come resized to the encoder's size, so only the normalisation runs here
            return model.apply({"params": params}, device_encoder_pixels(pixels, size), method=model.image_features)

        # Text padding masked in the multimodal encoder, so that a pair's score never depends on its batch (the
        # reference's encoder did not mask it: model.multimodal_attention_mask), as transformers 5 scores it.
        masked = FlavaForPreTraining(model.config.replace(multimodal_attention_mask=True))

        def itm(params: Any, ids: jax.Array, pixels: jax.Array) -> jax.Array:
            logits = masked.apply({"params": params}, ids, device_encoder_pixels(pixels, size), ids != pad_id,
                                  method=masked.itm_logits).astype(jax.numpy.float32)
            return logits[:, 1] - logits[:, 0]

        replicated = None if sharding is None else NamedSharding(sharding.mesh, PartitionSpec())
        self._texts = jax.jit(texts, out_shardings=replicated)
        self._images = jax.jit(images, out_shardings=replicated)
        self._itm = jax.jit(itm, out_shardings=replicated)

    def _place(self, x: np.ndarray) -> Any:
        if self.sharding is None:
            return x
        return jax.make_array_from_callback(x.shape, self.sharding, lambda index: x[index])

    def _full(self, x: np.ndarray, pad_value: int) -> Any:
        """`x` padded with `pad_value` rows to the batch size, placed over the mesh."""
        padding = ((0, self.batch_size - len(x)),) + ((0, 0),) * (x.ndim - 1)
        return self._place(np.pad(x, padding, constant_values=pad_value))

    def texts(self, params: Any, ids: Sequence[Sequence[int]]) -> np.ndarray:
        """Embeddings of token-id sequences, in their order."""
        out = np.zeros((len(ids), self.projection_dim), np.float32)
        for rows, batch in by_length(ids, self.pad_id, self.batch_size, self.length_multiple):
            out[rows] = np.asarray(self._texts(params, self._full(batch.astype(np.int32), self.pad_id)))[:len(rows)]
        return out

    def images(self, params: Any, pixels: np.ndarray) -> np.ndarray:
        """Embeddings of uint8 (N, size, size, 3) images resized as the encoder transform resizes them."""
        out = np.zeros((len(pixels), self.projection_dim), np.float32)
        for start in range(0, len(pixels), self.batch_size):
            chunk = pixels[start:start + self.batch_size]
            out[start:start + len(chunk)] = np.asarray(self._images(params, self._full(chunk, 0)))[:len(chunk)]
        return out

    def itm(self, params: Any, ids: Sequence[Sequence[int]], pixels: np.ndarray) -> np.ndarray:
        """The ITM log-odds of pairs (ids[i], pixels[i])."""
        out = np.zeros(len(ids), np.float32)
        for rows, batch in by_length(ids, self.pad_id, self.batch_size, self.length_multiple):
            out[rows] = np.asarray(self._itm(params, self._full(batch.astype(np.int32), self.pad_id),
                                             self._full(pixels[rows], 0)))[:len(rows)]
        return out
