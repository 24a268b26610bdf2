"""The consume loop: read, cut batches, enrich, insert with a dedup token, acknowledge.

One loop for every source (consumers/sources/protocol.py: the spool, a Kafka group). Each batch
goes through steps that each happen once:
  record the batch as in flight (Kafka: commit metadata, see sources/kafka_batches.py;
  spool: the checkpoint) -> store it with the feed's token (consumers/ingest.py: ClickHouse
  parses, checks and enriches the lines) -> its rejects to the feed (Kafka: the DLQ, acked;
  spool: the log) -> commit (Kafka: last + 1; spool: the checkpoint past it).
A failed step holds the batch (Kafka pauses its partition; the spool reads no further) and is
retried with capped exponential backoff; the loop keeps reading meanwhile, so a Kafka member
stays in its group and the other partitions keep moving. Nothing is committed past a record
that is not stored or rejected.

On stop, everything buffered (for the spool: what is spooled, read on for at most
FINAL_READ_S) is cut into batches and each step is tried once more, pass after pass while
batches get committed; a batch that still fails
stays recorded, and the next start replays it with its token, so a batch that did land is not
stored twice (and its rejects are dead-lettered again: the DLQ is at-least-once); the ingest
checks a replay's ids after.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from analytics.store import StoreError, Writer
from consumers.ingest import Ingest
from consumers.metrics import ConsumerMetrics
from consumers.settings import ConsumerSettings
from consumers.sources.protocol import Batch, Feed

log = logging.getLogger("beacon.consumer")

# At a stop the spool is read on for at most this long, then what was read is stored and the
# rest stays on disk for the next start: `beacon run` kills a consumer still at it after 60 s
# (collector/supervisor.py STOP_TIMEOUT_S), and a large backlog would take longer.
FINAL_READ_S = 30.0


class Pipeline:
    """Moves events from a feed into ClickHouse, exactly once in effect."""

    def __init__(
        self, feed: Feed, writer: Writer, metrics: ConsumerMetrics, settings: ConsumerSettings
    ) -> None:
        self.feed = feed
        self.writer = writer
        self.metrics = metrics
        self.retry_max_s = settings.retry_max_ms / 1000
        self.ingest = Ingest(writer)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set, store what is buffered, release the source, return."""
        await self.feed.start()
        try:
            while not stop.is_set():
                read = await self._read(final=False)
                committed = await self._flush(final=False)
                self.feed.after_pass()
                if not read and not committed:
                    await self.feed.idle(stop)
            read_until = time.monotonic() + FINAL_READ_S
            while True:
                if time.monotonic() < read_until:
                    await self._read(final=True)
                if not await self._flush(final=True):
                    break  # everything is stored, or the store fails: then leave it
        finally:
            await self.feed.stop()

    async def _read(self, final: bool) -> int:
        read = await self.feed.read(final)
        self.metrics.rows_read.inc(read)
        return read

    async def _flush(self, final: bool) -> bool:
        """Move every due batch one attempt further; True if any got committed."""
        now = time.monotonic()
        due = [b for b in self.feed.batches(now, final) if final or now >= b.retry_at]
        due = await self._mark(due)
        due = await self._insert(due)
        due = await self._reject(due)
        return await self._commit(due)

    # -- the steps of a batch ---------------------------------------------------------------

    async def _reject(self, batches: list[Batch]) -> list[Batch]:
        ok = []
        for batch in batches:
            if not batch.rejects_taken and self.feed.owns(batch):
                try:
                    await self.feed.reject(batch)
                except self.feed.errors as exc:
                    self._fail(batch, "dlq", exc)
                    continue
                batch.rejects_taken = True
            ok.append(batch)
        return ok

    async def _mark(self, batches: list[Batch]) -> list[Batch]:
        batches = [b for b in batches if self.feed.owns(b)]
        todo = [b for b in batches if not b.marked]
        if todo and not await self._all("mark", todo, self.feed.mark):
            return [b for b in batches if b.marked]
        for batch in todo:
            batch.marked = True
        return batches

    async def _insert(self, batches: list[Batch]) -> list[Batch]:
        ok = []
        # One at a time: the ingest's temporary tables hold one batch (chDB takes one
        # statement at a time anyway; a server parses on its own cores).
        for batch in batches:
            if not batch.stored:
                waited = batch.replay or batch.insert_failed
                if waited and (not self.feed.owns(batch) or not await self._await_earlier(batch)):
                    continue
                # Under the feed's lock: a revocation waits for the insert, or comes first
                # and the batch is the next owner's (who replays it) and not inserted here.
                async with self.feed.inserting:
                    if not self.feed.owns(batch) or not await self._store(batch, waited):
                        continue
            if batch.erase is not None and not await self._erase(batch):
                continue
            ok.append(batch)
        return ok

    async def _erase(self, batch: Batch) -> bool:
        """Delete what the batch stored of people erased while it was on its way (whoever
        owns it now: an erasure is not the partition's). Rebuilding the rollups of a large
        day can take minutes: the feed's source hears from the member meanwhile."""
        assert batch.erase is not None
        try:
            erased = await self.feed.alive_through(self.ingest.erase_recorded(batch.erase))
        except StoreError as exc:
            self._fail(batch, "erase", exc)  # its next attempt tries again first
            return False
        self.metrics.rows_erased.inc(erased)
        batch.erase = None
        return True

    async def _await_earlier(self, batch: Batch) -> bool:
        """Outside the lock a revocation waits for: an earlier attempt's insert still running
        on a server can take up to the writer's timeout (60 s), past the group's rebalance
        timeout, and a member held that long loses its place mid-insert."""
        try:
            await self.ingest.await_earlier(batch.token, batch.partial)
        except StoreError as exc:  # no insert was tried: its own step, not an insert error
            self._fail(batch, "wait", exc)
            return False
        return True

    async def _store(self, batch: Batch, waited: bool) -> bool:
        started = time.perf_counter()
        try:
            stored = await self.ingest.store(
                batch.pieces, batch.token, batch.replay, batch.partial, batch.segments,
                again=batch.insert_failed, waited=waited,
            )  # fmt: skip
        except StoreError as exc:
            batch.insert_failed = True  # it may have landed all the same (a timeout)
            self.metrics.inserts.labels("error").inc()
            self._fail(batch, "insert", exc)
            return False
        self.metrics.insert_seconds.observe(time.perf_counter() - started)
        self.metrics.inserts.labels("ok").inc()
        self.metrics.rows_inserted.inc(stored.inserted)
        self.metrics.rows_erased.inc(stored.erased)
        self.metrics.batch_rows.observe(stored.rows)
        for _, reason in stored.rejects:
            self.metrics.rows_rejected.labels(reason).inc()
        for reason, rows in stored.invalid.items():
            self.metrics.rows_invalid.labels(reason).inc(rows)
        batch.good, batch.rejects = stored.rows, stored.rejects
        batch.newest_by_segment = stored.newest_by_segment
        batch.erase = stored.erase
        batch.rejects_taken = not stored.rejects
        batch.stored = True
        return True

    async def _commit(self, batches: list[Batch]) -> bool:
        batches = [b for b in batches if self.feed.owns(b)]
        if not batches or not await self._all("commit", batches, self.feed.commit):
            return False
        for batch in batches:
            if not batch.revoked:  # revoked as its commit landed: counted so already
                self.metrics.batches.labels("stored" if batch.good else "rejected").inc()
        return True

    async def _all(
        self, step: str, batches: list[Batch], call: Callable[[list[Batch]], Awaitable[None]]
    ) -> bool:
        """One call of the feed for several batches (one Kafka commit); all fail together."""
        try:
            await call(batches)
        except self.feed.errors as exc:
            for batch in batches:
                self._fail(batch, step, exc)
            return False
        return True

    def _fail(self, batch: Batch, step: str, exc: Exception) -> None:
        if not self.feed.owns(batch):
            return  # revoked meanwhile: the next owner reads it again
        delay_s = batch.failed(time.monotonic(), self.retry_max_s)
        self.feed.hold(batch)
        self.metrics.retries.labels(step).inc()
        self.metrics.batches.labels("failed").inc()
        log.warning("%s: %s failed, paused for %.1fs: %s", batch.label, step, delay_s,
                    str(exc)[:300])  # fmt: skip
