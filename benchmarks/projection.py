"""The train step compiled here for TPU slices (libtpu, no chips) and NVIDIA GPUs (XLA's CUDA backend and ptxas,
no GPU), and what its program projects: the figures behind the TPU and GPU tables of docs/scaling.md (and README's
headline rows) and the tuning record in benchmarks/README.md.

Each compile runs `python -m flava_jax.aot` in a process of its own (a full-size compile holds about 5 GB and takes
minutes of CPU) and reads back its --out JSON. Beside our roofline estimate it prints the peers it is checked
against: the model's own FLOP count (compiled / model FLOPs says the program does the work the model needs and no
more) and, on TPUs, libtpu's own run-time estimate (`optimal_seconds`, sound for a bare product, negative for our
step).

    python benchmarks/projection.py --grid readme   # 10M_0, 10M_4M x full, half x v4-8, v5e-8, v5p-8
    python benchmarks/projection.py --grid levers   # 10M_4M full on v5e-8, one tuning lever at a time
    python benchmarks/projection.py --grid buckets  # the minus-waste recipe: text-only batches in length buckets
    python benchmarks/projection.py --grid gpus     # 10M_0, 10M_4M x full, half x 1xA100 40GB, 8xA100 80GB,
                                                    # 1xH100, 8xH100 at the largest micro-batch that fits; the
                                                    # paper's own 2 GPUs x 32 (48 at half size)
    python benchmarks/projection.py --grid gpu_levers  # 10M_4M full on 8xH100 (data parallel), one lever at a time
        [--only h100x8,full] [--set model.remat_policy=dots_saveable ...] [--out PATH]
    python benchmarks/projection.py --render A.json B.json --out PATH   # merge runs split with --only

Writes PATH.json (every figure aot reports), PATH.md (the table printed) and PATH.png (projected MFU per cell).
These are projections from the compiled program, not measurements: see docs/scaling.md for what each is.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO))

from flava_jax.train import chips, gpus  # noqa: E402
from flava_jax.train.aot import collective_seconds, peak_flops, step_seconds  # noqa: E402

# Slices a user rents: v4-8 and v5p-8 are 4 chips (one device per chip), v5e-8 is 8.
TOPOLOGIES = {"v4-8": "v4:2x2x1", "v5e-8": "v5e:2x4", "v5p-8": "v5p:2x2x1"}
# GPU machines (gpus.py's names), and the paper's own: 2 GPUs (their card is not in its code: A100 80 GB assumed)
GPU_TARGETS = ("a100-40gbx1", "a100-80gbx8", "h100x1", "h100x8")
PAPER_GPUS = "a100-80gbx2"
PAPER_PER_GPU = {"full": 32, "half": 48}  # the reference's micro-batch per GPU; x1.5 at half size
GPU_RECIPE = ("model.scan_layers=False",)
# Each GPU lever adds one change to the row above it, from the configs as shipped with XLA's attention (the gpus
# grid's 8xH100 row adds the largest micro-batch that fits)
GPU_LEVERS = (("configs as shipped, XLA attention", ("model.attention=xla",), 8),
              ("+ attention in the Triton kernels", (), 8),
              ("+ 96 examples a micro-step per GPU", (), 96),
              ("+ unrolled layers", GPU_RECIPE, 96),
              ("+ rematerialised element-wise work (not shipped)",
               (*GPU_RECIPE, "model.remat_policy=dots_with_no_batch_dims_saveable"), 96))
# The micro-batch search, over multiples of STEP examples per GPU: a micro-batch fits when the compiled step needs at
# most FILL of the card (JAX takes 75% of it unless XLA_PYTHON_CLIENT_MEM_FRACTION says more; the rest is the
# CUDA context's and the allocator's). Memory is not linear in the micro-batch (XLA schedules larger programs
# differently), so the search bisects between the largest micro-batch known to fit and the smallest known not to,
# its first pick a line through the two largest that fit, with at most SEARCH compiles a cell.
PROBES, FILL, STEP, SEARCH = (16, 32), 0.92, 8, 3
PAPER_STEPS, PAPER_BATCH = 10_500, 4096  # the paper's step cap at 10M words, of its ~4096 examples
# Each lever row adds one change to the row above it: from f32 with unrolled layers (the "before") to the configs
# as shipped.
LEVERS = (("f32, unrolled layers (before)", ("model.dtype=float32", "model.scan_layers=False",
                                             "sharding.gather_weights=micro_step", "model.attention=xla")),
          ("+ scanned layers", ("model.dtype=float32", "sharding.gather_weights=micro_step", "model.attention=xla")),
          ("+ bf16 compute; kernels cast once a step", ("sharding.gather_weights=micro_step", "model.attention=xla")),
          ("+ weights gathered once a step", ("model.attention=xla",)),
          ("+ attention as one Pallas kernel (the configs' default)", ()))
# The minus-waste recipe pads text-only batches to the smallest of data.length_buckets that fits; a step's program
# is the paper's with its text-only stream at that length.
BUCKETS = (256, 128)


def cells(grid: str, only: list[str]) -> list[dict[str, Any]]:
    """(config, size, slice, recipe label, overrides, text-only length) of every compile the grid asks for."""
    if grid == "readme":  # the paper's size first, then the thesis size
        rows = [dict(config=c, size=s, slice=t, recipe="configs as shipped", overrides=(), text_length=None)
                for s in ("full", "half") for t in TOPOLOGIES for c in ("10M_4M", "10M_0")]
    elif grid == "buckets":
        rows = [dict(config=c, size="full", slice=t, recipe=f"text in the {length} bucket", overrides=(),
                     text_length=length) for t in ("v5e-8", "v4-8") for c in ("10M_4M", "10M_0") for length in BUCKETS]
    elif grid == "gpus":  # layers unrolled: on GPUs the scan's stacked residuals cost more than its compile saves
        rows = [dict(config=c, size=s, slice=t, recipe="largest micro-batch", overrides=GPU_RECIPE,
                     text_length=None, per_device=None)
                for s in ("full", "half") for t in GPU_TARGETS for c in ("10M_4M", "10M_0")]
        rows += [dict(config=c, size=s, slice=PAPER_GPUS, recipe="the paper's micro-batch", overrides=GPU_RECIPE,
                      text_length=None, per_device=PAPER_PER_GPU[s]) for s in ("full", "half")
                 for c in ("10M_4M", "10M_0")]
    elif grid == "gpu_levers":
        rows = [dict(config="10M_4M", size="full", slice="h100x8", recipe=label, overrides=overrides,
                     text_length=None, per_device=per_device) for label, overrides, per_device in GPU_LEVERS]
    else:
        rows = [dict(config="10M_4M", size="full", slice="v5e-8", recipe=label, overrides=overrides, text_length=None)
                for label, overrides in LEVERS]
    return [row for row in rows if set(only) <= {row["config"], row["size"], row["slice"], row["recipe"]}]


def run_aot(cell: dict[str, Any], target: str, mesh: str, overrides: list[str],
            scratch: Path) -> tuple[dict[str, Any] | None, str]:
    """One aot compile of `cell` on `target` (its --topology or --gpu flag): the row, or None and aot's stderr."""
    out = scratch / "aot.json"
    command = [sys.executable, "-m", "flava_jax.aot", f"--config=configs/{cell['config']}.py:model={cell['size']}",
               target, f"--meshes={mesh}", f"--out={out}",
               *([f"--text_length={cell['text_length']}"] if cell["text_length"] else []),
               *(f"--config.{o}" for o in overrides)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                            env={"JAX_PLATFORMS": "cpu", **os.environ, "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"})
    if out.exists():
        report = json.loads(out.read_text())
        out.unlink()
        if report["meshes"]:
            return {**cell, "overrides": overrides, **report["meshes"][0], "device_kind": report["device_kind"],
                    "device_memory": report["device_memory"]}, result.stderr
    return None, f"{' '.join(command)} failed:\n{result.stderr[-3000:]}"


