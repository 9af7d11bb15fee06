"""Labelled image sets for zero-shot classification, ImageNet-1k validation in the layouts users have it.

`read_image_set(path)` finds the layout and lists the images with their class index, without decoding them:

* imagefolder: `path` or `path/val` holds WordNet-id folders, `n01440764/*.JPEG` (torchvision's `ImageFolder`);
* devkit: the flat `ILSVRC2012_img_val/ILSVRC2012_val_00000001.JPEG ...` with the devkit's
  `data/ILSVRC2012_validation_ground_truth.txt` and `data/meta.mat` (from `ILSVRC2012_devkit_t12.tar.gz`);
* parquet: the Hugging Face hub's `imagenet-1k` files, `data/validation-00000-of-00014.parquet ...`;
* classfolders: any `path/<folder>/*.jpg` with a class-names file (`class_names=`).

Class i is the i-th WordNet id in sorted order (`imagenet/SOURCE.md`). Every image left out is counted in
`ImageSet.skipped` under its reason, and each reason is logged once with its count. Only files found by listing
the folders given are read: a path stored in a parquet row, or a number in the ground truth, never names a file.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import functools
import itertools
import json
import logging
import os
import re
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.io  # a dependency of jax's

IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".png"})
LAYOUTS = ("imagefolder", "devkit", "parquet", "classfolders")
GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
META = "meta.mat"
_WNID = re.compile(r"n\d{8}")
_VAL_IMAGE = re.compile(r"ILSVRC2012_val_(\d+)\.(jpe?g|png)", re.IGNORECASE)
_EXPECTED = ("ImageFolder (PATH[/val]/n01440764/*.JPEG), the devkit's flat folder (ILSVRC2012_img_val/"
             f"ILSVRC2012_val_00000001.JPEG ... with ILSVRC2012_devkit_t12/data/{META} and {GROUND_TRUTH}), hub "
             "parquet (PATH[/data]/validation-*.parquet, columns image and label) or class folders "
             "(PATH/<folder>/*.jpg with class_names=FILE)")
log = logging.getLogger("flava_jax")
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class LabelledImage:
    label: int  # class index into ImageSet.classes
    name: str  # where it came from, for messages: a path, or "validation-00000-of-00014.parquet row 12"
    data: bytes | None  # the encoded image, when the source holds it (parquet)
    path: Path | None  # else the file to read

    def read(self) -> bytes:
        """The encoded image bytes (not decoded)."""
        if self.data is not None:
            return self.data
        if self.path is None:
            raise ValueError(f"{self.name}: neither bytes nor a file")
        return self.path.read_bytes()


@dataclasses.dataclass
class ImageSet:
    classes: list[str]  # class names, index = label
    images: list[LabelledImage]  # by class, then file name (or parquet file and row)
    skipped: collections.Counter[str]  # reason -> number of images (or folders, where the reason says so)
    layout: str  # one of LAYOUTS


# ------------------------------------------------------------------------ the bundled lists
@functools.cache
def _bundled(name: str) -> tuple[str, ...]:
    text = resources.files("flava_jax.data").joinpath("imagenet", name).read_text(encoding="utf-8")
    return tuple(text.splitlines())


def imagenet_classes() -> list[str]:
    """OpenCLIP's 1000 ImageNet-1k class names (OpenAI CLIP's), index = class."""
    return list(_bundled("classes.txt"))


def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1k WordNet ids, sorted, index = class."""
    return list(_bundled("wnids.txt"))


def templates() -> list[str]:
    """OpenCLIP's 80 prompt templates (OpenAI CLIP's), `{}` where the class name goes."""
    return list(_bundled("templates.txt"))


