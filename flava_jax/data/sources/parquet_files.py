"""Parquet sources of any layout: a file's layout is recognised from its columns, and the file read one row group at a
time, so memory stays bounded whatever its size. The layouts themselves live with their formats (hub_parquet,
img2dataset)."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from flava_jax.data.sources.rows import ROW_FIELDS, BadValue, Record, Skip, SourceError, row_from_fields

ARROW_ERRORS = (pa.ArrowException, OSError, ValueError)
_SPLIT = re.compile(r"^(train|test|validation)-")  # `datasets`' shard names: {split}-{i}-of-{n}[-{hash}].parquet


@dataclasses.dataclass(frozen=True)
class Layout:
    name: str
    required: frozenset[str]
    rows: Callable[[dict[str, Any], str, str | None], Iterator[Record]]  # (row, where, split) -> records
    has_split: bool = False  # its file names carry the paper's train/test split
    reads_all: bool = False  # every column (saved extra columns), else the required ones and WiT's fields


def find_layout(columns: Iterable[str], layouts: Sequence[Layout]) -> Layout | None:
    """The first of `layouts` whose required columns are all in `columns`."""
    names = set(columns)
    return next((layout for layout in layouts if layout.required <= names), None)


def layout_of(columns: Iterable[str], path: str | os.PathLike, layouts: Sequence[Layout]) -> Layout:
    """`find_layout`, or a SourceError listing what was found and what each layout needs."""
    columns = list(columns)
    layout = find_layout(columns, layouts)
    if layout is None:
        known = "; ".join(f"{layout.name}: {', '.join(sorted(layout.required))}" for layout in layouts)
        raise SourceError(f"{path}: no known WiT parquet layout has columns {sorted(columns)}. Known layouts "
                          f"(required columns): {known}")
    return layout


def file_split(path: Path, layout: Layout) -> str | None:
    """The split a file's name gives (`train-00000-of-00042.parquet`), for layouts whose names carry the paper's."""
    match = _SPLIT.match(path.name) if layout.has_split else None
    return match.group(1) if match else None


def one_row(fields: dict[str, Any], where: str, image: bytes | None, split: str | None = None) -> Iterator[Record]:
    """A row from a layout's fields, or the Skip of its bad value."""
    try:
        yield row_from_fields(fields, where, image_bytes=image, split=split)
    except BadValue as e:
        yield Skip("bad value", where, str(e))


def short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def read_parquet(path: str | os.PathLike, layouts: Sequence[Layout], start: int = 0,
                 stop: int | None = None) -> Iterator[Record]:
    """The records of one parquet file (of its row groups [start, stop)), one row group at a time; an unreadable
    file or row group is one Skip."""
    path = Path(path)
    try:
        file = pq.ParquetFile(path)
    except ARROW_ERRORS as e:
        if start == 0:  # one Skip for the file, not one per range
            yield Skip("unreadable file", str(path), f"{type(e).__name__}: {e}")
        return
    with file:
        layout = layout_of(file.schema_arrow.names, path, layouts)
        split = file_split(path, layout)
        columns = [c for c in file.schema_arrow.names
                   if layout.reads_all or c in layout.required or c in ROW_FIELDS or c == "image"]
        first = sum(file.metadata.row_group(group).num_rows for group in range(start))
        for group in range(start, file.num_row_groups if stop is None else stop):
            count = file.metadata.row_group(group).num_rows
            try:
                rows = file.read_row_group(group, columns=columns).to_pylist()
            except ARROW_ERRORS as e:
                yield Skip("unreadable row group", f"{path}#{first}", f"rows {first}-{first + count - 1} lost: "
                           f"{type(e).__name__}: {e}")
                rows = []
            for i, row in enumerate(rows):
                yield from layout.rows(row, f"{path}#{first + i}", split)
            first += count


def row_group_ranges(path: str | os.PathLike, rows_per_range: int) -> list[tuple[int, int | None]]:
    """[start, stop) ranges of whole row groups, each of at least `rows_per_range` rows (the last may hold fewer),
    from the file's metadata; one open range when the metadata cannot be read (read_parquet reports it)."""
    try:
        metadata = pq.read_metadata(path)
    except ARROW_ERRORS:
        return [(0, None)]
    ranges, start, rows = [], 0, 0
    for group in range(metadata.num_row_groups):
        rows += metadata.row_group(group).num_rows
        if rows >= rows_per_range:
            ranges.append((start, group + 1))
            start, rows = group + 1, 0
    if start < metadata.num_row_groups or not ranges:
        ranges.append((start, metadata.num_row_groups))
    return ranges
