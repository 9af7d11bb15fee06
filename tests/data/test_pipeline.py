"""Grain pipelines on the bundled sample: exact resume, the reference's transforms, sharding, length bucketing."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path
from typing import Any

import grain
import numpy as np
import pytest
from PIL import Image

from flava_jax.data import records
from flava_jax.data.pipeline import (
    MultitaskIterator,
    PipelineSettings,
    ShuffledImages,
    source,
    stream_dataset,
    stream_iterator,
)
from flava_jax.data.prepare import prepare, read_stream, tokenizer_path
from flava_jax.data.sample import SAMPLE_DIR
from flava_jax.data.tokenizer import PAD_ID, Tokenizer
from flava_jax.data.transforms import model_inputs
from tests.configs import pipeline_settings, prepare_settings

BATCHES = {"text": 3, "image": 2, "pairs": 4}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sample")
    prepare(prepare_settings(text_words=-1, images=-1, vocab_size=256, heldout_fraction=0.0, image_size=224,
                             image_dirs=(str(SAMPLE_DIR / "images"),), download=False), [str(SAMPLE_DIR / "wit")], out)
    return out


def _settings(data: Path, **changes: Any) -> PipelineSettings:
    return pipeline_settings(str(data), **{"seed": 3, "text_max_length": 48, "pair_max_length": 24,
                                           "itm_negative_probability": 0.3, "read_buffer": 16, **changes})


def _equal(a: dict[str, dict[str, np.ndarray]], b: dict[str, dict[str, np.ndarray]]) -> bool:
    return a.keys() == b.keys() and all(
        a[s].keys() == b[s].keys() and all(np.array_equal(a[s][k], b[s][k]) for k in a[s]) for s in a)


@pytest.mark.parametrize("changes, streams", [
    (dict(), BATCHES),
    (dict(workers=2), {"pairs": 4}),  # worker processes: one stream keeps the test short
    (dict(length_buckets=(16, 32, 48), bucket_window=3), BATCHES),
    (dict(image_control="noise"), {"image": 2, "pairs": 4}),
    (dict(image_control="shuffled_pairs"), {"pairs": 4}),
])
@pytest.mark.slow
def test_restored_iterator_yields_the_same_next_batches(data: Path, changes: dict[str, Any],
                                                       streams: dict[str, int]) -> None:
    settings = _settings(data, **changes)
    running = MultitaskIterator(settings, streams)
    for _ in range(4):  # mid-way through an epoch of the sample and, with buckets, through a window
        next(running)
    state = running.get_state()
    expected = [next(running) for _ in range(5)]
    restored = MultitaskIterator(settings, streams)
    restored.set_state(state)
    assert all(_equal(a, b) for a, b in zip(expected, [next(restored) for _ in range(5)], strict=True))
    fresh = MultitaskIterator(settings, streams)
    assert not _equal(expected[0], next(fresh))  # the restored one really skipped ahead


def test_batches_hold_the_reference_transforms(data: Path) -> None:
    """Pixels equal transformers' FlavaImageProcessor on the stored image; text ids are the tokenizer's."""
    processor = pytest.importorskip("transformers").FlavaImageProcessor()
    settings = _settings(data, itm_negative_probability=0.0)
    iterator = stream_iterator(settings, "pairs", 4, Tokenizer.load(data / "tokenizer.model"), process=(0, 1))
    batch = next(iterator)
    inputs = {k: np.asarray(v) for k, v in model_inputs(batch, 224, 112).items()}
    stored = {records.decode(r).text: records.decode(r) for r in read_stream(data, "pair")}
    tokenizer = Tokenizer.load(data / "tokenizer.model")
    for i in range(4):
        ids = batch["input_ids"][i]
        text = next(t for t in stored if tokenizer.encode(t, 24) == list(ids[ids != PAD_ID]))
        reference = processor(Image.open(io.BytesIO(stored[text].image)), return_codebook_pixels=True,
                              return_tensors="np")
        np.testing.assert_allclose(inputs["pixel_values"][i], reference["pixel_values"][0], atol=1e-6)
        np.testing.assert_allclose(inputs["codebook_pixel_values"][i], reference["codebook_pixel_values"][0],
                                   atol=1e-6)
        labels, masked = batch["mlm_labels"][i], batch["input_ids_masked"][i]
        assert (labels[labels != -100] == ids[labels != -100]).all() and (masked[labels == -100] ==
                                                                           ids[labels == -100]).all()
        assert batch["attention_mask"][i].sum() == (ids != PAD_ID).sum()
        assert batch["bool_masked_pos"][i].sum() == 75
    assert (batch["itm_labels"] == 1).all()


def test_processes_read_disjoint_shards(data: Path) -> None:
    tokenizer = Tokenizer.load(data / "tokenizer.model")
    settings = _settings(data)
    epoch = len(source(data, "text"))  # 12 texts: 6 per process

    def texts(process: int) -> list[str]:
        iterator = stream_iterator(settings, "text", 1, tokenizer, process=(process, 2))
        return [tokenizer.decode(next(iterator)["input_ids"][0]) for _ in range(epoch // 2)]

    first, second = texts(0), texts(1)
    everything = sorted(tokenizer.decode(tokenizer.encode(records.decode_text(r), 48))
                        for r in read_stream(data, "text"))
    assert sorted(first + second) == everything


def _rows(batch: dict[str, np.ndarray]) -> list[tuple[int, ...]]:
    """Each example's masked tokens without its padding."""
    return [tuple(int(x) for x in row[mask == 1]) for row, mask in zip(
        batch["input_ids_masked"], batch["attention_mask"], strict=True)]


