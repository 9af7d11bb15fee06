"""The keys a training run reads, checked before anything runs, so that a config missing one fails at start-up
naming it. configs/base.py holds every default; this module holds names only (the data section's come from the
settings dataclasses that read it, the evaluators' from their types, the scheduler's objectives from the scheduler)."""

from __future__ import annotations

import dataclasses
from typing import Any

from flava_jax.common.settings import missing_keys
from flava_jax.data.images import FetchSettings
from flava_jax.data.pipeline import PipelineSettings
from flava_jax.data.prepare import PrepareSettings
from flava_jax.train.scheduler import STREAM_OF
from flava_jax.train.sharding import MESH_AXES

KEYS = {
    "config": ("seed", "model", "total_steps", "checkpoint_every_steps", "keep_checkpoints", "log_every_steps",
               "compilation_cache_dir", "host_malloc", "data", "train", "optim", "sharding", "eval", "scheduler"),
    "config.data": ("dir", "stage_dir", "sources", "fetch"),
    "config.train": ("batch_size", "micro_batch_size", "sampling_temperature", "text_percent", "image_percent",
                     "contrastive_negatives"),
    "config.optim": ("lr_groups", "frozen", "no_decay", "b1", "b2", "eps", "weight_decay", "warmup_steps",
                     "decay_steps", "grad_clip_norm"),
    "config.sharding": ("mesh", "fsdp", "fsdp_min_size", "rules", "activation_rules"),
    "config.sharding.mesh": MESH_AXES,
    "config.eval": ("every_steps", "evaluators"),
    "config.scheduler": ("enabled", "patience", "factor", "min_delta", "mmm_text_floor", "stream_weights_act"),
    "config.scheduler.patience": tuple(STREAM_OF),
}
# Fields the settings take from elsewhere than their own key of config.data.
_DERIVED = {"seed", "vocab_size", "fetch", "data_dir", "grid_size"}


def _fields(cls: Any) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls) if f.name not in _DERIVED)


def check_keys(config: Any) -> None:
    """Raise ConfigError naming every key of KEYS, of the data settings and of config.data.fetch that `config`
    lacks, section by section."""
    keys = dict(KEYS)
    keys["config.data"] = tuple(dict.fromkeys(
        keys["config.data"] + _fields(PrepareSettings) + _fields(PipelineSettings)))
    keys["config.data.fetch"] = _fields(FetchSettings)
    for path, names in keys.items():
        section = config
        for part in path.split(".")[1:]:
            section = section[part]
        missing_keys(section, path, names)
