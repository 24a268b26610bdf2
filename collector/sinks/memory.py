"""An in-memory sink: for tests and benchmarks of the hot path alone."""

from __future__ import annotations

import orjson


class MemorySink:
    """Keeps every batch it is sent; `events()` decodes them."""

    def __init__(self) -> None:
        self.batches: list[list[bytes]] = []
        self.flushes = 0
        self.closed = False
        self.is_healthy = True

    async def send(self, events: list[bytes]) -> None:
        if self.closed:
            raise RuntimeError("send after close")
        self.batches.append(events)

    async def flush(self) -> None:
        self.flushes += 1

    def healthy(self) -> bool:
        return self.is_healthy and not self.closed

    async def close(self) -> None:
        self.closed = True

    def events(self) -> list[dict]:
        return [orjson.loads(raw) for batch in self.batches for raw in batch]
