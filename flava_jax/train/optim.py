"""The reference's optimiser (docs/reference.md#optimiser), with its policy as config data.

AdamW (0.9, 0.999, 1e-8, weight decay 0.1), one learning rate per parameter group chosen by path rules (the text
encoder 7.5e-4, the rest 1e-3), linear warmup then cosine decay to zero, global-norm clipping at 1.0, and frozen
parameters (the image codebook) that are neither updated nor decayed. torch's AdamW and optax's adamw apply the
same decoupled decay: p <- p - lr * (adam_update + wd * p).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax.traverse_util import flatten_dict, unflatten_dict

FROZEN = "frozen"


def learning_rate(peak: float, warmup_steps: int, decay_steps: int) -> optax.Schedule:
    """0 -> peak linearly over `warmup_steps`, then a half cosine to 0 at `decay_steps` (HF's
    get_cosine_schedule_with_warmup)."""
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup_steps, max(decay_steps, warmup_steps + 1), 0.0)


def _match(path: str, patterns: Sequence[str]) -> bool:
    return any(re.fullmatch(p, path) for p in patterns)


def param_labels(params: Any, lr_groups: Sequence[tuple[str, float]], frozen: Sequence[str]) -> Any:
    """Per parameter: "frozen", or the index (as a string) of the first learning-rate group whose regex matches."""
    labels = {}
    for keys in flatten_dict(params):
        path = "/".join(keys)
        if _match(path, frozen):
            labels[keys] = FROZEN
            continue
        group = next((i for i, (pattern, _) in enumerate(lr_groups) if re.fullmatch(pattern, path)), None)
        if group is None:
            raise ValueError(f"optim.lr_groups: no group matches parameter {path}; end the list with ('.*', lr)")
        labels[keys] = str(group)
    return unflatten_dict(labels)


def decay_mask(params: Any, no_decay: Sequence[str]) -> Any:
    """True where weight decay applies (everywhere in the reference; `no_decay` regexes exempt parameters)."""
    return unflatten_dict({keys: not _match("/".join(keys), no_decay) for keys in flatten_dict(params)})


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformationExtraArgs:
    """torch's `clip_grad_norm_`, which the reference calls: every gradient times min(1, max_norm / (norm + 1e-6)).

    A scalar factor, where optax's clip selects per element between g and g / norm * max_norm: XLA writes that
    quotient out as one more full pass over the gradients before Adam reads them.
    `update` takes the norm as the extra argument `grad_norm` when the caller has it already (the train step
    computes it for its finite check, outside the branch that updates), which saves another full read.
    """

    def update(updates: Any, state: optax.EmptyState, params: Any = None,
               grad_norm: jax.Array | None = None) -> tuple[Any, optax.EmptyState]:
        del params
        norm = optax.tree.norm(updates) if grad_norm is None else grad_norm
        factor = jnp.minimum(1.0, max_norm / (norm + 1e-6))
        return jax.tree.map(lambda g: g * factor.astype(g.dtype), updates), state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)


def build(optim: Any, params: Any) -> optax.GradientTransformation:
    """The optimiser described by a config's `optim` section, for parameters shaped like `params`."""
    labels = param_labels(params, optim.lr_groups, optim.frozen)
    mask = decay_mask(params, optim.no_decay)
    groups = {
        str(i): optax.adamw(learning_rate(lr, optim.warmup_steps, optim.decay_steps), b1=optim.b1, b2=optim.b2,
                            eps=optim.eps, weight_decay=optim.weight_decay, mask=mask)
        for i, (_, lr) in enumerate(optim.lr_groups)
    }
    groups[FROZEN] = optax.set_to_zero()
    return optax.chain(clip_by_global_norm(optim.grad_clip_norm), optax.partition(groups, labels))


def learning_rates(optim: Any, step: int) -> dict[str, float]:
    """Each group's learning rate at `step` (for logging)."""
    return {f"lr/{i}": float(learning_rate(lr, optim.warmup_steps, optim.decay_steps)(step))
            for i, (_, lr) in enumerate(optim.lr_groups)}

