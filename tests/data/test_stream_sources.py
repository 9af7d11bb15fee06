"""Sources per stream (flava_jax/data/stream_sources.py): WiT's text with an img2dataset caption dataset's images and
pairs, the paper's "stronger alignment" check, prepared from real rows and photos and trained end to end."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import pyarrow as pa
import pytest

from flava_jax.common.settings import ConfigError
from flava_jax.data.prepare import HELDOUT, HELDOUT_PAIR, PrepareSettings, tokenizer_path
from flava_jax.data.sample import SAMPLE_DIR
from flava_jax.data.stream_sources import StreamSources, prepare_streams
from flava_jax.train.trainer import Trainer
from tests.configs import debug_config
from tests.data.wit_rows import collapsed, real_rows, run_prepare, streams, write_parquet, write_tsv

BASE = dict(text_words=-1, images=-1, vocab_size=128, heldout_fraction=0.0, image_size=16, download=False,
            chunk_records=5, fetch_batch=3, tokenizer="bert-base-uncased", heldout_max_texts=10_000)


def _captions(photos: list[Path], root: Path, first: int = 0) -> tuple[Path, list[str]]:
    """An img2dataset parquet of caption-only samples (no language column, as for CC3M) over `photos`, and their
    captions."""
    captions = [f"a photo numbered {first + i} of {photo.stem}" for i, photo in enumerate(photos)]
    table = pa.Table.from_pylist([{"key": f"{first + i:09d}", "url": f"https://example.org/{first + i}.jpg",
                                   "caption": caption, "status": "success", "jpg": photo.read_bytes()}
                                  for i, (photo, caption) in enumerate(zip(photos, captions, strict=True))])
    return write_parquet(root / "00000.parquet", table, {}), captions


def _settings(**changes: Any) -> PrepareSettings:
    from tests.configs import prepare_settings

    return prepare_settings(**{**BASE, **changes})


def test_wit_text_with_caption_pairs(shared_data: Path, tmp_path: Path) -> None:
    """The text stream is the WiT carve's (English rows only), the image and pair streams the caption dataset's
    (every row: it records no language), each with its own held-out split; the manifest says which fed which."""
    rows = real_rows(shared_data)
    tsv, images = write_tsv(rows, [r["photo"].read_bytes() for r in rows], tmp_path / "wit")
    photos = sorted({r["photo"] for r in rows})
    pairs, captions = _captions(photos, tmp_path / "cc")
    sources = StreamSources(text=(str(tsv),), image=(str(pairs),), pair=(str(pairs),))
    settings = _settings(image_dirs=(str(images),), heldout_fraction=0.3)
    manifest = prepare_streams(settings, sources, tmp_path / "out")

    assert manifest["stream_sources"] == {"text": [str(tsv)], "image": [str(pairs)], "pair": [str(pairs)]}
    assert {folder: (carve["streams"], carve["language"]) for folder, carve in manifest["carves"].items()} == {
        "carve-text": (["text"], "en"), "carve-image-pair": (["image", "pair"], None)}
    out = streams(tmp_path / "out", "text", HELDOUT, "image", "pair", HELDOUT_PAIR)
    english = [text for row in rows if row["language"] == "en" for text in collapsed(row)]
    assert sorted(e.text for e in out["text"] + out[HELDOUT]) == sorted(english)
    assert out["text"] and out[HELDOUT]
    assert sorted(e.text for e in out["pair"] + out[HELDOUT_PAIR]) == sorted(captions)
    assert out["pair"] and out[HELDOUT_PAIR]
    assert len(out["image"]) == len(out["pair"]) == manifest["kept"]["image"]
    assert {e.image for e in out["image"]} == {e.image for e in out["pair"]}
    assert manifest["carves"]["carve-text"]["kept"]["image"] == 0  # the text carve stores no image
    assert all(s["file"].startswith("carve-text/") for name in ("text", HELDOUT) for s in manifest["shards"][name])
    assert all(s["file"].startswith("carve-image-pair/") for s in manifest["shards"]["pair"])
    assert tokenizer_path(tmp_path / "out") == tmp_path / "out" / "carve-text" / "vocab.txt"
    assert not (tmp_path / "out" / "carve-image-pair" / "vocab.txt").exists()

    # The same carves as each source prepared alone, for its own streams
    run_prepare([tsv], tmp_path / "wit_alone", image_dirs=(str(images),), heldout_fraction=0.3, images=0)
    run_prepare([pairs], tmp_path / "cc_alone", heldout_fraction=0.3, language=None)
    for alone, names in (("wit_alone", ("text", HELDOUT)), ("cc_alone", ("image", "pair", HELDOUT_PAIR))):
        assert streams(tmp_path / alone, *names) == streams(tmp_path / "out", *names)

    assert prepare_streams(settings, sources, tmp_path / "out") == manifest  # complete: read back
    other = dataclasses.replace(sources, pair=(str(tsv),))
    with pytest.raises(SystemExit, match="other settings or sources"):
        prepare_streams(settings, other, tmp_path / "out")


def test_a_language_filter_on_sources_without_one_stops(tmp_path: Path) -> None:
    photos = sorted((SAMPLE_DIR / "images").glob("*"))
    text, _ = _captions(photos[:2], tmp_path / "a")
    pairs, _ = _captions(photos[2:], tmp_path / "b", first=2)
    sources = StreamSources(text=(str(text),), image=(str(pairs),), pair=(str(pairs),))
    with pytest.raises(ConfigError, match="config.data.language=None"):
        prepare_streams(_settings(), sources, tmp_path / "out")
    manifest = prepare_streams(_settings(language=None), sources, tmp_path / "out")
    assert manifest["kept"]["text"] == 2 and manifest["kept"]["pair"] == 2


def test_stream_sources_from_config() -> None:
    data = debug_config().data
    default = tuple(data.sources)
    assert StreamSources.from_config(data) == StreamSources(default, default, default)
    assert StreamSources.from_config(data).single
    with data.unlocked():
        data.pair_sources = ("cc3m",)
    chosen = StreamSources.from_config(data, image=["coco"])
    assert chosen == StreamSources(default, ("coco",), ("cc3m",))
    assert list(chosen.carves().values()) == [["text"], ["image"], ["pair"]]
    assert StreamSources.from_config(data, ["wit"]) == StreamSources(("wit",), ("wit",), ("cc3m",))


@pytest.mark.slow
def test_a_run_trains_on_wit_text_and_caption_pairs(tmp_path: Path) -> None:
    """configs/debug.py with the bundled WiT sample as text and a caption dataset as images and pairs: the trainer
    prepares both carves and trains every objective to finite losses."""
    photos = sorted((SAMPLE_DIR / "images").glob("*"))
    pairs, _ = _captions(photos * 3, tmp_path / "cc")
    config = debug_config(total_steps=2, checkpoint_every_steps=2, compilation_cache_dir="")
    with config.unlocked():
        config.eval.evaluators = {}
        config.data.image_sources = config.data.pair_sources = (str(pairs),)
    summary = Trainer(config, tmp_path / "run", jax.devices()[:1]).run()
    assert summary["step"] == 2
    manifest = json.loads((tmp_path / "run" / "data" / "manifest.json").read_text())
    assert manifest["stream_sources"]["pair"] == [str(pairs)]
    assert manifest["stream_sources"]["text"] == [str(SAMPLE_DIR / "wit")]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [row for row in rows if "loss" in row]
    for name in ("mlm", "mim", "itm", "global_contrastive", "mmm_image", "mmm_text"):
        assert all(row[f"loss/{name}"] == row[f"loss/{name}"] for row in losses), name  # not NaN
        assert any(f"loss/{name}" in row for row in losses), name


def test_the_pairs_presets_feed_images_and_pairs_from_another_dataset() -> None:
    """configs/10M_400K.py:pairs=cc3m keeps WiT as the text source and takes images and pairs from CC3M's
    img2dataset folder (pairs=PATH from any path); the budgets are the cell's."""
    from tests.configs import load_config

    wit = load_config("10M_400K")
    cc3m = load_config("10M_400K", "model=half,pairs=cc3m")
    assert cc3m.data.image_sources == cc3m.data.pair_sources == (str(Path.home() / "data" / "cc3m"),)
    assert (cc3m.data.sources, cc3m.data.text_sources) == (wit.data.sources, None)
    assert (cc3m.data.text_words, cc3m.data.images) == (10_000_000, 400_000)
    assert load_config("10M_400K", "pairs=/x/coco/captions_train2017.json").data.pair_sources == (
        "/x/coco/captions_train2017.json",)
    assert load_config("10M_400K", "pairs=coco").data.pair_sources[0].endswith("coco/annotations/"
                                                                               "captions_train2017.json")
    with pytest.raises(ValueError, match="pairs=cc3m"):
        load_config("10M_400K", "pair=cc3m")
