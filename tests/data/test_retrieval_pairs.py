"""Retrieval pairs from prepared data, parquet (HF's Image feature) and TSV, with bad rows counted; an image that
does not decode is dropped with its texts."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from flava_jax.data import retrieval_pairs as pairs


def _png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, "PNG")
    return buffer.getvalue()


def test_pairs_from_parquet_with_hfs_image_feature(tmp_path: Path) -> None:
    red, blue = _png((255, 0, 0)), _png((0, 0, 255))
    (tmp_path / "blue.png").write_bytes(blue)
    table = pa.table({
        "caption": ["a red square", "red again", "", "a blue square", "nothing", "far away"],
        "image": [{"bytes": red, "path": None}, {"bytes": red, "path": "x.png"}, {"bytes": blue, "path": None},
                  {"bytes": None, "path": "blue.png"}, {"bytes": None, "path": None},
                  {"bytes": None, "path": "../outside.png"}]})
    features = {"caption": {"dtype": "string", "_type": "Value"}, "image": {"_type": "Image"}}
    table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    (tmp_path.parent / "outside.png").write_bytes(red)
    pq.write_table(table, tmp_path / "pairs.parquet")
    found = pairs.read_pairs(tmp_path / "pairs.parquet")
    assert found.texts == ["a red square", "red again", "a blue square"]
    np.testing.assert_array_equal(found.image_of_text, [0, 0, 1])  # the same bytes are one image
    assert [read() for read in found.images] == [red, blue]
    assert found.skipped == {"empty text": 1, "no image": 1, "image path outside the pairs' folder": 1}


def test_pairs_from_a_tsv_of_paths(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(_png((0, 255, 0)))
    (tmp_path / "pairs.tsv").write_text("image\ttext\nimg/a.png\tgreen\nimg/a.png\tstill green\n"
                                        "/etc/passwd\tabsolute\nimg/missing.png\tgone\n")
    found = pairs.read_pairs(tmp_path / "pairs.tsv", limit=2)
    assert found.texts == ["green", "still green"]
    assert found.names == [str((tmp_path / "img" / "a.png").resolve())]
    found = pairs.read_pairs(tmp_path / "pairs.tsv")
    assert found.skipped == {"image path outside the pairs' folder": 1, "image file missing": 1}
    (tmp_path / "none.tsv").write_text("image\ttext\n")
    with pytest.raises(ValueError, match="holds no usable image-text pair"):
        pairs.read_pairs(tmp_path / "none.tsv")
    (tmp_path / "bad.tsv").write_text("picture\tcaption\n")
    with pytest.raises(ValueError, match="needs a header with a text column"):
        pairs.read_pairs(tmp_path / "bad.tsv")


def test_an_image_that_does_not_decode_takes_its_texts_with_it(tmp_path: Path) -> None:
    from flava_jax.data.eval_images import UNREADABLE, load_resized

    (tmp_path / "good.png").write_bytes(_png((1, 2, 3)))
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    (tmp_path / "pairs.tsv").write_text("file\ttext\ngood.png\tone\nbad.jpg\ttwo\nbad.jpg\tthree\ngood.png\tfour\n")
    found = pairs.read_pairs(tmp_path / "pairs.tsv")
    pixels, kept, skipped = load_resized(found.images, found.names, 4)
    assert kept == [0] and pixels.shape == (1, 4, 4, 3) and pixels[0, 0, 0].tolist() == [1, 2, 3]
    found = found.keep_images(kept, skipped)
    assert found.texts == ["one", "four"] and found.image_of_text.tolist() == [0, 0]
    assert found.skipped == {UNREADABLE: 1, "text of an image that does not decode": 2}
