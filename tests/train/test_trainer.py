"""The trainer: the multitask gradient against transformers, sharded = single device, step-wide contrastive
negatives, exact resume after SIGKILL, SIGTERM checkpoints, a 2-process run, non-finite losses, config validation,
resuming with a changed config."""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.traverse_util import flatten_dict

from flava_jax.common.settings import ConfigError
from flava_jax.data import pipeline
from flava_jax.data.tokenizer import Tokenizer
from flava_jax.data.transforms import model_inputs
from flava_jax.model.flava import FlavaForPreTraining
from flava_jax.train import checkpoint as checkpoint_lib
from flava_jax.train import sharding as sharding_lib
from flava_jax.train.step import TrainState, make_contrastive_cache, make_loss_fn, make_train_step
from flava_jax.train.trainer import Trainer, TrainingError, build, model_config, plan, train
from tests.configs import REPO, debug_config
from tests.conftest import CPU_HEAVY, xla_flags

CACHE = os.environ["JAX_COMPILATION_CACHE_DIR"]


def _batches(data: Path, sizes: dict[str, int], count: int) -> list[dict[str, dict[str, np.ndarray]]]:
    settings = pipeline.PipelineSettings.from_config(debug_config(), str(data))
    iterator = pipeline.MultitaskIterator(settings, sizes, Tokenizer.load(data / "tokenizer.model"), process=(0, 1))
    return [next(iterator) for _ in range(count)]


@pytest.mark.slow
def test_multitask_gradient_matches_transformers(debug_data: Path) -> None:
    """One micro-step of all three streams against HF's three forwards summed with the same weights."""
    torch = pytest.importorskip("torch")
    from tests.hf_reference import flax_params, hf_grads, hf_model, to_torch
    from tests.model.test_flava import compare_grads

    config = debug_config()
    losses = {"mlm": 1.0, "mim": 0.7, "itm": 0.9, "global_contrastive": 1.1, "mmm_image": 0.6, "mmm_text": 0.8}
    streams = {"text": 0.5, "image": 0.3, "pairs": 0.2}
    model_cfg = model_config(config).replace(**{f"{k}_weight": v for k, v in losses.items()})
    reference = hf_model(model_cfg)
    params = flax_params(model_cfg, reference)
    sizes = (model_cfg.image_config.image_size, model_cfg.codebook_image_size)
    # The stored images made into model inputs once, for both sides (without "pixels" the loss function's
    # model_inputs passes them through): converted inside the jitted loss, XLA's fusion rounds ~1 in 3 encoder
    # pixels 1 ulp away from the eager conversion, and on this batch (the 3 texts' contrastive embeddings have
    # cosines of 0.999996 to each other) that alone moves the f32 text_projection gradient by 1.6e-4 relative.
    micro = {stream: {k: np.asarray(v) for k, v in model_inputs(batch, *sizes).items()}
             for stream, batch in _batches(debug_data, {"text": 3, "image": 3, "pairs": 3}, 1)[0].items()}
    parts = build(config, model_config(config), sharding_lib.make_mesh({"data": 1}, jax.devices()[:1]))
    loss_fn = make_loss_fn(parts.model, config.data.mlm_probability, config.data.mask_patches)
    weights = {"streams": streams, "losses": losses}
    (loss, _), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params, micro, weights, jax.random.key(0))
    total = 0
    for stream, batch in micro.items():
        inputs = {k: v.astype(np.int64) if v.dtype == np.int32 else v for k, v in batch.items()}  # torch's CE
        total = total + streams[stream] * reference(**to_torch(inputs)).loss
    np.testing.assert_allclose(float(loss), float(total), rtol=1e-5)
    total.backward()
    compare_grads(model_cfg, grads, hf_grads(model_cfg, reference))
    assert torch.is_tensor(total)


def _sharded_config(data: Path, **overrides: Any) -> Any:
    return debug_config(data__dir=str(data), sharding__fsdp=True, sharding__fsdp_min_size=512, **overrides)


def _three_steps(config: Any, mesh: Any, params: Any, stacked: list, weights: dict) -> tuple[Any, list[dict]]:
    """(parameters, metrics of each step) after the steps of `stacked` from `params`, on `mesh`."""
    parts = build(config, model_config(config), mesh)
    state = jax.device_put(TrainState(jnp.zeros((), jnp.int32), params, parts.tx.init(params)), parts.state_shardings)
    if mesh.size > 1:
        assert any(not s.is_fully_replicated for s in jax.tree.leaves(parts.state_shardings.params))
    history = []
    for batch in stacked:
        state, metrics = parts.train_step(state, sharding_lib.global_batch(batch, parts.batch_sharding), weights,
                                          jax.random.key(1))
        history.append({k: float(v) for k, v in metrics.items()})
    return jax.device_get(state.params), history


