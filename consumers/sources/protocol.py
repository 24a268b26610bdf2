"""What the pipeline loop (consumers/pipeline.py) reads: a feed of batches, and the batch.

A feed knows its source: how records are read and cut into batches, each batch's dedup token,
how a batch is recorded before its insert and acknowledged after it, where rejects go, and what
a rebalance means. The spool feed (sources/spool_feed.py) and the Kafka feed
(sources/kafka_feed.py) implement it; the loop does the rest the same way for both.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from consumers.enrich import Enricher
from consumers.event_rows import EventRows
from contract.event import Rejected


class Batch:
    """Lines bound for ClickHouse under one dedup token, and how far their way got.

    Each step is done once: a retry after a failure starts at the first step not done.
    """

    def __init__(self, lines: list[bytes], token: str, replay: bool) -> None:
        self.lines = lines
        self.token = token
        self.replay = replay  # formed again from a recorded range: the ids are checked after
        self.rows: EventRows | None = None  # the enriched good lines
        self.good = 0
        self.rejects: list[tuple[int, str]] = []  # (index in lines, reason), in line order
        self.prepared = False
        self.rejects_taken = False  # the feed has taken the rejects (DLQ, log)
        self.marked = False  # the batch is recorded as in flight
        self.stored = False  # ClickHouse acknowledged the insert
        self.failures = 0
        self.retry_at = 0.0  # monotonic time the next attempt is due

    @property
    def label(self) -> str:
        """Where the batch came from, for the log."""
        return self.token

    def prepare(self, enricher: Enricher) -> None:
        """Enrich every line once: good ones into `rows`, the others into `rejects`."""
        events = []
        kept = []
        for i, line in enumerate(self.lines):
            try:
                events.append(enricher.enrich(line))
            except Rejected as exc:
                self.rejects.append((i, exc.reason))
                continue
            kept.append(i)
        self.rows, unfit = EventRows.build(events)
        if unfit:
            self.rejects += [(kept[i], reason) for i, reason in unfit]
            self.rejects.sort()
        self.good = len(self.rows)
        self.prepared = True
        # A replay was recorded by the reader before us; a batch without rows needs no token.
        self.marked = self.replay or self.good == 0
        self.rejects_taken = not self.rejects

    def failed(self, now: float, retry_max_s: float) -> float:
        """Back off after a failed step; returns the delay in seconds."""
        self.failures += 1
        delay_s = min(0.1 * 2 ** (self.failures - 1), retry_max_s)
        self.retry_at = now + delay_s
        return delay_s


class Feed(Protocol):
    """A source of batches, as the pipeline loop drives it."""

    # What a failed step may raise: the loop holds the batch and retries the step.
    errors: tuple[type[Exception], ...]

    async def start(self) -> None: ...

    async def stop(self) -> None:
        """Release the source (leave the group); called once, also after a failure."""

    async def read(self, final: bool) -> int:
        """Take what the source has into the feed's buffers; returns the records taken.
        `final` (stopping): only what can be taken without waiting for more."""

    async def idle(self, stop: asyncio.Event) -> None:
        """Wait before the next read after a pass that read and committed nothing."""

    def batches(self, now: float, final: bool) -> list[Batch]:
        """Every batch on its way, after cutting the due ones; `final` cuts all buffered."""

    def owns(self, batch: Batch) -> bool:
        """False once the batch is no longer this feed's to record or commit (revoked)."""

    async def reject(self, batch: Batch) -> None:
        """Take the batch's rejects (dead-letter them, or log them)."""

    async def mark(self, batches: list[Batch]) -> None:
        """Record the batches as in flight, before their insert."""

    async def commit(self, batches: list[Batch]) -> None:
        """The batches are stored: move past them for good."""

    def hold(self, batch: Batch) -> None:
        """Read no further behind a batch that waits for a retry."""

    def after_pass(self) -> None:
        """Refresh the feed's own gauges after a pass of the loop."""
