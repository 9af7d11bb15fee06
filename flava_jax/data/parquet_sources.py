"""WiT as Hub parquet copies and img2dataset parquet output; each file's layout is recognised from its schema.

* `theodor1289/wit` (the paper's own carve, docs/reference.md#data): `image` (the HF Image struct of `bytes` and
  `path`), `image_url`, `text` (the caption) and the three context fields; PMD is English. Its `test-*` files are
  the paper's held-out split, so rows carry the split of their file name;
* `wikimedia/wit_base`: `image`, `image_url`, `caption_attribution_description` and `wit_features` (a list of
  per-language structs, or a struct of lists): one row per language entry;
* `facebook/pmd`, subset wit: `image_url`, `text` (the caption), `meta` (a JSON string of the other WiT fields);
  its images are fetched as for the TSVs;
* img2dataset's parquet output (flava_jax/data/img2dataset.py): the image column, `url`, `caption`, `key`,
  `status` and the saved extra columns.

Files are read one row group at a time, so memory stays bounded whatever a file's size.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from flava_jax.data import img2dataset
from flava_jax.data.wit import ROW_FIELDS, BadValue, Record, Skip, SourceError, _features, entry_rows, row_from_fields

_CONTEXT = ("context_page_description", "context_section_description", "caption_alt_text_description")
_SPLIT = re.compile(r"^(train|test|validation)-")  # `datasets`' shard names: {split}-{i}-of-{n}[-{hash}].parquet
_ARROW_ERRORS = (pa.ArrowException, OSError, ValueError)


@dataclasses.dataclass(frozen=True)
class Layout:
    name: str
    required: frozenset[str]
    rows: Callable[[dict[str, Any], str, str | None], Iterator[Record]]  # (row, where, split) -> records
    has_split: bool = False  # its file names carry the paper's train/test split
    reads_all: bool = False  # every column (saved extra columns), else the required ones and WiT's fields


def _image(row: dict[str, Any], where: str) -> bytes | Skip:
    """The bytes of an HF Image struct, or a Skip saying why there are none."""
    image = row.get("image")
    if not isinstance(image, dict) or image.get("bytes") is None:
        return Skip("null image", where, f"image={_short(image)}")
    return image["bytes"]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _one(fields: dict[str, Any], where: str, image: bytes | None, split: str | None = None) -> Iterator[Record]:
    try:
        yield row_from_fields(fields, where, image_bytes=image, split=split)
    except BadValue as e:
        yield Skip("bad value", where, str(e))


def _theodor_rows(row: dict[str, Any], where: str, split: str | None) -> Iterator[Record]:
    image = _image(row, where)
    if isinstance(image, Skip):
        yield image
        return
    fields = {k: row.get(k) for k in ("image_url",) + _CONTEXT}
    yield from _one({**fields, "language": "en", "caption_reference_description": row.get("text")}, where, image,
                    split)


def _wit_base_rows(row: dict[str, Any], where: str, split: str | None) -> Iterator[Record]:
    image = _image(row, where)
    if isinstance(image, Skip):
        yield image
        return
    try:
        entries = _features(row)
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
        yield Skip("bad meta", where, f"{type(e).__name__}: {e}; meta={_short(row.get('meta'))}")
        return
    image = row.get("image")
    inline = image.get("bytes") if isinstance(image, dict) else None  # None for wit: fetched from image_url
    fields = {k: v for k, v in meta.items() if k in ROW_FIELDS}
    # PMD's text is the paper's caption (the reference description, else the attribution, else the alt text)
    yield from _one({**fields, "image_url": row.get("image_url") or meta.get("image_url"),
                     "language": meta.get("language") or "en", "caption_reference_description": row.get("text")},
                    where, inline)


def _img2dataset_rows(row: dict[str, Any], where: str, split: str | None) -> Iterator[Record]:
    image = next((row[c] for c in img2dataset.IMAGE_FORMATS if row.get(c) is not None), None)
    yield img2dataset.sample(row, image, f"{where}:{row.get('key')}")


LAYOUTS = (
    Layout("theodor1289/wit", frozenset({"image", "image_url", "text", *_CONTEXT}), _theodor_rows, has_split=True),
    Layout("facebook/pmd (wit)", frozenset({"image_url", "text", "meta"}), _pmd_rows),
    Layout("wikimedia/wit_base", frozenset({"image", "image_url", "wit_features"}), _wit_base_rows),
    Layout("img2dataset parquet", frozenset({"key", "url", "status"}), _img2dataset_rows, reads_all=True),
)


def layout_of(columns: Iterable[str], path: str | os.PathLike) -> Layout:
    """The first layout whose required columns the file has; SourceError listing what was found otherwise."""
    names = set(columns)
    for layout in LAYOUTS:
        if layout.required <= names:
            return layout
    known = "; ".join(f"{layout.name}: {', '.join(sorted(layout.required))}" for layout in LAYOUTS)
    raise SourceError(f"{path}: no known WiT parquet layout has columns {sorted(names)}. Known layouts (required "
                      f"columns): {known}")


def _split(path: Path, layout: Layout) -> str | None:
    match = _SPLIT.match(path.name) if layout.has_split else None
    return match.group(1) if match else None


def read_parquet(path: str | os.PathLike) -> Iterator[Record]:
    """The records of one parquet file, one row group at a time; an unreadable file or row group is one Skip."""
    path = Path(path)
    try:
        file = pq.ParquetFile(path)
    except _ARROW_ERRORS as e:
        yield Skip("unreadable file", str(path), f"{type(e).__name__}: {e}")
        return
    with file:
        layout = layout_of(file.schema_arrow.names, path)
        split = _split(path, layout)
        columns = [c for c in file.schema_arrow.names
                   if layout.reads_all or c in layout.required or c in ROW_FIELDS or c == "image"]
        start = 0
        for group in range(file.num_row_groups):
            count = file.metadata.row_group(group).num_rows
            try:
                rows = file.read_row_group(group, columns=columns).to_pylist()
            except _ARROW_ERRORS as e:
                yield Skip("unreadable row group", f"{path}#{start}", f"rows {start}-{start + count - 1} lost: "
                           f"{type(e).__name__}: {e}")
                rows = []
            for i, row in enumerate(rows):
                yield from layout.rows(row, f"{path}#{start + i}", split)
            start += count


def split_rows(paths: Iterable[Path]) -> collections.Counter[str]:
    """Rows per split of the parquet files whose layout has the paper's split, from their metadata (no data is
    read); files without a split, or not parquet, count nothing."""
    rows: collections.Counter[str] = collections.Counter()
    for path in paths:
        if path.suffix != ".parquet":
            continue
        try:
            metadata = pq.read_metadata(path)
        except _ARROW_ERRORS:
            continue  # read_parquet reports it
        split = _split(path, layout_of(metadata.schema.to_arrow_schema().names, path))
        if split:
            rows[split] += metadata.num_rows
    return rows
