"""img2dataset output (parquet or webdataset) as a source: WiT fetched with img2dataset, or caption datasets.

img2dataset keeps each sample's metadata (`key`, `url`, `caption`, `status`, `error_message`, sizes) plus the
`--save_additional_columns` (WiT's other fields). Its parquet output is `PARQUET_LAYOUT` (read by parquet_files: a
binary image column named after `--encode_format`); its webdataset output is tar shards of `{key}.jpg`, `{key}.txt`
and `{key}.json`, read here as a stream, with a `{shard}.parquet` beside each that alone lists the samples that
failed. Samples whose status is not "success" are Skips counted by status.
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from flava_jax.data.sources.parquet_files import Layout
from flava_jax.data.sources.rows import ROW_FIELDS, BadValue, Record, Skip, row_from_fields

IMAGE_FORMATS = ("jpg", "png", "webp")  # --encode_format: the image column, or member extension


def sample(meta: dict[str, Any], image: bytes | None, where: str) -> Record:
    """One img2dataset sample as a WitRow: `url` is the image URL, `caption` the reference caption (unless that
    column was saved itself), WiT's other fields from the saved columns."""
    status = meta.get("status")
    if status not in (None, "success"):
        return Skip(f"img2dataset: {status}", where, str(meta.get("error_message") or ""))
    if image is None:
        return Skip("img2dataset: no image", where, f"status {status!r} but no image bytes")
    fields = {k: v for k, v in meta.items() if k in ROW_FIELDS}
    fields["image_url"] = meta.get("url")
    if fields.get("caption_reference_description") is None:
        fields["caption_reference_description"] = meta.get("caption")
    try:
        return row_from_fields(fields, where, image_bytes=image)
    except BadValue as e:
        return Skip("bad value", where, str(e))


def _parquet_rows(row: dict[str, Any], where: str, split: str | None) -> Iterator[Record]:
    image = next((row[c] for c in IMAGE_FORMATS if row.get(c) is not None), None)
    yield sample(row, image, f"{where}:{row.get('key')}")


PARQUET_LAYOUT = Layout("img2dataset parquet", frozenset({"key", "url", "status"}), _parquet_rows, reads_all=True)


def read_webdataset(path: str | os.PathLike) -> Iterator[Record]:
    """A webdataset shard: the failed samples listed by the parquet beside it, then the tar's samples in order."""
    path = Path(path)
    beside = path.with_suffix(".parquet")
    if beside.is_file():
        yield from _failures(beside)
    key: str | None = None
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(path, mode="r|*") as tar:  # a stream: one member in memory at a time
            for member in tar:
                if not member.isfile():
                    continue
                stem, _, extension = member.name.rpartition(".")
                if stem != key and key is not None:
                    yield _tar_sample(path, key, members)
                    members = {}
                key = stem
                members[extension] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError) as e:
        yield Skip("unreadable file", f"{path}:{key}", f"{type(e).__name__}: {e} (the rest of the shard is lost)")
        return
    if key is not None:
        yield _tar_sample(path, key, members)


def _tar_sample(path: Path, key: str, members: dict[str, bytes]) -> Record:
    where = f"{path}:{key}"
    image = next((members[f] for f in IMAGE_FORMATS if f in members), None)
    if image is None or "json" not in members:
        return Skip("webdataset: member missing", where, f"{key} has {sorted(members)}; needs an image and json")
    try:
        meta = json.loads(members["json"])
        if not isinstance(meta, dict):
            raise BadValue(f"a JSON {type(meta).__name__}, not an object")
    except ValueError as e:  # JSON, UTF-8 and BadValue errors
        return Skip("webdataset: bad json", where, f"{type(e).__name__}: {e}")
    if "txt" in members and meta.get("caption") is None:
        meta["caption"] = members["txt"].decode("utf-8", "replace")
    return sample(meta, image, where)


def _failures(path: Path) -> Iterator[Record]:
    """Skips for the samples of a shard's metadata parquet whose status is not success (the tar omits them)."""
    try:
        with pq.ParquetFile(path) as file:
            columns = [c for c in ("key", "status", "error_message") if c in file.schema_arrow.names]
            for group in range(file.num_row_groups):
                for row in file.read_row_group(group, columns=columns).to_pylist():
                    if row.get("status") not in (None, "success"):
                        yield sample(row, None, f"{path}:{row.get('key')}")
    except (pa.ArrowException, OSError, ValueError) as e:
        yield Skip("unreadable file", str(path), f"{type(e).__name__}: {e} (failed samples not counted)")
