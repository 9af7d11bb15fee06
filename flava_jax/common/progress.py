"""Progress lines for long loops: done / total, rate and ETA, at most every few seconds."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

_LOG = logging.getLogger("flava_jax").info


def duration(seconds: float) -> str:
    """`seconds` as 1h02m or 3m05s."""
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class ProgressLog:
    """`update(done)` logs "what: done/total unit (pct), rate/s, ETA" when `every` seconds have passed."""

    def __init__(self, what: str, total: float | None = None, unit: str = "", every: float = 10.0,
                 log: Callable[[str], None] = _LOG) -> None:
        self.what, self.total, self.unit, self.every, self.log = what, total, unit, every, log
        self.start = self.last = time.monotonic()
        self.done = 0.0

    def line(self, extra: str = "") -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self.done / elapsed
        text = f"{self.what}: {self.done:,.0f}"
        if self.total:
            text += f"/{self.total:,.0f}"
        text += f" {self.unit}".rstrip()
        if self.total:
            text += f" ({100 * self.done / self.total:.1f}%)"
        text += f", {rate:,.1f}/s, {duration(elapsed)} elapsed"
        if self.total and rate > 0 and self.done < self.total:
            text += f", ETA {duration((self.total - self.done) / rate)}"
        return f"{text}; {extra}" if extra else text

    def update(self, done: float, extra: str = "") -> None:
        self.done = done
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self.log(self.line(extra))

    def finish(self, extra: str = "") -> None:
        self.log(self.line(extra))
