"""The HLO roofline on hand-written programs (values computed by hand), and on a bare product compiled for a TPU
against libtpu's own estimate."""

from __future__ import annotations

import math

import pytest

from flava_jax.train import chips
from flava_jax.train.roofline import Roofline, array_bytes, group_size, parse_module, trip_count, valid_taps

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
    assert trip_count(loop, computations, computations["main"]) == 7
    known = loop.__class__(**{**loop.__dict__, "attributes": loop.attributes +
                              ', backend_config={"known_trip_count":{"n":"57"}}'})
    assert trip_count(known, computations, computations["main"]) == 57


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
    assert cost.collective_bytes == 7 * 128 * 32 * 2 / 2  # each step, the other device's half of the gather
    # Every op here is bound by its bytes at 1 TFLOP/s against 1 GB/s.
    assert cost.flops_bound_seconds == 0
    assert math.isclose(cost.seconds, cost.bytes / bandwidth)
    # At 1 GFLOP/s against 1 TB/s the product and the dot are bound by FLOPs instead.
    flops_bound = Roofline(PROGRAM, 1e9, 1e12).total()
    assert math.isclose(flops_bound.flops_bound_seconds, (7 * product + dot) / 1e9)


# What a TPU program adds: a counter stepped by 2 from 2 to 8 (3 trips), a row read out of a buffer (by a nested
# fusion) and written back in place, a product XLA writes as a size-2 window half in padding (collective matmuls
# do), an operand already in on-chip memory (layout S(1)), an asynchronous prefetch and slice into on-chip memory,
# a buffer reservation, and an all-gather fused to overlap compute (its DMA traffic is collective bytes).
PAIR = "window={size=2 pad=1_1 rhs_reversal=1}, dim_labels=bf0_i0o->b0f"
STATE = "(s32[], f32[8,1024]{1,0}, bf16[256,128]{1,0:T(8,128)(2,1)S(1)}, bf16[128,2,64]{0,2,1})"
TPU_PROGRAM = f"""HloModule jit_windowed, entry_computation_layout={{(f32[8,1024]{{1,0}})->f32[8,1024]{{1,0}}}}

%inner_slice (inner_0: f32[8,1024], inner_1: s32[]) -> f32[1,1024] {{
  %inner_0 = f32[8,1024]{{1,0}} parameter(0)
  %inner_1 = s32[] parameter(1)
  %zero = s32[] constant(0)
  ROOT %ds = f32[1,1024]{{1,0}} dynamic-slice(%inner_0, %inner_1, %zero), dynamic_slice_sizes={{1,1024}}
}}

%fused_slice (param_0: f32[8,1024], param_1: s32[]) -> f32[1,1024] {{
  %param_0 = f32[8,1024]{{1,0}} parameter(0)
  %param_1 = s32[] parameter(1)
  %nested = f32[1,1024]{{1,0}} fusion(%param_0, %param_1), kind=kLoop, calls=%inner_slice
  ROOT %negated = f32[1,1024]{{1,0}} negate(%nested)
}}

%fused_gather (shard: bf16[16,128]) -> (bf16[128,128], bf16[16,128]) {{
  %shard = bf16[16,128]{{1,0}} parameter(0)
  %gathered = bf16[128,128]{{1,0}} all-gather(%shard), replica_groups={{{{0,1,2,3,4,5,6,7}}}}, dimensions={{0}}
  ROOT %both = (bf16[128,128]{{1,0}}, bf16[16,128]{{1,0}}) tuple(%gathered, %shard)
}}

%fused_update (param_0.1: f32[8,1024], param_1.1: f32[1,1024], param_2: s32[]) -> f32[8,1024] {{
  %param_0.1 = f32[8,1024]{{1,0}} parameter(0)
  %param_1.1 = f32[1,1024]{{1,0}} parameter(1)
  %param_2 = s32[] parameter(2)
  %zero.1 = s32[] constant(0)
  %doubled = f32[1,1024]{{1,0}} add(%param_1.1, %param_1.1)
  ROOT %dus = f32[8,1024]{{1,0}} dynamic-update-slice(%param_0.1, %doubled, %param_2, %zero.1)
}}

%fused_pair (param_0.2: bf16[256,128], param_1.2: bf16[128,2,64]) -> f32[256,2,64] {{
  %param_0.2 = bf16[256,128]{{1,0:T(8,128)(2,1)S(1)}} parameter(0)
  %lhs = bf16[256,128,1]{{1,0,2}} bitcast(%param_0.2)
  %param_1.2 = bf16[128,2,64]{{0,2,1}} parameter(1)
  ROOT %convolution.2 = f32[256,2,64]{{0,2,1}} convolution(%lhs, %param_1.2), {PAIR}
}}

%body.1 (state.2: {STATE}) -> {STATE} {{
  %state.2 = {STATE} parameter(0)
  %k = s32[] get-tuple-element(%state.2), index=0
  %buffer = f32[8,1024]{{1,0}} get-tuple-element(%state.2), index=1
  %x.1 = bf16[256,128]{{1,0:T(8,128)(2,1)S(1)}} get-tuple-element(%state.2), index=2
  %w.1 = bf16[128,2,64]{{0,2,1}} get-tuple-element(%state.2), index=3
  %row = f32[1,1024]{{1,0}} fusion(%buffer, %k), kind=kLoop, calls=%fused_slice
  %updated = f32[8,1024]{{1,0}} fusion(%buffer, %row, %k), kind=kLoop, calls=%fused_update
  %pair = f32[256,2,64]{{0,2,1}} fusion(%x.1, %w.1), kind=kOutput, calls=%fused_pair
  %two = s32[] constant(2)
  %next.1 = s32[] add(%k, %two)
  ROOT %out.1 = {STATE} tuple(%next.1, %updated, %x.1, %w.1)
}}

%condition.1 (state.3: {STATE}) -> pred[] {{
  %state.3 = {STATE} parameter(0)
  %limit.1 = s32[] constant(8)
  %counter.1 = s32[] get-tuple-element(%state.3), index=0
  ROOT %lt.1 = pred[] compare(%counter.1, %limit.1), direction=LT
}}

ENTRY %main.1 (p: f32[8,1024], x: bf16[256,128], w: bf16[128,2,64], b: f32[64,1024], g: bf16[16,128]) -> f32[8,1024] {{
  %p.1 = f32[8,1024]{{1,0}} parameter(0)
  %x.2 = bf16[256,128]{{1,0}} parameter(1)
  %w.2 = bf16[128,2,64]{{0,2,1}} parameter(2)
  %b = f32[64,1024]{{1,0}} parameter(3)
  %start = s32[] constant(2)
  %prefetch = (bf16[256,128]{{1,0:T(8,128)(2,1)S(1)}}, bf16[256,128]{{1,0}}, u32[]{{:S(2)}}) copy-start(%x.2)
  %x.3 = bf16[256,128]{{1,0:T(8,128)(2,1)S(1)}} copy-done(%prefetch)
  %init.1 = {STATE} tuple(%start, %p.1, %x.3, %w.2)
  %loop.1 = {STATE} while(%init.1), condition=%condition.1, body=%body.1
  %scratch = f32[64,1024]{{1,0}} custom-call(), custom_call_target="AllocateBuffer"
  %window = ((f32[64,1024]{{1,0}}), f32[16,1024]{{1,0:S(1)}}, s32[]{{:S(2)}}) slice-start(%b)
  %rows = f32[16,1024]{{1,0:S(1)}} slice-done(%window)
  %g.1 = bf16[16,128]{{1,0}} parameter(4)
  %collective = (bf16[128,128]{{1,0}}, bf16[16,128]{{1,0}}) fusion(%g.1), kind=kOutput, calls=%fused_gather
  ROOT %result = f32[8,1024]{{1,0}} get-tuple-element(%loop.1), index=1
}}
"""


