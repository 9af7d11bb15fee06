"""Stream weights (the paper's table), the multimodal scheduler's rules, and the optimiser against torch's AdamW."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.traverse_util import flatten_dict, unflatten_dict

from flava_jax import FlavaConfig
from flava_jax.model.hf_io import _hf_name, hf_name_table
from flava_jax.model.layers import unstack_layers
from flava_jax.train import optim
from flava_jax.train.scheduler import MultimodalScheduler, micro_batch_sizes, stream_weights
from flava_jax.train.sharding import make_mesh
from flava_jax.train.trainer import model_config, plan
from tests.configs import debug_config, load_config


@pytest.mark.parametrize("t, v, expected", [
    (1, 1, {"pairs": 1 / 3, "image": 1 / 3, "text": 1 / 3}),
    (10, 10, {"pairs": 1 / 3, "image": 1 / 3, "text": 1 / 3}),
    (10, 1, {"pairs": 1 / 12, "image": 1 / 12, "text": 10 / 12}),
    (1, 10, {"pairs": 1 / 3, "image": 1 / 3, "text": 1 / 3}),  # t < v: temperature 0, uniform
    (1, 100, {"pairs": 1 / 3, "image": 1 / 3, "text": 1 / 3}),
    (10, 100, {"pairs": 1 / 3, "image": 1 / 3, "text": 1 / 3}),
    (1, 0, {"text": 1.0}),
])
def test_stream_weights_follow_the_papers_table(t: float, v: float, expected: dict[str, float]) -> None:
    """The table in docs/reference.md#sampling of [VL, image, text] weights."""
    weights = stream_weights(t, v)
    assert weights.keys() == expected.keys()
    for name, value in expected.items():
        assert weights[name] == pytest.approx(value)
    # An explicit temperature overrides the rule: proportional weights for t1-v10.
    assert stream_weights(1, 10, temperature=1.0) == pytest.approx({"pairs": 1 / 12, "image": 10 / 12,
                                                                    "text": 1 / 12})
    assert micro_batch_sizes({"pairs": 1 / 12, "image": 1 / 12, "text": 10 / 12}, 48) == {"pairs": 4, "image": 4,
                                                                                          "text": 40}


THIRDS = {"pairs": 1 / 3, "image": 1 / 3, "text": 1 / 3}


@pytest.mark.parametrize("name, words, images, expected", [
    ("10M_0", 10_000_000, 0, {"text": 1.0}),
    ("10M_40K", 10_000_000, 40_000, THIRDS),
    ("10M_400K", 10_000_000, 400_000, THIRDS),
    ("10M_4M", 10_000_000, 4_000_000, THIRDS),
    ("100M_0", 100_000_000, 0, {"text": 1.0}),
    ("100M_40K", 100_000_000, 40_000, {"pairs": 1 / 12, "image": 1 / 12, "text": 10 / 12}),
    ("100M_400K", 100_000_000, 400_000, THIRDS),
    ("100M_4M", 100_000_000, 4_000_000, THIRDS),
])
def test_grid_configs_carry_the_papers_budgets_and_weights(name: str, words: int, images: int,
                                                           expected: dict[str, float]) -> None:
    """Each grid config: its budgets, the stream weights of the table in docs/reference.md#sampling, 4096 examples per
    step, full size by default and half size with `:model=half`, computed in bf16 over scanned layers, attention as
    the platform's best ("auto")."""
    config = load_config(name)
    assert (config.data.text_words, config.data.images) == (words, images)
    mesh = make_mesh({"data": 1}, jax.devices()[:1])
    run = plan(config, ["text", "image", "pairs"] if images else ["text"], mesh)
    assert run.weights == pytest.approx(expected)
    assert abs(run.examples_per_step - 4096) <= 64
    tpu = dict(dtype="bfloat16", scan_layers=True, attention="auto")
    full, half = (dataclasses.replace(FlavaConfig.from_preset(size), **tpu) for size in ("full", "half"))
    assert model_config(config) == full
    assert model_config(load_config(name, "model=half")) == half != full
    with pytest.raises(ValueError, match="unknown options"):
        load_config(name, "modle=half")