# ------------------------------------------------------------------------ reading
def read_image_set(path: str | os.PathLike, limit_per_class: int | None = None,
                   class_names: str | os.PathLike | None = None) -> ImageSet:
    """The labelled images at `path`, in the layout found there (module docstring); with `class_names`, the class
    folders it names. `limit_per_class` keeps each class's first images in sorted order (those past it are not
    counted as skipped; in parquet, a kept row found to have no image bytes is skipped, not replaced). Raises
    ValueError when nothing matches or no image is usable."""
    path = Path(path)
    if limit_per_class is not None and limit_per_class < 1:
        raise ValueError(f"limit_per_class must be at least 1, not {limit_per_class}")
    if not path.exists():
        raise ValueError(f"{path} does not exist; expected {_EXPECTED}")
    skipped: collections.Counter[str] = collections.Counter()
    if class_names is not None:
        layout = "classfolders"
        classes, images = _class_folders(path, Path(class_names), limit_per_class, skipped)
    elif parquet := _parquet_files(path):
        layout = "parquet"
        classes, images = _parquet(parquet, limit_per_class, skipped)
    elif root := next((d for d in (path, path / "val") if _has_wnid_folders(d)), None):
        layout = "imagefolder"
        classes, images = _image_folder(root, limit_per_class, skipped)
    elif image_dir := next((d for d in (path, path / "ILSVRC2012_img_val") if _has_val_images(d)), None):
        layout = "devkit"
        classes, images = _devkit(path, image_dir, limit_per_class, skipped)
    else:
        raise ValueError(f"{path}: no image set found; expected {_EXPECTED}")
    for reason, count in sorted(skipped.items()):
        log.warning("%s (%s): skipped %d: %s", path, layout, count, reason)
    if not images:
        raise ValueError(f"{path} ({layout}): no usable images; skipped: {dict(skipped) or 'nothing'}; "
                         f"expected {_EXPECTED}")
    log.info("%s (%s): %d images of %d classes", path, layout, len(images), len({i.label for i in images}))
    return ImageSet(classes, images, skipped, layout)


def _first_per_class(entries: Iterable[tuple[int, object, T]], limit: int | None) -> list[tuple[int, T]]:
    """(label, item) by label then sort key, at most `limit` of each label."""
    kept: list[tuple[int, T]] = []
    counts: collections.Counter[int] = collections.Counter()
    for label, _, item in sorted(entries, key=lambda entry: entry[:2]):
        if limit is None or counts[label] < limit:
            kept.append((label, item))
            counts[label] += 1
    return kept


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _dirs(path: Path) -> list[Path]:
    return sorted(child for child in path.iterdir() if child.is_dir()) if path.is_dir() else []


# ------------------------------------------------------------------------ class folders (imagefolder, classfolders)
def _has_wnid_folders(path: Path) -> bool:
    return any(_WNID.fullmatch(child.name) for child in _dirs(path))


def _folder_images(root: Path, labels: dict[str, int], unknown: Callable[[str], str], limit: int | None,
                   skipped: collections.Counter[str]) -> list[LabelledImage]:
    """The images under each folder of `root` (recursively, as ImageFolder reads them) labelled by
    `labels[folder name]`; images of other folders are skipped for the reason `unknown(folder name)`. Files
    beside the folders count only when they are images (a root often holds a README or a label file)."""
    entries = []
    empty = []
    stray = [p for p in root.iterdir() if p.is_file() and _is_image(p)]
    if stray:
        skipped["image file outside a class folder"] += len(stray)
    for folder in _dirs(root):
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        images = [p for p in files if _is_image(p)]
        if len(files) > len(images):
            skipped[f"file that is not an image ({', '.join(sorted(IMAGE_SUFFIXES))})"] += len(files) - len(images)
        if folder.name not in labels:
            if images:
                skipped[unknown(folder.name)] += len(images)
            continue
        if not images:
            empty.append(folder.name)
        entries += [(labels[folder.name], image.relative_to(folder).as_posix(), image) for image in images]
    if empty:
        skipped["class folder with no images"] += len(empty)
        log.warning("%s: %d class folders with no images: %s", root, len(empty), ", ".join(empty[:10]) +
                    (", ..." if len(empty) > 10 else ""))
    return [LabelledImage(label, str(path), None, path) for label, path in _first_per_class(entries, limit)]


def _image_folder(root: Path, limit: int | None,
                  skipped: collections.Counter[str]) -> tuple[list[str], list[LabelledImage]]:
    labels = {wnid: index for index, wnid in enumerate(imagenet_wnids())}
    unknown = lambda name: ("image in a WordNet-id folder that is not an ImageNet-1k class" if _WNID.fullmatch(name)
                            else "image in a folder not named like a WordNet id")
    return imagenet_classes(), _folder_images(root, labels, unknown, limit, skipped)


