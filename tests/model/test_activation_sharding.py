"""Activation sharding: logical axis names to partition specs, no-ops without a mesh, and the FSDP train step
keeping its transformer activations on their examples' devices."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import pytest
from flax.traverse_util import flatten_dict
from jax.sharding import PartitionSpec

from configs import base
from flava_jax.data.pipeline import STREAM_KEYS
from flava_jax.model.activation_sharding import activation_spec, constrain
from flava_jax.train import aot
from flava_jax.train import sharding as sharding_lib
from flava_jax.train.scheduler import MultimodalScheduler
from flava_jax.train.trainer import build, model_config, plan
from tests.configs import debug_config

RULES = {"batch": ("data", "fsdp"), "heads": ("tensor",), "mlp": ("tensor",)}


def test_activation_spec_follows_the_rules() -> None:
    """Examples over data and fsdp (size-1 axes dropped), heads over tensor, other names replicated; an axis that
    does not divide a dimension ends that dimension's axes, and no axis serves two dimensions."""
    configured = base.get_config().sharding.activation_rules
    assert {name: (axes,) if isinstance(axes, str) else tuple(axes) for name, axes in configured} == RULES
    mesh = sharding_lib.make_mesh({"data": 2, "fsdp": 4})
    spec = activation_spec
    assert spec((16, 5, 32), ("batch", "length", "embed"), RULES, mesh) == PartitionSpec(("data", "fsdp"), None, None)
    assert spec((6, 5, 32), ("batch", "length", "embed"), RULES, mesh) == PartitionSpec("data", None, None)
    assert spec((8, 5, 12, 4), ("batch", "length", "heads", "head_dim"), RULES, mesh) == PartitionSpec(
        ("data", "fsdp"), None, None, None)
    tensor = sharding_lib.make_mesh({"data": 2, "tensor": 4})
    assert spec((8, 5, 12, 4), ("batch", "length", "heads", "head_dim"), RULES, tensor) == PartitionSpec(
        "data", None, "tensor", None)
    assert spec((8, 5, 37), ("batch", "length", "mlp"), RULES, tensor) == PartitionSpec("data", None, None)
    assert spec((8, 8), ("batch", "batch"), RULES, mesh) == PartitionSpec(("data", "fsdp"), None)
    with pytest.raises(ValueError, match="2 axis names"):
        spec((8, 5, 32), ("batch", "length"), RULES, mesh)
    with pytest.raises(sharding_lib.ShardingError, match="'batch' names axes \\['model'\\]"):
        sharding_lib.shard_activations(lambda: None, mesh, [("batch", "model")])


def test_constraints_are_no_ops_without_a_mesh() -> None:
    """Outside `shard_activations` (a plain `model.apply`), and on one device, `constrain` returns its input."""
    x = jnp.ones((8, 3))
    assert constrain(x, "batch", "embed") is x
    one = sharding_lib.make_mesh({"data": 1}, jax.devices()[:1])
    assert sharding_lib.shard_activations(lambda y: constrain(y, "batch", "embed"), one, RULES.items())(x) is x
    eight = sharding_lib.make_mesh({"data": 8})
    jitted = jax.jit(sharding_lib.shard_activations(lambda y: constrain(y, "batch", "embed") * 2, eight,
                                                     RULES.items()))
    assert "sharding" in jitted.lower(x).as_text()
    assert constrain(x, "batch", "embed") is x  # the rules do not outlive the trace


@pytest.mark.slow
@pytest.mark.parametrize("gather", ["micro_step", "step"])
def test_fsdp_step_gathers_only_weights_in_transformer_layers(gather: str) -> None:
    """The trainer's FSDP step on 8 devices (the tiny model, every weight sharded): inside the encoder layers every
    all-gather is of a weight (with weights gathered at every micro-step; gathered once a step, the layers hold
    none). Without activation constraints XLA gathers every example's tokens there instead, or replicates the batch
    to re-split attention heads over fsdp ("Involuntary full rematerialization")."""
    config = aot.mesh_config(debug_config(sharding__fsdp_min_size=256, sharding__gather_weights=gather), "fsdp",
                             jax.device_count())
    mesh = sharding_lib.make_mesh(config.sharding.mesh)
    run, parts = plan(config, list(STREAM_KEYS), mesh), build(config, model_config(config), mesh)
    weights = jax.tree.map(jnp.float32, MultimodalScheduler.from_config(run.weights, config.scheduler).weights())
    hlo = parts.train_step.lower(parts.abstract_state, aot.batch_spec(config, run, parts.batch_sharding), weights,
                                 jax.random.key(0)).compile().as_text()

    layer_shapes = {tuple(leaf.shape) for keys, leaf in flatten_dict(parts.abstract_state.params).items()
                    if "layer" in keys}
    gathers = re.findall(r"= \w+\[([\d,]*)\]\S* all-gather\(.*op_name=\"([^\"]*/encoder/layer/[^\"]*)\"", hlo)
    if gather == "micro_step":
        assert gathers, "no weight all-gather in the layers: is FSDP on?"
    activations = [(shape, op) for shape, op in gathers
                   if tuple(int(d) for d in shape.split(",") if d) not in layer_shapes]
    assert not activations, activations[:5]
