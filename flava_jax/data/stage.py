"""Copy prepared data from Cloud Storage (gs://, or any etils epath URL) to a local directory:
`python -m flava_jax.data.stage --src=gs://BUCKET/data/10M --dest=/mnt/data/10M`.

ArrayRecord opens local files only (its reader has no GCS support), so a run whose `config.data.dir` is a URL
stages the data first (the trainer calls `stage` itself, into `config.data.stage_dir`). What is copied is what the
manifest names: the tokenizer and every shard, each checked against the manifest's sha256. The manifest is
written last, so a destination holding it is complete, and a rerun (after an interruption, or after the source was
prepared again) copies only the files it lacks or that changed.
Every host stages its own copy; processes sharing a host take turns through a file lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any

from absl import app, flags
from etils import epath

from flava_jax.common.progress import ProgressLog
from flava_jax.data.prepare import MANIFEST, file_sha256

log = logging.getLogger("flava_jax")
_CHUNK = 8 << 20
STAGED = ".staged.json"  # file -> the sha256 it was verified against


class StageError(RuntimeError):
    """Staging failed; the message says why and what to do."""


def is_url(path: str | os.PathLike) -> bool:
    """Whether `path` is a URL (gs://, s3://, ...) rather than a local path."""
    return re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", str(path)) is not None


def default_destination(src: str, root: str | os.PathLike = "~/.cache/flava_jax/data") -> Path:
    """A local directory for `src`, named after it so that different sources never share one."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", str(src).split("://", 1)[-1]).strip("_")[-80:]
    digest = hashlib.sha256(str(src).encode()).hexdigest()[:10]
    return Path(root).expanduser() / f"{readable}-{digest}"


def _manifest(src: epath.Path) -> tuple[str, dict[str, Any]]:
    """The manifest's text (staged verbatim) and its content."""
    try:
        text = (src / MANIFEST).read_text()
        manifest = json.loads(text)
    except FileNotFoundError as e:
        raise StageError(f"{src} holds no {MANIFEST}: point at a directory written by python -m "
                         f"flava_jax.data.prepare (and copied whole, e.g. with gcloud storage rsync)") from e
    except ImportError as e:  # epath needs a filesystem package for the URL's scheme
        raise StageError(f"reading {src} needs a filesystem package for its scheme ({e}); for gs:// install "
                         f"gcsfs (pip install 'flava_jax[gcs]')") from e
    if not manifest.get("complete"):
        raise StageError(f"{src}: the manifest says the prepare run did not finish; finish it before staging")
    for entry in manifest_files(manifest):  # all checked before anything is copied
        _check_inside(src, entry["file"])
    return text, manifest


def _check_inside(src: epath.Path, name: object) -> None:
    """Refuse an entry that is not a relative path inside the data: it would be read and written elsewhere."""
    path = PurePosixPath(name) if isinstance(name, str) else None
    if path is None or path.is_absolute() or not path.parts or ".." in path.parts:
        raise StageError(f"{src}/{MANIFEST} lists the file {name!r}, which is not a relative path inside the data "
                         f"directory (absolute, or climbing with '..'); refusing to stage from it")


def manifest_files(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Every file the trainer reads, as the manifest lists them ({"file": relative path, "sha256": ...})."""
    return [manifest["tokenizer"]] + [shard for shards in manifest["shards"].values() for shard in shards]


def _copy(src: epath.Path, dest: Path, sha256: str, progress: ProgressLog) -> None:
    """src -> dest through a private temporary file, published only when its hash is the manifest's."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(f".{dest.name}.{os.getpid()}.partial")
    digest = hashlib.sha256()
    try:
        with src.open("rb") as reader, open(partial, "wb") as writer:
            for block in iter(lambda: reader.read(_CHUNK), b""):
                digest.update(block)
                writer.write(block)
                progress.update(progress.done + len(block) / 2**20)
        if digest.hexdigest() != sha256:
            raise StageError(f"{src}: sha256 {digest.hexdigest()} is not the manifest's {sha256}; the source is "
                             f"damaged or was changed after prepare, so prepare it again or re-copy it")
        os.replace(partial, dest)
    finally:
        partial.unlink(missing_ok=True)


def _write(path: Path, text: str) -> None:
    """Atomically: a reader sees the old file or the new one, never half of one."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(text)
    os.replace(partial, path)


def stage(src: str | os.PathLike, dest: str | os.PathLike, verify_existing: bool = False) -> Path:
    """Copy the prepared data at `src` to `dest` and return `dest`. Files already staged from the same manifest
    entry are kept (re-hashed first with `verify_existing`), so a rerun copies only what is missing or changed.
    A local `src` is returned as it is: nothing needs copying."""
    if not is_url(src):
        return Path(src)
    dest = Path(dest).expanduser()
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Processes on one host take turns: the first copies, the others then find the copy complete.
    with open(dest.parent / f".{dest.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _stage_locked(epath.Path(src), dest, verify_existing)


def _stage_locked(source: epath.Path, dest: Path, verify_existing: bool) -> Path:
    text, manifest = _manifest(source)
    local_manifest = dest / MANIFEST
    if local_manifest.is_file() and local_manifest.read_text() == text and not verify_existing:
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    local_manifest.unlink(missing_ok=True)  # from here until the end, `dest` is not a complete copy
    # Which manifest entry (sha256) each local file was checked against when it was published.
    record = dest / STAGED
    staged = json.loads(record.read_text()) if record.is_file() else {}
    files = manifest_files(manifest)
    todo = []
    for entry in files:
        local = dest / entry["file"]
        if local.is_file() and staged.get(entry["file"]) == entry["sha256"] and (
                not verify_existing or file_sha256(local) == entry["sha256"]):
            continue
        todo.append(entry)
    progress = ProgressLog(f"staging {source}", sum((source / e["file"]).stat().length for e in todo) / 2**20, "MiB")
    log.info("staging %d of %d files (%.1f MiB) from %s to %s", len(todo), len(files), progress.total, source, dest)
    for entry in todo:
        _copy(source / entry["file"], dest / entry["file"], entry["sha256"], progress)
        staged[entry["file"]] = entry["sha256"]
        _write(record, json.dumps(staged, indent=1))
    progress.finish()
    _write(local_manifest, text)  # last: a destination with a manifest is complete
    return dest


def main() -> None:
    """The command line; flags are defined here so that importing this module defines none."""
    src = flags.DEFINE_string("src", None, "Prepared data: a gs:// (or other epath) URL.")
    dest = flags.DEFINE_string("dest", None, "The local directory to copy it to (default: under "
                               "~/.cache/flava_jax/data, named after --src).")
    verify = flags.DEFINE_bool("verify_existing", False, "Re-hash files already at --dest instead of trusting "
                               "them.")

    def run(argv: list[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        if not src.value or not is_url(src.value):
            raise app.UsageError("--src must be a URL such as gs://BUCKET/PATH (a local directory needs no staging)")
        logging.getLogger("flava_jax").setLevel(logging.INFO)
        try:
            out = stage(src.value, dest.value or default_destination(src.value), verify.value)
        except StageError as e:
            raise app.UsageError(str(e)) from e
        print(f"staged {src.value} in {out}; train with --config.data.dir={out}")

    app.run(run)


if __name__ == "__main__":
    main()
