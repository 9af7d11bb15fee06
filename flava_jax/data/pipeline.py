"""Grain pipelines: prepared ArrayRecord streams -> masked, model-ready numpy batches, with checkpointable state.

Each stream (text, image, pair) runs: ArrayRecord source -> global seeded shuffle, reshuffled every epoch ->
repeat -> this process's shard -> per-example transform with its own RNG (decode, tokenize, BERT masking, BEiT
block masking, ITM negatives) -> batch -> worker processes. Every random choice derives from the seed and the
example's position, so a restored iterator continues exactly, whatever the number of workers.

Images leave the pipeline as the stored uint8 pixels: the host only decodes the stored JPEG or PNG, and
`transforms.model_inputs` makes the encoder's and the codebook's inputs on the device, bit-identical to
FlavaImageProcessor (resizes included), from 4x fewer bytes than f32.

Text-only batches are padded to `text_max_length` (the reference pads to 512) unless `length_buckets` is set: then
windows of batches are sorted by length and each batch is padded to the smallest bucket that fits, which changes
no example's outputs (the attention mask hides the padding) but removes most of the padding work.

`image_control` replaces what training sees of the images, for the paper's proposed controls, while everything else
(architecture, objectives, budgets, schedule) stays: "noise" gives every image uniform random pixels of its stored
size, drawn from the seed and the image's source row (the same for a row wherever it appears, and after a resume);
"shuffled_pairs" gives each training pair the image of another pair, along one seeded cycle through the pair set
(a derangement: no pair keeps its image, nor gets the same image stored for another row or text), so image
statistics stay real and only the alignment is broken (the image stream is unchanged). Held-out data is never
controlled: evaluation always sees real images and pairs.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grain
import jax
import numpy as np
from absl import flags
from PIL import Image

from flava_jax.common.settings import missing_keys, read_section
from flava_jax.data import masking, records
from flava_jax.data.prepare import MANIFEST, tokenizer_path
from flava_jax.data.tokenizer import PAD_ID, AnyTokenizer, load_tokenizer
from flava_jax.model.losses import IGNORE_INDEX

STREAM_KEYS = {"text": "text", "image": "image", "pairs": "pair"}  # batch key -> prepared stream


@dataclasses.dataclass(frozen=True)
class PipelineSettings:
    """How batches are made; `from_config` reads them from a config (its `data` section and model sizes;
    configs/base.py has the defaults)."""

    data_dir: str
    seed: int
    grid_size: int  # patches per side of the model's image: the block masks' grid
    text_max_length: int
    pair_max_length: int
    mlm_probability: float
    mask_patches: int
    mask_min_block: int
    mask_min_aspect: float
    mask_exact_count: bool  # False: stop early as the reference does (a third of its masks fall short)
    itm_negative_probability: float
    itm_exclude_same_row: bool  # a fix: never pick another text of the same image as a negative
    image_control: str  # "none", "noise" or "shuffled_pairs" (module docstring)
    length_buckets: tuple[int, ...]  # empty: pad text-only batches to text_max_length, as the reference
    bucket_window: int  # batches sorted by length together
    workers: int  # worker processes per stream; 0 runs the transforms in the calling process
    worker_buffer: int
    read_threads: int  # threads per process reading and transforming examples ahead
    read_buffer: int  # examples read ahead per process

    @classmethod
    def from_config(cls, config: Any, data_dir: str | None = None) -> PipelineSettings:
        data, image = config.data, config.model.image_config
        missing_keys(data, "config.data", ("dir", "length_buckets"))
        return read_section(cls, data, "config.data", data_dir=data_dir or data.dir, seed=config.seed,
                            grid_size=image["image_size"] // image["patch_size"],
                            length_buckets=tuple(data.length_buckets))


# ---------------------------------------------------------------------------------------------- examples
def pad_batch(examples: Sequence[dict[str, np.ndarray]], length: int) -> dict[str, np.ndarray]:
    """Stack examples, padding their text arrays to `length` ([PAD] ids, -100 labels) with an attention mask."""
    batch: dict[str, np.ndarray] = {}
    for key in examples[0]:
        values = [e[key] for e in examples]
        if key in ("input_ids", "input_ids_masked", "mlm_labels"):
            fill = IGNORE_INDEX if key == "mlm_labels" else PAD_ID
            out = np.full((len(values), length), fill, np.int32)
            for row, value in enumerate(values):
                out[row, :len(value)] = value
            batch[key] = out
        else:
            batch[key] = np.stack(values)
    if "input_ids" in batch:
        batch["attention_mask"] = (batch["input_ids"] != PAD_ID).astype(np.int32)
    return batch


class TextTransform(grain.transforms.RandomMap):
    """record -> [CLS] ids [SEP] (unpadded, truncated) with BERT masking."""

    def __init__(self, tokenizer: AnyTokenizer, max_length: int, mlm_probability: float) -> None:
        self.tokenizer, self.max_length, self.mlm_probability = tokenizer, max_length, mlm_probability

    def encode(self, text: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
        ids = np.asarray(self.tokenizer.encode(text, self.max_length), np.int32)
        t = self.tokenizer
        masked, labels = masking.mask_tokens(ids, rng, self.mlm_probability, t.vocab_size,
                                             (t.pad_id, t.cls_id, t.sep_id), t.mask_id)
        return {"input_ids": ids, "input_ids_masked": masked, "mlm_labels": labels}

    def random_map(self, record: bytes, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return self.encode(records.decode_text(record), rng)


class ImageTransform(grain.transforms.RandomMap):
    """record -> the stored image's uint8 pixels (H, W, 3) and a block mask over the model's patch grid; with
    `noise`, seeded random pixels of the stored size in place of the image."""

    def __init__(self, settings: PipelineSettings, noise: bool = False) -> None:
        self.blocks = masking.BlockMasking(settings.grid_size, settings.mask_patches, settings.mask_min_block,
                                           settings.mask_min_aspect, exact=settings.mask_exact_count)
        self.seed, self.noise = settings.seed, noise

    def encode(self, example: records.Example, rng: np.random.Generator) -> dict[str, np.ndarray]:
        image = Image.open(io.BytesIO(example.image))
        if self.noise:
            return {"pixels": noise_image(self.seed, example.row, image.size), "bool_masked_pos": self.blocks(rng)}
        image = image.convert("RGB") if image.mode != "RGB" else image
        return {"pixels": np.asarray(image), "bool_masked_pos": self.blocks(rng)}

    def random_map(self, record: bytes, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return self.encode(records.decode(record), rng)


def noise_image(seed: int, row: int, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 uniform noise for the image of source row `row`: a function of (seed, row) and the stored
    (W, H) size alone, which PIL reads from the header without decoding the image."""
    width, height = size
    return np.random.default_rng([seed, row]).integers(0, 256, (height, width, 3), dtype=np.uint8)


