"""Labelled image sets (flava_jax/data/image_sets.py): each layout built here in its real file format."""

from __future__ import annotations

import io
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.io
from PIL import Image

from flava_jax.data.image_sets import imagenet_classes, imagenet_wnids, read_image_set, templates


def jpeg(seed: int) -> bytes:
    """A distinct 8x8 JPEG."""
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (seed * 40 % 256, 100, 200)).save(out, format="JPEG")
    return out.getvalue()


def write(path: Path, data: bytes = b"") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def summary(image_set) -> list[tuple[int, str]]:
    return [(image.label, Path(image.name).name) for image in image_set.images]


# ------------------------------------------------------------------------ the bundled lists
def test_bundled_lists():
    classes, wnids, prompts = imagenet_classes(), imagenet_wnids(), templates()
    assert (len(classes), len(wnids), len(prompts)) == (1000, 1000, 80)
    assert wnids == sorted(wnids) and len(set(wnids)) == 1000
    assert (wnids[0], classes[0]) == ("n01440764", "tench")
    assert (wnids[1], classes[1]) == ("n01443537", "goldfish")
    assert (wnids[278], classes[278]) == ("n02119789", "kit fox")
    assert (wnids[999], classes[999]) == ("n15075141", "toilet paper")
    assert prompts[0] == "a bad photo of a {}." and prompts[-1] == "a tattoo of the {}."
    assert all(prompt.count("{}") == 1 for prompt in prompts)
    classes.append("x")  # a copy: the cached list is not changed
    assert len(imagenet_classes()) == 1000


# ------------------------------------------------------------------------ imagefolder
def test_image_folder_labels_skips_and_limit(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    root = tmp_path / "imagenet"
    write(root / "n01443537" / "b.jpg", jpeg(1))
    write(root / "n01443537" / "a.JPEG", jpeg(2))
    write(root / "n01443537" / "c.PNG", jpeg(3))
    write(root / "n01440764" / "x.jpeg", jpeg(4))
    write(root / "n01440764" / "notes.txt", b"not an image")
    write(root / "n15075141" / "sub" / "z.jpg", jpeg(5))  # nested, as ImageFolder reads it
    (root / "n02119789").mkdir()  # empty class folder
    write(root / "n99999999" / "q.jpg", jpeg(6))  # WordNet-like, not ImageNet-1k
    write(root / "extras" / "r.jpg", jpeg(7))
    write(root / "stray.jpg", jpeg(8))
    write(root / "README.txt", b"not counted: beside the class folders")
    with caplog.at_level(logging.WARNING, logger="flava_jax"):
        image_set = read_image_set(root)
    assert image_set.layout == "imagefolder"
    assert image_set.classes[:2] == ["tench", "goldfish"] and len(image_set.classes) == 1000
    assert summary(image_set) == [(0, "x.jpeg"), (1, "a.JPEG"), (1, "b.jpg"), (1, "c.PNG"), (999, "z.jpg")]
    assert image_set.images[1].read() == jpeg(2) and image_set.images[1].data is None
    assert image_set.skipped == {
        "class folder with no images": 1,
        "file that is not an image (.jpeg, .jpg, .png)": 1,
        "image in a WordNet-id folder that is not an ImageNet-1k class": 1,
        "image in a folder not named like a WordNet id": 1,
        "image file outside a class folder": 1,
    }
    assert "n02119789" in caplog.text and "class folder with no images" in caplog.text

    limited = read_image_set(root, limit_per_class=2)
    assert summary(limited) == [(0, "x.jpeg"), (1, "a.JPEG"), (1, "b.jpg"), (999, "z.jpg")]


def test_image_folder_under_val_with_real_photos(tmp_path: Path, shared_data: Path):
    photos = shared_data / "photos" / "skimage"
    for wnid, photo in (("n01440764", "rocket.jpg"), ("n01440764", "chelsea.png"), ("n02123045", "coffee.png")):
        (tmp_path / "val" / wnid).mkdir(parents=True, exist_ok=True)
        shutil.copy(photos / photo, tmp_path / "val" / wnid / photo)
    image_set = read_image_set(tmp_path)
    assert image_set.layout == "imagefolder" and not image_set.skipped
    assert summary(image_set) == [(0, "chelsea.png"), (0, "rocket.jpg"), (281, "coffee.png")]
    assert image_set.classes[281] == "tabby cat"
    assert Image.open(io.BytesIO(image_set.images[1].read())).size == Image.open(photos / "rocket.jpg").size


# ------------------------------------------------------------------------ devkit
SYNSET_FIELDS = ("ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
                 "num_train_images")


def write_meta(path: Path, synsets: list[tuple[int, str, str, int]]) -> None:
    """A meta.mat shaped like the devkit's: an (n, 1) struct array `synsets` with the devkit's fields."""
    array = np.zeros((len(synsets), 1), dtype=[(field, object) for field in SYNSET_FIELDS])
    for row, (ilsvrc_id, wnid, words, children) in enumerate(synsets):
        array[row, 0] = (ilsvrc_id, wnid, words, "gloss", children, np.zeros((1, children)), 0, 1300)
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"synsets": array})


