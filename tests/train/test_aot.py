"""The AOT memory script: FSDP against data parallel at the full size, batch shapes against the pipeline, the CLI."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import types
from pathlib import Path

import jax
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from flava_jax.common.settings import ConfigError
from flava_jax.data import pipeline
from flava_jax.data.tokenizer import Tokenizer
from flava_jax.model.config import FlavaConfig
from flava_jax.model.flava import FlavaForPreTraining
from flava_jax.train import aot, chips, gpus
from flava_jax.train import sharding as sharding_lib
from flava_jax.train.trainer import plan
from tests.configs import REPO, debug_config, load_config


@pytest.mark.slow
def test_fsdp_divides_parameter_and_optimizer_memory_at_full_size() -> None:
    """The paper's size on 8 devices: data parallel holds every parameter (4 bytes each, counted from the
    unscanned model's init shapes) and Adam's two moments of every trainable one; FSDP holds at least 4x less.
    Scanned layers and one small micro-step keep the compiles short without changing those bytes."""
    config = load_config("10M_4M", model__scan_layers=True, train__batch_size=24, train__micro_batch_size=24)
    data, fsdp = (aot.compile_step(config, mesh, jax.devices())[0] for mesh in ("data", "fsdp"))

    shapes = flatten_dict(jax.eval_shape(FlavaForPreTraining(FlavaConfig.from_preset("full")).init_params,
                                         jax.random.key(0)))
    count = sum(math.prod(x.shape) for x in shapes.values())
    trainable = sum(math.prod(x.shape) for keys, x in shapes.items() if keys[0] != "image_codebook")
    assert count > 300e6  # FLAVA with its DALL-E codebook
    assert data.parameters == 4 * count
    # Adam's mu and nu per trainable parameter; the frozen codebook has none; plus a few int32 step counts.
    assert 0 <= data.optimizer_state - 2 * 4 * trainable < 1024
    assert data.parameters + data.optimizer_state >= 4 * (fsdp.parameters + fsdp.optimizer_state)
    assert fsdp.mesh_shape == {"data": 1, "fsdp": 8, "tensor": 1}

    for report in (data, fsdp):
        assert min(report.arguments, report.outputs, report.aliased, report.temporaries) > 0
        assert report.generated_code >= 0  # XLA:CPU reports 0 here
        # The donated state is an argument and is written back in place.
        assert report.arguments >= report.parameters + report.optimizer_state
        assert report.aliased >= report.parameters + report.optimizer_state
        assert report.total > report.arguments


def test_batch_spec_matches_the_pipeline(debug_data: Path) -> None:
    """The abstract batch the script compiles for has the keys, shapes and dtypes of a real stacked batch."""
    config = debug_config(data__dir=str(debug_data), train__batch_size=48)
    mesh = sharding_lib.make_mesh(config.sharding.mesh)
    run = plan(config, list(pipeline.STREAM_KEYS), mesh)
    assert run.accumulation > 1
    settings = pipeline.PipelineSettings.from_config(config)
    iterator = pipeline.MultitaskIterator(settings, run.micro_batch, Tokenizer.load(debug_data / "tokenizer.model"),
                                          process=(0, 1))
    micro = [next(iterator) for _ in range(run.accumulation)]
    real = {s: {k: (np.stack([m[s][k] for m in micro]).shape, np.stack([m[s][k] for m in micro]).dtype)
                for k in micro[0][s]} for s in micro[0]}
    spec = aot.batch_spec(config, run, sharding_lib.batch_sharding(mesh, leading=1))
    assert {s: {k: (v.shape, np.dtype(v.dtype)) for k, v in batch.items()} for s, batch in spec.items()} == real


def test_batch_spec_of_a_length_bucket_matches_the_pipeline(debug_data: Path) -> None:
    """With length buckets, a step's text-only micro-batches share a bucket's length: `text_length` gives the
    abstract batch of that bucket. The first step whose texts fit a bucket below text_max_length is compared."""
    config = debug_config(data__dir=str(debug_data), train__batch_size=48, data__length_buckets=(16, 32, 48, 64),
                          data__bucket_window=4)
    mesh = sharding_lib.make_mesh(config.sharding.mesh)
    run = plan(config, list(pipeline.STREAM_KEYS), mesh)
    settings = pipeline.PipelineSettings.from_config(config)
    iterator = pipeline.MultitaskIterator(settings, run.micro_batch, Tokenizer.load(debug_data / "tokenizer.model"),
                                          process=(0, 1), group=run.accumulation)
    for _ in range(32):
        micro = [next(iterator)["text"] for _ in range(run.accumulation)]
        real = {k: np.stack([m[k] for m in micro]).shape for k in micro[0]}
        if real["input_ids"][-1] < config.data.text_max_length:
            break
    length = real["input_ids"][-1]
    assert length in (16, 32, 48), real
    spec = aot.batch_spec(config, run, sharding_lib.batch_sharding(mesh, leading=1), text_length=length)["text"]
    assert {k: v.shape for k, v in spec.items()} == real


def test_mesh_choices_and_errors() -> None:
    config = load_config("10M_4M", "model=half")
    assert dict(aot.mesh_config(config, "2x4", 8).sharding.mesh) == {"data": 2, "fsdp": 4, "tensor": 1}
    assert aot.mesh_config(config, "2x4", 8).sharding.fsdp
    assert not aot.mesh_config(config, "data", 8).sharding.fsdp
    assert dict(aot.mesh_config(config, "1x2x4", 8).sharding.mesh) == {"data": 1, "fsdp": 2, "tensor": 4}
    with pytest.raises(ConfigError, match="'model' is not data, fsdp"):
        aot.mesh_config(config, "model", 8)
    # The thesis width, 516, does not split 8 ways: FSDP over 8 devices refuses before compiling anything.
    with pytest.raises(sharding_lib.ShardingError, match="replicated"):
        aot.compile_step(config, "fsdp", jax.devices())
    if importlib.util.find_spec("libtpu") is None:
        with pytest.raises(ConfigError, match="needs libtpu"):
            aot.topology_devices("v5e:2x4")


def test_device_memory_table() -> None:
    class Chip:
        def __init__(self, kind: str) -> None:
            self.device_kind = kind

        def memory_stats(self) -> None:
            return None

    assert aot.device_memory(Chip("TPU v5 lite"))[0] == 16 * 2**30
    assert aot.device_memory(Chip("NVIDIA A100-SXM4-80GB"))[0] == 80 * 2**30
    assert aot.device_memory(Chip("NVIDIA A100-SXM4-40GB"))[0] == 40 * 2**30
    assert aot.device_memory(jax.devices()[0])[0] is None


def test_gpu_targets_and_what_a_card_cannot_run() -> None:
    """--gpu names parse to a card and a count; each card's target config carries its datasheet facts; a step over a
    card's memory, or bf16 on a card without bf16 tensor cores (T4), is one line naming the key to change."""
    assert [(g.name, n) for g, n in map(gpus.parse, ("h100x8", "a100-40gb", "t4x1"))] == [
        ("h100", 8), ("a100-40gb", 1), ("t4", 1)]
    for bad in ("h100x0", "v100x8", "h100x"):
        with pytest.raises(ConfigError, match="--gpu="):
            gpus.parse(bad)
    h100 = gpus.parse("h100")[0].target_config()
    assert "core_count: 132" in h100 and "memory_bandwidth: 3350000000000" in h100 and "major: 9" in h100
    assert "major: 7 minor: 5" in gpus.parse("t4")[0].target_config()
    assert {g.chip.kind for g in gpus.GPUS} == {"H100", "A100-SXM4-80GB", "A100", "L4", "T4"}
    assert chips.chip("NVIDIA L40S").kind == "L40S"  # not the L4's row

    config = load_config("10M_4M")
    report = types.SimpleNamespace(mesh="data", total=20 * 2**30)
    assert aot.warnings(config, [report], "Tesla T4", 16 * 2**30) == [
        "[data] needs 20.00 GiB per device of 16.00 GiB: lower config.train.micro_batch_size (or shard more: "
        "--meshes=fsdp, config.model.remat_policy)",
        "t4: no bf16 tensor cores (compute capability (7, 5)), so config.model.dtype='bfloat16' runs its products on "
        "the FP32 units (8.1 TFLOPS, the rate MFU is projected at); config.model.dtype='float32' keeps the speed "
        "with f32 numerics"]
    assert aot.warnings(config, [report], "NVIDIA H100 80GB HBM3", 80 * 2**30) == []
    # MFU's peak: dense bf16 (H100 SXM: 989 TFLOPS), or the FP32 rate where there are no bf16 tensor cores
    assert (aot.peak_flops("NVIDIA H100 80GB HBM3"), aot.peak_flops("Tesla T4")) == (989e12, 8.1e12)


