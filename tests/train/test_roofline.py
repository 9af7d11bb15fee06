"""The HLO roofline on hand-written programs (values computed by hand), and on a bare product compiled for a TPU
against libtpu's own estimate."""

from __future__ import annotations

import math

import pytest

from flava_jax.train import chips
from flava_jax.train.roofline import Roofline, array_bytes, parse_module, trip_count

# A scan of 7 steps whose body holds a fused 64x128 @ 128x32 product and an all-gather; the entry adds a plain
# dot (16x8 @ 8x4) and a copy. Layouts and metadata as XLA prints them.
PROGRAM = """HloModule jit_step, entry_computation_layout={(f32[64,128]{1,0})->f32[64,32]{1,0}}

%fused_product (param_0: bf16[64,128], param_1: bf16[128,32]) -> f32[64,32] {
  %param_0 = bf16[64,128]{1,0:T(8,128)(2,1)} parameter(0)
  %param_1 = bf16[128,32]{1,0:T(8,128)(2,1)} parameter(1)
  ROOT %convolution.1 = f32[64,32]{1,0:T(8,128)} convolution(%param_0, %param_1), dim_labels=bf_io->bf
}

%body (state: (s32[], bf16[64,128], bf16[128,32], f32[64,32])) -> (s32[], bf16[64,128], bf16[128,32], f32[64,32]) {
  %state = (s32[]{:T(128)}, bf16[64,128]{1,0}, /*index=2*/bf16[128,32]{1,0}, f32[64,32]{1,0}) parameter(0)
  %i = s32[]{:T(128)} get-tuple-element(%state), index=0
  %x = bf16[64,128]{1,0} get-tuple-element(%state), index=1
  %w = bf16[128,32]{1,0} get-tuple-element(%state), index=2
  %gathered = bf16[128,32]{1,0} all-gather(%w), replica_groups={{0,1}}, dimensions={0}
  %fusion.3 = f32[64,32]{1,0} fusion(%x, %gathered), kind=kOutput, calls=%fused_product
  %one = s32[] constant(1)
  %next = s32[] add(%i, %one)
  ROOT %out = (s32[], bf16[64,128]{1,0}, bf16[128,32]{1,0}, f32[64,32]{1,0}) tuple(%next, %x, %w, %fusion.3)
}

%condition (state.1: (s32[], bf16[64,128], bf16[128,32], f32[64,32])) -> pred[] {
  %state.1 = (s32[], bf16[64,128], bf16[128,32], f32[64,32]) parameter(0)
  %limit = s32[]{:T(128)} constant(7)
  %counter = s32[] get-tuple-element(%state.1), index=0
  ROOT %lt = pred[] compare(%counter, %limit), direction=LT
}

ENTRY %main (p0: bf16[64,128], p1: bf16[128,32], p2: f32[16,8], p3: f32[8,4]) -> f32[16,4] {
  %p0 = bf16[64,128]{1,0} parameter(0)
  %p1 = bf16[128,32]{1,0} parameter(1)
  %p2 = f32[16,8]{1,0} parameter(2)
  %p3 = f32[8,4]{1,0} parameter(3)
  %zero = s32[] constant(0)
  %acc = f32[64,32]{1,0} broadcast(%zero), dimensions={}
  %init = (s32[], bf16[64,128]{1,0}, bf16[128,32]{1,0}, f32[64,32]{1,0}) tuple(%zero, %p0, %p1, %acc)
  %loop = (s32[], bf16[64,128]{1,0}, bf16[128,32]{1,0}, f32[64,32]{1,0}) while(%init), condition=%condition, body=%body
  %copy.2 = f32[8,4]{0,1} copy(%p3)
  ROOT %dot.9 = f32[16,4]{1,0} dot(%p2, %copy.2), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}
"""


def test_parse_and_sizes() -> None:
    computations, entry = parse_module(PROGRAM)
    assert entry == "main" and set(computations) == {"fused_product", "body", "condition", "main"}
    state = computations["body"][0]
    assert state.opcode == "parameter" and state.shape.startswith("(s32[]")
    assert array_bytes(state.shape) == 4 + 64 * 128 * 2 + 128 * 32 * 2 + 64 * 32 * 4
    loop = next(i for i in computations["main"] if i.opcode == "while")
    assert trip_count(loop, computations["condition"]) == 7
    known = loop.__class__(**{**loop.__dict__, "attributes": loop.attributes +
                              ', backend_config={"known_trip_count":{"n":"57"}}'})
    assert trip_count(known, computations["condition"]) == 57


def test_costs_by_hand() -> None:
    peak, bandwidth = 1e12, 1e9
    cost = Roofline(PROGRAM, peak, bandwidth).total()
    product = 2 * 64 * 32 * 128  # per loop step
    dot = 2 * 16 * 4 * 8
    assert cost.flops == 7 * product + dot
    fusion_bytes = 64 * 128 * 2 + 128 * 32 * 2 + 64 * 32 * 4  # its operands and result
    add_bytes = 3 * 4  # s32 add: two operands, one result
    broadcast_bytes = 64 * 32 * 4 + 4
    copy_bytes = 2 * 8 * 4 * 4
    dot_bytes = (16 * 8 + 8 * 4 + 16 * 4) * 4
    compare = 0  # the condition is not costed
    assert cost.bytes == 7 * (fusion_bytes + add_bytes) + broadcast_bytes + copy_bytes + dot_bytes + compare
    assert cost.collective_bytes == 7 * 128 * 32 * 2
    # Every op here is bound by its bytes at 1 TFLOP/s against 1 GB/s.
    assert cost.flops_bound_seconds == 0
    assert math.isclose(cost.seconds, cost.bytes / bandwidth)
    # At 1 GFLOP/s against 1 TB/s the product and the dot are bound by FLOPs instead.
    flops_bound = Roofline(PROGRAM, 1e9, 1e12).total()
    assert math.isclose(flops_bound.flops_bound_seconds, (7 * product + dot) / 1e9)


def test_chip_table() -> None:
    assert chips.chip("TPU v5 lite").bf16_tflops == 197 and chips.chip("TPU v5 lite").memory_gbps == 819
    assert chips.chip("TPU v5").kind == "TPU v5" and chips.chip("TPU v4").memory_gib == 32
    assert chips.chip("NVIDIA A100-SXM4-80GB").memory_gib == 80
    assert chips.chip("cpu") is None
    assert all(c.source.startswith("https://") for c in chips.CHIPS)


@pytest.mark.usefixtures("libtpu")
def test_bare_product_against_libtpu_estimate() -> None:
    """A bf16 8192x4096 @ 4096x4096 product on one v5e chip: FLOPs exact, and the roofline time within 20% of
    libtpu's own cost model, which is sound for a single product."""
    import jax
    import jax.numpy as jnp

    from flava_jax.train.aot import topology_devices
    from flava_jax.train.roofline import cost_summary

    device = topology_devices("v5e:2x2")[0]
    sharding = jax.sharding.SingleDeviceSharding(device)
    a = jax.ShapeDtypeStruct((8192, 4096), jnp.bfloat16, sharding=sharding)
    b = jax.ShapeDtypeStruct((4096, 4096), jnp.bfloat16, sharding=sharding)
    compiled = jax.jit(jnp.dot).lower(a, b).compile()
    v5e = chips.chip(device.device_kind)
    cost = Roofline(compiled.as_text(), v5e.peak_flops, v5e.bandwidth).total()
    assert cost.flops == 2 * 8192 * 4096 * 4096
    estimate = cost_summary(compiled.cost_analysis())["optimal_seconds"]
    assert 0.8 < cost.seconds / estimate < 1.2