def devkit(tmp_path: Path) -> Path:
    images = tmp_path / "ILSVRC2012_img_val"
    for number in range(1, 7):
        write(images / f"ILSVRC2012_val_{number:08d}.JPEG", jpeg(number))
    write(images / "LICENSE.txt", b"x")
    data = tmp_path / "ILSVRC2012_devkit_t12" / "data"
    # The devkit's own order: ID 1 is kit fox, not tench; ID 1001 is an inner node of the hierarchy.
    write_meta(data / "meta.mat", [(1, "n02119789", "kit fox, Vulpes macrotis", 0),
                                   (2, "n02100735", "English setter", 0),
                                   (3, "n15075141", "toilet tissue, toilet paper, bathroom tissue", 0),
                                   (4, "n01440764", "tench, Tinca tinca", 0),
                                   (5, "n09999999", "not in ImageNet-1k", 0),
                                   (1001, "n00001740", "entity", 3)])
    # images 1..5; image 6 has no line
    write(data / "ILSVRC2012_validation_ground_truth.txt", b"4\n1\n1001\n3\n5\n")
    return images


def test_devkit_maps_ids_through_meta(tmp_path: Path):
    images = devkit(tmp_path)
    for path in (images, tmp_path):  # the image folder with the devkit beside it, or the folder holding both
        image_set = read_image_set(path)
        assert image_set.layout == "devkit"
        assert summary(image_set) == [(0, "ILSVRC2012_val_00000001.JPEG"), (278, "ILSVRC2012_val_00000002.JPEG"),
                                      (999, "ILSVRC2012_val_00000004.JPEG")]
        assert image_set.images[0].read() == jpeg(1)
        assert image_set.skipped == {"image without a ground-truth line": 1,
                                     "ground-truth ILSVRC2012_ID outside 1..1000 or not in meta.mat": 1,
                                     "meta.mat WNID that is not an ImageNet-1k class": 1,
                                     "file in the image folder not named ILSVRC2012_val_<number>.JPEG": 1}


def test_devkit_missing_files_is_one_clear_error(tmp_path: Path):
    images = devkit(tmp_path)
    (tmp_path / "ILSVRC2012_devkit_t12" / "data" / "meta.mat").unlink()
    with pytest.raises(ValueError, match=r"no meta\.mat was found .*ILSVRC2012_devkit_t12\.tar\.gz"):
        read_image_set(images)


# ------------------------------------------------------------------------ hub parquet
def write_parquet(path: Path, rows: list[tuple[bytes | None, int]], names: list[str] | None) -> None:
    """A parquet file as Hugging Face datasets writes it: image struct {bytes, path}, label, the features in the
    schema metadata; row groups of 2 rows."""
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    images = pa.array([{"bytes": data, "path": f"../secret_{i}.jpg"} for i, (data, _) in enumerate(rows)], image_type)
    table = pa.table({"image": images, "label": pa.array([label for _, label in rows], pa.int64())})
    if names is not None:
        features = {"image": {"_type": "Image"}, "label": {"_type": "ClassLabel", "names": names}}
        table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=2)


