"""Rows/s of prepare's image work with inline images, for 1 worker process and for every core, beside the reference's
own per-image work (PIL decode, non-RGB -> RGBA pasted on white, bicubic resize to exactly 224x224 with
`transformers.image_transforms.resize`; docs/reference.md#data), as ratios; and, for each kind of source, the parent's
CPU per row against a worker's, which is what bounds one prepare on many cores.

The images are real photos (../shared/data/photos, else the bundled sample's) re-encoded at typical WiT sizes, never
pre-shrunk: JPEG (quality 90) at 800x600 to 1600x1200, and PNG with an alpha channel at 800x600. Three measures:

* image work: `ImagePool.convert_many` (decode, validate, resize, JPEG encode) over the rows' images in windows of
  `data.fetch_batch`, as prepare calls it, the pool already started;
* whole prepare: `prepare` of a "WIT with images" JSON-lines source (base64 images inline) into the image stream:
  reading, the image work, writing shards, and the pool's start-up. The parent's CPU time per row, measured with
  every core, bounds how many rows/s one prepare can feed to any number of workers;
* source kinds: a whole prepare (every core) of --kind_rows rows of each kind of source: JSON lines with base64
  images, a TSV with a local image folder (`data.image_dirs`), theodor1289/wit's Hub parquet (224x224 RGB PNGs, which
  prepare stores as they are), and img2dataset's webdataset (tar shards of {key}.jpg/.txt/.json); the first, second
  and last carry the WiT-sized images above. Parent: getrusage(RUSAGE_SELF) CPU seconds around `prepare`, divided by
  the rows (the workers are children, so none of theirs). Worker: `stored_image` (prepare's per-image work) timed on
  the same images in this process, per row, since RUSAGE_CHILDREN also counts each spawned worker's start-up (it is
  kept beside, as `children_ms_per_row`). Amdahl's law with the parent serial and the workers parallel:
  time(rows, cores) = rows * max(parent_cpu_per_row, worker_cpu_per_row / (cores - 1)); the parent saturates (adding
  cores stops helping) at worker_cpu_per_row / parent_cpu_per_row + 1 cores.

The reference's work runs in this process on the same bytes, one image after another, and stops at the resized
array (its later PNG encode for the Hub is not counted; ours includes the JPEG encode). Medians of --repeats
interleaved runs. From the measured per-core rate it projects how long 4M images take on a 96-core host.

    python benchmarks/prepare.py [--rows 960] [--kind_rows 240] [--repeats 3] [--workers N]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import io
import json
import resource
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

from flava_jax.data.images import Fetched, ImagePool, available_cores, stored_image, to_jpeg  # noqa: E402
from flava_jax.data.prepare import PrepareSettings, prepare  # noqa: E402
from flava_jax.data.sample import SAMPLE_DIR  # noqa: E402

SHARED_PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "photos" / "skimage"
JPEG_SIZES = ((800, 600), (1024, 768), (1280, 960), (1600, 1200))
PNG_SIZE = (800, 600)
HOST_CORES, HOST_IMAGES = 96, 4_000_000
PROJECTED_CORES = (96, 224, 240)
AMDAHL = ("time = rows * max(parent_cpu_per_row, worker_cpu_per_row / (cores - 1)); parent saturates at "
          "worker_cpu_per_row / parent_cpu_per_row + 1 cores")
CONTEXT = ("context_page_description", "context_section_description", "caption_alt_text_description")


def settings(**changes: object) -> PrepareSettings:
    from configs import base  # here, not above: it imports JAX, which each spawned worker would import again

    return dataclasses.replace(PrepareSettings.from_config(base.get_config()), **changes)


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


def image_work(pool: ImagePool, images: list[bytes], window: int) -> tuple[float, float]:
    """(rows/s, rows per CPU second of this process) of the pool's conversions, in prepare's windows."""
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(images), window):
        pool.convert_many([Fetched(data, origin="inline") for data in images[i:i + window]])
    return len(images) / (time.perf_counter() - start), len(images) / (time.process_time() - cpu)


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def whole_prepare(source: Path, out: Path, workers: int, **changes: object) -> tuple[float, float, float]:
    """(rows/s, CPU seconds per row of this process, and of its workers) of a whole prepare of `source` into the
    image stream; the workers' CPU counts once prepare has closed its pool (RUSAGE_CHILDREN: joined children)."""
    run = settings(seed=0, text_words=0, images=-1, heldout_fraction=0.0, download=False,
                   cache_dir=str(out / "cache"), prepare_workers=workers, **changes)
    start, cpu, children = time.perf_counter(), _cpu(resource.RUSAGE_SELF), _cpu(resource.RUSAGE_CHILDREN)
    rows = prepare(run, [str(source)], out)["kept"]["image"]
    cpu, children = _cpu(resource.RUSAGE_SELF) - cpu, _cpu(resource.RUSAGE_CHILDREN) - children
    return rows / (time.perf_counter() - start), cpu / rows, children / rows