@pytest.mark.slow
def test_cli_fakes_devices_and_writes_json(tmp_path: Path) -> None:
    """The script on the tiny config: 4 faked devices (overriding the 8 the test environment asks for), a table
    on stdout, the same figures in JSON."""
    out = tmp_path / "memory.json"
    result = subprocess.run(
        [sys.executable, "-m", "flava_jax.aot", "--config=configs/debug.py", "--devices=4", "--meshes=data,2x2",
         f"--out={out}"], cwd=REPO, capture_output=True, text=True, timeout=600, env=os.environ)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[2x2] lowered in" in result.stderr and "[2x2] lowered and compiled in" in result.stderr
    report = json.loads(out.read_text())
    assert report["devices"] == 4 and report["device_memory"] is None
    assert [m["mesh_shape"] for m in report["meshes"]] == [{"data": 4, "fsdp": 1, "tensor": 1},
                                                           {"data": 2, "fsdp": 2, "tensor": 1}]
    for mesh in report["meshes"]:
        assert mesh["temporaries"] > 0 and mesh["total"] == (mesh["arguments"] + mesh["outputs"] - mesh["aliased"]
                                                             + mesh["temporaries"] + mesh["generated_code"])
    assert "Per-device memory of one train step on 4 x cpu" in result.stdout
    assert "total per device" in result.stdout