PATIENCE = dict(mlm=3, mim=3, itm=5, global_contrastive=5, mmm_image=5, mmm_text=5)


def _scheduler(streams: dict[str, float], stream_weights_act: bool = True) -> MultimodalScheduler:
    """The reference's monitor (halving, no minimum improvement, MMM-text floor 0.06) with PATIENCE."""
    return MultimodalScheduler(streams, PATIENCE, factor=0.5, min_delta=0.0, mmm_text_floor=0.06,
                               stream_weights_act=stream_weights_act)


def test_scheduler_halves_then_stops_and_never_revives() -> None:
    scheduler = _scheduler({"pairs": 1 / 3, "image": 1 / 3, "text": 1 / 3})
    flat = {"mlm": 5.0, "mim": 4.0, "itm": 0.6, "global_contrastive": 2.0, "mmm_image": 4.0, "mmm_text": 5.0}
    scheduler.update(1, flat)  # first measurements: all improve on infinity
    assert scheduler.weights()["losses"] == dict.fromkeys(PATIENCE, 1.0)
    scheduler.update(2, {**flat, "mlm": 4.0})  # MIM and the multimodal objectives did not improve
    w = scheduler.weights()
    assert w["losses"]["itm"] == 0.5 and w["losses"]["mlm"] == 1.0
    # MIM's stream weight halved: image 1/6 against text and pairs 1/3 each, renormalised.
    assert w["streams"]["image"] == pytest.approx(1 / 6 / (1 / 6 + 2 / 3))
    scheduler.update(3, {**flat, "mlm": 3.0, "mim": 3.0})  # MIM improves again: its wait resets, no revival
    assert scheduler.state["monitors"]["mim"]["wait"] == 0
    assert scheduler.weights()["streams"]["image"] == pytest.approx(1 / 6 / (1 / 6 + 2 / 3))
    for step in range(4, 7):  # ITM and friends reach 5 without improvement: weight 0
        scheduler.update(step, {**flat, "mlm": 3.0 - step, "mim": 3.0 - step})
    assert all(scheduler.weights()["losses"][n] == 0 for n in ("itm", "global_contrastive", "mmm_image", "mmm_text"))
    assert scheduler.weights()["streams"]["pairs"] == 0  # every multimodal objective stopped: the stream too
    assert not scheduler.stopped
    state = json.loads(json.dumps(scheduler.state_dict()))
    restored = _scheduler({"pairs": 1 / 3, "image": 1 / 3, "text": 1 / 3})
    restored.load_state_dict(state)
    assert restored.weights() == scheduler.weights()
    for step in range(7, 10):  # MLM stops; MMM-text is 0 < 0.06: training stops
        scheduler.update(step, {**flat, "mlm": 10.0, "mim": -10.0 - step})
    assert scheduler.stopped and any("training stops" in e for e in scheduler.state["events"])


def test_the_references_loader_kept_its_initial_stream_weights() -> None:
    """stream_weights_act=False: the same decisions, but sampling stays at the initial weights
    (docs/reference.md#scheduler-bugs), while the multimodal loss weights still act."""
    initial = {"pairs": 1 / 3, "image": 1 / 3, "text": 1 / 3}
    flat = {"mlm": 5.0, "mim": 4.0, "itm": 0.6, "global_contrastive": 2.0, "mmm_image": 4.0, "mmm_text": 5.0}
    for acts in (True, False):
        scheduler = _scheduler(initial, stream_weights_act=acts)
        scheduler.update(1, flat)
        scheduler.update(2, {**flat, "mlm": 4.0})
        assert scheduler.state["streams"]["image"] == pytest.approx(1 / 6)  # the decision is taken either way
        assert scheduler.weights()["losses"]["itm"] == 0.5
        expected = 1 / 6 / (1 / 6 + 2 / 3) if acts else 1 / 3
        assert scheduler.weights()["streams"]["image"] == pytest.approx(expected)


def test_text_only_run_stops_with_mlm() -> None:
    scheduler = _scheduler({"text": 1.0})
    assert set(scheduler.state["monitors"]) == {"mlm"}
    for step, loss in enumerate([3.0, 3.0, 3.1, 3.0], start=1):
        scheduler.update(step, {"mlm": loss})
    assert scheduler.stopped
    assert scheduler.state_dict()["monitors"]["mlm"]["best"] == 3.0