def test_tpu_program_by_hand() -> None:
    computations, entry = parse_module(TPU_PROGRAM)
    loop = next(i for i in computations[entry] if i.opcode == "while")
    assert trip_count(loop, computations, computations[entry]) == 3  # 2, 4, 6
    cost = Roofline(TPU_PROGRAM, 1e12, 1e9).total()
    pair_flops = 2 * (256 * 2 * 64) * 128 * 1  # one real tap of the two per output position
    assert cost.flops == 3 * pair_flops
    row = 1024 * 4 + 4 + 1024 * 4  # the row read out of the buffer, the index, the row written
    update = 1024 * 4 + 4 + 1024 * 4  # the row read, the index, the row written into the buffer in place
    pair = 128 * 2 * 64 * 2 + 256 * 2 * 64 * 4  # the kernel and the result; the S(1) operand costs nothing
    counter = 3 * 4
    prefetch = 256 * 128 * 2  # read from HBM into on-chip memory
    window = 16 * 1024 * 4  # the slice read; written on chip
    assert cost.bytes == 3 * (row + update + pair + counter) + prefetch + window
    assert cost.collective_bytes == 7 * 16 * 128 * 2  # the 7 other devices' shards


# A Pallas kernel as XLA prints its custom call (backend config cut to the fields the roofline reads), and a
# custom call without a cost estimate.
KERNEL = """HloModule jit_kernel, entry_computation_layout={(bf16[8,512,64]{2,1,0})->bf16[8,512,64]{2,1,0}}

ENTRY %main (q: bf16[8,512,64], k: bf16[8,512,64:S(1)]) -> bf16[8,512,64] {
  %q = bf16[8,512,64]{2,1,0} parameter(0)
  %k = bf16[8,512,64]{2,1,0:S(1)} parameter(1)
  %attention = bf16[8,512,64]{2,1,0} custom-call(%q, %k), custom_call_target="tpu_custom_call", backend_config={"custom_call_config": {"body": "TUzvUgFNTElS", "cost_estimate":{"flops":"1073741824","transcendentals":"2097152","bytes_accessed":"1572864"},"needs_layout_passes":true}}
  ROOT %other = bf16[8,512,64]{2,1,0} custom-call(%attention), custom_call_target="SomethingOpaque"
}
"""  # noqa: E501 (XLA's lines, whole)


