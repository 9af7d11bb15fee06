"""NVIDIA GPUs as compile targets: the facts XLA compiles against when no GPU is present, per card, with their
published sources. `target_config()` writes them as the text-format `stream_executor.GpuTargetConfigProto` that
`jax.experimental.topologies.get_topology_desc(platform="cuda", target_config=...)` takes.

Peak, memory, bandwidth and NVLink live in chips.py (the rows MFU reads on real GPUs too); this module adds what the
compiler needs: compute capability, SMs, clocks, shared memory, L2 and thread limits. Architecture limits per
compute capability are the CUDA C++ Programming Guide's ("Technical Specifications per Compute Capability"); SM
counts, clocks and L2 sizes the architecture whitepapers' and datasheets'.
"""

from __future__ import annotations

import dataclasses
import re

from flava_jax.common.settings import ConfigError
from flava_jax.train import chips


@dataclasses.dataclass(frozen=True)
class Architecture:
    """Limits shared by every card of one compute capability (the programming guide's table)."""

    compute_capability: tuple[int, int]
    shared_per_sm_kib: int  # shared memory per SM, the carve-out's maximum
    shared_per_block_kib: int  # per block, opted in (48 KiB without opting in)
    threads_per_sm: int
    bf16_tensor_cores: bool  # Ampere (8.0) on; Turing's tensor cores take FP16 and INT8 only
    feature_extension: str = ""  # sm_90a: the Hopper-only instructions (wgmma, TMA) XLA's kernels use


TURING = Architecture((7, 5), 64, 64, 1024, bf16_tensor_cores=False)
AMPERE = Architecture((8, 0), 164, 163, 2048, bf16_tensor_cores=True)
ADA = Architecture((8, 9), 100, 99, 1536, bf16_tensor_cores=True)
HOPPER = Architecture((9, 0), 228, 227, 2048, bf16_tensor_cores=True, feature_extension="ACCELERATED_FEATURES")


@dataclasses.dataclass(frozen=True)
class Gpu:
    name: str  # as --gpu names it
    device_name: str  # what the driver reports, and JAX's device_kind
    architecture: Architecture
    sms: int
    fp32_lanes_per_sm: int
    boost_clock_ghz: float
    l2_mib: int
    fp32_tflops: float  # without tensor cores: where bf16 matmuls run on a card without bf16 tensor cores
    source: str

    @property
    def chip(self) -> chips.Chip:
        known = chips.chip(self.device_name)
        if known is None:
            raise LookupError(f"chips.py has no row for {self.device_name!r}")
        return known

    def target_config(self) -> str:
        """The card as a text-format GpuTargetConfigProto."""
        major, minor = self.architecture.compute_capability
        extension = self.architecture.feature_extension
        capability = f"major: {major}" + (f" minor: {minor}" if minor else "") + \
            (f" feature_extension: {extension}" if extension else "")
        info = {
            "threads_per_block_limit": 1024, "threads_per_warp": 32, "shared_memory_per_block": 48 * 1024,
            "shared_memory_per_core": self.architecture.shared_per_sm_kib * 1024,
            "threads_per_core_limit": self.architecture.threads_per_sm, "core_count": self.sms,
            "fpus_per_core": self.fp32_lanes_per_sm, "block_dim_limit_x": 2**31 - 1, "block_dim_limit_y": 65535,
            "block_dim_limit_z": 65535, "memory_bandwidth": int(self.chip.bandwidth),
            "l2_cache_size": self.l2_mib * 2**20, "clock_rate_ghz": self.boost_clock_ghz,
            "device_memory_size": int(self.chip.memory_gib * 2**30),
            "shared_memory_per_block_optin": self.architecture.shared_per_block_kib * 1024,
            "registers_per_core_limit": 65536, "registers_per_block_limit": 65536,
        }
        lines = [f"  {key}: {value}" for key, value in info.items()]
        return "\n".join(["gpu_device_info {", *lines, f"  cuda_compute_capability {{ {capability} }}", "}",
                          'platform_name: "CUDA"',
                          "dnn_version_info { major: 9 minor: 8 }",
                          f'device_description_str: "{self.device_name}"']) + "\n"


# XLA options for compiling without the GPU. Triton GEMM fusions need their tiles autotuned on the card; without it
# XLA falls back to a default tiling that some of the step's small products cannot take ("Couldn't find output tile
# sizes that satisfy": an artefact of compiling without the card, where the autotuner would pick another tiling or
# cuBLAS). cuBLAS for every product keeps the FLOPs, the memory and the collectives a real card's program has.
DEVICELESS = {"xla_gpu_enable_triton_gemm": False}

_H100 = "https://www.nvidia.com/en-us/data-center/h100/ and the H100 whitepaper"
_A100 = "https://www.nvidia.com/en-us/data-center/a100/ and the A100 whitepaper"
GPUS = (
    Gpu("h100", "NVIDIA H100 80GB HBM3", HOPPER, 132, 128, 1.98, 50, 67, _H100),
    Gpu("a100-80gb", "NVIDIA A100-SXM4-80GB", AMPERE, 108, 64, 1.41, 40, 19.5, _A100),
    Gpu("a100-40gb", "NVIDIA A100-SXM4-40GB", AMPERE, 108, 64, 1.41, 40, 19.5, _A100),
    Gpu("l4", "NVIDIA L4", ADA, 58, 128, 2.04, 48, 30.3, "https://www.nvidia.com/en-us/data-center/l4/"),
    Gpu("t4", "Tesla T4", TURING, 40, 64, 1.59, 4, 8.1, "https://www.nvidia.com/en-us/data-center/tesla-t4/"),
)
_TARGET = re.compile(r"([a-z0-9\-]+?)(?:x(\d+))?")


def by_device_name(device_kind: str) -> Gpu | None:
    """The card whose driver reports `device_kind` (JAX's device_kind), if it is one of GPUS."""
    return next((g for g in GPUS if g.device_name == device_kind), None)


def parse(target: str) -> tuple[Gpu, int]:
    """(card, count) of a target such as h100x8, a100-40gb or t4x1."""
    match = _TARGET.fullmatch(target.strip().lower())
    by_name = {g.name: g for g in GPUS}
    if not match or match.group(1) not in by_name:
        raise ConfigError(f"--gpu={target}: expected NAME or NAMExCOUNT with NAME one of {sorted(by_name)}, "
                          "e.g. h100x8")
    count = int(match.group(2) or 1)
    if count < 1:
        raise ConfigError(f"--gpu={target}: the count must be at least 1")
    return by_name[match.group(1)], count