def _read_class_names(path: Path) -> tuple[list[str], dict[str, int]]:
    """Class names and folder -> label from a class-names file: `folder<TAB>class name`, or `class name` alone
    for a folder of that name, one class a line in label order; blank lines are ignored."""
    classes: list[str] = []
    labels: dict[str, int] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        folder, _, name = line.partition("\t") if "\t" in line else (line, "", line)
        folder, name = folder.strip(), name.strip()
        if not folder or not name or folder in labels:
            raise ValueError(f"{path} line {number}: expected 'folder<TAB>class name' or 'class name' with a "
                             f"folder named once per file, got {line!r}")
        labels[folder] = len(classes)
        classes.append(name)
    if not classes:
        raise ValueError(f"{path}: no class names (one a line: 'folder<TAB>class name' or 'class name')")
    return classes, labels


def _class_folders(root: Path, class_names: Path, limit: int | None,
                   skipped: collections.Counter[str]) -> tuple[list[str], list[LabelledImage]]:
    if not root.is_dir():
        raise ValueError(f"{root}: class_names needs a folder of class folders (PATH/<folder>/*.jpg)")
    classes, labels = _read_class_names(class_names)
    missing = sorted(set(labels) - {folder.name for folder in _dirs(root)})
    if missing:
        skipped["class in the class-names file with no folder"] += len(missing)
        log.warning("%s: no folder for %d classes of %s: %s", root, len(missing), class_names, ", ".join(missing[:10]))
    unknown = lambda name: "image in a folder not in the class-names file"
    return classes, _folder_images(root, labels, unknown, limit, skipped)


# ------------------------------------------------------------------------ the devkit's flat folder
def _has_val_images(path: Path) -> bool:
    return path.is_dir() and any(_VAL_IMAGE.fullmatch(child.name) for child in path.iterdir())


def _find(name: str, roots: Iterable[Path]) -> Path | None:
    """The first `name` in each root, then one and two folders down, root after root."""
    for root in roots:
        for pattern in (name, f"*/{name}", f"*/*/{name}"):
            found = sorted(p for p in root.glob(pattern) if p.is_file())
            if found:
                return found[0]
    return None


def _devkit_wnids(meta: Path) -> dict[int, str]:
    """ILSVRC2012_ID -> WNID from the devkit's meta.mat (its `synsets` struct array)."""
    try:
        synsets = scipy.io.loadmat(meta, squeeze_me=True)["synsets"]
        # ravel: squeeze_me makes a one-synset file a 0-d array
        ids, wnids = np.ravel(synsets["ILSVRC2012_ID"]), np.ravel(synsets["WNID"])
        return {int(i): str(w) for i, w in zip(ids, wnids, strict=True)}
    except (KeyError, ValueError, TypeError, OSError) as error:
        raise ValueError(f"{meta}: not the ILSVRC2012 devkit's meta.mat (a synsets struct array with "
                         f"ILSVRC2012_ID and WNID): {error}") from error


def _read_ground_truth(path: Path) -> list[int]:
    ids = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                ids.append(int(line))
            except ValueError:
                raise ValueError(f"{path} line {number}: expected one ILSVRC2012_ID, got {line!r}") from None
    return ids


def _devkit(path: Path, image_dir: Path, limit: int | None,
            skipped: collections.Counter[str]) -> tuple[list[str], list[LabelledImage]]:
    # The devkit usually sits beside the image folder (both extracted in one place) or inside the folder given.
    roots = list(dict.fromkeys((path, path.parent)))
    ground_truth, meta = _find(GROUND_TRUTH, roots), _find(META, roots)
    if ground_truth is None or meta is None:
        absent = " and ".join(name for name, found in ((GROUND_TRUTH, ground_truth), (META, meta)) if found is None)
        raise ValueError(f"{image_dir} holds ILSVRC2012_val_*.JPEG images but no {absent} was found in "
                         f"{' or '.join(map(str, roots))} (up to two folders down): download the devkit, "
                         "ILSVRC2012_devkit_t12.tar.gz from image-net.org, and extract it next to the image folder")
    ids = _read_ground_truth(ground_truth)
    labels = {wnid: index for index, wnid in enumerate(imagenet_wnids())}
    id_labels = {i: labels.get(wnid) for i, wnid in _devkit_wnids(meta).items() if 1 <= i <= len(labels)}
    entries = []
    for image in (p for p in image_dir.iterdir() if p.is_file()):
        match = _VAL_IMAGE.fullmatch(image.name)
        if not match:
            skipped["file in the image folder not named ILSVRC2012_val_<number>.JPEG"] += 1
            continue
        number = int(match[1])
        if not 1 <= number <= len(ids):
            skipped["image without a ground-truth line"] += 1
        elif ids[number - 1] not in id_labels:
            skipped[f"ground-truth ILSVRC2012_ID outside 1..{len(labels)} or not in meta.mat"] += 1
        elif id_labels[ids[number - 1]] is None:
            skipped["meta.mat WNID that is not an ImageNet-1k class"] += 1
        else:
            entries.append((id_labels[ids[number - 1]], number, image))
    return imagenet_classes(), [LabelledImage(label, str(image), None, image)
                                for label, image in _first_per_class(entries, limit)]


