"""Where the buffer hands events: a small protocol with one module per implementation."""

from __future__ import annotations

from typing import Protocol


class Sink(Protocol):
    """Takes batches of serialised events (one JSON object per item, no newline)."""

    async def send(self, events: list[bytes]) -> None:
        """Take responsibility for the batch; never raises for a full or failed backend."""

    async def flush(self) -> None:
        """Make what was sent durable (fsync, broker acks)."""

    def healthy(self) -> bool:
        """True while the sink can take events."""

    async def close(self) -> None:
        """Flush and release resources; later sends are an error."""