def compile_cell(cell: dict[str, Any], extra: list[str], scratch: Path) -> dict[str, Any]:
    """A TPU cell: FSDP over every chip, or data x fsdp where the model's width does not split so. A GPU cell: data
    parallel (80 GB holds the full model's replica and Adam state many times), at the paper's micro-batch per GPU
    or the largest that fits."""
    overrides = list(cell["overrides"]) + extra
    if cell["slice"] not in TOPOLOGIES:
        return gpu_cell(cell, overrides, lambda flags: run_aot(cell, f"--gpu={cell['slice']}", "data", flags, scratch))
    chips = 4 if TOPOLOGIES[cell["slice"]].startswith(("v4", "v5p")) else 8
    for mesh in ("fsdp", f"2x{chips // 2}"):
        row, stderr = run_aot(cell, f"--topology={TOPOLOGIES[cell['slice']]}", mesh, overrides, scratch)
        if row is not None:
            return row
        if "replicated" not in stderr:  # anything but "this width does not split" is an error
            raise RuntimeError(stderr)
    raise RuntimeError(f"no mesh fits {cell}")


# Memory per GPU of a data-parallel step depends on the micro-batch per GPU, not on the card or the count: one
# program's compiles serve every target. (config, size, overrides) -> {examples per GPU: bytes per GPU}
_COMPILED: dict[tuple, dict[int, int]] = {}


