"""Held-out image-text pairs for retrieval, from the places users have them:

* a prepared data folder (`python -m flava_jax.data.prepare`): its held-out pair split, the images prepare set aside;
* a parquet file: a text column (`text` or `caption`) and an image column (`image`: HF's Image struct of bytes and
  path, or raw bytes), or a path column (`file`, `path` or `image_path`) relative to the file's folder;
* a TSV with a header naming the same columns, images as paths relative to its folder.

Images are identified by content (prepared data, parquet bytes) or by resolved path, so an image with several texts
is one candidate with several right answers. A path never leads outside the file's folder. Rows with an empty text
or no image are counted skips, as are paths outside the folder or missing.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import hashlib
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from flava_jax.data import prepare, records

log = logging.getLogger("flava_jax")
HELDOUT_PAIRS = "heldout_pair"
TEXT_COLUMNS = ("text", "caption")
PATH_COLUMNS = ("file", "path", "image_path")


@dataclasses.dataclass
class PairSet:
    """Texts, each with the index of its image among `images` (readers of encoded bytes, named by `names`)."""

    texts: list[str]
    image_of_text: np.ndarray
    images: list[Callable[[], bytes]]
    names: list[str]
    skipped: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)

    def keep_images(self, kept: Sequence[int], skipped: collections.Counter[str]) -> PairSet:
        """Only the images at `kept` (those that decoded) and their texts; `skipped` counts the images dropped, and
        their texts are counted too."""
        remap = np.full(len(self.images), -1)
        remap[list(kept)] = np.arange(len(kept))
        new = remap[self.image_of_text]
        lost = int((new < 0).sum())
        counts = self.skipped + skipped + collections.Counter({"text of an image that does not decode": lost}
                                                              if lost else {})
        return PairSet([t for t, i in zip(self.texts, new, strict=True) if i >= 0], new[new >= 0],
                       [self.images[i] for i in kept], [self.names[i] for i in kept], counts)


def read_pairs(path: str | os.PathLike, limit: int | None = None) -> PairSet:
    """The first `limit` usable pairs of `path` (module docstring); ValueError in one line when it holds none."""
    path = Path(path)
    if (path / prepare.MANIFEST).is_file():
        rows = ((e.text, e.image, None, f"{HELDOUT_PAIRS} record {i}")
                for i, e in enumerate(map(records.decode, prepare.read_stream(path, HELDOUT_PAIRS))))
        pairs = _collect(rows, path, limit)
    elif path.suffix == ".parquet":
        pairs = _collect(_parquet_rows(path), path.parent, limit)
    elif path.suffix in (".tsv", ".txt"):
        pairs = _collect(_tsv_rows(path), path.parent, limit)
    else:
        raise ValueError(f"{path}: not a prepared data folder (no {prepare.MANIFEST}), a .parquet or a .tsv of "
                         "image-text pairs")
    for reason, count in pairs.skipped.items():
        log.warning("retrieval pairs in %s: %d skipped: %s", path, count, reason)
    if not pairs.texts:
        raise ValueError(f"{path} holds no usable image-text pair ({dict(pairs.skipped) or 'it is empty'})")
    return pairs


def _parquet_rows(path: Path) -> Iterable[tuple[str | None, bytes | None, str | None, str]]:
    import pyarrow.parquet as pq

    file = pq.ParquetFile(path)
    text, where = _columns(path, file.schema_arrow.names)
    row = 0
    for batch in file.iter_batches(columns=[text, where], batch_size=256):
        for t, image in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(), strict=True):
            if isinstance(image, dict):  # HF's Image feature: bytes, or a path when the bytes were not embedded
                data, file_path = image.get("bytes"), image.get("path") if not image.get("bytes") else None
            else:
                data, file_path = (image, None) if isinstance(image, bytes) else (None, image)
            yield t, data, file_path, f"{path.name} row {row}"
            row += 1


def _tsv_rows(path: Path) -> Iterable[tuple[str | None, bytes | None, str | None, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        text, where = _columns(path, reader.fieldnames or [])
        for i, row in enumerate(reader):
            yield row.get(text), None, row.get(where), f"{path.name} line {i + 2}"


def _columns(path: Path, names: Sequence[str]) -> tuple[str, str]:
    """(the text column, the image column) of a pairs file with these column names; ValueError naming both kinds."""
    text = next((c for c in TEXT_COLUMNS if c in names), None)
    where = next((c for c in ("image", *PATH_COLUMNS) if c in names), None)
    if text is None or where is None:
        raise ValueError(f"{path}: needs a header with a text column ({' or '.join(TEXT_COLUMNS)}) and an image "
                         f"column (image: bytes or a path; or a path: {', '.join(PATH_COLUMNS)}); it has {list(names)}")
    return text, where


def _collect(rows: Iterable[tuple[str | None, bytes | None, str | None, str]], folder: Path,
             limit: int | None) -> PairSet:
    texts, image_of_text, images, names = [], [], [], []
    index: dict[str, int] = {}
    skipped: collections.Counter[str] = collections.Counter()
    root = folder.resolve()
    for text, data, file_path, name in rows:
        if limit is not None and len(texts) >= limit:
            break
        if not text or not text.strip():
            skipped["empty text"] += 1
            continue
        if data:
            key, reader = hashlib.sha1(data).hexdigest(), _constant(data)
        elif file_path:
            resolved = (root / file_path).resolve()
            if not resolved.is_relative_to(root):
                skipped["image path outside the pairs' folder"] += 1
                log.warning("%s: image path %r is outside %s: skipped", name, file_path, root)
                continue
            if not resolved.is_file():
                skipped["image file missing"] += 1
                continue
            key, reader, name = str(resolved), resolved.read_bytes, str(resolved)
        else:
            skipped["no image"] += 1
            continue
        if key not in index:
            index[key] = len(images)
            images.append(reader)
            names.append(name)
        texts.append(text.strip())
        image_of_text.append(index[key])
    return PairSet(texts, np.asarray(image_of_text, np.int64), images, names, skipped)


def _constant(data: bytes) -> Callable[[], bytes]:
    return lambda: data
