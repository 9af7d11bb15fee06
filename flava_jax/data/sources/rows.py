"""What every source reader yields: `WitRow`s (WiT's fields, plus an image's bytes where the source carries them),
or `Skip`s that say what was wrong and where; and the parsing every reader shares (typed values, UTF-8 checks,
gzip-or-plain lines, the "WIT with images" per-language entries)."""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import os
import re
import zlib
from collections.abc import Iterator
from typing import Any, BinaryIO

WIT_COLUMNS = (
    "language", "page_url", "image_url", "page_title", "section_title", "hierarchical_section_title",
    "caption_reference_description", "caption_attribution_description", "caption_alt_text_description",
    "mime_type", "original_height", "original_width", "is_main_image", "attribution_passes_lang_id",
    "page_changed_recently", "context_page_description", "context_section_description",
)


KAGGLE_COLUMNS = WIT_COLUMNS + ("caption_title_and_reference_description",)


_INT_COLUMNS = ("original_height", "original_width")


BOOL_COLUMNS = ("is_main_image", "attribution_passes_lang_id", "page_changed_recently")


_BOOLS = {"true": True, "false": False}


_SURROGATE = re.compile("[\ud800-\udfff]")



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


class SourceError(ValueError):
    """A source that cannot be read as WiT at all; the message says what was found and what to do."""


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
        elif f.name in BOOL_COLUMNS:
            values[f.name] = _bool(raw, f.name)
        else:
            values[f.name] = _text(raw)
    return WitRow(**values, split=split, image_bytes=image_bytes, where=where)


@contextlib.contextmanager
def open_text(path: str | os.PathLike) -> Iterator[Iterator[str]]:
    """The lines of a file, each decoded from UTF-8 on its own (so a bad byte costs only its line): invalid bytes
    become lone surrogates (`invalid_utf8` finds them) instead of an error. Gzip is recognised by its magic bytes,
    whatever the name says; corrupt gzip data raises OSError, a truncated file EOFError."""
    with gzip.open(path, "rb") if is_gzip(path) else open(path, "rb") as binary:
        yield _decoded_lines(binary)


def is_gzip(path: str | os.PathLike) -> bool:
    """Whether the file is gzip, by its magic bytes (whatever its name says)."""
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _decoded_lines(binary: BinaryIO) -> Iterator[str]:
    try:
        for line in binary:
            yield line.decode("utf-8", "surrogateescape")
    except zlib.error as e:  # corrupt deflate data: one error type for callers, as gzip's other faults are OSErrors
        raise OSError(f"corrupt gzip data: {e}") from e


def invalid_utf8(text: str) -> str | None:
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


def wit_features(record: dict[str, Any]) -> list[dict[str, Any]]:
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


def entry_rows(record: dict[str, Any], entries: list[dict[str, Any]], where: str,
               image: bytes | None) -> Iterator[Record]:
    """One row per `wit_features` entry of a "WIT with images" record (a JSON line, or a wikimedia/wit_base parquet
    row), each with the record's shared fields and image; a bad entry is a Skip."""
    shared = {k: record.get(k) for k in ("image_url", "mime_type", "original_height", "original_width",
                                         "caption_attribution_description")}
    for i, entry in enumerate(entries):
        fields = {**shared, **{k: v for k, v in entry.items() if v is not None}}
        invalid = invalid_utf8("\t".join(v for v in fields.values() if isinstance(v, str)))  # escaped surrogates
        try:
            if invalid:
                raise BadValue(invalid)
            yield row_from_fields(fields, f"{where}#{i}", image_bytes=image)
        except BadValue as e:
            yield Skip("bad value", f"{where}#{i}", str(e))

