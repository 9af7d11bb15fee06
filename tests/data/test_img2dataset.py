"""img2dataset output (parquet and webdataset) built from the real WiT rows and photos in ../shared/data, prepared
end to end and compared with the same rows prepared from a TSV."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from flava_jax.data.prepare import HELDOUT, HELDOUT_IMAGE
from flava_jax.data.sources.dispatch import read_source, source_files
from flava_jax.data.sources.img2dataset import read_webdataset
from flava_jax.data.sources.rows import WitRow
from tests.data.wit_rows import real_rows, run_prepare, streams, write_parquet, write_tsv

EXTRA = ("language", "page_url", "context_page_description", "context_section_description",
         "caption_alt_text_description")  # --save_additional_columns
NAMES = ("text", "image", "pair", HELDOUT, HELDOUT_IMAGE)
FAILED = 3  # the row whose download failed (HTTP 429)


def _metadata(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """img2dataset's per-sample metadata, with row FAILED failed."""
    samples = []
    for i, row in enumerate(rows):
        failed = i == FAILED
        samples.append({"key": f"00000{i:04d}", "url": row["image_url"],
                        "caption": row["caption_reference_description"],
                        "status": "failed_to_download" if failed else "success",
                        "error_message": "HTTP Error 429: Too Many Requests" if failed else None,
                        "width": None if failed else 512, "height": None if failed else 512,
                        **{c: row[c] for c in EXTRA}})
    return samples


def _tsv_of_successes(rows: list[dict[str, Any]], root: Path) -> tuple[Path, Path]:
    kept = [r for i, r in enumerate(rows) if i != FAILED]
    return write_tsv(kept, [r["photo"].read_bytes() for r in kept], root)


def test_parquet_output_prepares_like_the_tsv(shared_data: Path, tmp_path: Path) -> None:
    rows = real_rows(shared_data)
    samples = _metadata(rows)
    table = pa.Table.from_pylist([{**s, "jpg": None if i == FAILED else rows[i]["photo"].read_bytes()}
                                  for i, s in enumerate(samples)])
    write_parquet(tmp_path / "i2d" / "00000.parquet", table, {}, row_group_size=4)
    (tmp_path / "i2d" / "00000_stats.json").write_text(json.dumps({"count": 18, "successes": 17}, indent=4))
    assert [p.name for p in source_files(str(tmp_path / "i2d"))] == ["00000.parquet"]  # not the stats
    manifest = run_prepare([tmp_path / "i2d"], tmp_path / "out", heldout_fraction=0.3)
    tsv, images = _tsv_of_successes(rows, tmp_path / "tsv")
    run_prepare([tsv], tmp_path / "from_tsv", image_dirs=(str(images),), heldout_fraction=0.3)
    assert streams(tmp_path / "out", *NAMES) == streams(tmp_path / "from_tsv", *NAMES)
    other_languages = sum(r["language"] != "en" for i, r in enumerate(rows) if i != FAILED)
    assert manifest["skipped"] == {"img2dataset: failed_to_download": 1, "language not en": other_languages}
    assert manifest["kept"]["image"] + manifest["kept"][HELDOUT] > 0


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _webdataset(rows: list[dict[str, Any]], root: Path, drop_json_of: int) -> Path:
    """A shard as img2dataset writes it: {key}.jpg/.json/.txt for each success, the shard's metadata parquet (every
    sample, no image column) and its stats beside it; one sample lost its json member."""
    root.mkdir(parents=True)
    samples = _metadata(rows)
    with tarfile.open(root / "00000.tar", "w") as tar:
        for i, sample in enumerate(samples):
            if i == FAILED:
                continue
            _member(tar, f"{sample['key']}.jpg", rows[i]["photo"].read_bytes())
            if i != drop_json_of:
                _member(tar, f"{sample['key']}.json", json.dumps(sample).encode())
            _member(tar, f"{sample['key']}.txt", sample["caption"].encode())
    write_parquet(root / "00000.parquet", pa.Table.from_pylist(samples), {}, row_group_size=4)
    (root / "00000_stats.json").write_text(json.dumps({"count": len(samples)}, indent=4))
    return root


def test_webdataset_output_prepares_like_the_tsv(shared_data: Path, tmp_path: Path) -> None:
    rows = real_rows(shared_data)
    english = [{**r, "language": "en"} for r in rows]
    source = _webdataset(english, tmp_path / "i2d", drop_json_of=5)
    assert [p.name for p in source_files(str(source))] == ["00000.tar"]  # its parquet and stats are metadata
    manifest = run_prepare([source], tmp_path / "out", heldout_fraction=0.3)
    tsv, images = _tsv_of_successes([r for i, r in enumerate(english) if i != 5], tmp_path / "tsv")
    run_prepare([tsv], tmp_path / "from_tsv", image_dirs=(str(images),), heldout_fraction=0.3)
    assert streams(tmp_path / "out", *NAMES) == streams(tmp_path / "from_tsv", *NAMES)
    assert manifest["skipped"] == {"img2dataset: failed_to_download": 1, "webdataset: member missing": 1}
    skips = [r for r in read_source(str(source)) if not isinstance(r, WitRow)]
    assert [(s.reason, s.where.rsplit(":", 1)[1]) for s in skips] == [
        ("img2dataset: failed_to_download", "000000003"), ("webdataset: member missing", "000000005")]
    assert "429" in skips[0].detail and "['jpg', 'txt']" in skips[1].detail


def test_a_truncated_shard_is_a_counted_skip(shared_data: Path, tmp_path: Path) -> None:
    source = _webdataset(real_rows(shared_data), tmp_path / "i2d", drop_json_of=-1)
    data = (source / "00000.tar").read_bytes()
    (source / "00000.tar").write_bytes(data[:len(data) // 2])
    records = list(read_webdataset(source / "00000.tar"))
    assert records[-1].reason == "unreadable file" and "rest of the shard is lost" in records[-1].detail
    assert 0 < sum(isinstance(r, WitRow) for r in records) < 17


def test_caption_only_output_needs_the_language_filter_off(shared_data: Path, tmp_path: Path) -> None:
    """img2dataset run on a caption dataset saves no language: with the default filter prepare stops at start-up in
    one line naming the switch (rather than skipping every row as "language not en"); with data.language=None each
    successful sample's caption is one text, in order."""
    from flava_jax.common.settings import ConfigError
    from flava_jax.data.prepare import PrepareSettings
    from tests.configs import load_config

    rows = real_rows(shared_data)
    samples = [{k: v for k, v in s.items() if k not in EXTRA} for s in _metadata(rows)]
    table = pa.Table.from_pylist([{**s, "jpg": None if i == FAILED else rows[i]["photo"].read_bytes()}
                                  for i, s in enumerate(samples)])
    write_parquet(tmp_path / "i2d" / "00000.parquet", table, {}, row_group_size=4)
    with pytest.raises(ConfigError, match=r"config\.data\.language='en' .* no language column .*"
                                          r"--config\.data\.language=None"):
        run_prepare([tmp_path / "i2d"], tmp_path / "refused")
    assert not list((tmp_path / "refused").glob("*/*.arrayrecord*"))
    manifest = run_prepare([tmp_path / "i2d"], tmp_path / "out", language=None)
    assert manifest["skipped"] == {"img2dataset: failed_to_download": 1}
    texts = [example.text for example in streams(tmp_path / "out", "text")["text"]]
    assert texts == [r["caption_reference_description"] for i, r in enumerate(rows) if i != FAILED]
    for value in ("None", ""):  # what the command line can say
        assert PrepareSettings.from_config(load_config("debug", data__language=value)).language is None
