"""Prepare's throughput, issue 31's measures: per-core image work against the reference's; a whole prepare with 1
and 2 worker processes; and, for each kind of source, the parent's CPU per row against a worker's, with the wall
time they project for 4M rows on 96, 224 and 240 cores.

The images are real photos (../shared/data/photos, else the bundled sample's) re-encoded at typical WiT sizes, never
pre-shrunk: JPEG (quality 90) at 800x600 to 1600x1200, and PNG with an alpha channel at 800x600; the Hub parquet
holds them as theodor1289/wit does, RGB squashed to 224x224 PNG, which prepare stores as they are. Every prepare
keeps all the rows (text_words and images -1: text, image and pair streams; held-out rows as configs/base.py sets
them; its tokenizer, bert-base-uncased), reads sources already in the page cache and fetches nothing. Measures, each
the median of --repeats interleaved runs:

* image work: `convert_fetched(stored_image)` (decode, validate, resize, JPEG encode) over --rows images in windows
  of `data.fetch_batch`, in this process, beside the reference's per-image work (PIL decode, non-RGB -> RGBA pasted
  on white, bicubic resize to exactly 224x224 with `transformers.image_transforms.resize`; docs/reference.md#data),
  which stops at the resized array; and the same per image kind, in ms;
* scaling: a whole `prepare` of a "WIT with images" JSON-lines source of --rows rows (base64 images inline) cut into
  slices of --chunk_records rows, with 1 worker (everything in this process) and with --workers processes; rows/s;
* source kinds: JSON lines with base64 images, a TSV with a local image folder (`data.image_dirs`), theodor1289/wit's
  Hub parquet, img2dataset's webdataset (tar shards of {key}.jpg/.txt/.json). Parent: getrusage(RUSAGE_SELF) CPU
  seconds around `prepare` with --workers processes (they are its children, so none of theirs), at three points:
  --kind_rows rows in --kind_slices slices, 4x the rows in as many slices, and 4x the rows in 4x the slices; so
  CPU = fixed + per_row x rows + per_slice x slices through the points' medians (each repeat's own fit is kept, to
  show the spread). Worker: the CPU of a whole prepare with 1 worker (reading, filtering, converting, writing, all in
  this process), per row: the slope between the first two points. The parent's per-row figure is per_row +
  per_slice / chunk_records of configs/base.py (a real prepare's slices). Projection: time = fixed + rows x
  max(parent_per_row, worker_per_row / (cores - 1)). The Hub's rows are 4x --kind_rows (a worker spends little on
  them, so the parent's slope needs more), in `datasets`' row groups of 100 rows; webdataset shards hold one slice;
  the TSV, which the parent reads, has the real WiT rows' columns (../shared/data/wit, about 900 characters a row).

    python benchmarks/prepare.py [--rows 960] [--chunk_records 40] [--kind_rows 240] [--kind_slices 6]
                                 [--repeats 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import io
import json
import os
import resource
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flava_jax.data.images import Fetched, convert_fetched, stored_image  # noqa: E402
from flava_jax.data.prepare import PrepareSettings, prepare  # noqa: E402
from flava_jax.data.sample import SAMPLE_DIR  # noqa: E402

SHARED_PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "photos" / "skimage"
JPEG_SIZES = ((800, 600), (1024, 768), (1280, 960), (1600, 1200))
PNG_SIZE = (800, 600)
HOST_ROWS, PROJECTED_CORES = 4_000_000, (96, 224, 240)
TARGETS = {"worker_over_parent": 200, "saturation_cores": 448, "scaling": 1.8}
HUB_ROW_GROUP = 100  # rows per row group of `datasets`' parquet with images (PARQUET_ROW_GROUP_SIZE_FOR_IMAGE_DATASETS)
CONTEXT = ("context_page_description", "context_section_description", "caption_alt_text_description")
START = time.monotonic()


def say(line: str) -> None:
    """A progress line, with the machine's 1-minute load average (other work disturbs the timings)."""
    print(f"[{time.monotonic() - START:4.0f}s, load {os.getloadavg()[0]:.1f}] {line}", flush=True)


def base_settings() -> PrepareSettings:
    from configs import base  # here, not above: it imports JAX, which each spawned worker would import again

    return PrepareSettings.from_config(base.get_config())


