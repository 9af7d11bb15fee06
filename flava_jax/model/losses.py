"""FLAVA's pretraining losses as pure functions, each returning `(loss, metrics)`.

Semantics follow transformers' FlavaForPreTraining (docs/reference.md#losses): mean cross-entropy over the selected
positions, ignore index -100. One deliberate difference: where HF takes the mean of an empty selection (NaN), these
return 0 with a zero gradient, so one batch without a masked token cannot poison a run; `metrics["count"]` says
how many positions were scored.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

IGNORE_INDEX = -100
Metrics = dict[str, jax.Array]


def cross_entropy(logits: jax.Array, labels: jax.Array, where: jax.Array | None = None,
                  ignore_index: int = IGNORE_INDEX) -> tuple[jax.Array, Metrics]:
    """Mean CE of `logits` (..., V) against int `labels` (...) over positions with label != ignore_index and `where`.

    An out-of-vocabulary label gives NaN rather than a silently wrong loss.
    """
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    valid = labels != ignore_index
    if where is not None:
        valid = valid & where
    safe = jnp.where(valid, labels, 0)
    picked = jnp.take_along_axis(logits, safe[..., None], axis=-1, mode="fill", fill_value=jnp.nan)[..., 0]
    nll = jax.nn.logsumexp(logits, axis=-1) - picked
    count = valid.sum()
    denom = jnp.maximum(count, 1).astype(logits.dtype)
    loss = jnp.where(valid, nll, 0.0).sum() / denom
    # "The label's logit is the largest", not argmax == label: ties count correct, and XLA shares the max with
    # logsumexp's, where argmax is a slow two-value reduce over the vocabulary.
    correct = jnp.where(valid, picked >= jnp.max(logits, axis=-1), False).sum()
    return loss, {"count": count, "accuracy": correct / denom}


def contrastive_logits(image_embedding: jax.Array, text_embedding: jax.Array,
                       logit_scale: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Scaled similarities of L2-normalised embeddings (B, P): (logits_per_image, logits_per_text), each (B, B)."""
    dtype = jnp.promote_types(image_embedding.dtype, jnp.float32)
    scale = jnp.exp(logit_scale.astype(dtype))
    image_embedding, text_embedding = image_embedding.astype(dtype), text_embedding.astype(dtype)
    return image_embedding @ text_embedding.T * scale, text_embedding @ image_embedding.T * scale


def global_contrastive_loss(logits_per_image: jax.Array, logits_per_text: jax.Array,
                            row_mask: jax.Array | None = None) -> tuple[jax.Array, Metrics]:
    """CLIP loss: the mean of image->text and text->image CE, the diagonal being the targets.

    `row_mask` (B,) keeps only the rows of matched pairs (HF's pos_mask); columns keep every candidate, including
    texts that were swapped in as ITM negatives.
    """
    labels = jnp.arange(logits_per_image.shape[0])
    loss_i, metrics_i = cross_entropy(logits_per_image, labels, where=row_mask)
    loss_t, metrics_t = cross_entropy(logits_per_text, labels, where=row_mask)
    metrics = {"count": metrics_i["count"], "accuracy_image_to_text": metrics_i["accuracy"],
               "accuracy_text_to_image": metrics_t["accuracy"]}
    return (loss_i + loss_t) / 2, metrics


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """torch.nn.functional.normalize: x / max(||x||, eps), in at least f32."""
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)