class ShuffledImages:
    """A pair source whose record i carries the image of another record along one seeded cycle through all records
    (`sigma[i]`, or the first record after it on the cycle whose image differs from its own: other texts of its row,
    and the same photo on another page, share its image), its own text and row kept."""

    def __init__(self, source: Any, seed: int) -> None:
        self.source = source
        order = np.random.default_rng([seed, len(source)]).permutation(len(source))
        self.sigma = np.empty(len(source), np.int64)
        self.sigma[order] = np.roll(order, -1)  # each record -> the next one in a random order: a single cycle

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> bytes:
        own = records.decode(self.source[index])
        other, seen = int(self.sigma[index]), 1
        while seen < len(self) and (candidate := records.decode(self.source[other])).image == own.image:
            other, seen = int(self.sigma[other]), seen + 1
        if seen == len(self):
            return self.source[index]  # every record holds this image: nothing to shuffle with
        return records.encode(own.row, own.text, candidate.image)


class PairTransform(grain.transforms.RandomMap):
    """record -> text + image + ITM label; with probability p the text is another example's (label 0)."""

    def __init__(self, text: TextTransform, image: ImageTransform, source: Any, negative_probability: float,
                 exclude_same_row: bool, max_draws: int = 100) -> None:
        self.text, self.image, self.source = text, image, source
        self.negative_probability, self.exclude_same_row, self.max_draws = (negative_probability, exclude_same_row,
                                                                            max_draws)

    def negative(self, example: records.Example, rng: np.random.Generator) -> records.Example | None:
        """An example drawn uniformly from the whole pair set whose text differs from the positive's (None when
        `max_draws` draws find none, e.g. a pair set of one text)."""
        for _ in range(self.max_draws):
            other = records.decode(self.source[int(rng.integers(len(self.source)))])
            if other.text != example.text and not (self.exclude_same_row and other.row == example.row):
                return other
        return None

    def random_map(self, record: bytes, rng: np.random.Generator) -> dict[str, np.ndarray]:
        example = records.decode(record)
        text, label = example.text, 1
        if rng.random() < self.negative_probability and (negative := self.negative(example, rng)) is not None:
            text, label = negative.text, 0
        return {**self.text.encode(text, rng), **self.image.encode(example, rng), "itm_labels": np.int32(label)}


