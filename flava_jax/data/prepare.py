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

The sources are cut into slices of about `data.chunk_records` records (row groups, byte ranges, files: see
flava_jax/data/sources/dispatch.py), the same on any host. Worker processes (`data.prepare_workers`) each read,
filter, fetch, convert and write whole slices, speculatively ahead of the budgets (flava_jax/data/carve.py says how
that stays exact); this process only orders them, keeps the budgets and publishes each slice's shards
(`<stream>/<slice>.arrayrecord`) with progress.json, so the output is byte-identical for any worker count and an
interrupted prepare (a crash, a full disk) continues from the last committed slice; the image cache means nothing
is fetched twice. One prepare at a time writes a folder: a second waits for the first, through a file lock.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import copy
import dataclasses
import fcntl
import hashlib
import itertools
import json
import logging
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from absl import app, flags
from array_record.python.array_record_module import ArrayRecordReader
from ml_collections import config_flags

from flava_jax.common.progress import ProgressLog
from flava_jax.common.settings import ConfigError, missing_keys, read_section
from flava_jax.data import records as records_lib
from flava_jax.data.carve import (
    HELDOUT,
    HELDOUT_IMAGE,
    HELDOUT_PAIR,
    OUTPUTS,
    SKIPS_LOGGED,
    Budgets,
    SliceResult,
    SliceTask,
    carve_slice,
    fresh_counts,
    image_fetcher,
    init_worker,
    needs_image,
    reached,
    run_in_worker,
)
from flava_jax.data.images import FetchSettings, available_cores
from flava_jax.data.records import STREAMS
from flava_jax.data.shard_files import DiskFullError, file_sha256, shard_name, shard_path, space_checked
from flava_jax.data.sources.dispatch import Slice, describe_source, plan_slices, read_sources, source_files
from flava_jax.data.sources.hub_parquet import split_rows
from flava_jax.data.sources.rows import SourceError, WitRow
from flava_jax.data.tokenizer import SENTENCEPIECE_FILE, make_tokenizer

__all__ = ["HELDOUT", "HELDOUT_IMAGE", "HELDOUT_PAIR", "DiskFullError", "PrepareSettings", "file_sha256", "prepare",
           "read_stream", "tokenizer_path"]
log = logging.getLogger("flava_jax.prepare")
FORMAT = "flava_jax.prepare/1"
PROGRESS = "progress.json"
MANIFEST = "manifest.json"
LOCK = ".prepare.lock"  # in the output folder: held while a prepare writes it
# The paper's labels of its percent budgets (docs/reference.md#data): 1% of WiT's train split ~ 10M words, ~ 40K images
WORDS_PER_PERCENT, IMAGES_PER_PERCENT = 10_000_000, 40_000


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
    prepare_workers: int | None  # processes carving slices of the sources; None: every core
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
    with space_checked(path):
        tmp.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


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


def _fresh_progress(fingerprint: str) -> dict[str, Any]:
    return {"format": FORMAT, "fingerprint": fingerprint, "source_records": 0, "chunk": 0, **fresh_counts(),
            "shards": {}, "sources_exhausted": False}


def _resume(out: Path, fingerprint: str) -> dict[str, Any]:
    """progress.json of an interrupted run, or a fresh one; either way with the shards written after the last
    commit removed."""
    progress = load_json(out / PROGRESS)
    if progress is not None and progress.get("fingerprint") != fingerprint:
        raise SystemExit(f"{out} holds a prepare with other settings or sources; use a new --out or delete it")
    committed = {s["file"] for shards in (progress or {}).get("shards", {}).values() for s in shards}
    uncommitted = [path for path in out.glob("*/*.arrayrecord*") if str(path.relative_to(out)) not in committed]
    # A prepare writes progress.json before any shard: shards without it are not a prepare's to resume
    if progress is None and ((out / MANIFEST).exists() or uncommitted):
        raise SystemExit(f"{out} holds shards but no {PROGRESS}: not a resumable prepare; use a new --out")
    for path in uncommitted:
        path.unlink()
    if progress is None:
        return _fresh_progress(fingerprint)
    if progress["source_records"] and not progress.get("complete"):
        log.info("resuming after %s source records (chunk %d)", f"{progress['source_records']:,}", progress["chunk"])
    return progress


