"""config.host_malloc: XLA:CPU's per-execution temporaries are reused warm instead of faulted in from the kernel on
every step; the trainer re-executes itself with the setting before JAX starts; bad values are refused naming the
key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flava_jax.common.settings import ConfigError
from flava_jax.train import host_malloc
from tests.configs import REPO

glibc_only = pytest.mark.skipif(not host_malloc.wants_keep("keep", 0), reason="glibc's malloc tunables only")

# Bytes faulted in by calls 3 to 8 of a jitted function whose two 4096 x 4096 products (64 MiB each) are XLA
# temporaries: each is consumed by a product with a thin matrix, so the output is small (and the work is ~1 GFLOP).
_PROBE = """
import resource
import jax, jax.numpy as jnp
x = jnp.ones((4096, 16), jnp.float32)
f = jax.jit(lambda x: ((x @ x.T) @ x).sum() + (((2 * x) @ x.T) @ x).sum())
for call in range(8):
    if call == 2:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) * resource.getpagesize())
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    return {**env, "JAX_PLATFORMS": "cpu", **extra}


@glibc_only
@pytest.mark.slow
def test_keep_reuses_xlas_temporaries_without_page_faults() -> None:
    def faulted(**env: str) -> int:
        out = subprocess.run([sys.executable, "-c", _PROBE], cwd=REPO, env=_env(**env), capture_output=True,
                             text=True, timeout=300, check=True)
        return int(out.stdout.strip().splitlines()[-1])

    # Without it every call's big blocks come back as fresh pages; with it they are reused (a block may still land
    # somewhere new now and then, when other allocations split the free space: seen under CI's load).
    system, keep = faulted(), faulted(GLIBC_TUNABLES=host_malloc.TUNABLES)
    assert system >= 6 * 64 * 2**20
    assert keep <= system / 3


@glibc_only
def test_reexec_adds_the_tunables_once_keeping_the_command() -> None:
    code = ("import sys; from flava_jax.train import host_malloc as h; print(h.in_effect(), sys.argv[1:], flush=True); "
            "h.in_effect() or h.reexec_with_tunables()")
    out = subprocess.run([sys.executable, "-c", code, "a", "--b=1"], cwd=REPO, env=_env(), capture_output=True,
                         text=True, timeout=300, check=True)
    assert out.stdout.splitlines() == ["False ['a', '--b=1']", "True ['a', '--b=1']"]


@glibc_only
def test_the_trainer_restarts_itself_with_it(tmp_path: Path) -> None:
    # Stops at the model config check, after the restart and its start-up log line.
    command = [sys.executable, "-m", "flava_jax.main", "--config=configs/debug.py", f"--workdir={tmp_path}",
               "--config.host_malloc=keep", "--config.model.text_config.num_attention_heads=5"]
    out = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert "host malloc: freed memory kept for reuse (config.host_malloc=keep)" in out.stderr
    assert "not a multiple of text_config.num_attention_heads=5" in out.stderr


def test_main_imports_start_no_jax_backend_and_no_torch() -> None:
    """No backend before host_malloc has its say; no torch, which would add seconds to every start where the
    evaluator's packages are installed too (it came in through tensorboardX)."""
    code = ("import sys, jax._src.xla_bridge as xb, flava_jax.main; "
            "print(xb.backends_are_initialized(), sorted({'torch', 'tensorboardX'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                         check=True)
    assert out.stdout.strip().splitlines()[-1] == "False []"


def test_a_bad_value_is_refused_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config\.host_malloc: 'always' is not one of"):
        host_malloc.wants_keep("always", 768)
    out = subprocess.run([sys.executable, "-m", "flava_jax.main", "--config=configs/debug.py",
                          f"--workdir={tmp_path}", "--config.host_malloc=always"], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode != 0 and "config.host_malloc" in out.stderr


@glibc_only
def test_auto_keeps_for_wide_models_on_a_cpu_only_jax(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert host_malloc.runs_on_cpu_only()
    assert host_malloc.wants_keep("auto", 516) and not host_malloc.wants_keep("auto", 32)  # half size, tiny
    assert not host_malloc.wants_keep("system", 768)
    monkeypatch.setenv("JAX_PLATFORMS", "tpu,cpu")
    assert not host_malloc.runs_on_cpu_only()
    assert not host_malloc.wants_keep("auto", 768) and host_malloc.wants_keep("keep", 32)
