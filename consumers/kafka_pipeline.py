"""The Kafka consume loop: poll, batch per partition, dead-letter, insert with a token, commit.

One batch per partition is on its way at a time, through steps that each happen once:
  enrich -> rejects to the DLQ (acked) -> commit the in-flight range as metadata (see
  kafka_batches) -> insert with token topic-partition-first-last -> commit last + 1.
A failed step pauses the partition and is retried with capped exponential backoff; the loop
keeps calling getmany() meanwhile, so the member stays in the group and the other partitions
keep moving. Nothing is committed past a record that is not stored or dead-lettered.

On a rebalance the in-memory state of revoked partitions is dropped, not flushed: flushing
inside the callback would hold up the whole group for as long as ClickHouse is slow or down,
while dropping costs only a re-read. Whoever owns the partition next starts at the committed
offset and replays a recorded in-flight range with its token, so a batch that did land (or is
still landing from here) is not stored twice; consumers/replay_check.py checks the ids after.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from analytics.schema import EVENTS
from analytics.store import StoreError, Writer
from consumers.dlq import DeadLetters
from consumers.enrich import Enricher
from consumers.kafka_batches import PartitionBuffer, inflight_metadata
from consumers.metrics import ConsumerMetrics
from consumers.replay_check import insert_replay
from consumers.settings import ConsumerSettings
from consumers.sources.kafka import KafkaSource, Offsets, Partitions

log = logging.getLogger("beacon.consumer")

LAG_INTERVAL_S = 1.0  # how often the lag gauge asks the broker for end offsets


class KafkaPipeline:
    """Moves events from a Kafka consumer group into ClickHouse, exactly once in effect."""

    def __init__(
        self,
        source: KafkaSource,
        writer: Writer,
        dead_letters: DeadLetters,
        metrics: ConsumerMetrics,
        settings: ConsumerSettings,
    ) -> None:
        self.source = source
        self.writer = writer
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.max_rows = settings.batch_max_rows
        self.max_age_s = settings.batch_max_age_ms / 1000
        self.poll_ms = settings.poll_interval_ms
        self.max_records = settings.kafka_max_records
        self.retry_max_s = settings.retry_max_ms / 1000
        self.enricher = Enricher()
        self.parts: dict[TopicPartition, PartitionBuffer] = {}
        # Assigned, paused until their committed offset and in-flight range are read.
        self.unadopted: Partitions = set()
        self.assignments = 0  # bumped on every assignment: a stale adoption is discarded

    # -- rebalance callbacks (aiokafka's coordinator task calls these) ----------------------

    def _revoked(self, tps: Partitions) -> None:
        for tp in tps:
            part = self.parts.pop(tp, None)
            if part is not None and part.batch is not None:
                self.metrics.batches.labels("revoked").inc()
            with contextlib.suppress(KeyError):
                self.metrics.lag_records.remove(tp.topic, str(tp.partition))
        self.unadopted -= tps
        if tps:
            log.info("partitions revoked, uncommitted records left to the next owner: %s", tps)

    def _assigned(self, tps: Partitions) -> None:
        self.assignments += 1
        new = tps - self.parts.keys()
        self.source.pause(*new)
        self.unadopted |= new

    # -- the loop ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set, store what is buffered, leave the group, return."""
        await self.source.start(self._revoked, self._assigned)
        try:
            await self.source.ensure_topic(self.dead_letters.topic)
            await self.dead_letters.start()
            lag = asyncio.create_task(self._watch_lag())
            try:
                while not stop.is_set():
                    await self._step()
                while self.parts and await self._flush(final=True):
                    pass  # until everything is stored, or the store fails: then leave it
            finally:
                lag.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await lag
                await self.dead_letters.stop()
        finally:
            await self.source.stop()

    async def _step(self) -> None:
        polled = await self.source.poll(self.poll_ms, self.max_records)
        if self.unadopted:
            await self._adopt()
        now = time.monotonic()
        for tp, records in polled.items():
            part = self.parts.get(tp)
            if part is None:
                # Fetched in the moment between assignment and our pause: read it again later.
                self.source.rewind(tp, records[0].offset)
                continue
            if records[0].offset < part.next_offset:
                # Never take an offset twice: the batch boundaries (and tokens) depend on it.
                log.warning("%s: skipping records before offset %d", tp, part.next_offset)
                records = [r for r in records if r.offset >= part.next_offset]
            part.add(records, now)
            self.metrics.rows_read.inc(len(records))
        await self._flush(final=False)
        self.metrics.paused_partitions.set(len(self.source.paused()))

    async def _adopt(self) -> None:
        """Read committed offsets and in-flight ranges of new partitions, then fetch them."""
        tps = self.unadopted & self.source.assignment()
        self.unadopted = set(tps)  # the others were revoked meanwhile
        if not tps:
            return
        assignments = self.assignments
        try:
            state = await self.source.committed(tps)
            fresh = [tp for tp, (offset, _) in state.items() if offset is None]
            beginning = await self.source.beginning(fresh) if fresh else {}
        except KafkaError as exc:
            log.warning("reading committed offsets failed, will retry: %s", exc)
            return  # they stay paused
        if assignments != self.assignments:
            return  # reassigned meanwhile: read again
        adopted = tps & self.unadopted  # not revoked meanwhile
        for tp in adopted:
            offset, inflight = state[tp]
            committed = beginning.get(tp, 0) if offset is None else offset
            self.parts[tp] = PartitionBuffer(tp, committed, inflight)
            if inflight is not None:
                self.metrics.replayed_batches.inc()
                log.info("%s: replaying in-flight offsets %d-%d", tp, *inflight)
        self.unadopted -= adopted
        self.source.resume(*adopted)

    async def _flush(self, final: bool) -> bool:
        """Move every due batch one attempt further; True if any got committed."""
        now = time.monotonic()
        due: list[PartitionBuffer] = []
        for part in self.parts.values():
            highwater = self.source.highwater(part.tp)
            part.cut(now, self.max_rows, self.max_age_s, highwater, final)
            if part.batch is not None and (final or now >= part.retry_at):
                due.append(part)
        for part in due:
            self._prepare(part)
        due = await self._dead_letter(due)
        due = await self._mark(due)
        due = await self._insert(due)
        return await self._commit(due)

    # -- the steps of a batch ---------------------------------------------------------------

    def _prepare(self, part: PartitionBuffer) -> None:
        batch = part.flight
        if not batch.prepared:
            batch.prepare(self.enricher)
            for _, reason in batch.rejects:
                self.metrics.rows_rejected.labels(reason).inc()

    async def _dead_letter(self, parts: list[PartitionBuffer]) -> list[PartitionBuffer]:
        ok = []
        for part in parts:
            batch = part.flight
            if not batch.dead_lettered:
                try:
                    await self.dead_letters.send(batch.rejects)
                except KafkaError as exc:
                    self._fail(part, "dlq", exc)
                    continue
                batch.dead_lettered = True
                for record, reason in batch.rejects:
                    self.metrics.dlq_records.labels(reason).inc()
                    log.warning("%s offset %d dead-lettered: %s", part.tp, record.offset, reason)
            ok.append(part)
        return ok

    async def _mark(self, parts: list[PartitionBuffer]) -> list[PartitionBuffer]:
        parts = self._live(parts)
        todo = [p for p in parts if not p.flight.marked]
        offsets = {p.tp: (p.flight.first, inflight_metadata(p.flight.first, p.flight.last))
                   for p in todo}  # fmt: skip
        if offsets and not await self._commit_offsets(offsets, todo, "mark"):
            return [p for p in parts if p not in todo]
        for part in todo:
            part.flight.marked = True
        return parts

    async def _insert(self, parts: list[PartitionBuffer]) -> list[PartitionBuffer]:
        async def one(part: PartitionBuffer) -> bool:
            batch = part.flight
            if batch.stored or batch.rows is None or batch.good == 0:
                return True
            started = time.perf_counter()
            try:
                if batch.replay:
                    await insert_replay(self.writer, batch.rows, batch.token)
                else:
                    await self.writer.insert(EVENTS, batch.rows, batch.token)
            except StoreError as exc:
                self.metrics.inserts.labels("error").inc()
                self._fail(part, "insert", exc)
                return False
            self.metrics.insert_seconds.observe(time.perf_counter() - started)
            self.metrics.inserts.labels("ok").inc()
            self.metrics.rows_inserted.inc(batch.good)
            self.metrics.batch_rows.observe(batch.good)
            batch.stored = True
            return True

        # Concurrent across partitions: an HTTP writer overlaps them, chDB takes them in turn.
        results = await asyncio.gather(*(one(p) for p in parts))
        return [p for p, ok in zip(parts, results, strict=True) if ok]

    async def _commit(self, parts: list[PartitionBuffer]) -> bool:
        parts = self._live(parts)
        offsets = {p.tp: (p.flight.last + 1, "") for p in parts}
        if not offsets or not await self._commit_offsets(offsets, parts, "commit"):
            return False
        for part in parts:
            self.metrics.batches.labels("stored" if part.flight.good else "rejected").inc()
            part.done()
            if self.parts.get(part.tp) is part:  # not a new owner's partition, paused to adopt
                self.source.resume(part.tp)
        return True

    def _live(self, parts: list[PartitionBuffer]) -> list[PartitionBuffer]:
        """The parts still ours. One revoked while its batch was on the way is the next
        owner's to commit: aiokafka refuses partitions not assigned and the broker an old
        generation, and this keeps a stale batch from committing under a new assignment."""
        return [p for p in parts if self.parts.get(p.tp) is p]

    async def _commit_offsets(
        self, offsets: Offsets, parts: list[PartitionBuffer], step: str
    ) -> bool:
        try:
            await self.source.commit(offsets)
        except KafkaError as exc:
            for part in parts:
                self._fail(part, step, exc)
            return False
        return True

    def _fail(self, part: PartitionBuffer, step: str, exc: Exception) -> None:
        if self.parts.get(part.tp) is not part:
            return  # revoked meanwhile: the next owner reads it again
        delay_s = part.failed(time.monotonic(), self.retry_max_s)
        self.source.pause(part.tp)
        self.metrics.retries.labels(step).inc()
        self.metrics.batches.labels("failed").inc()
        first, last = part.flight.first, part.flight.last
        log.warning("%s %d-%d: %s failed, paused for %.1fs: %s", part.tp, first, last, step,
                    delay_s, str(exc)[:300])  # fmt: skip

    async def _watch_lag(self) -> None:
        """Lag per partition from the broker's end offsets: a paused partition is not fetched,
        so the highwater seen by the fetcher would stand still while the backlog grows."""
        while True:
            await asyncio.sleep(LAG_INTERVAL_S)
            parts = dict(self.parts)
            if not parts:
                continue
            try:
                ends = await self.source.end(parts)
            except KafkaError as exc:
                log.debug("end offsets unavailable: %s", exc)
                continue
            for tp, part in parts.items():
                current = self.parts.get(tp)
                if tp not in ends or current is None or current is not part:
                    continue  # revoked meanwhile
                lag = max(0, ends[tp] - current.committed)
                self.metrics.lag_records.labels(tp.topic, str(tp.partition)).set(lag)