@functools.cache
def _one_device_steps(data: Path) -> tuple[Any, list, dict, Any, list[dict]]:
    """(start parameters, 3 steps' batches, loss weights, and the one-device run's parameters and metrics): the
    reference both gather modes are held to, made once (on one device, gathering has nothing to gather)."""
    config = _sharded_config(data)
    run = plan(config, ["text", "image", "pairs"], sharding_lib.make_mesh({"data": 2, "fsdp": 4}))
    stacked = []
    for _ in range(3):
        micro = _batches(data, run.micro_batch, run.accumulation)
        stacked.append({s: {k: np.stack([m[s][k] for m in micro]) for k in micro[0][s]} for s in micro[0]})
    weights = {"streams": run.weights, "losses": dict.fromkeys(("mlm", "mim", "itm", "global_contrastive",
                                                                "mmm_image", "mmm_text"), 1.0)}
    # HF's init leaves the mask token and position embeddings at 0, so masked patches enter LayerNorm as zero
    # vectors (eps 1e-12): gradients there are rounding noise. Start both runs from the same perturbed weights.
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda x: np.asarray(x) + 0.02 * rng.standard_normal(x.shape).astype(np.float32),
                          jax.device_get(FlavaForPreTraining(model_config(config)).init_params(jax.random.key(0))))
    one = sharding_lib.make_mesh({"data": 1}, jax.devices()[:1])
    return (params, stacked, weights, *_three_steps(config, one, params, stacked, weights))


@pytest.mark.slow
@pytest.mark.xdist_group("sharded_steps")  # one worker: the one-device run is made once for both
@pytest.mark.parametrize("gather_weights", ["micro_step", "step"])
def test_sharded_steps_match_one_device(debug_data: Path, gather_weights: str) -> None:
    """Three steps on a 2x4 (data x fsdp) mesh of 8 faked devices, FSDP on (the weights gathered at every micro-step,
    or once a step), against one device."""
    assert jax.device_count() == 8, "conftest fakes 8 CPU devices"
    params, stacked, weights, params1, history1 = _one_device_steps(debug_data)
    params8, history8 = _three_steps(_sharded_config(debug_data, sharding__gather_weights=gather_weights),
                                     sharding_lib.make_mesh({"data": 2, "fsdp": 4}), params, stacked, weights)
    for a, b in zip(history8, history1, strict=True):
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key
    # Attention key biases are left out: their true gradient is 0 (softmax ignores a per-row shift), so Adam turns
    # rounding noise, which differs with the reduction order, into full-size steps.
    flat8, flat1 = flatten_dict(params8), flatten_dict(params1)
    for keys, y in flat1.items():
        if keys[-2:] != ("key", "bias"):
            assert np.linalg.norm(flat8[keys] - y) <= 1e-5 * np.linalg.norm(y), "/".join(keys)


@pytest.mark.slow
def test_global_batch_contrastive_equals_one_big_micro_batch(debug_data: Path) -> None:
    """Two micro-steps of 4 pairs with step-wide negatives = one micro-step of the same 8 pairs: same loss, same
    gradient (through the encoders and the logit scale); with micro-batch negatives they differ."""
    config = debug_config(train__contrastive_negatives="global_batch")
    model_cfg = model_config(config)
    parts = build(config, model_cfg, sharding_lib.make_mesh({"data": 1}, jax.devices()[:1]))
    params = parts.init_state(jax.random.key(0)).params
    loss_fn = make_loss_fn(parts.model, config.data.mlm_probability, config.data.mask_patches)
    micro = [m["pairs"] for m in _batches(debug_data, {"pairs": 4}, 2)]
    two = {"pairs": {k: np.stack([m[k] for m in micro]) for k in micro[0]}}
    one = {"pairs": {k: np.concatenate([m[k] for m in micro])[None] for k in micro[0]}}
    losses = dict.fromkeys(("mlm", "mim", "itm", "mmm_image", "mmm_text"), 0.0) | {"global_contrastive": 1.0}
    weights = {"streams": {"pairs": 0.7}, "losses": losses}
    tx = optax.sgd(1.0)  # the update is minus the gradient

    def step(cache: Any, batch: Any) -> tuple[Any, dict]:
        state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
        new, metrics = jax.jit(make_train_step(loss_fn, tx, cache))(state, batch, weights, jax.random.key(1))
        return jax.tree.map(lambda a, b: np.asarray(b) - np.asarray(a), new.params, params), metrics

    cache = make_contrastive_cache(parts.model)
    (d_global, m_global), (d_one, m_one), (_, m_micro) = step(cache, two), step(None, one), step(None, two)
    assert float(m_global["loss/global_contrastive"]) == pytest.approx(float(m_one["loss/global_contrastive"]),
                                                                        rel=1e-5)
    assert float(m_global["loss"]) == pytest.approx(0.7 * float(m_one["loss/global_contrastive"]), rel=1e-5)
    assert abs(float(m_micro["loss/global_contrastive"]) - float(m_one["loss/global_contrastive"])) > 1e-3
    flat_global, flat_one = flatten_dict(d_global), flatten_dict(d_one)
    assert np.abs(flat_one[("flava", "logit_scale")]).max() > 0
    # The floor, 1e-6 of the largest gradient, covers the attention key biases, whose true gradient is 0.
    floor = 1e-6 * max(np.abs(y).max() for y in flat_one.values())
    moved = 0
    for keys, y in flat_one.items():
        np.testing.assert_allclose(flat_global[keys], y, rtol=1e-4, atol=floor, err_msg="/".join(keys))
        moved += bool(np.abs(y).max() > 0)
    assert moved > 10, "the contrastive gradient should reach the encoders"


