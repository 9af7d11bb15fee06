"""The WiT readers on every real file in ../shared/data/wit (and the copies bundled in the package)."""

from __future__ import annotations

import base64
import csv
import dataclasses
import gzip
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from flava_jax.data.sample import SAMPLE_DIR
from flava_jax.data.sources.dispatch import read_source
from flava_jax.data.sources.rows import KAGGLE_COLUMNS, WIT_COLUMNS, Skip, WitRow
from flava_jax.data.sources.tfds_wit import read_tfds

TSV_FILES = {  # file below shared/data/wit -> number of data rows a reader must yield
    "tfds_dummy_data/wit/train-00000-of-00009.tsv": 3,
    "tfds_dummy_data/wit/test-00000-of-00005.tsv": 0,  # its only row has an unclosed quote
    "hf_datasets_wit_dummy/2a3cd16e/wit_v1.train.all-00000-of-00010.tsv.gz": 2,  # plain text despite .gz
    "tfds_dummy_data/wit_kaggle/train/ZIP.unzipped_train/train-00000-of-00005.tsv": 2,
}
JSON_FILES = {  # file -> rows (one per wit_features entry)
    "hf_datasets_wit_dummy/5923719/part-00000-48a6f07e-bb86-4735-aac7-883349f41a28-c000.json.gz": 14,  # gzip
    "hf_datasets_wit_dummy/f47dd42/part-00000-48a6f07e-bb86-4735-aac7-883349f41a28-c000.json.gz": 10,  # plain
}


