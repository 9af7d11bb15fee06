"""flava_jax: FLAVA pretraining in JAX/Flax, numerically matching transformers' FlavaForPreTraining.

Floors, each importing only from those before it: `common` (shared by stages, no framework), `model`, `data`,
`train`; `eval` (the PyTorch side) reads `common` and `data` only. The commands (`python -m flava_jax.main`,
`export`, `evaluate`, `report`, `aot`) sit at this level. The public API below loads on first use, so that the
PyTorch evaluator never imports Flax.
"""

import importlib
from typing import Any

_API = {
    "CheckpointError": "flava_jax.model.hf_io",
    "ConfigError": "flava_jax.common.settings",
    "FlavaConfig": "flava_jax.model.config",
    "FlavaForPreTraining": "flava_jax.model.flava",
    "FlavaForPreTrainingOutput": "flava_jax.model.flava",
    "FlavaLosses": "flava_jax.model.flava",
    "InputError": "flava_jax.model.input_checks",
    "check_inputs": "flava_jax.model.input_checks",
    "from_pretrained": "flava_jax.model.hf_io",
    "save_pretrained": "flava_jax.model.hf_io",
}
__all__ = sorted(_API)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'flava_jax' has no attribute {name!r}")
    return getattr(importlib.import_module(_API[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