@pytest.mark.slow
def test_length_buckets_give_the_same_per_example_losses(debug_data: Path) -> None:
    """Text padded to 512 (the reference) or only to the bucket that fits (`data.length_buckets`): the attention
    mask makes the padding invisible, so every example's MLM loss is the same."""
    config = debug_config()
    model_cfg = model_config(config).replace(text_config={"max_position_embeddings": 512})
    model = FlavaForPreTraining(model_cfg)
    params = model.init_params(jax.random.key(0))
    texts = pipeline.MultitaskIterator(pipeline.PipelineSettings.from_config(debug_config(data__text_max_length=512),
                                                                             str(debug_data)),
                                       {"text": 32}, Tokenizer.load(debug_data / "tokenizer.model"), process=(0, 1))
    batch = next(texts)["text"]
    lengths = batch["attention_mask"].sum(1)
    batch = {k: v[lengths < 200] for k, v in batch.items()}  # the examples a bucket below 512 holds
    assert len(batch["input_ids"]) >= 4
    longest = int(batch["attention_mask"].sum(1).max())
    bucket = min(b for b in (16, 32, 64, 128, 256, 512) if b >= longest)
    assert batch["input_ids"].shape[1] == 512 and bucket < 512

    @jax.jit
    def log_probs(b: dict[str, jax.Array]) -> jax.Array:
        return jax.nn.log_softmax(model.apply({"params": params}, **b).mlm_logits.astype(jnp.float32))

    def per_example(b: dict[str, np.ndarray]) -> np.ndarray:
        labels = b["mlm_labels"]
        nll = -np.take_along_axis(np.asarray(log_probs(b)), np.maximum(labels, 0)[..., None], -1)[..., 0]
        return (nll * (labels != -100)).sum(1) / np.maximum((labels != -100).sum(1), 1)

    padded, cut = per_example(batch), per_example({k: v[:, :bucket] for k, v in batch.items()})
    assert (batch["mlm_labels"] != -100).sum(1).min() > 0
    np.testing.assert_allclose(cut, padded, rtol=2e-6)


# ------------------------------------------------------------------------------------------ whole runs
def _command(workdir: Path, data: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "flava_jax.main", "--config=configs/debug.py", f"--workdir={workdir}",
            f"--config.data.dir={data}", f"--config.compilation_cache_dir={CACHE}", "--config.log_every_steps=1",
            *overrides]


def _env(devices: int = 1) -> dict[str, str]:
    return {**os.environ, "XLA_FLAGS": xla_flags(devices)}


def _run(command: list[str], env: dict[str, str] | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=REPO, env=env or _env(), capture_output=True, text=True, timeout=timeout,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _spawn(command: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a run in the background with its log in a file: a pipe nobody reads would block it once full."""
    with log.open("w") as stderr:
        return subprocess.Popen(command, cwd=REPO, env=env or _env(), stdout=subprocess.DEVNULL, stderr=stderr)


def _final_params(workdir: Path) -> Any:
    checkpoints = checkpoint_lib.Checkpoints(workdir / "checkpoints", async_save=False)
    state, _, _, step = checkpoints.restore()
    checkpoints.close()
    return step, state


def _assert_same_state(a: Path, b: Path, step: int) -> None:
    """Both workdirs' newest checkpoints are of `step` and hold the same bytes."""
    (step_a, state_a), (step_b, state_b) = _final_params(a), _final_params(b)
    assert step_a == step_b == step
    for x, y in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b), strict=True):
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()


def _wait_for(condition: Any, *processes: subprocess.Popen, timeout: float = 600) -> None:
    """Until `condition()`, or one of `processes` ends, or `timeout` seconds pass."""
    deadline = time.time() + timeout
    while not condition() and all(p.poll() is None for p in processes) and time.time() < deadline:
        time.sleep(0.05)


