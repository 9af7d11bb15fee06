"""WiT's official TSV shards (`wit_v1.*.tsv.gz`): 17 columns and a header, quoted multi-line fields, "true"/"false"
booleans, gzip recognised by its magic bytes (some `.gz` files are plain text); and the Kaggle variant, the same plus
`caption_title_and_reference_description` (18 columns)."""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

from flava_jax.data.sources.rows import (
    KAGGLE_COLUMNS,
    WIT_COLUMNS,
    BadValue,
    Record,
    Skip,
    invalid_utf8,
    open_text,
    row_from_fields,
)


class RawRow(NamedTuple):
    """A TSV row as the csv reader split it, not yet checked or typed (`parsed` does that): what prepare's own
    process reads, leaving the rest of the work per row to its workers."""

    where: str
    header: tuple[str, ...]
    fields: list[str]


def read_tsv(path: str | os.PathLike) -> Iterator[Record]:
    """Rows of an official (17-column) or Kaggle (18-column) WiT TSV shard."""
    return parsed(raw_rows(path))


def raw_rows(path: str | os.PathLike) -> Iterator[RawRow | Skip]:
    """The rows of a TSV shard as split, or Skips for what cannot be split (an unknown header, a csv error, an
    unreadable rest of the file)."""
    csv.field_size_limit(sys.maxsize)
    with open_text(path) as lines:
        reader = csv.reader(lines, delimiter="\t", quotechar='"')
        try:
            header = tuple(next(reader, ()))
            if header not in (WIT_COLUMNS, KAGGLE_COLUMNS):
                yield Skip("unknown TSV header", f"{path}:1", f"columns {list(header)[:20]}")
                return
            yield from _split_rows(path, reader, header)
        except (EOFError, OSError) as e:  # unreadable from here on
            yield Skip("unreadable file", f"{path}:{reader.line_num + 1}", f"{type(e).__name__}: {e}")


def _split_rows(path: str | os.PathLike, reader: Any, header: tuple[str, ...]) -> Iterator[RawRow | Skip]:
    while True:
        where = f"{path}:{reader.line_num + 1}"  # a row's first line; quoted fields may span several
        try:
            yield RawRow(where, header, next(reader))
        except StopIteration:
            return
        except csv.Error as e:  # the reader goes on with the next line
            yield Skip("malformed TSV row", where, f"csv.Error: {e}")


def parsed(rows: Iterable[RawRow | Skip]) -> Iterator[Record]:
    """Split rows checked (UTF-8, the field count) and typed into WitRows, or Skips saying what was wrong."""
    for row in rows:
        if isinstance(row, Skip):
            yield row
            continue
        where, header, fields = row
        invalid = invalid_utf8("\t".join(fields))
        if invalid:
            yield Skip("invalid UTF-8", where, invalid)
        elif len(fields) != len(header):
            yield Skip("malformed TSV row", where, f"{len(fields)} fields, expected {len(header)} (a quote left "
                       "open, or the file cut short)")
        else:
            try:
                yield row_from_fields(dict(zip(header, fields, strict=True)), where)
            except BadValue as e:
                yield Skip("bad value", where, str(e))
