"""The paper's carving rules applied to one slice of the sources, in one of prepare's worker processes.

A worker reads its slice itself (flava_jax/data/sources/dispatch.py), fetches and converts the images, and writes
the slice's records to temporary shards, one per stream; prepare's process only orders the slices and keeps the
budgets (flava_jax/data/prepare.py). A slice runs under one of two kinds of `Budgets`:

* exact: from the carve's state after the slice before it, with the real budgets; what it writes is final;
* speculative: before that state is known, with every open budget and cap unbounded and the streams already full
  closed. What it writes is the exact result whenever no budget or cap is reached inside the slice, or only the
  streams that filled up meanwhile must be dropped; prepare checks that (`verdict`) and otherwise carves the slice
  again, exactly. Either way the output is what a lone process would write, whatever the worker count.

Row ids are positions, (slice index << 32) + the record's place in its slice, so a worker writes final records
without knowing how many rows came before it: they tell an image's texts apart from other images' texts, and key the
noise image control.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import functools
import hashlib
import itertools
import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flava_jax.data import records as records_lib
from flava_jax.data.images import Fetched, ImageFetcher, convert_fetched, stored_format, stored_image
from flava_jax.data.shard_files import SliceWriters
from flava_jax.data.sources.dispatch import Slice, read_slice
from flava_jax.data.sources.rows import Skip, WitRow

if TYPE_CHECKING:
    from flava_jax.data.prepare import PrepareSettings

log = logging.getLogger("flava_jax.prepare")
HELDOUT = "heldout"  # held-out texts (pseudo-perplexity, validation MLM)
HELDOUT_IMAGE, HELDOUT_PAIR = "heldout_image", "heldout_pair"  # held-out images and their pairs (validation)
OUTPUTS = ("text", "image", "pair", HELDOUT, HELDOUT_IMAGE, HELDOUT_PAIR)
WORDS = ("text", "pair", HELDOUT)
SKIPS_LOGGED = 3  # per reason: the first few skipped records are logged with their place, the rest only counted
UNBOUNDED = 2**62
_TEXT_FIELDS = ("caption_reference_description", "context_page_description", "context_section_description",
                "caption_alt_text_description")


def row_texts(row: WitRow) -> list[str]:
    """The paper's collapsing: caption, page description, section description, alt text, whichever exist."""
    return [text for text in (getattr(row, f) for f in _TEXT_FIELDS) if text is not None]


def _paired(row: WitRow, texts: list[str]) -> list[str]:
    """The row's texts that make pairs with its image: all but its `extra_texts` (kept last by _classify)."""
    return texts[:len(texts) - len(row.extra_texts)]


def word_count(text: str) -> int:
    return len(text.split())


