"""run.json's resume check: which config changes a resume refuses, and the record of those it accepted."""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

import pytest

from flava_jax.common.settings import ConfigError
from flava_jax.train.run_file import ABSENT, FREE_KEYS, change_log, check_resume, config_changes
from tests.configs import debug_config, load_config


def _as_json(config: dict) -> dict:
    return json.loads(json.dumps(config))  # what run.json holds: tuples as lists


def test_changes_that_alter_the_experiment_are_listed_with_old_and_new_values() -> None:
    before = debug_config()
    after = debug_config(seed=7, train__batch_size=8, model__text_config__hidden_act="relu")
    after.model.text_config.hidden_size = 96
    assert config_changes(_as_json(before.to_dict()), after.to_dict()) == [
        ("config.model.text_config.hidden_act", "gelu", "relu"),
        ("config.model.text_config.hidden_size", 32, 96),
        ("config.seed", 5501650, 7),
        ("config.train.batch_size", 16, 8),
    ]


def test_run_length_logging_and_reading_keys_may_change() -> None:
    before = debug_config()
    after = debug_config(total_steps=999, checkpoint_every_steps=3, log_every_steps=7, keep_checkpoints=9,
                         eval__every_steps=11, compilation_cache_dir="", allow_config_change=True,
                         data__workers=5, data__read_threads=1, data__stage_dir="/elsewhere")
    after.data.fetch.timeout = 99.0
    after.eval.evaluators.pppl.every_steps = 13
    assert config_changes(_as_json(before.to_dict()), after.to_dict()) == []


def test_a_sequence_equals_the_list_json_made_of_it_and_a_missing_key_is_a_change() -> None:
    before = _as_json(debug_config().to_dict())
    assert isinstance(before["data"]["sources"], list)
    assert config_changes(before, debug_config().to_dict()) == []
    del before["train"]["contrastive_negatives"]  # a run.json from before the key existed
    assert config_changes(before, debug_config().to_dict()) == [
        ("config.train.contrastive_negatives", ABSENT, "micro_batch")]


def test_a_refused_resume_lists_each_change_and_says_what_to_do(tmp_path: Path) -> None:
    before = _as_json(debug_config().to_dict())
    with pytest.raises(ConfigError, match=r"config\.seed: 5501650 -> 1; config\.train\.batch_size: 16 -> 8\. "
                                          r"Resume with the run's values .*--config\.allow_config_change=True"):
        check_resume(tmp_path, before, debug_config(seed=1, train__batch_size=8).to_dict())
    allowed = debug_config(seed=1, train__batch_size=8, allow_config_change=True).to_dict()
    assert check_resume(tmp_path, before, allowed) == [("config.seed", 5501650, 1), ("config.train.batch_size", 16, 8)]


def test_accepted_changes_are_appended_with_their_step() -> None:
    earlier = {"changes": [{"step": 4, "key": "config.seed", "old": 1, "new": 2}]}
    assert change_log(earlier, [("config.train.batch_size", 16, 8)], 10) == [
        {"step": 4, "key": "config.seed", "old": 1, "new": 2},
        {"step": 10, "key": "config.train.batch_size", "old": 16, "new": 8}]
    assert change_log(None, [], 0) == []


def _keys(tree: dict, prefix: str = "config") -> list[str]:
    return [k for name, v in tree.items()
            for k in (_keys(v, f"{prefix}.{name}") if isinstance(v, dict) else [f"{prefix}.{name}"])]


def test_each_free_key_names_keys_base_defines() -> None:
    """A misspelt pattern would refuse a change it means to allow."""
    keys = _keys(load_config("base").to_dict())
    for pattern in FREE_KEYS:
        assert fnmatch.filter(keys, pattern), pattern
