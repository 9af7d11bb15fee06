"""Readers for the real WiT sources, yielding `WitRow`s, or `Skip`s that say what was wrong and where.

* official TSV shards (`wit_v1.*.tsv.gz`): 17 columns and a header, quoted multi-line fields, "true"/"false"
  booleans; gzip is recognised by its magic bytes, since some `.gz` files are plain text;
* the Kaggle variant: the same plus `caption_title_and_reference_description` (18 columns);
* "WIT with images" JSON lines: base64 image bytes, `wit_features` as a list of dicts or a dict of lists (one row
  per language entry, all sharing the image);
* TFDS `wit` through `tfds.data_source`, when the user has prepared it (its booleans are unusable: its builder
  parses them with `bool(str)`, so "false" became True; they are dropped);
* Hub parquet copies (flava_jax/data/parquet_sources.py) and img2dataset output (flava_jax/data/img2dataset.py);
* COCO captions (flava_jax/data/coco.py): one JSON object, recognised by its content before the JSON-lines sniff.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import csv
import dataclasses
import glob
import gzip
import json
import logging
import os
import re
import sys
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

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
_SURROGATE = re.compile("[\ud800-\udfff]")
log = logging.getLogger("flava_jax.data")


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
    split: str | None = None  # the source's own split ("train", "test"), for sources that have the paper's
    # texts beyond WiT's fields (a caption dataset's other captions): text-stream texts that make no pair
    extra_texts: tuple[str, ...] = ()
    image_bytes: bytes | None = dataclasses.field(default=None, repr=False)  # when the source carries the image
    where: str = ""  # "file:line" (or "tfds:...#index"), for reports

    @property
    def key(self) -> str:
        """Identity of the example: the same image on the same page."""
        return f"{self.image_url}\t{self.page_url}"


ROW_FIELDS = frozenset(f.name for f in dataclasses.fields(WitRow)) - {"split", "extra_texts", "image_bytes",
                                                                       "where"}  # WiT's own


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


def row_from_fields(fields: dict[str, Any], where: str, image_bytes: bytes | None = None,
                    split: str | None = None) -> WitRow:
    """A WitRow from raw column values (strings, bytes or typed); raises BadValue on an unparsable value."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(WitRow):
        if f.name not in ROW_FIELDS:
            continue
        raw = fields.get(f.name)
        if f.name in _INT_COLUMNS:
            values[f.name] = _int(raw, f.name)
        elif f.name in _BOOL_COLUMNS:
            values[f.name] = _bool(raw, f.name)
        else:
            values[f.name] = _text(raw)
    return WitRow(**values, split=split, image_bytes=image_bytes, where=where)


@contextlib.contextmanager
def open_text(path: str | os.PathLike) -> Iterator[Iterator[str]]:
    """The lines of a file, each decoded from UTF-8 on its own (so a bad byte costs only its line): invalid bytes
    become lone surrogates (`_invalid_utf8` finds them) instead of an error. Gzip is recognised by its magic bytes,
    whatever the name says; corrupt gzip data raises OSError, a truncated file EOFError."""
    with open(path, "rb") as f:
        magic = f.read(2)
    with gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb") as binary:
        yield _decoded_lines(binary)


def _decoded_lines(binary: BinaryIO) -> Iterator[str]:
    try:
        for line in binary:
            yield line.decode("utf-8", "surrogateescape")
    except zlib.error as e:  # corrupt deflate data: one error type for callers, as gzip's other faults are OSErrors
        raise OSError(f"corrupt gzip data: {e}") from e


def _invalid_utf8(text: str) -> str | None:
    """None, or the bytes around the first invalid UTF-8 in `text` (a lone surrogate: a byte open_text could not
    decode, or a JSON escape of half a surrogate pair)."""
    if text.isascii():  # O(1) in CPython; most JSON lines are ASCII (escaped), and the regex costs 0.7 ms on 340 KB
        return None
    match = _SURROGATE.search(text)
    if match is None:
        return None
    context = text[max(0, match.start() - 20):match.end() + 20]
    try:
        return f"invalid UTF-8 in {context.encode('utf-8', 'surrogateescape')!r}"
    except UnicodeEncodeError:
        return f"a lone surrogate in {ascii(context)}"


def read_tsv(path: str | os.PathLike) -> Iterator[Record]:
    """Rows of an official (17-column) or Kaggle (18-column) WiT TSV shard."""
    csv.field_size_limit(sys.maxsize)
    with open_text(path) as lines:
        yield from _tsv_records(path, csv.reader(lines, delimiter="\t", quotechar='"'))


def _tsv_records(path: str | os.PathLike, reader: Any) -> Iterator[Record]:
    try:
        header = tuple(next(reader, ()))
        if header not in (WIT_COLUMNS, KAGGLE_COLUMNS):
            yield Skip("unknown TSV header", f"{path}:1", f"columns {list(header)[:20]}")
            return
        yield from _tsv_rows(path, reader, header)
    except (EOFError, OSError) as e:  # unreadable from here on
        yield Skip("unreadable file", f"{path}:{reader.line_num + 1}", f"{type(e).__name__}: {e}")


def _tsv_rows(path: str | os.PathLike, reader: Any, header: tuple[str, ...]) -> Iterator[Record]:
    while True:
        where = f"{path}:{reader.line_num + 1}"  # a row's first line; quoted fields may span several
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as e:  # the reader goes on with the next line
            yield Skip("malformed TSV row", where, f"csv.Error: {e}")
            continue
        invalid = _invalid_utf8("\t".join(fields))
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