def is_heldout(row: WitRow, seed: int, fraction: float) -> bool:
    """The source's own held-out split when it has one (theodor1289/wit's test files, the paper's); else a fixed
    share of rows, chosen by a seeded hash of the row's identity (independent of order and budgets)."""
    if row.split is not None:
        return row.split != "train"
    digest = hashlib.sha256(f"{seed}\t{row.key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64 < fraction


def reached(count: int, budget: int) -> bool:
    """A budget of -1 means everything the sources hold."""
    return 0 <= budget <= count


def needs_image(require_image: bool, text_met: bool, images_met: bool) -> bool:
    """Whether a train row's image is fetched: while images are wanted, or, with `require_image`, while its text is."""
    return not images_met or (require_image and not text_met)


def fresh_counts() -> dict[str, Any]:
    """The counters a carve keeps (prepare's progress.json holds them, with where it is)."""
    return {"kept": dict.fromkeys(OUTPUTS, 0), "words": dict.fromkeys(WORDS, 0), "train_rows": 0, "heldout_rows": 0,
            "budget_met": {"text": False, "images": False}, "image_formats": {}, "skipped": {}}


@dataclasses.dataclass(frozen=True)
class Budgets:
    """What a carve may take: words (or, with budget_unit "percent", train rows) and images, held-out caps."""

    text_words: int  # -1: all
    text_rows: int | None  # budget_unit "percent": the text budget in train rows (-1: all); None: by words
    images: int  # -1: all
    heldout_texts: int
    heldout_images: int

    def flags(self, counts: dict[str, Any]) -> tuple[bool, bool, bool, bool]:
        """(text met, images met, held-out texts full, held-out images full) of a carve's counters."""
        kept, met = counts["kept"], counts["budget_met"]
        return (met["text"], met["images"], kept[HELDOUT] >= self.heldout_texts,
                self.images == 0 or kept[HELDOUT_IMAGE] >= self.heldout_images)

    def speculative(self, flags: tuple[bool, bool, bool, bool]) -> Budgets:
        """Every open budget and cap unbounded, those full at `flags` closed."""
        text_met, images_met, heldout_full, heldout_images_full = flags
        return Budgets(text_words=0 if text_met else -1,  # zero stays met: percent budgets re-check it each row
                       text_rows=None if self.text_rows is None else (0 if text_met else -1),
                       images=self.images if images_met or self.images == 0 else -1,
                       heldout_texts=0 if heldout_full else UNBOUNDED,
                       heldout_images=0 if heldout_images_full else UNBOUNDED)

    def initial(self, counts: dict[str, Any]) -> None:
        """Budgets of zero are met before anything is read."""
        counts["budget_met"]["text"] |= (self.text_words if self.text_rows is None else self.text_rows) == 0
        counts["budget_met"]["images"] |= self.images == 0


@dataclasses.dataclass(frozen=True)
class SliceTask:
    index: int
    piece: Slice
    budgets: Budgets
    counts: dict[str, Any]  # the carve's counters when the slice starts (speculative: zeros, with its flags)
    flags: tuple[bool, bool, bool, bool]  # the carve's flags it runs under
    exact: bool


@dataclasses.dataclass(frozen=True)
class SliceResult:
    index: int
    records: int  # records of the slice consumed: all, or fewer when the budgets were met inside it
    flags: tuple[bool, bool, bool, bool]
    exact: bool
    delta: dict[str, Any]  # what the slice added to each counter; image_formats and words by output
    shards: dict[str, dict[str, Any]]  # output -> {"records", "sha256"} of its temporary shard
    skips: list[tuple[str, str]]  # (reason, message) of the first SKIPS_LOGGED skips of each reason
    done: bool  # both budgets met inside it


class _Carver:
    """Applies the filters and budgets to one slice's records in order, writing its outputs."""

    def __init__(self, settings: PrepareSettings, budgets: Budgets, counts: dict[str, Any], base: int,
                 fetcher: ImageFetcher) -> None:
        self.s, self.b, self.p, self.base, self.fetcher = settings, budgets, counts, base, fetcher
        self.convert = functools.partial(stored_image, size=settings.image_size, mode=settings.image_resize,
                                         quality=settings.jpeg_quality, max_pixels=settings.max_image_pixels,
                                         reencode=settings.image_reencode)
        self.skipped: collections.Counter[str] = collections.Counter()
        self.skips: list[tuple[str, str]] = []
        self.formats: dict[str, dict[str, dict[str, int]]] = {}

    @property
    def done(self) -> bool:
        return self.p["budget_met"]["text"] and self.p["budget_met"]["images"]

    def _skip(self, reason: str, message: str | None = None) -> None:
        """Count a skipped record; keep the message of the first SKIPS_LOGGED of a logged reason."""
        self.skipped[reason] += 1
        if message is not None and self.skipped[reason] <= SKIPS_LOGGED:
            self.skips.append((reason, message))

    def _classify(self, record: WitRow | Skip) -> tuple[str, list[str]]:
        """("skip:<reason>" | "heldout" | "train", texts)."""
        if isinstance(record, Skip):
            return f"skip:{record.reason}", []
        if self.s.language is not None and record.language != self.s.language:
            return f"skip:language not {self.s.language}", []
        if self.s.require_caption and record.caption_reference_description is None:
            return "skip:no caption", []
        texts = row_texts(record) + list(record.extra_texts)  # the extra ones last: they make no pair
        if not texts:
            return "skip:no text", []
        if is_heldout(record, self.s.seed, self.s.heldout_fraction):
            return "heldout", texts
        return "train", texts

    def _needs_image(self) -> bool:
        return needs_image(self.s.require_image, self.p["budget_met"]["text"], self.p["budget_met"]["images"])

    def _heldout_needs_image(self) -> bool:
        return self.b.images != 0 and self.p["kept"][HELDOUT_IMAGE] < self.b.heldout_images

    def _wanted(self, classified: list[tuple[str, list[str]]]) -> list[int]:
        """The rows of a window whose image is needed, as things stand (budgets and caps only ever fill up)."""
        return [i for i, (kind, _) in enumerate(classified)
                if (kind == "train" and self._needs_image()) or (kind == "heldout" and self._heldout_needs_image())]

    def process(self, window: list[WitRow | Skip], first: int, writers: SliceWriters) -> int:
        """Process a window of records in order (the first at position `first` of the slice); returns how many were
        consumed (fewer once budgets are met)."""
        classified = [self._classify(record) for record in window]
        wanted = self._wanted(classified)
        converted = convert_fetched(self.convert, self.fetcher.fetch_many(
            [window[i].image_url for i in wanted], [window[i].image_bytes for i in wanted]))
        fetched = dict(zip(wanted, converted, strict=True))
        for consumed, (record, (kind, texts)) in enumerate(zip(window, classified, strict=True)):
            if self.done:
                return consumed
            row = self.base + first + consumed
            if isinstance(record, Skip):
                self._skip(record.reason, f"{record.where}: skipped, {record.reason}: {record.detail}")
            elif kind.startswith("skip:"):
                self._skip(kind[5:])  # the filters' skips are only counted
            elif kind == "heldout":
                self._heldout(row, record, texts, fetched.get(consumed), writers)
            else:
                self._train(row, record, texts, fetched.get(consumed), writers)
        return len(window)

    def _heldout(self, row: int, record: WitRow, texts: list[str], fetched: Fetched | None,
                 writers: SliceWriters) -> None:
        """Held-out texts up to their cap; with an image (while under its cap), the image and its pairs too."""
        kept = self.p["kept"]
        self.p["heldout_rows"] += 1
        for text in texts:
            if kept[HELDOUT] >= self.b.heldout_texts:
                break
            writers.write(HELDOUT, records_lib.encode(row, text))
            kept[HELDOUT] += 1
            self.p["words"][HELDOUT] += word_count(text)
        image = fetched.data if fetched is not None else None
        if image is None or kept[HELDOUT_IMAGE] >= self.b.heldout_images:
            return  # a failed held-out image is not counted as skipped: the row's texts are kept
        self._write_image(HELDOUT_IMAGE, row, image, writers)
        for text in _paired(record, texts):
            writers.write(HELDOUT_PAIR, records_lib.encode(row, text, image))
            kept[HELDOUT_PAIR] += 1

    def _write_image(self, stream: str, row: int, image: bytes, writers: SliceWriters) -> None:
        """Store an image in `stream` (image or heldout_image), counted in kept and in its format's count and bytes
        (pair records repeat these images, so they are not counted again)."""
        writers.write(stream, records_lib.encode(row, "", image))
        self.p["kept"][stream] += 1
        stored = self.formats.setdefault(stream, {}).setdefault(stored_format(image), {"count": 0, "bytes": 0})
        stored["count"] += 1
        stored["bytes"] += len(image)

    def _train(self, row: int, record: WitRow, texts: list[str], fetched: Fetched | None,
               writers: SliceWriters) -> None:
        image = fetched.data if fetched is not None else None
        if fetched is not None and image is None:
            reason = f"image: {fetched.reason}"
            self._skip(reason, f"row with image {fetched.detail or '(no url)'}: skipped, {reason}")
            return
        if image is None and self.s.require_image:  # only when no image was wanted: budgets met meanwhile
            return
        self.p["train_rows"] += 1
        kept, words, met = self.p["kept"], self.p["words"], self.p["budget_met"]
        whole_row = not met["text"]
        for i, text in enumerate(texts):
            if met["text"]:
                whole_row = False
                break
            writers.write("text", records_lib.encode(row, text))
            kept["text"] += 1
            words["text"] += word_count(text)
            met["text"] = self.b.text_rows is None and reached(words["text"], self.b.text_words)
            if met["text"] and i < len(texts) - 1:
                whole_row = False
        if self.b.text_rows is not None:
            met["text"] = reached(self.p["train_rows"], self.b.text_rows)
        in_images = not met["images"] and image is not None
        if in_images:
            self._write_image("image", row, image, writers)
            met["images"] = reached(kept["image"], self.b.images)
        if whole_row and in_images:
            for text in _paired(record, texts):
                writers.write("pair", records_lib.encode(row, text, image))
                kept["pair"] += 1
                words["pair"] += word_count(text)


def _delta(start: dict[str, Any], end: dict[str, Any]) -> dict[str, Any]:
    return {"kept": {k: end["kept"][k] - start["kept"][k] for k in OUTPUTS},
            "words": {k: end["words"][k] - start["words"][k] for k in WORDS},
            "train_rows": end["train_rows"] - start["train_rows"],
            "heldout_rows": end["heldout_rows"] - start["heldout_rows"]}


def carve_slice(task: SliceTask, settings: PrepareSettings, out: Path, fetcher: ImageFetcher,
                stop: threading.Event | Any = None) -> SliceResult | None:
    """Carve one slice into its temporary shards; None when `stop` was set before it finished (nothing is left)."""
    counts = copy.deepcopy(task.counts)
    carver = _Carver(settings, task.budgets, counts, task.index << 32, fetcher)
    writers = SliceWriters(out, task.index)
    records = read_slice(task.piece)
    consumed = 0
    try:
        while not carver.done and (window := list(itertools.islice(records, settings.fetch_batch))):
            if stop is not None and stop.is_set():
                writers.discard()
                return None
            consumed += carver.process(window, consumed, writers)
        shards = writers.close()
    except BaseException:
        writers.discard()
        raise
    delta = _delta(task.counts, counts)
    delta["budget_met"] = dict(counts["budget_met"])
    delta["image_formats"] = carver.formats
    delta["skipped"] = dict(carver.skipped)
    return SliceResult(task.index, consumed, task.flags, task.exact, delta, shards, carver.skips, carver.done)


# ---------------------------------------------------------------------------------------- worker processes
_WORKER: dict[str, Any] = {}
_PARENT_POLL_S = 0.5


def _exit_with(parent: int) -> None:
    """Ends this worker once its prepare is gone (killed: nothing else would end a worker waiting for work, and one
    carving would write on beside the prepare that resumes it)."""
    while os.getppid() == parent:
        time.sleep(_PARENT_POLL_S)
    os._exit(1)


def image_fetcher(settings: PrepareSettings) -> ImageFetcher:
    """The fetcher a carve reads images with: its local folders, its download cache (by default in ~/.cache)."""
    cache = settings.cache_dir or str(Path("~/.cache/flava_jax/images").expanduser())
    return ImageFetcher(cache, settings.image_dirs, settings.fetch, download=settings.download)


def init_worker(settings: PrepareSettings, out: str, stop: Any) -> None:
    """A worker process's start: its settings, its own image fetcher, the event that stops it, and a watch on its
    prepare."""
    _WORKER.update(settings=settings, out=Path(out), stop=stop, fetcher=image_fetcher(settings))
    threading.Thread(target=_exit_with, args=(os.getppid(),), daemon=True).start()


def run_in_worker(task: SliceTask) -> SliceResult | None:
    return carve_slice(task, _WORKER["settings"], _WORKER["out"], _WORKER["fetcher"], _WORKER["stop"])
