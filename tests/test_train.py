"""The trainer: the multitask gradient against transformers, sharded = single device, exact resume after SIGKILL,
SIGTERM checkpoints, a 2-process run, non-finite losses, config validation."""

from __future__ import annotations

import json
import os
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
import pytest
from flax.traverse_util import flatten_dict

from flava_jax import checkpoint as checkpoint_lib
from flava_jax import sharding as sharding_lib
from flava_jax.data import pipeline
from flava_jax.data.tokenizer import Tokenizer
from flava_jax.data.transforms import model_inputs
from flava_jax.step import TrainState, make_loss_fn
from flava_jax.train import TrainingError, build, model_config, plan, train
from tests.configs import REPO, debug_config

CACHE = os.environ["JAX_COMPILATION_CACHE_DIR"]


def _batches(data: Path, sizes: dict[str, int], count: int) -> list[dict[str, dict[str, np.ndarray]]]:
    settings = pipeline.PipelineSettings.from_config(debug_config(), str(data))
    iterator = pipeline.MultitaskIterator(settings, sizes, Tokenizer.load(data / "tokenizer.model"), process=(0, 1))
    return [next(iterator) for _ in range(count)]


def test_multitask_gradient_matches_transformers(debug_data: Path) -> None:
    """One micro-step of all three streams against HF's three forwards summed with the same weights."""
    torch = pytest.importorskip("torch")
    from tests.hf_reference import flax_params, hf_grads, hf_model, to_torch
    from tests.test_parity import compare_grads

    config = debug_config()
    losses = {"mlm": 1.0, "mim": 0.7, "itm": 0.9, "global_contrastive": 1.1, "mmm_image": 0.6, "mmm_text": 0.8}
    streams = {"text": 0.5, "image": 0.3, "pairs": 0.2}
    model_cfg = model_config(config).replace(**{f"{k}_weight": v for k, v in losses.items()})
    reference = hf_model(model_cfg)
    params = flax_params(model_cfg, reference)
    micro = _batches(debug_data, {"text": 3, "image": 3, "pairs": 3}, 1)[0]
    parts = build(config, model_config(config), sharding_lib.make_mesh({"data": 1}, jax.devices()[:1]))
    loss_fn = make_loss_fn(parts.model, config.data.mlm_probability, config.data.mask_patches)
    weights = {"streams": streams, "losses": losses}
    (loss, _), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params, micro, weights, jax.random.key(0))
    sizes = (model_cfg.image_config.image_size, model_cfg.codebook_image_size)
    total = 0
    for stream, batch in micro.items():
        inputs = {k: np.asarray(v) for k, v in model_inputs(batch, *sizes).items()}
        inputs = {k: v.astype(np.int64) if v.dtype == np.int32 else v for k, v in inputs.items()}  # torch's CE
        total = total + streams[stream] * reference(**to_torch(inputs)).loss
    np.testing.assert_allclose(float(loss), float(total), rtol=1e-5)
    total.backward()
    compare_grads(model_cfg, grads, hf_grads(model_cfg, reference))
    assert torch.is_tensor(total)


def test_sharded_steps_match_one_device(debug_data: Path) -> None:
    """Three steps on a 2x4 (data x fsdp) mesh of 8 faked devices, FSDP on, against one device."""
    assert jax.device_count() == 8, "conftest fakes 8 CPU devices"
    config = debug_config(data__dir=str(debug_data), sharding__fsdp=True, sharding__fsdp_min_size=512)
    model_cfg = model_config(config)
    mesh8 = sharding_lib.make_mesh({"data": 2, "fsdp": 4})
    run = plan(config, ["text", "image", "pairs"], mesh8)
    stacked = []
    for _ in range(3):
        micro = _batches(debug_data, run.micro_batch, run.accumulation)
        stacked.append({s: {k: np.stack([m[s][k] for m in micro]) for k in micro[0][s]} for s in micro[0]})
    weights = {"streams": run.weights, "losses": dict.fromkeys(("mlm", "mim", "itm", "global_contrastive",
                                                                "mmm_image", "mmm_text"), 1.0)}
    # HF's init leaves the mask token and position embeddings at 0, so masked patches enter LayerNorm as zero
    # vectors (eps 1e-12): gradients there are rounding noise. Start both runs from the same perturbed weights.
    rng = np.random.default_rng(0)
    one = sharding_lib.make_mesh({"data": 1}, jax.devices()[:1])
    params = jax.tree.map(lambda x: np.asarray(x) + 0.02 * rng.standard_normal(x.shape).astype(np.float32),
                          jax.device_get(build(config, model_cfg, one).init_state(jax.random.key(0)).params))
    results = []
    for mesh in (mesh8, one):
        parts = build(config, model_cfg, mesh)
        state = jax.device_put(TrainState(jnp.zeros((), jnp.int32), params, parts.tx.init(params)),
                               parts.state_shardings)
        if mesh is mesh8:
            assert any(not s.is_fully_replicated for s in jax.tree.leaves(parts.state_shardings.params))
        history = []
        for batch in stacked:
            state, metrics = parts.train_step(state, sharding_lib.global_batch(batch, parts.batch_sharding),
                                              weights, jax.random.key(1))
            history.append({k: float(v) for k, v in metrics.items()})
        results.append((jax.device_get(state.params), history))
    (params8, history8), (params1, history1) = results
    for a, b in zip(history8, history1, strict=True):
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key
    # Attention key biases are left out: their true gradient is 0 (softmax ignores a per-row shift), so Adam turns
    # rounding noise, which differs with the reduction order, into full-size steps.
    flat8, flat1 = flatten_dict(params8), flatten_dict(params1)
    for keys, y in flat1.items():
        if keys[-2:] != ("key", "bias"):
            assert np.linalg.norm(flat8[keys] - y) <= 1e-5 * np.linalg.norm(y), "/".join(keys)


