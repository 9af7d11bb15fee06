"""Prepare's shard files: one ArrayRecord file per stream and slice, written under a temporary name and published by
a rename once the carve accepts it; writes refused for want of space become one DiskFullError."""

from __future__ import annotations

import collections
import contextlib
import errno
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from array_record.python.array_record_module import ArrayRecordWriter

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)  # writes refused for want of space: a rerun after freeing some resumes


class DiskFullError(OSError):
    """A write was refused for want of space (or quota); errno, strerror and filename say which. The chunks committed
    before it are intact: a rerun after freeing space continues from the last of them."""

    def __str__(self) -> str:
        return (f"writing {self.filename} failed: {self.strerror}. The chunks committed before it are intact: free "
                "space, then rerun the same command to continue from the last committed chunk")


@contextlib.contextmanager
def space_checked(path: Path) -> Iterator[None]:
    """Raises a write refused for want of space as a DiskFullError naming `path` (the file written, or a folder
    when the error names none): ArrayRecord's writer reports it as a RuntimeError, Python's write() as an OSError
    without a file name."""
    try:
        yield
    except DiskFullError:
        raise
    except (OSError, RuntimeError) as e:
        code = e.errno if isinstance(e, OSError) else next(
            (code for code in DISK_FULL_ERRNOS if os.strerror(code) in str(e)), None)
        if code not in DISK_FULL_ERRNOS:
            raise
        raise DiskFullError(code, os.strerror(code), getattr(e, "filename", None) or str(path)) from e


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shard_name(index: int) -> str:
    return f"{index:05d}.arrayrecord"


def shard_path(out: Path, stream: str, index: int) -> Path:
    return out / stream / shard_name(index)


def tmp_path(out: Path, stream: str, index: int) -> Path:
    """Where this process writes a shard before it is published: named by the process too, so that a worker left
    running by a killed prepare never writes into the file of the prepare that resumes it."""
    return out / stream / f"{shard_name(index)}.{os.getpid()}.tmp"


class SliceWriters:
    """One temporary shard per stream for one slice; `close` returns each one's records, sha256 (computed here, in
    the worker that wrote it, so the process that publishes it never reads it) and temporary file name."""

    def __init__(self, out: Path, index: int) -> None:
        self.out, self.index = out, index
        self.writers: dict[str, ArrayRecordWriter] = {}
        self.counts: collections.Counter[str] = collections.Counter()

    def write(self, stream: str, record: bytes) -> None:
        path = tmp_path(self.out, stream, self.index)
        with space_checked(path):
            if stream not in self.writers:
                path.parent.mkdir(parents=True, exist_ok=True)
                self.writers[stream] = ArrayRecordWriter(str(path), "group_size:1")
            self.writers[stream].write(record)
        self.counts[stream] += 1

    def close(self) -> dict[str, dict[str, Any]]:
        shards = {}
        for stream, writer in self.writers.items():
            path = tmp_path(self.out, stream, self.index)
            with space_checked(path):
                writer.close()  # where ArrayRecord writes most of a shard
            shards[stream] = {"records": self.counts[stream], "sha256": file_sha256(path), "tmp": path.name}
        self.writers = {}
        return shards

    def discard(self) -> None:
        """Close and delete what was written (a slice given up: the carve stopped before it)."""
        for stream, writer in self.writers.items():
            with contextlib.suppress(OSError, RuntimeError):
                writer.close()
            tmp_path(self.out, stream, self.index).unlink(missing_ok=True)
        self.writers = {}
