"""flava_jax: FLAVA pretraining in JAX/Flax, numerically matching transformers' FlavaForPreTraining."""

from flava_jax.config import ConfigError, FlavaConfig
from flava_jax.hf import CheckpointError, from_pretrained, save_pretrained
from flava_jax.inputs import InputError, check_inputs
from flava_jax.model import FlavaForPreTraining, FlavaForPreTrainingOutput, FlavaLosses

__all__ = [
    "CheckpointError",
    "ConfigError",
    "FlavaConfig",
    "FlavaForPreTraining",
    "FlavaForPreTrainingOutput",
    "FlavaLosses",
    "InputError",
    "check_inputs",
    "from_pretrained",
    "save_pretrained",
]
__version__ = "0.1.0"