# ------------------------------------------------------------------------ hub parquet
def _parquet_files(path: Path) -> list[Path]:
    """A parquet file, or a folder's (or its data/'s) validation files, else all its parquet files; sorted."""
    if path.is_file():
        return [path] if path.suffix == ".parquet" else []
    files = sorted(path.glob("*.parquet")) or sorted((path / "data").glob("*.parquet"))
    validation = [f for f in files if {"val", "validation"} & set(re.split(r"[-_.]", f.stem.lower()))]
    return validation or files


def _hub_class_names(schema_metadata: dict[bytes, bytes] | None) -> list[str] | None:
    """The `label` ClassLabel names that Hugging Face datasets writes in the schema metadata, if any."""
    try:
        info = json.loads((schema_metadata or {})[b"huggingface"])["info"]
        label = info["features"]["label"]
        return [str(name) for name in label["names"]] if label.get("_type") == "ClassLabel" else None
    except (KeyError, TypeError, ValueError):
        return None


def _parquet(files: list[Path], limit: int | None,
             skipped: collections.Counter[str]) -> tuple[list[str], list[LabelledImage]]:
    readers = [pq.ParquetFile(file) for file in files]
    for file, reader in zip(files, readers, strict=True):
        schema = reader.schema_arrow
        image = schema.field("image").type if "image" in schema.names else None
        if "label" not in schema.names or image is None or not pa.types.is_struct(image) or \
                image.get_field_index("bytes") < 0:
            found = ", ".join(f"{field.name}: {field.type}" for field in schema)
            raise ValueError(f"{file}: expected columns image (struct with bytes) and label, as the hub's "
                             f"imagenet-1k files have; found {found}")
    log.info("reading %d parquet files: %s", len(files), ", ".join(file.name for file in files))
    hub_names = _hub_class_names(readers[0].schema_arrow.metadata)
    # A hub file of ImageNet-1k carries the label's own names, not the prompt-friendly ones bundled here.
    classes = hub_names if hub_names is not None and len(hub_names) != 1000 else imagenet_classes()
    entries = []
    for index, reader in enumerate(readers):
        for row, label in enumerate(reader.read(columns=["label"]).column("label").to_pylist()):
            if label is None or label == -1:
                skipped["row without a label (-1 or null)"] += 1
            elif not 0 <= label < len(classes):
                skipped["label outside the class list"] += 1
            else:
                entries.append((label, (index, row), (index, row)))
    chosen: dict[int, dict[int, int]] = collections.defaultdict(dict)  # file -> row -> label
    for label, (index, row) in _first_per_class(entries, limit):
        chosen[index][row] = label
    images = []
    for index, rows in chosen.items():
        images += _parquet_images(files[index], readers[index], rows, skipped)
    images.sort(key=lambda image: image.label)  # stable: file and row order within a class
    return classes, images


def _parquet_images(file: Path, reader: pq.ParquetFile, rows: dict[int, int],
                    skipped: collections.Counter[str]) -> list[LabelledImage]:
    """The chosen rows' images (row -> label), one row group in memory at a time; the struct's `path` is never
    read."""
    ends = list(itertools.accumulate(reader.metadata.row_group(g).num_rows for g in range(reader.num_row_groups)))
    images = []
    for group, group_rows in itertools.groupby(sorted(rows), key=lambda row: bisect.bisect_right(ends, row)):
        group_rows = list(group_rows)
        start = ends[group - 1] if group else 0
        column = reader.read_row_group(group, columns=["image"]).column("image")
        for row, value in zip(group_rows, column.take([row - start for row in group_rows]).to_pylist(), strict=True):
            if value is None or value["bytes"] is None:
                skipped["row with no image bytes"] += 1
            else:
                images.append(LabelledImage(rows[row], f"{file.name} row {row}", value["bytes"], None))
    return images
