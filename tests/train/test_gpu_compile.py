"""The real train step compiled for NVIDIA GPUs by XLA's CUDA backend, without a GPU (gpus.py's cards): it lowers,
it fits, its attention runs in the Triton kernels from Ampere on, data parallel all-reduces while FSDP gathers and
scatters, nothing runs on the host; and the roofline reads GPU programs (cuBLAS calls, the kernels' stated FLOPs) to
the hand-counted FLOP. CI installs the CUDA plugin and ptxas;
elsewhere these skip, saying how to install them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flava_jax.common.settings import ConfigError
from flava_jax.model.config import FlavaConfig
from flava_jax.train import aot, gpus, trainer
from flava_jax.train.roofline import Roofline
from tests.configs import debug_config
from tests.train.compiled import collectives

# One xdist worker runs them all, so the compiles they share (_COMPILED) are made once.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("cuda_compiler"), pytest.mark.xdist_group("gpu_compile")]

_COMPILED: dict[tuple[str, str], tuple] = {}


def _compile(target: str, mesh: str):
    """(report, optimized HLO, memory per GPU) of the debug step (FSDP sharding the tiny model's weights too; the
    attention the full configs ship, "auto": the Triton kernels on these cards), compiled once per test run."""
    if (target, mesh) not in _COMPILED:
        devices = aot.gpu_devices(target)
        config = debug_config(sharding__fsdp_min_size=256, train__batch_size=48, model__attention="auto")
        report, compiled = aot.compile_step(config, mesh, devices)
        _COMPILED[target, mesh] = report, compiled.as_text(), aot.device_memory(devices[0])[0]
    return _COMPILED[target, mesh]


def _roofline(target: str, f, *shapes: tuple[int, ...]) -> tuple[Roofline, gpus.Gpu]:
    """The roofline of `f` compiled for one GPU on bf16 arguments of `shapes`."""
    gpu, _ = gpus.parse(target)
    device = aot.gpu_devices(target)[0]
    sharding = jax.sharding.SingleDeviceSharding(device)
    arguments = [jax.ShapeDtypeStruct(shape, jnp.bfloat16, sharding=sharding) for shape in shapes]
    hlo = jax.jit(f).trace(*arguments).lower().compile().as_text()
    return Roofline(hlo, gpu.chip.peak_flops, gpu.chip.bandwidth), gpu


@pytest.mark.parametrize("target", ["h100", "a100-40gb"])
def test_a_bare_bf16_gemm_costs_its_flops_exactly(target: str) -> None:
    """[4096, 2048] x [2048, 1024]: 2MKN FLOPs, and a roofline time within 10% of the larger of those FLOPs at the
    card's peak and the operands' and result's bytes at its bandwidth."""
    m, k, n = 4096, 2048, 1024
    roofline, gpu = _roofline(target, jnp.dot, (m, k), (k, n))
    cost = roofline.total()
    assert cost.flops == 2 * m * k * n
    expected = max(2 * m * k * n / gpu.chip.peak_flops, 2 * (m * k + k * n + m * n) / gpu.chip.bandwidth)
    assert abs(cost.seconds - expected) <= 0.1 * expected, (cost.seconds, expected)


def test_an_mlps_forward_and_backward_flops_by_hand() -> None:
    """sum(relu(x W1) W2)^2 / 2 and its gradients for W1 and W2 (not x): forward 2BDH + 2BHO, backward dW2 and dh
    (2BHO each) and dW1 (2BDH)."""
    b, d, h, o = 512, 256, 1024, 128

    def loss(x: jax.Array, w1: jax.Array, w2: jax.Array) -> jax.Array:
        # Squared, so the output's gradient is not a constant (XLA would turn its products into sums)
        return 0.5 * jnp.sum(jnp.square(jax.nn.relu(x @ w1) @ w2), dtype=jnp.float32)

    roofline, _ = _roofline("h100", jax.grad(loss, argnums=(1, 2)), (b, d), (d, h), (h, o))
    assert roofline.total().flops == 2 * (2 * b * d * h) + 3 * (2 * b * h * o)


@pytest.mark.parametrize("target, mesh", [("h100x1", "data"), ("a100-80gbx8", "data"), ("a100-80gbx8", "fsdp")])
def test_debug_step_compiles_for_gpus(target: str, mesh: str) -> None:
    """It lowers and fits, and cuBLAS calls and cuDNN convolutions are counted; data parallel all-reduces gradients,
    FSDP scatters them and gathers weights (many times the data-parallel program's gathered bytes); no f64, no host
    round trips."""
    report, hlo, capacity = _compile(target, mesh)
    assert 0 < report.total < capacity
    # The kernels' FLOPs are counted (their backward's recomputed scores put the program a little over the model)
    kernels = [line for line in hlo.splitlines() if 'custom_call_target="__gpu$xla.gpu.triton"' in line]
    assert kernels and len(kernels) % 3 == 0, len(kernels)  # forward, key/value and query gradients per encoder
    assert 1.0 < report.compiled_flops / report.model_flops < 1.1
    found = collectives(hlo)
    if mesh == "data":  # one GPU has nothing to reduce
        assert (report.mesh_shape["data"] == 1) == (found["reduces"] == 0), found
    else:  # the data-parallel program scatters only the contrastive embeddings' gradient (what it gathered)
        data = collectives(_compile(target, "data")[1])
        assert found["scatters"] > data["scatters"] and found["gathered"] > 10 * data["gathered"], (data, found)


def test_auto_attention_is_the_triton_kernel_from_ampere_on() -> None:
    """"auto" gives cards of compute capability 8.0 and up the Triton kernels; a T4 (7.5, below Triton's floor)
    keeps XLA's attention, and asking it for the kernel fails naming the key."""
    def attention(target: str, asked: str) -> str:
        mesh = jax.sharding.Mesh(np.array(aot.gpu_devices(target)), ("data",))
        return trainer._attention_for(FlavaConfig(attention=asked), mesh).attention

    assert [attention(t, "auto") for t in ("h100", "a100-40gb", "l4", "t4")] == ["pallas_gpu"] * 3 + ["xla"]
    with pytest.raises(ConfigError, match="config.model.attention='pallas_gpu' does not run on .*Tesla T4"):
        attention("t4", "pallas_gpu")
    with pytest.raises(ConfigError, match="config.model.attention='pallas_tpu' does not run"):
        attention("h100", "pallas_tpu")
