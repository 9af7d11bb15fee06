""""WIT with images" JSON lines: base64 image bytes, `wit_features` as a list of dicts or a dict of lists (one row per
language entry, all sharing the image).

A plain (not gzip) file is read in byte ranges by prepare's workers (`byte_ranges`): a range holds the lines that
start inside it. Rows of a range that does not start the file are named by the byte offset of their line
(`file@1234`), since their line number is not known without reading all that comes before."""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from flava_jax.data.sources.rows import (
    BadValue,
    Record,
    Skip,
    entry_rows,
    invalid_utf8,
    is_gzip,
    open_text,
    wit_features,
)

_SAMPLE_BYTES = 1 << 20  # the head whose mean line length sizes the byte ranges
_ONE_SLICE_WARNING_BYTES = 1 << 30
log = logging.getLogger("flava_jax.data")


def read_json_with_images(path: str | os.PathLike, start: int = 0, stop: int | None = None) -> Iterator[Record]:
    """Rows of a "WIT with images" JSON-lines file (or of the lines starting in its bytes [start, stop)): one row per
    language entry, each carrying the image bytes."""
    if start == 0 and stop is None:
        with open_text(path) as lines:
            yield from _json_records(path, lines)
        return
    with open(path, "rb") as f:
        if start > 0:
            f.seek(start - 1)
            if f.read(1) != b"\n":
                f.readline()  # the line under way at `start` belongs to the range before
        offset, number = f.tell(), 0
        while stop is None or offset < stop:
            line = f.readline()
            number += 1
            if not line:
                break
            if line.strip():
                yield from _json_line(f"{path}:{number}" if start == 0 else f"{path}@{offset}",
                                      line.decode("utf-8", "surrogateescape"))
            offset += len(line)


def byte_ranges(path: str | os.PathLike, lines_per_range: int) -> list[tuple[int, int | None]]:
    """[start, stop) byte ranges of about `lines_per_range` lines each (by the mean line length of the file's head),
    the last open-ended; one range, the whole file, for a gzip file (it cannot be entered in the middle)."""
    if is_gzip(path):
        if os.path.getsize(path) > _ONE_SLICE_WARNING_BYTES:
            log.warning("%s is gzip, so one worker reads all of it; gunzip it and prepare splits it among them", path)
        return [(0, None)]
    with open(path, "rb") as f:
        head = f.read(_SAMPLE_BYTES)
    lines = head.count(b"\n") if len(head) == _SAMPLE_BYTES else head.count(b"\n") + 1
    step = max(1, len(head) * lines_per_range // max(1, lines))
    size = os.path.getsize(path)
    starts = list(range(0, max(size, 1), step))
    return [(start, starts[i + 1] if i + 1 < len(starts) else None) for i, start in enumerate(starts)]


def _json_records(path: str | os.PathLike, lines: Iterator[str]) -> Iterator[Record]:
    number = 0
    try:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                yield from _json_line(f"{path}:{number}", line)
    except (EOFError, OSError) as e:  # unreadable from here on
        yield Skip("unreadable file", f"{path}:{number + 1}", f"{type(e).__name__}: {e}")


def _json_line(where: str, line: str) -> Iterator[Record]:
    """The rows of one JSON line, or Skips."""
    invalid = invalid_utf8(line)
    if invalid:
        yield Skip("invalid UTF-8", where, invalid)
        return
    try:
        record = json.loads(line)
        if not isinstance(record, dict):
            raise BadValue(f"a JSON {type(record).__name__}, not an object")
        image = base64.b64decode(record["b64_bytes"], validate=True) if record.get("b64_bytes") else None
        entries = wit_features(record)
    except (KeyError, TypeError, ValueError) as e:  # ValueError: JSON, base64 and BadValue errors
        yield Skip("bad JSON record", where, f"{type(e).__name__}: {e}")
        return
    yield from entry_rows(record, entries, where, image)


def looks_like_json(path: Path) -> bool:
    try:
        with open_text(path) as f:
            for line in f:
                if line.strip():
                    return line.lstrip().startswith("{")
    except (UnicodeDecodeError, EOFError, OSError):
        pass  # read_tsv reports it
    return False