def test_kernel_flops_from_its_cost_estimate() -> None:
    """A Pallas call costs the FLOPs its cost estimate states and the HBM bytes of its operands and result (the
    on-chip operand nothing); a custom call without an estimate costs its bytes only. `ops` lists both."""
    cost = Roofline(KERNEL, 1e12, 1e9).total()
    array = 8 * 512 * 64 * 2
    assert cost.flops == 1073741824
    assert cost.bytes == (array + array) + (array + array)
    assert cost.seconds == pytest.approx(max(1073741824 / 1e12, 2 * array / 1e9) + 2 * array / 1e9)
    assert [(i.name, times) for i, _, times in Roofline(KERNEL, 1e12, 1e9).ops()] == [("attention", 1),
                                                                                       ("other", 1)]


# Collectives as TPU programs print them, each with what one device receives over a ring of its group, by hand.
COLLECTIVES = """HloModule jit_collectives, entry_computation_layout={(f32[64,32]{1,0})->f32[64,32]{1,0}}

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %sum = f32[] add(%a, %b)
}

%all-reduce-scatter.1 (input: f32[512,32]) -> f32[64,32] {
  %input = f32[512,32]{1,0:T(8,128)S(1)} parameter(0)
  %all-reduce.1 = f32[512,32]{1,0:T(8,128)} all-reduce(%input), channel_id=1, replica_groups={{0,1,2,3,4,5,6,7}}, to_apply=%add
  %partition-id = u32[] partition-id()
  %rows = u32[] constant(64)
  %offset = u32[] multiply(%partition-id, %rows)
  %zero = u32[] constant(0)
  ROOT %slice = f32[64,32]{1,0:T(8,128)S(1)} dynamic-slice(%all-reduce.1, %offset, %zero), dynamic_slice_sizes={64,32}
}

%async_collective_fusion.1 (piece: bf16[4,8,32]) -> bf16[32,8,32] {
  %piece = bf16[4,8,32]{2,1,0} parameter(0)
  ROOT %all-gather.1 = bf16[32,8,32]{2,1,0:T(4,128)} all-gather(%piece), channel_id=8, replica_groups={{0,1,2,3,4,5,6,7}}, dimensions={0}, backend_config={"async_collective_fusion_config":{"flag_start":"-1","flag_end":"-1"}}
}

%async_collective_fusion.2 (piece: bf16[4,8,32]) -> bf16[32,8,32] {
  %piece.1 = bf16[4,8,32]{2,1,0} parameter(0)
  ROOT %all-gather.2 = bf16[32,8,32]{2,1,0:T(4,128)} all-gather(%piece.1), channel_id=8, replica_groups={{0,1,2,3,4,5,6,7}}, dimensions={0}, backend_config={"async_collective_fusion_config":{"flag_start":"2","flag_end":"8"}}
}

ENTRY %main (p: f32[64,32], q: f32[512,32], w: bf16[4,8,32]) -> f32[64,32] {
  %p = f32[64,32]{1,0} parameter(0)
  %q = f32[512,32]{1,0} parameter(1)
  %w = bf16[4,8,32]{2,1,0} parameter(2)
  %gathered = bf16[32,8,32]{2,1,0:T(4,128)} all-gather(%w), channel_id=2, replica_groups=mesh['axis_0'=2,'axis_1'=8] {'axis_1'}, dimensions={0}
  %regathered = bf16[32,8,32]{2,1,0:T(4,128)} all-gather(%w), channel_id=2, replica_groups=mesh['axis_0'=2,'axis_1'=8] {'axis_1'}, dimensions={0}
  %unsplit = bf16[4,8,32]{2,1,0} all-gather(%w), channel_id=3, replica_groups=mesh['axis_0'=1,'axis_1'=8] {'axis_0'}, dimensions={0}
  %summed = (f32[64,32]{1,0}, f32[512,32]{1,0}) all-reduce(%p, %q), channel_id=4, replica_groups=mesh['axis_0'=2,'axis_1'=8] {'axis_0','axis_1'}, to_apply=%add
  %scattered = f32[16,32]{1,0} reduce-scatter(%p), channel_id=5, replica_groups=[4,4]<=[16], dimensions={0}, to_apply=%add
  %shifted = (f32[64,32]{1,0}, f32[64,32]{1,0:S(1)}, u32[]{:S(2)}, u32[]{:S(2)}) collective-permute-start(%p), channel_id=6, source_target_pairs={{0,1},{1,0}}
  %shifted.1 = f32[64,32]{1,0:S(1)} collective-permute-done(%shifted)
  %async = ((bf16[4,8,32]{2,1,0}), (bf16[32,8,32]{2,1,0})) all-gather-start(%w), channel_id=7, replica_groups={{0,1,2,3,4,5,6,7}}, dimensions={0}
  %async.1 = bf16[32,8,32]{2,1,0} all-gather-done(%async)
  %fused = f32[64,32]{1,0} fusion(%q), kind=kCustom, calls=%all-reduce-scatter.1
  %chain.1 = bf16[32,8,32]{2,1,0} fusion(%w), kind=kCustom, calls=%async_collective_fusion.1
  %chain.2 = bf16[32,8,32]{2,1,0} fusion(%w), kind=kCustom, calls=%async_collective_fusion.2
  ROOT %out = f32[64,32]{1,0} add(%p, %shifted.1)
}
"""  # noqa: E501 (XLA's lines, whole)


