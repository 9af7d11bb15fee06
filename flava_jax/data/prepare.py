"""`python -m flava_jax.data.prepare --config=configs/<name>.py --source=PATH... --out=DIR`

Carves the study's data out of WiT the paper's way (docs/reference.md#data), into ArrayRecord streams:

1. Read the sources in order. Keep rows in the configured language that have a reference caption; set a seeded
   share aside (by a hash of image URL + page URL) as held-out text for pseudo-perplexity, or the source's own
   held-out split where it has the paper's (theodor1289/wit's test files).
2. Collapse each kept row into up to four text examples: caption, page description, section description, alt
   text (the attribution is excluded). Rows whose image cannot be had are dropped, as in the reference.
3. Budgets are nested, deterministic prefixes of these rows: the text stream takes collapsed texts until the word
   budget is met (within one example), the image stream one image per row until the image budget is met, and the
   pair stream the (text, image) pairs of rows inside both prefixes, i.e. the smaller budget. With
   `data.budget_unit="percent"` the prefixes are the reference's whole-row `train[:p%]` instead.
4. Write the tokenizer (`data.tokenizer`: BERT's vocabulary as it is, or a SentencePiece model trained on the
   budgeted text only); write manifest.json.

Work is committed in chunks of source records (shard files `<stream>/<chunk>.arrayrecord` plus progress.json),
so an interrupted prepare (a crash, a full disk) continues from the last committed chunk; the image cache means
nothing is fetched twice. One prepare at a time writes a folder: a second waits for the first, through a file lock.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
import fcntl
import functools
import hashlib
import itertools
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from absl import app, flags
from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter
from ml_collections import config_flags

from flava_jax.common.progress import ProgressLog
from flava_jax.common.settings import ConfigError, missing_keys, read_section
from flava_jax.data import records as records_lib
from flava_jax.data.images import (
    Fetched,
    FetchSettings,
    ImageFetcher,
    ImagePool,
    available_cores,
    stored_format,
    stored_image,
)
from flava_jax.data.records import STREAMS
from flava_jax.data.sources.dispatch import describe_source, read_sources, source_files
from flava_jax.data.sources.hub_parquet import split_rows
from flava_jax.data.sources.rows import Skip, SourceError, WitRow
from flava_jax.data.tokenizer import SENTENCEPIECE_FILE, make_tokenizer

log = logging.getLogger("flava_jax.prepare")
FORMAT = "flava_jax.prepare/1"
HELDOUT = "heldout"  # held-out texts (pseudo-perplexity, validation MLM)
HELDOUT_IMAGE, HELDOUT_PAIR = "heldout_image", "heldout_pair"  # held-out images and their pairs (validation)
PROGRESS = "progress.json"
MANIFEST = "manifest.json"
LOCK = ".prepare.lock"  # in the output folder: held while a prepare writes it
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)  # writes refused for want of space: a rerun after freeing some resumes
SKIPS_LOGGED = 3  # per reason: the first few skipped records are logged with their file:line, the rest only counted
# The paper's labels of its percent budgets (docs/reference.md#data): 1% of WiT's train split ~ 10M words, ~ 40K images
WORDS_PER_PERCENT, IMAGES_PER_PERCENT = 10_000_000, 40_000
_TEXT_FIELDS = ("caption_reference_description", "context_page_description", "context_section_description",
                "caption_alt_text_description")


class DiskFullError(OSError):
    """A write was refused for want of space (or quota); errno, strerror and filename say which. The chunks committed
    before it are intact: a rerun after freeing space continues from the last of them."""

    def __str__(self) -> str:
        return (f"writing {self.filename} failed: {self.strerror}. The chunks committed before it are intact: free "
                "space, then rerun the same command to continue from the last committed chunk")


@dataclasses.dataclass(frozen=True)
class PrepareSettings:
    """What `prepare` does; `from_config` reads it from a config's `data` section (configs/base.py has the
    defaults)."""

    text_words: int  # -1: all the text the sources hold
    images: int  # -1: all the images
    seed: int
    vocab_size: int
    language: str | None  # None: no language filter (sources without a language column: img2dataset, captions)
    require_caption: bool
    require_image: bool
    heldout_fraction: float
    heldout_max_texts: int
    heldout_max_images: int  # held-out rows whose image (and pairs) are kept, when the run has images
    image_size: int
    image_resize: str
    jpeg_quality: int
    image_reencode: bool  # False: an image already size x size PNG or JPEG is stored as it is (the paper's Hub data)
    max_image_pixels: int
    chunk_records: int
    budget_unit: str  # "count": text_words words and images images; "percent": the reference's train[:p%] rows
    fetch_batch: int
    prepare_workers: int | None  # processes decoding, resizing and encoding images; None: every core
    tokenizer: str  # "bert-base-uncased" (the paper's), a BERT vocab.txt or its directory, or "sentencepiece"
    tokenizer_max_texts: int
    image_dirs: tuple[str, ...]
    cache_dir: str | None
    download: bool
    fetch: FetchSettings

    @classmethod
    def from_config(cls, config: Any) -> PrepareSettings:
        data = config.data
        missing_keys(data, "config.data", ("fetch", "image_dirs"))
        # The command line cannot set None: --config.data.language=None (or "") arrives as a string.
        language = None if data.language in (None, "", "None", "none") else data.language
        return read_section(cls, data, "config.data", seed=config.seed, vocab_size=config.model.text_config.vocab_size,
                            fetch=read_section(FetchSettings, data.fetch, "config.data.fetch"),
                            image_dirs=tuple(data.image_dirs), language=language)

    def fingerprint(self, sources: Sequence[str]) -> str:
        """What a resumed prepare must share with the interrupted one (fetch settings and workers may change: the
        output does not depend on them)."""
        fields = dataclasses.asdict(self)
        for volatile in ("fetch", "cache_dir", "download", "prepare_workers"):
            fields.pop(volatile)
        return hashlib.sha256(json.dumps([fields, list(sources)], sort_keys=True).encode()).hexdigest()


def tokenizer_path(data_dir: Path) -> Path:
    """The tokenizer file of prepared data (its manifest names it; data prepared before that has tokenizer.model)."""
    info = (load_json(data_dir / MANIFEST) or {}).get("tokenizer") or {}
    return data_dir / info.get("file", SENTENCEPIECE_FILE)


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


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_stream(out: str | os.PathLike, stream: str) -> Iterator[bytes]:
    """Every record of a prepared stream, in shard order."""
    manifest_or_progress = load_json(Path(out) / MANIFEST) or load_json(Path(out) / PROGRESS) or {}
    for shard in manifest_or_progress.get("shards", {}).get(stream, []):
        reader = ArrayRecordReader(str(Path(out) / shard["file"]))
        try:
            for start in range(0, shard["records"], 1024):
                yield from reader.read(range(start, min(start + 1024, shard["records"])))
        finally:
            reader.close()


def load_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def write_json(path: Path, value: Any) -> None:
    tmp = path.with_suffix(".json.tmp")
    with _space_checked(path):
        tmp.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


@contextlib.contextmanager
def _space_checked(path: Path) -> Iterator[None]:
    """Raises a write refused for want of space as a DiskFullError naming `path` (the file written, or a folder
    when the error names none): ArrayRecord's writer reports it as a RuntimeError, Python's write() as an OSError
    without a file name."""
    try:
        yield
    except DiskFullError:
        raise
    except (OSError, RuntimeError) as e:
        code = e.errno if isinstance(e, OSError) else next(
            (code for code in DISK_FULL_ERRNOS if os.strerror(code) in str(e)), None)
        if code not in DISK_FULL_ERRNOS:
            raise
        raise DiskFullError(code, os.strerror(code), getattr(e, "filename", None) or str(path)) from e


@contextlib.contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """Holds `out`'s lock: two prepares into one folder would race on its files, so the second waits for the first,
    then finds the output complete (or resumes it)."""
    with open(out / LOCK, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another prepare into %s to finish (it holds %s)", out, out / LOCK)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _shard_name(chunk: int, tmp: bool = False) -> str:
    return f"{chunk:05d}.arrayrecord{'.tmp' if tmp else ''}"


class _ChunkWriters:
    """One shard per stream for one chunk, written under a temporary name and renamed on commit."""

    def __init__(self, out: Path, chunk: int) -> None:
        self.out, self.chunk = out, chunk
        self.writers: dict[str, ArrayRecordWriter] = {}
        self.counts: collections.Counter[str] = collections.Counter()

    def path(self, stream: str, tmp: bool = False) -> Path:
        return self.out / stream / _shard_name(self.chunk, tmp)

    def write(self, stream: str, record: bytes) -> None:
        with _space_checked(self.path(stream, tmp=True)):
            if stream not in self.writers:
                self.path(stream).parent.mkdir(parents=True, exist_ok=True)
                self.writers[stream] = ArrayRecordWriter(str(self.path(stream, tmp=True)), "group_size:1")
            self.writers[stream].write(record)
        self.counts[stream] += 1

    def commit(self) -> dict[str, dict[str, Any]]:
        shards = {}
        for stream, writer in self.writers.items():
            with _space_checked(self.path(stream, tmp=True)):
                writer.close()  # where ArrayRecord writes most of a shard
            self.path(stream, tmp=True).replace(self.path(stream))
            shards[stream] = {"file": str(self.path(stream).relative_to(self.out)), "records": self.counts[stream],
                              "sha256": file_sha256(self.path(stream))}
        return shards


def _fresh_progress(fingerprint: str) -> dict[str, Any]:
    return {"format": FORMAT, "fingerprint": fingerprint, "source_records": 0, "chunk": 0, "train_rows": 0,
            "kept": {"text": 0, "image": 0, "pair": 0, HELDOUT: 0, HELDOUT_IMAGE: 0, HELDOUT_PAIR: 0},
            "words": {"text": 0, "pair": 0, HELDOUT: 0}, "heldout_rows": 0,
            "image_formats": {}, "skipped": {}, "shards": {}, "budget_met": {"text": False, "images": False},
            "sources_exhausted": False}


def _resume(out: Path, fingerprint: str) -> dict[str, Any]:
    """progress.json of an interrupted run, or a fresh one; either way with the shards written after the last
    commit removed."""
    progress = load_json(out / PROGRESS)
    if progress is not None and progress.get("fingerprint") != fingerprint:
        raise SystemExit(f"{out} holds a prepare with other settings or sources; use a new --out or delete it")
    committed = {s["file"] for shards in (progress or {}).get("shards", {}).values() for s in shards}
    uncommitted = [path for path in out.glob("*/*.arrayrecord*") if str(path.relative_to(out)) not in committed]
    # Without progress.json, a prepare leaves only the shards of a first chunk that failed before its commit
    first_chunk = (_shard_name(0), _shard_name(0, tmp=True))
    if progress is None and ((out / MANIFEST).exists() or any(path.name not in first_chunk for path in uncommitted)):
        raise SystemExit(f"{out} holds shards but no {PROGRESS}: not a resumable prepare; use a new --out")
    for path in uncommitted:
        path.unlink()
    if progress is None:
        return _fresh_progress(fingerprint)
    if progress["source_records"] and not progress.get("complete"):
        log.info("resuming after %s source records (chunk %d)", f"{progress['source_records']:,}", progress["chunk"])
    return progress


@dataclasses.dataclass
class _Started:
    """A window whose images are converting: its records, their classes, the rows whose images were asked for,
    and the call that waits for them."""

    window: list[WitRow | Skip]
    classified: list[tuple[str, list[str]]]
    wanted: list[int]
    converted: Callable[[], list[Fetched]]


class _Carver:
    """Applies the filters and budgets to rows in order, writing the streams of the current chunk."""

    def __init__(self, settings: PrepareSettings, progress: dict[str, Any], fetcher: ImageFetcher,
                 pool: ImagePool) -> None:
        self.s, self.p, self.fetcher, self.pool = settings, progress, fetcher, pool
        self.skipped = collections.Counter(progress["skipped"])
        self.image_skips_logged: collections.Counter[str] = collections.Counter()
        rows = progress.get("row_budgets")  # with budget_unit "percent": whole rows, train[:t%] and train[:v%]
        self.text_rows = rows["text"] if rows else None
        self.images = rows["images"] if rows else settings.images
        self.p["budget_met"]["text"] |= (settings.text_words if rows is None else rows["text"]) == 0
        self.p["budget_met"]["images"] |= self.images == 0

    @property
    def done(self) -> bool:
        return self.p["budget_met"]["text"] and self.p["budget_met"]["images"]

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
        return not self.p["budget_met"]["images"] or (self.s.require_image and not self.p["budget_met"]["text"])

    def _heldout_needs_image(self) -> bool:
        return self.s.images != 0 and self.p["kept"][HELDOUT_IMAGE] < self.s.heldout_max_images

    def _wanted(self, classified: list[tuple[str, list[str]]]) -> list[int]:
        """The rows of a window whose image is needed, as things stand (budgets and caps only ever fill up)."""
        return [i for i, (kind, _) in enumerate(classified)
                if (kind == "train" and self._needs_image()) or (kind == "heldout" and self._heldout_needs_image())]

    def start(self, window: list[WitRow | Skip]) -> _Started:
        """Classify a window and start converting the images it may need: called before the window ahead of it is
        processed, so what it needs then can only be fewer (process takes just those)."""
        classified = [self._classify(record) for record in window]
        wanted = self._wanted(classified)
        converted = self.pool.convert_later(self.fetcher.fetch_many(
            [window[i].image_url for i in wanted], [window[i].image_bytes for i in wanted]))
        return _Started(window, classified, wanted, converted)

    def process(self, started: _Started, writers: _ChunkWriters) -> int:
        """Process a started window of records in order; returns how many were consumed (fewer once budgets are
        met)."""
        window, classified = started.window, started.classified
        converted = dict(zip(started.wanted, started.converted(), strict=True))
        fetched = {i: converted[i] for i in self._wanted(classified)}
        for consumed, (record, (kind, texts)) in enumerate(zip(window, classified, strict=True)):
            if self.done:
                return consumed
            if kind.startswith("skip:"):
                self.skipped[kind[5:]] += 1
            elif kind == "heldout":
                self._heldout(record, texts, fetched.get(consumed), writers)
            else:
                self._train(record, texts, fetched.get(consumed), writers)
        return len(window)

    def _heldout(self, record: WitRow, texts: list[str], fetched: Any, writers: _ChunkWriters) -> None:
        """Held-out texts up to their cap; with an image (while under its cap), the image and its pairs too."""
        kept = self.p["kept"]
        row = self.p["heldout_rows"]
        self.p["heldout_rows"] += 1
        for text in texts:
            if kept[HELDOUT] >= self.s.heldout_max_texts:
                break
            writers.write(HELDOUT, records_lib.encode(row, text))
            kept[HELDOUT] += 1
            self.p["words"][HELDOUT] += word_count(text)
        image = fetched.data if fetched is not None else None
        if image is None or kept[HELDOUT_IMAGE] >= self.s.heldout_max_images:
            return  # a failed held-out image is not counted as skipped: the row's texts are kept
        self._write_image(HELDOUT_IMAGE, row, image, writers)
        for text in _paired(record, texts):
            writers.write(HELDOUT_PAIR, records_lib.encode(row, text, image))
            kept[HELDOUT_PAIR] += 1

    def _write_image(self, stream: str, row: int, image: bytes, writers: _ChunkWriters) -> None:
        """Store an image in `stream` (image or heldout_image), counted in kept and in its format's count and bytes
        (pair records repeat these images, so they are not counted again)."""
        writers.write(stream, records_lib.encode(row, "", image))
        self.p["kept"][stream] += 1
        stored = self.p["image_formats"].setdefault(stored_format(image), {"count": 0, "bytes": 0})
        stored["count"] += 1
        stored["bytes"] += len(image)

    def _skip_image(self, fetched: Fetched) -> None:
        """Count a row whose image could not be had, logging the first SKIPS_LOGGED of each reason with its URL."""
        reason = f"image: {fetched.reason}"
        self.skipped[reason] += 1
        if self.image_skips_logged[reason] < SKIPS_LOGGED:
            self.image_skips_logged[reason] += 1
            last = " (any further ones are only counted)" if self.image_skips_logged[reason] == SKIPS_LOGGED else ""
            log.warning("row with image %s: skipped, %s%s", fetched.detail or "(no url)", reason, last)

    def _train(self, row: WitRow, texts: list[str], fetched: Any, writers: _ChunkWriters) -> None:
        image = fetched.data if fetched is not None else None
        if fetched is not None and image is None:
            self._skip_image(fetched)
            return
        if image is None and self.s.require_image:  # only when no image was wanted: budgets met meanwhile
            return
        row_id = self.p["train_rows"]
        self.p["train_rows"] += 1
        kept, words, met = self.p["kept"], self.p["words"], self.p["budget_met"]
        whole_row = not met["text"]
        for i, text in enumerate(texts):
            if met["text"]:
                whole_row = False
                break
            writers.write("text", records_lib.encode(row_id, text))
            kept["text"] += 1
            words["text"] += word_count(text)
            met["text"] = self.text_rows is None and _reached(words["text"], self.s.text_words)
            if met["text"] and i < len(texts) - 1:
                whole_row = False
        if self.text_rows is not None:
            met["text"] = _reached(self.p["train_rows"], self.text_rows)
        in_images = not met["images"] and image is not None
        if in_images:
            self._write_image("image", row_id, image, writers)
            met["images"] = _reached(kept["image"], self.images)
        if whole_row and in_images:
            for text in _paired(row, texts):
                writers.write("pair", records_lib.encode(row_id, text, image))
                kept["pair"] += 1
                words["pair"] += word_count(text)

    def commit(self, writers: _ChunkWriters, consumed: int, out: Path) -> None:
        for stream, shard in writers.commit().items():
            self.p["shards"].setdefault(stream, []).append(shard)
        self.p["source_records"] += consumed
        self.p["chunk"] = writers.chunk + 1
        self.p["skipped"] = dict(sorted(self.skipped.items()))
        write_json(out / PROGRESS, self.p)


def _reached(count: int, budget: int) -> bool:
    """A budget of -1 means everything the sources hold."""
    return 0 <= budget <= count


def records_language(sources: Sequence[str], rows: int = 64) -> bool:
    """Whether the sources' rows record a language: some of their first `rows` rows have one (or there are none to
    look at)."""
    first = list(itertools.islice((r for r in read_sources(sources) if isinstance(r, WitRow)), rows))
    return not first or any(r.language is not None for r in first)


def check_language(settings: PrepareSettings, sources: Sequence[str]) -> None:
    """ConfigError when a language filter is set and the sources record no language at all (a source without the
    column: every row would be skipped as "language not en", a misleading reason)."""
    if settings.language is not None and not records_language(sources):
        raise ConfigError(f"config.data.language={settings.language!r} keeps rows of that language, but "
                          f"{'; '.join(describe_source(s) for s in sources)} has no language column (img2dataset "
                          f"output and caption datasets have none), so every row would be skipped; set "
                          f"--config.data.language=None to read them all")


def _log_skips(records: Iterator[WitRow | Skip]) -> Iterator[WitRow | Skip]:
    """`records`, logging where the first SKIPS_LOGGED skips of each reason are (manifest.json counts them all)."""
    seen: collections.Counter[str] = collections.Counter()
    for record in records:
        if isinstance(record, Skip) and seen[record.reason] < SKIPS_LOGGED:
            seen[record.reason] += 1
            last = " (any further ones are only counted)" if seen[record.reason] == SKIPS_LOGGED else ""
            log.warning("%s: skipped, %s: %s%s", record.where, record.reason, record.detail, last)
        yield record


def _started_windows(carver: _Carver, records: Iterator[WitRow | Skip], size: int) -> Iterator[_Started]:
    """Windows of `size` records, each started one window ahead: the workers convert the next window's images
    while this process writes the current one, instead of waiting for it."""
    ahead = None
    while window := list(itertools.islice(records, size)):
        started = carver.start(window)
        if ahead is not None:
            yield ahead
        ahead = started
    if ahead is not None:
        yield ahead


def prepare(settings: PrepareSettings, sources: Sequence[str], out: str | os.PathLike,
            fetcher: ImageFetcher | None = None, tokenizer: bool = True) -> dict[str, Any]:
    """Build (or finish building) the prepared data in `out`; returns the manifest. A second prepare into `out`
    waits for the first to finish; a full disk raises DiskFullError. `tokenizer=False` writes none (a carve that
    feeds no text stream, flava_jax/data/stream_sources.py)."""
    out = Path(out)
    with _space_checked(out):
        out.mkdir(parents=True, exist_ok=True)
        with _exclusive(out):
            return _prepare_locked(settings, sources, out, fetcher, tokenizer)


def _prepare_locked(settings: PrepareSettings, sources: Sequence[str], out: Path,
                    fetcher: ImageFetcher | None, tokenizer: bool) -> dict[str, Any]:
    progress = _resume(out, settings.fingerprint(sources))
    progress["row_budgets"] = _row_budgets(settings, sources)
    if load_json(out / MANIFEST) is not None and progress.get("complete"):
        log.info("%s is already complete", out)
        return json.loads((out / MANIFEST).read_text())
    if progress["source_records"] == 0:
        check_language(settings, sources)
    own_fetcher = fetcher is None
    if fetcher is None:
        cache = settings.cache_dir or str(Path("~/.cache/flava_jax/images").expanduser())
        fetcher = ImageFetcher(cache, settings.image_dirs, settings.fetch, download=settings.download)
    pool = _image_pool(settings)
    carver = _Carver(settings, progress, fetcher, pool)
    records = _log_skips(itertools.islice(read_sources(sources), progress["source_records"], None))
    meter = ProgressLog("prepare", unit="source records")
    try:
        while not carver.done:
            writers = _ChunkWriters(out, progress["chunk"])
            consumed = 0
            # read a window at a time: a chunk of rows with their images inline may not fit in memory
            for started in _started_windows(carver, itertools.islice(records, settings.chunk_records),
                                            settings.fetch_batch):
                consumed += carver.process(started, writers)
                meter.update(progress["source_records"] + consumed, _budget_line(settings, progress))
                if carver.done:
                    break
            if not consumed:
                progress["sources_exhausted"] = True
                break
            carver.commit(writers, consumed, out)
    finally:
        pool.close()
        if own_fetcher:
            fetcher.close()
    meter.finish(_budget_line(settings, progress))
    if progress["sources_exhausted"] and not (progress["train_rows"] or progress["heldout_rows"]):
        raise SourceError(f"no row was kept from {'; '.join(describe_source(s) for s in sources)}: skipped "
                          f"{progress['skipped'] or 'nothing'}; check --source and config.data (language, "
                          "require_caption, require_image)")
    return _finish(settings, list(sources), progress, out, tokenizer)


def _row_budgets(settings: PrepareSettings, sources: Sequence[str]) -> dict[str, int] | None:
    """With budget_unit "percent", the rows of train[:t%] and train[:v%] (t = text_words / 10M, v = images / 40K,
    rounded as `datasets` does) of the sources' train split, counted from parquet metadata; else None."""
    if settings.budget_unit == "count":
        return None
    if settings.budget_unit != "percent":
        raise ConfigError(f"config.data.budget_unit={settings.budget_unit!r}: give 'count' or 'percent'")
    train = sum(split_rows(source_files(s))["train"] for s in sources if not s.startswith("tfds:"))
    if not train:
        raise SourceError(f"budget_unit 'percent' takes train[:p%] of a source with the paper's train split "
                          f"(theodor1289/wit's data/train-*.parquet); {list(sources)} have none: use budget_unit "
                          "'count'")

    def rows(percent: float) -> int:
        return -1 if percent < 0 else min(train, int(round(percent * train / 100)))

    return {"text": rows(settings.text_words / WORDS_PER_PERCENT), "images": rows(settings.images / IMAGES_PER_PERCENT),
            "train_split": train}


