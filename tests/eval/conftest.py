"""What the evaluator's tests share: the tiny model with spread-out weights, and its export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest

from tests.eval.exports import tiny_export


@pytest.fixture(scope="module")
def spread_params(tiny_params: Any) -> Any:
    """The tiny model's parameters spread out, so scores differ clearly between sentences and images."""
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda x: np.asarray(x) + 0.1 * rng.standard_normal(x.shape).astype(np.float32),
                        tiny_params)


@pytest.fixture(scope="module")
def export(debug_data: Path, tmp_path_factory: pytest.TempPathFactory, spread_params: Any) -> Path:
    """`spread_params` exported with the sample's tokenizer."""
    return tiny_export(spread_params, debug_data, tmp_path_factory.mktemp("export"))
