"""Test set-up: 8 faked CPU devices (before jax initialises), and the shared data folder when it exists."""

import os
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """../shared/data, or a skip that says why: CI has it, a fresh clone does not."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"needs the shared data folder {SHARED_DATA} (present in CI, absent in a fresh clone)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_params():
    """Random parameters of the tiny preset, made once per session: XLA on CPU takes ~20 s to compile the
    random init (one threefry kernel per parameter). Tests that change the tree must copy it first."""
    import jax

    from flava_jax import FlavaConfig, FlavaForPreTraining

    return FlavaForPreTraining(FlavaConfig.from_preset("tiny")).init_params(jax.random.key(0))
