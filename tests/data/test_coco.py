"""COCO captions as a source: captions files written here with hand-written captions, their images the real photos in
../shared/data, prepared end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flava_jax.common.settings import ConfigError
from flava_jax.data.sources.coco import is_coco
from flava_jax.data.sources.dispatch import read_source
from flava_jax.data.sources.rows import Skip, SourceError, WitRow
from tests.data.wit_rows import TEXT_FIELDS, run_prepare, streams, write_json_with_images, write_tsv

STREAMS = ("text", "image", "pair")
# image id -> photo, and the captions as (annotation id, caption), listed out of order on purpose
PHOTOS = {42: "astronaut.png", 7: "chelsea.png", 19: "coffee.png"}
CAPTIONS = [
    (7, 42, "An astronaut poses in a white suit beside a flag."),
    (30, 7, "A tabby cat looks up with green eyes."),
    (3, 42, "A woman in a space suit smiles at the camera."),
    (25, 42, "An American flag hangs behind the astronaut."),
    (12, 42, "  A portrait of an astronaut with a model shuttle.\n"),
    (9, 19, "A cup of coffee on a saucer with a spoon."),
    (4, 7, "A striped cat sits on a wooden floor."),
    (20, 42, "A person in an orange and white uniform."),
]
# by image id, then annotation id: all five of the astronaut's captions
TEXTS = [["A striped cat sits on a wooden floor.", "A tabby cat looks up with green eyes."],
         ["A cup of coffee on a saucer with a spoon."],
         ["A woman in a space suit smiles at the camera.", "An astronaut poses in a white suit beside a flag.",
          "A portrait of an astronaut with a model shuttle.", "A person in an orange and white uniform.",
          "An American flag hangs behind the astronaut."]]


def _name(image_id: int) -> str:
    return f"{image_id:012d}.jpg"


def _coco(root: Path, shared: Path, photos: dict[int, str], captions: list[tuple[int, int, str | None]],
          names: dict[int, str] | None = None, images_at: str = "../train2017") -> Path:
    """`root/annotations/captions_train2017.json` in COCO's layout (info, licenses, images, annotations), each
    photo written as `<id:012>.jpg` into the folder `images_at` (relative to the JSON's folder); `names` overrides
    an image's file_name (the photo is then not written)."""
    names = names or {}
    (root / "annotations").mkdir(parents=True)
    folder = (root / "annotations" / images_at).resolve()
    folder.mkdir(exist_ok=True)
    for image_id, photo in photos.items():
        if image_id not in names:
            (folder / _name(image_id)).write_bytes((shared / "photos" / "skimage" / photo).read_bytes())
    document = {
        "info": {"description": "COCO 2017 Dataset", "version": "1.0", "year": 2017}, "licenses": [],
        "images": [{"id": i, "file_name": names.get(i, _name(i)), "width": 512, "height": 512} for i in photos],
        "annotations": [{"id": a, "image_id": i, "caption": c} for a, i, c in captions],
    }
    path = root / "annotations" / "captions_train2017.json"
    path.write_text(json.dumps(document))
    return path


def _texts(out: Path) -> list[str]:
    return [example.text for example in streams(out, "text")["text"]]


def test_captions_are_the_rows_texts_and_pairs_as_a_wit_tsv_of_them(shared_data: Path, tmp_path: Path) -> None:
    """Images by id, captions by annotation id, stripped; every caption is a text, the first alone makes the pair;
    the image and pair streams equal those of the same rows, first captions only, written as a WiT TSV."""
    source = _coco(tmp_path / "coco", shared_data, PHOTOS, CAPTIONS)
    manifest = run_prepare([source], tmp_path / "out", language=None)
    assert manifest["skipped"] == {}
    ours = streams(tmp_path / "out", *STREAMS)
    assert [e.text for e in ours["text"]] == [t for texts in TEXTS for t in texts]
    assert [(e.row, e.text) for e in ours["pair"]] == [(row, texts[0]) for row, texts in enumerate(TEXTS)]
    assert [e.row for e in ours["image"]] == [0, 1, 2]
    ids = sorted(PHOTOS)
    rows = [{"image_url": _name(i), TEXT_FIELDS[0]: texts[0]} for i, texts in zip(ids, TEXTS, strict=True)]
    photos = [(shared_data / "photos" / "skimage" / PHOTOS[i]).read_bytes() for i in ids]
    tsv, images = write_tsv(rows, photos, tmp_path / "tsv")
    run_prepare([tsv], tmp_path / "from_tsv", language=None, image_dirs=(str(images),))
    theirs = streams(tmp_path / "from_tsv", *STREAMS)
    assert (ours["image"], ours["pair"]) == (theirs["image"], theirs["pair"])


@pytest.mark.parametrize("images_at", ["train2017", "elsewhere"])
def test_the_image_folder_beside_the_json_or_image_dirs(shared_data: Path, tmp_path: Path, images_at: str) -> None:
    """`train2017/` beside the JSON itself is read like COCO's `../train2017`; a folder of another name is not
    looked for, but found through data.image_dirs."""
    reference = _coco(tmp_path / "reference", shared_data, PHOTOS, CAPTIONS)
    run_prepare([reference], tmp_path / "out_reference", language=None)
    source = _coco(tmp_path / "coco", shared_data, PHOTOS, CAPTIONS, images_at=images_at)
    dirs = (str(source.parent / images_at),) if images_at == "elsewhere" else ()
    manifest = run_prepare([source], tmp_path / "out", language=None, image_dirs=dirs)
    assert manifest["skipped"] == {}
    assert streams(tmp_path / "out", *STREAMS) == streams(tmp_path / "out_reference", *STREAMS)


def test_bad_entries_are_counted_skips(shared_data: Path, tmp_path: Path) -> None:
    photos = {1: "rocket.jpg", 2: "coins.png", 3: "camera.png", 4: "retina.jpg"}
    captions = [(10, 1, "A rocket on its launch pad."), (11, 2, "   "), (12, 2, "\n"), (13, 3, ""),
                (14, 3, "A man with a camera on a tripod."), (15, 99, "A caption of no image."),
                (16, 4, "A photo whose file is missing."), (17, 3, None)]
    source = _coco(tmp_path / "coco", shared_data, photos, captions)
    (source.parent.parent / "train2017" / _name(4)).unlink()
    document = json.loads(source.read_text())
    document["images"] += [{"id": 5}, {"id": 1, "file_name": "another.jpg"}]  # no file_name; id 1 a second time
    source.write_text(json.dumps(document))
    manifest = run_prepare([source], tmp_path / "out", language=None)
    assert manifest["skipped"] == {"coco: bad annotation": 1, "coco: unknown image id": 1, "coco: empty caption": 3,
                                   "coco: image without caption": 1, "coco: image file missing or unreadable": 1,
                                   "coco: bad image entry": 1, "coco: duplicate image id": 1}
    assert _texts(tmp_path / "out") == ["A rocket on its launch pad.", "A man with a camera on a tripod."]
    skips = {s.reason: s for s in read_source(str(source)) if isinstance(s, Skip)}
    assert skips["coco: unknown image id"].where.endswith("#annotation 15")
    assert skips["coco: image without caption"].where.endswith("#image 2")
    assert "FileNotFoundError" in skips["coco: image file missing or unreadable"].detail


@pytest.mark.parametrize("images_at", ["../train2017", "elsewhere"])
def test_a_file_name_leaving_the_image_folder_is_a_counted_skip(shared_data: Path, tmp_path: Path,
                                                                images_at: str) -> None:
    """Absolute names and `..` are refused before any read, whether the folder is beside the JSON or in
    data.image_dirs, even where the file they name exists."""
    outside = tmp_path / "coco" / "secret.jpg"
    photos = {1: "rocket.jpg", 2: "coins.png", 3: "camera.png"}
    names = {2: "../secret.jpg", 3: str(outside)}
    source = _coco(tmp_path / "coco", shared_data, photos, [(i, i, f"Caption {i}.") for i in photos], names,
                   images_at)
    outside.write_bytes((shared_data / "photos" / "skimage" / "coins.png").read_bytes())
    dirs = (str(source.parent / images_at),) if images_at == "elsewhere" else ()
    manifest = run_prepare([source], tmp_path / "out", language=None, image_dirs=dirs)
    assert manifest["skipped"] == {"coco: image path outside its folder": 2}
    assert _texts(tmp_path / "out") == ["Caption 1."] and manifest["kept"]["image"] == 1


def test_two_workers_give_the_same_shards(shared_data: Path, tmp_path: Path) -> None:
    source = _coco(tmp_path / "coco", shared_data, PHOTOS, CAPTIONS)
    one = run_prepare([source], tmp_path / "one", language=None, prepare_workers=1)
    two = run_prepare([source], tmp_path / "two", language=None, prepare_workers=2)
    hashes = {stream: [shard["sha256"] for shard in shards] for stream, shards in one["shards"].items()}
    assert hashes == {stream: [shard["sha256"] for shard in shards] for stream, shards in two["shards"].items()}
    assert set(hashes) == {"text", "image", "pair"}


def test_the_language_filter_stops_at_start_up(shared_data: Path, tmp_path: Path) -> None:
    source = _coco(tmp_path / "coco", shared_data, PHOTOS, CAPTIONS)
    with pytest.raises(ConfigError, match=r"no language column .*--config\.data\.language=None"):
        run_prepare([source], tmp_path / "out")
    assert all(r.language is None for r in read_source(str(source)) if isinstance(r, WitRow))


@pytest.mark.parametrize(("text", "message"), [
    ('{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"id": 1, "image_id": 1, "capt',
     "not a readable COCO captions file (JSONDecodeError"),
    ('{"images": [], "annotations": [{"id": 1, "image_id": 1, "bbox": [0, 0, 1, 1]}]}',
     "no annotation has a `caption`"),
    ('{"images": {}, "annotations": []}', "needs an object with `images` and `annotations` lists"),
])
def test_a_file_that_is_not_coco_captions_is_one_source_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "captions_train2017.json"
    path.write_text(text)
    with pytest.raises(SourceError) as error:
        list(read_source(str(path)))
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value)


def test_wit_json_lines_are_not_taken_for_coco(tmp_path: Path) -> None:
    source = write_json_with_images(tmp_path / "part-00000.json", [b"not read here"])
    assert not is_coco(source)
    assert [r.caption_reference_description for r in read_source(str(source)) if isinstance(r, WitRow)] == [
        "Caption number 0"]
