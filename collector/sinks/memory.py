"""An in-memory sink: for tests, and for benchmarks of the hot path alone.

It keeps the newest `max_events` events and lets older batches go (counted by `on_discard`):
a collector serving with `BEACON_SINK=memory` under load holds at most that many, so its
memory is the hot path's and not the sum of everything it was ever sent.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import orjson


class MemorySink:
    """Keeps the batches it is sent, the newest `max_events` events at least; `events()`
    decodes them."""

    def __init__(
        self, max_events: int | None = None, on_discard: Callable[[int], object] | None = None
    ) -> None:
        self.batches: deque[list[bytes]] = deque()
        self.max_events = max_events
        self.on_discard = on_discard
        self.kept = 0  # events in self.batches
        self.flushes = 0
        self.closed = False
        self.is_healthy = True

    async def send(self, events: list[bytes]) -> None:
        if self.closed:
            raise RuntimeError("send after close")
        self.batches.append(events)
        self.kept += len(events)
        if self.max_events is None:
            return
        # Whole batches go, oldest first, while the rest still holds max_events.
        while self.kept - len(self.batches[0]) >= self.max_events:
            gone = len(self.batches.popleft())
            self.kept -= gone
            if self.on_discard is not None:
                self.on_discard(gone)

    async def flush(self) -> None:
        self.flushes += 1

    def healthy(self) -> bool:
        return self.is_healthy and not self.closed

    async def close(self) -> None:
        self.closed = True

    def events(self) -> list[dict]:
        return [orjson.loads(raw) for batch in self.batches for raw in batch]
