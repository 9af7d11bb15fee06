"""The train step compiled here for TPU slices (libtpu, no chips) and what its program projects: the figures behind
README's TPU table and the tuning record in benchmarks/README.md.

Each cell runs `python -m flava_jax.aot` in a process of its own (a full-size compile holds about 5 GB and takes
minutes of CPU) and reads back its --out JSON. Beside our roofline estimate it prints the peers it is checked
against: the model's own FLOP count (compiled / model FLOPs says the program does the work the model needs and no
more) and libtpu's own run-time estimate (`optimal_seconds`, sound for a bare product, negative for our step).

    python benchmarks/tpu_projection.py --grid readme   # 10M_0, 10M_4M x full, half x v4-8, v5e-8, v5p-8
    python benchmarks/tpu_projection.py --grid levers   # 10M_4M full on v5e-8, one tuning lever at a time
    python benchmarks/tpu_projection.py --grid buckets  # the minus-waste recipe: text-only batches in length buckets
        [--only v5e-8,full] [--set model.remat_policy=dots_saveable ...] [--out PATH]
    python benchmarks/tpu_projection.py --render A.json B.json --out PATH   # merge runs split with --only

Writes PATH.json (every figure aot reports), PATH.md (the table printed) and PATH.png (projected MFU per cell).
These are projections from the compiled program, not measurements: see README's TPU section for what each is.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO))

from flava_jax.train import chips  # noqa: E402
from flava_jax.train.aot import collective_seconds, step_seconds  # noqa: E402

# Slices a user rents: v4-8 and v5p-8 are 4 chips (one device per chip), v5e-8 is 8.
TOPOLOGIES = {"v4-8": "v4:2x2x1", "v5e-8": "v5e:2x4", "v5p-8": "v5p:2x2x1"}
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
    else:
        rows = [dict(config="10M_4M", size="full", slice="v5e-8", recipe=label, overrides=overrides, text_length=None)
                for label, overrides in LEVERS]
    return [row for row in rows if set(only) <= {row["config"], row["size"], row["slice"], row["recipe"]}]


def compile_cell(cell: dict[str, Any], extra: list[str], scratch: Path) -> dict[str, Any]:
    """One aot run for `cell`: FSDP over every chip, or data x fsdp where the model's width does not split so."""
    chips = 4 if TOPOLOGIES[cell["slice"]].startswith(("v4", "v5p")) else 8
    out = scratch / "aot.json"
    for mesh in ("fsdp", f"2x{chips // 2}"):
        command = [sys.executable, "-m", "flava_jax.aot", f"--config=configs/{cell['config']}.py:model={cell['size']}",
                   f"--topology={TOPOLOGIES[cell['slice']]}", f"--meshes={mesh}", f"--out={out}",
                   *([f"--text_length={cell['text_length']}"] if cell["text_length"] else []),
                   *(f"--config.{o}" for o in (*cell["overrides"], *extra))]
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                                env={"JAX_PLATFORMS": "cpu", **os.environ, "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"})
        if out.exists():
            report = json.loads(out.read_text())
            out.unlink()
            if report["meshes"]:
                return {**cell, "overrides": list(cell["overrides"]) + extra, **report["meshes"][0],
                        "device_kind": report["device_kind"], "device_memory": report["device_memory"]}
        if "replicated" not in result.stderr:  # anything but "this width does not split" is an error
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    raise RuntimeError(f"no mesh fits {cell}")


def projected(row: dict[str, Any]) -> dict[str, Any]:
    """The row with its collectives' time, estimated step and MFU worked out from its bytes and the chip table."""
    chip = chips.chip(row["device_kind"])
    collectives = collective_seconds(row["collective_bytes"], chip)
    step = step_seconds(row["roofline_seconds"], collectives)
    return {**row, "collective_seconds": collectives, "step_seconds": step,
            "mfu": row["model_flops"] / (step * chip.peak_flops)}


def _time(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds:.2f} s"


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one row per compile."""
    head = ("| config | size | slice | recipe | mesh (data x fsdp) | memory per chip | compile here | "
            "compiled / model FLOPs | HBM bytes per step | compute and HBM | collectives | libtpu estimate | "
            "estimated step | projected MFU | hours for 10.5K steps |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in map(projected, rows):
        shape = r["mesh_shape"]
        lines.append(
            f"| {r['config']} | {r['size']} | {r['slice']} | {r['recipe']} | {shape['data']} x {shape['fsdp']} | "
            f"{r['total'] / 2**30:.2f} of {r['device_memory'] / 2**30:.0f} GiB | {r['compile_seconds']:.0f} s | "
            f"{r['compiled_flops'] / r['model_flops']:.2f}x | {r['hbm_bytes'] / 1e12:.2f} TB | "
            f"{_time(r['roofline_seconds'])} | {_time(r['collective_seconds'])} | "
            f"{_time(r['xla_costs'].get('optimal_seconds'))} | {_time(r['step_seconds'])} | "
            f"{100 * r['mfu']:.0f}% | {r['step_seconds'] * 10_500 / 3600:.1f} |")
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
    parser.add_argument("--grid", choices=("readme", "levers", "buckets"), default="readme")
    parser.add_argument("--only", default="", help="keep the cells matching all of these comma-separated configs, "
                        "sizes, slices or recipe labels")
    parser.add_argument("--set", action="append", default=[], help="extra config override, e.g. model.x=y")
    parser.add_argument("--out", type=Path, default=None, help="path stem (default benchmarks/results/"
                        "tpu_projection_<grid>)")
    parser.add_argument("--render", type=Path, nargs="+", default=None, help="compile nothing: merge the rows of "
                        "these JSON results (runs split with --only) into --out's table, JSON and plot")
    args = parser.parse_args()
    stem = args.out or RESULTS / f"tpu_projection_{args.grid}"
    if args.render:
        rows = sorted((row for path in args.render for row in json.loads(path.read_text())), key=_order)
        write(rows, stem)
        print(table(rows))
        return
    todo = cells(args.grid, [o for o in args.only.split(",") if o])
    rows = []
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


def write(rows: list[dict[str, Any]], stem: Path) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    stem.with_suffix(".md").write_text(table(rows) + "\n")
    plot(rows, stem.with_suffix(".png"))


def _order(row: dict[str, Any]) -> tuple[int, int, str, int]:
    """Size, slice, config, then the paper's text-only length before the buckets, longest first."""
    return (("full", "half").index(row["size"]), list(TOPOLOGIES).index(row["slice"]), row["config"],
            -(row.get("text_length") or 10**6))


if __name__ == "__main__":
    main()
