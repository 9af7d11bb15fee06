"""Ahead-of-time compile of the train step: memory per device, to size a pod before renting it, and what the
compiled program costs, to project its step time and MFU on chips that are not here.

    python -m flava_jax.aot --config=configs/10M_4M.py [--config.key=value ...]
        [--devices=8 | --topology=v5e:4x4 | --gpu=h100x8] [--meshes=data,fsdp,2x4] [--text_length=256]
        [--out=memory.json] [--hlo_dir=DIR]

For each mesh it builds the trainer's own jitted step (`train.build`: same shardings, same donation) and lowers it
on abstract values only: `jax.eval_shape` gives the state's shapes, `jax.ShapeDtypeStruct`s with shardings stand in
for the batch, so no parameter is ever allocated. The compiled program's `memory_analysis()` then says what one
device holds. The target is this machine's devices, N faked CPU devices (`--devices`), a TPU topology
(`--topology`, compiled by libtpu without the chips being there, as MaxText's train_compile.py does), or N NVIDIA GPUs
of one card (`--gpu`, or `--topology=h100x8`: compiled by XLA's CUDA backend with ptxas, no GPU or driver present;
gpus.py holds the cards).

Meshes: `data` (every device data parallel), `fsdp` (every device one FSDP group), `config` (as the config's
`sharding` section says), or sizes `DxF` / `DxFxT` (data x fsdp x tensor, FSDP on when F > 1).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import logging
import math
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import ConfigDict, config_flags

from flava_jax.common.settings import ConfigError
from flava_jax.data.pipeline import STREAM_KEYS
from flava_jax.train import chips, gpus
from flava_jax.train import sharding as sharding_lib
from flava_jax.train.roofline import Roofline, cost_summary
from flava_jax.train.scheduler import MultimodalScheduler
from flava_jax.train.trainer import Plan, build, model_config, plan, step_flops

log = logging.getLogger("flava_jax")

TEXT_KEYS = ("input_ids", "input_ids_masked", "mlm_labels", "attention_mask")
# What compiling for NVIDIA GPUs without one takes: the CUDA plugin (its PJRT half included) and ptxas/libdevice
CUDA_PACKAGES = {"jax-cuda12-plugin": "jax_cuda12_plugin", "jax-cuda12-pjrt": "jax_plugins.xla_cuda12",
                  "nvidia-cuda-nvcc-cu12": "nvidia.cuda_nvcc"}
_SIZES = re.compile(r"(\d+)x(\d+)(?:x(\d+))?")


@dataclasses.dataclass(frozen=True)
class StepReport:
    """One device's share of a train step on one mesh. Memory: parameters and optimizer state are analytic (each
    leaf's shard under its sharding), the rest is the compiled program's `memory_analysis()`. Cost: the roofline
    over the optimized HLO, XLA's own totals beside it (which count a loop body once), and the model's FLOPs."""

    mesh: str
    mesh_shape: dict[str, int]
    examples_per_step: int
    micro_steps: int
    text_length: int  # text-only batches' padded length
    parameters: int
    optimizer_state: int
    arguments: int  # state + batch + weights, as the program receives them
    outputs: int
    aliased: int  # outputs written into donated arguments (counted in both above)
    temporaries: int
    generated_code: int
    compile_seconds: float  # lowering (tracing to StableHLO) and XLA's compile together
    lower_seconds: float  # the lowering part
    model_flops: float  # metrics.py's count for one step, divided among the devices
    compiled_flops: float  # matrix products and convolutions of the HLO, loops times their trip counts
    hbm_bytes: float  # operands and results of every top-level op, loops times their trip counts
    collective_bytes: float
    xla_costs: dict[str, float]  # cost_analysis(): flops, bytes accessed, optimal_seconds (libtpu's estimate)
    roofline_seconds: float | None  # compute and HBM; None where the chip's peak or bandwidth is not known
    flops_bound_seconds: float | None
    collective_seconds: float | None  # collective bytes at the chip's ICI receive rate; None where not published
    peak_flops: float | None

    @property
    def total(self) -> int:
        """Live bytes at most: arguments, outputs not aliased to them, temporaries and code."""
        return self.arguments + self.outputs - self.aliased + self.temporaries + self.generated_code

    @property
    def step_seconds(self) -> float | None:
        """The estimated step: the roofline, or the collectives' time where they take longer (collectives overlap
        compute at best)."""
        return step_seconds(self.roofline_seconds, self.collective_seconds)

    @property
    def mfu(self) -> float | None:
        """Projected model FLOPs utilisation: model FLOPs / (estimated step x peak)."""
        if not (self.step_seconds and self.peak_flops):
            return None
        return self.model_flops / (self.step_seconds * self.peak_flops)


def step_seconds(roofline: float | None, collectives: float | None) -> float | None:
    return None if roofline is None else max(roofline, collectives or 0.0)


def collective_seconds(collective_bytes: float, chip: chips.Chip | None) -> float | None:
    """Time to move a step's collective bytes at the chip's ICI receive rate, every link busy: a lower bound."""
    return None if chip is None or chip.ici_receive is None else collective_bytes / chip.ici_receive


def mesh_config(config: ConfigDict, mesh: str, device_count: int) -> ConfigDict:
    """A copy of `config` whose `sharding` section is the named mesh (see the module docstring)."""
    config = copy.deepcopy(config)
    if mesh == "config":
        return config
    if mesh == "data":
        sizes, fsdp = (device_count, 1, 1), False
    elif mesh == "fsdp":
        sizes, fsdp = (1, device_count, 1), True
    elif match := _SIZES.fullmatch(mesh):
        sizes = tuple(int(s) for s in match.groups(default="1"))
        fsdp = sizes[1] > 1
    else:
        raise ConfigError(f"--meshes: {mesh!r} is not data, fsdp, config, DxF or DxFxT (data x fsdp x tensor)")
    for axis, size in zip(sharding_lib.MESH_AXES, sizes, strict=True):
        config.sharding.mesh[axis] = size
    config.sharding.fsdp = fsdp
    return config


def batch_spec(config: ConfigDict, run: Plan, sharding: jax.sharding.Sharding,
               text_length: int | None = None) -> dict[str, dict[str, Any]]:
    """ShapeDtypeStructs of one step's stacked batch, (micro_steps, examples, ...) per stream, as the pipeline
    makes it: text padded to its longest length, or text-only batches to `text_length` (a length bucket's step),
    images as stored uint8 pixels, patch masks over the model's grid."""
    data, image = config.data, config.model.image_config
    patches = (image.image_size // image.patch_size) ** 2

    def spec(examples: int, *shape: int, dtype: Any = jnp.int32) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct((run.accumulation, examples, *shape), dtype, sharding=sharding)

    def text(n: int, length: int) -> dict[str, jax.ShapeDtypeStruct]:
        return {key: spec(n, length) for key in TEXT_KEYS}

    def images(n: int) -> dict[str, jax.ShapeDtypeStruct]:
        return {"pixels": spec(n, data.image_size, data.image_size, 3, dtype=jnp.uint8),
                "bool_masked_pos": spec(n, patches, dtype=jnp.bool_)}

    makers = {"text": lambda n: text(n, text_length or data.text_max_length), "image": images,
              "pairs": lambda n: {**text(n, data.pair_max_length), **images(n), "itm_labels": spec(n)}}
    return {stream: makers[stream](n) for stream, n in run.micro_batch.items()}


def shard_bytes(tree: Any) -> int:
    """Bytes of one device's shard of every leaf (ShapeDtypeStructs with shardings) of `tree`."""
    return sum(math.prod(leaf.sharding.shard_shape(leaf.shape)) * np.dtype(leaf.dtype).itemsize
               for leaf in jax.tree.leaves(tree))


def compile_step(config: ConfigDict, mesh: str, devices: Sequence[Any],
                 text_length: int | None = None) -> tuple[StepReport, Any]:
    """Lower and compile the trainer's step for `mesh` over `devices` (real, faked or compile-only); returns its
    report and the compiled program. Every data stream is assumed present, the most a run of this config can hold;
    `text_length`: text-only batches padded to it (one of `data.length_buckets`), not to `data.text_max_length`."""
    config = mesh_config(config, mesh, len(devices))
    device_mesh = sharding_lib.make_mesh(config.sharding.mesh, devices)
    run = plan(config, list(STREAM_KEYS), device_mesh)
    parts = build(config, model_config(config), device_mesh)
    replicated = sharding_lib.replicated(device_mesh)
    weights = jax.tree.map(lambda w: jax.ShapeDtypeStruct((), jnp.float32, sharding=replicated),
                           MultimodalScheduler.from_config(run.weights, config.scheduler).weights())
    key = jax.eval_shape(lambda: jax.random.key(0))
    rng = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=replicated)
    batch = batch_spec(config, run, parts.batch_sharding, text_length)
    log.info("[%s] mesh %s, %d examples per step (%s x %d micro-steps): lowering", mesh, dict(device_mesh.shape),
             run.examples_per_step, run.micro_batch, run.accumulation)
    started = time.perf_counter()
    lowered = parts.train_step.lower(parts.abstract_state, batch, weights, rng)
    lower_seconds = time.perf_counter() - started
    log.info("[%s] lowered in %.0f s; compiling (minutes on a CPU for the full size)", mesh, lower_seconds)
    compiled = lowered.compile(compiler_options(devices))
    seconds = time.perf_counter() - started
    log.info("[%s] lowered and compiled in %.0f s", mesh, seconds)
    stats = compiled.memory_analysis()
    known = chips.chip(devices[0].device_kind)
    peak = peak_flops(devices[0].device_kind)
    bandwidth = known.bandwidth if known else None
    cost = Roofline(compiled.as_text(), peak or math.inf, bandwidth or math.inf).total()
    timed = peak is not None and bandwidth is not None
    report = StepReport(
        mesh=mesh, mesh_shape=dict(device_mesh.shape), examples_per_step=run.examples_per_step,
        micro_steps=run.accumulation, text_length=text_length or config.data.text_max_length,
        parameters=shard_bytes(parts.abstract_state.params),
        optimizer_state=shard_bytes(parts.abstract_state.opt_state), arguments=stats.argument_size_in_bytes,
        outputs=stats.output_size_in_bytes, aliased=stats.alias_size_in_bytes, temporaries=stats.temp_size_in_bytes,
        generated_code=stats.generated_code_size_in_bytes, compile_seconds=seconds,
        lower_seconds=lower_seconds,
        model_flops=step_flops(config, model_config(config), run, text_length) / len(devices),
        compiled_flops=cost.flops,
        hbm_bytes=cost.bytes, collective_bytes=cost.collective_bytes,
        xla_costs=cost_summary(compiled.cost_analysis()), roofline_seconds=cost.seconds if timed else None,
        flops_bound_seconds=cost.flops_bound_seconds if timed else None,
        collective_seconds=collective_seconds(cost.collective_bytes, known), peak_flops=peak)
    return report, compiled


def peak_flops(device_kind: str) -> float | None:
    """The FLOP/s MFU is projected against: the chip's dense bf16 peak, or on a card without bf16 tensor cores (a
    T4), its FP32 units' rate, where its products run in bf16 and in f32 alike."""
    known = chips.chip(device_kind)
    if known is not None and known.peak_flops is not None:
        return known.peak_flops
    gpu = gpus.by_device_name(device_kind)
    return None if gpu is None else gpu.fp32_tflops * 1e12


def compiler_options(devices: Sequence[Any]) -> dict[str, Any] | None:
    """XLA options for compiling for `devices`: gpus.DEVICELESS for GPUs described rather than present."""
    compile_only = type(devices[0].client).__name__ == "CompileOnlyPyClient"
    return gpus.DEVICELESS if devices[0].platform == "gpu" and compile_only else None


def device_memory(device: Any) -> tuple[int | None, str]:
    """(bytes of memory per device, where the figure comes from); None when neither the device nor chips.py
    knows (a CPU)."""
    try:
        stats = device.memory_stats()
    except jax.errors.JaxRuntimeError:  # compile-only (topology) devices have no allocator to ask
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]), "the device's allocator limit"
    known = chips.chip(device.device_kind)
    if known is not None:
        return int(known.memory_gib * 2**30), f"{known.kind} HBM"
    return None, f"no memory size known for {device.device_kind!r}"


