"""prepare: budgets on a generated corpus with known word counts, nesting, determinism, held-out split, resume."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from flava_jax.data import records
from flava_jax.data.prepare import prepare, read_stream
from flava_jax.data.tokenizer import Tokenizer
from flava_jax.data.wit import WIT_COLUMNS
from tests.configs import prepare_settings

ROWS = 240


def _row(i: int) -> dict[str, Any]:
    """Row i of the corpus: its fields, and whether the reference would keep it."""
    return dict(
        language="de" if i % 7 == 3 else "en",
        page_url=f"https://en.wikipedia.org/wiki/Page_{i}",
        image_url=f"https://upload.wikimedia.org/x/img{i}.jpg",
        caption_reference_description=None if i % 11 == 5 else f"caption {i}" + " word" * (i % 5),
        context_page_description=f"page {i}" + " text" * (3 + i % 4),
        context_section_description=f"section {i} of the page" if i % 3 == 0 else None,
        caption_alt_text_description=f"alt {i} text" if i % 13 == 0 else None,
        caption_attribution_description=f"attribution {i}",  # never used
    )


def _texts(row: dict[str, Any]) -> list[str]:
    keys = ("caption_reference_description", "context_page_description", "context_section_description",
            "caption_alt_text_description")
    return [row[k] for k in keys if row[k] is not None]


def _eligible() -> list[int]:
    return [i for i in range(ROWS) if _row(i)["language"] == "en" and _row(i)["caption_reference_description"]]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("corpus")
    images = root / "images"
    images.mkdir()
    with open(root / "rows.tsv", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(WIT_COLUMNS)
        for i in range(ROWS):
            row = _row(i)
            writer.writerow(["" if row.get(c) is None else row[c] for c in WIT_COLUMNS])
            Image.new("RGB", (12, 9), (i % 256, (7 * i) % 256, 50)).save(images / f"img{i}.jpg")
    return root / "rows.tsv", images


def _prepare(corpus: tuple[Path, Path], out: Path, **changes: Any) -> dict[str, Any]:
    settings = dict(text_words=-1, images=-1, vocab_size=128, heldout_fraction=0.0, image_size=16,
                    image_dirs=(str(corpus[1]),), download=False, chunk_records=37, fetch_batch=16)
    return prepare(prepare_settings(**{**settings, **changes}), [str(corpus[0])], out)


def _stream(out: Path, name: str) -> list[records.Example]:
    return [records.decode(r) for r in read_stream(out, name)]


@pytest.mark.parametrize("words", [1, 60, 333, 1000])
def test_text_budget_is_met_within_one_example(corpus: tuple[Path, Path], tmp_path: Path, words: int) -> None:
    manifest = _prepare(corpus, tmp_path, text_words=words, images=0)
    texts = [e.text for e in _stream(tmp_path, "text")]
    counted = sum(len(t.split()) for t in texts)
    assert manifest["words"]["text"] == counted
    assert counted >= words and counted - len(texts[-1].split()) < words
    expected = [t for i in _eligible() for t in _texts(_row(i))]
    assert texts == expected[:len(texts)]  # the corpus's own order: a prefix
    assert not manifest["kept"]["image"] and not manifest["kept"]["pair"]


def test_budgets_nest_and_pairs_take_the_smaller(corpus: tuple[Path, Path], tmp_path: Path) -> None:
    budgets = [(200, 30), (600, 10), (2000, 60)]
    streams = {}
    for words, images in budgets:
        out = tmp_path / f"{words}_{images}"
        manifest = _prepare(corpus, out, text_words=words, images=images)
        streams[words, images] = {s: _stream(out, s) for s in ("text", "image", "pair")}
        assert manifest["kept"]["image"] == images
        text_rows = [e.row for e in streams[words, images]["text"]]
        image_rows = [e.row for e in streams[words, images]["image"]]
        full_rows = [r for r in set(text_rows) if text_rows.count(r) == len(_texts(_row(_eligible()[r])))]
        pair_rows = sorted({e.row for e in streams[words, images]["pair"]})
        assert pair_rows == sorted(set(full_rows) & set(image_rows))  # rows inside both prefixes
        for example in streams[words, images]["pair"]:  # each pair: a text of the row, with the row's image
            assert example.text in _texts(_row(_eligible()[example.row]))
            assert example.image == next(e.image for e in streams[words, images]["image"] if e.row == example.row)
    for small, large in ((budgets[0], budgets[2]), (budgets[1], budgets[2])):
        for stream in ("text", "image", "pair"):
            a, b = streams[small][stream], streams[large][stream]
            assert b[:len(a)] == a, f"{stream} of {small} is not a prefix of {large}"


def test_manifest_counts_hashes_and_skips(corpus: tuple[Path, Path], tmp_path: Path) -> None:
    manifest = _prepare(corpus, tmp_path)
    assert manifest["skipped"] == {"language not en": sum(_row(i)["language"] == "de" for i in range(ROWS)),
                                   "no caption": sum(_row(i)["language"] == "en" and not _row(i)[
                                       "caption_reference_description"] for i in range(ROWS))}
    eligible = _eligible()
    assert manifest["train_rows"] == manifest["kept"]["image"] == len(eligible)
    assert manifest["kept"]["text"] == manifest["kept"]["pair"] == sum(len(_texts(_row(i))) for i in eligible)
    assert manifest["words"]["text"] == sum(len(t.split()) for i in eligible for t in _texts(_row(i)))
    for shards in manifest["shards"].values():
        for shard in shards:
            assert hashlib.sha256((tmp_path / shard["file"]).read_bytes()).hexdigest() == shard["sha256"]
    tokenizer = Tokenizer.load(tmp_path / "tokenizer.model")
    assert manifest["tokenizer"]["vocab_size"] == tokenizer.vocab_size <= 128
    assert not any("attribution" in e.text for e in _stream(tmp_path, "text"))
    # The stored images are the corpus's, squashed to 16x16.
    first = Image.open(__import__("io").BytesIO(_stream(tmp_path, "image")[0].image))
    assert first.size == (16, 16) and first.mode == "RGB"


def test_same_seed_same_shards_and_a_seeded_heldout(corpus: tuple[Path, Path], tmp_path: Path) -> None:
    a = _prepare(corpus, tmp_path / "a", heldout_fraction=0.3, seed=1)
    b = _prepare(corpus, tmp_path / "b", heldout_fraction=0.3, seed=1)
    c = _prepare(corpus, tmp_path / "c", heldout_fraction=0.3, seed=2)
    assert a["shards"] == b["shards"] and a["tokenizer"] == b["tokenizer"]
    assert a["shards"] != c["shards"]
    heldout = {e.text for e in _stream(tmp_path / "a", "heldout")}
    train = {e.text for e in _stream(tmp_path / "a", "text")}
    assert heldout and not heldout & train
    rows = len(_eligible())
    share = 1 - a["train_rows"] / rows
    assert abs(share - 0.3) < 3 * np.sqrt(0.3 * 0.7 / rows)


class _Crash(RuntimeError):
    pass


def test_an_interrupted_prepare_resumes_to_the_same_result(corpus: tuple[Path, Path], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    reference = _prepare(corpus, tmp_path / "whole", text_words=900, images=50)
    from flava_jax.data import prepare as prepare_module

    calls = {"n": 0}
    original = prepare_module._Carver.process

    def crashing(self: Any, window: Any, writers: Any) -> int:
        calls["n"] += 1
        if calls["n"] == 8:  # two chunks (3 windows each) committed, the third half written
            raise _Crash
        return original(self, window, writers)

    monkeypatch.setattr(prepare_module._Carver, "process", crashing)
    with pytest.raises(_Crash):
        _prepare(corpus, tmp_path / "resumed", text_words=900, images=50)
    progress = json.loads((tmp_path / "resumed" / "progress.json").read_text())
    assert 0 < progress["source_records"] < reference["source_records"]
    assert any(p.suffix == ".tmp" for p in (tmp_path / "resumed").rglob("*"))  # the half-written chunk
    monkeypatch.setattr(prepare_module._Carver, "process", original)
    resumed = _prepare(corpus, tmp_path / "resumed", text_words=900, images=50)
    assert not any(p.suffix == ".tmp" for p in (tmp_path / "resumed").rglob("*"))
    for key in ("kept", "words", "skipped", "train_rows", "source_records", "tokenizer", "shards"):
        assert resumed[key] == reference[key], key
    for stream in ("text", "image", "pair"):
        assert [e for e in _stream(tmp_path / "resumed", stream)] == [e for e in _stream(tmp_path / "whole", stream)]
    with pytest.raises(SystemExit, match="other settings"):
        _prepare(corpus, tmp_path / "resumed", text_words=901, images=50)


def test_command_line_on_the_debug_config(tmp_path: Path) -> None:
    """`python -m flava_jax.data.prepare --config=configs/debug.py --out=DIR`, with a config override and the
    image work in two worker processes."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    command = [sys.executable, "-m", "flava_jax.data.prepare", "--config=configs/debug.py", f"--out={tmp_path}",
               "--config.data.heldout_fraction=0.5", "--workers=2"]
    result = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["settings"]["heldout_fraction"] == 0.5 and manifest["settings"]["prepare_workers"] == 2
    assert manifest["kept"]["pair"] > 0 and manifest["kept"]["heldout"] > 0 and manifest["complete"]
    assert json.loads(result.stdout)["kept"] == manifest["kept"]
    again = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=600, check=False)
    assert again.returncode == 0 and "already complete" in again.stderr