# ------------------------------------------------------------------------------------------ whole runs
def _command(workdir: Path, data: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "flava_jax.main", "--config=configs/debug.py", f"--workdir={workdir}",
            f"--config.data.dir={data}", f"--config.compilation_cache_dir={CACHE}", "--config.log_every_steps=1",
            *overrides]


def _env(devices: int = 1) -> dict[str, str]:
    return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


def _run(command: list[str], env: dict[str, str] | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=REPO, env=env or _env(), capture_output=True, text=True, timeout=timeout,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _final_params(workdir: Path) -> Any:
    checkpoints = checkpoint_lib.Checkpoints(workdir / "checkpoints", async_save=False)
    state, _, _, step = checkpoints.restore()
    checkpoints.close()
    return step, state


def test_sigkill_then_rerun_is_bit_identical(debug_data: Path, tmp_path: Path) -> None:
    overrides = ("--config.total_steps=40", "--config.checkpoint_every_steps=8", "--config.eval.every_steps=16")
    _run(_command(tmp_path / "whole", debug_data, *overrides))
    killed = tmp_path / "killed"
    process = subprocess.Popen(_command(killed, debug_data, *overrides), cwd=REPO, env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not (killed / "checkpoints" / "16").is_dir() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    rows_at_kill = (killed / "metrics.jsonl").read_text().count("\n")
    assert process.returncode == -signal.SIGKILL and rows_at_kill < 43, "the run finished before it was killed"
    _run(_command(killed, debug_data, *overrides))
    assert (killed / "metrics.jsonl").read_text() == (tmp_path / "whole" / "metrics.jsonl").read_text()
    (step_a, state_a), (step_b, state_b) = _final_params(tmp_path / "whole"), _final_params(killed)
    assert step_a == step_b == 40
    for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b), strict=True):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


def test_sigterm_checkpoints_the_current_step(debug_data: Path, tmp_path: Path) -> None:
    process = subprocess.Popen(_command(tmp_path, debug_data, "--config.total_steps=100000",
                                        "--config.eval.every_steps=100000", "--config.checkpoint_every_steps=100000"),
                               cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 600
    while (not metrics.exists() or metrics.read_text().count("\n") < 5) and time.time() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    last = json.loads(metrics.read_text().splitlines()[-1])["step"]
    checkpoints = checkpoint_lib.Checkpoints(tmp_path / "checkpoints", async_save=False)
    assert checkpoints.latest_step() == last >= 5
    checkpoints.close()
    assert "preempted" in stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_give_the_losses_of_one(debug_data: Path, tmp_path: Path) -> None:
    """jax.distributed on 127.0.0.1, 2 processes x 4 CPU devices, against 1 process x 8 devices."""
    overrides = ("--config.total_steps=4", "--config.eval.every_steps=100", "--config.checkpoint_every_steps=100",
                 "--config.eval.pppl_texts=0")
    _run(_command(tmp_path / "one", debug_data, *overrides), env=_env(8))
    port = _free_port()
    processes = [subprocess.Popen(
        _command(tmp_path / "two", debug_data, *overrides, f"--coordinator_address=127.0.0.1:{port}",
                 "--num_processes=2", f"--process_id={i}"),
        cwd=REPO, env=_env(4), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for p in processes:
        _, stderr = p.communicate(timeout=900)
        assert p.returncode == 0, stderr[-3000:]

    def losses(workdir: Path) -> list[dict[str, float]]:
        rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k.startswith("loss")} for r in rows if "loss" in r]

    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == len(two) == 4
    for a, b in zip(one, two, strict=True):
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-5), key


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_checkpoint(debug_data: Path, tmp_path: Path) -> None:
    config = debug_config(data__dir=str(debug_data), total_steps=40, checkpoint_every_steps=2, eval__every_steps=1000,
                          compilation_cache_dir="")
    config.optim.lr_groups = [(".*", 1e6)]  # no clipping and a huge step: the weights blow up within a few steps
    config.optim.grad_clip_norm = 1e30
    config.optim.warmup_steps = 1
    with pytest.raises(TrainingError, match=r"step (\d+): non-finite loss for .*the run stops without saving") as e:
        train(config, tmp_path)
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
])
def test_bad_configs_fail_at_start_up(debug_data: Path, tmp_path: Path, override: str, message: str) -> None:
    result = subprocess.run(_command(tmp_path, debug_data, override), cwd=REPO, env=_env(), capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())

