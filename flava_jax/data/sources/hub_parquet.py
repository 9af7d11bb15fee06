"""WiT as Hub parquet copies; each file's layout is recognised from its columns, and parquet_files reads it.

* `theodor1289/wit` (the paper's own carve, docs/reference.md#data): `image` (the HF Image struct of `bytes` and
  `path`), `image_url`, `text` (the caption) and the three context fields; PMD is English. Its `test-*` files are
  the paper's held-out split, so rows carry the split of their file name;
* `wikimedia/wit_base`: `image`, `image_url`, `caption_attribution_description` and `wit_features` (a list of
  per-language structs, or a struct of lists): one row per language entry;
* `facebook/pmd`, subset wit: `image_url`, `text` (the caption), `meta` (a JSON string of the other WiT fields);
  its images are fetched as for the TSVs.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from flava_jax.data.sources.parquet_files import ARROW_ERRORS, Layout, file_split, find_layout, one_row, short
from flava_jax.data.sources.rows import ROW_FIELDS, BadValue, Record, Skip, entry_rows, wit_features

_CONTEXT = ("context_page_description", "context_section_description", "caption_alt_text_description")


def _image(row: dict[str, Any], where: str) -> bytes | Skip:
    """The bytes of an HF Image struct, or a Skip saying why there are none."""
    image = row.get("image")
    if not isinstance(image, dict) or image.get("bytes") is None:
        return Skip("null image", where, f"image={short(image)}")
    return image["bytes"]


def _theodor_rows(row: dict[str, Any], where: str, split: str | None) -> Iterator[Record]:
    image = _image(row, where)
    if isinstance(image, Skip):
        yield image
        return
    fields = {k: row.get(k) for k in ("image_url",) + _CONTEXT}
    yield from one_row({**fields, "language": "en", "caption_reference_description": row.get("text")}, where, image,
                       split)


def _wit_base_rows(row: dict[str, Any], where: str, split: str | None) -> Iterator[Record]:
    image = _image(row, where)
    if isinstance(image, Skip):
        yield image
        return
    try:
        entries = wit_features(row)
    except BadValue as e:
        yield Skip("bad wit_features", where, str(e))
        return
    if not entries:
        yield Skip("no wit_features", where)
    yield from entry_rows(row, entries, where, image)


def _pmd_rows(row: dict[str, Any], where: str, split: str | None) -> Iterator[Record]:
    try:
        meta = json.loads(row["meta"])
        if not isinstance(meta, dict):
            raise BadValue(f"a JSON {type(meta).__name__}, not an object")
    except (TypeError, ValueError) as e:  # ValueError: JSON and BadValue errors
        yield Skip("bad meta", where, f"{type(e).__name__}: {e}; meta={short(row.get('meta'))}")
        return
    image = row.get("image")
    inline = image.get("bytes") if isinstance(image, dict) else None  # None for wit: fetched from image_url
    fields = {k: v for k, v in meta.items() if k in ROW_FIELDS}
    # PMD's text is the paper's caption (the reference description, else the attribution, else the alt text)
    yield from one_row({**fields, "image_url": row.get("image_url") or meta.get("image_url"),
                        "language": meta.get("language") or "en", "caption_reference_description": row.get("text")},
                       where, inline)


LAYOUTS = (
    Layout("theodor1289/wit", frozenset({"image", "image_url", "text", *_CONTEXT}), _theodor_rows, has_split=True),
    Layout("facebook/pmd (wit)", frozenset({"image_url", "text", "meta"}), _pmd_rows),
    Layout("wikimedia/wit_base", frozenset({"image", "image_url", "wit_features"}), _wit_base_rows),
)


def split_rows(paths: Iterable[Path]) -> collections.Counter[str]:
    """Rows per split of the parquet files whose layout has the paper's split, from their metadata (no data is
    read); files without a split, or not parquet, count nothing."""
    rows: collections.Counter[str] = collections.Counter()
    for path in paths:
        if path.suffix != ".parquet":
            continue
        try:
            metadata = pq.read_metadata(path)
        except ARROW_ERRORS:
            continue  # read_parquet reports it
        layout = find_layout(metadata.schema.to_arrow_schema().names, LAYOUTS)
        split = file_split(path, layout) if layout is not None else None
        if split:
            rows[split] += metadata.num_rows
    return rows
