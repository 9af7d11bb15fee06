"""The paper's multimodal measures, whatever computes the embeddings: ImageNet-style zero-shot classification
(its "MTR") and image-text retrieval. Each task is read and decoded once (`zeroshot_task`, `retrieval_task`), then
scored with a backend's two embedding functions (JAX during training, PyTorch on an export):
`text_features(ids) -> (N, P)` and `image_features(uint8 pixels) -> (N, P)`, both L2-normalised.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from flava_jax.common import retrieval, zeroshot
from flava_jax.data import image_sets, retrieval_pairs
from flava_jax.data.eval_images import load_resized

log = logging.getLogger("flava_jax")
Encode = Callable[[str, int], list[int]]  # text, max tokens -> [CLS] ids [SEP]
Features = Callable[[Any], np.ndarray]


@dataclasses.dataclass
class ZeroShotTask:
    """Classes' prompt ids (class-major, `templates` per class), decoded images and their labels, and what to
    report beside the accuracies."""

    prompts: list[list[int]]
    templates: int
    pixels: np.ndarray
    labels: np.ndarray
    info: dict[str, Any]


def zeroshot_task(path: str | os.PathLike, encode: Encode, image_size: int, max_length: int,
                  limit: int | None = None, class_names: str | os.PathLike | None = None,
                  templates: int | None = None, special_tokens: bool = False) -> ZeroShotTask:
    """Read the labelled images at `path` (flava_jax.data.image_sets' layouts; the first `limit` per class),
    decode them and encode the prompts of the first `templates` templates (all 80 by default)."""
    images = image_sets.read_image_set(path, limit_per_class=limit, class_names=class_names)
    chosen = image_sets.templates()[:templates]
    prompts = zeroshot.prompt_ids(encode, images.classes, chosen, special_tokens, max_length)
    pixels, kept, unreadable = load_resized([i.read for i in images.images], [i.name for i in images.images],
                                            image_size, f"zero-shot images from {path}")
    skipped = images.skipped + unreadable
    if not kept:
        raise ValueError(f"{path}: none of its {len(images.images)} images decodes")
    info = {"images": len(kept), "classes": len(images.classes), "templates": len(chosen),
            "special_tokens": special_tokens, "layout": images.layout, "skipped": dict(skipped)}
    return ZeroShotTask(prompts, len(chosen), pixels, np.asarray([images.images[i].label for i in kept]), info)


def score_zeroshot(task: ZeroShotTask, text_features: Features,
                   image_features: Features) -> tuple[dict[str, Any], np.ndarray]:
    """({"top1", "top5", **task.info}, the (images, classes) logits)."""
    classes = zeroshot.class_embeddings(text_features(task.prompts), task.templates)
    logits = zeroshot.logits(image_features(task.pixels), classes)
    return {**zeroshot.top_k_accuracy(logits, task.labels), **task.info}, logits


@dataclasses.dataclass
class RetrievalTask:
    """Texts' ids, each text's image, the decoded images, and what to report beside the recalls."""

    texts: list[list[int]]
    image_of_text: np.ndarray
    pixels: np.ndarray
    info: dict[str, Any]


def retrieval_task(path: str | os.PathLike, encode: Encode, image_size: int, max_length: int,
                   limit: int | None = None) -> RetrievalTask:
    """Read the pairs at `path` (flava_jax.data.retrieval_pairs; the first `limit`), decode the images, encode the texts
    (truncated to `max_length` tokens, as the pair stream truncates them)."""
    found = retrieval_pairs.read_pairs(path, limit)
    pixels, kept, unreadable = load_resized(found.images, found.names, image_size, f"retrieval images from {path}")
    found = found.keep_images(kept, unreadable)
    if not found.texts:
        raise ValueError(f"{path}: none of its pairs' images decodes")
    info = {"pairs": len(found.texts), "images": len(found.images), "skipped": dict(found.skipped)}
    for way, candidates, what in (("image → text", len(found.texts), "texts"),
                                  ("text → image", len(found.images), "images")):
        too_few = [f"R@{k}" for k in retrieval.KS if k >= candidates]
        if too_few:
            log.warning("retrieval from %s: %s not reported, with only %d %s to rank", path, way + " " +
                        ", ".join(too_few), candidates, what)
    return RetrievalTask([encode(t, max_length) for t in found.texts], found.image_of_text, pixels, info)


def score_retrieval(task: RetrievalTask, text_features: Features, image_features: Features,
                    itm: Callable[[list[list[int]], np.ndarray], np.ndarray] | None = None,
                    itm_rerank: int = 0) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """({"i2t_r1", ..., "t2i_r10", "chance": {...}, "itm_rerank", **task.info}, the (images, texts) and (texts,
    images) scores ranked). With `itm_rerank` = k, each query's first k candidates are reordered by `itm(ids,
    pixels)`, the ITM head's matched-minus-unmatched logit of each (text, image) pair, each pair scored once."""
    similarity = image_features(task.pixels).astype(np.float64) @ text_features(task.texts).astype(np.float64).T
    image_to_text, text_to_image = similarity, similarity.T
    if itm_rerank:
        if itm is None:
            raise ValueError("itm_rerank needs the ITM head's scores (itm)")
        cache: dict[tuple[int, int], float] = {}

        def pair_scores(images: np.ndarray, texts: np.ndarray) -> np.ndarray:
            todo = sorted(set(zip(images.tolist(), texts.tolist(), strict=True)) - cache.keys())
            if todo:
                values = itm([task.texts[t] for _, t in todo], task.pixels[[i for i, _ in todo]])
                cache.update(zip(todo, np.asarray(values, np.float64).tolist(), strict=True))
            return np.array([cache[pair] for pair in zip(images.tolist(), texts.tolist(), strict=True)])

        image_to_text = retrieval.rerank(similarity, itm_rerank, pair_scores)
        text_to_image = retrieval.rerank(similarity.T, itm_rerank, lambda texts, images: pair_scores(images, texts))
    recalls = retrieval.recalls(image_to_text, task.image_of_text, text_to_image=text_to_image)
    chance = retrieval.chance(task.image_of_text, len(task.pixels))
    return {**recalls, "chance": chance, "itm_rerank": itm_rerank, **task.info}, image_to_text, text_to_image