def test_parquet_with_class_label_names(tmp_path: Path):
    data = tmp_path / "data"
    names = ["cat", "dog", "bird"]
    write_parquet(data / "validation-00000-of-00002.parquet",
                  [(jpeg(0), 1), (jpeg(1), 0), (jpeg(2), 5), (jpeg(3), -1), (None, 0)], names)
    write_parquet(data / "validation-00001-of-00002.parquet", [(jpeg(5), 2), (jpeg(6), 0)], names)
    write_parquet(data / "train-00000-of-00001.parquet", [(jpeg(7), 1)], names)  # not the validation split
    (tmp_path / "secret_4.jpg").write_bytes(b"outside")
    image_set = read_image_set(tmp_path)
    assert image_set.layout == "parquet" and image_set.classes == names
    assert summary(image_set) == [(0, "validation-00000-of-00002.parquet row 1"),
                                  (0, "validation-00001-of-00002.parquet row 1"),
                                  (1, "validation-00000-of-00002.parquet row 0"),
                                  (2, "validation-00001-of-00002.parquet row 0")]
    assert [image.read() for image in image_set.images] == [jpeg(1), jpeg(6), jpeg(0), jpeg(5)]
    assert image_set.images[0].path is None
    assert image_set.skipped == {"label outside the class list": 1, "row without a label (-1 or null)": 1,
                                 "row with no image bytes": 1}

    limited = read_image_set(data / "validation-00000-of-00002.parquet", limit_per_class=1)
    # class 0's first row (row 1) is kept; its null-bytes row 4 is past the limit, so not read
    assert summary(limited) == [(0, "validation-00000-of-00002.parquet row 1"),
                                (1, "validation-00000-of-00002.parquet row 0")]
    assert limited.skipped == {"label outside the class list": 1, "row without a label (-1 or null)": 1}


def test_parquet_of_imagenet_uses_the_bundled_names(tmp_path: Path):
    file = tmp_path / "val.parquet"
    write_parquet(file, [(jpeg(0), 999), (jpeg(1), 1000)], [f"synset {i}" for i in range(1000)])
    image_set = read_image_set(file)
    assert image_set.classes[999] == "toilet paper" and summary(image_set) == [(999, "val.parquet row 0")]
    assert image_set.skipped == {"label outside the class list": 1}
    write_parquet(file, [(jpeg(0), 1)], None)  # no metadata at all
    assert read_image_set(file).classes[1] == "goldfish"


# ------------------------------------------------------------------------ class folders
def test_class_folders_with_a_names_file(tmp_path: Path):
    root = tmp_path / "pets"
    write(root / "dogs" / "2.jpg", jpeg(0))
    write(root / "dogs" / "1.jpg", jpeg(1))
    write(root / "cats" / "a.png", jpeg(2))
    write(root / "bird" / "b.jpeg", jpeg(3))
    write(root / "fish" / "f.jpg", jpeg(4))  # not in the file
    names = write(tmp_path / "names.txt", b"dogs\tdomestic dog\ncats\ttabby cat\nbird\n\nhorse\n")
    image_set = read_image_set(root, class_names=names)
    assert image_set.layout == "classfolders"
    assert image_set.classes == ["domestic dog", "tabby cat", "bird", "horse"]
    assert summary(image_set) == [(0, "1.jpg"), (0, "2.jpg"), (1, "a.png"), (2, "b.jpeg")]
    assert image_set.skipped == {"image in a folder not in the class-names file": 1,
                                 "class in the class-names file with no folder": 1}
    assert summary(read_image_set(root, class_names=names, limit_per_class=1)) == [(0, "1.jpg"), (1, "a.png"),
                                                                                  (2, "b.jpeg")]
    write(names, b"dogs\tdog\ndogs\tpuppy\n")
    with pytest.raises(ValueError, match=r"names\.txt line 2"):
        read_image_set(root, class_names=names)


# ------------------------------------------------------------------------ errors
def test_nothing_usable_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ValueError, match=r"no image set found; expected ImageFolder .* parquet .* class_names"):
        read_image_set(tmp_path)
    (tmp_path / "n01440764").mkdir()
    with pytest.raises(ValueError, match=r"\(imagefolder\): no usable images; skipped: "
                                         r"\{'class folder with no images': 1\}"):
        read_image_set(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        read_image_set(tmp_path / "absent")
    with pytest.raises(ValueError, match="limit_per_class must be at least 1"):
        read_image_set(tmp_path, limit_per_class=0)
    write(tmp_path / "val-00000.parquet", b"")
    pq.write_table(pa.table({"label": pa.array([0], pa.int64())}), tmp_path / "val-00000.parquet")
    with pytest.raises(ValueError, match="expected columns image"):
        read_image_set(tmp_path)