# ---------------------------------------------------------------------------------------------- datasets
def manifest(data_dir: str | Path) -> dict[str, Any]:
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run python -m flava_jax.data.prepare first (it writes it last, "
                                "so a missing manifest also means an unfinished prepare)")
    return json.loads(path.read_text())


def source(data_dir: str | Path, stream: str) -> grain.sources.ArrayRecordDataSource:
    shards = manifest(data_dir)["shards"].get(stream, [])
    if not shards:
        raise ValueError(f"{data_dir} has no {stream!r} stream (see its manifest.json budgets)")
    return grain.sources.ArrayRecordDataSource([str(Path(data_dir) / s["file"]) for s in shards])


VALIDATION_KEYS = {"text": "heldout", "image": "heldout_image", "pairs": "heldout_pair"}


def _examples(settings: PipelineSettings, stream: str, transform: grain.transforms.RandomMap, offset: int,
              process: tuple[int, int], train: bool, records_of: Any = None) -> grain.MapDataset:
    """One stream's examples for this process: for training shuffled (reseeded every epoch) and endless, for
    validation in order and once. Transforms run before the process split, so each example gets the same masks
    and negatives however many processes share the work. `records_of` wraps the stream's source."""
    seed = settings.seed + offset
    records_source = source(settings.data_dir, stream)
    data = grain.MapDataset.source(records_of(records_source) if records_of else records_source)
    if train:
        data = data.shuffle(seed=seed).repeat()
    index, count = process
    return data.random_map(transform, seed=seed + 1)[index::count]


def stream_dataset(settings: PipelineSettings, stream: str, batch_size: int, tokenizer: AnyTokenizer,
                   process: tuple[int, int] | None = None, train: bool = True, group: int = 1) -> grain.MapDataset:
    """The batched MapDataset of one stream ("text", "image" or "pairs") for this process: random access; for
    training endless (with length buckets, text elements are windows of `bucket_window` groups of `group` batches,
    each group padded to one length), for validation (`train=False`) the held-out examples once, in order, with
    fixed masks."""
    process = process or (jax.process_index(), jax.process_count())
    keys = STREAM_KEYS if train else VALIDATION_KEYS
    text = TextTransform(tokenizer, settings.text_max_length, settings.mlm_probability)
    image = ImageTransform(settings, noise=train and settings.image_control == "noise")
    if stream == "text":
        examples = _examples(settings, keys["text"], text, 0, process, train)
        if train and settings.length_buckets:
            return examples.batch(batch_size * group * settings.bucket_window, drop_remainder=True,
                                  batch_fn=_BucketWindow(batch_size, settings.length_buckets, settings.seed, group))
        return examples.batch(batch_size, drop_remainder=True,
                              batch_fn=functools.partial(pad_batch, length=settings.text_max_length))
    if stream == "image":
        return _examples(settings, keys["image"], image, 1000, process, train).batch(batch_size, drop_remainder=True)
    if stream == "pairs":
        text = TextTransform(tokenizer, settings.pair_max_length, settings.mlm_probability)
        pairs = PairTransform(text, image, source(settings.data_dir, keys["pairs"]),
                              settings.itm_negative_probability, settings.itm_exclude_same_row)
        shuffled = train and settings.image_control == "shuffled_pairs"
        wrap = functools.partial(ShuffledImages, seed=settings.seed) if shuffled else None
        return _examples(settings, keys["pairs"], pairs, 2000, process, train, wrap).batch(
            batch_size, drop_remainder=True, batch_fn=functools.partial(pad_batch, length=settings.pair_max_length))
    raise ValueError(f"unknown stream {stream!r}; expected one of {sorted(STREAM_KEYS)}")


def stream_iterator(settings: PipelineSettings, stream: str, batch_size: int, tokenizer: AnyTokenizer,
                    process: tuple[int, int] | None = None, group: int = 1) -> grain.DatasetIterator:
    """Endless batches of one stream for this process, read ahead, as a checkpointable iterator. With length buckets,
    each run of `group` text batches from the start shares one length (see _BucketWindow)."""
    windows = stream == "text" and settings.length_buckets
    element = batch_size * group * settings.bucket_window if windows else batch_size
    dataset = _workers(stream_dataset(settings, stream, batch_size, tokenizer, process, group=group), settings,
                       element)
    return iter(_Unwindow(dataset) if windows else dataset)