@pytest.fixture(scope="session")
def sample_classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled sample's images as a zero-shot set of four class folders, with its class-names file."""
    from flava_jax.data.sample import SAMPLE_DIR

    root = tmp_path_factory.mktemp("sample_classes")
    classes = {"chelsea.png": "cat", "clock_motion.png": "clock", "coins.png": "coin", "rocket.jpg": "rocket"}
    for file, name in classes.items():
        (root / "set" / name).mkdir(parents=True)
        shutil.copy(SAMPLE_DIR / "images" / file, root / "set" / name / file)
    (root / "names.txt").write_text("".join(f"{name}\n" for name in classes.values()))
    return root


def _reference(sample_classes: Path) -> tuple[str, ...]:
    """The uninterrupted run that the resume tests rerun in pieces and must equal bit for bit: 24 steps, saved every
    4 (the last 3 kept), validated every 8, with zero-shot on the sample's images and retrieval on the held-out
    pairs; pseudo-perplexity off (nothing here reads it)."""
    return ("--config.total_steps=24", "--config.checkpoint_every_steps=4", "--config.keep_checkpoints=3",
            "--config.eval.every_steps=8", "--config.eval.evaluators.pppl.texts=0",
            f"--config.eval.evaluators.zeroshot.dir={sample_classes / 'set'}",
            f"--config.eval.evaluators.zeroshot.class_names={sample_classes / 'names.txt'}",
            "--config.eval.evaluators.zeroshot.templates=4")


@pytest.fixture(scope="session")  # not module: pytest would train again after other modules' tests
def reference_run(debug_data: Path, sample_classes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The _reference run's workdir, trained once for the tests of its xdist group ("reference_run")."""
    workdir = tmp_path_factory.mktemp("reference") / "run"
    _run(_command(workdir, debug_data, *_reference(sample_classes)))
    return workdir


@pytest.mark.xdist_group("reference_run")
def test_zeroshot_and_retrieval_are_logged_at_each_evaluation(reference_run: Path) -> None:
    """metrics.jsonl and TensorBoard hold zero-shot top-1/top-5 over the sample's 4 classes and retrieval recall
    over its held-out pairs at steps 8, 16 and 24, each a fraction a count of hits over 4 images (or over the pairs'
    candidates) can give."""
    pytest.importorskip("tensorboardX")
    from tensorboardX.proto.event_pb2 import Event

    from tests.train.test_metrics import tfrecords

    rows = [json.loads(line) for line in (reference_run / "metrics.jsonl").read_text().splitlines()]
    evaluations = [r for r in rows if "zeroshot/top1" in r]
    assert [r["step"] for r in evaluations] == [8, 16, 24]
    for row in evaluations:
        assert row["zeroshot/top5"] == 1.0  # 4 classes: every image's class is in its top 5
        assert row["zeroshot/top1"] in (0.0, 0.25, 0.5, 0.75, 1.0)
        assert {"retrieval/i2t_r1", "retrieval/t2i_r1"} <= set(row) and 0 <= row["retrieval/i2t_r1"] <= 1
        assert {k for k in row if k.startswith("retrieval/")} <= {f"retrieval/{w}_r{k}" for w in ("i2t", "t2i")
                                                                   for k in (1, 5, 10)}
    (events,) = (reference_run / "tensorboard").glob("events.out.tfevents.*")
    tags = {v.tag for record in tfrecords(events) for v in Event.FromString(record).summary.value}
    assert {"zeroshot/top1", "zeroshot/top5", "retrieval/i2t_r1", "retrieval/t2i_r1"} <= tags


def _with_cache(command: list[str], cache: Path) -> list[str]:
    """`command` with its own persistent compilation cache."""
    return [f"--config.compilation_cache_dir={cache}" if arg == f"--config.compilation_cache_dir={CACHE}" else arg
            for arg in command]


@pytest.mark.slow
@pytest.mark.xdist_group(CPU_HEAVY)  # three compiles and 180 steps: beside another heavy test, near CI's 120 s
def test_bf16_losses_track_the_f32_run_over_60_steps(debug_data: Path, tmp_path: Path) -> None:
    """model.dtype="bfloat16" (bf16 matmuls, f32 parameters, softmax, LayerNorm and losses) against f32, the debug
    run's 60 steps (trained in this process, one after the other, without evaluators). The tiny model's runs are
    chaotic (its 8 pairs' text embeddings start nearly collinear, so the contrastive loss turns on rounding, and the
    shared encoders with it): an f32 run with scanned layers, the same arithmetic in another order, parts from the
    f32 run by up to 4% a step and 67% in the contrastive loss's last 10 steps (2026-12-06). That run is the
    yardstick. Stated tolerance: the total loss within 1% over the first 5 steps, before rounding has parted the
    runs; then the total at every step and each objective's mean over the last 10 steps at most twice as far from
    f32 as the yardstick is, or 3%."""
    runs = {"float32": {}, "scanned": {"model__scan_layers": True}, "bfloat16": {"model__dtype": "bfloat16"}}
    losses = {}
    for name, overrides in runs.items():
        train(_short_run(debug_data, checkpoint_every_steps=1000, **overrides), tmp_path / name, jax.devices()[:1])
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        losses[name] = {row["step"]: {k: v for k, v in row.items() if k.startswith("loss")} for row in rows
                        if "loss" in row}
    f32, bf16, yardstick = losses["float32"], losses["bfloat16"], losses["scanned"]
    assert sorted(f32) == sorted(bf16) == sorted(yardstick) == list(range(1, 61))
    assert f32[60]["loss"] < 0.75 * f32[1]["loss"]  # it learns, so tracking means something
    assert f32 != bf16  # bf16 did change the arithmetic

    def apart(run: dict, step: int, key: str = "loss") -> float:
        return abs(run[step][key] - f32[step][key]) / f32[step][key]

    for step in range(1, 6):
        assert apart(bf16, step) <= 0.01, step
    allowed = max(0.03, 2 * max(apart(yardstick, step) for step in f32))
    assert max(apart(bf16, step) for step in f32) <= allowed
    for key in f32[1]:
        last = {name: np.mean([run[step][key] for step in range(51, 61)]) for name, run in losses.items()}
        allowed = max(0.03, 2 * abs(last["scanned"] - last["float32"]) / last["float32"])
        assert abs(last["bfloat16"] - last["float32"]) <= allowed * last["float32"], (key, last)


@pytest.mark.slow
def test_length_buckets_run_with_gradient_accumulation(debug_data: Path, tmp_path: Path) -> None:
    """The debug run's 2 micro-steps a step with length buckets: a step's text micro-batches are stacked, so they
    must share a bucket (they did not, and stacking them failed). The trainer's steps stack text of both buckets'
    lengths, then a step trains to a finite loss (one bucket compiled: each is a program of its own)."""
    trainer = Trainer(_short_run(debug_data, total_steps=1, data__length_buckets=(32, 64)), tmp_path,
                      jax.devices()[:1])
    lengths = {trainer._next_batch()["text"]["input_ids"].shape for _ in range(8)}
    assert lengths == {(2, 3, 32), (2, 3, 64)}, lengths  # (micro-steps, examples, bucket)
    assert trainer.run()["step"] == 1
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if "loss" in row] == [1] and math.isfinite(rows[0]["loss"])