def _totalled(rate: float, parent: float, children: float) -> tuple[float, float, float]:
    return rate, parent, parent + children


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


def reference(images: list[bytes], size: int) -> tuple[float, float]:
    """(images/s, images per CPU second) of the reference's work, in this process."""
    start, cpu = time.perf_counter(), time.process_time()
    for data in images:
        reference_image(data, size)
    return len(images) / (time.perf_counter() - start), len(images) / (time.process_time() - cpu)


def per_kind(images: list[tuple[str, bytes]], convert: functools.partial, size: int,
             repeats: int) -> dict[str, dict[str, float]]:
    """Milliseconds per image of each kind: to_jpeg (our per-image work) and the reference's, medians."""
    kinds: dict[str, list[bytes]] = {}
    for kind, data in images:
        kinds.setdefault(kind, []).append(data)
    result = {}
    for kind, datas in kinds.items():
        times: dict[str, list[float]] = {"to_jpeg": [], "reference": []}
        for _ in range(repeats):
            for name, work in (("to_jpeg", convert), ("reference", functools.partial(reference_image, size=size))):
                start = time.perf_counter()
                for data in datas:
                    work(data)
                times[name].append((time.perf_counter() - start) / len(datas) * 1e3)
        result[kind] = {name: round(statistics.median(t), 2) for name, t in times.items()}
    return result


def measure(images: list[tuple[str, bytes]], rows: int, repeats: int, workers: int) -> dict[str, list[float]]:
    """Each measure --repeats times, interleaved."""
    s = settings()
    convert = functools.partial(to_jpeg, size=s.image_size, mode=s.image_resize, quality=s.jpeg_quality,
                                max_pixels=s.max_image_pixels)
    datas = [images[i % len(images)][1] for i in range(rows)]
    runs: dict[str, list[float]] = {name: [] for name in (
        "work_1", "work_n", "reference", "prepare_1", "prepare_n", "work_1_cpu", "reference_cpu", "parent_cpu",
        "total_cpu_1", "total_cpu_n")}
    from tests.data.wit_rows import write_json_with_images  # here: it imports JAX (see settings)

    with tempfile.TemporaryDirectory() as tmp, ImagePool(convert, 1) as one, ImagePool(convert, workers) as many:
        source = write_json_with_images(Path(tmp) / "rows.json", datas)
        write_json_with_images(Path(tmp) / "warmup.json", datas[:8])
        whole_prepare(Path(tmp) / "warmup.json", Path(tmp) / "warmup", 1)  # first-use imports, on both sides
        reference_image(datas[0], s.image_size)
        image_work(many, datas[:2 * workers], s.fetch_batch)  # the workers started
        for i in range(repeats):
            for names, values in (
                    (("work_1", "work_1_cpu"), image_work(one, datas, s.fetch_batch)),
                    (("work_n", None), image_work(many, datas, s.fetch_batch)),
                    (("reference", "reference_cpu"), reference(datas, s.image_size)),
                    (("prepare_1", None, "total_cpu_1"), _totalled(*whole_prepare(source, Path(tmp) / f"one{i}", 1))),
                    (("prepare_n", "parent_cpu", "total_cpu_n"),
                     _totalled(*whole_prepare(source, Path(tmp) / f"n{i}", workers)))):
                for name, value in zip(names, values, strict=True):
                    if name:
                        runs[name].append(value)
    runs["per_kind"] = per_kind(images, convert, s.image_size, repeats)
    return runs


