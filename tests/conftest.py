"""Test set-up: 8 faked CPU devices (before jax initialises), and the shared data folder when it exists."""

import os
import shutil
import tempfile
from pathlib import Path

# XLA:CPU compiles the suite's many small programs much faster with LLVM at -O0 and the elemental emitters instead
# of the fusion emitters: the same HLO, and the tiny model's steps run as fast. For the tests only; runs that the
# tests start get them too (xla_flags).
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"


def xla_flags(devices: int | None = None) -> str:
    """XLA_FLAGS for the suite and the runs it starts: FAST_COMPILE, and `devices` faked CPU devices if given."""
    return FAST_COMPILE if devices is None else f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}"


os.environ.setdefault("XLA_FLAGS", xla_flags(8))
# The suite runs on the CPU. With libtpu installed (the deviceless TPU compiles), JAX would otherwise first try to
# start a TPU here; both xdist workers load libtpu, which by default allows one process.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
# Tests compile the same tiny programs many times (and in subprocesses): one persistent compilation cache for the
# run, made by the process that loads this first (xdist's workers, started later, inherit it) and removed by it at
# the end, so no run reads what an earlier one left.
_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _OWN_CACHE = os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="flava_jax_test_xla_cache_")

import pytest  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Each xdist worker gets about one core: torch's default of a thread per core would oversubscribe them, and
    # its waiting threads spin on the core the other worker needs.
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass

# The xdist group of the tests that keep a worker's core and more busy for a minute or more (runs of several
# processes, libtpu compiles, the bf16 runs): one worker runs them one after another. Side by side, each took
# about twice as long, past CI's 120 s a test.
CPU_HEAVY = "cpu_heavy"

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def pytest_configure(config: pytest.Config) -> None:
    if config.option.durations is None:  # the slowest tests, so a suite growing past CI's budget shows where
        config.option.durations = 15
    config.addinivalue_line("markers", "slow: trains, runs a command end to end or compiles a full-size step; "
                                       "`-m \"not slow\"` is the fast tier for day-to-day work")


def pytest_unconfigure(config: pytest.Config) -> None:
    if _OWN_CACHE:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow tests first (in their order): xdist then starts the long ones early, not as a tail on one worker."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture
def cuda_compiler():
    """The CUDA plugin and ptxas, which compile for NVIDIA GPUs without one, or a skip that says how to install them.
    Compiling for a described GPU turns the persistent compilation cache off (aot.gpu_devices): later tests get it
    back."""
    import importlib.util

    import jax

    from flava_jax.train.aot import CUDA_PACKAGES

    missing = [name for name, module in CUDA_PACKAGES.items() if importlib.util.find_spec(module) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} for deviceless GPU compiles: pip install {' '.join(missing)} at the "
                    "installed jax's version (.ci/run installs them)")
    cache = jax.config.jax_enable_compilation_cache
    yield
    jax.config.update("jax_enable_compilation_cache", cache)


@pytest.fixture
def libtpu():
    """libtpu, which compiles for TPU slices without the chips, or a skip that says how to install it. Compiling for
    a topology turns the persistent compilation cache off (aot.topology_devices): later tests get it back."""
    import importlib.util

    import jax

    if importlib.util.find_spec("libtpu") is None:
        pytest.skip("needs libtpu for deviceless TPU compiles: pip install \"jax[tpu]==$(python -c 'import jax; "
                    "print(jax.__version__)')\" (.ci/run installs it)")
    cache = jax.config.jax_enable_compilation_cache
    yield
    jax.config.update("jax_enable_compilation_cache", cache)


@pytest.fixture
def shared_data() -> Path:
    """../shared/data, or a skip that says why: CI has it, a fresh clone does not."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"needs the shared data folder {SHARED_DATA} (present in CI, absent in a fresh clone)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_params():
    """Random parameters of the tiny preset, made once per session: XLA:CPU is slow to compile the random init
    (one threefry kernel per parameter). Tests that change the tree must copy it first."""
    import jax

    from flava_jax import FlavaConfig, FlavaForPreTraining

    return FlavaForPreTraining(FlavaConfig.from_preset("tiny")).init_params(jax.random.key(0))


@pytest.fixture(scope="session")
def debug_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled sample, prepared as configs/debug.py prepares it (once per session)."""
    from flava_jax.data.prepare import PrepareSettings, prepare
    from tests.configs import debug_config

    out = tmp_path_factory.mktemp("debug_data")
    config = debug_config()
    prepare(PrepareSettings.from_config(config), list(config.data.sources), out)
    return out