def records_language(sources: Sequence[str], rows: int = 64) -> bool:
    """Whether the sources' rows record a language: some of their first `rows` rows have one (or there are none to
    look at)."""
    first = list(itertools.islice((r for r in read_sources(sources) if isinstance(r, WitRow)), rows))
    return not first or any(r.language is not None for r in first)


def check_language(settings: PrepareSettings, sources: Sequence[str]) -> None:
    """ConfigError when a language filter is set and the sources record no language at all (a source without the
    column: every row would be skipped as "language not en", a misleading reason)."""
    if settings.language is not None and not records_language(sources):
        raise no_language(settings.language, sources)


def no_language(language: str, sources: Sequence[str]) -> ConfigError:
    """The start-up error of a language filter on sources that record no language."""
    return ConfigError(f"config.data.language={language!r} keeps rows of that language, but "
                       f"{'; '.join(describe_source(s) for s in sources)} has no language column (img2dataset "
                       f"output and caption datasets have none), so every row would be skipped; set "
                       f"--config.data.language=None to read them all")


def prepare(settings: PrepareSettings, sources: Sequence[str], out: str | os.PathLike,
            tokenizer: bool = True) -> dict[str, Any]:
    """Build (or finish building) the prepared data in `out`; returns the manifest. A second prepare into `out`
    waits for the first to finish; a full disk raises DiskFullError. `tokenizer=False` writes none (a carve that
    feeds no text stream, flava_jax/data/stream_sources.py)."""
    out = Path(out)
    with space_checked(out):
        out.mkdir(parents=True, exist_ok=True)
        with _exclusive(out):
            return _prepare_locked(settings, sources, out, tokenizer)


def _prepare_locked(settings: PrepareSettings, sources: Sequence[str], out: Path, tokenizer: bool) -> dict[str, Any]:
    progress = _resume(out, settings.fingerprint(sources))
    progress["row_budgets"] = _row_budgets(settings, sources)
    if load_json(out / MANIFEST) is not None and progress.get("complete"):
        log.info("%s is already complete", out)
        return json.loads((out / MANIFEST).read_text())
    if progress["source_records"] == 0:
        check_language(settings, sources)
    budgets = _budgets(settings, progress["row_budgets"])
    budgets.initial(progress)
    write_json(out / PROGRESS, progress)  # from now on the folder is a resumable prepare, whenever it stops
    meter = ProgressLog("prepare", unit="source records")
    logged: collections.Counter[str] = collections.Counter()
    with _Scheduler(settings, out, plan_slices(sources, settings.chunk_records), budgets) as scheduler:
        for index in itertools.count(progress["chunk"]):
            if progress["budget_met"]["text"] and progress["budget_met"]["images"]:
                break
            if not scheduler.has(index):
                progress["sources_exhausted"] = True
                break
            result, dropped = scheduler.result(index, progress)
            _commit(progress, result, dropped, out)
            _log_skips(result.skips, logged)
            meter.update(progress["source_records"], _budget_line(settings, progress))
    meter.finish(_budget_line(settings, progress))
    if progress["sources_exhausted"] and not (progress["train_rows"] or progress["heldout_rows"]):
        raise SourceError(f"no row was kept from {'; '.join(describe_source(s) for s in sources)}: skipped "
                          f"{progress['skipped'] or 'nothing'}; check --source and config.data (language, "
                          "require_caption, require_image)")
    return _finish(settings, list(sources), progress, out, tokenizer)


def _budgets(settings: PrepareSettings, rows: dict[str, int] | None) -> Budgets:
    """The carve's budgets: words and images, or (budget_unit "percent") train rows for text and for images."""
    return Budgets(text_words=settings.text_words, text_rows=rows["text"] if rows else None,
                   images=rows["images"] if rows else settings.images, heldout_texts=settings.heldout_max_texts,
                   heldout_images=settings.heldout_max_images)