def _row(i: int) -> dict[str, str]:
    """Row i's WiT fields: English, a caption, its image named by its URL."""
    return {"image_url": f"https://upload.wikimedia.org/wikipedia/commons/a/ab/Row_{i}.jpg", "language": "en",
            "page_url": f"https://en.wikipedia.org/wiki/P{i}", "caption_reference_description": f"Caption number {i}"}


# each writes one source of `images` (one row each) under root: (the source, the settings it needs); the fixtures are
# imported inside, as in `measure`, since they import JAX
Writer = Callable[[Path, list[bytes]], tuple[Path, dict[str, Any]]]


def json_lines(root: Path, images: list[bytes]) -> tuple[Path, dict[str, Any]]:
    from tests.data.wit_rows import write_json_with_images

    root.mkdir(parents=True)
    return write_json_with_images(root / "rows.json", images), {}


def tsv_folder(root: Path, images: list[bytes]) -> tuple[Path, dict[str, Any]]:
    from tests.data.wit_rows import write_tsv

    tsv, folder = write_tsv([_row(i) for i in range(len(images))], images, root)
    return tsv, {"image_dirs": (str(folder),)}


def hub_parquet(root: Path, images: list[bytes]) -> tuple[Path, dict[str, Any]]:
    """theodor1289/wit's layout: data/train-*.parquet with the HF Image struct, the URL, `text` and the contexts."""
    from tests.data.wit_rows import IMAGE_TYPE, write_parquet

    rows = [_row(i) for i in range(len(images))]
    table = pa.table({"image_url": pa.array([r["image_url"] for r in rows], pa.string()),
                      "image": pa.array([{"bytes": data, "path": None} for data in images], IMAGE_TYPE),
                      "text": pa.array([r["caption_reference_description"] for r in rows], pa.string()),
                      **{c: pa.array([None] * len(rows), pa.string()) for c in CONTEXT}})
    features = {"image": {"_type": "Image"},
                **{c: {"dtype": "string", "_type": "Value"} for c in ("image_url", "text", *CONTEXT)}}
    write_parquet(root / "data" / "train-00000-of-00001.parquet", table, features, row_group_size=100)
    return root, {}


def webdataset(root: Path, images: list[bytes]) -> tuple[Path, dict[str, Any]]:
    """One img2dataset shard: {key}.jpg, .txt and .json (with the saved WiT columns) for each sample."""
    root.mkdir(parents=True)
    with tarfile.open(root / "00000.tar", "w") as tar:
        for i, data in enumerate(images):
            row, key = _row(i), f"{i:09d}"
            meta = {"key": key, "url": row["image_url"], "caption": row["caption_reference_description"],
                    "status": "success", "language": row["language"], "page_url": row["page_url"]}
            for extension, member in (("jpg", data), ("txt", meta["caption"].encode()),
                                      ("json", json.dumps(meta).encode())):
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(member)
                tar.addfile(info, io.BytesIO(member))
    return root, {}


@dataclasses.dataclass(frozen=True)
class SourceKind:
    name: str
    write: Writer
    square: bool  # theodor1289/wit's 224x224 PNGs, not the WiT-sized images


SOURCE_KINDS = (SourceKind("JSON lines, base64", json_lines, False),
                SourceKind("TSV + image folder", tsv_folder, False),
                SourceKind("Hub parquet, 224 PNG", hub_parquet, True),
                SourceKind("img2dataset webdataset", webdataset, False))


def cpu_per_row(work: Callable[[bytes], object], datas: list[bytes]) -> float:
    """CPU seconds per image of `work` in this process."""
    start = _cpu(resource.RUSAGE_SELF)
    for data in datas:
        work(data)
    return (_cpu(resource.RUSAGE_SELF) - start) / len(datas)


