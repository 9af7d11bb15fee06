"""Training metrics: metrics.jsonl and TensorBoard (process 0), the loop's step log with console progress,
analytic FLOPs and MFU.

metrics.jsonl (the contract) holds one object per logged step with `step` and every loss by name; it holds only
values that a rerun reproduces exactly (no timings), so an interrupted and resumed run writes the same rows.
Timings go to TensorBoard and the console.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flava_jax.common.progress import duration
from flava_jax.model.config import EncoderConfig, FlavaConfig
from flava_jax.train import chips, tensorboard

log = logging.getLogger("flava_jax")

def device_peak_flops(device: Any = None) -> tuple[float, str]:
    """(peak FLOP/s, where the figure comes from) for one device: chips.py's dense bf16 peak for TPUs and GPUs, a
    measured f32 matmul peak for a CPU."""
    device = device or jax.devices()[0]
    known = chips.chip(device.device_kind)
    if known is not None and known.peak_flops:
        return known.peak_flops, f"{known.kind} bf16 dense peak"
    if device.platform == "cpu":
        return measured_matmul_peak(), "measured XLA f32 matmul peak"
    return float("nan"), f"no peak known for {device.device_kind!r}"


def measured_matmul_peak(size: int = 2048, repeats: int = 5) -> float:
    """The best f32 FLOP/s of jnp.dot on size x size matrices over `repeats` runs (this process's devices)."""
    a = jnp.ones((size, size), jnp.float32)
    dot = jax.jit(jnp.dot)
    dot(a, a).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        dot(a, a).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2 * size**3 / min(times)


# ------------------------------------------------------------------------------------------------- FLOPs
def encoder_flops(config: EncoderConfig, batch: int, length: int) -> float:
    """Forward matmul FLOPs of one encoder pass: per layer QKV + output (4 D^2), FFN (2 D F) per token, and
    attention scores and mixing (2 L^2 D per example), each multiply-add counted as 2."""
    d, f = config.hidden_size, config.intermediate_size
    per_layer = 2 * batch * length * (4 * d * d + 2 * d * f) + 4 * batch * length * length * d
    return config.num_hidden_layers * per_layer


def _head_flops(batch: int, positions: int, hidden: int, vocab: int) -> float:
    return 2 * batch * positions * (hidden * hidden + hidden * vocab)


def codebook_flops(config: FlavaConfig, batch: int) -> float:
    """Forward FLOPs of the DALL-E-style codebook on codebook_image_size images."""
    c = config.image_codebook_config
    h, side, total = c.hidden_size, config.codebook_image_size, 0.0

    def conv(n_in: int, n_out: int, k: int, s: int) -> float:
        return 2.0 * batch * s * s * k * k * n_in * n_out

    total += conv(c.input_channels, h, 7, side)
    widths = (h, h, 2 * h, 4 * h, 8 * h)
    for g in range(4):
        for b in range(c.num_blocks_per_group):
            n_in, n_out = (widths[g] if b == 0 else widths[g + 1]), widths[g + 1]
            q = n_out // 4
            total += (conv(n_in, n_out, 1, side) if n_in != n_out else 0) + conv(n_in, q, 3, side)
            total += 2 * conv(q, q, 3, side) + conv(q, n_out, 1, side)
        if g < 3:
            side //= 2
    return total + conv(8 * h, c.vocab_size, 1, side)


def train_flops(config: FlavaConfig, stream: str, batch: int, text_length: int, text_positions: int,
                image_positions: int, unmasked_passes: bool = False) -> float:
    """Model FLOPs of one training micro-batch of a stream: trainable work counted 3x (forward + backward), the
    frozen codebook once. `unmasked_passes` adds the unmasked encoder passes that no loss uses (the reference
    computes them; XLA drops them here)."""
    t, i, m = config.text_config, config.image_config, config.multimodal_config
    tokens = i.num_patches + 1
    patch = 2 * batch * i.num_patches * i.patch_size**2 * i.num_channels * i.hidden_size
    if stream == "text":
        trainable = encoder_flops(t, batch, text_length) * (2 if unmasked_passes else 1)
        trainable += _head_flops(batch, text_positions, t.hidden_size, t.vocab_size)
        return 3 * trainable
    image = 2 * (encoder_flops(i, batch, tokens) + patch)
    if stream == "image":
        trainable = image / (1 if unmasked_passes else 2) + _head_flops(batch, image_positions, i.hidden_size,
                                                                         i.vocab_size)
        return 3 * trainable + codebook_flops(config, batch)
    mm_length = 1 + tokens + text_length
    trainable = image + 2 * encoder_flops(t, batch, text_length) + encoder_flops(m, batch, mm_length)
    trainable += 2 * batch * (tokens * i.hidden_size + text_length * t.hidden_size) * m.hidden_size
    trainable += _head_flops(batch, text_positions, m.hidden_size, t.vocab_size)
    trainable += _head_flops(batch, image_positions, m.hidden_size, i.vocab_size)
    trainable += 2 * batch * (m.hidden_size**2 + 2 * m.hidden_size)  # ITM
    trainable += 2 * batch * config.projection_dim * (i.hidden_size + t.hidden_size + 2 * batch)  # contrastive
    return 3 * trainable + codebook_flops(config, batch)


# ------------------------------------------------------------------------------------------------ writers
def _scalar(value: Any) -> float:
    return float(np.asarray(value))


class MetricsFileError(ValueError):
    """A metrics.jsonl line other than the last is not a row: the file was damaged, not merely cut short."""


def read_rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(line, row) of each row of an appended JSON-lines file such as metrics.jsonl. A last line that is not a row
    (a kill mid-append) is dropped with a warning naming the file and line; a bad line before it raises
    MetricsFileError naming them."""
    lines = [(n, line) for n, line in enumerate(path.read_bytes().decode("utf-8", "replace").splitlines(), 1)
             if line.strip()]
    out = []
    for n, line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict) and "step" in row:
            out.append((line, row))
        elif n == lines[-1][0]:
            log.warning("%s:%d: dropped a torn last line (a write cut short): %.80r", path, n, line)
        else:
            raise MetricsFileError(f"{path}:{n}: not a metrics row ({line[:80]!r}); repair or delete that line "
                                   f"(rows past the resumed checkpoint are rewritten anyway)")
    return out


class MetricWriter:
    """metrics.jsonl + TensorBoard, written by process 0 only.

    TensorBoard events are written and flushed in the caller's thread: a background writer's thread could outlive
    a run stopped by a full disk and print a torn traceback after the error line.
    """

    def __init__(self, workdir: str | os.PathLike, resume_step: int = 0) -> None:
        self.active = jax.process_index() == 0
        self.path = Path(workdir) / "metrics.jsonl"
        self._tb = None
        if not self.active:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():  # rows past the restored checkpoint are rewritten by this run
            rows = [line for line, row in read_rows(self.path) if row["step"] <= resume_step]
            partial = self.path.with_name(self.path.name + ".partial")
            partial.write_text("".join(row + "\n" for row in rows))
            os.replace(partial, self.path)  # a kill mid-write leaves the old file, not half of it
        events = Path(workdir) / "tensorboard"
        events.mkdir(parents=True, exist_ok=True)
        self._tb = tensorboard.EventsFile(events)

    def write(self, step: int, values: Mapping[str, Any], timings: Mapping[str, Any] | None = None) -> None:
        """A metrics.jsonl row (`values`) and TensorBoard scalars (`values` and `timings`)."""
        if not self.active:
            return
        row = {"step": int(step), **{k: _scalar(v) for k, v in sorted(values.items())}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        scalars = {key: _scalar(value) for key, value in {**values, **(timings or {})}.items()}
        self._tb.write(tensorboard.scalars_event(int(step), scalars))

    def close(self) -> None:
        if self._tb is not None:
            tb, self._tb = self._tb, None
            tb.close()


class Throughput:
    """Step rate, examples/s, data-wait share and MFU over the steps since the last report. A step does
    `flops_per_step` unless `stepped` says otherwise (length buckets: each step's text at its own length). `clock`
    (seconds) is time.perf_counter unless a test injects a fake one."""

    def __init__(self, flops_per_step: float, examples_per_step: int, peak_flops: float, devices: int,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.flops, self.examples, self.peak, self.devices = flops_per_step, examples_per_step, peak_flops, devices
        self.clock = clock
        self.reset()

    def reset(self) -> None:
        self.start, self.steps, self.data_wait, self.done = self.clock(), 0, 0.0, 0.0

    def waited(self, seconds: float) -> None:
        """Host time spent waiting for a batch, counted in the window where the wait happened."""
        self.data_wait += seconds

    def stepped(self, steps: int = 1, flops: float | None = None) -> None:
        """Steps completed (read back from the device), of `flops` model FLOPs each (default `flops_per_step`)."""
        self.steps += steps
        self.done += steps * (self.flops if flops is None else flops)

    def report(self) -> dict[str, float]:
        elapsed = max(self.clock() - self.start, 1e-9)
        out = {"perf/steps_per_s": self.steps / elapsed, "perf/examples_per_s": self.steps * self.examples / elapsed,
               "perf/data_wait_fraction": self.data_wait / elapsed,
               "perf/tflops_per_s_per_device": self.done / elapsed / self.devices / 1e12}
        out["perf/mfu"] = out["perf/tflops_per_s_per_device"] * 1e12 / self.peak if self.peak > 0 else float("nan")
        self.reset()
        return out


class NonFiniteLoss(ArithmeticError):
    """A step's loss or gradient was not finite (the step itself skipped its update)."""


class StepLog:
    """The loop's metrics, read one step late so the host never waits on the device between steps.

    `push(step, device_metrics, flops)` reads the previous step's metrics and holds this one's (and its model
    FLOPs, None: the meter's per-step figure); `flush()` reads the held ones. Each step's values are checked
    (NonFiniteLoss names the objectives); every `log_every` steps, and at the last, a row goes to `writer` with
    `context(step)` (learning rates, weights) and a console line with losses, rates, MFU and ETA.
    """

    def __init__(self, writer: MetricWriter, throughput: Throughput, total_steps: int, log_every: int,
                 context: Callable[[int], Mapping[str, float]]) -> None:
        self.writer, self.throughput, self.context = writer, throughput, context
        self.total_steps, self.log_every = total_steps, log_every
        self.pending: tuple[int, Any, float | None] | None = None
        self.last: dict[str, float] = {}

    def push(self, step: int, device_metrics: Any, flops: float | None = None) -> None:
        self.flush()
        self.pending = (step, device_metrics, flops)

    def flush(self) -> None:
        if self.pending is None:
            return
        step, device_metrics, flops = self.pending
        self.pending = None
        values = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
        self.throughput.stepped(flops=flops)
        bad = sorted(k[5:] for k, v in values.items() if k.startswith("loss/") and not math.isfinite(v))
        if not values.pop("finite") or bad:
            raise NonFiniteLoss(f"step {step}: non-finite loss for {', '.join(bad) or 'the gradient'} "
                                f"({ {k: values[f'loss/{k}'] for k in bad} })")
        self.last = values
        if step % self.log_every == 0 or step == self.total_steps:
            self._log(step, values)

    def _log(self, step: int, values: dict[str, float]) -> None:
        timings = self.throughput.report()
        self.writer.write(step, {**values, **self.context(step)}, timings)
        eta = duration((self.total_steps - step) / max(timings["perf/steps_per_s"], 1e-9))
        losses = " ".join(f"{k[5:]}={v:.3f}" for k, v in sorted(values.items()) if k.startswith("loss/"))
        log.info("step %d/%d | loss %.4f | %s | %.2f steps/s, %.1f ex/s, data wait %.0f%%, MFU %.1f%% | ETA %s",
                 step, self.total_steps, values["loss"], losses, timings["perf/steps_per_s"],
                 timings["perf/examples_per_s"], 100 * timings["perf/data_wait_fraction"], 100 * timings["perf/mfu"],
                 eta)
