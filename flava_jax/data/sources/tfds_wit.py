"""TFDS `wit` through `tfds.data_source`, when the user has prepared it. Its booleans are unusable (its builder parses
them with `bool(str)`, so "false" became True): they are dropped."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flava_jax.data.sources.rows import BOOL_COLUMNS, BadValue, Record, Skip, row_from_fields


def read_tfds(source: Any, name: str = "tfds", start: int = 0, stop: int | None = None) -> Iterator[Record]:
    """Rows of a TFDS `wit` data source (anything indexable whose items are TFDS feature dicts), or of its items
    [start, stop)."""
    for index in range(start, len(source) if stop is None else min(stop, len(source))):
        item = dict(source[index])
        for column in BOOL_COLUMNS:
            item.pop(column, None)  # unusable in TFDS's build, see the module docstring
        try:
            yield row_from_fields(item, f"{name}#{index}")
        except BadValue as e:
            yield Skip("bad value", f"{name}#{index}", str(e))


def data_source(spec: str) -> Any:
    """The TFDS data source of `tfds:NAME[/SPLIT][@DATA_DIR]` (default wit/train)."""
    import tensorflow_datasets as tfds

    name, _, data_dir = spec[len("tfds:"):].partition("@")
    name, _, split = name.partition("/")
    return tfds.data_source(name or "wit", split=split or "train", data_dir=data_dir or None)


def read_spec(spec: str, start: int = 0, stop: int | None = None) -> Iterator[Record]:
    """The rows of a prepared TFDS dataset (or of its items [start, stop))."""
    yield from read_tfds(data_source(spec), spec, start, stop)