def _raw(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def _expected_value(column: str, raw: str | None):
    """The reader's contract, written independently: "" is None, booleans and integers are typed."""
    if raw is None or raw.strip() == "":
        return None
    if column in ("original_height", "original_width"):
        return int(raw)
    if column in ("is_main_image", "attribution_passes_lang_id", "page_changed_recently"):
        return {"true": True, "false": False}[raw]
    return raw


@pytest.mark.parametrize("name", list(TSV_FILES))
def test_every_tsv_row_matches_the_file(shared_data: Path, name: str) -> None:
    path = shared_data / "wit" / name
    records = list(read_source(str(path)))
    rows = [r for r in records if isinstance(r, WitRow)]
    assert len(rows) == TSV_FILES[name]
    csv.field_size_limit(sys.maxsize)
    with open(path, encoding="utf-8", newline="") as f:
        raw_rows = [r for r in csv.DictReader(f, delimiter="\t") if None not in r.values()]
    assert len(raw_rows) == len(rows)
    columns = KAGGLE_COLUMNS if "kaggle" in name else WIT_COLUMNS
    for row, raw in zip(rows, raw_rows, strict=True):
        for column in columns:
            assert getattr(row, column) == _expected_value(column, raw[column]), (row.where, column)


def test_multiline_fields_booleans_and_gz_names(shared_data: Path) -> None:
    wit = shared_data / "wit"
    es, de, ru = [r for r in read_source(str(wit / "tfds_dummy_data/wit/train-00000-of-00009.tsv"))]
    assert es.context_page_description.startswith("La hoz y el martillo es un símbolo")
    assert "\nEl símbolo ―llamado серп и молот, serp i molot en idioma ruso― es conocido" in (
        es.context_page_description)
    assert es.context_section_description is None and es.caption_reference_description is None
    assert es.caption_attribution_description == "Galego: Logo do Movemento Galego ao Socialismo"
    # "false" is False: TFDS's builder turns every non-empty string into True.
    assert (es.is_main_image, es.attribution_passes_lang_id, es.page_changed_recently) == (False, False, True)
    assert de.is_main_image is True and (es.original_height, es.original_width) == (107, 272)
    assert es.where.endswith("train-00000-of-00009.tsv:2") and de.where.endswith(":4")  # es spans lines 2-3
    fr, nl = read_source(str(wit / "hf_datasets_wit_dummy/2a3cd16e/wit_v1.train.all-00000-of-00010.tsv.gz"))
    assert fr.caption_reference_description == "Daryl Clark, lauréat en 2014."
    assert fr.context_page_description.count("\n") == 1 and fr.context_section_description.count("\n") == 1
    assert nl.language == "nl" and nl.page_title == "Perigrapha (vlinder)"
    tg, en = read_source(str(wit / "tfds_dummy_data/wit_kaggle/train/ZIP.unzipped_train/train-00000-of-00005.tsv"))
    assert en.caption_title_and_reference_description == "Deer Park, Wisconsin [SEP] Downtown Deer Park"
    assert en.caption_reference_description == "Downtown Deer Park"


def test_unclosed_quote_is_a_reported_skip(shared_data: Path) -> None:
    (record,) = read_source(str(shared_data / "wit" / "tfds_dummy_data/wit/test-00000-of-00005.tsv"))
    assert isinstance(record, Skip)
    assert record.reason == "malformed TSV row" and "16 fields, expected 17" in record.detail
    assert record.where.endswith("test-00000-of-00005.tsv:2")


@pytest.mark.parametrize("name", list(JSON_FILES))
def test_every_json_row_matches_the_file(shared_data: Path, name: str) -> None:
    path = shared_data / "wit" / name
    rows = list(read_source(str(path)))
    assert len(rows) == JSON_FILES[name] and all(isinstance(r, WitRow) for r in rows)
    expected = []
    for line in _raw(path).decode().splitlines():
        record = json.loads(line)
        features = record["wit_features"]
        if isinstance(features, dict):  # dict of lists
            features = [dict(zip(features, values, strict=True)) for values in zip(*features.values(), strict=True)]
        for entry in features:
            expected.append((record, entry))
    images = {p.name: p.read_bytes() for p in (shared_data / "wit" / "images").iterdir()}
    for row, (record, entry) in zip(rows, expected, strict=True):
        for column in ("language", "page_url", "page_title", "section_title", "caption_reference_description",
                       "context_page_description", "context_section_description", "is_main_image"):
            raw = entry.get(column)
            assert getattr(row, column) == _expected_value(column, raw), (row.where, column)
        assert row.image_url == record["image_url"]
        attribution = record.get("caption_attribution_description")
        assert row.caption_attribution_description == _expected_value("", attribution)
        assert row.image_bytes == base64.b64decode(record["b64_bytes"])
        assert row.image_bytes in images.values()  # the decoded images shared/data/wit/images holds


def test_bundled_sample_copies_read_the_same(shared_data: Path) -> None:
    for bundled, original in (("wit_with_images_lord_warden.jsonl.gz", list(JSON_FILES)[0]),
                              ("wit_with_images_teucrium.jsonl", list(JSON_FILES)[1])):
        ours = [dict(vars(r), where="") for r in read_source(str(SAMPLE_DIR / "wit" / bundled))]
        theirs = [dict(vars(r), where="") for r in read_source(str(shared_data / "wit" / original))]
        assert ours == theirs


def test_bad_records_are_skips_not_crashes(tmp_path: Path) -> None:
    good = {"image_url": "u", "b64_bytes": base64.b64encode(b"x").decode(), "wit_features": [{"language": "en"}]}
    lines = [json.dumps(good), "{not json", json.dumps([1, 2]), json.dumps({**good, "b64_bytes": "!!"}),
             json.dumps({**good, "wit_features": {"language": ["en", "de"], "page_url": ["a"]}}),
             json.dumps({**good, "wit_features": [{"language": "en", "is_main_image": "maybe"}]})]
    (tmp_path / "bad.jsonl").write_text("\n".join(lines) + "\n")
    records = list(read_source(str(tmp_path / "bad.jsonl")))
    assert [type(r).__name__ for r in records] == ["WitRow", "Skip", "Skip", "Skip", "Skip", "Skip"]
    assert [r.reason for r in records[1:]] == ["bad JSON record"] * 4 + ["bad value"]
    (tmp_path / "bad.tsv").write_text("\t".join(WIT_COLUMNS) + "\n" + "\t".join(["en"] * 10 + ["tall"] + [""] * 6)
                                      + "\n")
    (skip,) = read_source(str(tmp_path / "bad.tsv"))
    assert skip.reason == "bad value" and "original_height='tall'" in skip.detail
    (tmp_path / "other.tsv").write_text("a\tb\n1\t2\n")
    assert [r.reason for r in read_source(str(tmp_path / "other.tsv"))] == ["unknown TSV header"]
    (tmp_path / "binary.tsv").write_bytes(b"\xff\xfe\x00garbage")
    assert [r.reason for r in read_source(str(tmp_path / "binary.tsv"))] == ["unknown TSV header"]


def _tsv_line(language: str, title: bytes) -> bytes:
    """A data line with `title` as page_title (raw bytes: may be invalid UTF-8 or a quoted multi-line field)."""
    return b"\t".join([language.encode(), b"p", b"u", title] + [b""] * 13) + b"\n"


@pytest.mark.parametrize("compress", [False, True])
def test_invalid_utf8_costs_only_its_row(tmp_path: Path, compress: bool) -> None:
    lines = [b"\t".join(c.encode() for c in WIT_COLUMNS) + b"\n", _tsv_line("en", b"before")]  # lines 1-2
    lines += [_tsv_line("de", b'"spans\nlines, bad on the second: \xff"')]  # lines 3-4
    lines += [_tsv_line("fr", b"Caf\xe9")]  # line 5: Latin-1, not UTF-8
    lines += [_tsv_line("nl", b"after \xc3\xa9")] * 2000  # lines 6-2005, valid "é"; far past any decoding block
    data = b"".join(lines)
    path = tmp_path / "wit.tsv.gz"
    path.write_bytes(gzip.compress(data) if compress else data)
    records = list(read_source(str(path)))
    rows = [r for r in records if isinstance(r, WitRow)]
    assert [(r.language, r.page_title, r.where) for r in rows[:2]] == [("en", "before", f"{path}:2"),
                                                                        ("nl", "after é", f"{path}:6")]
    assert len(rows) == 2001 and rows[-1].where == f"{path}:2005"
    skips = [r for r in records if isinstance(r, Skip)]
    assert [(s.reason, s.where) for s in skips] == [("invalid UTF-8", f"{path}:3"), ("invalid UTF-8", f"{path}:5")]
    assert "\\xe9" in skips[1].detail


def test_invalid_utf8_in_json_lines_costs_only_its_line(tmp_path: Path) -> None:
    def line(caption: str) -> bytes:
        return json.dumps({"image_url": "u", "wit_features": [{"language": "en", "caption_reference_description":
                                                              caption}]}).encode() + b"\n"

    path = tmp_path / "wit.jsonl"
    path.write_bytes(line("first") + line("bad XX").replace(b"XX", b"\xff\xfe") + line("third")
                     + line("\ud800 half a pair") + line("fifth"))
    records = list(read_source(str(path)))
    assert [(type(r).__name__, r.where) for r in records] == [
        ("WitRow", f"{path}:1#0"), ("Skip", f"{path}:2"), ("WitRow", f"{path}:3#0"), ("Skip", f"{path}:4#0"),
        ("WitRow", f"{path}:5#0")]
    assert records[1].reason == "invalid UTF-8" and "\\xff\\xfe" in records[1].detail
    assert records[3].reason == "bad value" and "surrogate" in records[3].detail
    assert [r.caption_reference_description for r in records[::2]] == ["first", "third", "fifth"]


def test_corrupt_gzip_is_an_unreadable_file_skip(tmp_path: Path) -> None:
    data = gzip.compress(b"\t".join(c.encode() for c in WIT_COLUMNS) + b"\n" + _tsv_line("en", b"x") * 50)
    path = tmp_path / "wit.tsv.gz"
    path.write_bytes(data[:12] + b"\xff" * 8 + data[20:])  # deflate data past the 10-byte gzip header
    (skip,) = read_source(str(path))
    assert skip.reason == "unreadable file" and skip.where.startswith(f"{path}:")


def test_a_file_without_rows_is_named_in_the_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "header_only.tsv").write_text("\t".join(WIT_COLUMNS) + "\n")
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    (tmp_path / "fine.jsonl").write_text(json.dumps({"image_url": "u", "wit_features": [{"language": "en"}]}))
    with caplog.at_level("WARNING"):
        for name in ("header_only.tsv", "bad.jsonl", "fine.jsonl"):
            list(read_source(str(tmp_path / name)))
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 2
    assert str(tmp_path / "header_only.tsv") in warned[0] and str(tmp_path / "bad.jsonl") in warned[1]


