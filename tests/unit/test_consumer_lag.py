"""The consumer's lag in seconds (beacon_consumer_lag_seconds) and the time of the newest event it
stored (beacon_consumer_newest_event_timestamp_seconds), per Kafka partition and for the spool:
the age of the newest stored event while records wait, 0 once none does. The Kafka broker is
faked at the source's edge; the spool is real files."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from pathlib import Path

import orjson
import pytest
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import GroupAuthorizationFailedError, KafkaTimeoutError
from prometheus_client import CollectorRegistry

from collector.metrics import CollectorMetrics
from collector.sinks.spool import SpoolSink
from consumers.metrics import SPOOL_TOPIC, ConsumerMetrics
from consumers.settings import ConsumerSettings
from consumers.sources import kafka_feed
from consumers.sources.kafka_batches import BACKLOG_AGES, Inflight, KafkaBatch, PartitionBuffer
from consumers.sources.kafka_feed import KafkaFeed
from consumers.sources.spool import SpoolSource
from consumers.sources.spool_feed import SpoolFeed

TP = TopicPartition("beacon.events", 3)
LABELS = {"topic": "beacon.events", "partition": "3"}
SPOOL = {"topic": SPOOL_TOPIC, "partition": ""}
TEN_MINUTES_MS = 600_000


def gauge(metrics: ConsumerMetrics, name: str, labels: dict[str, str]) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


async def eventually(condition, timeout_s: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


class Broker:
    """The KafkaSource calls the feed makes here, answered from memory."""

    def __init__(self) -> None:
        self.ends: dict[TopicPartition, int] = {}
        self.starts: dict[TopicPartition, int] = {}  # the logs' first offsets: 0 unless set
        self.commits: list[dict[TopicPartition, tuple[int, str]]] = []

    async def end(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.ends[tp] for tp in tps}

    async def beginning(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.starts.get(tp, 0) for tp in tps}

    async def position(self, tp: TopicPartition) -> int:
        return 0  # nothing removed from the broker: no record skipped

    async def commit(self, offsets: dict[TopicPartition, tuple[int, str]]) -> None:
        self.commits.append(offsets)

    def resume(self, *tps: TopicPartition) -> None:
        pass

    def highwater(self, tp: TopicPartition) -> int | None:
        return None

    def log_end(self, tp: TopicPartition) -> int | None:
        return None

    async def stop(self) -> None:
        pass


class DeadLettersStopped:
    async def stop(self) -> None:
        pass


def record(offset: int, tp: TopicPartition = TP) -> ConsumerRecord:
    return ConsumerRecord(tp.topic, tp.partition, offset, 0, 0, None, b"{}", None, 0, 2, ())


async def test_kafka_lag_in_seconds_counts_from_the_newest_stored_event(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(kafka_feed, "LAG_INTERVAL_S", 0.01)
    metrics = ConsumerMetrics(CollectorRegistry())
    broker = Broker()
    feed = KafkaFeed(broker, None, metrics, ConsumerSettings(data_dir=tmp_path))  # type: ignore[arg-type]
    part = feed.parts[TP] = PartitionBuffer(TP, committed=0, inflight=None)
    broker.ends[TP] = 0
    watch = asyncio.create_task(feed._watch_lag())
    try:
        await eventually(lambda: gauge(metrics, "beacon_consumer_lag_seconds", LABELS) == 0)
        # Records wait, none stored yet here: how old they are is not known (not shown).
        part.add([record(0), record(1), record(2)], time.monotonic())
        broker.ends[TP] = 3
        await eventually(lambda: gauge(metrics, "beacon_consumer_lag_records", LABELS) == 3)
        assert gauge(metrics, "beacon_consumer_lag_seconds", LABELS) is None
        # A batch is stored and committed; its newest event was received ten minutes ago.
        [batch] = feed.batches(time.monotonic(), final=True)
        assert isinstance(batch, KafkaBatch)
        newest_ms = time.time_ns() // 1_000_000 - TEN_MINUTES_MS
        batch.newest_by_segment = [newest_ms]
        await feed.commit([batch])
        assert broker.commits == [{TP: (3, "")}]
        timestamp = gauge(metrics, "beacon_consumer_newest_event_timestamp_seconds", LABELS)
        assert timestamp == newest_ms / 1000
        # Caught up: nothing waits, the lag is 0 however old the newest event.
        await eventually(lambda: gauge(metrics, "beacon_consumer_lag_seconds", LABELS) == 0)
        # 40 more records arrive and are not stored: ten minutes behind, and counting.
        broker.ends[TP] = 43
        await eventually(lambda: (gauge(metrics, "beacon_consumer_lag_seconds", LABELS) or 0) > 0)
        lag_s = gauge(metrics, "beacon_consumer_lag_seconds", LABELS)
        assert lag_s is not None and 600 <= lag_s < 660
        # Revoked: the partition's series go with it.
        await feed._revoked({TP})
        for name in ("lag_records", "lag_seconds", "newest_event_timestamp_seconds"):
            assert gauge(metrics, f"beacon_consumer_{name}", LABELS) is None, name
    finally:
        watch.cancel()


async def test_a_feed_that_stops_takes_its_partitions_series_with_it(
    tmp_path: Path, monkeypatch
) -> None:
    """A member started again after a Kafka error (same metrics) may not get the partitions
    back: their series stayed at their last values for good, holding the lag alerts."""

    class DeadLetters:
        async def stop(self) -> None:
            pass

    monkeypatch.setattr(kafka_feed, "LAG_INTERVAL_S", 0.01)
    metrics = ConsumerMetrics(CollectorRegistry())
    broker = Broker()
    settings = ConsumerSettings(data_dir=tmp_path)
    feed = KafkaFeed(broker, DeadLetters(), metrics, settings)  # type: ignore[arg-type]
    feed.parts[TP] = PartitionBuffer(TP, committed=0, inflight=None)
    broker.ends[TP] = 7
    feed._lag = asyncio.create_task(feed._watch_lag())
    await eventually(lambda: gauge(metrics, "beacon_consumer_lag_records", LABELS) == 7)
    await feed.stop()
    for name in ("lag_records", "lag_seconds", "newest_event_timestamp_seconds"):
        assert gauge(metrics, f"beacon_consumer_{name}", LABELS) is None, name


async def test_a_log_found_to_start_again_is_taken_from_its_start_once_the_old_records_are_stored(
    tmp_path: Path,
) -> None:
    """Records of the log before wait here when the new one is found (its end below the
    offset read to): it is read again once they are stored. By then the new log may have
    grown past that offset, and its records were skipped as read before, uncounted. Its
    start is committed at the next read: the group's commit named the old log's offset, and
    a next owner (this member dead before its first batch of the new log) started there."""

    class Restarted(Broker):
        def __init__(self) -> None:
            super().__init__()
            self.end = 10
            self.rewinds: list[tuple[TopicPartition, int]] = []

        def highwater(self, tp: TopicPartition) -> int | None:
            return self.end

        def rewind(self, tp: TopicPartition, offset: int) -> None:
            self.rewinds.append((tp, offset))

    metrics = ConsumerMetrics(CollectorRegistry())
    broker = Restarted()
    feed = KafkaFeed(broker, None, metrics, ConsumerSettings(data_dir=tmp_path))  # type: ignore[arg-type]
    part = feed.parts[TP] = PartitionBuffer(TP, committed=990, inflight=None)
    part.add([record(n) for n in range(990, 1000)], time.monotonic())
    new_log = {TP: [record(n) for n in range(10)]}
    assert feed._take(new_log) == 0
    assert broker.rewinds == [(TP, 0)] and part.next_offset == 1000
    part.take(10, time.monotonic())  # the old records go in a batch, and are stored
    broker.end = 1500  # the new log grew past the offset read to meanwhile
    assert feed._take(new_log) == 10
    assert part.next_offset == 10 and part.committed == 0
    restarts = metrics.registry.get_sample_value("beacon_consumer_partition_restarts_total")
    assert restarts == 1
    await feed._commit_expired()
    assert broker.commits == [{TP: (0, "")}]


async def test_a_batch_commits_past_records_removed_after_it_while_it_was_on_its_way(
    tmp_path: Path,
) -> None:
    """Its commit named the removed offsets: the next owner found them gone again and
    counted them again (BeaconConsumerRecordsExpired twice)."""
    metrics = ConsumerMetrics(CollectorRegistry())
    broker = Broker()
    feed = KafkaFeed(broker, None, metrics, ConsumerSettings(data_dir=tmp_path))  # type: ignore[arg-type]
    part = feed.parts[TP] = PartitionBuffer(TP, committed=0, inflight=None)
    part.add([record(n) for n in range(3)], time.monotonic())
    [batch] = feed.batches(time.monotonic(), final=True)
    assert isinstance(batch, KafkaBatch)
    feed._expired(part, 8)  # the broker removed offsets 3-7 before they were read
    batch.newest_by_segment = [0]
    await feed.commit([batch])
    assert broker.commits == [{TP: (8, "")}]
    broker.starts[TP] = 8
    await feed._count_removed()  # the lag watcher's look
    assert metrics.registry.get_sample_value("beacon_consumer_records_expired_total") == 5


async def test_records_removed_at_the_head_are_committed_past_before_the_records_after_them(
    tmp_path: Path,
) -> None:
    """A member takes a partition whose records 0-49 the broker removed: the commit past them
    waited for the batch of 50-59, a batch age, and a rebalance meanwhile (members joining one
    by one) had the next owner find them gone again and count them again. Records before a
    gap that wait here keep the offset to store from where it is."""
    broker = Broker()
    feed = KafkaFeed(
        broker, None, ConsumerMetrics(CollectorRegistry()), ConsumerSettings(data_dir=tmp_path)
    )  # type: ignore[arg-type]
    head = feed.parts[TP] = PartitionBuffer(TP, committed=0, inflight=None)
    other = TopicPartition(TP.topic, 4)
    behind = feed.parts[other] = PartitionBuffer(other, committed=0, inflight=None)
    behind.add([record(0, other), record(1, other)], time.monotonic())
    assert feed._take({TP: [record(n) for n in range(50, 60)], other: [record(9, other)]}) == 11
    await feed._commit_expired()
    assert broker.commits == [{TP: (50, "")}]  # the other's batch of 0-1 commits past 2-8
    assert [r.offset for r in head.records] == list(range(50, 60))


async def test_offsets_skipped_above_the_logs_start_are_not_counted_removed(
    tmp_path: Path,
) -> None:
    """A transaction's marker takes an offset and holds no record; only offsets below the
    log's start were removed. The count is made once, at the lag watcher's look or the stop."""
    metrics = ConsumerMetrics(CollectorRegistry())
    broker = Broker()
    feed = KafkaFeed(broker, None, metrics, ConsumerSettings(data_dir=tmp_path))  # type: ignore[arg-type]
    part = feed.parts[TP] = PartitionBuffer(TP, committed=0, inflight=None)
    expired = "beacon_consumer_records_expired_total"
    feed._expired(part, 4)  # offsets 0-3: 0-1 removed, 2-3 markers (the log starts at 2)
    broker.starts[TP] = 2
    feed._expired(part, 5)  # offset 4: a marker
    await feed._count_removed()
    assert metrics.registry.get_sample_value(expired) == 2
    await feed._count_removed()  # counted once
    assert metrics.registry.get_sample_value(expired) == 2
    broker.starts[TP] = 9
    feed._expired(part, 9)  # offsets 5-8, removed: counted by the stop, the watcher stopped
    feed.dead_letters = DeadLettersStopped()  # type: ignore[assignment]
    await feed.stop()
    assert metrics.registry.get_sample_value(expired) == 2 + 4


async def test_a_batch_older_than_the_newest_stored_leaves_the_time_alone(tmp_path: Path) -> None:
    metrics = ConsumerMetrics(CollectorRegistry())
    feed = KafkaFeed(Broker(), None, metrics, ConsumerSettings(data_dir=tmp_path))  # type: ignore[arg-type]
    part = feed.parts[TP] = PartitionBuffer(TP, committed=0, inflight=None)
    for offset, newest_ms in ((0, 2_000_000), (1, 1_000_000), (2, 0)):  # 0: no exact time
        part.add([record(offset)], time.monotonic())
        [batch] = feed.batches(time.monotonic(), final=True)
        assert isinstance(batch, KafkaBatch)
        batch.newest_by_segment = [newest_ms]
        await feed.commit([batch])
    assert gauge(metrics, "beacon_consumer_newest_event_timestamp_seconds", LABELS) == 2000


async def test_a_batch_of_several_partitions_times_each_by_its_own_newest_event(
    tmp_path: Path,
) -> None:
    metrics = ConsumerMetrics(CollectorRegistry())
    broker = Broker()
    feed = KafkaFeed(broker, None, metrics, ConsumerSettings(data_dir=tmp_path))  # type: ignore[arg-type]
    other = TopicPartition(TP.topic, 4)
    for tp in (TP, other):
        feed.parts[tp] = PartitionBuffer(tp, committed=0, inflight=None)
        feed.parts[tp].add([record(0, tp), record(1, tp)], time.monotonic())
    [batch] = feed.batches(time.monotonic(), final=True)
    assert isinstance(batch, KafkaBatch) and batch.tps == [TP, other]
    batch.newest_by_segment = [3_000_000, 1_000_000]  # as consumers/ingest.py counts them
    await feed.commit([batch])
    assert broker.commits == [{TP: (2, ""), other: (2, "")}]
    timestamp = "beacon_consumer_newest_event_timestamp_seconds"
    assert gauge(metrics, timestamp, LABELS) == 3000
    assert gauge(metrics, timestamp, {**LABELS, "partition": "4"}) == 1000
    assert feed.flight is None and feed.parts[other].committed == 2


async def spool_segment(spool_dir: Path, received_ms: int) -> None:
    """One closed spool segment of two events, as the collector writes it."""
    sink = SpoolSink(
        spool_dir,
        CollectorMetrics(CollectorRegistry()),
        segment_max_bytes=1 << 20,
        segment_max_age_ms=3_600_000,
        segment_idle_ms=3_600_000,
        max_bytes=1 << 30,
    )
    await sink.send([orjson.dumps({"received_at": received_ms + i}) for i in range(2)])
    await sink.close()


class NewLeader(Broker):
    """A leader just elected: its fetches' highwater lags its log (150 of 200) until its
    followers catch up, and it lists no end before that (OFFSET_NOT_AVAILABLE, which the
    client retries until its timeout)."""

    def __init__(self) -> None:
        super().__init__()
        self.caught_up = False

    def highwater(self, tp: TopicPartition) -> int | None:
        return 200 if self.caught_up else 150

    async def end(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        if not self.caught_up:
            raise KafkaTimeoutError("offset not available")
        return await super().end(tps)


def replaying(
    broker: Broker, tmp_path: Path, adopted_at: float
) -> tuple[KafkaFeed, PartitionBuffer]:
    """A feed whose partition replays the recorded range 100-199, read to 149."""
    broker.ends[TP] = 200
    metrics = ConsumerMetrics(CollectorRegistry())
    feed = KafkaFeed(broker, None, metrics, ConsumerSettings(data_dir=tmp_path))  # type: ignore[arg-type]
    part = feed.parts[TP] = PartitionBuffer(TP, 100, Inflight(100, 199), adopted_at)
    part.add([record(o) for o in range(100, 150)], time.monotonic())
    return feed, part


async def test_a_replay_read_to_a_lagging_highwater_waits_for_the_rest_of_its_range(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A recorded range 100-199 read to 149 from a new leader whose highwater says 150: it
    was taken for ended, 100-149 replayed partial and committed, and 150-199 came later as
    fresh records, stored again under a new token without the id check."""
    monkeypatch.setattr(kafka_feed, "LAG_INTERVAL_S", 0.01)
    broker = NewLeader()
    feed, part = replaying(broker, tmp_path, time.monotonic())
    watch = asyncio.create_task(feed._watch_lag())
    try:
        await asyncio.sleep(0.1)  # the watcher's asks refused
        assert feed.batches(time.monotonic(), final=False) == []  # the range waits
        broker.caught_up = True
        await eventually(lambda: TP in feed.listed_ends)
        assert feed.batches(time.monotonic(), final=False) == []  # and now knows what for
        part.add([record(o) for o in range(150, 200)], time.monotonic())
        [batch] = feed.batches(time.monotonic(), final=False)
        assert isinstance(batch, KafkaBatch)
        assert (batch.replay, batch.partial, batch.ranges) == (True, False, {TP: (100, 199)})
    finally:
        watch.cancel()