def test_length_buckets_keep_every_example_and_cut_padding(data: Path) -> None:
    tokenizer = Tokenizer.load(data / "tokenizer.model")
    plain = stream_iterator(_settings(data), "text", 2, tokenizer, process=(0, 1))
    bucketed = stream_iterator(_settings(data, length_buckets=(8, 16, 32, 48), bucket_window=3), "text", 2,
                               tokenizer, process=(0, 1))

    plain_tokens = bucketed_tokens = 0
    for _ in range(4):  # windows of 3 batches
        expected, got = [], []
        for _ in range(3):
            a, b = next(plain), next(bucketed)
            expected += _rows(a)
            got += _rows(b)
            plain_tokens += a["input_ids"].size
            bucketed_tokens += b["input_ids"].size
            assert b["input_ids"].shape[1] in (8, 16, 32, 48)
            assert b["input_ids"].shape[1] < 16 or (b["attention_mask"].sum(1) > b["input_ids"].shape[1] // 2).any()
        assert sorted(expected) == sorted(got)  # the same masked examples, regrouped
    assert bucketed_tokens < plain_tokens


class _CountingTokenizer:
    """The tokenizer, counting the texts it encodes: each is one example read."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer, self.calls, self._lock = tokenizer, 0, threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tokenizer, name)

    def encode(self, text: str, max_length: int) -> list[int]:
        with self._lock:  # the readers are threads
            self.calls += 1
        return self.tokenizer.encode(text, max_length)


@pytest.mark.parametrize("changes", [dict(), dict(length_buckets=(16, 32, 48), bucket_window=4)])
def test_read_ahead_stops_at_read_buffer_examples(data: Path, changes: dict[str, Any]) -> None:
    """`read_buffer` counts examples: Grain buffers elements, which are batches here (windows of bucket_window x
    group batches with length buckets), so a buffer of read_buffer elements read batch or window times too far (a
    full-size run's image streams held gigabytes). 24 examples ahead: 8 batches of 3, or 1 window of 2 x 4 x 3."""
    tokenizer = _CountingTokenizer(Tokenizer.load(data / "tokenizer.model"))
    iterator = stream_iterator(_settings(data, read_buffer=24, read_threads=4, **changes), "text", 3, tokenizer,
                               process=(0, 1), group=2)
    next(iterator)
    settled, deadline = -1, time.time() + 30
    while settled != tokenizer.calls and time.time() < deadline:  # until the readers stop
        settled = tokenizer.calls
        time.sleep(0.5)
    element = 24 if changes else 3
    # The element taken, plus the buffer refilled behind it
    assert 24 <= tokenizer.calls <= 24 + element, tokenizer.calls


def test_length_buckets_pad_a_steps_micro_batches_alike(data: Path) -> None:
    """With gradient accumulation the trainer stacks a step's micro-batches into one array, so each run of `group`
    text batches must share a length; windows of 2 steps x 3 micro-batches hold the same examples as unbucketed."""
    tokenizer = Tokenizer.load(data / "tokenizer.model")
    plain = stream_iterator(_settings(data), "text", 2, tokenizer, process=(0, 1))
    bucketed = stream_iterator(_settings(data, length_buckets=(8, 16, 32, 48), bucket_window=2), "text", 2,
                               tokenizer, process=(0, 1), group=3)
    lengths = set()
    for _ in range(3):  # windows of 2 groups of 3 batches
        expected, got = [], []
        for _ in range(2):
            step = [next(bucketed) for _ in range(3)]
            assert len({b["input_ids"].shape[1] for b in step}) == 1
            lengths.add(step[0]["input_ids"].shape[1])
            got += [row for b in step for row in _rows(b)]
            expected += [row for _ in range(3) for row in _rows(next(plain))]
        assert sorted(expected) == sorted(got)
    assert len(lengths) > 1  # the groups did fall in different buckets


# ------------------------------------------------------------------------------------------ image controls
def _stream_examples(settings: PipelineSettings, stream: str, count: int) -> list[dict[str, np.ndarray]]:
    """The first `count` examples of a stream, one per batch, in the dataset's order."""
    dataset = stream_dataset(settings, stream, 1, Tokenizer.load(tokenizer_path(Path(settings.data_dir))), (0, 1))
    return [dataset[i] for i in range(count)]


def test_noise_replaces_every_image_by_the_same_noise_for_its_row(data: Path) -> None:
    """Noise of the stored size, uniform over 0..255, the same whenever the row's image is read (either stream, any
    run with the seed), different between rows and seeds; the masks and the texts are the real run's."""
    stored = {e.row: e.image for e in map(records.decode, read_stream(data, "image"))}
    real = _stream_examples(_settings(data), "image", 4)
    noise = _stream_examples(_settings(data, image_control="noise"), "image", 4)
    again = _stream_examples(_settings(data, image_control="noise"), "image", 4)
    other_seed = _stream_examples(_settings(data, image_control="noise", seed=4), "image", 1)
    for r, n, a in zip(real, noise, again, strict=True):
        assert n["pixels"].shape == r["pixels"].shape and n["pixels"].dtype == np.uint8
        assert not np.array_equal(n["pixels"], r["pixels"]) and np.array_equal(n["pixels"], a["pixels"])
        np.testing.assert_array_equal(n["bool_masked_pos"], r["bool_masked_pos"])
    assert not np.array_equal(noise[0]["pixels"], noise[1]["pixels"])
    assert not np.array_equal(noise[0]["pixels"], other_seed[0]["pixels"])
    values = np.concatenate([n["pixels"].ravel() for n in noise])
    assert values.min() == 0 and values.max() == 255 and abs(values.mean() - 127.5) < 1.0
    assert {Image.open(io.BytesIO(image)).size for image in stored.values()} == {(224, 224)}
    # A pair's noise is its row's image noise: read both streams and match rows through the stored images.
    pairs = [records.decode(r) for r in read_stream(data, "pair")]
    by_row = {}
    settings = _settings(data, image_control="noise", itm_negative_probability=0.0)
    for i, example in enumerate(_stream_examples(settings, "pairs", len(pairs))):
        by_row.setdefault(_row_of(data, "pair", i, settings), []).append(example["pixels"][0])
    for i, example in enumerate(_stream_examples(settings, "image", len(stored))):
        for pixels in by_row.get(_row_of(data, "image", i, settings), []):
            np.testing.assert_array_equal(pixels, example["pixels"][0])
    assert by_row


def _row_of(data: Path, stream: str, index: int, settings: PipelineSettings) -> int:
    """The source row of the `index`-th training example of a stream (the dataset's shuffle, redone from its seed)."""
    offset = {"image": 1000, "pair": 2000}[stream]
    order = grain.MapDataset.range(len(source(data, stream))).shuffle(seed=settings.seed + offset)
    return records.decode(source(data, stream)[order[index]]).row


def test_shuffled_pairs_never_keep_their_own_image_and_follow_the_seed(data: Path) -> None:
    pairs = source(data, "pair")
    own = [records.decode(pairs[i]) for i in range(len(pairs))]
    shuffled = ShuffledImages(pairs, seed=3)
    got = [records.decode(shuffled[i]) for i in range(len(pairs))]
    images = {example.image for example in own}
    assert len(images) > 1 and len({e.row for e in own}) > len(images)  # rows share images: the hard case
    for mine, theirs in zip(own, got, strict=True):
        assert (theirs.row, theirs.text) == (mine.row, mine.text)  # the text and its row stay
        assert theirs.image != mine.image and theirs.image in images  # another real image of the set
    np.testing.assert_array_equal(shuffled.sigma, ShuffledImages(pairs, seed=3).sigma)
    assert not np.array_equal(shuffled.sigma, ShuffledImages(pairs, seed=4).sigma)
    cycle, seen = 0, {0}  # one cycle through every record
    while (cycle := int(shuffled.sigma[cycle])) != 0:
        seen.add(cycle)
    assert len(seen) == len(pairs)
    # Training reads them; the image stream and the held-out pairs stay real.
    settings = _settings(data, image_control="shuffled_pairs", itm_negative_probability=0.0)
    real = _settings(data, itm_negative_probability=0.0)
    assert not np.array_equal(_stream_examples(settings, "pairs", 1)[0]["pixels"],
                              _stream_examples(real, "pairs", 1)[0]["pixels"])
    np.testing.assert_array_equal(_stream_examples(settings, "image", 1)[0]["pixels"],
                                  _stream_examples(real, "image", 1)[0]["pixels"])
