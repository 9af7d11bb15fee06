"""Hub parquet copies of WiT: fixtures in each layout's schema, built from the real WiT rows and photos in
../shared/data, prepared end to end and compared with the same rows prepared from a TSV (or the JSON they came from);
the paper's 224x224 PNGs reach the model as their own pixels."""

from __future__ import annotations

import base64
import gzip
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from flava_jax.data.images import to_jpeg
from flava_jax.data.prepare import HELDOUT, HELDOUT_IMAGE
from flava_jax.data.sources.dispatch import read_file, read_source, source_files
from flava_jax.data.sources.hub_parquet import split_rows
from flava_jax.data.sources.rows import SourceError, WitRow
from tests.data.test_images import encoded, pipeline_pixels, with_alpha
from tests.data.wit_rows import (
    IMAGE_TYPE,
    collapsed,
    png_224,
    real_rows,
    run_prepare,
    streams,
    threaded_pool,
    write_parquet,
    write_tsv,
)

THEODOR_FEATURES = {"image": {"_type": "Image"}, "image_url": {"dtype": "string", "_type": "Value"},
                    **{c: {"dtype": "string", "_type": "Value"} for c in (
                        "text", "context_page_description", "context_section_description",
                        "caption_alt_text_description")}}
STREAMS = ("text", "image", "pair")


def _theodor_table(rows: list[dict[str, Any]], images: list[bytes | None]) -> pa.Table:
    """theodor1289/wit's schema: the HF Image struct, the URL, PMD's text, the three context fields."""
    return pa.table({
        "image_url": pa.array([r["image_url"] for r in rows], pa.string()),
        "image": pa.array([None if b is None else {"bytes": b, "path": None} for b in images], IMAGE_TYPE),
        "text": pa.array([r["caption_reference_description"] for r in rows], pa.string()),
        **{c: pa.array([r[c] for r in rows], pa.string()) for c in (
            "context_page_description", "context_section_description", "caption_alt_text_description")},
    })


def _theodor(root: Path, rows: list[dict[str, Any]]) -> Path:
    """`hf download theodor1289/wit --local-dir root`: data/train-* (rows 0-11 in two files), data/test-* (12-17),
    with the README and hf's .cache beside them."""
    images = [png_224(r["photo"]) for r in rows]
    for name, part in (("train-00000-of-00002-5f0a1b2c3d4e5f60", slice(0, 7)),
                       ("train-00001-of-00002-5f0a1b2c3d4e5f60", slice(7, 12)),
                       ("test-00000-of-00001-0a1b2c3d4e5f6071", slice(12, 18))):
        write_parquet(root / "data" / f"{name}.parquet", _theodor_table(rows[part], images[part]), THEODOR_FEATURES)
    (root / "README.md").write_text("---\nlicense: cc-by-sa-3.0\n---\n")
    (root / ".cache" / "huggingface").mkdir(parents=True)
    (root / ".cache" / "huggingface" / "download.json").write_text("{}")
    return root


def _english(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**r, "language": "en"} for r in rows]  # PMD is English


def test_theodor_layout_prepares_like_the_tsv_and_holds_out_its_test_split(shared_data: Path, tmp_path: Path) -> None:
    rows = real_rows(shared_data)
    source = _theodor(tmp_path / "wit", rows)
    manifest = run_prepare([source], tmp_path / "out", heldout_fraction=0.5)  # the hash split must not apply
    tsv, images = write_tsv(_english(rows[:12]), [png_224(r["photo"]) for r in rows[:12]], tmp_path / "tsv")
    run_prepare([tsv], tmp_path / "from_tsv", image_dirs=(str(images),))
    ours, theirs = streams(tmp_path / "out", *STREAMS), streams(tmp_path / "from_tsv", *STREAMS)
    assert ours == theirs and len(ours["image"]) == 12
    held = streams(tmp_path / "out", HELDOUT, HELDOUT_IMAGE)
    assert [(e.row, e.text) for e in held[HELDOUT]] == [(i, t) for i, r in enumerate(rows[12:]) for t in collapsed(r)]
    assert len(held[HELDOUT_IMAGE]) == 6 and manifest["skipped"] == {}
    every_image = [e.image for e in ours["image"] + held[HELDOUT_IMAGE]]  # squashed to 16x16: all converted
    assert manifest["image_formats"] == {"jpeg": {"count": 18, "bytes": sum(map(len, every_image))}}