_CACHE_LOG = re.compile(r"(Persistent compilation cache hit|PERSISTENT COMPILATION CACHE MISS) for '([^']+)'")


def _train_step_compiles(log: str) -> list[bool]:
    """Whether the persistent cache had it, for each train step compiled, from jax._src.compiler's debug lines."""
    return [kind.startswith("Persistent") for kind, name in _CACHE_LOG.findall(log) if "train_step" in name]


@pytest.mark.slow
@pytest.mark.xdist_group("reference_run")
def test_sigkill_then_rerun_is_bit_identical_and_takes_the_compiled_step_from_the_persistent_cache(
        reference_run: Path, debug_data: Path, sample_classes: Path, tmp_path: Path) -> None:
    """The reference run killed by SIGKILL once its first checkpoint is complete, then rerun: its metrics.jsonl and
    final state are the uninterrupted run's, bit for bit. config.compilation_cache_dir (on by default), here an
    empty one: the killed run missed it for every train step it compiled; the rerun (a restart after preemption)
    read each of them from it."""
    # Each persistent-cache hit and miss logged; no cache but the config's (the suite's would hide one ignored).
    env = {**{k: v for k, v in _env().items() if k != "JAX_COMPILATION_CACHE_DIR"},
           "JAX_DEBUG_LOG_MODULES": "jax._src.compiler"}
    killed, log = tmp_path / "killed", tmp_path / "killed.log"
    command = _with_cache(_command(killed, debug_data, *_reference(sample_classes)), tmp_path / "xla")
    process = _spawn(command, log, env)
    _wait_for(lambda: (killed / "checkpoints" / "4").is_dir(), process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    uninterrupted = (reference_run / "metrics.jsonl").read_text()
    rows_at_kill = (killed / "metrics.jsonl").read_text().count("\n")
    assert process.returncode == -signal.SIGKILL and rows_at_kill < uninterrupted.count("\n"), \
        "the run finished before it was killed"
    stderr = _run(command, env).stderr
    resumed = re.search(r"resumed from \S+ at step (\d+)", stderr)
    assert resumed and 4 <= int(resumed.group(1)) < 24, stderr[-3000:]
    assert (killed / "metrics.jsonl").read_text() == uninterrupted
    _assert_same_state(reference_run, killed, 24)
    first, second = _train_step_compiles(log.read_text()), _train_step_compiles(stderr)
    assert first and not any(first), first  # every train step compile missed the empty cache
    assert second and all(second), second


@pytest.mark.slow
def test_sigterm_checkpoints_the_current_step(debug_data: Path, tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    process = _spawn(_command(tmp_path / "run", debug_data, "--config.total_steps=100000",
                              "--config.eval.every_steps=100000", "--config.checkpoint_every_steps=100000"), log)
    metrics = tmp_path / "run" / "metrics.jsonl"
    _wait_for(lambda: metrics.exists() and metrics.read_text().count("\n") >= 5, process)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=300)
    stderr = log.read_text()
    assert process.returncode == 75, stderr[-3000:]  # saved, stopped early: rerun to resume
    last = json.loads(metrics.read_text().splitlines()[-1])["step"]
    checkpoints = checkpoint_lib.Checkpoints(tmp_path / "run" / "checkpoints", async_save=False)
    assert checkpoints.latest_step() == last >= 5
    checkpoints.close()
    assert "preempted" in stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.xdist_group(CPU_HEAVY)
def test_two_processes_give_the_losses_of_one_and_a_sigterm_to_one_checkpoints_both_at_one_step(
        debug_data: Path, tmp_path: Path) -> None:
    """jax.distributed on 127.0.0.1, 2 processes x 2 CPU devices: their first 4 steps' losses are those of 1 process
    x 4 devices (the learning rate follows optim.decay_steps, not total_steps, so an open-ended run takes the same
    steps). Then a preemption notice reaching one of them: both agree on a step (JAX's preemption sync point), save
    it together and exit with status 75."""
    # Validation at step 4 in both runs, so evaluating across two processes is run too.
    quiet = ("--config.eval.evaluators.pppl.texts=0", "--config.eval.every_steps=4",
             "--config.checkpoint_every_steps=100000")
    _run(_command(tmp_path / "one", debug_data, "--config.total_steps=4", *quiet), env=_env(4))
    port = _free_port()
    # Each log goes to a file: with pipes, one process could block on a full one while the test waits on the other.
    logs = [tmp_path / f"process_{i}.log" for i in range(2)]
    processes = [_spawn(_command(tmp_path / "two", debug_data, "--config.total_steps=100000", *quiet,
                                 f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"),
                        log, _env(2))
                 for i, log in enumerate(logs)]
    metrics = tmp_path / "two" / "metrics.jsonl"
    _wait_for(lambda: metrics.exists() and metrics.read_text().count('"loss":') >= 4, *processes)
    processes[1].send_signal(signal.SIGTERM)
    for p in processes:
        p.wait(timeout=300)
    assert [p.returncode for p in processes] == [75, 75], "\n".join(f"--- {f.name}\n{f.read_text()[-3000:]}"
                                                                   for f in logs)
    last = json.loads(metrics.read_text().splitlines()[-1])["step"]
    checkpoints = checkpoint_lib.Checkpoints(tmp_path / "two" / "checkpoints", async_save=False)
    assert last >= 4 and checkpoints.all_steps() == sorted({4, last})  # the evaluated step's and the notice's
    checkpoints.close()

    def losses(workdir: Path) -> list[dict[str, float]]:
        rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k.startswith("loss")} for r in rows if "loss" in r]

    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")[:4]
    assert len(one) == len(two) == 4
    for a, b in zip(one, two, strict=True):
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-5), key


