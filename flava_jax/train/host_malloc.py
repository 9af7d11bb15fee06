"""How the host's malloc treats the big buffers of XLA:CPU steps (`config.host_malloc`).

XLA:CPU allocates each execution's temporaries as one block (gigabytes for a half-size text step) and frees it at the
end. glibc serves such a block from a fresh mmap whenever the allocating thread is not the main one (its arena's heaps
are capped at 64 MB), so every step faults all of it in again from the kernel; "keep", which puts every thread on the
main heap and never gives freed memory back, reuses the block warm, without faults. The price is a process that keeps
its peak memory until it exits, which a training run reaches on its first step anyway. The other price is one heap
shared by every thread: small models, bound by per-op overhead, lose more to its lock than they gain. So "auto" keeps
only on a CPU-only JAX and for models whose widest encoder has at least MIN_HIDDEN_SIZE features (half and full size);
accelerator hosts and small models are left as they are.

The setting must be in place before the process starts threads (each thread picks its malloc arena on its first
allocation, and importing JAX already starts one), so it is glibc's GLIBC_TUNABLES environment variable, and
`python -m flava_jax.main` re-executes itself with it when the config asks for "keep" and it is not yet set.
The measurements behind these choices are in benchmarks/README.md.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import sys
from typing import Any

from flava_jax.common.settings import ConfigError

POLICIES = ("auto", "keep", "system")
MIN_HIDDEN_SIZE = 256  # "auto" keeps for models at least this wide (half size: 516)
# Every thread on the main heap, no mmap'd blocks, the heap's top never given back (SIZE_MAX).
TUNABLES = "glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=18446744073709551615"
# Packages whose presence means JAX may pick an accelerator.
_ACCELERATOR_PLUGINS = ("libtpu", "jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin")


def runs_on_cpu_only() -> bool:
    """Whether JAX will run on the CPU, judged without starting a backend: the platforms asked for (JAX_PLATFORMS),
    else whether any accelerator plugin is installed."""
    platforms = os.environ.get("JAX_PLATFORMS", "").strip().lower()
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return not any(importlib.util.find_spec(name) is not None for name in _ACCELERATOR_PLUGINS)


def widest_encoder(model: Any) -> int:
    """The largest hidden size of a model config's text, image and multimodal encoders (a FlavaConfig or the
    config's `model` ConfigDict)."""
    return max(getattr(model, name).hidden_size for name in ("text_config", "image_config", "multimodal_config"))


def wants_keep(policy: str, hidden_size: int) -> bool:
    """Whether `config.host_malloc` asks for freed memory to be kept, on glibc: "keep", or "auto" on a CPU-only JAX
    for a model whose widest encoder has `hidden_size` >= MIN_HIDDEN_SIZE features ("system" never)."""
    if policy not in POLICIES:
        raise ConfigError(f"config.host_malloc: {policy!r} is not one of {POLICIES}")
    on_glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    return on_glibc and (policy == "keep" or (policy == "auto" and runs_on_cpu_only()
                                              and hidden_size >= MIN_HIDDEN_SIZE))


def in_effect() -> bool:
    """Whether this process started with TUNABLES."""
    return TUNABLES in os.environ.get("GLIBC_TUNABLES", "")


def ensure(policy: str, model: Any) -> None:
    """Re-execute this process with TUNABLES when `policy` asks to keep freed memory for `model` (a FlavaConfig or
    the config's `model` ConfigDict) and they are not yet in effect. Call before JAX or torch start threads."""
    if wants_keep(policy, widest_encoder(model)) and not in_effect():
        reexec_with_tunables()  # does not return


def reexec_with_tunables() -> None:
    """Replace this process by the same command with TUNABLES added to GLIBC_TUNABLES (same PID, same arguments).
    Call before any JAX backend or other thread work exists."""
    env = dict(os.environ)
    env["GLIBC_TUNABLES"] = ":".join(filter(None, (env.get("GLIBC_TUNABLES"), TUNABLES)))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)
