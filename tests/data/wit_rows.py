"""Fixture material for the parquet and img2dataset sources: the real captioned WiT rows and the photos in
../shared/data, the same rows as a WiT TSV with their images in a folder (the route prepare read before), and
parquet writing with the `huggingface` schema metadata that `datasets` writes."""

from __future__ import annotations

import base64
import csv
import dataclasses
import io
import json
import urllib.parse
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from flava_jax.data.prepare import prepare, read_stream
from flava_jax.data.records import decode
from flava_jax.data.sources.dispatch import read_source
from flava_jax.data.sources.rows import WIT_COLUMNS, WitRow
from tests.configs import prepare_settings

WIT_FILES = ("hf_datasets_wit_dummy/2a3cd16e/wit_v1.train.all-00000-of-00010.tsv.gz",
             "hf_datasets_wit_dummy/5923719/part-00000-48a6f07e-bb86-4735-aac7-883349f41a28-c000.json.gz",
             "hf_datasets_wit_dummy/f47dd42/part-00000-48a6f07e-bb86-4735-aac7-883349f41a28-c000.json.gz",
             "tfds_dummy_data/wit_kaggle/train/ZIP.unzipped_train/train-00000-of-00005.tsv")
TEXT_FIELDS = ("caption_reference_description", "context_page_description", "context_section_description",
               "caption_alt_text_description")
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # `datasets`' Image feature


def real_rows(shared: Path) -> list[dict[str, Any]]:
    """The captioned rows of the real WiT files (18), as field dicts, each given its own image URL naming one of
    the photos (by turns), so that every row has a distinct image."""
    photos = sorted((shared / "photos" / "skimage").glob("*.[jp][pn]g"))
    rows = []
    for path in WIT_FILES:
        for record in read_source(str(shared / "wit" / path)):
            if isinstance(record, WitRow) and record.caption_reference_description is not None:
                fields = {f.name: getattr(record, f.name) for f in dataclasses.fields(WitRow)
                          if f.name not in ("split", "image_bytes", "where")}
                photo = photos[len(rows) % len(photos)]
                fields["image_url"] = f"https://upload.wikimedia.org/wikipedia/commons/a/ab/Row_{len(rows)}_{photo.name}"
                rows.append({**fields, "photo": photo})
    assert len(rows) == 18
    return rows


def png_224(photo: Path) -> bytes:
    """The paper's carve of an image: RGB, squashed to 224x224 (bicubic), stored by `datasets` as PNG."""
    out = io.BytesIO()
    Image.open(photo).convert("RGB").resize((224, 224), Image.Resampling.BICUBIC).save(out, format="PNG")
    return out.getvalue()


def url_name(url: str) -> str:
    return urllib.parse.unquote(Path(urllib.parse.urlparse(url).path).name)


def write_tsv(rows: list[dict[str, Any]], images: list[bytes], root: Path) -> tuple[Path, Path]:
    """`rows` as an official WiT TSV, and a folder holding each row's image under its URL's file name."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir()
    with open(root / "rows.tsv", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(WIT_COLUMNS)
        for row, image in zip(rows, images, strict=True):
            writer.writerow([_tsv_value(row.get(c)) for c in WIT_COLUMNS])
            (root / "images" / url_name(row["image_url"])).write_bytes(image)
    return root / "rows.tsv", root / "images"


def _tsv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def write_parquet(path: Path, table: pa.Table, features: dict[str, Any], row_group_size: int = 2) -> Path:
    """`table` with the schema metadata `datasets` writes (its features, e.g. {"image": {"_type": "Image"}})."""
    metadata = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.replace_schema_metadata(metadata), path, row_group_size=row_group_size)
    return path


def collapsed(row: dict[str, Any]) -> list[str]:
    """The paper's collapsing, written out: caption, page, section, alt text, whichever are there."""
    return [row[k] for k in TEXT_FIELDS if row.get(k) is not None]


def run_prepare(sources: list[Path], out: Path, **changes: Any) -> dict[str, Any]:
    settings = dict(text_words=-1, images=-1, vocab_size=128, heldout_fraction=0.0, image_size=16, download=False,
                    chunk_records=5, fetch_batch=3, tokenizer="bert-base-uncased", heldout_max_texts=10_000)
    return prepare(prepare_settings(**{**settings, **changes}), [str(s) for s in sources], out)


def streams(out: Path, *names: str) -> dict[str, list[Any]]:
    """The examples of the named streams, each row id replaced by its rank among the rows of all of them: ids are
    places in the sources (flava_jax/data/carve.py), which differ between two layouts of the same rows, while their
    order and which examples share a row do not."""
    examples = {name: [decode(r) for r in read_stream(out, name)] for name in names}
    rank = {row: i for i, row in enumerate(sorted({e.row for found in examples.values() for e in found}))}
    return {name: [e._replace(row=rank[e.row]) for e in found] for name, found in examples.items()}


def write_json_with_images(path: Path, images: list[bytes]) -> Path:
    """A "WIT with images" JSON-lines file: one English row per image, the image inline as base64."""
    with open(path, "w", encoding="utf-8") as f:
        for i, data in enumerate(images):
            f.write(json.dumps({"image_url": f"https://upload.wikimedia.org/x/{i}.jpg",
                                "b64_bytes": base64.b64encode(data).decode(),
                                "wit_features": [{"language": "en", "page_url": f"https://en.wikipedia.org/wiki/P{i}",
                                                  "caption_reference_description": f"Caption number {i}"}]}) + "\n")
    return path


def threaded_pool(workers: int, mp_context: Any = None, initializer: Any = None,
                  initargs: tuple[Any, ...] = ()) -> Any:
    """prepare's worker pool as threads of this process (patch it over concurrent.futures.ProcessPoolExecutor): the
    same speculation, verdicts and carving again as processes, completions out of order included, without spawning."""
    import concurrent.futures

    return concurrent.futures.ThreadPoolExecutor(workers, initializer=initializer, initargs=initargs)