def _size(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if abs(n) >= 2**30 else f"{n / 2**20:.1f} MiB"


def _flops(n: float) -> str:
    return f"{n:.3g}"


def _seconds(t: float | None) -> str:
    if t is None:
        return "n/a"
    return f"{t * 1e6:.0f} us" if abs(t) < 1e-3 else f"{t * 1e3:.1f} ms" if abs(t) < 1 else f"{t:.2f} s"


def _table(rows: Sequence[tuple[str, Sequence[str]]]) -> str:
    width = max(len(label) for label, _ in rows)
    columns = [max(len(v) for v in values) for values in zip(*(values for _, values in rows), strict=True)]
    return "\n".join(f"{label:<{width}}  " + "  ".join(f"{v:>{w}}" for v, w in zip(values, columns, strict=True))
                     for label, values in rows)


def format_table(reports: Sequence[StepReport], capacity: int | None, capacity_source: str) -> str:
    """A text table, one column per mesh, of what one device holds."""
    rows = [("mesh (data x fsdp x tensor)", [f"{r.mesh} {'x'.join(str(v) for v in r.mesh_shape.values())}"
                                             for r in reports]),
            ("examples per step", [f"{r.examples_per_step} ({r.micro_steps} micro-steps)" for r in reports]),
            ("text-only batches padded to", [f"{r.text_length} tokens" for r in reports]),
            ("compile time here", [f"{r.compile_seconds:.0f} s ({r.lower_seconds:.0f} s lowering)"
                                   for r in reports]),
            ("parameters (analytic)", [_size(r.parameters) for r in reports]),
            ("optimizer state (analytic)", [_size(r.optimizer_state) for r in reports]),
            ("compiled: arguments", [_size(r.arguments) for r in reports]),
            ("compiled: outputs", [_size(r.outputs) for r in reports]),
            ("compiled: aliased (donated)", [_size(r.aliased) for r in reports]),
            ("compiled: temporaries", [_size(r.temporaries) for r in reports]),
            ("compiled: generated code", [_size(r.generated_code) for r in reports]),
            ("total per device", [_size(r.total) for r in reports])]
    if capacity:
        rows.append((f"of {_size(capacity)} ({capacity_source})", [f"{100 * r.total / capacity:.0f}%"
                                                                 for r in reports]))
    return _table(rows)


def format_projection(reports: Sequence[StepReport], total_steps: int) -> str:
    """A text table, one column per mesh, of one device's FLOPs and bytes per step and what they project."""
    rows = [("mesh", [r.mesh for r in reports]),
            ("model FLOPs per step", [_flops(r.model_flops) for r in reports]),
            ("compiled FLOPs per step (HLO)", [_flops(r.compiled_flops) for r in reports]),
            ("compiled / model FLOPs", [f"{r.compiled_flops / r.model_flops:.2f}x" for r in reports]),
            ("XLA cost_analysis FLOPs", [_flops(r.xla_costs.get("flops", math.nan)) for r in reports]),
            ("HBM bytes per step (HLO)", [_size(r.hbm_bytes) for r in reports]),
            ("collective bytes received per step", [_size(r.collective_bytes) for r in reports]),
            ("libtpu optimal_seconds", [_seconds(r.xla_costs.get("optimal_seconds")) for r in reports]),
            ("compute and HBM (roofline)", [_seconds(r.roofline_seconds) for r in reports]),
            ("  of which FLOP-bound", [_seconds(r.flops_bound_seconds) for r in reports]),
            ("collectives at ICI / NVLink bandwidth", [_seconds(r.collective_seconds) for r in reports]),
            ("estimated step time", [_seconds(r.step_seconds) for r in reports]),
            ("projected MFU", ["n/a" if r.mfu is None else f"{100 * r.mfu:.1f}%" for r in reports]),
            (f"projected hours for {total_steps:,} steps",
             ["n/a" if r.step_seconds is None else f"{r.step_seconds * total_steps / 3600:.1f}"
              for r in reports])]
    return _table(rows)


def topology_devices(name: str) -> list[Any]:
    """Compile-only devices of a TPU slice such as v5e:4x4 or v4:2x2x2 (libtpu compiles for them here). Turns the
    persistent compilation cache off for this process."""
    if importlib.util.find_spec("libtpu") is None:
        raise ConfigError(f"--topology={name} needs libtpu to compile for TPUs, and it is not installed "
                          "(pip install 'jax[tpu]'); use --devices=N to fake N CPU devices instead")
    from jax.experimental import topologies

    # A compile-only program cannot be read back from the persistent cache (there is no client to load it into).
    jax.config.update("jax_enable_compilation_cache", False)
    # One device per chip on megacore generations (v4, v5p); hosts of 2x2 chips, as MaxText describes slices.
    megacore = name.split(":", 1)[0] in ("v4", "v5", "v5p")
    return topologies.get_topology_desc(topology_name=name, platform="tpu",
                                        chip_config_name="megacore" if megacore else "default",
                                        chips_per_host_bounds=(2, 2, 1), num_slices=1).devices


def gpu_devices(target: str) -> list[Any]:
    """Compile-only devices of N NVIDIA GPUs of one card, such as h100x8 or a100-40gb (gpus.py). XLA's CUDA backend
    compiles for them here, with ptxas from PyPI and no GPU; must run before any JAX backend starts. Turns the
    persistent compilation cache off for this process."""
    gpu, count = gpus.parse(target)
    missing = [p for p, module in CUDA_PACKAGES.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise ConfigError(f"--gpu={target} needs {', '.join(missing)} to compile for NVIDIA GPUs without one: "
                          f"pip install {' '.join(missing)} (at the installed jax's version for the jax packages)")
    from jax.experimental import topologies

    # The CUDA plugin checks for a driver when its backend starts: with no GPU here, only the CPU backend starts,
    # and the plugin compiles for the described card.
    if jax.config.jax_platforms != "cpu":
        jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_enable_compilation_cache", False)
    return topologies.get_topology_desc(platform="cuda", target_config=gpu.target_config(),
                                        topology=f"1x1x{count}").devices


def target_devices(topology: str) -> list[Any]:
    """--topology's devices: a GPU target (gpus.py's names, e.g. h100x8) or a TPU slice (e.g. v5e:4x4)."""
    return topology_devices(topology) if ":" in topology else gpu_devices(topology)


def warnings(config: ConfigDict, reports: Sequence[StepReport], device_kind: str, capacity: int | None) -> list[str]:
    """One line for each way the target cannot run the step as configured, naming the key to change."""
    lines = [f"[{r.mesh}] needs {_size(r.total)} per device of {_size(capacity)}: lower config.train.micro_batch_size"
             f" (or shard more: --meshes=fsdp, config.model.remat_policy)" for r in reports
             if capacity and r.total > capacity]
    gpu = gpus.by_device_name(device_kind)
    if gpu and config.model.dtype == "bfloat16" and not gpu.architecture.bf16_tensor_cores:
        lines.append(f"{gpu.name}: no bf16 tensor cores (compute capability {gpu.architecture.compute_capability}), "
                     f"so config.model.dtype='bfloat16' runs its products on the FP32 units ({gpu.fp32_tflops} "
                     f"TFLOPS, the rate MFU is projected at); config.model.dtype='float32' keeps the speed with f32 "
                     f"numerics")
    return lines


# ------------------------------------------------------------------------------------------------ command line
_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file, e.g. configs/10M_4M.py.",
                                          lock_config=True)
_DEVICES = flags.DEFINE_integer("devices", None, "Compile for this many faked CPU devices.")
_TOPOLOGY = flags.DEFINE_string("topology", None, "Compile for a TPU slice, e.g. v5e:4x4 or v4:2x2x2 (needs "
                                "libtpu), or for NVIDIA GPUs as --gpu names them.")
_GPU = flags.DEFINE_string("gpu", None, f"Compile for NVIDIA GPUs without one: NAME or NAMExCOUNT, NAME one of "
                           f"{', '.join(g.name for g in gpus.GPUS)} (e.g. h100x8; needs the CUDA plugin and ptxas).")
_MESHES = flags.DEFINE_list("meshes", ["data", "fsdp"], "Meshes to compare: data, fsdp, config, DxF or DxFxT.")
_OUT = flags.DEFINE_string("out", None, "Also write the measurements to this JSON file.")
_TEXT_LENGTH = flags.DEFINE_integer("text_length", None, "Pad text-only batches to this length, as a length bucket "
                                   "does (data.length_buckets), not to data.text_max_length.")
_HLO_DIR = flags.DEFINE_string("hlo_dir", None, "Also write each mesh's optimized HLO to DIR/MESH.hlo.txt (what the "
                               "projection reads; `benchmarks/breakdown.py` splits its cost by source).")


def main(argv: list[str]) -> None:
    """Compile for every mesh of --meshes, print the table, write --out; exit 1 if a mesh cannot shard."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _CONFIG.value is None:
        raise app.UsageError("--config is required")
    if sum(flag.value is not None for flag in (_DEVICES, _TOPOLOGY, _GPU)) > 1:
        raise app.UsageError("give one of --devices, --topology and --gpu")
    if _TEXT_LENGTH.value is not None and not 2 < _TEXT_LENGTH.value <= _CONFIG.value.data.text_max_length:
        raise app.UsageError(f"--text_length={_TEXT_LENGTH.value}: a bucket holds [CLS], [SEP] and text, at most "
                             f"data.text_max_length ({_CONFIG.value.data.text_max_length})")
    if _DEVICES.value is not None:
        # Faked CPU devices must be asked for before JAX creates its CPU client, which happens at the first
        # device query, not at import. Nothing imported above queries one, so this option (the current form of
        # XLA_FLAGS=--xla_force_host_platform_device_count, and it takes precedence over that flag) still
        # applies here without setting the environment before `import jax` or re-executing; were a backend up
        # already, its validator would raise rather than be ignored. CPU only: a GPU machine would otherwise
        # also start its GPU client and reserve most of its memory.
        jax.config.update("jax_platforms", "cpu")
        jax.config.update("jax_num_cpu_devices", _DEVICES.value)
    logging.getLogger("flava_jax").setLevel(logging.INFO)
    logging.getLogger("absl").setLevel(logging.WARNING)
    try:
        target = _GPU.value or _TOPOLOGY.value
        devices = target_devices(target) if target else jax.devices()
        capacity, source = device_memory(devices[0])
        log.info("target: %d x %s", len(devices), devices[0].device_kind)
        reports, failed = [], {}
        for mesh in _MESHES.value:
            try:
                report, compiled = compile_step(_CONFIG.value, mesh, devices, _TEXT_LENGTH.value)
                reports.append(report)
                if _HLO_DIR.value:
                    Path(_HLO_DIR.value).mkdir(parents=True, exist_ok=True)
                    (Path(_HLO_DIR.value) / f"{mesh}.hlo.txt").write_text(compiled.as_text())
            except sharding_lib.ShardingError as e:  # e.g. a width FSDP cannot split; the other meshes still run
                log.error("[%s] %s", mesh, e)
                failed[mesh] = str(e)
    except ConfigError as e:
        raise app.UsageError(str(e)) from e
    for line in warnings(_CONFIG.value, reports, devices[0].device_kind, capacity):
        log.warning("%s", line)
    if reports:
        print(f"Per-device memory of one train step on {len(devices)} x {devices[0].device_kind}:")
        print(format_table(reports, capacity, source))
        print("\nPer device and step, projected from the compiled program (estimates, not measurements):")
        print(format_projection(reports, _CONFIG.value.total_steps))
    if _OUT.value:
        Path(_OUT.value).write_text(json.dumps({
            "devices": len(devices), "device_kind": devices[0].device_kind, "device_memory": capacity,
            "device_memory_source": source,
            "meshes": [{**dataclasses.asdict(r), "total": r.total, "step_seconds": r.step_seconds, "mfu": r.mfu}
                       for r in reports], "failed": failed,
        }, indent=2) + "\n")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
