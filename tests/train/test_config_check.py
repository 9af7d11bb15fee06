"""Every key of configs/base.py is read by the run and has its default there only: deleting any one of them makes
the trainer fail at start-up with an error naming it, and the keys checked are exactly the keys base.py has."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from ml_collections import ConfigDict

from flava_jax.common.settings import ConfigError
from flava_jax.train.trainer import train
from tests.configs import load_config


def _leaves(config: ConfigDict, prefix: str = "config") -> list[str]:
    """Dotted paths of base.py's keys, the model section and evaluator entries as whole keys (FlavaConfig and the
    evaluator types check their own)."""
    out = []
    for key, value in config.items():
        path = f"{prefix}.{key}"
        out.append(path)
        if isinstance(value, ConfigDict) and path not in ("config.model", "config.eval.evaluators"):
            out.extend(_leaves(value, path))
    return out


BASE_KEYS = _leaves(load_config("base"))


def _without(path: str) -> ConfigDict:
    config = load_config("debug")
    *parents, leaf = path.split(".")[1:]
    section = config
    for parent in parents:
        section = section[parent]
    with section.unlocked():
        del section[leaf]
    return config


@pytest.mark.parametrize("path", BASE_KEYS)
def test_a_missing_key_stops_the_trainer_at_start_up_naming_it(path: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=rf"(^|, ){re.escape(path)}(,|:)"):
        train(_without(path), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing was written before the check


def test_the_keys_checked_are_the_keys_base_defines() -> None:
    """A key added to base.py that nothing checks (or reads) fails here, as does a check for a key base.py lost."""
    from flava_jax.train import config_check

    config = load_config("base")
    checked = set()
    for path in BASE_KEYS:
        try:
            config_check.check_keys(_without_base(config, path))
        except ConfigError as e:
            if path in str(e):
                checked.add(path)
    assert sorted(set(BASE_KEYS) - checked) == []


def _without_base(config: ConfigDict, path: str) -> ConfigDict:
    copy = ConfigDict(config.to_dict())
    *parents, leaf = path.split(".")[1:]
    section = copy
    for parent in parents:
        section = section[parent]
    del section[leaf]
    return copy


def test_an_evaluator_entry_is_checked_at_start_up(tmp_path: Path) -> None:
    config = load_config("debug")
    config.eval.evaluators.pppl.texts_max = 3
    with pytest.raises(ConfigError, match=r"config\.eval\.evaluators\.pppl: .*unknown \['texts_max'\]"):
        train(config, tmp_path / "run")
    config = load_config("debug")
    config.eval.evaluators.blimp.type = "blimpp"
    with pytest.raises(ConfigError, match=r"config\.eval\.evaluators\.blimp\.type: 'blimpp' is not one of"):
        train(config, tmp_path / "run")