def _image_pool(settings: PrepareSettings) -> ImagePool:
    """The processes that decode, resize and encode images: `prepare_workers` of them, or one per core."""
    workers = settings.prepare_workers
    if workers is not None and workers < 1:
        raise ConfigError(f"config.data.prepare_workers={workers}: give at least 1, or None for one per core")
    convert = functools.partial(stored_image, size=settings.image_size, mode=settings.image_resize,
                                quality=settings.jpeg_quality, max_pixels=settings.max_image_pixels,
                                reencode=settings.image_reencode)
    return ImagePool(convert, workers or available_cores())


def _budget_line(s: PrepareSettings, p: dict[str, Any]) -> str:
    return (f"words {p['words']['text']:,}/{s.text_words:,}, images {p['kept']['image']:,}/{s.images:,}, "
            f"pairs {p['kept']['pair']:,}")


def _finish(settings: PrepareSettings, sources: list[str], progress: dict[str, Any], out: Path,
            with_tokenizer: bool) -> dict[str, Any]:
    """Write the tokenizer (trained on the budgeted text, for SentencePiece) and manifest.json."""
    for name, budget in (("text", settings.text_words), ("images", settings.images)):
        if budget > 0 and not progress["budget_met"][name]:
            log.warning("the sources ran out before the %s budget was met: see manifest.json", name)
    texts = (records_lib.decode_text(r).replace("\n", " ") for r in read_stream(out, "text"))
    tokenizer_info = None
    if progress["kept"]["text"] and with_tokenizer:
        tokenizer, name = make_tokenizer(settings.tokenizer, itertools.islice(texts, settings.tokenizer_max_texts),
                                         settings.vocab_size)
        with _space_checked(out / name):
            tokenizer.save(out / name)
        tokenizer_info = {"file": name, "source": settings.tokenizer, "sha256": file_sha256(out / name),
                          "vocab_size": tokenizer.vocab_size}
    manifest = {
        "format": FORMAT,
        "settings": json.loads(json.dumps(dataclasses.asdict(settings))),
        "sources": sources,
        "budgets": {"text_words": settings.text_words, "images": settings.images, "unit": settings.budget_unit,
                    "rows": progress["row_budgets"]},
        "budget_met": progress["budget_met"],
        "sources_exhausted": progress["sources_exhausted"],
        "source_records": progress["source_records"],
        "train_rows": progress["train_rows"],
        "kept": progress["kept"],
        "words": progress["words"],
        "images": progress["kept"]["image"],
        "image_formats": progress["image_formats"],
        "skipped": progress["skipped"],
        "shards": progress["shards"],
        "tokenizer": tokenizer_info,
        "complete": True,
    }
    write_json(out / MANIFEST, manifest)
    progress["complete"] = True
    write_json(out / PROGRESS, progress)
    log.info("prepared %s: %s", out, json.dumps({k: manifest[k] for k in ("kept", "words", "skipped")}))
    return manifest


