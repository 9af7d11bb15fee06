"""Every key of configs/base.py is read by the run and has its default there only: deleting any one of them makes
the trainer fail at start-up with an error naming it, and the keys checked are exactly the keys base.py has."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from ml_collections import ConfigDict

from flava_jax.common.settings import ConfigError
from flava_jax.train.trainer import train
from tests.configs import REPO, load_config


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


@pytest.mark.parametrize("key, value", [
    ("total_steps", -1),  # "finished" at step 0 and wrote a checkpoint
    ("train.batch_size", -4),  # trained with 9 examples a step
    ("train.micro_batch_size", -8),  # trained with the contrastive loss at 0
    ("checkpoint_every_steps", 0),  # ZeroDivisionError after the first step
    ("log_every_steps", 0),
    ("eval.every_steps", 0),
    ("keep_checkpoints", 0),
])
def test_a_bad_value_stops_the_trainer_at_start_up_naming_it(key: str, value: int, debug_data: Path,
                                                             tmp_path: Path) -> None:
    config = load_config("debug", data__dir=str(debug_data), **{key.replace(".", "__"): value})
    with pytest.raises(ConfigError, match=rf"^config\.{re.escape(key)}={value} must be an integer >= 1\. Fix it"):
        train(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing was written before the check


@pytest.mark.parametrize("key, good, bad", [
    ("data.heldout_fraction", [0.5, 1e-9], [0.0, 1.0, -0.1]),
    ("data.mlm_probability", [0.0, 0.4, 1.0], [1.01, -0.01, float("nan")]),
    ("data.itm_negative_probability", [0.0, 1.0], [1.5]),
    ("train.text_percent", [None, 0.0, 100.0], [100.5, -1.0]),
    ("train.image_percent", [None, 0.1], [101.0]),
    ("train.sampling_temperature", [None, 0.0, 2.0], [-0.5]),
    ("data.text_words", [-1, 0, 10_000_000], [-2]),
    ("data.images", [-1, 40_000], [-5]),
    ("data.image_size", [224], [0]),
    ("data.jpeg_quality", [1, 95, 100], [0, 101]),
    ("data.image_resize", ["squash", "crop"], ["squish", ""]),
    ("data.budget_unit", ["count", "percent"], ["percents", "words"]),
    ("data.tokenizer", ["bert-base-uncased", "sentencepiece", "/no/such/vocab.txt", "vocab.txt"],
     ["bert-base-uncase", "wordpiece"]),
    ("train.contrastive_negatives", ["micro_batch", "global_batch"], ["global", "batch"]),
    ("data.length_buckets", [(), (64, 128)], [(0, 64), (64, -1)]),
    ("data.sources", [(), ("a.tsv", "tfds:wit/train")], [(3,)]),
    ("optim.b2", [0.0, 0.999], [1.0]),
    ("optim.eps", [1e-8], [0.0]),
    ("optim.decay_steps", [1], [0]),
    ("optim.grad_clip_norm", [1.0], [0.0, -1.0]),
    ("data.fetch.timeout", [0.5], [0.0]),
    ("data.fetch.retries", [0, 3], [-1]),
    ("scheduler.factor", [0.5, 1.0], [1.5]),
    ("scheduler.patience.mlm", [0, 3], [-1]),
    ("eval.evaluators.validation.batch_size", [1], [0]),
    ("eval.evaluators.pppl.texts", [0, 2000], [-1]),
    ("eval.evaluators.blimp.limit", [1], [0]),
    ("eval.evaluators.zeroshot.limit", [None, 1], [0]),
    ("eval.evaluators.zeroshot.templates", [None, 80], [0]),
    ("seed", [0, 5501650], [-1]),
])
def test_values_are_checked_against_their_rule(key: str, good: list, bad: list) -> None:
    """Boundaries by hand: probabilities in [0, 1], the held-out share in (0, 1), percents in [0, 100] (0: no such
    stream, as a budget of 0 gives), budgets >= -1 (-1: everything), enumerations, tuples of valid items."""
    from flava_jax.train.config_check import check_config

    for value in good:
        check_config(load_config("debug", **{key.replace(".", "__"): value}))
    for value in bad:
        with pytest.raises(ConfigError, match=rf"^config\.{re.escape(key)}={re.escape(repr(value))} must be "):
            check_config(load_config("debug", **{key.replace(".", "__"): value}))


def test_every_bad_value_is_named_in_one_error() -> None:
    from flava_jax.train.config_check import check_config

    config = load_config("debug", total_steps=0, train__batch_size=-4)
    with pytest.raises(ConfigError, match=r"^config\.total_steps=0 must be .*; config\.train\.batch_size=-4 must be "
                                          r".*\. Fix them in the config"):
        check_config(config)


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "configs").glob("*.py") if p.stem != "__init__"))
def test_every_shipped_config_passes_the_checks(name: str) -> None:
    from flava_jax.train.config_check import check_config

    check_config(load_config(name))


def test_the_rules_name_keys_base_defines() -> None:
    """A rule for a misspelt or removed key would never run."""
    from flava_jax.train.config_check import RULES

    assert sorted(set(RULES) - set(BASE_KEYS)) == []


def test_sequences_can_be_given_on_the_command_line() -> None:
    """ml_collections' config_flags parses a tuple field from "('a','b')" (or the flag repeated), not a list."""
    from absl import flags
    from ml_collections import config_flags

    argv = ["prog", f"--config={REPO / 'configs' / 'debug.py'}", "--config.data.sources=('a.tsv','gs://b/*.tsv')",
            "--config.data.image_dirs=/images", "--config.data.length_buckets=(64,128)",
            "--config.optim.no_decay=('.*/bias',)", "--config.optim.lr_groups=(('.*', 1e-3),)",
            "--config.eval.evaluators.blimp.paradigms=adjunct_island", "--config.eval.evaluators.blimp.paradigms=npi"]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values, lock_config=True, sys_argv=argv)
    flag_values(argv)
    config = flag_values.config
    assert config.data.sources == ("a.tsv", "gs://b/*.tsv")
    assert config.data.image_dirs == ("/images",)
    assert config.data.length_buckets == (64, 128)
    assert config.optim.no_decay == (".*/bias",)
    assert config.optim.lr_groups == ((".*", 1e-3),)
    assert config.eval.evaluators.blimp.paradigms == ("adjunct_island", "npi")