@pytest.mark.slow
def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_checkpoint(debug_data: Path, tmp_path: Path) -> None:
    config = debug_config(data__dir=str(debug_data), total_steps=40, checkpoint_every_steps=2, eval__every_steps=1000,
                          compilation_cache_dir="")
    config.optim.lr_groups = [(".*", 1e6)]  # no clipping and a huge step: the weights blow up within a few steps
    config.optim.grad_clip_norm = 1e30
    config.optim.warmup_steps = 1
    with pytest.raises(TrainingError, match=r"step (\d+): non-finite loss for .*the run stops without saving") as e:
        train(config, tmp_path, jax.devices()[:1])
    bad_step = int(str(e.value).split("step ")[1].split(":")[0])
    checkpoints = checkpoint_lib.Checkpoints(tmp_path / "checkpoints", async_save=False)
    state, _, _, latest = checkpoints.restore()
    checkpoints.close()
    assert latest < bad_step
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state))


@pytest.mark.parametrize("override, message", [
    ("--config.train.batch_sise=3", "batch_sise"),
    ("--config.train.batch_size=many", "batch_size"),
    ("--config.sharding.mesh.data=3", "sharding.mesh"),
    ("--config.model.text_config.vocab_size=10", "config.model.text_config.vocab_size"),
    ("--config.train.batch_size=-4", "config.train.batch_size=-4 must be an integer >= 1"),
    ("--config.model.attention=pallas_tpu", "config.model.attention='pallas_tpu' does not run on this mesh's devices"),
    ("--config.model.attention=flash", "attention"),
])
def test_bad_configs_fail_at_start_up(debug_data: Path, tmp_path: Path, override: str, message: str) -> None:
    result = subprocess.run(_command(tmp_path, debug_data, override), cwd=REPO, env=_env(), capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())



