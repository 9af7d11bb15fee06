"""Contrastive embeddings with transformers' FlavaModel feature methods (PyTorch), on an export: the text and image
projections of position 0 (`get_text_features` / `get_image_features`), L2-normalised, as zero-shot classification
and retrieval read them; and the ITM head's scores of pairs, for retrieval's reranking."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from flava_jax.common.text_batches import by_length
from flava_jax.data.transforms import normalize_encoder_pixels


def _text_batches(ids: Sequence[Sequence[int]], pad_id: int, batch_size: int, device: Any) -> Iterator[tuple[Any, Any]]:
    """(rows, padded ids on `device`) of batches shortest first, each padded to its longest."""
    import torch

    for rows, batch in by_length(ids, pad_id, batch_size):
        yield rows, torch.from_numpy(batch).to(device)


def _pixel_values(pixels: np.ndarray, device: Any) -> Any:
    import torch

    return torch.from_numpy(normalize_encoder_pixels(pixels)).to(device)


def text_features(model: Any, ids: Sequence[Sequence[int]], pad_id: int, batch_size: int = 256) -> np.ndarray:
    """(N, P) float32 embeddings of token-id sequences."""
    import torch

    out = np.zeros((len(ids), model.config.projection_dim), np.float32)
    for rows, batch in _text_batches(ids, pad_id, batch_size, model.device):
        with torch.inference_mode():
            features = model.flava.get_text_features(input_ids=batch, attention_mask=batch != pad_id).pooler_output
            out[rows] = torch.nn.functional.normalize(features[:, 0].float(), dim=-1).cpu().numpy()
    return out


def image_features(model: Any, pixels: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """(N, P) float32 embeddings of uint8 (N, size, size, 3) images resized as the encoder transform resizes them."""
    import torch

    out = np.zeros((len(pixels), model.config.projection_dim), np.float32)
    for start in range(0, len(pixels), batch_size):
        with torch.inference_mode():
            features = model.flava.get_image_features(
                pixel_values=_pixel_values(pixels[start:start + batch_size], model.device)).pooler_output
            out[start:start + len(features)] = torch.nn.functional.normalize(features[:, 0].float(),
                                                                             dim=-1).cpu().numpy()
    return out


def itm_scores(model: Any, ids: Sequence[Sequence[int]], pixels: np.ndarray, pad_id: int,
               batch_size: int = 64) -> np.ndarray:
    """The ITM head's matched-minus-unmatched logit of each pair (ids[i], pixels[i]), from FlavaModel's multimodal
    encoder (which masks the text padding in transformers 5)."""
    import torch

    out = np.zeros(len(ids), np.float32)
    for rows, batch in _text_batches(ids, pad_id, batch_size, model.device):
        with torch.inference_mode():
            states = model.flava(input_ids=batch, pixel_values=_pixel_values(pixels[rows], model.device),
                                 attention_mask=batch != pad_id).multimodal_embeddings
            logits = model.itm_head(states).float()
        out[rows] = (logits[:, 1] - logits[:, 0]).cpu().numpy()
    return out
