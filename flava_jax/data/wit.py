"""Readers for the real WiT sources, yielding `WitRow`s, or `Skip`s that say what was wrong and where.

* official TSV shards (`wit_v1.*.tsv.gz`): 17 columns and a header, quoted multi-line fields, "true"/"false"
  booleans; gzip is recognised by its magic bytes, since some `.gz` files are plain text;
* the Kaggle variant: the same plus `caption_title_and_reference_description` (18 columns);
* "WIT with images" JSON lines: base64 image bytes, `wit_features` as a list of dicts or a dict of lists (one row
  per language entry, all sharing the image);
* TFDS `wit` through `tfds.data_source`, when the user has prepared it (its booleans are unusable: its builder
  parses them with `bool(str)`, so "false" became True; they are dropped).
"""

from __future__ import annotations

import base64
import binascii
import csv
import dataclasses
import glob
import gzip
import io
import json
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

WIT_COLUMNS = (
    "language", "page_url", "image_url", "page_title", "section_title", "hierarchical_section_title",
    "caption_reference_description", "caption_attribution_description", "caption_alt_text_description",
    "mime_type", "original_height", "original_width", "is_main_image", "attribution_passes_lang_id",
    "page_changed_recently", "context_page_description", "context_section_description",
)
KAGGLE_COLUMNS = WIT_COLUMNS + ("caption_title_and_reference_description",)
_INT_COLUMNS = ("original_height", "original_width")
_BOOL_COLUMNS = ("is_main_image", "attribution_passes_lang_id", "page_changed_recently")
_BOOLS = {"true": True, "false": False}


@dataclasses.dataclass(frozen=True)
class WitRow:
    """One WiT example (an image on a page, in one language). Missing text fields are None, never ""."""

    language: str | None
    page_url: str | None
    image_url: str | None
    page_title: str | None = None
    section_title: str | None = None
    hierarchical_section_title: str | None = None
    caption_reference_description: str | None = None
    caption_attribution_description: str | None = None
    caption_alt_text_description: str | None = None
    mime_type: str | None = None
    original_height: int | None = None
    original_width: int | None = None
    is_main_image: bool | None = None
    attribution_passes_lang_id: bool | None = None
    page_changed_recently: bool | None = None
    context_page_description: str | None = None
    context_section_description: str | None = None
    caption_title_and_reference_description: str | None = None
    image_bytes: bytes | None = dataclasses.field(default=None, repr=False)  # when the source carries the image
    where: str = ""  # "file:line" (or "tfds:...#index"), for reports

    @property
    def key(self) -> str:
        """Identity of the example: the same image on the same page."""
        return f"{self.image_url}\t{self.page_url}"


@dataclasses.dataclass(frozen=True)
class Skip:
    """A record that could not be read, with the reason (counted in the manifest) and the details."""

    reason: str
    where: str
    detail: str = ""


Record = WitRow | Skip


class BadValue(ValueError):
    pass


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    value = str(value)
    return value if value.strip() else None


def _int(value: Any, column: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError) as e:
        raise BadValue(f"{column}={value!r} is not an integer") from e


def _bool(value: Any, column: str) -> bool | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return value
    parsed = _BOOLS.get(str(value).strip().lower())
    if parsed is None:
        raise BadValue(f"{column}={value!r} is not true/false")
    return parsed


def row_from_fields(fields: dict[str, Any], where: str, image_bytes: bytes | None = None) -> WitRow:
    """A WitRow from raw column values (strings, bytes or typed); raises BadValue on an unparsable value."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(WitRow):
        if f.name in ("image_bytes", "where"):
            continue
        raw = fields.get(f.name)
        if f.name in _INT_COLUMNS:
            values[f.name] = _int(raw, f.name)
        elif f.name in _BOOL_COLUMNS:
            values[f.name] = _bool(raw, f.name)
        else:
            values[f.name] = _text(raw)
    return WitRow(**values, image_bytes=image_bytes, where=where)


def open_text(path: str | os.PathLike) -> io.TextIOBase:
    """Open as UTF-8 text, gunzipping when the file starts with gzip's magic bytes (whatever its name says)."""
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def read_tsv(path: str | os.PathLike) -> Iterator[Record]:
    """Rows of an official (17-column) or Kaggle (18-column) WiT TSV shard."""
    csv.field_size_limit(sys.maxsize)
    with open_text(path) as f:
        reader = csv.reader(f, delimiter="\t", quotechar='"')
        line = 0
        try:
            header = tuple(next(reader, ()))
            if header not in (WIT_COLUMNS, KAGGLE_COLUMNS):
                yield Skip("unknown TSV header", f"{path}:1", f"columns {list(header)[:20]}")
                return
            line = reader.line_num
            for fields in reader:
                where = f"{path}:{line + 1}"
                line = reader.line_num
                if len(fields) != len(header):
                    yield Skip("malformed TSV row", where, f"{len(fields)} fields, expected {len(header)} (a quote "
                               "left open, or the file cut short)")
                    continue
                try:
                    yield row_from_fields(dict(zip(header, fields, strict=True)), where)
                except BadValue as e:
                    yield Skip("bad value", where, str(e))
        except (csv.Error, UnicodeDecodeError, EOFError, OSError) as e:  # unreadable from here on
            yield Skip("unreadable file", f"{path}:{line + 1}", f"{type(e).__name__}: {e}")