def _short_run(data: Path, **overrides: Any) -> Any:
    """configs/debug.py on `data`, saving every 2 steps unless told, without evaluators (nothing here needs them)."""
    config = debug_config(data__dir=str(data), compilation_cache_dir="", **{"checkpoint_every_steps": 2, **overrides})
    with config.eval.unlocked():
        config.eval.evaluators = {}
    return config


@pytest.mark.slow
def test_a_resume_refuses_a_changed_experiment_and_records_an_accepted_change(
        debug_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Fault injection on a workdir with a checkpoint: a changed model shape and batch size are refused, naming
    each, before anything there is rewritten; a torn last metrics line (a kill mid-append) is dropped; with
    config.allow_config_change the run goes on and run.json records the change with its step. Trained on the one
    device `train` is given, of the 8 this process has (faked devices would only slow it down)."""
    one = jax.devices()[:1]
    with caplog.at_level(logging.INFO, logger="flava_jax"):
        train(_short_run(debug_data, total_steps=2), tmp_path, one)
    assert "mesh {'data': 1, 'fsdp': 1, 'tensor': 1}" in caplog.text
    run_json, metrics = (tmp_path / "run.json").read_text(), tmp_path / "metrics.jsonl"
    rows = metrics.read_text()
    changed = _short_run(debug_data, total_steps=4, train__batch_size=8, model__text_config__num_hidden_layers=3)
    with pytest.raises(ConfigError, match=r"holds checkpoints of a run whose config differs in what it trains: "
                                          r"config\.model\.text_config\.num_hidden_layers: 2 -> 3; "
                                          r"config\.train\.batch_size: 16 -> 8\. Resume with the run's values"):
        train(changed, tmp_path, one)
    assert (tmp_path / "run.json").read_text() == run_json and metrics.read_text() == rows
    with open(metrics, "a") as f:
        f.write('{"step": 3, "loss": 7.')
    result = train(_short_run(debug_data, total_steps=3, seed=1, allow_config_change=True), tmp_path, one)
    assert result["step"] == 3
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["changes"] == [{"step": 2, "key": "config.seed", "old": 5501650, "new": 1}]
    assert run["config"]["seed"] == 1 and run["config"]["total_steps"] == 3
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [1, 2, 3]


# ------------------------------------------------------------------------------------------ faults
@pytest.mark.slow
@pytest.mark.xdist_group("reference_run")
def test_a_corrupt_newest_checkpoint_is_moved_aside_and_the_run_resumes_from_the_previous_one(
        reference_run: Path, debug_data: Path, sample_classes: Path, tmp_path: Path) -> None:
    """A copy of the reference run, its checkpoints 16, 20 and 24; 64 flipped bytes in step 24's largest data file
    and step 20's truncated to half: the rerun reports each in one line, moves both to corrupt/, resumes from step
    16 and ends as the uninterrupted run did."""
    from tests.train.test_checkpoint import flip_bytes, largest_data_file

    workdir = tmp_path / "run"
    shutil.copytree(reference_run, workdir)
    flip_bytes(largest_data_file(workdir / "checkpoints" / "24"))
    truncated = largest_data_file(workdir / "checkpoints" / "20")
    truncated.write_bytes(truncated.read_bytes()[:len(truncated.read_bytes()) // 2])
    stderr = _run(_command(workdir, debug_data, *_reference(sample_classes))).stderr
    for step in (24, 20):
        assert f"checkpoint step {step} in {workdir / 'checkpoints'} is corrupt" in stderr, stderr[-3000:]
        assert (workdir / "checkpoints" / "corrupt" / str(step) / "sha256.json").is_file()
    assert f"resumed from {workdir / 'checkpoints'} at step 16, the newest good checkpoint" in stderr
    assert "Traceback" not in stderr
    assert (workdir / "metrics.jsonl").read_text() == (reference_run / "metrics.jsonl").read_text()
    _assert_same_state(reference_run, workdir, 24)


_FULL_DISK_AT_STEP_8 = """
import errno, runpy, sys
from orbax.checkpoint._src.handlers import json_checkpoint_handler as handler
original = handler.JsonCheckpointHandler._save_fn
async def full_disk(self, x, directory):
    if "/8.orbax-checkpoint-tmp" in str(directory):
        raise OSError(errno.ENOSPC, "No space left on device", str(directory / "metadata"))
    await original(self, x, directory)
handler.JsonCheckpointHandler._save_fn = full_disk
sys.argv = ["flava_jax.main", *sys.argv[1:]]
runpy.run_module("flava_jax.main", run_name="__main__")
"""


def _assert_one_error_line(result: subprocess.CompletedProcess, checkpoints: Path, failed: int) -> None:
    """The run stopped with one error line at the end naming the step directory, at most one traceback, and the
    last complete checkpoint restores and verifies."""
    assert result.returncode not in (0, 75), result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: writing checkpoint step {failed} to {checkpoints / str(failed)} failed"), last
    assert "is intact" in last and result.stderr.count("Traceback") <= 1, result.stderr[-3000:]
    reader = checkpoint_lib.Checkpoints(checkpoints, async_save=False)
    assert reader.restore()[3] == failed - 4 and (checkpoints / str(failed - 4) / "sha256.json").is_file()
    reader.close()


@pytest.mark.slow
def test_a_full_disk_while_saving_is_one_error_line(debug_data: Path, tmp_path: Path) -> None:
    """Writes of step 8's checkpoint fail with ENOSPC (injected in Orbax's background save)."""
    command = _command(tmp_path / "run", debug_data, "--config.total_steps=12", "--config.checkpoint_every_steps=4",
                       "--config.eval.every_steps=100", "--config.eval.evaluators.pppl.texts=0")
    result = subprocess.run([sys.executable, "-c", _FULL_DISK_AT_STEP_8, *command[3:]], cwd=REPO, env=_env(),
                            capture_output=True, text=True, timeout=900, check=False)
    _assert_one_error_line(result, tmp_path / "run" / "checkpoints", 8)


@pytest.mark.slow
def test_a_real_full_disk_is_one_error_line(debug_data: Path, tmp_path: Path) -> None:
    """The workdir on a 4 MB tmpfs: step 4's checkpoint (2.4 MB) fits, step 8's does not."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True,
                             text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"needs a tmpfs (root and mount rights): {mounted.stderr.strip()}")
    try:
        command = _command(mount / "run", debug_data, "--config.total_steps=12", "--config.checkpoint_every_steps=4",
                           "--config.eval.every_steps=100", "--config.eval.evaluators.pppl.texts=0")
        result = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900,
                                check=False)
        _assert_one_error_line(result, mount / "run" / "checkpoints", 8)
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def _run_left_by(config: Any, workdir: Path) -> str:
    """A workdir as a run of `config` leaves it: run.json and a checkpoint folder (empty: nothing here reads it);
    returns run.json's text."""
    (workdir / "checkpoints" / "2").mkdir(parents=True)
    run = {"model": model_config(config).to_dict(), "tokenizer": "tokenizer.model", "tokenizer_sha256": None,
           "config": config.to_dict(), "changes": []}
    (workdir / "run.json").write_text(json.dumps(run, default=str))
    return (workdir / "run.json").read_text()


