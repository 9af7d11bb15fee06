"""COCO captions (`captions_train2017.json`, `captions_val2017.json`) as a source: one row per image.

The file is one JSON object with `images` (id, file_name, ...) and `annotations` (id, image_id, caption), usually
five captions per image. Images are read in id order and each image's captions in annotation-id order; the first
caption is the row's reference caption, the one that makes the pair, and every caption is a text for the text
budget (the others as the row's `extra_texts`).

The images are read from the folder named like the split (`train2017/` for `captions_train2017.json`) beside the
JSON's folder (COCO's layout: `annotations/` and `train2017/` side by side) or, failing that, beside the JSON
itself; with neither, rows name their file and the image fetcher looks it up in `data.image_dirs`. Rows have no
language: read them with `data.language=None`.

Bad input is counted, never fatal: an annotation of an unknown image id, a malformed image or annotation entry, an
empty caption, an image with no usable caption, a file name that would leave the image folder (absolute, `..`)
and a missing image file are Skips. Only a file that is not valid JSON, or not a captions file at all, is a
SourceError.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from flava_jax.data.sources.rows import Record, Skip, SourceError, WitRow

log = logging.getLogger("flava_jax.data")
_SNIFF_BYTES = 1 << 16  # COCO writes `info` and `licenses` (about 1.5 KB) before `images` and `annotations`
# A top-level key of COCO's, as the start of a JSON object and a key holding a list; WiT's JSON lines have neither
# key, and a quote inside a JSON string is escaped, so a string value cannot match
_COCO_HEAD = re.compile(rb'\A(?:\xef\xbb\xbf)?\s*\{.*?"(?:images|annotations)"\s*:\s*\[', re.DOTALL)
_CAPTIONS_FILE = re.compile(r"captions_(.+)\.json")


def is_coco(path: str | os.PathLike) -> bool:
    """Whether the file starts as a COCO annotation file: a JSON object with `images` or `annotations` lists."""
    try:
        with open(path, "rb") as f:
            return _COCO_HEAD.match(f.read(_SNIFF_BYTES)) is not None
    except OSError:
        return False  # the reader it falls to reports it


def image_folder(path: Path) -> Path | None:
    """The folder holding a captions file's images: `<split>/` beside the JSON's folder, else beside the JSON; None
    when neither exists (or the file is not named `captions_<split>.json`)."""
    match = _CAPTIONS_FILE.fullmatch(path.name)
    if match is None:
        return None
    return next((folder for folder in (path.parent.parent / match.group(1), path.parent / match.group(1))
                 if folder.is_dir()), None)


def read_coco(path: str | os.PathLike, start: int = 0, stop: int | None = None) -> Iterator[Record]:
    """The records of a COCO captions file: Skips for its unusable entries, then each image's records in id
    order; or those of the images [start, stop) in that order (the Skips with the range that starts at 0)."""
    path = Path(path)
    images, captions, skips = _index(path)
    folder = image_folder(path)
    if start == 0:
        if folder is None:
            log.info("COCO captions %s: no image folder beside it, images are looked up in data.image_dirs", path)
        else:
            log.info("COCO captions %s: images read from %s", path, folder)
        yield from skips
    for image_id in sorted(images)[start:stop]:
        yield from _image_records(path, image_id, images[image_id], captions.pop(image_id, []), folder)


def image_count(path: str | os.PathLike) -> int:
    """How many images a captions file lists (the ones read_coco reads, in id order)."""
    return len(_index(Path(path))[0])


def _load(path: Path) -> tuple[list[Any], list[Any]]:
    """The `images` and `annotations` lists, or a SourceError naming the file."""
    try:
        document = json.loads(path.read_bytes())
    except (OSError, ValueError) as e:  # ValueError: JSON and UTF-8 errors
        raise SourceError(f"{path}: not a readable COCO captions file ({type(e).__name__}: {e})") from e
    if not isinstance(document, dict) or not all(isinstance(document.get(k), list) for k in ("images", "annotations")):
        raise SourceError(f"{path}: not a COCO captions file (needs an object with `images` and `annotations` lists)")
    images, annotations = document["images"], document["annotations"]
    if not any(isinstance(a, dict) and "caption" in a for a in annotations):
        raise SourceError(f"{path}: no annotation has a `caption` (a COCO instances or keypoints file?); give "
                          "captions_<split>.json")
    return images, annotations


def _index(path: Path) -> tuple[dict[int, str], dict[int, list[tuple[int, str]]], list[Skip]]:
    """File names by image id, (annotation id, caption)s by image id in annotation-id order, and Skips for the
    entries that cannot be used (unknown image ids in annotation-id order); the parsed JSON is dropped on return, as
    it is several times the index's size."""
    raw_images, annotations = _load(path)
    images: dict[int, str] = {}
    skips = []
    for i, image in enumerate(raw_images):
        image_id, name = _fields(image, "id", "file_name")
        if not _is_id(image_id) or not isinstance(name, str):
            skips.append(Skip("coco: bad image entry", f"{path}#images[{i}]", f"id={image_id!r}, file_name={name!r}"))
        elif image_id in images:
            skips.append(Skip("coco: duplicate image id", f"{path}#images[{i}]", f"id {image_id}"))
        else:
            images[image_id] = name
    captions: dict[int, list[tuple[int, str]]] = collections.defaultdict(list)
    unknown = []
    for i, annotation in enumerate(annotations):
        annotation_id, image_id, caption = _fields(annotation, "id", "image_id", "caption")
        if not (_is_id(annotation_id) and _is_id(image_id) and isinstance(caption, str)):
            skips.append(Skip("coco: bad annotation", f"{path}#annotations[{i}]",
                              f"id={annotation_id!r}, image_id={image_id!r}, caption={caption!r}"))
        elif image_id in images:
            captions[image_id].append((annotation_id, caption))
        else:
            unknown.append((annotation_id, Skip("coco: unknown image id", f"{path}#annotation {annotation_id}",
                                                f"image_id {image_id}")))
    for entries in captions.values():
        entries.sort()
    return images, captions, skips + [skip for _, skip in sorted(unknown, key=lambda u: u[0])]


def _fields(entry: Any, *keys: str) -> list[Any]:
    """An entry's values for `keys` (None where missing, all None when it is not an object)."""
    return [entry.get(k) if isinstance(entry, dict) else None for k in keys]


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _image_records(path: Path, image_id: int, name: str, captions: list[tuple[int, str]],
                   folder: Path | None) -> Iterator[Record]:
    """Skips for the image's empty captions, then its row, or a Skip saying why there is none."""
    where = f"{path}#image {image_id}"
    usable = []
    for annotation_id, caption in captions:
        if caption.strip():
            usable.append((annotation_id, caption.strip()))  # COCO's captions carry stray spaces and newlines
        else:
            yield Skip("coco: empty caption", f"{path}#annotation {annotation_id}", f"image {image_id}")
    if not usable:
        yield Skip("coco: image without caption", where, name)
        return
    relative = PurePosixPath(name)
    if not name or relative.is_absolute() or ".." in relative.parts:  # a dataset must not choose the host's files
        yield Skip("coco: image path outside its folder", where, name)
        return
    image = None
    if folder is not None:
        try:
            image = (folder / relative).read_bytes()
        except OSError as e:
            yield Skip("coco: image file missing or unreadable", where, f"{type(e).__name__}: {e}")
            return
    first, *others = (caption for _, caption in usable)
    yield WitRow(language=None, page_url=None, image_url=name, caption_reference_description=first,
                 extra_texts=tuple(others), image_bytes=image, where=where)