def _warn_if_no_rows(path: str | os.PathLike, records: Iterator[Record]) -> Iterator[Record]:
    """`records`, with a warning naming `path` when none of them is a row."""
    rows = skips = 0
    for record in records:
        rows += isinstance(record, WitRow)
        skips += isinstance(record, Skip)
        yield record
    if not rows:
        log.warning("WiT source file %s yielded no rows (%d records skipped)", path, skips)


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
    invalid = _invalid_utf8(line)
    if invalid:
        yield Skip("invalid UTF-8", where, invalid)
        return
    try:
        record = json.loads(line)
        if not isinstance(record, dict):
            raise BadValue(f"a JSON {type(record).__name__}, not an object")
        image = base64.b64decode(record["b64_bytes"], validate=True) if record.get("b64_bytes") else None
        entries = _features(record)
    except (KeyError, TypeError, ValueError) as e:  # ValueError: JSON, base64 and BadValue errors
        yield Skip("bad JSON record", where, f"{type(e).__name__}: {e}")
        return
    yield from entry_rows(record, entries, where, image)


def entry_rows(record: dict[str, Any], entries: list[dict[str, Any]], where: str,
               image: bytes | None) -> Iterator[Record]:
    """One row per `wit_features` entry of a "WIT with images" record (a JSON line, or a wikimedia/wit_base parquet
    row), each with the record's shared fields and image; a bad entry is a Skip."""
    shared = {k: record.get(k) for k in ("image_url", "mime_type", "original_height", "original_width",
                                         "caption_attribution_description")}
    for i, entry in enumerate(entries):
        fields = {**shared, **{k: v for k, v in entry.items() if v is not None}}
        invalid = _invalid_utf8("\t".join(v for v in fields.values() if isinstance(v, str)))  # escaped surrogates
        try:
            if invalid:
                raise BadValue(invalid)
            yield row_from_fields(fields, f"{where}#{i}", image_bytes=image)
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


class SourceError(ValueError):
    """A source that cannot be read as WiT at all; the message says what was found and what to do."""


_SOURCE_SUFFIXES = (".tsv", ".json", ".parquet", ".tar")


def source_files(spec: str) -> list[Path]:
    """The files a source spec names, sorted: a file, a glob pattern, or a directory (its WiT files below it:
    *.tsv*, *.json*, *.parquet, *.tar, outside hidden folders such as `hf download`'s .cache). img2dataset's
    `{shard}.parquet` beside a `{shard}.tar` and its `{shard}_stats.json` are metadata, not sources."""
    path = Path(spec)
    if path.is_file():
        return [path]
    if path.is_dir():
        found = [p for p in path.rglob("*") if p.is_file() and not any(
            part.startswith(".") for part in p.relative_to(path).parts) and _is_source_name(p.name)]
        if not found:
            raise SourceError(f"{describe_source(spec)}, none a WiT file (*.tsv*, *.json*, *.parquet, *.tar)")
    else:
        found = [Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file()]
        if not found:
            raise SourceError(f"WiT source {spec!r} matches no file")
    return sorted(p for p in found if not _img2dataset_metadata(p))


def _is_source_name(name: str) -> bool:
    return any(s in name for s in _SOURCE_SUFFIXES[:2]) or name.endswith(_SOURCE_SUFFIXES[2:])


def _img2dataset_metadata(path: Path) -> bool:
    shard = path.name.removesuffix("_stats.json")
    if shard != path.name:
        return any((path.parent / f"{shard}{s}").is_file() for s in (".tar", ".parquet"))
    return path.suffix == ".parquet" and path.with_suffix(".tar").is_file()


def describe_source(spec: str) -> str:
    """What a source spec holds, for errors: e.g. "D holds 3 files (.parquet x2, .md x1)"."""
    path = Path(spec)
    if path.is_file():
        return f"{spec} (a file)"
    if not path.is_dir():
        return f"{spec} (a pattern matching {len(glob.glob(spec, recursive=True))} paths)"
    kinds = collections.Counter("".join(p.suffixes[-1:]) or p.name for p in path.rglob("*") if p.is_file())
    listing = ", ".join(f"{kind} x{count}" for kind, count in kinds.most_common(8))
    count = sum(kinds.values())
    return f"{spec} holds {count} file{'' if count == 1 else 's'} ({listing or 'none'})"


def read_file(path: Path) -> Iterator[Record]:
    """The records of one source file, read by its kind: parquet, img2dataset tar shard, COCO captions, JSON lines
    or TSV; a file that yields no row is named in the log."""
    from flava_jax.data import coco, img2dataset, parquet_sources  # they build on this module's records

    if path.suffix == ".parquet":
        records = parquet_sources.read_parquet(path)
    elif path.suffix == ".tar":
        records = img2dataset.read_webdataset(path)
    elif coco.is_coco(path):  # first: COCO's one line is the whole file, which the JSON-lines sniff would read
        records = coco.read_coco(path)
    else:
        records = read_json_with_images(path) if _looks_like_json(path) else read_tsv(path)
    return _warn_if_no_rows(path, records)


def read_source(spec: str) -> Iterator[Record]:
    """Every record of a source spec, in a fixed order.

    `tfds:NAME[/SPLIT][@DATA_DIR]` reads a prepared TFDS dataset (default wit/train); anything else names files,
    each read by `read_file`.
    """
    if spec.startswith("tfds:"):
        import tensorflow_datasets as tfds

        name, _, data_dir = spec[len("tfds:"):].partition("@")
        name, _, split = name.partition("/")
        source = tfds.data_source(name or "wit", split=split or "train", data_dir=data_dir or None)
        yield from read_tfds(source, spec)
        return
    for path in source_files(spec):
        yield from read_file(path)


def read_sources(specs: Iterable[str]) -> Iterator[Record]:
    """`read_source` over several specs, in order."""
    for spec in specs:
        yield from read_source(spec)