def settings(**changes: object) -> PrepareSettings:
    return dataclasses.replace(base_settings(), **changes)


def photo_files(photos: Path) -> list[Path]:
    return sorted(p for p in photos.iterdir() if p.suffix in (".jpg", ".png"))


def wit_images(photos: Path) -> list[tuple[str, bytes]]:
    """(kind, bytes): each photo as a JPEG at every size of JPEG_SIZES and as a PNG with an alpha gradient."""
    images = []
    for path in photo_files(photos):
        photo = Image.open(path).convert("RGB")
        for size in JPEG_SIZES:
            out = io.BytesIO()
            photo.resize(size, Image.Resampling.LANCZOS).save(out, format="JPEG", quality=90)
            images.append((f"JPEG {size[0]}x{size[1]}", out.getvalue()))
        rgba = photo.resize(PNG_SIZE, Image.Resampling.LANCZOS).convert("RGBA")
        rgba.putalpha(Image.linear_gradient("L").resize(PNG_SIZE))
        out = io.BytesIO()
        rgba.save(out, format="PNG")
        images.append((f"PNG RGBA {PNG_SIZE[0]}x{PNG_SIZE[1]}", out.getvalue()))
    return images


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


GC_SECONDS = [0.0, 0.0]  # CPU seconds this process spent in the cyclic garbage collector; when the running one began


