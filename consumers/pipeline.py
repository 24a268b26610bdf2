"""The consume loop: read, batch by rows and age, enrich, insert with a dedup token, commit."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from analytics.schema import EVENTS
from analytics.store import StoreError, Writer
from consumers.enrich import BadRow, Enricher
from consumers.event_rows import EventRows
from consumers.metrics import ConsumerMetrics
from consumers.replay_check import insert_replay
from consumers.settings import ConsumerSettings
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


class SpoolPipeline:
    """Moves spooled events into ClickHouse, exactly once in effect."""

    def __init__(
        self,
        source: SpoolSource,
        writer: Writer,
        metrics: ConsumerMetrics,
        settings: ConsumerSettings,
    ) -> None:
        self.source = source
        self.writer = writer
        self.metrics = metrics
        self.max_rows = settings.batch_max_rows
        self.max_age_s = settings.batch_max_age_ms / 1000
        self.poll_s = settings.poll_interval_ms / 1000
        self.retry_max_s = settings.retry_max_ms / 1000
        self.enricher = Enricher()

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set, then insert everything already spooled and return."""
        if self.source.pending:
            rows = self.source.read_ranges(self.source.pending)
            self.metrics.replayed_batches.inc()
            log.info("replaying a pending batch of %d rows", len(rows))
            if not await self._insert(rows, self.source.pending, stop, replay=True):
                return
        rows = []
        ranges: list[Range] = []
        first_at = 0.0
        while True:
            stopping = stop.is_set()
            new, new_ranges = await asyncio.to_thread(self.source.read, self.max_rows - len(rows))
            self.metrics.rows_read.inc(len(new))
            if new:
                if not rows:
                    first_at = time.monotonic()
                rows.extend(new)
                ranges.extend(new_ranges)
            due = len(rows) >= self.max_rows or time.monotonic() - first_at >= self.max_age_s
            if rows and (due or (stopping and not new)):
                if not await self._insert(rows, merge(ranges), stop):
                    return  # stopping while the store fails: the checkpoint keeps the batch
                rows, ranges = [], []
                continue
            self.metrics.backlog_segments.set(self.source.backlog_segments())
            if stopping and not new:
                return
            if not new:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.poll_s)

    def reject(self, reason: str, ranges: list[Range]) -> None:
        self.metrics.rows_rejected.labels(reason).inc()
        log.warning("spool row rejected (%s) in %s", reason, ranges[0].segment)

    async def _insert(
        self, lines: list[bytes], ranges: list[Range], stop: asyncio.Event, replay: bool = False
    ) -> bool:
        """Insert one batch, retrying with backoff; False if told to stop before it landed.

        A `replay` (the checkpoint's pending batch) checks the ids after (replay_check.py).
        """
        await asyncio.to_thread(self.source.begin, ranges)  # an fsync: not on the loop
        events = []
        for line in lines:
            try:
                events.append(self.enricher.enrich(line))
            except BadRow as exc:
                self.reject(exc.reason, ranges)
        rows, unfit = EventRows.build(events)
        for _, reason in unfit:
            self.reject(reason, ranges)
        good = len(rows)
        token = token_for(ranges)
        delay_s = 0.1
        while good:
            started = time.perf_counter()
            try:
                if replay:
                    await insert_replay(self.writer, rows, token)
                else:
                    await self.writer.insert(EVENTS, rows, token)
            except StoreError as exc:
                self.metrics.inserts.labels("error").inc()
                log.warning("insert failed, retrying in %.1fs: %s", delay_s, str(exc)[:300])
                if stop.is_set():
                    return False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay_s)
                delay_s = min(delay_s * 2, self.retry_max_s)
                continue
            self.metrics.insert_seconds.observe(time.perf_counter() - started)
            self.metrics.inserts.labels("ok").inc()
            self.metrics.rows_inserted.inc(good)
            self.metrics.batch_rows.observe(good)
            break
        await asyncio.to_thread(self.source.commit, ranges)
        return True
