"""A Kafka consumer group as a feed of batches: one batch on its way at a time, taking the due
records of every partition this member owns (kafka_batches).

A batch is cut by rows, bytes or age, or once the topic is quiet: a poll interval fetched
nothing and every partition owned is read to its high watermark, so the end of a burst is
stored at once, not an age later. At most once a batch age: a trickle of events still makes
about one insert an age. Collectors cannot be seen from here; the quiet rule needs none of
them, only the broker's ends.

Rejects go to the dead-letter topic (acked) before anything is committed past them; a batch
is recorded as in flight by committing its ranges as metadata (kafka_batches) and acknowledged
by committing last + 1 for each of its partitions. A batch that waits for a retry pauses its
partitions, while the loop keeps calling getmany(), so the member stays in the group.

On a rebalance the in-memory state of revoked partitions is dropped, not flushed: flushing
inside the callback would hold up the whole group for as long as ClickHouse is slow or down,
while dropping costs only a re-read. Whoever owns the partition next starts at the committed
offset and replays a recorded in-flight range, so a batch that did land (or is still landing
from here) is not stored twice; consumers/ingest.py checks a replay's ids. A batch on its way
that loses one of its partitions is dropped, and the partitions kept are read again from their
committed offsets, as a new owner would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Iterable

from aiokafka import TopicPartition
from aiokafka.errors import IllegalStateError, KafkaError

from consumers.dlq import DeadLetters
from consumers.metrics import ConsumerMetrics
from consumers.settings import ConsumerSettings
from consumers.sources import aiokafka_compat
from consumers.sources.kafka import KafkaSource, Offsets, Partitions
from consumers.sources.kafka_batches import BACKLOG_AGES, KafkaBatch, PartitionBuffer, cut
from consumers.sources.protocol import Batch, Quiet, T
from consumers.sources.record_batch import Replaced

log = logging.getLogger("beacon.consumer")

LAG_INTERVAL_S = 1.0  # how often the lag gauge asks the broker for end offsets
# How long an ask for end offsets may take. aiokafka waits for the leader of every partition
# asked for up to its request timeout (40 s): one without a leader would stop every gauge.
LAG_ASK_TIMEOUT_S = 5.0
# How long a partition new to the group whose log start could not be read (no leader) waits
# before it is asked again: the ask holds the poll up to LAG_ASK_TIMEOUT_S.
START_ASK_AGAIN_S = 30.0
RECORD_BYTES_START = 64 * 1024


class KafkaFeed:
    """Batches of the partitions this group member owns."""

    errors: tuple[type[Exception], ...] = (KafkaError,)

    def __init__(
        self,
        source: KafkaSource,
        dead_letters: DeadLetters,
        metrics: ConsumerMetrics,
        settings: ConsumerSettings,
    ) -> None:
        self.source = source
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.max_rows = settings.batch_max_rows
        self.max_bytes = settings.batch_max_bytes
        self.max_age_s = settings.batch_max_age_ms / 1000
        self.replay_wait_s = self.max_age_s * BACKLOG_AGES  # as kafka_batches.cut's
        self.poll_ms = settings.poll_interval_ms
        self.max_records = settings.kafka_max_records
        self.parts: dict[TopicPartition, PartitionBuffer] = {}
        self.flight: KafkaBatch | None = None  # the batch on its way
        # Held by the pipeline over an insert attempt; a revocation waits for it, so that
        # the next owner's replay never checks the stored ids while this insert still runs.
        self.inserting = asyncio.Lock()
        # Assigned, paused until their committed offset and in-flight range are read.
        self.unadopted: Partitions = set()
        # The recorded batches this member replays, counted once each: the hash of one of
        # several partitions (it names all their ranges), else the partition and first offset.
        self.replays: set[str | tuple[TopicPartition, int]] = set()
        # Monotonic time a partition without a commit is asked for its log's start again.
        self.ask_start_at: dict[TopicPartition, float] = {}
        self.assignments = 0  # bumped on every assignment: a stale adoption is discarded
        self.skipped = False  # the last read fetched nothing: the buffers were full
        # A poll's records are handed over and not yet in their buffers (read() awaits an
        # adoption in between): the client's position is past them already. getmany() hands
        # them over as it returns, without a moment for another task in between.
        self.handing = False
        # Partitions moved past records the broker removed (_expired), or taken from a new
        # log's start (_restart), whose group commit still names the offsets before, and an
        # error the client gave the lag watcher that the loop's own call would have raised:
        # both left to read(), in the loop's task.
        self.expired: Partitions = set()
        # Offsets the client skipped, [first, end) by partition, not yet known removed: a
        # transaction's commit or abort marker takes an offset and is never handed over too
        # (another producer's: Kafka Connect, Flink, MirrorMaker). The lag watcher counts
        # what lies below the log's start (_count_removed), the one sure sign of removal.
        self.skipped_offsets: list[tuple[TopicPartition, int, int]] = []
        # Partitions whose log was found to start again while records of the log before still
        # waited here: their new log is taken from its start once those are stored.
        self.restarting: Partitions = set()
        self.client_error: KafkaError | None = None
        # Bytes of a record, as the last poll brought them; until one came, the collector's
        # largest (BEACON_KAFKA_RECORD_MAX_BYTES' default).
        self.record_bytes = RECORD_BYTES_START
        # Polls that fetched nothing, from the start of the first of them.
        self.quiet = Quiet(self.poll_ms / 1000, self.max_age_s)
        self._lag: asyncio.Task[None] | None = None
        # Per partition: the last lag in records read from the broker, and the received_at
        # (ms) of the newest event stored from it since it was assigned here.
        self.lag_records: dict[TopicPartition, int] = {}
        self.newest_ms: dict[TopicPartition, int] = {}
        # Per partition: its log's end as the broker last listed it (the lag watcher's ask). A
        # fetch's highwater from a leader just elected can lag its log until its followers
        # catch up, while the broker refuses to list that end until then.
        self.listed_ends: dict[TopicPartition, int] = {}

    # -- rebalance callbacks (aiokafka's coordinator task calls these) ----------------------

    async def _revoked(self, tps: Partitions) -> None:
        """aiokafka waits for this before the group moves on: an insert attempt under way
        finishes first, and none starts after it for a batch of these partitions (the
        pipeline checks `owns` under the same lock). The group waits for it up to its
        rebalance timeout (aiokafka's default: the session timeout); a longer insert loses
        the member its place, and its partitions' next owner may check beside it."""
        async with self.inserting:
            self._revoke(tps)

    def _revoke(self, tps: Partitions) -> None:
        flight = self.flight
        if flight is not None and not tps.isdisjoint(flight.tps):
            self.metrics.batches.labels("revoked").inc()
            flight.revoked = True  # its commit under way, if it lands, counts it no more
            self.flight = None
            # The partitions kept are read again from their commits, as a new owner would.
            kept = (set(flight.tps) - tps) & self.parts.keys()
            for tp in kept:
                del self.parts[tp]
            self.source.pause(*kept)
            self.unadopted |= kept
        for tp in tps:
            self.parts.pop(tp, None)
        self._forget(tps)
        self.unadopted -= tps
        self.expired -= tps
        self.restarting -= tps
        for tp in tps:
            self.ask_start_at.pop(tp, None)
        if tps:
            log.info("partitions revoked, uncommitted records left to the next owner: %s", tps)

    def _forget(self, tps: Iterable[TopicPartition]) -> None:
        """Drop the partitions' series: another member shows them now."""
        for tp in tps:
            self.lag_records.pop(tp, None)
            self.listed_ends.pop(tp, None)
            self.newest_ms.pop(tp, None)
            for gauge in (
                self.metrics.lag_records,
                self.metrics.lag_seconds,
                self.metrics.newest_event_timestamp,
            ):
                with contextlib.suppress(KeyError):
                    gauge.remove(tp.topic, str(tp.partition))

    def _assigned(self, tps: Partitions) -> None:
        self.assignments += 1
        new = tps - self.parts.keys()
        self.source.pause(*new)
        self.unadopted |= new

    # -- the feed ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Join the group; raises KafkaError (the broker unreachable) with nothing left open."""
        try:
            await self.source.start(self._revoked, self._assigned)
            await self.source.ensure_topic(self.dead_letters.topic)
            await self.dead_letters.start()
        except BaseException:
            try:
                await self.dead_letters.stop()
            finally:
                await self.source.stop()
            raise
        self._lag = asyncio.create_task(self._watch_lag())

    async def stop(self) -> None:
        """Leave the group (its partitions go to the others at once)."""
        try:
            if self._lag is not None:
                self._lag.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._lag
            # Skipped since the watcher's last look: counted now, or records removed just
            # before a stop would never page (the commits are past them, for the next owner).
            try:
                await self._count_removed()
            except Exception:  # the stop goes on: the dead letters' producer still stops
                log.exception("counting the records removed before the stop failed")
            await self.dead_letters.stop()
        finally:
            await self.source.stop()
            # Leaving revokes nothing through the callback: a member started after a Kafka
            # error (service.run_kafka_pipeline, same metrics) may not get these partitions
            # back, and their series would stay at their last values for good, holding the
            # lag alerts (max by partition) up or down.
            self._forget({*self.parts, *self.lag_records, *self.newest_ms})

    async def read(self, final: bool) -> int:
        if self.client_error is not None:
            error, self.client_error = self.client_error, None
            raise error
        if final:
            return 0  # stopping: store what is buffered, fetch no more
        if self.unadopted:
            await self._adopt()
        if self.expired:
            await self._commit_expired()
        # A batch's worth is waiting: fetch no more until it is on its way, so the buffers
        # hold about a batch whatever the backlog and the partitions owned, and a backlog
        # still makes full batches (the member stays in its group: aiokafka heartbeats apart,
        # and the loop polls again within an insert). A replay must read its recorded ranges
        # through, however large they were cut: once the others are full, only their
        # partitions are polled, and the others wait within the bound (one fetch each, in
        # aiokafka). The ranges' records are held apart from the bound: each is at most the
        # batch it was cut in. A range read through waits for the rest of its batch (up to
        # BACKLOG_AGES ages, for a partition without a leader): its partition is not polled
        # meanwhile, or its records would pile up, and the others are, or they would starve.
        parts = self.parts.values()
        buffered = sum(p.bytes for p in parts if p.inflight is None)
        recorded = [p for p in parts if p.inflight is not None]
        waiting = {p.tp for p in recorded if p.read_through()}
        full = buffered >= self.max_bytes
        only: list[TopicPartition] = []  # none named: every partition
        if full:
            only = [p.tp for p in recorded if p.tp not in waiting]
        elif waiting:
            only = [p.tp for p in parts if p.tp not in waiting]
        self.skipped = bool(full or waiting) and not only
        if self.skipped:
            # Nothing asked, but getmany() called all the same: buffers full behind a batch
            # that fails for as long as max_poll_interval_ms (ClickHouse down) would otherwise
            # make the member leave its group, and a rebalance throw them away, again and again.
            await self.source.keep_alive()
            self.quiet.saw(True, time.monotonic())  # full, not quiet: nothing was asked
            return 0
        # getmany() counts records, not bytes, and hands over what aiokafka prefetched from
        # every partition (up to max_partition_fetch_bytes each): 5,000 records of 64 KiB are
        # 320 MiB, and a consumer of 24 partitions took ~110 MB past its bound in one poll. So
        # a poll asks for the room left, in records of the size the last poll brought.
        wanted = self.max_records
        if not full:
            wanted = max(1, min(wanted, (self.max_bytes - buffered) // self.record_bytes))
        asked = time.monotonic()
        polled = await self.source.poll(self.poll_ms, wanted, only)
        self.quiet.saw(bool(polled), asked)
        if self.unadopted:
            self.handing = bool(polled)
            try:
                await self._adopt()
            finally:
                self.handing = False
        return self._take(polled)

    def _count_replaced(self, tp: TopicPartition, records: list) -> None:
        """Count the records taken whose header key was not UTF-8 (read replaced)."""
        replaced = [
            r for r in records if r.headers and any(type(k) is Replaced for k, _ in r.headers)
        ]
        if replaced:
            self.metrics.records_header_replaced.inc(len(replaced))
            log.warning("%s offset %d: %d record(s) read with a header key that is not UTF-8, "
                        "its bytes replaced: another producer writes to the topic", tp,
                        replaced[0].offset, len(replaced))  # fmt: skip

    def _take(self, polled: dict[TopicPartition, list]) -> int:
        """Buffer a poll's records; how many were taken."""
        now = time.monotonic()
        taken = taken_bytes = 0
        # Looked for once a batch was read past such a key in this process (its records may
        # come in later polls), not before: a look at every record costs.
        scan = aiokafka_compat.fallbacks() > 0
        for tp, records in polled.items():
            part = self.parts.get(tp)
            if part is None:
                # Fetched in the moment between assignment and our pause: read it again later.
                self.source.rewind(tp, records[0].offset)
                continue
            if records[0].offset < part.next_offset and (
                tp in self.restarting or self._starts_again(part)
            ):
                if part.records or self._on_its_way(tp):
                    # Taken once those are stored, by then maybe past the offset read to.
                    self.restarting.add(tp)
                    self.source.rewind(tp, records[0].offset)
                    continue
                self._restart(part, records[0].offset)
            elif records[0].offset < part.next_offset:
                # Never take an offset twice: the batch boundaries (and tokens) depend on it.
                log.warning("%s: skipping records before offset %d", tp, part.next_offset)
                records = [r for r in records if r.offset >= part.next_offset]
            elif records[0].offset > part.next_offset:
                self._expired(part, records[0].offset)
            if scan:
                self._count_replaced(tp, records)
            before = part.bytes
            part.add(records, now)
            taken += len(records)
            taken_bytes += part.bytes - before
        if taken:
            self.record_bytes = max(1, taken_bytes // taken)
        return taken

    async def idle(self, stop: asyncio.Event) -> None:
        if self.skipped:  # nothing fetched and nothing stored: a batch waits for its retry
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.poll_ms / 1000)
        # else getmany() has waited up to poll_interval_ms already

    async def _adopt(self) -> None:
        """Read committed offsets and in-flight ranges of new partitions, then fetch them."""
        self.unadopted &= self.source.assignment()  # the others were revoked meanwhile
        now = time.monotonic()
        tps = {tp for tp in self.unadopted if self.ask_start_at.get(tp, 0) <= now}
        if not tps:
            return
        assignments = self.assignments
        try:
            state = await self.source.committed(tps)
        except KafkaError as exc:
            log.warning("reading committed offsets failed, will retry: %s", exc)
            return  # they stay paused
        fresh = [tp for tp, (offset, _) in state.items() if offset is None]
        beginning = await self._starts(fresh) if fresh else {}
        if assignments != self.assignments:
            return  # reassigned meanwhile: read again
        unknown = set(fresh) - beginning.keys()
        if unknown:
            # Without a leader: the others go on, these stay paused and are asked again.
            log.warning("%s: no commit, and the log's start could not be read; asking again "
                        "in %.0f s", sorted(unknown), START_ASK_AGAIN_S)  # fmt: skip
            self.ask_start_at.update(dict.fromkeys(unknown, now + START_ASK_AGAIN_S))
        adopted = (tps - unknown) & self.unadopted  # not revoked meanwhile
        now = time.monotonic()
        for tp in adopted:
            offset, inflight = state[tp]
            committed = beginning.get(tp, 0) if offset is None else offset
            self.parts[tp] = PartitionBuffer(tp, committed, inflight, now)
            self.listed_ends.pop(tp, None)  # a recorded range waits for an end listed from now
            self.source.rewind(tp, committed)  # one kept after a revocation was read past it
            if inflight is not None:
                log.info("%s: replaying in-flight offsets %d-%d", tp, *inflight[:2])
                # Once a batch, not a partition: a batch spans every partition it was cut from.
                replay = inflight.batch or (tp, inflight.first)
                if replay not in self.replays:
                    self.replays.add(replay)
                    self.metrics.replayed_batches.inc()
        self.unadopted -= adopted
        for tp in adopted:
            self.ask_start_at.pop(tp, None)
        self.source.resume(*adopted)

    async def _starts(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        """The first offsets of the partitions' logs the broker gives within
        LAG_ASK_TIMEOUT_S, each asked alone: one without a leader would hold the ask for all
        for aiokafka's request timeout (40 s), every poll, and adopt none of them."""
        asks = [asyncio.wait_for(self.source.beginning([tp]), LAG_ASK_TIMEOUT_S) for tp in tps]
        starts: dict[TopicPartition, int] = {}
        for answer in await asyncio.gather(*asks, return_exceptions=True):
            if isinstance(answer, dict):
                starts.update(answer)
            elif not isinstance(answer, KafkaError | TimeoutError):
                raise answer
        return starts

    def batches(self, now: float, final: bool) -> list[Batch]:
        if self.flight is None:
            parts = list(self.parts.values())
            highwaters = {p.tp: self._end(p, now) for p in parts}
            limits = (self.max_rows, self.max_bytes, self.max_age_s)
            self.flight = cut(parts, highwaters, now, limits, final, self.quiet.due(now))
            if self.flight is not None:
                self.metrics.batch_cuts.labels(self.flight.cut_by).inc()
                if self.flight.cut_by == "quiet":
                    self.quiet.cut_at = now
        return [] if self.flight is None else [self.flight]

    def _end(self, part: PartitionBuffer, now: float) -> int | None:
        """How far the partition's log goes: the fetch's highwater, or the end last listed
        when that is further. A recorded range read to a lagging highwater would be taken for
        ended, and the rest of it stored again as fresh records, without the id check: so
        while one waits, none is known until an end was listed since the partition was taken
        (the lag watcher asks every LAG_INTERVAL_S), for up to a replay's wait. And for one
        that waits, the log's end itself: a range recorded by a member that read records of a
        transaction still open (before consumers read committed ones only) ends past the last
        stable offset, and would be taken for ended there."""
        fetched, listed = self.source.highwater(part.tp), self.listed_ends.get(part.tp)
        if part.inflight is not None and not part.read_through() and fetched is not None:
            fetched = max(fetched, self.source.log_end(part.tp) or 0)
        if listed is None:
            waiting = part.inflight is not None and not part.read_through()
            if waiting and now - part.adopted_at < self.replay_wait_s:
                return None  # not for one read through: the end counts for what follows it
            return fetched
        return listed if fetched is None else max(fetched, listed)

    def owns(self, batch: Batch) -> bool:
        """The batch is on its way here and its partitions are still ours. One revoked while
        its batch was on the way is the next owner's to commit: aiokafka refuses partitions not
        assigned and the broker an old generation, and this keeps a stale batch from
        committing under a new assignment."""
        return batch is self.flight

    async def reject(self, batch: Batch) -> None:
        assert isinstance(batch, KafkaBatch)
        rejects = batch.rejected_lines()
        # A slow DLQ broker (a quota, a broker catching up) can hold this step long.
        try:
            await self.alive_through(self.dead_letters.send(rejects))
        except KafkaError:
            # A dead-letter topic deleted meanwhile (a purge) is made again, as at the start:
            # brokers here create no topic a producer asks for, and every member's next bad
            # line would hold its batch, and all after it, until a restart.
            try:
                topic = self.source.ensure_topic(self.dead_letters.topic)
                await self.alive_through(asyncio.wait_for(topic, LAG_ASK_TIMEOUT_S))
            except (KafkaError, TimeoutError) as exc:
                log.warning("the dead-letter topic %s could not be checked: %r",
                            self.dead_letters.topic, exc)  # fmt: skip
            raise
        for record, line, value, reason in rejects:
            self.metrics.dlq_records.labels(reason).inc()
            log.warning("%s-%d offset %d line %d (%d bytes) dead-lettered: %s", record.topic,
                        record.partition, record.offset, line, len(value), reason)  # fmt: skip

    async def alive_through(self, step: Awaitable[T]) -> T:
        """Await `step` while the group hears from this member. A step of the loop longer
        than max_poll_interval_ms (a slow DLQ, an erasure's rebuild of a large day) made it
        leave its group: the batch was read again and the step taken again, as long as each
        try took that long. Never under `inserting`: a rebalance's revocation waits for that
        lock, and the getmany() let finish here waits for the rebalance."""
        done = asyncio.Event()
        beat = asyncio.create_task(self._keep_alive_until(done))
        try:
            return await step
        finally:
            done.set()
            # Its getmany() under way is let finish (through a rebalance, it waits for the
            # assignment): one cancelled leaves aiokafka's count of polls under way up for
            # good, and the member is never taken for stuck again.
            await asyncio.shield(beat)

    async def _keep_alive_until(self, done: asyncio.Event) -> None:
        """Call getmany() for no partition every poll interval until `done`; an error it
        raises is left to read(), in the loop's task."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), self.poll_ms / 1000)
                return
            try:
                await self.source.keep_alive()
            except KafkaError as exc:
                self.client_error = self.client_error or exc
                return

    async def mark(self, batches: list[Batch]) -> None:
        offsets: Offsets = {}
        for batch in batches:
            assert isinstance(batch, KafkaBatch)
            for tp, metadata in batch.inflight().items():
                offsets[tp] = (batch.ranges[tp][0], metadata)
        await self.source.commit(offsets)

    async def commit(self, batches: list[Batch]) -> None:
        offsets: Offsets = {}
        for batch in batches:
            assert isinstance(batch, KafkaBatch)
            for tp, (_, last) in batch.ranges.items():
                offsets[tp] = (self._past(tp, last), "")
        await self.source.commit(offsets)
        for batch in batches:
            assert isinstance(batch, KafkaBatch)
            if batch is not self.flight:
                continue  # revoked while committing: the partitions kept are read again
            self.flight = None
            for tp, newest_ms in zip(batch.tps, batch.newest_by_segment, strict=True):
                if newest_ms > self.newest_ms.get(tp, 0):
                    self.newest_ms[tp] = newest_ms
                    self.metrics.stored_newest((tp.topic, str(tp.partition)), newest_ms)
            for tp in batch.ranges:
                part = self.parts[tp]
                # last + 1, or past the records that expired after it (_expired)
                part.committed = part.records[0].offset if part.records else part.next_offset
            self.source.resume(*batch.tps)

    def _past(self, tp: TopicPartition, last: int) -> int:
        """The offset to commit after a batch whose range of `tp` ends at `last`: past the
        records the broker removed after it meanwhile too (_expired), or the next owner would
        find them gone again, and count them again."""
        part = self.parts.get(tp)
        if part is None or self.flight is None or tp not in self.flight.ranges:
            return last + 1  # revoked meanwhile: what the batch stored, no more
        return max(last + 1, part.records[0].offset if part.records else part.next_offset)

    def hold(self, batch: Batch) -> None:
        assert isinstance(batch, KafkaBatch)
        self.source.pause(*batch.tps)

    def after_pass(self) -> None:
        self.metrics.paused_partitions.set(len(self.source.paused()))

    async def _ends(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        """The end offsets the broker gives within LAG_ASK_TIMEOUT_S: of all in one ask, or
        when that fails (a partition without a leader), of each alone. A partition left out
        keeps counting its lag in seconds on from the last lag known."""
        try:
            return await asyncio.wait_for(self.source.end(tps), LAG_ASK_TIMEOUT_S)
        except (KafkaError, TimeoutError) as exc:
            log.debug("end offsets unavailable: %r", exc)
        if len(tps) == 1:
            return {}
        asks = [asyncio.wait_for(self.source.end([tp]), LAG_ASK_TIMEOUT_S) for tp in tps]
        ends: dict[TopicPartition, int] = {}
        for answer in await asyncio.gather(*asks, return_exceptions=True):
            if isinstance(answer, dict):
                ends.update(answer)
        return ends

    def _on_its_way(self, tp: TopicPartition) -> bool:
        """Records of `tp` are in the batch on its way."""
        return self.flight is not None and tp in self.flight.ranges

    def _expired(self, part: PartitionBuffer, offset: int) -> None:
        """The client skipped the offsets of `part` before `offset`: records the broker had
        removed (retention or a deletion) before they were stored here, or transaction
        markers, which hold no record; _count_removed tells them apart. Those of a batch
        recorded in flight are not counted: it may have been stored before they went."""
        recorded = part.inflight.last + 1 if part.inflight is not None else 0
        first = max(part.next_offset, recorded)
        if offset > first:
            self.skipped_offsets.append((part.tp, first, offset))
        part.next_offset = offset
        if not part.records and not self._on_its_way(part.tp):
            part.committed = offset  # nothing of it waits: its lag is what came after
            self.expired.add(part.tp)  # and the group's commit moves past them (_commit_expired)
        # else the batch of the records before them commits past them (_past)

    def _starts_again(self, part: PartitionBuffer) -> bool:
        """The partition's log ends (the fetch's high watermark) before the offset read to
        here: the broker lost it (the only replica's disk, an unclean leader election) or the
        topic was made again, and the client, asked past the end, starts again at the log's
        start (auto_offset_reset). Its records from there are new, or, of a log that lost
        only its tail, ones it kept: those are stored again, copies with their event ids that
        every reader counts once."""
        highwater = self.source.highwater(part.tp)
        return highwater is not None and highwater < part.next_offset

    def _restart(self, part: PartitionBuffer, offset: int) -> None:
        """Read `part` on from `offset`, where its log starts again: a range recorded in
        flight there was of the log before (its batch may have been stored), and tokens name
        the timestamps of each range's first and last records too, so no range of the new log
        is taken for the old's, even one that starts with a record the log kept."""
        self.metrics.partition_restarts.inc()
        log.warning("%s: the log ends before offset %d read here; it starts again at %d (the "
                    "broker lost it, or the topic was made again)", part.tp, part.next_offset,
                    offset)  # fmt: skip
        part.next_offset = part.committed = offset
        part.inflight = None
        self.listed_ends.pop(part.tp, None)  # the old log's
        self.restarting.discard(part.tp)
        # Its group commit names the old log's offset: a next owner would start there, past
        # the new log's records below it once it has grown that far.
        self.expired.add(part.tp)

    async def _commit_expired(self) -> None:
        """Commit the offset past the removed records of each partition where nothing before
        them waited (none on its way, no recorded range left to replay; the records after
        them may be buffered already), or a restarted log's start: at the next read, not with
        the batch of those a batch age later. Until then the group's commit names them, and a
        next owner (a rebalance, members joining one by one) would find them gone again,
        counting them again, or replaying a recorded range of them."""
        offsets: Offsets = {}
        for tp in list(self.expired):
            part = self.parts.get(tp)
            if part is not None and part.inflight is not None and not part.records:
                continue  # its recorded range clears once read to the end (_caught_up)
            self.expired.discard(tp)
            if part is None or part.inflight is not None or self._on_its_way(tp):
                continue  # revoked, or its recorded range's batch commits past them
            offsets[tp] = (part.committed, "")
        if not offsets:
            return
        try:
            await self.source.commit(offsets)
        except KafkaError as exc:
            log.warning("committing past removed records or a restart failed, will retry: %r", exc)
            self.expired |= offsets.keys()

    async def _skip_expired(
        self, parts: dict[TopicPartition, PartitionBuffer], ends: dict[TopicPartition, int]
    ) -> None:
        """A partition whose records past its commit the broker removed, with nothing newer:
        the client starts again past them and hands over nothing, so without this the
        partition would stay behind its end for good, its lag never falling, holding back the
        age and quiet cuts of every partition here, its recorded range never read through.
        Its position, asked only while nothing of it waits here, says how far it moved."""
        idle = [tp for tp, p in parts.items() if not p.records and ends.get(tp, 0) > p.next_offset]
        asks = [asyncio.wait_for(self.source.position(tp), LAG_ASK_TIMEOUT_S) for tp in idle]
        answers = await asyncio.gather(*asks, return_exceptions=True)
        for tp, position in zip(idle, answers, strict=True):
            part = parts[tp]
            if isinstance(position, KafkaError) and not isinstance(position, IllegalStateError):
                # position() raises the group's errors the loop's own poll would have: the
                # loop gets them from read().
                self.client_error = self.client_error or position
            if not isinstance(position, int) or self.parts.get(tp) is not part:
                continue  # not known in time, or revoked meanwhile
            if not self.handing and not part.records and position > part.next_offset:
                self._expired(part, position)

    async def _count_removed(self) -> None:
        """Count the skipped offsets that lie below their log's start now: records the
        broker removed before they were read (beacon_consumer_records_expired_total, which
        pages). Those above it held transaction markers, or records compacted away."""
        skipped, self.skipped_offsets = self.skipped_offsets, []
        if not skipped:
            return
        try:
            starts = await self._starts(sorted({tp for tp, _, _ in skipped}))
        except BaseException:  # cancelled by a stop, which looks again: none left out
            self.skipped_offsets[:0] = skipped
            raise
        for tp, first, end in skipped:
            if tp not in starts:  # not known in time: asked again at the next look, if ours
                if tp in self.parts:
                    self.skipped_offsets.append((tp, first, end))
                continue
            removed = min(end, starts[tp]) - first
            if removed > 0:
                self.metrics.records_expired.inc(removed)
                log.warning("%s: offsets %d-%d were removed from the broker before they were"
                            " read", tp, first, first + removed - 1)  # fmt: skip

    async def _watch_lag(self) -> None:
        """Lag per partition from the broker's end offsets: a paused partition is not fetched,
        so the highwater seen by the fetcher would stand still while the backlog grows."""
        while True:
            await asyncio.sleep(LAG_INTERVAL_S)
            parts = dict(self.parts)
            if not parts:
                continue
            ends = await self._ends(list(parts))
            for tp, end in ends.items():
                if self.parts.get(tp) is parts[tp]:  # not revoked meanwhile
                    self.listed_ends[tp] = end
            await self._skip_expired(parts, ends)
            await self._count_removed()
            now_s = time.time()
            for tp, part in parts.items():
                current = self.parts.get(tp)
                if current is None or current is not part:
                    continue  # revoked meanwhile
                if tp in ends:
                    # The records an open transaction holds back wait too: one left open (a
                    # producer gone) must show as lag, and page, not hide behind its start.
                    end = max(ends[tp], self.source.log_end(tp) or 0)
                    lag = self.lag_records[tp] = max(0, end - current.committed)
                    self.metrics.lag_records.labels(tp.topic, str(tp.partition)).set(lag)
                if tp in self.lag_records:  # unknown until an end offset was read
                    self.metrics.show_lag_seconds(
                        (tp.topic, str(tp.partition)),
                        self.lag_records[tp] > 0,
                        self.newest_ms.get(tp, 0),
                        now_s,
                    )
