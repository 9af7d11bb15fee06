"""The record layout of the prepared streams, one binary record per example in ArrayRecord (group_size:1).

    int64 row id | uint32 text byte length | UTF-8 text | image bytes, JPEG or PNG (the rest)

Text-only records have no image bytes, image-only records an empty text; the row id (the example's train row)
lets a pipeline tell the texts of one image apart from other images' texts.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

STREAMS = ("text", "image", "pair")
_HEADER = struct.Struct("<qI")


class Example(NamedTuple):
    row: int
    text: str
    image: bytes


def encode(row: int, text: str = "", image: bytes = b"") -> bytes:
    data = text.encode("utf-8")
    return _HEADER.pack(row, len(data)) + data + image


def decode(record: bytes) -> Example:
    row, length = _HEADER.unpack_from(record)
    start = _HEADER.size
    return Example(row, record[start:start + length].decode("utf-8"), bytes(record[start + length:]))


def decode_text(record: bytes) -> str:
    """Only the text: skips copying the image bytes."""
    _, length = _HEADER.unpack_from(record)
    return record[_HEADER.size:_HEADER.size + length].decode("utf-8")