def _features(record: dict[str, Any]) -> list[dict[str, Any]]:
    """`wit_features` as a list of dicts, whether stored as that or as a dict of equal-length lists."""
    features = record.get("wit_features") or []
    if isinstance(features, dict):
        lengths = {len(v) for v in features.values()}
        if len(lengths) > 1:
            raise BadValue(f"wit_features lists have different lengths {sorted(lengths)}")
        count = lengths.pop() if lengths else 0
        return [{k: v[i] for k, v in features.items()} for i in range(count)]
    if not isinstance(features, list):
        raise BadValue(f"wit_features is a {type(features).__name__}")
    return features


def read_json_with_images(path: str | os.PathLike) -> Iterator[Record]:
    """Rows of a "WIT with images" JSON-lines file: one row per language entry, each carrying the image bytes."""
    with open_text(path) as f:
        try:
            yield from _json_records(path, f)
        except (UnicodeDecodeError, EOFError, OSError) as e:
            yield Skip("unreadable file", str(path), f"{type(e).__name__}: {e}")


def _json_records(path: str | os.PathLike, f: io.TextIOBase) -> Iterator[Record]:
    for number, line in enumerate(f, start=1):
        where = f"{path}:{number}"
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise BadValue(f"a JSON {type(record).__name__}, not an object")
            image = base64.b64decode(record["b64_bytes"], validate=True) if record.get("b64_bytes") else None
            entries = _features(record)
        except (json.JSONDecodeError, KeyError, binascii.Error, BadValue) as e:
            yield Skip("bad JSON record", where, f"{type(e).__name__}: {e}")
            continue
        shared = {k: record.get(k) for k in ("image_url", "mime_type", "original_height", "original_width",
                                             "caption_attribution_description")}
        for i, entry in enumerate(entries):
            try:
                yield row_from_fields({**shared, **{k: v for k, v in entry.items() if v is not None}},
                                      f"{where}#{i}", image_bytes=image)
            except BadValue as e:
                yield Skip("bad value", f"{where}#{i}", str(e))


def read_tfds(source: Any, name: str = "tfds") -> Iterator[Record]:
    """Rows of a TFDS `wit` data source (anything indexable whose items are TFDS feature dicts)."""
    for index in range(len(source)):
        item = dict(source[index])
        for column in _BOOL_COLUMNS:
            item.pop(column, None)  # unusable in TFDS's build, see the module docstring
        try:
            yield row_from_fields(item, f"{name}#{index}")
        except BadValue as e:
            yield Skip("bad value", f"{name}#{index}", str(e))


def _looks_like_json(path: Path) -> bool:
    try:
        with open_text(path) as f:
            for line in f:
                if line.strip():
                    return line.lstrip().startswith("{")
    except (UnicodeDecodeError, EOFError, OSError):
        pass  # read_tsv reports it
    return False


def source_files(spec: str) -> list[Path]:
    """The files a source spec names: a file, a glob pattern, or a directory (its *.tsv* and *.json* files below
    it), sorted."""
    path = Path(spec)
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and (".tsv" in p.name or ".json" in p.name))
    if path.is_file():
        return [path]
    matches = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
    if not matches:
        raise FileNotFoundError(f"WiT source {spec!r} matches no file")
    return matches


def read_source(spec: str) -> Iterator[Record]:
    """Every record of a source spec, in a fixed order.

    `tfds:NAME[/SPLIT][@DATA_DIR]` reads a prepared TFDS dataset (default wit/train); anything else names files,
    each read as JSON lines if its first line is a JSON object, else as a WiT TSV.
    """
    if spec.startswith("tfds:"):
        import tensorflow_datasets as tfds

        name, _, data_dir = spec[len("tfds:"):].partition("@")
        name, _, split = name.partition("/")
        source = tfds.data_source(name or "wit", split=split or "train", data_dir=data_dir or None)
        yield from read_tfds(source, spec)
        return
    for path in source_files(spec):
        yield from (read_json_with_images(path) if _looks_like_json(path) else read_tsv(path))


def read_sources(specs: Iterable[str]) -> Iterator[Record]:
    """`read_source` over several specs, in order."""
    for spec in specs:
        yield from read_source(spec)