def test_tfds_source_drops_its_broken_booleans() -> None:
    """What tfds.data_source('wit') returns: bytes for text, "" for missing, booleans parsed as bool(str)."""
    item = {column: b"" for column in WIT_COLUMNS}
    item.update(language=b"en", image_url=b"https://x/y.jpg", caption_reference_description=b"Caption",
                original_height=10, original_width=20, is_main_image=True, page_changed_recently=True)
    (row,) = read_tfds([item], "tfds:wit/train")
    assert row.language == "en" and row.caption_reference_description == "Caption"
    assert row.page_title is None and (row.original_height, row.original_width) == (10, 20)
    assert row.is_main_image is None and row.page_changed_recently is None
    assert row.where == "tfds:wit/train#0"


def test_tfds_spec_goes_through_tfds_data_source(monkeypatch: pytest.MonkeyPatch) -> None:
    tfds = pytest.importorskip("tensorflow_datasets")
    calls = []

    def data_source(name: str, split: str, data_dir: str | None) -> list[dict]:
        calls.append((name, split, data_dir))
        return [{"language": b"en", "image_url": b"u", "page_url": b"p", "caption_reference_description": b"c"}]

    monkeypatch.setattr(tfds, "data_source", data_source)
    (row,) = read_source("tfds:wit/val@/data/tfds")
    assert calls == [("wit", "val", "/data/tfds")] and row.caption_reference_description == "c"
    list(read_source("tfds:"))
    assert calls[-1] == ("wit", "train", None)


