"""What an accelerator can do, per JAX device: dense bf16 peak, memory and memory bandwidth, with the published
source of each row. MFU (metrics.py) and the compiled-step projection (aot.py) read them from here.

A JAX device is one chip on every generation listed except v2/v3, where it is one of a chip's two cores (v4 and v5p
chips run their two cores as one "megacore" device).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Chip:
    kind: str  # matched, case-insensitively, inside a device's `device_kind`
    bf16_tflops: float | None  # dense peak, no sparsity
    memory_gib: float
    memory_gbps: float | None  # HBM bandwidth, GB/s
    source: str
    ici_gbps: float | None = None  # bidirectional interconnect (ICI, NVLink) bandwidth per chip, GB/s, where published

    @property
    def peak_flops(self) -> float | None:
        return None if self.bf16_tflops is None else self.bf16_tflops * 1e12

    @property
    def bandwidth(self) -> float | None:
        return None if self.memory_gbps is None else self.memory_gbps * 1e9

    @property
    def ici_receive(self) -> float | None:
        """Bytes/s one chip can receive over all its links at once: half the bidirectional figure."""
        return None if self.ici_gbps is None else self.ici_gbps * 1e9 / 2


_GCP = "https://cloud.google.com/tpu/docs/"
_A100 = "https://www.nvidia.com/en-us/data-center/a100/ (datasheet)"
CHIPS = (
    Chip("TPU v2", None, 8, None, _GCP + "v2"),
    Chip("TPU v3", None, 16, None, _GCP + "v3"),
    Chip("TPU v4", 275, 32, 1200, _GCP + "v4"),
    Chip("TPU v5 lite", 197, 16, 819, _GCP + "v5e", ici_gbps=400),  # v5e's device_kind
    Chip("TPU v5e", 197, 16, 819, _GCP + "v5e", ici_gbps=400),
    Chip("TPU v5p", 459, 95, 2765, _GCP + "v5p", ici_gbps=1200),
    Chip("TPU v5", 459, 95, 2765, _GCP + "v5p", ici_gbps=1200),  # v5p's device_kind
    Chip("TPU v6 lite", 918, 32, 1638, _GCP + "v6e", ici_gbps=800),  # v6e's device_kind
    Chip("TPU v6e", 918, 32, 1638, _GCP + "v6e", ici_gbps=800),
    # GPUs: ici_gbps is NVLink's bidirectional bandwidth per GPU (SXM boards)
    Chip("A100-SXM4-80GB", 312, 80, 2039, _A100, ici_gbps=600),
    Chip("A100 80GB", 312, 80, 2039, _A100, ici_gbps=600),
    Chip("A100", 312, 40, 1555, _A100, ici_gbps=600),
    Chip("H100", 989, 80, 3350, "https://www.nvidia.com/en-us/data-center/h100/ (SXM datasheet)", ici_gbps=900),
    Chip("H200", 989, 141, 4800, "https://www.nvidia.com/en-us/data-center/h200/ (SXM datasheet)", ici_gbps=900),
    Chip("L4", 121, 24, 300, "https://www.nvidia.com/en-us/data-center/l4/ (datasheet)"),
    Chip("L40S", 362, 48, 864, "https://www.nvidia.com/en-us/data-center/l40s/ (datasheet)"),  # not "L4"
    # No bf16 tensor cores (Turing): bf16 matmuls run on the FP32 units (gpus.py has their rate)
    Chip("T4", None, 16, 320, "https://www.nvidia.com/en-us/data-center/tesla-t4/ (datasheet)"),
)


def chip(device_kind: str) -> Chip | None:
    """The row whose kind is the longest match inside `device_kind` ("TPU v5 lite" before "TPU v5")."""
    matches = [c for c in CHIPS if c.kind.lower() in device_kind.lower()]
    return max(matches, key=lambda c: len(c.kind)) if matches else None