def test_a_range_read_through_leaves_its_partitions_end_to_the_highwater(tmp_path: Path) -> None:
    """Its records past the range wait on the broker (the fetch's highwater says so) as any
    partition's: unknown, the partition was taken for read to its end, and a quiet cut went
    out with a backlog behind it."""
    feed, part = replaying(NewLeader(), tmp_path, time.monotonic())
    assert feed._end(part, time.monotonic()) is None  # the range is not read through
    part.add([record(o) for o in range(150, 200)], time.monotonic())
    assert feed._end(part, time.monotonic()) == 150


def test_a_replay_whose_end_is_never_listed_goes_by_the_highwater_after_its_wait(
    tmp_path: Path,
) -> None:
    """Bounded: a broker that never lists the end (or a watcher that cannot ask) holds the
    range a replay's wait, as a range not read through, then the fetch's highwater decides."""
    broker = NewLeader()
    wait_s = ConsumerSettings(data_dir=tmp_path).batch_max_age_ms / 1000 * BACKLOG_AGES
    feed, _ = replaying(broker, tmp_path, time.monotonic() - wait_s - 1)
    [batch] = feed.batches(time.monotonic(), final=False)
    assert isinstance(batch, KafkaBatch)
    assert (batch.replay, batch.partial, batch.ranges) == (True, True, {TP: (100, 149)})