def test_the_papers_images_reach_the_model_as_their_own_pixels(shared_data: Path, tmp_path: Path) -> None:
    """theodor1289/wit's 224x224 PNGs (RGB; here a grey one too) and a 224x224 JPEG are stored byte for byte, and
    the pipeline decodes them to the pixels of the parquet's own bytes; a PNG with transparency and one of another
    size are converted as before, and with image_reencode every image is."""
    photos = shared_data / "photos" / "skimage"

    def square(name: str) -> Image.Image:
        return Image.open(photos / name).resize((224, 224), Image.Resampling.BICUBIC)

    rgb = [png_224(photos / name) for name in ("astronaut.png", "coffee.png", "hubble_deep_field.jpg", "retina.jpg")]
    grey, jpeg = encoded(square("camera.png")), encoded(square("rocket.jpg"), "JPEG", quality=90)
    transparent, other_size = encoded(with_alpha(square("chelsea.png"))), (photos / "coins.png").read_bytes()
    images = [*rgb, grey, transparent, jpeg, other_size]
    assert Image.open(io.BytesIO(grey)).mode == "L" and Image.open(io.BytesIO(transparent)).mode == "RGBA"
    kept = [*rgb, grey, jpeg]
    write_parquet(tmp_path / "wit" / "data" / "train-00000-of-00001.parquet",
                  _theodor_table(real_rows(shared_data)[:len(images)], images), THEODOR_FEATURES)
    manifest = run_prepare([tmp_path / "wit"], tmp_path / "out", image_size=224)
    stored = [e.image for e in streams(tmp_path / "out", "image")["image"]]
    assert stored == [data if data in kept else to_jpeg(data, 224) for data in images]
    for data, image in zip(images, stored, strict=True):
        if data in kept:  # the pixels training sees are those of the parquet's bytes, decoded
            assert np.array_equal(pipeline_pixels(image), np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    assert {e.image for e in streams(tmp_path / "out", "pair")["pair"]} == set(stored)
    assert manifest["image_formats"] == {"png": {"count": 5, "bytes": sum(map(len, [*rgb, grey]))},
                                         "jpeg": {"count": 3, "bytes": len(jpeg) + len(stored[5]) + len(stored[7])}}
    reencoded = run_prepare([tmp_path / "wit"], tmp_path / "reencoded", image_size=224, image_reencode=True)
    assert [e.image for e in streams(tmp_path / "reencoded", "image")["image"]] == [to_jpeg(d, 224) for d in images]
    assert list(reencoded["image_formats"]) == ["jpeg"]
    # With no image already right (none is 16x16), the switch changes nothing: the shards of before
    small = [run_prepare([tmp_path / "wit"], tmp_path / f"small{reencode}", image_reencode=reencode)["shards"]
             for reencode in (False, True)]
    assert small[0] == small[1]


def test_theodor_rows_carry_their_split_and_english(shared_data: Path, tmp_path: Path) -> None:
    rows = real_rows(shared_data)
    records = list(read_source(str(_theodor(tmp_path / "wit", rows))))
    assert [r.split for r in records] == ["test"] * 6 + ["train"] * 12  # test-* sorts first
    assert {r.language for r in records} == {"en"} and records[6].image_bytes == png_224(rows[0]["photo"])
    assert split_rows(source_files(str(tmp_path / "wit"))) == {"train": 12, "test": 6}


def test_percent_budgets_take_row_prefixes_of_the_train_split(shared_data: Path, tmp_path: Path) -> None:
    """train[:25%] of 12 train rows is 3 rows of text, train[:50%] 6 images; pairs take the smaller prefix."""
    rows = real_rows(shared_data)
    source = _theodor(tmp_path / "wit", rows)
    manifest = run_prepare([source], tmp_path / "out", budget_unit="percent", text_words=250_000_000,
                           images=2_000_000)
    ours = streams(tmp_path / "out", *STREAMS)
    assert [e.text for e in ours["text"]] == [t for r in rows[:3] for t in collapsed(r)]
    assert [e.row for e in ours["image"]] == list(range(6))
    assert [e.text for e in ours["pair"]] == [t for r in rows[:3] for t in collapsed(r)]
    assert manifest["budgets"]["rows"] == {"text": 3, "images": 6, "train_split": 12}
    tsv, images = write_tsv(rows[:2], [b"x", b"y"], tmp_path / "tsv")
    with pytest.raises(SourceError, match="train split"):
        run_prepare([tsv], tmp_path / "bad", budget_unit="percent")


@pytest.mark.parametrize(("text_words", "images"), [(250_000_000, 2_000_000), (1_000_000_000, 500_000)])
def test_percent_budgets_ahead_in_workers_give_the_exact_carve(shared_data: Path, tmp_path: Path, text_words: int,
                                                               images: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Row budgets met inside and before later slices, carved by workers ahead of them: what one process writes."""
    from flava_jax.data import prepare as prepare_module

    source = _theodor(tmp_path / "wit", real_rows(shared_data))
    changes = dict(budget_unit="percent", text_words=text_words, images=images, chunk_records=2)
    lone = run_prepare([source], tmp_path / "lone", **changes)
    monkeypatch.setattr(prepare_module.concurrent.futures, "ProcessPoolExecutor", threaded_pool)
    ahead = run_prepare([source], tmp_path / "ahead", prepare_workers=3, **changes)
    for key in ("kept", "words", "shards", "train_rows", "source_records", "budget_met"):
        assert ahead[key] == lone[key], key


def _wit_base_rows(shared_data: Path) -> tuple[list[dict[str, Any]], list[Path]]:
    """The "WIT with images" JSON records, which are wikimedia/wit_base rows with the image in base64."""
    paths = [shared_data / "wit" / p for p in (
        "hf_datasets_wit_dummy/5923719/part-00000-48a6f07e-bb86-4735-aac7-883349f41a28-c000.json.gz",
        "hf_datasets_wit_dummy/f47dd42/part-00000-48a6f07e-bb86-4735-aac7-883349f41a28-c000.json.gz")]
    records = []
    for path in paths:
        data = path.read_bytes()
        lines = (gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data).decode().splitlines()
        records.append([json.loads(line) for line in lines if line.strip()])
    return records, paths


def test_wit_base_layout_reads_as_the_json_it_came_from(shared_data: Path, tmp_path: Path) -> None:
    """One row per language entry; wit_features as a list of structs (first file) or a struct of lists (second)."""
    files, json_paths = _wit_base_rows(shared_data)
    features = {"image": {"_type": "Image"}, "embedding": {"feature": {"dtype": "float32"}, "_type": "Sequence"}}
    for i, records in enumerate(files):
        table = pa.Table.from_pylist([{**{k: v for k, v in r.items() if k != "b64_bytes"},
                                       "image": {"bytes": base64.b64decode(r["b64_bytes"]), "path": None}}
                                      for r in records])
        write_parquet(tmp_path / "wit_base" / "data" / f"train-{i:05d}-of-00002.parquet", table, features)
    schemas = [pq.read_schema(p) for p in sorted((tmp_path / "wit_base" / "data").glob("*.parquet"))]
    assert [pa.types.is_list(s.field("wit_features").type) for s in schemas] == [True, False]  # list, struct
    ours = [dict(vars(r), where="") for r in read_source(str(tmp_path / "wit_base"))]
    theirs = [dict(vars(r), where="") for p in json_paths for r in read_source(str(p))]
    assert ours == theirs and len(ours) == 24 and all(r["split"] is None for r in ours)
    for prepared, sources in (("out", [tmp_path / "wit_base"]), ("from_json", json_paths)):
        run_prepare(sources, tmp_path / prepared, heldout_fraction=0.5)
    names = STREAMS + (HELDOUT, HELDOUT_IMAGE)
    assert streams(tmp_path / "out", *names) == streams(tmp_path / "from_json", *names)
    assert streams(tmp_path / "out", "text")["text"]  # English captioned rows were kept


def test_pmd_layout_fetches_images_and_counts_a_bad_meta(shared_data: Path, tmp_path: Path) -> None:
    rows = real_rows(shared_data)
    tsv, images = write_tsv(_english(rows), [r["photo"].read_bytes() for r in rows], tmp_path / "tsv")
    meta_fields = ("page_url", "page_title", "section_title", "hierarchical_section_title",
                   "caption_reference_description", "caption_attribution_description", "caption_alt_text_description",
                   "mime_type", "original_height", "original_width", "is_main_image", "attribution_passes_lang_id",
                   "page_changed_recently", "context_page_description", "context_section_description")
    table = pa.table({
        "image": pa.array([None] * (len(rows) + 1), IMAGE_TYPE),
        "image_url": [r["image_url"] for r in rows] + ["https://upload.wikimedia.org/x/bad.jpg"],
        "text": [r["caption_reference_description"] for r in rows] + ["a caption"],
        "source": ["wit"] * (len(rows) + 1),
        "meta": [json.dumps({**{k: r[k] for k in meta_fields}, "language": "en", "image_url": r["image_url"]})
                 for r in rows] + ['{"page_url": "cut sh'],
    })
    write_parquet(tmp_path / "pmd" / "data" / "train-00000-of-00001.parquet", table, {"image": {"_type": "Image"}})
    manifest = run_prepare([tmp_path / "pmd"], tmp_path / "out", image_dirs=(str(images),), heldout_fraction=0.3)
    run_prepare([tsv], tmp_path / "from_tsv", image_dirs=(str(images),), heldout_fraction=0.3)
    names = STREAMS + (HELDOUT, HELDOUT_IMAGE)
    assert streams(tmp_path / "out", *names) == streams(tmp_path / "from_tsv", *names)
    assert manifest["skipped"] == {"bad meta": 1}


def _bomb() -> bytes:
    """A 10000x10000 PNG of a few kilobytes: 100M pixels, over PIL's decompression-bomb limit."""
    out = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(out, format="PNG")
    return out.getvalue()


def test_bad_parquet_input_is_counted_never_a_crash(shared_data: Path, tmp_path: Path) -> None:
    rows = real_rows(shared_data)[:6]
    good = [png_224(r["photo"]) for r in rows]
    images = [good[0], None, b"not an image at all", _bomb(), good[4], good[5]]
    write_parquet(tmp_path / "wit" / "data" / "train-00000-of-00002.parquet", _theodor_table(rows, images),
                  THEODOR_FEATURES)
    whole = write_parquet(tmp_path / "whole.parquet", _theodor_table(rows, good), THEODOR_FEATURES).read_bytes()
    (tmp_path / "wit" / "data" / "train-00001-of-00002.parquet").write_bytes(whole[:len(whole) // 2])  # cut short
    records = list(read_source(str(tmp_path / "wit")))
    assert [r.reason for r in records if not isinstance(r, WitRow)] == ["null image", "unreadable file"]
    manifest = run_prepare([tmp_path / "wit"], tmp_path / "out")
    assert manifest["skipped"] == {"null image": 1, "unreadable file": 1, "image: not an image": 1,
                                   "image: decompression bomb": 1}
    assert [e.text for e in streams(tmp_path / "out", "image")["image"]] == [""] * 3


def test_a_missing_column_names_the_columns_and_the_layouts(tmp_path: Path) -> None:
    table = pa.table({"image": pa.array([{"bytes": b"x", "path": None}], IMAGE_TYPE), "image_url": ["u"]})
    path = write_parquet(tmp_path / "data" / "train-00000-of-00001.parquet", table, {"image": {"_type": "Image"}})
    with pytest.raises(SourceError) as error:
        list(read_file(path))
    message = str(error.value)
    assert "['image', 'image_url']" in message and "theodor1289/wit" in message and "img2dataset" in message
    assert "\n" not in message


def test_a_source_with_nothing_readable_is_an_error_naming_what_is_there(shared_data: Path, tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "README.md").write_text("# nothing\n")
    (tmp_path / "docs" / "notes.md").write_text("# nothing\n")
    with pytest.raises(SourceError, match=r"docs holds 2 files \(\.md x2\), none a WiT file"):
        run_prepare([tmp_path / "docs"], tmp_path / "out")
    rows = real_rows(shared_data)[:2]
    write_parquet(tmp_path / "data" / "train-00000-of-00001.parquet", _theodor_table(rows, [None, None]),
                  THEODOR_FEATURES)
    with pytest.raises(SourceError, match=r"no row was kept from .*holds 1 file \(\.parquet x1\).*'null image': 2"):
        run_prepare([tmp_path / "data"], tmp_path / "out2")
    assert f"WiT source file {tmp_path / 'data' / 'train-00000-of-00001.parquet'} yielded no rows (2 records " \
           "skipped)" in caplog.text


def test_an_interrupted_parquet_prepare_resumes_to_the_same_shards(shared_data: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    source = _theodor(tmp_path / "wit", real_rows(shared_data))
    reference = run_prepare([source], tmp_path / "whole")
    from flava_jax.data import carve as carve_module

    original = carve_module._Carver.process
    calls = {"n": 0}

    def crashing(self: Any, window: Any, first: int, writers: Any) -> int:
        calls["n"] += 1
        if calls["n"] == 4:  # one chunk committed (2 windows), the next half written
            raise RuntimeError("interrupted")
        return original(self, window, first, writers)

    monkeypatch.setattr(carve_module._Carver, "process", crashing)
    with pytest.raises(RuntimeError, match="interrupted"):
        run_prepare([source], tmp_path / "resumed")
    assert 0 < json.loads((tmp_path / "resumed" / "progress.json").read_text())["source_records"] < 18
    monkeypatch.setattr(carve_module._Carver, "process", original)
    resumed = run_prepare([source], tmp_path / "resumed")
    assert resumed["shards"] == reference["shards"]  # file names, record counts and sha256