def test_a_changed_experiment_is_refused_before_the_workdir_is_touched(debug_data: Path, tmp_path: Path) -> None:
    run_json = _run_left_by(debug_config(data__dir=str(debug_data)), tmp_path)
    changed = debug_config(data__dir=str(debug_data), seed=3, total_steps=7, model__text_config__hidden_act="relu")
    with pytest.raises(ConfigError, match=r"config\.model\.text_config\.hidden_act: 'gelu' -> 'relu'; config\.seed: "
                                          r"5501650 -> 3\. Resume with"):
        train(changed, tmp_path)
    assert (tmp_path / "run.json").read_text() == run_json
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "run.json"]


def test_a_change_of_parameter_shapes_is_refused_even_when_changes_are_allowed(debug_data: Path,
                                                                                tmp_path: Path) -> None:
    """Checkpoints hold the run's shapes: one more text layer can never restore, switch or not."""
    run_json = _run_left_by(debug_config(data__dir=str(debug_data)), tmp_path)
    changed = debug_config(data__dir=str(debug_data), allow_config_change=True,
                           model__text_config__num_hidden_layers=3)
    with pytest.raises(ConfigError, match=r"^config\.model: the changes give \d+ parameters another shape \(e\.g\. "
                                          r"flava/text_model/encoder/layer/2/.*: absent -> \(.*use a new workdir$"):
        train(changed, tmp_path)
    assert (tmp_path / "run.json").read_text() == run_json
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "run.json"]
