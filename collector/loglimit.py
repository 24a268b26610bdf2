"""A log line per cause at most once an interval: a refused request is worth a line to whoever
runs the collector, but a flood of them must not become a flood of lines."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class LimitedLog:
    """Logs a cause's line at once, then at most once every `interval_s`, saying how many
    lines of that cause it held back since the last one."""

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self.clock = clock
        self._next_at: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warning(self, cause: str, message: str, *args: object) -> None:
        now = self.clock()
        if now < self._next_at.get(cause, 0.0):
            self._held[cause] = self._held.get(cause, 0) + 1
            return
        self._next_at[cause] = now + self.interval_s
        held = self._held.pop(cause, 0)
        if held:
            message += " (and %d more like it since the last line)"
            args = (*args, held)
        self.logger.warning(message, *args)