def verdict(settings: PrepareSettings, budgets: Budgets, progress: dict[str, Any],
            result: SliceResult) -> set[str] | None:
    """For a speculative slice result, the outputs to drop (the streams that filled up since it was started) so
    that what is left is what the exact carve from `progress` writes; None when no dropping makes it so (a budget or
    cap is reached inside the slice, or its train images were fetched under other rules): it is carved again."""
    now = budgets.flags(progress)
    if needs_image(settings.require_image, *now[:2]) != needs_image(settings.require_image, *result.flags[:2]):
        return None
    kept, delta = progress["kept"], result.delta
    text_met, images_met, heldout_full, heldout_images_full = now
    dropped = set()
    if text_met:
        dropped |= {"text", "pair"}
    elif (budgets.text_rows is None and reached(progress["words"]["text"] + delta["words"]["text"],
                                                budgets.text_words)) or (
            budgets.text_rows is not None and reached(progress["train_rows"] + delta["train_rows"], budgets.text_rows)):
        return None
    if images_met:
        dropped |= {"image", "pair"}
    elif reached(kept["image"] + delta["kept"]["image"], budgets.images):
        return None
    if heldout_full:
        dropped.add(HELDOUT)
    elif kept[HELDOUT] + delta["kept"][HELDOUT] > budgets.heldout_texts:
        return None
    if heldout_images_full:
        dropped |= {HELDOUT_IMAGE, HELDOUT_PAIR}
    elif kept[HELDOUT_IMAGE] + delta["kept"][HELDOUT_IMAGE] > budgets.heldout_images:
        return None
    return dropped


def _commit(progress: dict[str, Any], result: SliceResult, dropped: set[str], out: Path) -> None:
    """Publish a slice's shards (those not dropped), add its counts and write progress.json: the slice is done."""
    delta = result.delta
    for output, shard in sorted(result.shards.items()):
        shard = dict(shard)
        tmp = out / output / shard.pop("tmp")
        if output in dropped:
            tmp.unlink()
            continue
        tmp.replace(shard_path(out, output, result.index))
        progress["shards"].setdefault(output, []).append(
            {"file": f"{output}/{shard_name(result.index)}", **shard})
    for output in OUTPUTS:
        if output not in dropped:
            progress["kept"][output] += delta["kept"][output]
            if output in progress["words"]:
                progress["words"][output] += delta["words"][output]
            for kind, stored in delta["image_formats"].get(output, {}).items():
                total = progress["image_formats"].setdefault(kind, {"count": 0, "bytes": 0})
                total["count"] += stored["count"]
                total["bytes"] += stored["bytes"]
    progress["train_rows"] += delta["train_rows"]
    progress["heldout_rows"] += delta["heldout_rows"]
    if result.exact:
        progress["budget_met"] = delta["budget_met"]
    progress["skipped"] = dict(sorted((collections.Counter(progress["skipped"]) + collections.Counter(
        delta["skipped"])).items()))
    progress["source_records"] += result.records
    progress["chunk"] = result.index + 1
    write_json(out / PROGRESS, progress)


def _log_skips(skips: list[tuple[str, str]], logged: collections.Counter[str]) -> None:
    """Log the first SKIPS_LOGGED skipped records of each reason, in source order (manifest.json counts them all)."""
    for reason, message in skips:
        logged[reason] += 1
        if logged[reason] <= SKIPS_LOGGED:
            last = " (any further ones are only counted)" if logged[reason] == SKIPS_LOGGED else ""
            log.warning("%s%s", message, last)


