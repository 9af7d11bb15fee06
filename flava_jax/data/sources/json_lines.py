""""WIT with images" JSON lines: base64 image bytes, `wit_features` as a list of dicts or a dict of lists (one row per
language entry, all sharing the image)."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path

from flava_jax.data.sources.rows import BadValue, Record, Skip, entry_rows, invalid_utf8, open_text, wit_features


def read_json_with_images(path: str | os.PathLike) -> Iterator[Record]:
    """Rows of a "WIT with images" JSON-lines file: one row per language entry, each carrying the image bytes."""
    with open_text(path) as lines:
        yield from _json_records(path, lines)


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

