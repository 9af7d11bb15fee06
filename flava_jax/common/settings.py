"""Settings read from a config: the one error type for a bad config, and dataclasses filled from a config section.

Every default lives in configs/base.py; settings dataclasses have none, so a key missing from a config is an error
that names it rather than a silent fallback.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """An invalid configuration value; the message names the offending key."""


def missing_keys(section: Mapping[str, Any], path: str, names: list[str] | tuple[str, ...]) -> None:
    """Raise ConfigError naming each of `names` that `section` (the config at `path`) lacks."""
    missing = [f"{path}.{name}" for name in names if name not in section]
    if missing:
        raise ConfigError(f"{', '.join(missing)}: missing from the config. configs/base.py defines every key; start a "
                          f"config from base.get_config() and change what differs")


def read_section(cls: type[T], section: Mapping[str, Any], path: str, **given: Any) -> T:
    """`cls` (a dataclass) with `given` fields as they are and every other field read from `section`."""
    names = [f.name for f in dataclasses.fields(cls) if f.name not in given]  # type: ignore[arg-type]
    missing_keys(section, path, names)
    return cls(**given, **{name: section[name] for name in names})
