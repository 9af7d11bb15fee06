"""The pure train and eval steps: all five objectives of a multitask batch in one program.

A batch is {"text": ..., "image": ..., "pairs": ...}, each stream's arrays stacked as (micro_steps, examples, ...).
`train_step` scans over the micro-steps, accumulating the gradient of

    loss = sum over streams s of  p_s * sum over its objectives o of  w_o * L_o

(p: stream weights, w: loss weights, both traced inputs the scheduler changes without recompiling), averages it,
clips, applies AdamW, clamps the logit scale as HF does in training, and, when any loss or the gradient is not
finite, keeps the previous state and says so in its metrics.

The global contrastive loss takes its negatives from the micro-batch (all devices), as the reference does. With
`contrastive_negatives="global_batch"` it takes them from the whole step instead, exactly (the GradCache method):
a forward pass of the unimodal encoders embeds every pair of the step; the loss over all of them gives the gradient
with respect to each embedding, and each micro-step then back-propagates its own embeddings' share through the
encoders. That costs one more forward pass of the text and image encoders on the pairs.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import flax.struct
import flax.traverse_util
import jax
import jax.numpy as jnp
import optax

from flava_jax.data.transforms import device_encoder_pixels, model_inputs
from flava_jax.model import losses
from flava_jax.model.flava import LOGIT_SCALE_CLAMP_MAX, LOGIT_SCALE_CLAMP_MIN, FlavaForPreTraining
from flava_jax.train.scheduler import STREAM_OF

Batch = dict[str, dict[str, jax.Array]]
Weights = dict[str, dict[str, jax.Array]]
_STREAMS = tuple(sorted(set(STREAM_OF.values())))  # image, pairs, text


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
    """loss_fn(params, micro_batch, weights, rng, contrastive=None) -> (weighted total, {metric: value}) for one
    micro-step.

    Losses in the metrics are unweighted, as the reference logs them. Only masked positions reach the heads: up to
    `image_mask_capacity` patches and `mask_capacity(length, mlm_probability)` tokens per example, the labels past
    them counted in `dropped/<loss>`. `contrastive` (from `make_contrastive_cache`, one micro-step's slice) replaces
    the micro-batch contrastive loss with the step-wide one: its value, and its gradient through this micro-step's
    embeddings.
    """
    config = model.config
    sizes = (config.image_config.image_size, config.codebook_image_size)

    def loss_fn(params: Any, micro: Batch, weights: Weights, rng: jax.Array,
                contrastive: dict[str, Any] | None = None) -> tuple[jax.Array, dict]:
        total = jnp.zeros((), jnp.float32)
        metrics: dict[str, jax.Array] = {}
        for stream in sorted(micro):
            # One dropout stream per data stream, the same whether or not the others are in `micro`.
            rngs = {} if deterministic else {"dropout": jax.random.fold_in(rng, _STREAMS.index(stream))}
            batch = micro[stream]
            text_capacity = mask_capacity(batch["input_ids"].shape[-1], mlm_probability) if "input_ids" in batch \
                else None
            out = model.apply({"params": params}, **model_inputs(batch, *sizes), deterministic=deterministic,
                              rngs=rngs, text_mask_capacity=text_capacity, image_mask_capacity=image_mask_capacity)
            for name, value in out.loss_info.items():
                extras = out.metrics[name]
                if name == "global_contrastive" and contrastive is not None:
                    # The step-wide value, with the gradient <d loss / d embeddings, embeddings> carries.
                    surrogate = ((out.image_contrastive_embedding * contrastive["image"]).sum()
                                 + (out.text_contrastive_embedding * contrastive["text"]).sum())
                    value = contrastive["loss"] + surrogate - jax.lax.stop_gradient(surrogate)
                    extras = contrastive["metrics"]
                total = total + weights["streams"][stream] * weights["losses"][name] * value
                metrics[f"loss/{name}"] = value
                for key, extra in extras.items():
                    if key != "count":
                        metrics[f"{key}/{name}"] = extra.astype(jnp.float32)
        return total, metrics

    return loss_fn


def make_contrastive_cache(model: FlavaForPreTraining) -> Callable[..., dict[str, Any]]:
    """cache(params, pairs) -> the global contrastive loss over every pair of a step, for `make_train_step`.

    `pairs` is the step's stacked pairs stream (micro_steps, examples, ...). Returns the (weighted) loss and its
    metrics, its gradient with respect to each embedding ("image", "text": (micro_steps, examples, P), scaled by
    micro_steps because the step averages micro-step gradients) and with respect to the logit scale ("scale").
    Rows are the positive pairs of each micro-batch (HF's rule per micro-batch); columns are every text and image.
    """
    config = model.config
    image_size = config.image_config.image_size
    weight = config.global_contrastive_weight
    keys = ("input_ids", "attention_mask", "token_type_ids", "position_ids")

    def embed(params: Any, micro: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array, jax.Array]:
        # Training mode (the logit scale clamped); the trainer refuses this switch when dropout is on, so the
        # embeddings are the ones the micro-steps will compute.
        return model.apply({"params": params}, pixel_values=device_encoder_pixels(micro["pixels"], image_size),
                           **{k: micro[k] for k in keys if k in micro}, deterministic=False,
                           method=FlavaForPreTraining.contrastive_embeddings)

    def cache(params: Any, pairs: dict[str, jax.Array]) -> dict[str, Any]:
        micro_steps = pairs["input_ids"].shape[0]
        image, text, scale = jax.lax.map(functools.partial(embed, params), pairs)
        positive = pairs["itm_labels"] != 0
        rows = (positive | ~positive.any(axis=1, keepdims=True)).reshape(-1)

        def loss(image: jax.Array, text: jax.Array, scale: jax.Array) -> tuple[jax.Array, dict]:
            flat = lambda x: x.reshape(-1, x.shape[-1])  # noqa: E731
            value, metrics = losses.global_contrastive_loss(
                *losses.contrastive_logits(flat(image), flat(text), scale), row_mask=rows)
            return value * weight, metrics

        (value, metrics), (d_image, d_text, d_scale) = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(
            image, text, scale[0])
        return {"loss": value, "metrics": metrics, "image": d_image * micro_steps, "text": d_text * micro_steps,
                "scale": d_scale}

    return cache


def _clamp_logit_scale(params: Any) -> Any:
    """HF clamps logit_scale in place at every training forward; here, after every update."""
    flava = dict(params["flava"])
    flava["logit_scale"] = jnp.clip(flava["logit_scale"], LOGIT_SCALE_CLAMP_MIN, LOGIT_SCALE_CLAMP_MAX)
    return {**params, "flava": flava}


@dataclasses.dataclass(frozen=True)
class ParamRead:
    """The copy of the parameters a step's micro-steps read, made once a step rather than at every micro-step.

    `kernel_dtype`: matrix-product and convolution kernels cast to the compute dtype (the model casts them at every
    use; reading the cast copy moves half the bytes). Within a stream's forward pass a kernel used twice (the pairs'
    masked and unmasked passes) sums its two gradients in that dtype, as torch autocast's cached weight casts do;
    each stream's gradient is converted to the parameters' dtype before the streams' are added, as the reference
    accumulates the gradients of its one-stream micro-batches.

    `gathered`, `stored`: partition specs; the micro-steps read the parameters laid out as `gathered` (FSDP's shards
    gathered once a step) and reduce each micro-step's gradient into the `stored` layout. Trace a step with
    `gathered` under a mesh.
    """

    kernel_dtype: Any = None
    gathered: Any = None
    stored: Any = None

    def view(self, params: Any) -> Any:
        if self.kernel_dtype is not None:
            params = flax.traverse_util.path_aware_map(
                lambda path, x: x.astype(self.kernel_dtype) if path[-1] == "kernel" else x, params)
        return params if self.gathered is None else jax.lax.with_sharding_constraint(params, self.gathered)

    def stored_layout(self, grads: Any) -> Any:
        """A micro-step's gradient, reduced into the layout the stored parameters have."""
        return grads if self.stored is None else jax.lax.with_sharding_constraint(grads, self.stored)


def make_train_step(loss_fn: Callable[..., Any], tx: optax.GradientTransformation,
                    contrastive_cache: Callable[..., dict[str, Any]] | None = None,
                    read: ParamRead = ParamRead()) -> Callable[..., Any]:
    """train_step(state, batch, weights, rng) -> (state, metrics), pure; jit it with shardings and donation.

    With `contrastive_cache` (from `make_contrastive_cache`), the contrastive negatives are every pair of the step.
    `tx.update` gets the gradient's global norm as the extra argument `grad_norm` (`optim.clip_by_global_norm`
    uses it; transformations without extra arguments ignore it). `read`: the copy of the parameters the
    micro-steps read (see ParamRead).
    """
    tx = optax.with_extra_args_support(tx)

    def train_step(state: TrainState, batch: Batch, weights: Weights, rng: jax.Array) -> tuple[TrainState, dict]:
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        micro_steps = jax.tree.leaves(batch)[0].shape[0]
        rng = jax.random.fold_in(rng, state.step)
        view = read.view(state.params)
        cache = None
        if contrastive_cache is not None and "pairs" in batch and micro_steps > 1:
            cache = contrastive_cache(view, batch["pairs"])
        per_micro = None if cache is None else {"image": cache["image"], "text": cache["text"]}

        def contrastive(k_slice: Any) -> dict[str, Any] | None:
            return None if cache is None else {"loss": cache["loss"], "metrics": cache["metrics"], **k_slice}

        def micro(carry: Any, xs: Any) -> tuple[Any, None]:
            micro_batch, k, k_slice = xs
            key, loss, metrics, grads = jax.random.fold_in(rng, k), 0.0, {}, None
            for stream in sorted(micro_batch):  # each stream's gradient apart, in the parameters' dtype (ParamRead)
                (stream_loss, stream_metrics), stream_grads = grad_fn(view, {stream: micro_batch[stream]}, weights,
                                                                      key, contrastive(k_slice))
                stream_grads = jax.tree.map(lambda g, p: g.astype(p.dtype), stream_grads, state.params)
                grads = stream_grads if grads is None else jax.tree.map(jnp.add, grads, stream_grads)
                loss, metrics = loss + stream_loss, {**metrics, **stream_metrics}
            grads = read.stored_layout(grads)
            return (grads if carry is None else jax.tree.map(jnp.add, carry, grads)), {**metrics, "loss": loss}

        xs = (batch, jnp.arange(micro_steps), per_micro)
        if micro_steps == 1:
            # No loop: no zero-initialised carry to add into, no copies into and out of a loop body.
            grads, metrics = micro(None, jax.tree.map(lambda x: x[0], xs))
        else:
            # The scalar metrics leave the loop stacked rather than carried: a carry would need their shapes up
            # front, and getting them means tracing the loss's forward pass once more.
            grads, metrics = jax.lax.scan(micro, jax.tree.map(jnp.zeros_like, state.params), xs)
            grads = jax.tree.map(lambda g: g / micro_steps, grads)
            metrics = jax.tree.map(lambda m: m.sum(0), metrics)
        if cache is not None:
            # The logit scale's share is not in any micro-step's: add it once, weighted as the loss is.
            flava = dict(grads["flava"])
            flava["logit_scale"] = flava["logit_scale"] + (
                weights["streams"]["pairs"] * weights["losses"]["global_contrastive"] * cache["scale"]
            ).astype(flava["logit_scale"].dtype)
            grads = {**grads, "flava": flava}
        metrics = jax.tree.map(lambda m: m / micro_steps, metrics)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(grad_norm) & jnp.all(jnp.stack([jnp.isfinite(v) for v in metrics.values()]))

        def update() -> tuple[Any, Any]:
            updates, opt_state = tx.update(grads, state.opt_state, state.params, grad_norm=grad_norm)
            return _clamp_logit_scale(optax.apply_updates(state.params, updates)), opt_state

        # A branch, not a select per leaf: a select reads and writes the whole state once more every step.
        params, opt_state = jax.lax.cond(finite, update, lambda: (state.params, state.opt_state))
        new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, {**metrics, "grad_norm": grad_norm, "finite": finite,
                           "param_norm": optax.tree.norm(new_state.params)}

    return train_step


def make_eval_step(model: FlavaForPreTraining, mlm_probability: float,
                   image_mask_capacity: int | None) -> Callable[..., dict]:
    """eval_step(params, batch) -> unweighted losses of one validation batch (HF's eval mode)."""
    loss_fn = make_loss_fn(model, mlm_probability, image_mask_capacity, deterministic=True)
    ones = {"streams": dict.fromkeys(STREAM_OF.values(), 1.0), "losses": dict.fromkeys(STREAM_OF, 1.0)}

    def eval_step(params: Any, batch: Batch) -> dict[str, jax.Array]:
        return loss_fn(params, batch, ones, jax.random.key(0))[1]

    return eval_step