def test_invalid_bytes_cost_their_rows_only_and_are_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Five rows with a Latin-1 byte in their page title: the other rows are all kept, the first three skips are
    logged with their file:line, and the tokenizer is written."""
    bad = (10, 20, 30, 40, 50)
    lines = [b"\t".join(c.encode() for c in WIT_COLUMNS)]
    for i in range(ROWS):
        row = {**_row(i), "page_title": "Caf\xe9" if i in bad else "Cafe"}
        lines.append(b"\t".join(b"" if row.get(c) is None else row[c].encode("latin-1") for c in WIT_COLUMNS))
    (tmp_path / "rows.tsv").write_bytes(b"\n".join(lines) + b"\n")
    settings = prepare_settings(text_words=-1, images=0, require_image=False, vocab_size=128, heldout_fraction=0.0,
                                download=False, chunk_records=37)
    with caplog.at_level("WARNING"):
        manifest = prepare(settings, [str(tmp_path / "rows.tsv")], tmp_path / "out")
    assert manifest["skipped"]["invalid UTF-8"] == len(bad)
    kept = [i for i in _eligible() if i not in bad]
    assert [e.text for e in _stream(tmp_path / "out", "text")] == [t for i in kept for t in _texts(_row(i))]
    logged = [r.getMessage() for r in caplog.records if "invalid UTF-8" in r.getMessage()]
    assert [m.split(": ")[0] for m in logged] == [f"{tmp_path / 'rows.tsv'}:{i + 2}" for i in bad[:3]]
    assert manifest["tokenizer"] and (tmp_path / "out" / manifest["tokenizer"]["file"]).is_file()