class _Scheduler:
    """Runs slices: with one worker, each exactly in this process, in order; with more, speculatively ahead in
    worker processes (at most one slice per worker running, at most LOOKAHEAD per worker finished and waiting), and
    again exactly where a speculative result cannot stand."""

    LOOKAHEAD = 2

    def __init__(self, settings: PrepareSettings, out: Path, slices: Iterator[Slice], budgets: Budgets) -> None:
        workers = settings.prepare_workers
        if workers is not None and workers < 1:
            raise ConfigError(f"config.data.prepare_workers={workers}: give at least 1, or None for one per core")
        self.settings, self.out, self.budgets = settings, out, budgets
        self.planned, self.slices = {}, enumerate(slices)  # slices are read ahead only as far as they are needed
        self.workers = workers or available_cores()
        self.pending: dict[int, concurrent.futures.Future] = {}
        self.next = 0
        self.pool = self.stop = self.fetcher = None
        if self.workers == 1:
            self.fetcher = image_fetcher(settings)
        else:
            context = multiprocessing.get_context("spawn")  # forking a parent holding threads can deadlock the child
            self.stop = context.Event()
            # fetch.workers is the prepare's download concurrency, shared by its workers
            fetch = dataclasses.replace(settings.fetch, workers=max(1, settings.fetch.workers // self.workers))
            self.pool = concurrent.futures.ProcessPoolExecutor(
                self.workers, mp_context=context, initializer=init_worker,
                initargs=(dataclasses.replace(settings, fetch=fetch), str(out), self.stop))

    def __enter__(self) -> _Scheduler:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fetcher is not None:
            self.fetcher.close()
        if self.pool is not None:
            self.stop.set()  # slices under way stop at their next window, leaving nothing
            self.pool.shutdown(wait=True, cancel_futures=True)
            for path in self.out.glob("*/*.arrayrecord.*.tmp"):  # slices finished but never committed
                path.unlink()

    def has(self, index: int) -> bool:
        """Whether the sources hold slice `index` (the slices before it are forgotten, or never kept)."""
        for done in [i for i in self.planned if i < index]:
            del self.planned[done]
        return self._planned(index, keep_from=index)

    def _planned(self, index: int, keep_from: int = 0) -> bool:
        """Plan slices up to `index`; False when the sources end before it."""
        while index not in self.planned:
            planned = next(self.slices, None)
            if planned is None:
                return False
            if planned[0] >= keep_from:
                self.planned[planned[0]] = planned[1]
        return True

    def _task(self, index: int, progress: dict[str, Any], exact: bool) -> SliceTask:
        flags = self.budgets.flags(progress)
        if exact:
            counts = {key: copy.deepcopy(progress[key]) for key in ("kept", "words", "train_rows", "heldout_rows",
                                                                   "budget_met")}
            return SliceTask(index, self.planned[index], self.budgets, counts, flags, True)
        counts = fresh_counts()
        counts["budget_met"] = {"text": flags[0], "images": flags[1]}
        return SliceTask(index, self.planned[index], self.budgets.speculative(flags), counts, flags, False)

    def result(self, index: int, progress: dict[str, Any]) -> tuple[SliceResult, set[str]]:
        """Slice `index` carved as the exact carve from `progress` would, and the outputs of it to drop."""
        if self.pool is None:
            return carve_slice(self._task(index, progress, exact=True), self.settings, self.out, self.fetcher), set()
        self.next = max(self.next, index)
        while True:
            self._top_up(index, progress)
            future = self.pending[index]
            if future.done():
                break
            running = [f for f in self.pending.values() if not f.done()]
            concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
        result = self._outcome(self.pending.pop(index))
        dropped = verdict(self.settings, self.budgets, progress, result)
        if dropped is not None:
            return result, dropped
        for output, shard in result.shards.items():
            (self.out / output / shard["tmp"]).unlink()
        return self._outcome(self.pool.submit(run_in_worker, self._task(index, progress, exact=True))), set()

    def _top_up(self, index: int, progress: dict[str, Any]) -> None:
        """Start slices ahead while fewer than `workers` run and not too many wait finished."""
        running = sum(not f.done() for f in self.pending.values())
        while (running < self.workers and self.next < index + (1 + self.LOOKAHEAD) * self.workers
               and self._planned(self.next)):
            self.pending[self.next] = self.pool.submit(run_in_worker, self._task(self.next, progress, exact=False))
            self.next += 1
            running += 1

    @staticmethod
    def _outcome(future: concurrent.futures.Future) -> SliceResult:
        try:
            return future.result()
        except BrokenProcessPool as e:
            raise SystemExit(f"a prepare worker process died ({e}); rerun to resume from the last committed "
                             "chunk, with fewer --workers if memory ran out") from e


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
        with space_checked(out / name):
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
    workers_flag = flags.DEFINE_integer("workers", None, "Processes that read, filter, fetch, convert and write "
                                        "slices of the sources (default: config.data.prepare_workers; None there: "
                                        "one per core).", lower_bound=1)

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