def test_collectives_by_hand() -> None:
    assert group_size("replica_groups=mesh['axis_0'=2,'axis_1'=8] {'axis_0','axis_1'}, to_apply=%add") == 16
    assert group_size("replica_groups=[4,4]<=[16], dimensions={0}") == 4
    assert group_size("replica_groups={{0,1,2}}, dimensions={0}") == 3
    assert group_size("dimensions={0}") is None
    gathered = 7 / 8 * 32 * 8 * 32 * 2  # the 7 other shards of the gather over axis_1's 8 devices
    unsplit = 0  # a group of one device receives nothing
    summed = 2 * 15 / 16 * (64 * 32 + 512 * 32) * 4  # reduce-scatter and all-gather of both arrays over 16
    scattered = 3 * 16 * 32 * 4  # 3 other devices' partial sums of this device's 16 rows
    shifted = 64 * 32 * 4  # the neighbour's array, once
    asynchronous = 7 / 8 * 32 * 8 * 32 * 2  # as the synchronous gather, from the start's result half
    fused = 7 / 8 * 512 * 32 * 4  # the all-reduce a TPU fusion slices at once: a reduce-scatter's traffic
    regathered = gathered  # a whole collective that reuses another's channel id (XLA's clones do) is another one
    chain = 7 / 8 * 32 * 8 * 32 * 2  # one gather split over two fusions (one channel): once, not twice
    cost = Roofline(COLLECTIVES, 1e12, 1e9).total()
    assert cost.collective_bytes == pytest.approx(gathered + unsplit + summed + scattered + shifted + asynchronous
                                                  + fused + regathered + chain, rel=1e-12)


