"""GFLOP/s of XLA's and torch's f32 matrix products on the shapes of one full-size FLAVA text step.

The train step spends most of its time in these products (benchmarks/train_step.py), so how fast each library
runs them bounds how close the two steps can come. Every shape is run in the three forms a linear layer's
training needs: the forward product, the input's gradient (a transposed weight) and the weight's gradient (a
transposed input). Each library runs in a process of its own, in turns, and the figures are medians over rounds.

    python benchmarks/matmul.py                      # ~4 minutes on 2 cores
    XLA_FLAGS=--xla_cpu_use_onednn=true python benchmarks/matmul.py --out /tmp/onednn.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

TOKENS, HIDDEN, MLP, VOCAB, MASKED = 2048, 768, 3072, 30522, 1088  # full size, 4 texts of 512, MLM capacity
HEADS, LENGTH, HEAD = 48, 512, 64  # 4 examples x 12 heads
# name: (batch, m, k, n) for the forward product (batch, m, k) @ (batch, k, n); batch 0 means none.
SHAPES = {
    "q/k/v/output projection": (0, TOKENS, HIDDEN, HIDDEN),
    "mlp up": (0, TOKENS, HIDDEN, MLP),
    "mlp down": (0, TOKENS, MLP, HIDDEN),
    "mlm decoder": (0, MASKED, HIDDEN, VOCAB),
    "attention scores (QK^T)": (HEADS, LENGTH, HEAD, LENGTH),
    "attention context (PV)": (HEADS, LENGTH, LENGTH, HEAD),
}
FORMS = ("forward", "input grad", "weight grad")
REPLY = "@@ "


def operands(batch: int, m: int, k: int, n: int, form: str) -> tuple[tuple[int, ...], tuple[int, ...], str]:
    """(lhs shape, rhs shape, einsum) of one form of `x (m, k) @ w (k, n) = y (m, n)`; each form is 2*m*k*n FLOPs.

    input grad: dy (m, n) @ w^T; weight grad: x^T @ dy. The operands are stored as the forward stores them, so the
    transposes are the library's to handle, as in a real backward pass.
    """
    lead = (batch,) if batch else ()
    b = "b" if batch else ""
    if form == "forward":
        return (*lead, m, k), (*lead, k, n), f"{b}mk,{b}kn->{b}mn"
    if form == "input grad":
        return (*lead, m, n), (*lead, k, n), f"{b}mn,{b}kn->{b}mk"
    return (*lead, m, k), (*lead, m, n), f"{b}mk,{b}mn->{b}kn"


def cases() -> list[tuple[str, str]]:
    return [(name, form) for name in SHAPES for form in FORMS]


def flops(name: str) -> float:
    batch, m, k, n = SHAPES[name]
    return 2.0 * max(batch, 1) * m * k * n


def _inputs(name: str, form: str) -> tuple[np.ndarray, np.ndarray, str]:
    lhs, rhs, spec = operands(*SHAPES[name], form)
    rng = np.random.default_rng(0)
    return rng.standard_normal(lhs, np.float32), rng.standard_normal(rhs, np.float32), spec


def _timed(run, repeats: int) -> float:
    """Seconds per product: the best of 3 timings of `repeats` back-to-back products, after a warm-up."""
    run(1)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        run(repeats)
        best = min(best, (time.perf_counter() - start) / repeats)
    return best


def jax_worker(repeats: int) -> dict[str, float]:
    import jax
    import jax.numpy as jnp

    seconds = {}
    for name, form in cases():
        lhs, rhs, spec = _inputs(name, form)
        product = jax.jit(lambda a, b, spec=spec: jnp.einsum(spec, a, b))
        a, b = jnp.asarray(lhs), jnp.asarray(rhs)

        def run(n: int, product=product, a=a, b=b) -> None:
            jax.block_until_ready([product(a, b) for _ in range(n)])

        seconds[f"{name}|{form}"] = _timed(run, repeats)
    return seconds


def torch_worker(repeats: int) -> dict[str, float]:
    import torch

    seconds = {}
    with torch.inference_mode():
        for name, form in cases():
            lhs, rhs, spec = _inputs(name, form)
            a, b = torch.from_numpy(lhs), torch.from_numpy(rhs)
            # torch's autograd computes these as matmuls of transposed views; einsum would do the same.
            a = a.transpose(-1, -2) if form == "weight grad" else a
            b = b.transpose(-1, -2) if form == "input grad" else b

            def run(n: int, a=a, b=b) -> None:
                for _ in range(n):
                    torch.matmul(a, b)

            seconds[f"{name}|{form}"] = _timed(run, repeats)
    return seconds


def _round(side: str, repeats: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, f"--worker={side}", f"--repeats={repeats}"], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(next(line for line in out.splitlines() if line.startswith(REPLY))[len(REPLY):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per side (median)")
    parser.add_argument("--repeats", type=int, default=4, help="products per timing")
    parser.add_argument("--out", default=str(Path(__file__).with_name("results") / "matmul.json"))
    parser.add_argument("--worker", choices=("jax", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        seconds = (jax_worker if args.worker == "jax" else torch_worker)(args.repeats)
        print(REPLY + json.dumps(seconds), flush=True)
        return

    import importlib.metadata

    times: dict[str, list[dict[str, float]]] = {"jax": [], "torch": []}
    for i in range(args.rounds):
        for side in times:
            times[side].append(_round(side, args.repeats))
        print(f"round {i + 1}/{args.rounds} done", flush=True)
    median = {side: {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
              for side, rounds in times.items()}
    rows = []
    print(f"\nXLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; jax {importlib.metadata.version('jax')}, "
          f"torch {importlib.metadata.version('torch')}; medians of {args.rounds} rounds")
    print(f"{'product':26} {'form':12} {'GFLOP':>7} {'XLA GF/s':>9} {'torch GF/s':>10} {'ratio':>6}")
    for name, form in cases():
        key = f"{name}|{form}"
        ours, theirs = flops(name) / median["jax"][key] / 1e9, flops(name) / median["torch"][key] / 1e9
        rows.append(dict(product=name, form=form, gflop=flops(name) / 1e9, xla_gflops=ours, torch_gflops=theirs,
                         ratio=ours / theirs))
        print(f"{name:26} {form:12} {flops(name) / 1e9:7.2f} {ours:9.1f} {theirs:10.1f} {ours / theirs:5.2f}x")
    # Each product once per form, as in one layer's forward and backward: total FLOPs over total time.
    total = sum(flops(name) for name, _ in cases())
    overall = {side: total / sum(median[side].values()) / 1e9 for side in median}
    print(f"{'all, FLOP-weighted':39} {total / 1e9:7.2f} {overall['jax']:9.1f} {overall['torch']:10.1f} "
          f"{overall['jax'] / overall['torch']:5.2f}x")
    result = dict(xla_flags=os.environ.get("XLA_FLAGS", ""), rounds=args.rounds, rows=rows, overall=overall,
                  ratio=overall["jax"] / overall["torch"], date=time.strftime("%Y-%m-%d"))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
