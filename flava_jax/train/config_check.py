"""The keys a training run reads and the values they may take, checked before anything runs, so that a config
missing a key or holding a bad value fails at start-up naming it. configs/base.py holds every default; this module
holds names (the data section's come from the settings dataclasses that read it, the evaluators' from their types,
the scheduler's objectives from the scheduler) and the rules for values, as a table. FlavaConfig checks config.model,
evaluators.specs the evaluator entries and their intervals, sharding.make_mesh the mesh."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flava_jax.common.settings import ConfigError, missing_keys
from flava_jax.data.images import FetchSettings
from flava_jax.data.pipeline import PipelineSettings
from flava_jax.data.prepare import PrepareSettings
from flava_jax.data.wordpiece import BUNDLED
from flava_jax.train.scheduler import STREAM_OF
from flava_jax.train.sharding import MESH_AXES

KEYS = {
    "config": ("seed", "model", "total_steps", "checkpoint_every_steps", "keep_checkpoints", "log_every_steps",
               "compilation_cache_dir", "init_from", "host_malloc", "allow_config_change", "data", "train", "optim",
               "sharding", "eval", "scheduler"),
    "config.data": ("dir", "stage_dir", "sources", "text_sources", "image_sources", "pair_sources", "fetch"),
    "config.train": ("batch_size", "micro_batch_size", "sampling_temperature", "text_percent", "image_percent",
                     "contrastive_negatives"),
    "config.optim": ("lr_groups", "frozen", "no_decay", "b1", "b2", "eps", "weight_decay", "warmup_steps",
                     "decay_steps", "grad_clip_norm"),
    "config.sharding": ("mesh", "fsdp", "fsdp_min_size", "gather_weights", "rules", "activation_rules"),
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


@dataclasses.dataclass(frozen=True)
class Rule:
    """What a valid value is (for the error) and the test of one."""

    what: str
    ok: Callable[[Any], bool]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, float) or _is_int(value)) and not math.isnan(value)


def _ints(low: int, high: int | None = None) -> Rule:
    what = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
    return Rule(what, lambda v: _is_int(v) and v >= low and (high is None or v <= high))


def _range(low: float, high: float, open_low: bool = False, open_high: bool = False) -> Rule:
    what = f"a number in {'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
    return Rule(what, lambda v: _is_number(v) and (low < v if open_low else low <= v)
                and (v < high if open_high else v <= high))


def _one_of(*values: str) -> Rule:
    return Rule(f"one of {list(values)}", lambda v: v in values)


def _optional(rule: Rule) -> Rule:
    return Rule(f"None or {rule.what}", lambda v: v is None or rule.ok(v))


def _sequence(rule: Rule) -> Rule:
    return Rule(f"a tuple of items each {rule.what}", lambda v: isinstance(v, (tuple, list)) and all(map(rule.ok, v)))


def _tokenizer(kind: Any) -> bool:
    """A known name, or what can only be a path (make_tokenizer says, when prepare runs, if it holds no vocab)."""
    return isinstance(kind, str) and (kind == "sentencepiece" or kind in BUNDLED or kind.endswith(".txt")
                                      or os.sep in kind or Path(kind).expanduser().exists())


POSITIVE = _ints(1)
COUNT = _ints(0)
PROBABILITY = _range(0, 1)
NON_NEGATIVE = _range(0, math.inf)
STRING = Rule("a string", lambda v: isinstance(v, str))
BOOL = Rule("True or False", lambda v: isinstance(v, bool))
# Rules for values, by dotted key; keys checked elsewhere (module docstring) are not here.
RULES: dict[str, Rule] = {
    "config.seed": COUNT,  # numpy's generators (the data pipeline's) refuse negative seeds
    "config.total_steps": POSITIVE,
    "config.checkpoint_every_steps": POSITIVE,
    "config.keep_checkpoints": POSITIVE,
    "config.log_every_steps": POSITIVE,
    "config.init_from": _optional(STRING),
    "config.data.sources": _sequence(STRING),
    **{f"config.data.{stream}_sources": _optional(_sequence(STRING)) for stream in ("text", "image", "pair")},
    "config.data.image_dirs": _sequence(STRING),
    "config.data.text_words": _ints(-1),  # -1: everything the sources hold
    "config.data.images": _ints(-1),
    "config.data.heldout_fraction": _range(0, 1, open_low=True, open_high=True),
    "config.data.heldout_max_texts": COUNT,
    "config.data.heldout_max_images": COUNT,
    "config.data.image_size": POSITIVE,
    "config.data.image_resize": _one_of("squash", "crop"),
    "config.data.jpeg_quality": _ints(1, 100),
    "config.data.image_reencode": BOOL,  # ConfigDict's own type check lets None in
    "config.data.max_image_pixels": POSITIVE,
    "config.data.chunk_records": POSITIVE,
    "config.data.budget_unit": _one_of("count", "percent"),
    "config.data.fetch_batch": POSITIVE,
    "config.data.prepare_workers": _optional(POSITIVE),  # None: every core
    "config.data.tokenizer": Rule(f"'sentencepiece', one of {sorted(BUNDLED)}, or a BERT vocab.txt or its directory",
                                  _tokenizer),
    "config.data.tokenizer_max_texts": POSITIVE,
    "config.data.fetch.timeout": _range(0, math.inf, open_low=True),
    "config.data.fetch.retries": COUNT,
    "config.data.fetch.backoff": NON_NEGATIVE,
    "config.data.fetch.max_backoff": NON_NEGATIVE,
    "config.data.fetch.workers": POSITIVE,
    "config.data.fetch.max_bytes": POSITIVE,
    "config.data.text_max_length": POSITIVE,
    "config.data.pair_max_length": POSITIVE,
    "config.data.mlm_probability": PROBABILITY,
    "config.data.mask_patches": COUNT,
    "config.data.mask_min_block": POSITIVE,
    "config.data.mask_min_aspect": _range(0, 1, open_low=True),
    "config.data.itm_negative_probability": PROBABILITY,
    "config.data.image_control": _one_of("none", "noise", "shuffled_pairs"),
    "config.data.length_buckets": _sequence(POSITIVE),
    "config.data.bucket_window": POSITIVE,
    "config.data.workers": COUNT,  # 0: transforms in the training process
    "config.data.worker_buffer": POSITIVE,
    "config.data.read_threads": COUNT,
    "config.data.read_buffer": COUNT,
    "config.train.batch_size": POSITIVE,
    "config.train.micro_batch_size": POSITIVE,
    "config.train.sampling_temperature": _optional(NON_NEGATIVE),
    "config.train.text_percent": _optional(_range(0, 100)),  # 0: no such stream, as a budget of 0
    "config.train.image_percent": _optional(_range(0, 100)),
    "config.train.contrastive_negatives": _one_of("micro_batch", "global_batch"),
    "config.optim.b1": _range(0, 1, open_high=True),
    "config.optim.b2": _range(0, 1, open_high=True),
    "config.optim.eps": _range(0, math.inf, open_low=True),  # Adam divides by sqrt(nu) + eps, 0 where nu is
    "config.optim.weight_decay": NON_NEGATIVE,
    "config.optim.warmup_steps": COUNT,
    "config.optim.decay_steps": POSITIVE,
    "config.optim.grad_clip_norm": _range(0, math.inf, open_low=True),
    "config.sharding.fsdp_min_size": COUNT,
    "config.sharding.gather_weights": _one_of("micro_step", "step"),
    "config.eval.every_steps": POSITIVE,
    "config.scheduler.factor": PROBABILITY,
    "config.scheduler.min_delta": NON_NEGATIVE,
    "config.scheduler.mmm_text_floor": PROBABILITY,
    **{f"config.scheduler.patience.{name}": COUNT for name in STREAM_OF},
}
# Rules for the options of config.eval.evaluators entries, by option name (whichever types take them).
EVALUATOR_RULES: dict[str, Rule] = {"batch_size": POSITIVE, "batches": POSITIVE, "texts": COUNT,
                                    "max_length": POSITIVE, "limit": _optional(POSITIVE),  # None: all of it
                                    "paradigms": _sequence(STRING), "templates": _optional(POSITIVE),
                                    "itm_rerank": COUNT,
                                    "special_tokens": BOOL}


def _value(config: Any, path: str) -> Any:
    for part in path.split(".")[1:]:
        config = config[part]
    return config


def check_values(config: Any) -> None:
    """Raise ConfigError naming every key whose value breaks its rule (RULES, EVALUATOR_RULES); `config` has
    every key (check_keys)."""
    values = {path: _value(config, path) for path in RULES}
    rules = dict(RULES)
    for name, entry in config.eval.evaluators.items():
        for option, value in entry.items():
            if option in EVALUATOR_RULES:
                values[f"config.eval.evaluators.{name}.{option}"] = value
                rules[f"config.eval.evaluators.{name}.{option}"] = EVALUATOR_RULES[option]
    bad = [f"{path}={values[path]!r} must be {rule.what}" for path, rule in rules.items() if not rule.ok(values[path])]
    if bad:
        raise ConfigError(f"{'; '.join(bad)}. Fix {'it' if len(bad) == 1 else 'them'} in the config or with "
                          f"--config.KEY=VALUE")


def check_config(config: Any) -> None:
    """check_keys, then check_values: what a run checks before it touches its workdir."""
    check_keys(config)
    check_values(config)