@pytest.mark.slow
def test_optimizer_matches_torch_adamw() -> None:
    """Two learning-rate groups, decay on every parameter, clipping at 1, warmup then cosine, frozen codebook:
    three steps fed the same gradients as torch's AdamW give the same parameters."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from flava_jax.model.hf_io import from_hf_state_dict

    config = FlavaConfig.from_preset("tiny")
    torch.manual_seed(0)
    model = transformers.FlavaForPreTraining(transformers.FlavaConfig(**config.to_hf_dict()))
    text = [p for n, p in model.named_parameters() if "text_model" in n and p.requires_grad]
    rest = [p for n, p in model.named_parameters() if "text_model" not in n and p.requires_grad]
    reference = torch.optim.AdamW([{"params": rest, "lr": 1e-3}, {"params": text, "lr": 7.5e-4}],
                                  betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    schedule = transformers.get_cosine_schedule_with_warmup(reference, num_warmup_steps=2, num_training_steps=10)
    optim_config = debug_config(optim__warmup_steps=2, optim__decay_steps=10).optim
    params = from_hf_state_dict(config, model.state_dict())
    tx = optim.build(optim_config, params)
    state = tx.init(params)
    table = hf_name_table(config)
    rng = np.random.default_rng(0)
    codebook_before = jax.tree.map(np.asarray, params["image_codebook"])
    tensors = model.state_dict(keep_vars=True)  # every name, tied ones included, to its Parameter
    for _ in range(3):
        for p in model.parameters():
            if p.requires_grad:
                p.grad = torch.as_tensor(rng.standard_normal(p.shape).astype(np.float32) * 0.3)
        raw = {name: t.grad.numpy().copy() for name, t in tensors.items() if t.grad is not None}
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        grads = {}
        for name, (path, shape) in table.items():  # the same gradients, unclipped: optax clips them itself
            _, _, to_flax = _hf_name(path, len(shape))
            grads[path] = to_flax(raw[name]) if name in raw else np.zeros(shape, np.float32)
        updates, state = tx.update(unflatten_dict(grads), state, params)
        params = optax.apply_updates(params, updates)
        reference.step()
        schedule.step()
    flat = flatten_dict(unstack_layers(params))
    worst = 0.0
    for name, tensor in model.state_dict().items():
        if name not in table:
            continue
        path, shape = table[name]
        _, to_hf, _ = _hf_name(path, len(shape))
        ours, theirs = to_hf(np.asarray(flat[path], np.float64)), tensor.numpy().astype(np.float64)
        worst = max(worst, np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-3))
    assert worst < 1e-5, worst
    jax.tree.map(np.testing.assert_array_equal, codebook_before, jax.tree.map(np.asarray, params["image_codebook"]))


@pytest.mark.parametrize("scale", [0.3, 1e-3])  # a norm far above 1, and one below it (no clipping)
def test_clipping_matches_torch_clip_grad_norm(scale: float) -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    grads = {"a": rng.standard_normal((7, 5)).astype(np.float32) * scale,
             "b": {"c": rng.standard_normal(11).astype(np.float32) * scale}}
    tensors = [torch.nn.Parameter(torch.zeros(g.shape)) for g in (grads["a"], grads["b"]["c"])]
    tensors[0].grad, tensors[1].grad = torch.tensor(grads["a"]), torch.tensor(grads["b"]["c"])
    torch.nn.utils.clip_grad_norm_(tensors, 1.0)
    clip, grads = optim.clip_by_global_norm(1.0), jax.tree.map(jnp.asarray, grads)
    norm = np.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in jax.tree.leaves(grads)))
    # The norm computed by the clip, and handed in as the train step does.
    for extra in ({}, {"grad_norm": jnp.float32(norm)}):
        clipped, _ = clip.update(grads, optax.EmptyState(), **extra)
        np.testing.assert_allclose(np.asarray(clipped["a"]), tensors[0].grad.numpy(), rtol=1e-6)
        np.testing.assert_allclose(np.asarray(clipped["b"]["c"]), tensors[1].grad.numpy(), rtol=1e-6)