def main() -> None:
    """The command line; flags are defined here so that importing this module defines none."""
    config_flag = config_flags.DEFINE_config_file("config", None, "A config file, e.g. configs/debug.py.",
                                                  lock_config=True)
    source_flag = flags.DEFINE_multi_string("source", None, "WiT source: a file, directory, glob or "
                                            "tfds:wit/train[@dir]. Repeatable; default: config.data.sources.")
    stream_flags = {stream: flags.DEFINE_multi_string(
        f"{stream}_source", None, f"A source of the {stream} stream only (repeatable; default: "
        f"config.data.{stream}_sources, else --source): see flava_jax/data/stream_sources.py.") for stream in STREAMS}
    out_flag = flags.DEFINE_string("out", None, "Output directory (default: config.data.dir).")
    workers_flag = flags.DEFINE_integer("workers", None, "Processes that decode, resize and encode images "
                                        "(default: config.data.prepare_workers; None there: one per core).",
                                        lower_bound=1)

    def run(argv: list[str]) -> None:
        from flava_jax.data.stream_sources import StreamSources, prepare_streams  # it builds on this module

        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        config = config_flag.value
        if config is None:
            raise app.UsageError("--config is required")
        out = out_flag.value or config.data.dir
        if not out:
            raise app.UsageError("give --out (or config.data.dir)")
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
        try:
            sources = StreamSources.from_config(config.data, source_flag.value,
                                                **{stream: flag.value for stream, flag in stream_flags.items()})
            settings = PrepareSettings.from_config(config)
            if workers_flag.value is not None:
                settings = dataclasses.replace(settings, prepare_workers=workers_flag.value)
            manifest = prepare_streams(settings, sources, out)
        except ConfigError as e:
            raise app.UsageError(str(e)) from e
        except (SourceError, DiskFullError) as e:
            raise SystemExit(f"prepare: {e}") from e
        print(json.dumps({k: manifest[k] for k in ("kept", "words", "budget_met", "skipped")}, indent=2))

    app.run(run)


if __name__ == "__main__":
    main()