def _room(target: str) -> float:
    """Bytes a step may take on one GPU of `target` and count as fitting."""
    return FILL * gpus.parse(target)[0].chip.memory_gib * 2**30


def gpu_cell(cell: dict[str, Any], overrides: list[str],
             run: Callable[[list[str]], tuple[dict[str, Any] | None, str]]) -> dict[str, Any]:
    """The cell compiled at `per_device` examples a micro-step per GPU, or at the largest multiple of STEP found to
    fit (see SEARCH)."""
    count = gpus.parse(cell["slice"])[1]
    room = _room(cell["slice"])
    most = -(-PAPER_BATCH // count) // STEP * STEP  # a micro-step holding the whole batch
    seen = _COMPILED.setdefault((cell["config"], cell["size"], tuple(overrides)), {})
    compiles: list[dict[str, Any]] = []  # this cell's compiles: micro-batch per GPU, memory, compile seconds
    rows: dict[int, dict[str, Any]] = {}

    def at(per_device: int) -> dict[str, Any]:
        row, stderr = run([*overrides, f"train.micro_batch_size={per_device * count}"])
        if row is None:
            raise RuntimeError(stderr)
        seen[per_device] = row["total"]
        compiles.append({"per_device": per_device, "total": row["total"], "compile_seconds": row["compile_seconds"]})
        rows[per_device] = {**row, "per_device": per_device, "compiles": compiles}
        return rows[per_device]

    if cell["per_device"] is not None:
        return at(cell["per_device"])

    def fitting() -> list[int]:
        return sorted(p for p, total in seen.items() if total <= room and p <= most)

    for probe in PROBES:
        if len(fitting()) < 2 and probe not in seen:
            at(probe)
    if not fitting():
        raise RuntimeError(f"{cell}: not even {PROBES[0]} examples a micro-step per GPU fit")
    for _ in range(SEARCH):
        fit = fitting()
        over = min([p for p, total in seen.items() if total > room and p > fit[-1]] + [most + STEP])
        pick = (fit[-1] + over) // 2 // STEP * STEP  # bisect, unless the line through the two largest falls inside
        if len(fit) > 1 and (slope := (seen[fit[-1]] - seen[fit[-2]]) / (fit[-1] - fit[-2])) > 0:
            line = int((room - seen[fit[-1]]) / slope + fit[-1]) // STEP * STEP
            pick = line if fit[-1] < line < over else pick
        if pick <= fit[-1]:
            break
        at(pick)
    best = fitting()[-1]
    return rows.get(best) or at(best)


def projected(row: dict[str, Any]) -> dict[str, Any]:
    """The row with its collectives' time, estimated step and MFU worked out from its bytes and the chip table."""
    chip = chips.chip(row["device_kind"])
    collectives = collective_seconds(row["collective_bytes"], chip)
    step = step_seconds(row["roofline_seconds"], collectives)
    return {**row, "collective_seconds": collectives, "step_seconds": step,
            "mfu": row["model_flops"] / (step * peak_flops(row["device_kind"])),
            # the paper's cap counts steps of its ~4096 examples; a step here may hold a few more or less
            "paper_hours": step * PAPER_BATCH / row["examples_per_step"] * PAPER_STEPS / 3600}


def _time(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds:.2f} s"


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one row per compile."""
    head = ("| config | size | target | recipe | mesh (data x fsdp) | micro-batch per device | memory per device | "
            "compile here | compiled / model FLOPs | HBM bytes per step | compute and HBM | collectives | "
            "libtpu estimate | estimated step | projected MFU | hours for 10.5K steps of 4096 |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in map(projected, rows):
        shape = r["mesh_shape"]
        per_device = r["examples_per_step"] / r["micro_steps"] / (shape["data"] * shape["fsdp"] * shape["tensor"])
        lines.append(
            f"| {r['config']} | {r['size']} | {r['slice']} | {r['recipe']} | {shape['data']} x {shape['fsdp']} | "
            f"{per_device:.0f} | {r['total'] / 2**30:.2f} of {r['device_memory'] / 2**30:.0f} GiB | "
            f"{r['compile_seconds']:.0f} s | {r['compiled_flops'] / r['model_flops']:.2f}x | "
            f"{r['hbm_bytes'] / 1e12:.2f} TB | {_time(r['roofline_seconds'])} | {_time(r['collective_seconds'])} | "
            f"{_time(r['xla_costs'].get('optimal_seconds'))} | {_time(r['step_seconds'])} | "
            f"{100 * r['mfu']:.0f}% | {r['paper_hours']:.1f} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recipes = len({r["recipe"] for r in rows}) > 1
    labels = [f"{r['config']} {r['size']}\n{r['slice']}" + (f"\n{r['recipe']}" if recipes else "") for r in rows]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(rows)), 4))
    ax.bar(range(len(rows)), [100 * projected(r)["mfu"] for r in rows], color="tab:blue")
    ax.set_xticks(range(len(rows)), labels, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("projected MFU (%)")
    ax.set_title("Projected MFU of the compiled train step (not measured)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", choices=("readme", "levers", "buckets", "gpus", "gpu_levers"), default="readme")
    parser.add_argument("--only", default="", help="keep the cells matching all of these comma-separated configs, "
                        "sizes, targets or recipe labels")
    parser.add_argument("--set", action="append", default=[], help="extra config override, e.g. model.x=y")
    parser.add_argument("--out", type=Path, default=None, help="path stem (default benchmarks/results/"
                        "tpu_projection_<grid>, gpu_projection, gpu_projection_levers)")
    parser.add_argument("--resume", action="store_true", help="keep the cells --out's JSON already holds (a GPU cell "
                        "only where it still fits), and what their compiles said about memory")
    parser.add_argument("--render", type=Path, nargs="+", default=None, help="compile nothing: merge the rows of "
                        "these JSON results (runs split with --only) into --out's table, JSON and plot")
    args = parser.parse_args()
    names = {"gpus": "gpu_projection", "gpu_levers": "gpu_projection_levers"}
    stem = args.out or RESULTS / names.get(args.grid, f"tpu_projection_{args.grid}")
    if args.render:
        rows = sorted((row for path in args.render for row in json.loads(path.read_text())), key=_order)
        write(rows, stem)
        print(table(rows))
        return
    todo = cells(args.grid, [o for o in args.only.split(",") if o])
    rows = resumed(todo, stem.with_suffix(".json"), args.set) if args.resume else []
    todo = [cell for cell in todo if not any(_same(cell, row) for row in rows)]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        for n, cell in enumerate(todo, 1):
            rows.append(compile_cell(cell, args.set, Path(scratch)))
            elapsed = time.perf_counter() - started
            eta = elapsed / n * (len(todo) - n)
            print(f"[{n}/{len(todo)}] {cell['config']} {cell['size']} {cell['slice']} {cell['recipe']}: compiled in "
                  f"{rows[-1]['compile_seconds']:.0f} s, projected MFU {100 * projected(rows[-1])['mfu']:.0f}% "
                  f"({elapsed / n / 60:.1f} min per cell, about {eta / 60:.0f} min left)", flush=True)
            write(rows, stem)  # after every cell: a grid takes hours, and what is done stays done
    print(table(rows))


def _same(cell: dict[str, Any], row: dict[str, Any]) -> bool:
    return all(cell[key] == row[key] for key in ("config", "size", "slice", "recipe"))


def resumed(todo: list[dict[str, Any]], path: Path, extra: list[str]) -> list[dict[str, Any]]:
    """The rows of an earlier run of this grid worth keeping; their GPU compiles seed the micro-batch search."""
    if not path.is_file():
        return []
    kept = []
    for row in json.loads(path.read_text()):
        cell = next((c for c in todo if _same(c, row)), None)
        if cell is None:
            continue
        overrides = list(cell["overrides"]) + extra
        if "compiles" in row:
            seen = _COMPILED.setdefault((cell["config"], cell["size"], tuple(overrides)), {})
            seen.update({c["per_device"]: c["total"] for c in row["compiles"]})
        if cell["slice"] in TOPOLOGIES or row["total"] <= _room(cell["slice"]):
            kept.append(row)
    return kept


def write(rows: list[dict[str, Any]], stem: Path) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    stem.with_suffix(".md").write_text(table(rows) + "\n")
    plot(rows, stem.with_suffix(".png"))


def _order(row: dict[str, Any]) -> tuple[int, int, str, int]:
    """Size, target, config, then the paper's text-only length before the buckets, longest first."""
    return (("full", "half").index(row["size"]), [*TOPOLOGIES, *GPU_TARGETS, PAPER_GPUS].index(row["slice"]),
            row["config"], -(row.get("text_length") or 10**6))


if __name__ == "__main__":
    main()
