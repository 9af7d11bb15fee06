"""step.make_train_step on a toy loss: the update by hand with one micro-step and with several (the gradient is
their mean), and the non-finite guard that keeps the previous state."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flava_jax.train.step import TrainState, make_train_step

LR = 0.01


def toy_loss(params: dict, micro: dict, weights: dict, rng: jax.Array, contrastive: object = None) -> tuple:
    x, y = micro["text"]["x"], micro["text"]["y"]
    loss = jnp.mean((x @ params["flava"]["w"] - y) ** 2)
    return loss, {"loss/mlm": loss}


def start(tx: optax.GradientTransformation) -> tuple[TrainState, dict]:
    params = {"flava": {"w": jnp.asarray([0.5, -1.0, 2.0]), "logit_scale": jnp.asarray(2.0)}}
    return TrainState(step=jnp.asarray(0), params=params, opt_state=tx.init(params)), params


def batch(micro_steps: int, x: np.ndarray) -> dict:
    y = np.arange(x.shape[0], dtype=np.float32)
    return {"text": {"x": jnp.asarray(np.stack([x] * micro_steps)), "y": jnp.asarray(np.stack([y] * micro_steps))}}


X = np.asarray([[1.0, 2.0, 0.5], [0.0, 1.0, -1.0], [2.0, 0.0, 1.0]], np.float32)


def test_sgd_step_by_hand_with_one_and_with_three_micro_steps() -> None:
    tx = optax.sgd(LR)
    state, params = start(tx)
    step = jax.jit(make_train_step(toy_loss, tx))
    w = np.asarray(params["flava"]["w"])
    y = np.arange(3, dtype=np.float32)
    expected = w - LR * 2 * X.T @ (X @ w - y) / 3
    one, metrics = step(state, batch(1, X), {}, jax.random.key(0))
    three, _ = step(state, batch(3, X), {}, jax.random.key(0))
    np.testing.assert_allclose(one.params["flava"]["w"], expected, rtol=1e-6)
    np.testing.assert_allclose(three.params["flava"]["w"], expected, rtol=1e-6)
    assert bool(metrics["finite"]) and int(one.step) == 1
    np.testing.assert_allclose(float(metrics["loss"]), np.mean((X @ w - y) ** 2), rtol=1e-6)


def test_a_non_finite_loss_keeps_the_previous_state() -> None:
    tx = optax.adam(LR)
    state, _ = start(tx)
    step = jax.jit(make_train_step(toy_loss, tx))
    bad = X.copy()
    bad[1, 2] = np.nan
    for micro_steps in (1, 2):
        new, metrics = step(state, batch(micro_steps, bad), {}, jax.random.key(0))
        assert not bool(metrics["finite"]) and int(new.step) == 1
        for kept, before in zip(jax.tree.leaves((new.params, new.opt_state)),
                                jax.tree.leaves((state.params, state.opt_state)), strict=True):
            np.testing.assert_array_equal(kept, before)