def test_valid_taps_by_hand() -> None:
    assert valid_taps(1, 2, 2, low=1) == 2  # two products side by side, each output one real tap
    assert valid_taps(224, 224, 3, low=1) == 224 * 3 - 2  # "same" 3-tap convolution: the edges lose one tap
    assert valid_taps(224, 112, 3, stride=2, low=1) == 111 + 112 + 112
    assert valid_taps(224, 14, 16, stride=16) == 224  # 16x16 patches
    assert valid_taps(3, 5, 1, lhs_dilate=2) == 3  # a dilated input: the holes are not input

def test_chip_table() -> None:
    assert chips.chip("TPU v5 lite").bf16_tflops == 197 and chips.chip("TPU v5 lite").memory_gbps == 819
    assert chips.chip("TPU v5 lite").ici_receive == 200e9 and chips.chip("TPU v4").ici_receive is None
    assert chips.chip("TPU v5").kind == "TPU v5" and chips.chip("TPU v4").memory_gib == 32
    assert chips.chip("NVIDIA A100-SXM4-80GB").memory_gib == 80
    assert chips.chip("cpu") is None
    assert all(c.source.startswith("https://") for c in chips.CHIPS)


def test_step_time_takes_the_collectives_where_they_are_longer() -> None:
    from flava_jax.train.aot import collective_seconds, step_seconds

    v5e = chips.chip("TPU v5 lite")  # 400 GB/s both ways over its links: 200 GB/s in
    assert collective_seconds(5e11, v5e) == 2.5
    assert collective_seconds(5e11, chips.chip("TPU v4")) is None
    assert step_seconds(1.5, 2.5) == 2.5 and step_seconds(3.0, 2.5) == 3.0 and step_seconds(1.5, None) == 1.5
    assert step_seconds(None, 2.5) is None


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


@pytest.mark.usefixtures("libtpu")
def test_training_mlp_against_libtpu_estimate() -> None:
    """Forward and backward of an unrolled 8-layer bf16 MLP on one v5e chip (fusions, transposed products,
    element-wise backward): FLOPs are the 8 forward and 15 backward products, and the roofline time is within 20%
    of libtpu's estimate, which is sound here (it comes out near -1 s once the layers run in a lax.scan)."""
    import jax
    import jax.numpy as jnp

    from flava_jax.train.aot import topology_devices
    from flava_jax.train.roofline import cost_summary

    device = topology_devices("v5e:2x2")[0]
    sharding = jax.sharding.SingleDeviceSharding(device)
    x = jax.ShapeDtypeStruct((4096, 4096), jnp.bfloat16, sharding=sharding)
    w = jax.ShapeDtypeStruct((8, 4096, 4096), jnp.bfloat16, sharding=sharding)

    def loss(w: jax.Array, x: jax.Array) -> jax.Array:
        for layer in range(8):
            x = jnp.tanh(x @ w[layer])
        return x.astype(jnp.float32).sum()

    compiled = jax.jit(jax.grad(loss)).lower(w, x).compile()
    v5e = chips.chip(device.device_kind)
    cost = Roofline(compiled.as_text(), v5e.peak_flops, v5e.bandwidth).total()
    product = 2 * 4096**3
    assert cost.flops == (8 + 8 + 7) * product  # forward; each weight gradient; input gradients of layers 1..7
    estimate = cost_summary(compiled.cost_analysis())["optimal_seconds"]
    assert 0.8 < cost.seconds / estimate < 1.2