def measure_kinds(images: list[bytes], squares: list[bytes], rows: int, repeats: int,
                  workers: int) -> dict[str, dict[str, list[float]]]:
    """Per source kind, --repeats interleaved runs of: a whole prepare with every core (rows/s, parent's and
    children's CPU seconds per row), and prepare's per-image work on the same images in this process."""
    s = settings()
    store = functools.partial(stored_image, size=s.image_size, mode=s.image_resize, quality=s.jpeg_quality,
                              max_pixels=s.max_image_pixels, reencode=s.image_reencode)
    sets = {square: [pool[i % len(pool)] for i in range(rows)] for square, pool in ((False, images), (True, squares))}
    runs = {k.name: {"rows_per_s": [], "parent": [], "children": [], "worker": []} for k in SOURCE_KINDS}
    with tempfile.TemporaryDirectory() as tmp:
        sources = {k.name: k.write(Path(tmp) / f"source{i}", sets[k.square]) for i, k in enumerate(SOURCE_KINDS)}
        for r in range(repeats):
            # the worker's work depends only on the images, so it is timed once per image set
            worker = {square: cpu_per_row(store, datas) for square, datas in sets.items()}
            for i, kind in enumerate(SOURCE_KINDS):
                source, changes = sources[kind.name]
                values = (*whole_prepare(source, Path(tmp) / f"out{r}_{i}", workers, **changes), worker[kind.square])
                for name, value in zip(runs[kind.name], values, strict=True):
                    runs[kind.name][name].append(value)
    return runs


def projected_minutes(rows: int, parent: float, worker: float, cores: int) -> float:
    """Amdahl: the parent serial, the workers parallel on the other cores; per-row CPU seconds in."""
    return rows * max(parent, worker / (cores - 1)) / 60


def summarise_kinds(runs: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, Any]]:
    result = {}
    for name, kind_runs in runs.items():
        m = {key: statistics.median(values) for key, values in kind_runs.items()}
        result[name] = {
            "parent_ms_per_row": round(m["parent"] * 1e3, 3), "worker_ms_per_row": round(m["worker"] * 1e3, 3),
            "children_ms_per_row": round(m["children"] * 1e3, 3), "rows_per_s": round(m["rows_per_s"], 1),
            "worker_over_parent": round(m["worker"] / m["parent"], 2),
            "saturation_cores": round(m["worker"] / m["parent"] + 1, 1),
            "minutes_4m_rows": {str(c): round(projected_minutes(HOST_IMAGES, m["parent"], m["worker"], c), 1)
                                for c in PROJECTED_CORES},
            "runs": {key: [round(v * (1 if key == "rows_per_s" else 1e3), 3) for v in values]
                     for key, values in kind_runs.items()}}
    return result


def summarise(runs: dict, args: argparse.Namespace) -> dict:
    m = {name: statistics.median(values) for name, values in runs.items() if name != "per_kind"}
    feed, per_core = 1 / m["parent_cpu"], m["work_1_cpu"]
    return {
        "photos": str(args.photos), "rows": args.rows, "repeats": args.repeats, "workers": args.workers,
        "rows_per_s": {name: round(m[name], 1) for name in ("work_1", "work_n", "reference", "prepare_1",
                                                            "prepare_n")},
        "scaling": {"image_work": round(m["work_n"] / m["work_1"], 2),
                    "whole_prepare": round(m["prepare_n"] / m["prepare_1"], 2)},
        "per_core_vs_reference": {"image_work": round(m["work_1"] / m["reference"], 2),
                                  "whole_prepare": round(m["prepare_1"] / m["reference"], 2),
                                  "image_work_cpu": round(m["work_1_cpu"] / m["reference_cpu"], 2)},
        "rows_per_cpu_s": {"image_work": round(m["work_1_cpu"], 1), "reference": round(m["reference_cpu"], 1)},
        "cpu_ms_per_row": {"parent": round(m["parent_cpu"] * 1e3, 2), "all_1_worker": round(m["total_cpu_1"] * 1e3, 2),
                           "all_n_workers": round(m["total_cpu_n"] * 1e3, 2)},
        "projection_96_cores": {"minutes_at_per_core_rate": round(HOST_IMAGES / (HOST_CORES * per_core) / 60, 1),
                                "parent_rows_per_s": round(feed),
                                "minutes_bounded_by_parent": round(
                                    HOST_IMAGES / min(feed, HOST_CORES * per_core) / 60, 1)},
        "per_kind_ms": runs["per_kind"],
        "runs": {name: [round(v, 4 if "cpu" in name and "work" not in name and "reference" not in name else 1)
                        for v in values] for name, values in runs.items() if name != "per_kind"},
    }