async def test_spool_lag_in_seconds_while_closed_segments_wait(tmp_path: Path) -> None:
    settings = ConsumerSettings(data_dir=tmp_path, batch_max_rows=100, batch_max_age_ms=0)
    metrics = ConsumerMetrics(CollectorRegistry())
    feed = SpoolFeed(SpoolSource(settings.spool_dir, settings.checkpoint_path), metrics, settings)
    feed.after_pass()
    assert gauge(metrics, "beacon_consumer_lag_seconds", SPOOL) == 0  # nothing waits
    received_ms = time.time_ns() // 1_000_000 - TEN_MINUTES_MS
    await spool_segment(settings.spool_dir, received_ms)
    feed.after_pass()
    assert gauge(metrics, "beacon_consumer_lag_seconds", SPOOL) is None  # none stored yet
    assert await feed.read(final=False) == 2
    (batch,) = feed.batches(time.monotonic(), final=False)
    await feed.mark([batch])
    batch.newest_by_segment = [received_ms + 1]  # what the ingest found in it
    await feed.commit([batch])
    timestamp = gauge(metrics, "beacon_consumer_newest_event_timestamp_seconds", SPOOL)
    assert timestamp == (received_ms + 1) / 1000
    feed.after_pass()
    assert gauge(metrics, "beacon_consumer_lag_seconds", SPOOL) == 0  # the segment is gone
    await spool_segment(settings.spool_dir, received_ms + 5)  # a new one waits
    feed.after_pass()
    lag_s = gauge(metrics, "beacon_consumer_lag_seconds", SPOOL)
    assert lag_s is not None and 600 <= lag_s < 660


async def test_a_group_error_the_lag_watcher_met_is_raised_by_the_next_read(tmp_path: Path) -> None:
    """The client's position() raises the group's errors (as its poll would, once): met by the
    lag watcher, which asks it, they reach the loop through read(), not lost in the watcher."""

    class Refusing(Broker):
        async def position(self, tp: TopicPartition) -> int:
            raise GroupAuthorizationFailedError("not allowed")

    metrics = ConsumerMetrics(CollectorRegistry())
    feed = KafkaFeed(Refusing(), None, metrics, ConsumerSettings(data_dir=tmp_path))  # type: ignore[arg-type]
    feed.parts[TP] = PartitionBuffer(TP, committed=0, inflight=None)
    await feed._skip_expired(dict(feed.parts), {TP: 5})  # the broker's end is past offset 0
    with pytest.raises(GroupAuthorizationFailedError):
        await feed.read(final=False)
    assert feed.client_error is None and feed.parts[TP].next_offset == 0
