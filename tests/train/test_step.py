"""step.make_train_step on a toy loss: the update by hand with one micro-step and with several (the gradient is
their mean), and the non-finite guard that keeps the previous state."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flava_jax.train.step import ParamRead, TrainState, make_train_step

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


def bf16_loss(params: dict, micro: dict, weights: dict, rng: jax.Array, contrastive: object = None) -> tuple:
    """A layer as the model computes one in bf16: the kernel cast at use, the product in bf16, the loss in f32."""
    x, y = micro["text"]["x"], micro["text"]["y"]
    kernel = params["flava"]["dense"]["kernel"]
    out = (x.astype(jnp.bfloat16) @ kernel.astype(jnp.bfloat16)).astype(jnp.float32) + params["flava"]["scale"]
    loss = jnp.mean((out[:, 0] - y) ** 2)
    return loss, {"loss/mlm": loss}


def test_kernels_cast_once_a_step_give_the_same_update_as_cast_at_use() -> None:
    """ParamRead(kernel_dtype=bf16): the micro-steps read a bf16 copy of the kernels (not the other leaves) and
    their f32 gradients are what casting at every use gives, bit for bit, over 3 micro-steps of Adam."""
    tx = optax.adam(LR)
    rng = np.random.default_rng(0)
    params = {"flava": {"dense": {"kernel": jnp.asarray(rng.standard_normal((3, 2)), jnp.float32)},
                        "scale": jnp.asarray(0.25), "logit_scale": jnp.asarray(2.0)}}
    read = ParamRead(kernel_dtype=jnp.bfloat16)
    view = read.view(params)
    assert view["flava"]["dense"]["kernel"].dtype == jnp.bfloat16
    assert view["flava"]["scale"].dtype == view["flava"]["logit_scale"].dtype == jnp.float32
    micro = jax.tree.map(lambda a: a[0], batch(1, X))
    grads = jax.grad(lambda p: bf16_loss(p, micro, {}, jax.random.key(0))[0])(view)
    assert grads["flava"]["dense"]["kernel"].dtype == jnp.bfloat16

    state = TrainState(step=jnp.asarray(0), params=params, opt_state=tx.init(params))
    at_use, _ = jax.jit(make_train_step(bf16_loss, tx))(state, batch(3, X), {}, jax.random.key(0))
    once, _ = jax.jit(make_train_step(bf16_loss, tx, read=read))(state, batch(3, X), {}, jax.random.key(0))
    for a, b in zip(jax.tree.leaves(at_use.params), jax.tree.leaves(once.params), strict=True):
        assert a.dtype == b.dtype == jnp.float32
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(at_use.params["flava"]["dense"]["kernel"], params["flava"]["dense"]["kernel"])