def _workers(dataset: grain.MapDataset, settings: PipelineSettings, element: int) -> grain.IterDataset:
    """The iterable dataset of `element` examples an element, read ahead by threads (`read_buffer` examples' worth
    of elements) and, with `workers`, by worker processes."""
    # Grain buffers elements, which are batches or windows of them here, not examples.
    buffer = -(-settings.read_buffer // element)
    dataset = dataset.to_iter_dataset(grain.ReadOptions(num_threads=min(settings.read_threads, buffer),
                                                        prefetch_buffer_size=buffer))
    if settings.workers <= 0:
        return dataset
    if not flags.FLAGS.is_parsed():  # Grain's workers read absl flags; outside absl.app nobody parsed them
        flags.FLAGS.mark_as_parsed()
    return dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=settings.workers,
                                                            per_worker_buffer_size=settings.worker_buffer))


class _BucketWindow:
    """batch_fn over a window of examples: sort by length, cut into groups of `group` batches (one optimizer step's
    micro-batches, which are stacked into one array), pad each group to the smallest bucket that fits it, and
    shuffle the order of the groups (seeded by the window's content, so it is reproducible)."""

    def __init__(self, batch_size: int, buckets: Sequence[int], seed: int, group: int = 1) -> None:
        self.batch_size, self.buckets, self.seed, self.group = batch_size, sorted(buckets), seed, group

    def __call__(self, examples: Sequence[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        lengths = [len(e["input_ids"]) for e in examples]
        order = np.argsort(lengths, kind="stable")
        size = self.batch_size * self.group
        groups = []
        for start in range(0, len(order), size):
            chunk = [examples[i] for i in order[start:start + size]]
            longest = max(len(e["input_ids"]) for e in chunk)
            length = next((b for b in self.buckets if b >= longest), longest)
            groups.append([pad_batch(chunk[i:i + self.batch_size], length)
                           for i in range(0, len(chunk), self.batch_size)])
        key = int(np.asarray(lengths, np.int64).sum() + self.seed)
        return [batch for i in np.random.default_rng(key).permutation(len(groups)) for batch in groups[i]]


class _Unwindow(grain.IterDataset):
    """Flattens windows (lists of batches) into batches; the state is the parent's state at the start of the
    current window plus the position in it, so a restore re-reads that window and continues mid-way."""

    def __init__(self, parent: grain.IterDataset) -> None:
        super().__init__(parent)

    def __iter__(self) -> _UnwindowIterator:
        return _UnwindowIterator(self._parent.__iter__())


class _UnwindowIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator) -> None:
        super().__init__(parent)
        self._window: list[Any] = []
        self._position = 0
        self._window_start = parent.get_state()

    def __next__(self) -> Any:
        if self._position >= len(self._window):
            self._window_start = self._parent.get_state()
            self._window, self._position = next(self._parent), 0
        self._position += 1
        return self._window[self._position - 1]

    def get_state(self) -> dict[str, Any]:
        if self._position >= len(self._window):  # between windows
            return {"parent": self._parent.get_state(), "position": 0}
        return {"parent": self._window_start, "position": self._position}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self._window, self._position, self._window_start = [], 0, state["parent"]
        if state["position"]:
            self._window = next(self._parent)
            self._position = state["position"]


class MultitaskIterator:
    """Endless dicts {"text": batch, "image": batch, "pairs": batch} (the streams with a batch size), one
    checkpointable state for all of them. `group`: the micro-batches of one optimizer step, which length buckets pad
    to one length so that they stack."""

    def __init__(self, settings: PipelineSettings, batch_sizes: dict[str, int], tokenizer: AnyTokenizer | None = None,
                 process: tuple[int, int] | None = None, group: int = 1) -> None:
        tokenizer = tokenizer or load_tokenizer(tokenizer_path(Path(settings.data_dir)))
        self.iterators = {name: stream_iterator(settings, name, size, tokenizer, process, group)
                          for name, size in batch_sizes.items() if size > 0}

    def __iter__(self) -> Iterator[dict[str, dict[str, np.ndarray]]]:
        return self

    def __next__(self) -> dict[str, dict[str, np.ndarray]]:
        return {name: next(it) for name, it in self.iterators.items()}

    def get_state(self) -> dict[str, Any]:
        return {name: it.get_state() for name, it in self.iterators.items()}

    def set_state(self, state: dict[str, Any]) -> None:
        if set(state) != set(self.iterators):
            raise ValueError(f"iterator state has streams {sorted(state)}, this pipeline {sorted(self.iterators)}")
        for name, it in self.iterators.items():
            it.set_state(state[name])
