"""Image-text retrieval recall, as pure numpy: R@k in both directions from a similarity matrix.

Images are deduplicated by content before scoring, so an image with several texts (WiT keeps a text per page section;
COCO has five captions) is one candidate with several right answers: image->text is a hit when any of its texts is
in the first k, text->image when its image is. Ranks count the candidates scoring strictly higher than the best right
one, so ties never depend on a sort's order.

`rerank` reorders each query's first k candidates by a second score (the ITM head's, as FLAVA's and ALBEF's
retrieval do), keeping them above the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from math import comb

import numpy as np

from flava_jax.common.zeroshot import ranks

KS = (1, 5, 10)


def recall_keys(ks: Sequence[int] = KS) -> list[str]:
    """The recall entries `recalls` returns: i2t_r1, t2i_r1, i2t_r5, ..."""
    return [f"{way}_r{k}" for k in ks for way in ("i2t", "t2i")]


def recalls(similarity: np.ndarray, image_of_text: np.ndarray, ks: Sequence[int] = KS,
            text_to_image: np.ndarray | None = None) -> dict[str, float | None]:
    """(images, texts) similarities and each text's image index -> i2t_r{k} and t2i_r{k} (fractions); None for a k
    not below the number of candidates, where recall would be 1 by construction. `text_to_image` (texts, images)
    scores the text -> image direction when it differs (reranked); by default `similarity` does both."""
    images, texts = similarity.shape
    image_of_text = np.asarray(image_of_text)
    t2i = ranks_text_to_image(similarity if text_to_image is None else text_to_image.T, image_of_text)
    i2t = ranks_image_to_text(similarity, image_of_text)
    out: dict[str, float | None] = {}
    for k in ks:
        out[f"i2t_r{k}"] = float((i2t < k).mean()) if k < texts else None
        out[f"t2i_r{k}"] = float((t2i < k).mean()) if k < images else None
    return out


def ranks_text_to_image(similarity: np.ndarray, image_of_text: np.ndarray) -> np.ndarray:
    """Per text, how many images score strictly higher than its own."""
    return ranks(similarity.T, image_of_text)


def ranks_image_to_text(similarity: np.ndarray, image_of_text: np.ndarray) -> np.ndarray:
    """Per image, how many texts score strictly higher than its best-scoring own text."""
    own = image_of_text[None, :] == np.arange(similarity.shape[0])[:, None]
    best = np.where(own, similarity, -np.inf).max(axis=1)
    return (np.where(own, -np.inf, similarity) > best[:, None]).sum(axis=1)


def chance(image_of_text: np.ndarray, images: int, ks: Sequence[int] = KS) -> dict[str, float | None]:
    """Expected recall of a random ranking: i2t (an image with m of T texts: 1 - C(T-m, k)/C(T, k), averaged over
    images) and t2i (k/images), None where recall is not reported."""
    texts = len(image_of_text)
    per_image = np.bincount(np.asarray(image_of_text), minlength=images)
    out: dict[str, float | None] = {}
    for k in ks:
        out[f"i2t_r{k}"] = float(np.mean([1 - comb(texts - m, k) / comb(texts, k) for m in per_image])) \
            if k < texts else None
        out[f"t2i_r{k}"] = k / images if k < images else None
    return out



def rerank(scores: np.ndarray, k: int, rescore: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """(queries, candidates) `scores` with each row's first k candidates rescored by `rescore(query_rows,
    candidate_columns)` (flat arrays of pairs -> their scores) and lifted above every other candidate; the rest keep
    their scores, so the order beyond k is unchanged."""
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    rows = np.repeat(np.arange(scores.shape[0]), k)
    new = np.asarray(rescore(rows, top.reshape(-1)), np.float64).reshape(top.shape)
    out = np.array(scores, np.float64)
    out[rows.reshape(top.shape), top] = new - new.min() + out.max() + 1.0
    return out
