"""Which reader reads a source: a spec names files (a file, a glob, a directory) or a TFDS dataset, and each file is
read by its kind, whole or in slices. The readers (one module per format, beside this one) share only `rows` and
`parquet_files`; a new format is one new module, recognised in `kind_of`, read in `read_slice` and cut in
`plan_slices`."""

from __future__ import annotations

import collections
import dataclasses
import glob
import itertools
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from flava_jax.data.sources import coco, img2dataset, json_lines, parquet_files, tfds_wit, tsv
from flava_jax.data.sources.hub_parquet import LAYOUTS as HUB_LAYOUTS
from flava_jax.data.sources.rows import Record, Skip, SourceError, WitRow

log = logging.getLogger("flava_jax.data")
PARQUET_LAYOUTS = HUB_LAYOUTS + (img2dataset.PARQUET_LAYOUT,)  # recognised in this order, by their columns

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


def _warn_if_no_rows(path: str | os.PathLike, records: Iterator[Record]) -> Iterator[Record]:
    """`records`, with a warning naming `path` when none of them is a row."""
    rows = skips = 0
    for record in records:
        rows += isinstance(record, WitRow)
        skips += isinstance(record, Skip)
        yield record
    if not rows:
        log.warning("WiT source file %s yielded no rows (%d records skipped)", path, skips)


@dataclasses.dataclass(frozen=True)
class Slice:
    """A piece of a source that a worker carves on its own: rows [start, stop) of a file (row groups of a parquet
    file, bytes of a JSON-lines file, images of a COCO file, items of a TFDS dataset, rows of a TSV; stop None: to
    the end). A TSV's rows come split already (`rows`): its quoted fields span lines, so only a reader from its
    start finds where they begin. Slices come from the sources alone, never from the worker count, so a carve by
    slices is the same on any host."""

    kind: str  # parquet | tar | coco | json | tfds | tsv
    path: str  # the file, or the tfds: spec
    start: int = 0
    stop: int | None = None
    rows: tuple[tsv.RawRow | Skip, ...] = ()


def kind_of(path: Path) -> str:
    """How a source file is read: by its suffix, COCO by its content, then JSON lines or TSV by their first line."""
    if path.suffix == ".parquet":
        return "parquet"
    if path.suffix == ".tar":
        return "tar"
    if coco.is_coco(path):  # first: COCO's one line is the whole file, which the JSON-lines sniff would read
        return "coco"
    return "json" if json_lines.looks_like_json(path) else "tsv"


def read_slice(piece: Slice) -> Iterator[Record]:
    """The records of one slice, in order."""
    if piece.kind == "tsv":
        return tsv.parsed(piece.rows)
    if piece.kind == "tfds":
        return tfds_wit.read_spec(piece.path, piece.start, piece.stop)
    if piece.kind == "parquet":
        return parquet_files.read_parquet(piece.path, PARQUET_LAYOUTS, piece.start, piece.stop)
    if piece.kind == "coco":
        return coco.read_coco(piece.path, piece.start, piece.stop)
    if piece.kind == "json":
        return json_lines.read_json_with_images(piece.path, piece.start, piece.stop)
    return img2dataset.read_webdataset(piece.path)  # a tar, read whole


def plan_slices(specs: Iterable[str], records: int) -> Iterator[Slice]:
    """The sources as slices of about `records` records each, in read order: parquet by row groups, plain JSON lines
    by byte ranges, COCO by images, TFDS by items, TSV by records read here; webdataset tar shards and gzip JSON lines
    whole (they can only be read from their start, and carry their images)."""
    for spec in specs:
        if spec.startswith("tfds:"):
            total = len(tfds_wit.data_source(spec))
            yield from (Slice("tfds", spec, start, min(start + records, total)) for start in range(0, total, records))
            continue
        for path in source_files(spec):
            kind = kind_of(path)
            if kind == "tsv":
                yield from _tsv_slices(path, records)
                continue
            if kind == "parquet":
                ranges = parquet_files.row_group_ranges(path, records)
            elif kind == "json":
                ranges = json_lines.byte_ranges(path, records)
            elif kind == "coco":
                total = coco.image_count(path)
                ranges = [(start, start + records) for start in range(0, total, records)] or [(0, None)]
            else:
                ranges = [(0, None)]
            yield from (Slice(kind, str(path), start, stop) for start, stop in ranges)


def _tsv_slices(path: Path, records: int) -> Iterator[Slice]:
    rows, start = tsv.raw_rows(path), 0
    while batch := tuple(itertools.islice(rows, records)):
        yield Slice("tsv", str(path), start, start + len(batch), batch)
        start += len(batch)


def read_file(path: Path) -> Iterator[Record]:
    """The records of one source file, read whole by its kind; a file that yields no row is named in the log."""
    kind = kind_of(path)
    return _warn_if_no_rows(path, tsv.read_tsv(path) if kind == "tsv" else read_slice(Slice(kind, str(path))))


def read_source(spec: str) -> Iterator[Record]:
    """Every record of a source spec, in a fixed order: `tfds:NAME[/SPLIT][@DATA_DIR]` reads a prepared TFDS dataset
    (default wit/train); anything else names files, each read by `read_file`."""
    if spec.startswith("tfds:"):
        yield from tfds_wit.read_spec(spec)
        return
    for path in source_files(spec):
        yield from read_file(path)


def read_sources(specs: Iterable[str]) -> Iterator[Record]:
    """`read_source` over several specs, in order."""
    for spec in specs:
        yield from read_source(spec)

