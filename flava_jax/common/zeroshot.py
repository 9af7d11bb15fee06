"""Zero-shot classification the paper's way (its "MTR", docs/reference.md#zero-shot-without-cls), as pure numpy.

Every class gets one text embedding: each prompt template filled with the class name goes through the text encoder,
the text projection of position 0 is L2-normalised, the template embeddings are averaged and normalised again.
An image's logits are 100 x its normalised image projection (image [CLS]) dotted with every class embedding.

The reference tokenised the prompts without special tokens (`add_special_tokens=False`), so its "position 0" is the
first word piece of the prompt, not [CLS]: `special_tokens=False` reproduces that (the default) and `True` encodes
them as training does, [CLS] ... [SEP].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

LOGIT_SCALE = 100.0  # the reference's fixed zero-shot temperature, not the model's learned one
TOP_K = (1, 5)


def prompt_ids(encode: Callable[[str, int], list[int]], classes: Sequence[str], templates: Sequence[str],
               special_tokens: bool, max_length: int) -> list[list[int]]:
    """Token ids of every (class, template) prompt, class-major. `encode(text, max_length)` is the tokenizer's
    [CLS] ... [SEP] encoding; without special tokens both are dropped, as the reference did."""
    ids = [encode(template.format(name), max_length + (0 if special_tokens else 2))
           for name in classes for template in templates]
    return ids if special_tokens else [i[1:-1] for i in ids]


def class_embeddings(prompt_features: np.ndarray, templates: int) -> np.ndarray:
    """(classes x templates, D) prompt features, class-major -> (classes, D): each normalised, averaged over the
    templates of its class, normalised again."""
    features = normalize(np.asarray(prompt_features, np.float64)).reshape(-1, templates,
                                                                           prompt_features.shape[-1])
    return normalize(features.mean(axis=1))


def normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows over their L2 norm (torch.nn.functional.normalize)."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def logits(image_features: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """(images, classes): 100 x normalised image features . class embeddings."""
    return LOGIT_SCALE * normalize(np.asarray(image_features, np.float64)) @ classes.T


def ranks(scores: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per row, how many candidates score strictly higher than the true one (0 = first; ties resolved in the true
    one's favour, so the result does not depend on a sort's tie order)."""
    true = scores[np.arange(len(truth)), truth]
    return (scores > true[:, None]).sum(axis=1)


def top_k_accuracy(scores: np.ndarray, labels: np.ndarray, ks: Sequence[int] = TOP_K) -> dict[str, float]:
    """{"top1": .., "top5": ..}: the fraction of rows whose label ranks within the first k."""
    rank = ranks(scores, np.asarray(labels))
    return {f"top{k}": float((rank < k).mean()) for k in ks}