def report(r: dict) -> None:
    n, rate, cpu = r["workers"], r["rows_per_s"], r["cpu_ms_per_row"]
    print(f"\nper image, ms (median of {r['repeats']}, one process)\n{'kind':<20}{'to_jpeg':>10}{'reference':>11}"
          f"{'ratio':>8}")
    for kind, t in r["per_kind_ms"].items():
        print(f"{kind:<20}{t['to_jpeg']:>10.2f}{t['reference']:>11.2f}{t['reference'] / t['to_jpeg']:>7.2f}x")
    print(f"\nrows/s, {r['rows']} rows (median of {r['repeats']}, interleaved); reference {rate['reference']:.1f} "
          f"images/s in one process")
    print(f"{'':<16}{'1 worker':>10}{f'{n} workers':>12}{'scaling':>9}{'/ cores':>9}{'1 worker / reference':>22}")
    for name, key, run in (("image work", "image_work", "work"), ("whole prepare", "whole_prepare", "prepare")):
        one, many = rate[f"{run}_1"], rate[f"{run}_n"]
        print(f"{name:<16}{one:>10.1f}{many:>12.1f}{r['scaling'][key]:>8.2f}x{r['scaling'][key] / n:>8.2f}x"
              f"{r['per_core_vs_reference'][key]:>21.2f}x")
    print("targets: scaling >= 0.8x the core count; per core >= 1x the reference")
    print(f"per CPU second (whatever else runs): image work {r['rows_per_cpu_s']['image_work']:.1f} rows, reference "
          f"{r['rows_per_cpu_s']['reference']:.1f} images: {r['per_core_vs_reference']['image_work_cpu']:.2f}x")
    print(f"CPU ms per row of a whole prepare, all processes: {cpu['all_1_worker']:.2f} with 1 worker, "
          f"{cpu['all_n_workers']:.2f} with {n}; the parent's share with {n}: {cpu['parent']:.2f}")
    p = r["projection_96_cores"]
    print(f"{HOST_IMAGES:,} images on a {HOST_CORES}-core host at {r['rows_per_cpu_s']['image_work']:.1f} rows per "
          f"core-second: {p['minutes_at_per_core_rate']:.1f} min; one prepare's parent feeds at most "
          f"{p['parent_rows_per_s']:,} rows/s: {p['minutes_bounded_by_parent']:.1f} min")


def report_kinds(r: dict) -> None:
    cores = " / ".join(map(str, PROJECTED_CORES))
    print(f"\nwhole prepare by source kind, {r['kind_rows']} rows, {r['workers']} workers (median of {r['repeats']}); "
          f"worker = stored_image in one process; {r['amdahl']}")
    print(f"{'source kind':<24}{'parent ms/row':>14}{'worker ms/row':>14}{'worker/parent':>14}{'saturation':>12}"
          f"{f'4M rows, min, {cores} cores':>37}")
    for name, k in r["source_kinds"].items():
        minutes = " / ".join(f"{v:.0f}" for v in k["minutes_4m_rows"].values())
        print(f"{name:<24}{k['parent_ms_per_row']:>14.3f}{k['worker_ms_per_row']:>14.3f}{k['worker_over_parent']:>13.1f}x"
              f"{k['saturation_cores']:>12.1f}{minutes:>37}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=960)  # the pool's start-up amortised
    parser.add_argument("--kind_rows", type=int, default=240)  # per source kind
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=available_cores())
    parser.add_argument("--photos", type=Path,
                        default=SHARED_PHOTOS if SHARED_PHOTOS.is_dir() else SAMPLE_DIR / "images")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "prepare.json")
    args = parser.parse_args()
    images = wit_images(args.photos)
    results = summarise(measure(images, args.rows, args.repeats, args.workers), args)
    from tests.data.wit_rows import png_224  # here: it imports JAX (see settings)

    kinds = measure_kinds([data for _, data in images], [png_224(path) for path in photo_files(args.photos)],
                          args.kind_rows, args.repeats, args.workers)
    results |= {"kind_rows": args.kind_rows, "amdahl": AMDAHL, "source_kinds": summarise_kinds(kinds)}
    report(results)
    report_kinds(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
