"""Log lines at most once an interval per cause: a cause worth a line to whoever runs Beacon
(a refused link, a broker that went away) must not become a flood of lines when it repeats
thousands of times a minute."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable

MORE = " (and {} more like it since the last line)"


class Throttle:
    """Lets a key pass at once, then at most once every `interval_s`; counts what it held."""

    def __init__(self, interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.interval_s = interval_s
        self.clock = clock
        self._next_at: dict[Hashable, float] = {}
        self._held: dict[Hashable, int] = {}

    def passes(self, key: Hashable) -> int | None:
        """None: hold this one back; else how many of `key` were held back since its last."""
        now = self.clock()
        if now < self._next_at.get(key, 0.0):
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._next_at[key] = now + self.interval_s
        return self._held.pop(key, 0)


class ThrottledLibraries(logging.Filter):
    """A handler filter for the loggers of libraries that log every retry (aiokafka logs a
    line per node and attempt while a broker is away: hundreds a minute): each message, by its
    template and level, at most once every `interval_s`. Beacon's own lines pass as they are."""

    def __init__(self, prefixes: tuple[str, ...], throttle: Throttle | None = None) -> None:
        super().__init__()
        self.prefixes = prefixes
        self.throttle = throttle or Throttle()

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.prefixes):
            return True
        held = self.throttle.passes((record.name, record.levelno, str(record.msg)))
        if held is None:
            return False
        if held:
            record.msg, record.args = record.getMessage() + MORE.format(held), ()
        return True
