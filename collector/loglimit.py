"""A log line per cause at most once an interval (contract/logs.py): a refused request is worth
a line to whoever runs the collector, but a flood of them must not become a flood of lines."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from contract.logs import MORE, Throttle


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
        self.throttle = Throttle(interval_s, clock)

    def warning(self, cause: str, message: str, *args: object) -> None:
        held = self.throttle.passes(cause)
        if held is None:
            return
        if held:
            message += MORE.replace("{}", "%d")
            args = (*args, held)
        self.logger.warning(message, *args)
