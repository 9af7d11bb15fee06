"""Decode evaluation images (zero-shot classes, retrieval pairs) into one uint8 batch at the encoder's size, in
threads (PIL releases the GIL while it decodes and resizes); an image that does not decode is a counted skip."""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from flava_jax.common.progress import ProgressLog
from flava_jax.data.images import available_cores
from flava_jax.data.transforms import encoder_resized, load_rgb

log = logging.getLogger("flava_jax")
UNREADABLE = "image does not decode"


def load_resized(readers: Sequence[Callable[[], bytes]], names: Sequence[str], size: int,
                 what: str = "images") -> tuple[np.ndarray, list[int], collections.Counter[str]]:
    """(pixels (kept, size, size, 3) uint8 as the encoder transform resizes them, the kept indices, skip counts):
    `readers[i]()` gives image i's encoded bytes, `names[i]` names it in the log."""

    def one(i: int) -> np.ndarray | None:
        try:
            return encoder_resized(load_rgb(readers[i]()), size)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:  # PIL's ways of refusing
            log.warning("%s: %s (%s): skipped", names[i], UNREADABLE, e)
            return None

    progress = ProgressLog(f"decoding {what}", len(readers), "images")
    pixels, kept = [], []
    with ThreadPoolExecutor(max(1, min(available_cores(), 32))) as pool:
        for i, image in enumerate(pool.map(one, range(len(readers)))):
            if image is not None:
                pixels.append(image)
                kept.append(i)
            progress.update(i + 1)
    progress.finish()
    skipped = collections.Counter({UNREADABLE: len(readers) - len(kept)} if len(kept) < len(readers) else {})
    return (np.stack(pixels) if pixels else np.zeros((0, size, size, 3), np.uint8)), kept, skipped
