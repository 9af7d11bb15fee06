"""losses.cross_entropy against torch's cross-entropy and a numpy argmax: loss, count and accuracy."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from flava_jax.model.losses import IGNORE_INDEX, cross_entropy


def test_cross_entropy_matches_torch_and_argmax_accuracy() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 7, 50)).astype(np.float32) * 3
    labels = rng.integers(0, 50, (3, 7))
    labels[0, :3] = IGNORE_INDEX
    where = np.ones((3, 7), bool)
    where[2, 5:] = False
    # Make some predictions right, so the accuracy is neither 0 nor 1.
    labels[1, :4] = logits[1, :4].argmax(-1)

    loss, metrics = cross_entropy(jnp.asarray(logits), jnp.asarray(labels), where=jnp.asarray(where))

    scored = (labels != IGNORE_INDEX) & where
    expected = torch.nn.functional.cross_entropy(torch.from_numpy(logits[scored]), torch.from_numpy(labels[scored]))
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    assert int(metrics["count"]) == scored.sum()
    right = (logits.argmax(-1) == labels)[scored]
    assert 0 < right.mean() < 1
    assert float(metrics["accuracy"]) == pytest.approx(right.mean())


def test_accuracy_counts_an_exact_tie_as_correct_and_nothing_scored_as_zero() -> None:
    logits = jnp.asarray([[1.0, 3.0, 3.0, 0.0], [5.0, 1.0, 1.0, 1.0]])
    # Row 0: label 2 ties with 1 for the top logit; row 1: label 1 is not the top.
    _, metrics = cross_entropy(logits, jnp.asarray([2, 1]))
    assert float(metrics["accuracy"]) == 0.5
    loss, metrics = cross_entropy(logits, jnp.asarray([IGNORE_INDEX, IGNORE_INDEX]))
    assert (float(loss), int(metrics["count"]), float(metrics["accuracy"])) == (0.0, 0, 0.0)