def _gc_clock(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        GC_SECONDS[1] = time.process_time()
    else:
        GC_SECONDS[0] += time.process_time() - GC_SECONDS[1]


# ------------------------------------------------------------------------------------ image work, one process
def store(s: PrepareSettings) -> Callable[[bytes], bytes]:
    """Prepare's per-image work, as its carver calls it."""
    return functools.partial(stored_image, size=s.image_size, mode=s.image_resize, quality=s.jpeg_quality,
                             max_pixels=s.max_image_pixels, reencode=s.image_reencode)


def image_work(convert: Callable[[bytes], bytes], images: list[bytes], window: int) -> float:
    """Rows/s of `convert_fetched` over the images in prepare's windows, in this process."""
    start = time.perf_counter()
    for i in range(0, len(images), window):
        convert_fetched(convert, [Fetched(data, origin="inline") for data in images[i:i + window]])
    return len(images) / (time.perf_counter() - start)


def reference_image(data: bytes, size: int) -> np.ndarray:
    """The reference's per-image work, in its order: decode; a non-RGB image to RGBA pasted onto white; bicubic
    resize to exactly size x size with transformers' resize."""
    from transformers.image_transforms import resize
    from transformers.image_utils import PILImageResampling

    image = Image.open(io.BytesIO(data))
    if image.mode != "RGB":
        rgba = image.convert("RGBA")
        image = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image.paste(rgba, mask=rgba)
        image = image.convert("RGB")
    return resize(np.asarray(image), (size, size), resample=PILImageResampling.BICUBIC)


def reference(images: list[bytes], size: int) -> float:
    """Images/s of the reference's work, in this process."""
    start = time.perf_counter()
    for data in images:
        reference_image(data, size)
    return len(images) / (time.perf_counter() - start)


def per_kind(images: list[tuple[str, bytes]], convert: Callable[[bytes], bytes], size: int,
             repeats: int) -> dict[str, dict[str, float]]:
    """Milliseconds per image of each kind: stored_image (ours) and the reference's, medians."""
    kinds: dict[str, list[bytes]] = {}
    for kind, data in images:
        kinds.setdefault(kind, []).append(data)
    result = {}
    for kind, datas in kinds.items():
        times: dict[str, list[float]] = {"ours": [], "reference": []}
        for _ in range(repeats):
            for name, work in (("ours", convert), ("reference", functools.partial(reference_image, size=size))):
                start = time.perf_counter()
                for data in datas:
                    work(data)
                times[name].append((time.perf_counter() - start) / len(datas) * 1e3)
        result[kind] = {name: round(statistics.median(t), 2) for name, t in times.items()}
    return result


# ------------------------------------------------------------------------------------ sources
def _row(i: int) -> dict[str, str]:
    """Row i's WiT fields: English, a caption, its image named by its URL."""
    return {"image_url": f"https://upload.wikimedia.org/wikipedia/commons/a/ab/Row_{i}.jpg", "language": "en",
            "page_url": f"https://en.wikipedia.org/wiki/P{i}", "caption_reference_description": f"Caption number {i}"}


# each writes one source of `images` (one row each) under root, in pieces of `slice_rows` rows where the layout has
# pieces (tar shards): (the source, the settings it needs). The fixtures are imported inside,
# as in `base_settings`, since they import JAX
Writer = Callable[[Path, list[bytes], int], tuple[Path, dict[str, Any]]]


def json_lines(root: Path, images: list[bytes], slice_rows: int) -> tuple[Path, dict[str, Any]]:
    from tests.data.wit_rows import write_json_with_images

    root.mkdir(parents=True)
    return write_json_with_images(root / "rows.json", images), {}


@functools.cache
def real_rows() -> tuple[dict[str, Any], ...]:
    """The captioned rows of the real WiT files in ../shared/data (every WiT column, about 900 characters a row),
    without their photo; none where that folder is missing."""
    from tests.data.wit_rows import real_rows as read

    shared = SHARED_PHOTOS.parents[1]
    return tuple({k: v for k, v in row.items() if k != "photo"} for row in read(shared)) if (shared / "wit").is_dir() \
        else ()


def tsv_folder(root: Path, images: list[bytes], slice_rows: int) -> tuple[Path, dict[str, Any]]:
    """An official WiT TSV (its parent reads it: the real rows' columns, made English, else `_row`'s few) and a
    folder of the images named by their URLs."""
    from tests.data.wit_rows import write_tsv

    real = real_rows()
    rows = [{**real[i % len(real)], "image_url": _row(i)["image_url"], "language": "en"} if real else _row(i)
            for i in range(len(images))]
    tsv, folder = write_tsv(rows, images, root)
    return tsv, {"image_dirs": (str(folder),)}


def hub_parquet(root: Path, images: list[bytes], slice_rows: int) -> tuple[Path, dict[str, Any]]:
    """theodor1289/wit's layout: data/train-*.parquet with the HF Image struct, the URL, `text` and the contexts, in
    row groups of HUB_ROW_GROUP rows as `datasets` writes them (slices take whole row groups)."""
    from tests.data.wit_rows import IMAGE_TYPE, write_parquet

    rows = [_row(i) for i in range(len(images))]
    table = pa.table({"image_url": pa.array([r["image_url"] for r in rows], pa.string()),
                      "image": pa.array([{"bytes": data, "path": None} for data in images], IMAGE_TYPE),
                      "text": pa.array([r["caption_reference_description"] for r in rows], pa.string()),
                      **{c: pa.array([None] * len(rows), pa.string()) for c in CONTEXT}})
    features = {"image": {"_type": "Image"},
                **{c: {"dtype": "string", "_type": "Value"} for c in ("image_url", "text", *CONTEXT)}}
    write_parquet(root / "data" / "train-00000-of-00001.parquet", table, features, row_group_size=HUB_ROW_GROUP)
    return root, {}


def webdataset(root: Path, images: list[bytes], slice_rows: int) -> tuple[Path, dict[str, Any]]:
    """img2dataset shards of `slice_rows` samples: {key}.jpg, .txt and .json (with the saved WiT columns)."""
    root.mkdir(parents=True)
    for shard, first in enumerate(range(0, len(images), slice_rows)):
        with tarfile.open(root / f"{shard:05d}.tar", "w") as tar:
            for i in range(first, min(first + slice_rows, len(images))):
                row, key = _row(i), f"{i:09d}"
                meta = {"key": key, "url": row["image_url"], "caption": row["caption_reference_description"],
                        "status": "success", "language": row["language"], "page_url": row["page_url"]}
                for extension, member in (("jpg", images[i]), ("txt", meta["caption"].encode()),
                                          ("json", json.dumps(meta).encode())):
                    info = tarfile.TarInfo(f"{key}.{extension}")
                    info.size = len(member)
                    tar.addfile(info, io.BytesIO(member))
    return root, {}


@dataclasses.dataclass(frozen=True)
class SourceKind:
    name: str
    write: Writer
    square: bool  # theodor1289/wit's 224x224 PNGs, stored as they are; else WiT-sized images, resized
    pieces: bool  # the file layout follows slice_rows (tar shards); else chunk_records cuts the slices
    target_minutes: float  # issue 31's wall-time target for 4M rows on 224 cores
    scale: int = 1  # x --kind_rows: the Hub's rows are cheap for a worker, so the parent's slope needs more of them


SOURCE_KINDS = (SourceKind("JSON lines, base64", json_lines, False, False, 30),
                SourceKind("TSV + image folder", tsv_folder, False, False, 30),
                SourceKind("Hub parquet, 224 PNG", hub_parquet, True, False, 15, scale=4),
                SourceKind("img2dataset webdataset", webdataset, False, True, 30))


def run_prepare(source: Path, out: Path, workers: int, chunk_records: int, **changes: object) -> dict[str, float]:
    """One whole prepare of `source` (every stream, nothing fetched, a fresh cache): its rows, slices, wall seconds
    and this process's CPU seconds (of which gc_s in the garbage collector); its output is removed afterwards."""
    run = settings(text_words=-1, images=-1, download=False, cache_dir=str(out / "cache"), prepare_workers=workers,
                   chunk_records=chunk_records, **changes)
    start, cpu, collecting = time.perf_counter(), _cpu(), GC_SECONDS[0]
    manifest = prepare(run, [str(source)], out)
    wall, cpu = time.perf_counter() - start, _cpu() - cpu
    slices = {shard["file"].split("/")[-1] for shards in manifest["shards"].values() for shard in shards}
    shutil.rmtree(out)
    return {"rows": manifest["source_records"], "slices": len(slices), "wall_s": wall, "cpu_s": cpu,
            "gc_s": GC_SECONDS[0] - collecting}


# ------------------------------------------------------------------------------------ the measures
@dataclasses.dataclass(frozen=True)
class Point:
    """A prepare's shape: rows, rows per slice, worker processes."""

    rows: int
    slice_rows: int
    workers: int


def kind_points(rows: int, slices: int, workers: int) -> dict[str, Point]:
    """The parent at (rows, slices), (4 rows, slices), (4 rows, 4 slices); the worker (1 process) at the first two."""
    small, large = rows // slices, 4 * rows // slices
    return {"parent_small": Point(rows, small, workers), "parent_large": Point(4 * rows, large, workers),
            "parent_fine": Point(4 * rows, small, workers), "worker_small": Point(rows, small, 1),
            "worker_large": Point(4 * rows, large, 1)}


def measure(args: argparse.Namespace, images: list[tuple[str, bytes]], squares: list[bytes]) -> dict[str, Any]:
    """Every measure --repeats times, interleaved: per repeat the image work and the reference, the scaling pair,
    then each source kind at each of its points."""
    s = base_settings()
    convert = store(s)
    datas = [images[i % len(images)][1] for i in range(args.rows)]
    points = {k.name: kind_points(args.kind_rows * k.scale, args.kind_slices, args.workers) for k in SOURCE_KINDS}
    pools = {False: [data for _, data in images], True: squares}
    runs: dict[str, Any] = {"work": [], "reference": [], "scaling": {1: [], args.workers: []},
                            "kinds": {name: {p: [] for p in kind} for name, kind in points.items()}}
    from tests.data.wit_rows import write_json_with_images  # here: it imports JAX (see base_settings)

    with tempfile.TemporaryDirectory(prefix="prepare_bench_") as tmp:
        root = Path(tmp)
        say(f"writing sources under {root}")
        scaling_source = write_json_with_images(root / "scaling.json", datas)
        sources: dict[tuple[str, int, int], tuple[Path, dict[str, Any]]] = {}
        for i, kind in enumerate(SOURCE_KINDS):
            pool = pools[kind.square]
            for point in points[kind.name].values():
                key = (kind.name, point.rows, point.slice_rows if kind.pieces else 0)
                if key not in sources:
                    sources[key] = kind.write(root / f"source{i}_{point.rows}_{key[2]}",
                                              [pool[j % len(pool)] for j in range(point.rows)], point.slice_rows)
            warm = kind.write(root / f"warm{i}", pool[:8], 4)
            for workers in (1, args.workers):  # first-use imports in this process
                run_prepare(warm[0], root / "out", workers, 4, **warm[1])
        reference_image(datas[0], s.image_size)
        # This process holds what a prepare's does not (transformers for the reference: a full collection of it costs
        # about 0.1 s, once in a while inside a timed prepare); frozen, collections look only at what comes after.
        gc.collect()
        gc.freeze()
        gc.callbacks.append(_gc_clock)
        for r in range(args.repeats):
            runs["work"].append(image_work(convert, datas, s.fetch_batch))
            runs["reference"].append(reference(datas, s.image_size))
            say(f"repeat {r + 1}/{args.repeats}: image work {runs['work'][-1]:.1f} rows/s, reference "
                f"{runs['reference'][-1]:.1f} images/s")
            for workers in runs["scaling"]:
                result = run_prepare(scaling_source, root / "out", workers, args.chunk_records)
                runs["scaling"][workers].append(result)
                say(f"repeat {r + 1}/{args.repeats}: whole prepare, {workers} worker(s): "
                    f"{result['rows'] / result['wall_s']:.1f} rows/s, {result['slices']} slices")
            for kind in SOURCE_KINDS:
                for name, point in points[kind.name].items():
                    source, changes = sources[(kind.name, point.rows, point.slice_rows if kind.pieces else 0)]
                    result = run_prepare(source, root / "out", point.workers, point.slice_rows, **changes)
                    runs["kinds"][kind.name][name].append(result)
                    say(f"repeat {r + 1}/{args.repeats}: {kind.name}, {name}: {result['rows']} rows, "
                        f"{result['slices']} slices, {result['cpu_s']:.2f} CPU s, {result['wall_s']:.1f} s")
    runs["per_kind"] = per_kind(images, convert, s.image_size, args.repeats)
    return runs


# ------------------------------------------------------------------------------------ figures
def _median(results: list[dict[str, float]], key: str) -> float:
    return statistics.median(result[key] for result in results)


def fit_kind(points: dict[str, tuple[float, float, float]], chunk_records: int) -> dict[str, float]:
    """Parent CPU = fixed + per_row x rows + per_slice x slices through its three (rows, slices, CPU s) points; the
    worker's per-row CPU, the slope of its two."""
    (r1, s1, c1), (r2, s2, c2), (_, s3, c3) = (points[p] for p in ("parent_small", "parent_large", "parent_fine"))
    per_slice = (c3 - c2) / (s3 - s2)
    per_row = (c2 - c1 - per_slice * (s2 - s1)) / (r2 - r1)
    (w1, _, cw1), (w2, _, cw2) = points["worker_small"], points["worker_large"]
    worker = (cw2 - cw1) / (w2 - w1)
    parent = per_row + per_slice / chunk_records
    return {"parent_ms_per_row": parent * 1e3, "parent_rows_ms": per_row * 1e3, "parent_slice_ms": per_slice * 1e3,
            "parent_fixed_s": c1 - per_row * r1 - per_slice * s1, "worker_ms_per_row": worker * 1e3,
            "worker_fixed_s": cw1 - worker * w1}


def fit_runs(runs: dict[str, list[dict[str, float]]], chunk_records: int) -> dict[str, Any]:
    """The fit through each point's medians (the figures), and the fit of each repeat on its own (their spread).
    worker / parent is a lower bound where the parent's slope is zero or less, within the noise of its CPU time: the
    worker's figure over the largest magnitude of the parent's fits."""
    def point(results: list[dict[str, float]]) -> tuple[float, float, float]:
        return tuple(statistics.median(result[key] for result in results) for key in ("rows", "slices", "cpu_s"))

    medians = {name: point(results) for name, results in runs.items()}
    repeats = [fit_kind({name: point([results[r]]) for name, results in runs.items()}, chunk_records)
               for r in range(len(next(iter(runs.values()))))]
    fit = fit_kind(medians, chunk_records)
    parents = [fit["parent_ms_per_row"], *(f["parent_ms_per_row"] for f in repeats)]
    resolved = fit["parent_ms_per_row"] > 0
    return {**fit, "worker_over_parent": fit["worker_ms_per_row"] / (
                fit["parent_ms_per_row"] if resolved else max(abs(p) for p in parents)),
            "worker_over_parent_lower_bound": not resolved,
            "points": {name: dict(zip(("rows", "slices", "cpu_s"), p, strict=True)) for name, p in medians.items()},
            "per_repeat": {key: [round(f[key], 4) for f in repeats] for key in (
                "parent_ms_per_row", "parent_slice_ms", "parent_fixed_s", "worker_ms_per_row")}}


def projected_minutes(fixed: float, parent: float, worker: float, cores: int, rows: int = HOST_ROWS) -> float:
    """fixed + rows x max(parent, worker / (cores - 1)), in minutes; per-row CPU seconds in."""
    return (fixed + rows * max(parent, worker / (cores - 1))) / 60


def summarise_kind(kind: SourceKind, runs: dict[str, list[dict[str, float]]], chunk: int) -> dict[str, Any]:
    k = fit_runs(runs, chunk)
    minutes = {str(c): projected_minutes(max(k["parent_fixed_s"], 0), max(k["parent_ms_per_row"], 0) / 1e3,
                                         k["worker_ms_per_row"] / 1e3, c) for c in PROJECTED_CORES}
    return {**{key: v if isinstance(v, bool) else round(v, 4) for key, v in k.items()
               if key not in ("points", "per_repeat")},
            "rows": k["points"]["parent_small"]["rows"], "per_repeat": k["per_repeat"],
            "saturation_cores": round(k["worker_over_parent"] + 1, 1),
            "minutes_4m_rows": {c: round(m, 1) for c, m in minutes.items()}, "target_minutes_224": kind.target_minutes,
            "points": {name: {key: round(v, 3) for key, v in point.items()} for name, point in k["points"].items()},
            "runs": {name: [{key: round(v, 6) for key, v in result.items()} for result in results]
                     for name, results in runs.items()}}


def acceptance(scaling: float, kinds: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 31's targets against the figures: (target, wanted, measured, ratio to the target, met, whether the
    figure is a lower bound)."""
    rows = [("whole prepare, 2 workers / 1 worker", TARGETS["scaling"], scaling, False)]
    for name, k in kinds.items():
        bound = k["worker_over_parent_lower_bound"]
        rows += [(f"{name}: worker / parent CPU per row", TARGETS["worker_over_parent"], k["worker_over_parent"],
                  bound),
                 (f"{name}: parent saturation, cores", TARGETS["saturation_cores"], k["saturation_cores"], bound),
                 (f"{name}: 4M rows on 224 cores, minutes (at most)", k["target_minutes_224"],
                  k["minutes_4m_rows"]["224"], False)]
    return [{"target": what, "wanted": wanted, "measured": round(got, 2),
             "ratio": round(wanted / got if "minutes" in what else got / wanted, 2),
             "met": bool(got <= wanted if "minutes" in what else got >= wanted), "lower_bound": bound}
            for what, wanted, got, bound in rows]


def summarise(runs: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    chunk = base_settings().chunk_records
    work, ref = statistics.median(runs["work"]), statistics.median(runs["reference"])
    rate = {w: statistics.median(r["rows"] / r["wall_s"] for r in results) for w, results in runs["scaling"].items()}
    one, many = rate[1], rate[args.workers]
    kinds = {kind.name: summarise_kind(kind, runs["kinds"][kind.name], chunk) for kind in SOURCE_KINDS}
    return {
        "photos": str(args.photos), "repeats": args.repeats, "workers": args.workers,
        "acceptance": acceptance(many / one, kinds),
        "image_work": {"rows": args.rows, "rows_per_s": round(work, 1), "reference_per_s": round(ref, 1),
                       "vs_reference": round(work / ref, 2), "runs": [round(v, 1) for v in runs["work"]],
                       "reference_runs": [round(v, 1) for v in runs["reference"]]},
        "per_kind_ms": runs["per_kind"],
        "scaling": {"rows": args.rows, "chunk_records": args.chunk_records,
                    "slices": runs["scaling"][1][0]["slices"], "rows_per_s_1": round(one, 1),
                    f"rows_per_s_{args.workers}": round(many, 1), "ratio": round(many / one, 2),
                    "one_worker_vs_reference": round(one / ref, 2), "target": TARGETS["scaling"],
                    "runs": {str(w): [round(r["rows"] / r["wall_s"], 1) for r in results]
                             for w, results in runs["scaling"].items()}},
        "source_kinds": {"kind_rows": args.kind_rows, "kind_slices": args.kind_slices, "chunk_records": chunk,
                         "projected_rows": HOST_ROWS, "slices_projected": -(-HOST_ROWS // chunk),
                         "model": "parent CPU = fixed + per_row x rows + per_slice x slices; parent_ms_per_row = "
                                  "per_row + per_slice / chunk_records; minutes = (fixed + rows x max(parent, "
                                  "worker / (cores - 1))) / 60",
                         "targets": TARGETS, "kinds": kinds},
    }


def report(r: dict[str, Any]) -> None:
    w, s, k = r["image_work"], r["scaling"], r["source_kinds"]
    print(f"\nper image, ms (median of {r['repeats']}, one process)\n{'kind':<20}{'ours':>8}{'reference':>11}"
          f"{'ref / ours':>12}")
    for kind, t in r["per_kind_ms"].items():
        print(f"{kind:<20}{t['ours']:>8.2f}{t['reference']:>11.2f}{t['reference'] / t['ours']:>11.2f}x")
    print(f"\nimage work, {w['rows']} rows, one process: {w['rows_per_s']:.1f} rows/s, reference "
          f"{w['reference_per_s']:.1f} images/s: {w['vs_reference']:.2f}x")
    many = r["workers"]
    print(f"whole prepare, JSON lines, {s['rows']} rows in {s['slices']} slices of {s['chunk_records']}: "
          f"{s['rows_per_s_1']:.1f} rows/s with 1 worker ({s['one_worker_vs_reference']:.2f}x the reference), "
          f"{s[f'rows_per_s_{many}']:.1f} with {many}: {s['ratio']:.2f}x")
    cores = " / ".join(map(str, PROJECTED_CORES))
    print(f"\nby source kind: parent = {many} workers, worker = 1 process; parent per row at "
          f"{k['chunk_records']:,} rows a slice (medians of {r['repeats']}; range: each repeat's own fit)\n"
          f"{k['model']}")
    print(f"{'source kind':<24}{'rows':>6}{'parent ms/row':>15}{'range':>18}{'ms/slice':>10}{'fixed s':>9}"
          f"{'worker ms/row':>14}{'worker/parent':>14}{'saturation':>11}{f'4M rows, min, {cores}':>30}")
    for name, kind in k["kinds"].items():
        minutes = " / ".join(f"{v:.1f}" for v in kind["minutes_4m_rows"].values())
        spread = kind["per_repeat"]["parent_ms_per_row"]
        print(f"{name:<24}{kind['rows']:>6.0f}{kind['parent_ms_per_row']:>15.4f}"
              f"{f'{min(spread):.4f}..{max(spread):.4f}':>18}{kind['parent_slice_ms']:>10.2f}"
              f"{kind['parent_fixed_s']:>9.2f}{kind['worker_ms_per_row']:>14.3f}"
              f"{'>=' if kind['worker_over_parent_lower_bound'] else '':>5}{kind['worker_over_parent']:>8.0f}x"
              f"{kind['saturation_cores']:>11.0f}{minutes:>30}")
    print(f"\n{'issue 31 target':<64}{'wanted':>8}{'measured':>10}{'ratio':>8}  met")
    for row in r["acceptance"]:
        print(f"{row['target']:<64}{row['wanted']:>8}{'>=' if row['lower_bound'] else '':>4}{row['measured']:>8}"
              f"{row['ratio']:>7.2f}x  {'yes' if row['met'] else 'NO'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=960, help="rows of the image work and the scaling prepare")
    parser.add_argument("--chunk_records", type=int, default=40, help="rows per slice of the scaling prepare")
    parser.add_argument("--kind_rows", type=int, default=240, help="rows per source kind (and 4x that)")
    parser.add_argument("--kind_slices", type=int, default=6, help="slices at kind_rows (and 4x that)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="worker processes of the parallel prepares")
    parser.add_argument("--photos", type=Path,
                        default=SHARED_PHOTOS if SHARED_PHOTOS.is_dir() else SAMPLE_DIR / "images")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "prepare.json")
    args = parser.parse_args()
    if args.workers < 2:
        parser.error("--workers: at least 2 (1 worker is measured beside them)")
    from tests.data.wit_rows import png_224  # here: it imports JAX (see base_settings)

    images = wit_images(args.photos)
    results = summarise(measure(args, images, [png_224(path) for path in photo_files(args.photos)]), args)
    report(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
