"""The real train step compiled for TPU slices by libtpu, without the chips (as MaxText's train_compile does): it
lowers, it fits, FSDP gathers and scatters as it should, nothing runs on the host, and the compiled FLOPs agree
with the model's own count. CI installs libtpu; elsewhere these skip, saying how to install it."""

from __future__ import annotations

import re

import jax
import pytest
from flax.traverse_util import flatten_dict

from flava_jax.model.flava import FlavaForPreTraining
from flava_jax.train import aot
from flava_jax.train.roofline import Roofline, dims_of, instructions
from flava_jax.train.trainer import model_config
from tests.configs import debug_config
from tests.conftest import CPU_HEAVY
from tests.train.compiled import collectives

# One xdist worker runs them all (with the suite's other heavy tests), so the compiles they share (_compile's cache)
# are made once.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("libtpu"), pytest.mark.xdist_group(CPU_HEAVY)]

_COMPILED: dict[tuple[str, str, str], tuple] = {}


def _compile(topology: str, mesh: str, **overrides):
    """(report, optimized HLO, HBM per chip) of the debug step with `overrides`, compiled once per test run for each
    resulting config (overrides that restate a default share the default's compile)."""
    # A low FSDP threshold shards the tiny model's weights, so its FSDP program holds real gathers and scatters.
    config = debug_config(sharding__fsdp_min_size=256, **overrides)
    key = (topology, mesh, config.to_json_best_effort(sort_keys=True))
    if key not in _COMPILED:
        devices = aot.topology_devices(topology)
        report, compiled = aot.compile_step(config, mesh, devices)
        _COMPILED[key] = report, compiled.as_text(), aot.device_memory(devices[0])[0]
    return _COMPILED[key]


# 4 micro-steps on 4 chips: the step test_fsdp_gathers_weights_at_every_micro_step_or_once_a_step compares.
_BATCH = 48


# Data before FSDP on each slice: the FSDP test compares its collectives with the data-parallel program's (compiled
# once, in _COMPILED).
@pytest.mark.parametrize("topology, mesh", [("v5e:2x2", "data"), ("v5e:2x2", "fsdp"), ("v4:2x2x1", "data"),
                                            ("v4:2x2x1", "fsdp")])
def test_debug_step_compiles_for_tpu(topology: str, mesh: str) -> None:
    """Both meshes lower and fit. Data parallel all-reduces gradients and gathers only the contrastive loss's
    embeddings; FSDP scatters gradients and gathers weights, many times the bytes."""
    report, hlo, capacity = _compile(topology, mesh, train__batch_size=_BATCH)
    assert 0 < report.total < capacity
    found = collectives(hlo)
    if mesh == "data":
        assert found["reduces"] > 0 and found["scatters"] == 0
    else:
        data = collectives(_compile(topology, "data", train__batch_size=_BATCH)[1])
        assert found["scatters"] > 0 and found["gathered"] > 10 * data["gathered"], (data, found)


def test_compiled_flops_match_the_model_count() -> None:
    """A 256-wide FLAVA over 5 micro-steps on v5e, its attention in the Pallas kernel (each chip's examples by
    shard_map): the HLO's products, loop counted 5 times, and the kernels' stated FLOPs are within 3% of metrics.py's
    analytic count; XLA's own total counts the loop body once."""
    overrides = {f"model__{encoder}__{key}": value for encoder in ("text_config", "image_config", "multimodal_config")
                 for key, value in (("hidden_size", 256), ("intermediate_size", 1024), ("num_attention_heads", 4))}
    report, hlo, _ = _compile("v5e:2x2", "fsdp", model__hidden_size=256, train__batch_size=64,
                              model__attention="pallas_tpu", **overrides)
    kernels = [i for i in instructions(hlo) if 'custom_call_target="tpu_custom_call"' in i.attributes]
    assert kernels and len(kernels) % 2 == 0, [i.name for i in kernels]  # a forward and a backward per layer
    assert report.micro_steps == 5
    assert 0.97 < report.compiled_flops / report.model_flops < 1.03
    assert report.compiled_flops > 4 * report.xla_costs["flops"]
    assert report.roofline_seconds > 0 and report.collective_seconds > 0 and 0 < report.mfu < 1


def test_fsdp_gathers_weights_at_every_micro_step_or_once_a_step() -> None:
    """sharding.gather_weights: "micro_step" gathers each weight inside the accumulation loop (once per micro-step),
    "step" once before it: over 4 micro-steps, under a third of the weight bytes gathered, and fewer collective
    bytes in all (the gradients' reductions are the same in both)."""
    config = debug_config(train__batch_size=_BATCH)
    assert config.sharding.gather_weights == "step"  # the default, compiled by test_debug_step_compiles_for_tpu
    params = jax.eval_shape(FlavaForPreTraining(model_config(config)).init_params, jax.random.key(0))
    weights = {tuple(leaf.shape) for leaf in flatten_dict(params).values()}
    runs, gathered, received = {}, {}, {}
    for mode in ("micro_step", "step"):
        report, hlo, _ = _compile("v5e:2x2", "fsdp", train__batch_size=_BATCH, sharding__gather_weights=mode)
        assert report.micro_steps == 4
        ops = [(cost, times) for op, cost, times in Roofline(hlo, 1.0, 1.0).ops() if op.opcode.startswith("all-gather")
               and tuple(dims_of(re.findall(r"\[([\d,]*)\]", op.shape)[-1])) in weights]
        runs[mode] = {times for _, times in ops}
        gathered[mode] = sum(cost.collective_bytes * times for cost, times in ops)
        received[mode] = report.collective_bytes
    assert runs == {"micro_step": {4}, "step": {1}}, runs
    assert 0 < 3 * gathered["step"] < gathered["micro_step"], gathered
    assert received["step"] < received["micro_step"] - 2 * gathered["step"], received