def test_no_reader_imports_another() -> None:
    """A new format is one new module: readers build only on the shared rows (and parquet_files); only dispatch
    knows them all."""
    import ast

    import flava_jax.data.sources as package

    folder = Path(package.__file__).parent
    shared = {"rows", "parquet_files"}
    readers = {p.stem for p in folder.glob("*.py")} - shared - {"__init__", "dispatch"}
    assert {"tsv", "json_lines", "tfds_wit", "hub_parquet", "img2dataset", "coco"} <= readers
    for name in readers | shared:
        tree = ast.parse((folder / f"{name}.py").read_text())
        imported = {alias.name.rpartition(".")[2] if node.module == "flava_jax.data.sources" else
                    node.module.rpartition(".")[2]
                    for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
                    and node.module.startswith("flava_jax.data.sources") for alias in node.names}
        assert imported <= (shared - {name} if name in readers else {"rows"}), (name, imported)


def _without_where(records: list[Any]) -> list[Any]:
    return [dataclasses.replace(r, where="") for r in records]


def test_slices_read_what_the_whole_files_hold(tmp_path: Path) -> None:
    """Every kind of source cut into slices of 3 records: the slices, read one after another, hold the whole files'
    records in order (JSON lines by byte ranges, a line in the range it starts in; parquet by row groups; COCO by
    images; TSV by records), and the slices of a file that is read again are the same."""
    import pyarrow as pa

    from flava_jax.data.sample import SAMPLE_DIR
    from flava_jax.data.sources.dispatch import plan_slices, read_slice
    from tests.data.wit_rows import write_json_with_images, write_parquet

    photos = sorted((SAMPLE_DIR / "images").glob("*"))
    jsonl = write_json_with_images(tmp_path / "rows.json", [p.read_bytes() for p in photos] * 3)
    with open(jsonl, "a") as f:
        f.write("\n{not json\n\n")
    gz = tmp_path / "gz" / "rows.json.gz"
    gz.parent.mkdir()
    gz.write_bytes(gzip.compress(jsonl.read_bytes()))
    context = {k: [f"{k} {i}" for i in range(7)] for k in ("context_page_description", "context_section_description",
                                                          "caption_alt_text_description")}
    table = pa.table({"image": [{"bytes": photos[i % 4].read_bytes(), "path": None} for i in range(7)],
                      "image_url": [f"u{i}" for i in range(7)], "text": [f"caption {i}" for i in range(7)], **context})
    parquet = write_parquet(tmp_path / "pq" / "train-00000-of-00001.parquet", table, {"image": {"_type": "Image"}})
    coco = tmp_path / "coco" / "captions_x.json"
    coco.parent.mkdir()
    coco.write_text(json.dumps({"images": [{"id": i, "file_name": f"{i}.jpg"} for i in range(8)],
                                "annotations": [{"id": 100 + i, "image_id": i, "caption": f"c{i}"} for i in range(8)]
                                + [{"id": 99, "image_id": 42, "caption": "of no image"}]}))
    tsv = tmp_path / "rows.tsv"
    with open(tsv, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(WIT_COLUMNS)
        for i in range(8):
            writer.writerow(["en", f"p{i}", f"u{i}", "", "", "", f"caption\n{i}" if i % 2 else f"c {i}"]
                            + [""] * (len(WIT_COLUMNS) - 7))
    for source, slices in ((jsonl, range(3, 8)), (gz, [1]), (parquet, [2]), (coco, [3]), (tsv, [3])):
        planned = list(plan_slices([str(source)], 3))
        assert len(planned) in slices, (source, planned)
        assert planned == list(plan_slices([str(source)], 3))
        sliced = [record for piece in planned for record in read_slice(piece)]
        whole = list(read_source(str(source)))
        assert _without_where(sliced) == _without_where(whole), source
        assert len(whole) >= 7
    for piece in plan_slices([str(jsonl)], 3):  # line numbers in the first range, byte offsets after it
        place = r":\d+" if piece.start == 0 else r"@\d+"
        assert all(re.fullmatch(rf"{re.escape(str(jsonl))}{place}(#0)?", r.where) for r in read_slice(piece))
    assert [r.where for r in read_slice(next(plan_slices([str(jsonl)], 3)))][:2] == [f"{jsonl}:1#0", f"{jsonl}:2#0"]
