"""The spool as a feed of batches: one batch at a time, recorded in the checkpoint.

Lines are read after the cursor, in chunks as the segments hold them, and cut into a batch by
rows or age, or once the spool is quiet (no collector has had a segment open nor closed one for
a poll interval: the end of a burst is stored at once, not an age later; at most once a batch
age, so a trickle of events still makes about one insert an age). Its token names its byte
ranges (sources/spool.py), and the checkpoint records those ranges before the insert, so the
batch a crash interrupted is read again from exactly the same bytes and replayed first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable

from consumers.metrics import SPOOL_TOPIC, ConsumerMetrics
from consumers.settings import ConsumerSettings
from consumers.sources.protocol import Batch, Quiet, T, join_lines
from consumers.sources.spool import Range, SpoolSource, token_for

log = logging.getLogger("beacon.consumer")


def merge(ranges: list[Range]) -> list[Range]:
    """Join ranges that continue each other in the same segment."""
    merged: list[Range] = []
    for r in ranges:
        if merged and merged[-1].segment == r.segment and merged[-1].end == r.start:
            merged[-1] = Range(r.segment, merged[-1].start, r.end)
        else:
            merged.append(r)
    return merged


class SpoolBatch(Batch):
    """Lines of these byte ranges, under the token of the ranges."""

    def __init__(
        self, chunks: list[bytes], ranges: list[Range], replay: bool, token: str = ""
    ) -> None:
        super().__init__(join_lines(chunks), token or token_for(ranges), replay)
        self.ranges = ranges  # what its commit settles

    @property
    def label(self) -> str:
        first, last = self.ranges[0], self.ranges[-1]
        return f"spool {first.segment}:{first.start}-{last.segment}:{last.end}"


class SpoolFeed:
    """Closed spool segments in order; nothing is read past a batch on its way."""

    errors: tuple[type[Exception], ...] = ()  # a failing checkpoint write stops the consumer

    def __init__(
        self, source: SpoolSource, metrics: ConsumerMetrics, settings: ConsumerSettings
    ) -> None:
        self.source = source
        self.metrics = metrics
        self.inserting = asyncio.Lock()  # nothing takes a batch away: no one else waits on it
        self.max_rows = settings.batch_max_rows
        self.max_bytes = settings.batch_max_bytes
        self.max_age_s = settings.batch_max_age_ms / 1000
        self.poll_s = settings.poll_interval_ms / 1000
        self.chunks: list[bytes] = []
        self.rows = 0  # lines in chunks
        self.bytes = 0  # of the lines in chunks, newlines included
        self.ranges: list[Range] = []
        self.first_read_at = 0.0
        # No segment open at a look and no line new, for a poll interval, not one look: under
        # load a collector's segment closes at its age and the next opens at its next write, a
        # gap a single look can fall into.
        self.quiet = Quiet(self.poll_s, self.max_age_s)
        self.batch: SpoolBatch | None = None
        self.newest_ms = 0  # received_at of the newest event stored since the start

    async def start(self) -> None:
        """The checkpoint's pending batch, if any, goes first, under its old token."""
        pending = list(self.source.pending)
        if pending:
            chunks, settled = await asyncio.to_thread(self.source.read_ranges, pending)
            if not chunks:  # every segment of it is gone, or left to later reads
                self.source.commit(settled)
                return
            # Under the token it was recorded with, what is left of it too: ClickHouse drops
            # it if that insert landed, and the replay's check stores what it lacks.
            self.batch = SpoolBatch(chunks, settled, replay=True, token=token_for(pending))
            self.metrics.replayed_batches.inc()
            self.metrics.batch_cuts.labels("replay").inc()
            log.info(
                "replaying a pending batch of %d rows", sum(c.count(b"\n") + 1 for c in chunks)
            )

    async def stop(self) -> None:
        pass  # the checkpoint is written at every step

    async def read(self, final: bool) -> int:
        if self.batch is not None:
            return 0
        writing, (new, rows, ranges) = await asyncio.to_thread(self._read)
        self.quiet.saw(writing or bool(rows), time.monotonic())
        if rows:
            if not self.rows:
                self.first_read_at = time.monotonic()
            self.chunks.extend(new)
            self.rows += rows
            self.bytes += sum(r.end - r.start for r in ranges)
            self.ranges.extend(ranges)
        return rows

    def _read(self) -> tuple[bool, tuple[list[bytes], int, list[Range]]]:
        # Looked at before the read: a segment closed after the look is read now or next time.
        writing = self.source.writing()
        return writing, self.source.read(self.max_rows - self.rows, self.max_bytes - self.bytes)

    async def idle(self, stop: asyncio.Event) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), self.poll_s)

    def batches(self, now: float, final: bool) -> list[Batch]:
        if self.batch is None and self.rows:
            reason = self._due(now, final)
            if reason:
                if reason == "quiet":
                    self.quiet.cut_at = now
                self.batch = SpoolBatch(self.chunks, merge(self.ranges), replay=False)
                self.batch.cut_by = reason
                self.metrics.batch_cuts.labels(reason).inc()
                self.chunks, self.rows, self.bytes, self.ranges = [], 0, 0, []
        return [] if self.batch is None else [self.batch]

    def _due(self, now: float, final: bool) -> str:
        """Why the lines read are a batch now (consumers/metrics.py CUT_REASONS), or ''."""
        if self.rows >= self.max_rows:
            return "rows"
        if self.bytes >= self.max_bytes:
            return "bytes"
        if now - self.first_read_at >= self.max_age_s:
            return "age"
        if self.quiet.due(now):
            return "quiet"
        return "final" if final else ""

    def owns(self, batch: Batch) -> bool:
        return True

    async def reject(self, batch: Batch) -> None:
        assert isinstance(batch, SpoolBatch)
        for line, reason in batch.rejects:
            log.warning("spool line %d of %s rejected: %s", line, batch.label, reason)

    async def alive_through(self, step: Awaitable[T]) -> T:
        return await step  # a spool has no group to hear from its reader

    async def mark(self, batches: list[Batch]) -> None:
        for batch in batches:
            assert isinstance(batch, SpoolBatch)
            await asyncio.to_thread(self.source.begin, batch.ranges)  # an fsync: not on the loop

    async def commit(self, batches: list[Batch]) -> None:
        for batch in batches:
            assert isinstance(batch, SpoolBatch)
            await asyncio.to_thread(self.source.commit, batch.ranges)
            self.batch = None
            if batch.newest_ms > self.newest_ms:
                self.newest_ms = batch.newest_ms
                self.metrics.stored_newest((SPOOL_TOPIC, ""), batch.newest_ms)

    def hold(self, batch: Batch) -> None:
        pass  # nothing is read while a batch is on its way

    def after_pass(self) -> None:
        backlog = self.source.backlog_segments()
        self.metrics.backlog_segments.set(backlog)
        # The lag in seconds, as the Kafka feed's: closed segments are what waits.
        self.metrics.show_lag_seconds((SPOOL_TOPIC, ""), backlog > 0, self.newest_ms, time.time())
