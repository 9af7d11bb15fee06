"""Where a compiled train step's projected time goes: the roofline of `flava_jax/train/roofline.py`, split by the
source each op came from (its `op_name` metadata), for the program `python -m flava_jax.aot --hlo_dir=DIR` wrote.

    python -m flava_jax.aot --config=configs/10M_4M.py --topology=v5e:2x4 --meshes=fsdp --hlo_dir=/tmp/hlo
    python benchmarks/breakdown.py /tmp/hlo/fsdp.hlo.txt --chip="TPU v5 lite" [--top=25] [--out=PATH]
    python -m flava_jax.aot --config=configs/10M_4M.py --gpu=h100x8 --meshes=data --hlo_dir=/tmp/gpu
    python benchmarks/breakdown.py /tmp/gpu/data.hlo.txt --chip="NVIDIA H100 80GB HBM3"

Groups are (pass, part, piece): forward or backward (JAX names the backward `transpose(jvp(...))`), the encoder or
head, and the piece of a layer (attention scores and softmax, projections, MLP, LayerNorm...); --chip is a device kind
of flava_jax/train/chips.py, TPU or GPU. Each row gives the
roofline seconds, how much of that is FLOP-bound, FLOPs, HBM bytes and collective bytes received, loops times their
trip counts; then the costliest single ops. Projections from the compiled program, not measurements.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from flava_jax.train import chips  # noqa: E402
from flava_jax.train.roofline import Cost, Instruction, Roofline  # noqa: E402

_OP_NAME = re.compile(r'op_name="([^"]*)"')
# (part, pattern over op_name), first match wins
PARTS = (("codebook", r"image_codebook"), ("text encoder", r"text_model"), ("image encoder", r"image_model"),
         ("multimodal encoder", r"multimodal_model"), ("heads and losses", r"_head|_itm|_mmm|_unimodal_heads|"
                                                                          r"_global_contrastive|contrastive|loss"),
         ("optimizer update", r"^jit\(train_step\)/cond"))
PIECES = (("attention kernel (Pallas)", r"pallas_call"),
          ("q/k/v projections", r"attention/attention/(query|key|value)"),
          ("attention scores, softmax, context", r"attention/attention/"),
          ("attention output", r"attention/output"), ("MLP", r"/(intermediate|output)/"),
          ("LayerNorm", r"layernorm|LayerNorm"), ("embeddings", r"embeddings"),
          ("scan bookkeeping", r"dynamic_(update_)?(index_in_dim|slice)"))


def group(instruction: Instruction) -> tuple[str, str, str]:
    """(pass, part, piece) of an op from its op_name; collectives are their own part."""
    name = match.group(1) if (match := _OP_NAME.search(instruction.attributes)) else ""
    if re.match(r"(all-gather|all-reduce|reduce-scatter|collective-permute|all-to-all)", instruction.opcode):
        return "", "collectives", instruction.opcode.removesuffix("-start")
    passed = "backward" if "transpose(" in name else "forward" if name else ""
    part = next((label for label, pattern in PARTS if re.search(pattern, name)), "other" if name else "no source")
    piece = next((label for label, pattern in PIECES if re.search(pattern, name)), "")
    return passed, part, piece


def breakdown(roofline: Roofline) -> tuple[dict[tuple[str, str, str], Cost], list[tuple[Instruction, Cost, float]]]:
    groups: dict[tuple[str, str, str], Cost] = defaultdict(Cost)
    ops = list(roofline.ops())
    for instruction, cost, times in ops:
        groups[group(instruction)].add(cost, times)
    return groups, ops


def _row(label: str, cost: Cost, total: float) -> str:
    return (f"| {label} | {cost.seconds:.3f} | {100 * cost.seconds / total:.1f}% | {cost.flops_bound_seconds:.3f} | "
            f"{cost.flops / 1e12:.2f} | {cost.bytes / 1e9:.1f} | {cost.collective_bytes / 1e9:.1f} |")


def report(roofline: Roofline, top: int) -> tuple[str, dict]:
    groups, ops = breakdown(roofline)
    total = roofline.total()
    head = ("| group | roofline s | share | FLOP-bound s | TFLOP | HBM GB | collective GB |\n"
            "|---|---|---|---|---|---|---|")
    ordered = sorted(groups.items(), key=lambda kv: (-kv[1].seconds, -kv[1].collective_bytes))
    lines = [head, *(_row(" / ".join(p for p in key if p), cost, total.seconds) for key, cost in ordered),
             _row("**all**", total, total.seconds)]
    costliest = sorted(ops, key=lambda op: -op[1].seconds * op[2])[:top]
    lines += ["", "| op | opcode | result | runs | roofline s (all runs) | FLOP-bound | HBM GB (all runs) | source |",
              "|---|---|---|---|---|---|---|---|"]
    for instruction, cost, times in costliest:
        name = match.group(1) if (match := _OP_NAME.search(instruction.attributes)) else ""
        lines.append(f"| {instruction.name} | {instruction.opcode} | {instruction.shape[:60]} | {times:.0f} | "
                     f"{cost.seconds * times:.4f} | {'yes' if cost.flops_bound_seconds else 'no'} | "
                     f"{cost.bytes * times / 1e9:.2f} | {name[-90:]} |")
    data = {"total": vars(total), "groups": {" / ".join(p for p in key if p): vars(cost) for key, cost in ordered}}
    return "\n".join(lines), data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("hlo", type=Path, help="an optimized HLO text file (aot --hlo_dir)")
    parser.add_argument("--chip", required=True, help="device kind in flava_jax/train/chips.py, e.g. 'TPU v5 lite' or "
                        "'NVIDIA H100 80GB HBM3'")
    parser.add_argument("--top", type=int, default=25, help="costliest single ops to list")
    parser.add_argument("--out", type=Path, default=None, help="also write PATH.md and PATH.json")
    args = parser.parse_args()
    chip = chips.chip(args.chip)
    if chip is None or chip.peak_flops is None or chip.bandwidth is None:
        parser.error(f"--chip={args.chip!r}: no peak FLOP/s and bandwidth known in flava_jax/train/chips.py")
    text, data = report(Roofline(args.hlo.read_text(), chip.peak_flops, chip.bandwidth), args.top)
    print(text)
    if args.out:
        args.out.with_suffix(".md").write_text(text + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    main()
