"""The pure train and eval steps: all five objectives of a multitask batch in one program.

A batch is {"text": ..., "image": ..., "pairs": ...}, each stream's arrays stacked as (micro_steps, examples, ...).
`train_step` scans over the micro-steps, accumulating the gradient of

    loss = sum over streams s of  p_s * sum over its objectives o of  w_o * L_o

(p: stream weights, w: loss weights, both traced inputs the scheduler changes without recompiling), averages it,
clips, applies AdamW, clamps the logit scale as HF does in training, and, when any loss or the gradient is not
finite, keeps the previous state and says so in its metrics.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from flava_jax.data.transforms import model_inputs
from flava_jax.model import LOGIT_SCALE_CLAMP_MAX, LOGIT_SCALE_CLAMP_MIN, FlavaForPreTraining
from flava_jax.scheduler import STREAM_OF

Batch = dict[str, dict[str, jax.Array]]
Weights = dict[str, dict[str, jax.Array]]


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


def mask_capacity(length: int, probability: float) -> int:
    """Labelled positions to make room for per example: the binomial mean plus six standard deviations."""
    n = max(length - 2, 1)
    return min(length, math.ceil(n * probability + 6 * math.sqrt(n * probability * (1 - probability))) + 1)


def make_loss_fn(model: FlavaForPreTraining, mlm_probability: float, image_mask_capacity: int | None,
                 deterministic: bool = False) -> Callable[..., tuple[jax.Array, dict[str, jax.Array]]]:
    """loss_fn(params, micro_batch, weights, rng) -> (weighted total, {metric: value}) for one micro-step.

    Losses in the metrics are unweighted, as the reference logs them. Only masked positions reach the heads: up to
    `image_mask_capacity` patches and `mask_capacity(length, mlm_probability)` tokens per example, the labels past
    them counted in `dropped/<loss>`.
    """
    config = model.config
    sizes = (config.image_config.image_size, config.codebook_image_size)

    def loss_fn(params: Any, micro: Batch, weights: Weights, rng: jax.Array) -> tuple[jax.Array, dict]:
        total = jnp.zeros((), jnp.float32)
        metrics: dict[str, jax.Array] = {}
        for i, stream in enumerate(sorted(micro)):
            rngs = {} if deterministic else {"dropout": jax.random.fold_in(rng, i)}
            batch = micro[stream]
            text_capacity = mask_capacity(batch["input_ids"].shape[-1], mlm_probability) if "input_ids" in batch \
                else None
            out = model.apply({"params": params}, **model_inputs(batch, *sizes), deterministic=deterministic,
                              rngs=rngs, text_mask_capacity=text_capacity, image_mask_capacity=image_mask_capacity)
            for name, value in out.loss_info.items():
                total = total + weights["streams"][stream] * weights["losses"][name] * value
                metrics[f"loss/{name}"] = value
                for key, extra in out.metrics[name].items():
                    if key != "count":
                        metrics[f"{key}/{name}"] = extra.astype(jnp.float32)
        return total, metrics

    return loss_fn


def _clamp_logit_scale(params: Any) -> Any:
    """HF clamps logit_scale in place at every training forward; here, after every update."""
    flava = dict(params["flava"])
    flava["logit_scale"] = jnp.clip(flava["logit_scale"], LOGIT_SCALE_CLAMP_MIN, LOGIT_SCALE_CLAMP_MAX)
    return {**params, "flava": flava}


def make_train_step(loss_fn: Callable[..., Any], tx: optax.GradientTransformation) -> Callable[..., Any]:
    """train_step(state, batch, weights, rng) -> (state, metrics), pure; jit it with shardings and donation."""

    def train_step(state: TrainState, batch: Batch, weights: Weights, rng: jax.Array) -> tuple[TrainState, dict]:
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        micro_steps = jax.tree.leaves(batch)[0].shape[0]
        rng = jax.random.fold_in(rng, state.step)

        def micro(carry: Any, xs: Any) -> tuple[Any, None]:
            grads_sum, metrics_sum = carry
            micro_batch, k = xs
            (loss, metrics), grads = grad_fn(state.params, micro_batch, weights, jax.random.fold_in(rng, k))
            metrics = {**metrics, "loss": loss}
            return (jax.tree.map(jnp.add, grads_sum, grads), jax.tree.map(jnp.add, metrics_sum, metrics)), None

        first = jax.tree.map(lambda x: x[0], batch)
        metric_shapes = jax.eval_shape(lambda: {**loss_fn(state.params, first, weights, rng)[1], "loss": 0.0})
        init = (jax.tree.map(jnp.zeros_like, state.params),
                jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), metric_shapes))
        (grads, metrics), _ = jax.lax.scan(micro, init, (batch, jnp.arange(micro_steps)))
        grads = jax.tree.map(lambda g: g / micro_steps, grads)
        metrics = jax.tree.map(lambda m: m / micro_steps, metrics)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(grad_norm) & jnp.all(jnp.stack([jnp.isfinite(v) for v in metrics.values()]))
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = _clamp_logit_scale(optax.apply_updates(state.params, updates))
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
        new_state = TrainState(step=state.step + 1, params=keep(params, state.params),
                               opt_state=keep(opt_state, state.opt_state))
        return new_state, {**metrics, "grad_norm": grad_norm, "finite": finite,
                           "param_norm": optax.global_norm(new_state.params)}

    return train_step


def make_eval_step(model: FlavaForPreTraining, mlm_probability: float,
                   image_mask_capacity: int | None) -> Callable[..., dict]:
    """eval_step(params, batch) -> unweighted losses of one validation batch (HF's eval mode)."""
    loss_fn = make_loss_fn(model, mlm_probability, image_mask_capacity, deterministic=True)
    ones = {"streams": dict.fromkeys(STREAM_OF.values(), 1.0), "losses": dict.fromkeys(STREAM_OF, 1.0)}

    def eval_step(params: Any, batch: Batch) -> dict[str, jax.Array]:
        return loss_fn(params, batch, ones, jax.random.key(0))[1]

    return eval_step
