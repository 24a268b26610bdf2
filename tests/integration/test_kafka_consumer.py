"""The Kafka consumer against a real broker and real chDB: exactly once in effect, through
store failures, bad records, a second member and SIGKILLs of the consumer process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic, RecordsToDelete
from aiokafka.errors import KafkaError, NodeNotReadyError, TopicAuthorizationFailedError
from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy
from prometheus_client import CollectorRegistry

from analytics.migrations import migrate
from analytics.schema import EVENTS
from analytics.store import TOKEN_RE, StoreError
from analytics.store.chdb import ChdbWriter
from consumers.dlq import (
    LINE_MAX_BYTES,
    REASON,
    SOURCE_LINE,
    SOURCE_OFFSET,
    SOURCE_OMITTED,
    SOURCE_PARTITION,
    SOURCE_TOPIC,
    TRUNCATED,
    DeadLetters,
)
from consumers.enrich import Enricher
from consumers.ingest import Ingest
from consumers.metrics import CUT_REASONS, ConsumerMetrics
from consumers.pipeline import Pipeline
from consumers.service import run_kafka_pipeline
from consumers.settings import ConsumerSettings
from consumers.sources.kafka import KafkaSource, Partitions
from consumers.sources.kafka_batches import (
    BACKLOG_AGES,
    Inflight,
    KafkaBatch,
    PartitionBuffer,
    cut,
    inflight_metadata,
    parse_inflight,
    token_for,
)
from consumers.sources.kafka_feed import KafkaFeed
from consumers.sources.protocol import join_lines
from tests.support.chdb_events import ErasedBeforeTheInsert, mail_opens
from tests.support.helpers import free_port, metric_value, store_port_query

WAIT_S = 90.0  # generous: the machine is small and shared
PARTITIONS = 3  # the kafka_topic fixture's


async def produce(
    bootstrap: str,
    topic: str,
    values: list[bytes],
    partitions: tuple[int, ...] = tuple(range(PARTITIONS)),
    **options: Any,
) -> None:
    """Round-robin over the partitions, every record acknowledged; `options` go to the
    producer."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, **options)
    await producer.start()
    try:
        waits = [
            await producer.send(topic, value, partition=partitions[i % len(partitions)])
            for i, value in enumerate(values)
        ]
        await asyncio.gather(*waits)
    finally:
        await producer.stop()


def packed(events: list[dict[str, Any]], per_record: int) -> list[bytes]:
    """Record values as the collector makes them: NDJSON chunks of `per_record` events."""
    lines = [orjson.dumps(e) for e in events]
    return [b"\n".join(lines[i : i + per_record]) for i in range(0, len(lines), per_record)]


async def create_topic(bootstrap: str, name: str, partitions: int = 1) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()


async def group_offsets(bootstrap: str, group: str, topic: str) -> tuple[dict, dict]:
    """({partition: (committed offset, metadata)}, {partition: end offset})."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await admin.start()
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        got = await admin.list_consumer_group_offsets(group, partitions=tps)
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
        await admin.close()
    committed = {tp.partition: (m.offset, m.metadata) for tp, m in got.items()}
    return committed, {tp.partition: end for tp, end in ends.items()}


async def record_in_flight(settings: ConsumerSettings, tp: TopicPartition, metadata: str) -> None:
    """Commit offset 0 of `tp` with `metadata`, as a member that died mid-batch leaves it."""
    await commit_for_group(settings, {tp: (0, metadata)})


async def commit_for_group(settings: ConsumerSettings, offsets: dict) -> None:
    """Commit {partition: (offset, metadata)} for the settings' group. Without joining the
    group (a manual assignment): no member leaving it while the consumer joins, which could
    give the consumer one partition alone at first."""
    recorder = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.kafka_group,
        enable_auto_commit=False,
    )
    recorder.assign(list(offsets))
    await recorder.start()
    try:
        await recorder.commit(offsets)
    finally:
        await recorder.stop()


async def wait_for(check: Callable[[], Awaitable[bool]], what: str, *tasks: Any) -> None:
    deadline = time.monotonic() + WAIT_S
    while not await check():
        for task in tasks:
            if task.done():
                task.result()  # raises what broke the loop
                pytest.fail(f"a pipeline returned before {what}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def count(writer: ChdbWriter, expr: str = "count()", final: bool = False) -> int:
    table = f"{EVENTS} FINAL" if final else EVENTS
    return int(await writer.query(f"SELECT {expr} FROM {table}", "TSV"))


def caught_up(consumer: Consumer, topic: str) -> Callable[[], Awaitable[bool]]:
    """A check for wait_for: every partition's lag gauge at 0 (None until the broker's end
    offsets were read)."""

    async def check() -> bool:
        registry = consumer.metrics.registry
        labels = [{"topic": topic, "partition": str(p)} for p in range(PARTITIONS)]
        lags = [registry.get_sample_value("beacon_consumer_lag_records", x) for x in labels]
        return lags == [0.0] * PARTITIONS

    return check


def lagging(consumer: Consumer, topic: str, records: int) -> Callable[[], Awaitable[bool]]:
    """A check for wait_for: every partition's lag gauge at `records`."""

    async def check() -> bool:
        registry = consumer.metrics.registry
        labels = [{"topic": topic, "partition": str(p)} for p in range(PARTITIONS)]
        lags = [registry.get_sample_value("beacon_consumer_lag_records", x) for x in labels]
        return lags == [float(records)] * PARTITIONS

    return check


def at_least(writer: ChdbWriter, n: int, expr: str = "count()") -> Callable[[], Awaitable[bool]]:
    """A check for wait_for: `expr` over the stored events has reached `n`."""

    async def check() -> bool:
        return await count(writer, expr) >= n

    return check


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def settings(tmp_path: Path, kafka_bootstrap: str, kafka_topic: str) -> ConsumerSettings:
    """Small batches and short waits, so every test cuts many batches by rows and by age."""
    return ConsumerSettings(
        data_dir=tmp_path,
        batch_max_rows=40,
        batch_max_age_ms=100,
        poll_interval_ms=20,
        retry_max_ms=400,
        kafka_bootstrap=kafka_bootstrap,
        kafka_topic=kafka_topic,
        kafka_dlq_topic=f"{kafka_topic}.dlq",
        kafka_group=f"group-{uuid.uuid4().hex[:8]}",
        kafka_max_records=100,
    )


@pytest.fixture
async def store(settings: ConsumerSettings) -> Any:
    writer = ChdbWriter(settings.store_dir)
    await migrate(writer, 0)
    # ReplacingMergeTree merges would hide a doubled insert from count(); without merges
    # only the insert dedup token keeps count() at N.
    await writer.execute(f"SYSTEM STOP MERGES {EVENTS}")
    yield writer
    await writer.close()


class Consumer:
    """One in-process group member: a pipeline task over a Kafka feed, with its own metrics."""

    def __init__(self, settings: ConsumerSettings, writer: Any, **consumer_options: Any):
        self.metrics = ConsumerMetrics(CollectorRegistry())
        source = KafkaSource(settings, **consumer_options)
        dlq = DeadLetters(settings.kafka_bootstrap, settings.kafka_dlq_topic)
        self.feed = KafkaFeed(source, dlq, self.metrics, settings)
        self.pipeline = Pipeline(self.feed, writer, self.metrics, settings)
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self.pipeline.run(self.stop))

    def value(self, name: str, **labels: str) -> float:
        return metric_value(self.metrics, name, **labels)

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, WAIT_S)


@pytest.fixture
async def consumers() -> Any:
    started: list[Consumer] = []
    yield started
    for c in started:
        c.stop.set()
    await asyncio.gather(*(c.task for c in started), return_exceptions=True)


# -- batch boundaries (no broker) --------------------------------------------------------------


def records(tp: TopicPartition, offsets: range, value: bytes = b"{}") -> list[ConsumerRecord]:
    return [
        ConsumerRecord(tp.topic, tp.partition, o, 0, 0, None, value, None, 0, 2, ())
        for o in offsets
    ]


def cut_one(
    part: PartitionBuffer,
    now: float,
    max_rows: int = 1 << 30,
    max_bytes: int = 1 << 30,
    highwater: int | None = None,
    final: bool = False,
    quiet: bool = False,
) -> KafkaBatch | None:
    return cut([part], {part.tp: highwater}, now, (max_rows, max_bytes, 1.0), final, quiet)


def span(batch: KafkaBatch | None) -> tuple[int, int]:
    assert batch is not None and len(batch.members) == 1
    return next(iter(batch.ranges.values()))


def test_chunked_records_are_cut_by_their_lines_and_bytes_at_a_record_end() -> None:
    tp = TopicPartition("t", 2)
    part = PartitionBuffer(tp, committed=0, inflight=None)
    part.add(records(tp, range(4), b"{}\n{}\n{}\n"), now=0.0)  # 3 lines each, the last ended
    batch = cut_one(part, now=0.0, max_rows=5)
    assert span(batch) == (0, 1)  # 6 lines: past 5
    assert batch is not None and batch.segments == [6] and batch.cut_by == "rows"
    assert b"".join(batch.pieces) == b"{}\n{}\n{}\n{}\n{}\n{}"  # no empty line between records
    by_bytes = cut_one(part, now=0.0, max_bytes=8)
    assert span(by_bytes) == (2, 2)  # 8 bytes a record
    assert by_bytes is not None and by_bytes.cut_by == "bytes"
    assert cut_one(part, now=0.5) is None
    assert (part.rows, part.bytes) == (3, 8)


def test_inflight_metadata_round_trips() -> None:
    assert parse_inflight(inflight_metadata(12, 345)) == Inflight(12, 345)
    assert inflight_metadata(12, 345) == "beacon-inflight:12-345"  # as one partition's was
    several = inflight_metadata(12, 345, "ab" * 16, 3)
    assert parse_inflight(several) == Inflight(12, 345, "ab" * 16, 3)
    assert parse_inflight("") is None
    assert parse_inflight(None) is None
    assert parse_inflight("something else") is None


def test_the_longest_token_is_one_the_store_takes() -> None:
    for topic in ("t" * 120, "t" * 249):  # the longest kept whole; one shortened to a hash
        tp = TopicPartition(topic, 2**31 - 1)
        assert TOKEN_RE.match(token_for(tp, 2**63 - 2, 2**63 - 1, 2**63 - 1, 2**63 - 1))
    assert token_for(tp, 0, 1, 5, 7) != token_for(tp, 0, 1, 6, 7)  # a topic made again
    assert token_for(tp, 0, 1, 5, 7) != token_for(tp, 0, 1, 5, 8)  # a log that lost its tail


def test_a_recorded_range_is_replayed_exactly_whatever_the_row_limit() -> None:
    tp = TopicPartition("t", 0)
    part = PartitionBuffer(tp, committed=100, inflight=Inflight(100, 104))
    part.add(records(tp, range(100, 103)), now=0.0)
    # Not read through yet: no batch, even past its age and row limit.
    assert cut_one(part, now=9.0, max_rows=2) is None
    part.add(records(tp, range(103, 110)), now=9.0)
    batch = cut_one(part, now=9.0, max_rows=2)
    assert batch is not None and batch.replay and not batch.partial
    assert (span(batch), batch.token, batch.cut_by) == ((100, 104), "t-0-100-104-0-0", "replay")
    fresh = cut_one(part, now=9.0, max_rows=2)
    assert fresh is not None and not fresh.replay and span(fresh) == (105, 106)


def test_fresh_batches_are_cut_by_rows_then_by_age() -> None:
    tp = TopicPartition("t", 1)
    part = PartitionBuffer(tp, committed=0, inflight=None)
    part.add(records(tp, range(5)), now=0.0)
    assert span(cut_one(part, now=0.0, max_rows=3)) == (0, 2)
    assert cut_one(part, now=0.5, max_rows=3) is None
    aged = cut_one(part, now=1.0, max_rows=3)
    assert span(aged) == (3, 4)
    assert aged is not None and aged.cut_by == "age"


def test_no_age_cut_while_records_wait_on_the_broker() -> None:
    """Catching up, a batch is cut full, not by age; caught up, the age cut is back; and a
    high watermark that stops moving holds a batch for BACKLOG_AGES ages at most."""
    tp = TopicPartition("t", 3)
    part = PartitionBuffer(tp, committed=0, inflight=None)
    part.add(records(tp, range(4), b"{}\n{}"), now=0.0)  # 2 lines a record: 8 read
    assert cut_one(part, now=5.0, max_rows=20, highwater=10) is None  # 6 wait: read them first
    part.add(records(tp, range(4, 14), b"{}\n{}"), now=5.0)
    assert span(cut_one(part, now=5.0, max_rows=20, highwater=100)) == (0, 9)  # 20 lines
    assert span(cut_one(part, now=6.0, max_rows=20, highwater=14)) == (10, 13)  # due by age
    part.add(records(tp, range(14, 15)), now=6.0)
    assert cut_one(part, now=6.0 + BACKLOG_AGES - 0.5, max_rows=20, highwater=100) is None
    assert span(cut_one(part, now=6.0 + BACKLOG_AGES, max_rows=20, highwater=100)) == (14, 14)


def test_a_quiet_topic_cuts_the_batch_before_its_age_once_read_to_its_ends() -> None:
    tp = TopicPartition("t", 4)
    part = PartitionBuffer(tp, committed=0, inflight=None)
    part.add(records(tp, range(3)), now=0.0)
    assert cut_one(part, now=0.2, highwater=3) is None  # not quiet, not aged
    assert cut_one(part, now=0.2, highwater=9, quiet=True) is None  # records wait on the broker
    batch = cut_one(part, now=0.2, highwater=3, quiet=True)
    assert batch is not None and span(batch) == (0, 2) and batch.cut_by == "quiet"


def test_one_batch_takes_every_partition_due_the_longest_waiting_first() -> None:
    """One insert for the partitions a member owns: about one an age per table however many
    there are; bounded by the same limits; a partition behind on the broker holds the age cut
    for all, as it holds it for one."""
    tps = [TopicPartition("t", n) for n in range(3)]
    parts = [PartitionBuffer(tp, committed=0, inflight=None) for tp in tps]
    parts[2].add(records(tps[2], range(3)), now=0.0)  # waiting longest
    parts[0].add(records(tps[0], range(2)), now=0.5)
    caught_up: dict[TopicPartition, int | None] = {tp: None for tp in tps}
    assert cut(parts, caught_up, 0.9, (100, 1 << 30, 1.0), False) is None
    behind = {**caught_up, tps[1]: 7}
    assert cut(parts, behind, 1.0, (100, 1 << 30, 1.0), False) is None
    batch = cut(parts, caught_up, 1.0, (100, 1 << 30, 1.0), False)
    assert batch is not None and batch.ranges == {tps[2]: (0, 2), tps[0]: (0, 1)}
    assert batch.segments == [3, 2] and batch.token.startswith("t-b-")
    assert batch.inflight() == {
        tps[2]: f"beacon-inflight:0-2:{batch.hash}:2",
        tps[0]: f"beacon-inflight:0-1:{batch.hash}:2",
    }
    # Full: the limit counts every partition's records, cut at a record's end.
    parts[0].add(records(tps[0], range(2, 6)), now=2.0)
    parts[1].add(records(tps[1], range(4)), now=2.0)
    full = cut(parts, caught_up, 2.0, (6, 1 << 30, 1.0), False)
    assert full is not None and full.ranges == {tps[0]: (2, 5), tps[1]: (0, 1)}
    assert (parts[1].rows, parts[1].records[0].offset) == (2, 2)


def test_a_recorded_batch_is_formed_again_or_only_its_missing_events_go_in() -> None:
    """All of a recorded batch's partitions here: the same batch, the same token. Some with
    another member: what is here is a partial replay, which stores only what is missing."""
    tps = [TopicPartition("t", n) for n in range(2)]
    first = [PartitionBuffer(tp, committed=0, inflight=None) for tp in tps]
    for part in first:
        part.add(records(part.tp, range(4)), now=0.0)
    original = cut(first, {tp: None for tp in tps}, 0.0, (100, 1 << 30, 1.0), True)
    assert original is not None
    recorded = {tp: parse_inflight(m) for tp, m in original.inflight().items()}

    again = [PartitionBuffer(tp, committed=0, inflight=recorded[tp]) for tp in tps]
    again[0].add(records(tps[0], range(6)), now=0.0)
    assert cut(again, {tp: 10 for tp in tps}, 5.0, (1, 1, 1.0), False) is None  # tp 1 unread
    again[1].add(records(tps[1], range(4)), now=0.0)
    replay = cut(again, {tp: 10 for tp in tps}, 5.0, (1, 1, 1.0), False)
    assert replay is not None and replay.replay and not replay.partial
    assert (replay.token, replay.ranges) == (original.token, original.ranges)

    alone = PartitionBuffer(tps[1], committed=0, inflight=recorded[tps[1]])
    alone.add(records(tps[1], range(4)), now=0.0)
    partial = cut([alone], {tps[1]: 4}, 0.0, (1, 1, 1.0), False)
    assert partial is not None and partial.replay and partial.partial
    assert partial.ranges == {tps[1]: (0, 3)} and partial.token == "t-1-0-3-0-0"


def test_a_partial_replay_recorded_in_flight_is_replayed_partial_again() -> None:
    """A partial replay inserts only under fresh tokens, never under its own: replayed again
    (its member died before its commit) it must still store only what is missing, or its
    token would let the events it stored go in twice."""
    tp = TopicPartition("t", 0)
    alone = PartitionBuffer(tp, 0, Inflight(0, 3, "ab" * 16, 2))  # its batch's other range
    alone.add(records(tp, range(4)), now=0.0)  # went to another member
    partial = cut([alone], {tp: 4}, 0.0, (1, 1, 1.0), False)
    assert partial is not None and partial.partial
    recorded = parse_inflight(partial.inflight()[tp])
    assert recorded == Inflight(0, 3, "", 1, partial=True)
    assert partial.inflight()[tp] == "beacon-inflight:0-3:p"
    again = PartitionBuffer(tp, 0, recorded)
    again.add(records(tp, range(4)), now=0.0)
    replay = cut([again], {tp: 4}, 0.0, (1, 1, 1.0), False)
    assert replay is not None and replay.replay and replay.partial
    assert replay.ranges == {tp: (0, 3)}


def test_a_range_never_read_holds_back_neither_its_batch_for_good_nor_other_partitions() -> None:
    """A recorded batch's partition without a leader is not fetched: the other partitions'
    batches are cut meanwhile, and after BACKLOG_AGES ages what was read of the recorded
    batch goes in, partial; the range left goes in alone, partial, once read."""
    tps = [TopicPartition("t", n) for n in range(3)]
    first = [PartitionBuffer(tp, committed=0, inflight=None) for tp in tps[:2]]
    for part in first:
        part.add(records(part.tp, range(4)), now=0.0)
    original = cut(first, {tp: None for tp in tps}, 0.0, (100, 1 << 30, 1.0), True)
    assert original is not None
    recorded = {tp: parse_inflight(m) for tp, m in original.inflight().items()}

    adopted_at = 100.0
    again = [PartitionBuffer(tp, 0, recorded[tp], adopted_at) for tp in tps[:2]]
    fresh = PartitionBuffer(tps[2], 0, None, adopted_at)
    parts = [*again, fresh]
    again[0].add(records(tps[0], range(6)), now=adopted_at)  # read through; tp 1 has no leader
    fresh.add(records(tps[2], range(3)), now=adopted_at)
    highwaters = {tps[0]: 6, tps[1]: None, tps[2]: 3}
    limits = (100, 1 << 30, 1.0)
    assert cut(parts, highwaters, adopted_at + 0.5, limits, False) is None  # nothing due
    other = cut(parts, highwaters, adopted_at + 1.0, limits, False)
    assert other is not None and other.ranges == {tps[2]: (0, 2)} and other.cut_by == "age"
    assert not other.replay

    waited = adopted_at + BACKLOG_AGES
    assert cut(parts, highwaters, waited - 0.1, limits, False) is None
    split = cut(parts, highwaters, waited, limits, False)
    assert split is not None and split.replay and split.partial
    assert (split.ranges, split.cut_by) == ({tps[0]: (0, 3)}, "replay_split")
    assert again[1].inflight == recorded[tps[1]]  # still to replay, alone
    assert cut(parts, highwaters, waited + 5, limits, False).ranges == {tps[0]: (4, 5)}

    again[1].add(records(tps[1], range(4)), now=waited + 6)  # its leader is back
    late = cut(parts, {**highwaters, tps[1]: 4}, waited + 6, limits, False)
    assert late is not None and late.replay and late.partial and late.cut_by == "replay"
    assert late.ranges == {tps[1]: (0, 3)} and late.token == "t-1-0-3-0-0"


class PollRecorder:
    """The Kafka source's edge, to see which partitions a read asks for: nothing comes."""

    def __init__(self) -> None:
        self.asked: list[set[TopicPartition]] = []

    async def poll(
        self, timeout_ms: int, max_records: int, only: Iterable[TopicPartition] = ()
    ) -> dict[TopicPartition, list[ConsumerRecord]]:
        self.asked.append(set(only))
        return {}


async def test_a_range_read_through_waits_unpolled_and_the_others_are_polled(
    tmp_path: Path,
) -> None:
    """While a recorded range waits for the rest of its batch its partition is not fetched;
    the others are, and the recorded ranges' records do not count against the bound: a
    range read partly before its leader was lost must not starve the other partitions."""
    settings = ConsumerSettings(data_dir=tmp_path, batch_max_bytes=300, kafka_topic="t")
    source = PollRecorder()
    feed = KafkaFeed(source, None, ConsumerMetrics(CollectorRegistry()), settings)  # type: ignore[arg-type]
    tps = [TopicPartition("t", n) for n in range(3)]
    recorded = Inflight(0, 1, "ab" * 16, 2)
    through, partly = PartitionBuffer(tps[0], 0, recorded), PartitionBuffer(tps[1], 0, recorded)
    fresh = PartitionBuffer(tps[2], 0, None)
    through.add(records(tps[0], range(2), b"x" * 200), now=0.0)
    partly.add(records(tps[1], range(1), b"x" * 200), now=0.0)
    feed.parts = {p.tp: p for p in (through, partly, fresh)}
    await feed.read(final=False)
    assert source.asked[-1] == {tps[1], tps[2]}
    fresh.add(records(tps[2], range(2), b"y" * 200), now=0.0)  # the others' bound reached
    await feed.read(final=False)
    assert source.asked[-1] == {tps[1]}


# -- the pipeline in process -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "retried"), [(NodeNotReadyError, True), (TopicAuthorizationFailedError, False)]
)
async def test_a_kafka_error_at_start_starts_it_again_when_a_retry_can_mend_it(
    settings: ConsumerSettings,
    store: ChdbWriter,
    monkeypatch: pytest.MonkeyPatch,
    error: type[KafkaError],
    retried: bool,
) -> None:
    """A broker dead but still in the cluster's metadata fails a request sent to it
    (NodeNotReadyError): `beacon consume` starts again, as for a broker not reached; an error
    no retry mends (a permission) ends it."""
    asked: list[str] = []
    ensure_topic = KafkaSource.ensure_topic

    async def first_fails(self: KafkaSource, name: str) -> None:
        asked.append(name)
        if len(asked) == 1:
            raise error("the first ask fails")
        await ensure_topic(self, name)

    monkeypatch.setattr(KafkaSource, "ensure_topic", first_fails)
    metrics, stop = ConsumerMetrics(CollectorRegistry()), asyncio.Event()
    task = asyncio.create_task(run_kafka_pipeline(settings, store, metrics, stop))
    if not retried:
        with pytest.raises(error):
            await asyncio.wait_for(task, WAIT_S)
        assert len(asked) == 1
        return
    events = mail_opens(30)
    await produce(settings.kafka_bootstrap, settings.kafka_topic, packed(events, 3))
    await wait_for(at_least(store, len(events)), "the events, after a second start", task)
    stop.set()
    await asyncio.wait_for(task, WAIT_S)
    assert len(asked) == 2


def test_a_dead_letter_topic_the_broker_refuses_ends_the_consumer_in_one_line(
    settings: ConsumerSettings,
) -> None:
    """The broker answers a refused topic (a permission, a policy, a name) inside its reply,
    which the client raises as nothing: the consumer logged it created and went on, and its
    first bad line's batch failed for good. Here a name the broker refuses."""
    env = {**ConsumerProcess(replace(settings, kafka_dlq_topic="bad topic!")).env(),
           "BEACON_LOG_LEVEL": "WARNING"}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "beacon", "consume"],
        env=env, capture_output=True, text=True, timeout=WAIT_S, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    last = done.stderr.splitlines()[-1]  # after the client's own lines, if any
    assert last.startswith("beacon consume: Kafka: [Error 17] InvalidTopicError: ")
    assert "cannot create the dead-letter topic bad topic!: Topic name is invalid" in last


async def test_every_event_is_stored_once_and_offsets_are_committed(
    settings: ConsumerSettings, store: ChdbWriter, consumers: list[Consumer]
) -> None:
    events = mail_opens(900)
    await produce(settings.kafka_bootstrap, settings.kafka_topic, [orjson.dumps(e) for e in events])
    consumer = Consumer(settings, store)
    consumers.append(consumer)

    async def stored() -> bool:
        return await count(store) >= len(events)

    await wait_for(stored, "every event stored", consumer.task)

    async def caught_up() -> bool:
        """Every partition's lag gauge is set, and 0."""
        registry = consumer.metrics.registry
        lags = [
            registry.get_sample_value(
                "beacon_consumer_lag_records", {"topic": settings.kafka_topic, "partition": str(p)}
            )
            for p in range(PARTITIONS)
        ]
        return lags == [0.0] * PARTITIONS

    await wait_for(caught_up, "the lag to be 0", consumer.task)
    await consumer.close()

    assert await count(store) == len(events)
    assert await count(store, "uniqExact(event_id)") == len(events)
    rows = await store.query(
        f"SELECT toString(event_id) AS event_id, toUnixTimestamp64Milli(received_at) AS ms, "
        f"event_type, site, campaign, recipient, url_host, url_path, url_query, props, "
        f"visitor_id, dnt, transport FROM {EVENTS}"
    )
    got = {r["event_id"]: r for r in map(orjson.loads, rows.splitlines())}
    for e in events:
        row = got[e["event_id"]]
        assert row["ms"] == e["received_at"]
        for key in ("event_type", "site", "campaign", "recipient", "url_host", "url_path",
                    "url_query", "props", "visitor_id", "dnt", "transport"):  # fmt: skip
            assert row[key] == e[key], key
    committed, ends = await group_offsets(
        settings.kafka_bootstrap, settings.kafka_group, settings.kafka_topic
    )
    assert committed == {p: (ends[p], "") for p in range(PARTITIONS)}
    assert sum(ends.values()) == len(events)
    assert consumer.value("beacon_consumer_rows_inserted_total") == len(events)
    assert consumer.value("beacon_consumer_rows_read_total") == len(events)
    # 900 rows in batches of at most 40: many inserts, each with its own token.
    assert consumer.value("beacon_consumer_inserts_total", outcome="ok") >= 900 / 40


async def test_the_end_of_a_burst_is_stored_at_once_and_a_quiet_cut_comes_once_an_age(
    settings: ConsumerSettings, store: ChdbWriter, consumers: list[Consumer]
) -> None:
    """Batches an hour old at most and 1,000 rows: only the quiet rule stores a burst of 30
    while the consumer runs, and only once within the hour; the next burst waits its age
    (here: the final batch at the stop)."""
    settings = replace(settings, batch_max_age_ms=3_600_000, batch_max_rows=1000)
    first, second = mail_opens(30), mail_opens(20)
    await produce(settings.kafka_bootstrap, settings.kafka_topic, [orjson.dumps(e) for e in first])
    consumer = Consumer(settings, store)
    consumers.append(consumer)

    async def stored(n: int) -> bool:
        return await count(store) >= n

    await wait_for(lambda: stored(len(first)), "the burst stored", consumer.task)
    assert consumer.value("beacon_consumer_batch_cuts_total", reason="quiet") == 1
    await produce(settings.kafka_bootstrap, settings.kafka_topic, [orjson.dumps(e) for e in second])

    async def read_and_quiet() -> bool:
        feed = consumer.feed
        read = consumer.value("beacon_consumer_rows_read_total") == len(first) + len(second)
        since = feed.quiet.since
        return (
            read
            and since is not None
            and time.monotonic() - since > 5 * settings.poll_interval_ms / 1000
        )

    await wait_for(read_and_quiet, "the second burst read, and the topic quiet", consumer.task)
    assert await count(store) == len(first)  # held: a quiet cut was made within the age
    await consumer.close()
    assert await count(store) == len(first) + len(second)
    assert consumer.value("beacon_consumer_batch_cuts_total", reason="quiet") == 1
    assert consumer.value("beacon_consumer_batch_cuts_total", reason="final") == 1


async def test_a_partition_whose_log_starts_again_below_the_commit_is_read_from_its_start(
    settings: ConsumerSettings, store: ChdbWriter, consumers: list[Consumer]
) -> None:
    """The group's commit of one partition is past its log's end, as after the broker lost
    the log (the only replica's disk) or the topic was made again: the client starts again
    at the log's start, and those records are new events. They were skipped as read before,
    lost without a count."""
    bootstrap, topic = settings.kafka_bootstrap, settings.kafka_topic
    events = mail_opens(30)
    await produce(bootstrap, topic, [orjson.dumps(e) for e in events])  # 10 a partition
    p0 = TopicPartition(topic, 0)
    await commit_for_group(settings, {p0: (500, "")})
    consumer = Consumer(settings, store)
    consumers.append(consumer)
    await wait_for(at_least(store, len(events)), "every event stored", consumer.task)

    async def committed_at_the_end() -> bool:
        committed, _ = await group_offsets(bootstrap, settings.kafka_group, topic)
        return committed == {p: (10, "") for p in range(PARTITIONS)}

    await wait_for(committed_at_the_end, "every partition committed at its end", consumer.task)
    assert consumer.value("beacon_consumer_partition_restarts_total") == 1
    assert consumer.value("beacon_consumer_records_expired_total") == 0
    await consumer.close()
    stored = set((await store.query(f"SELECT toString(event_id) FROM {EVENTS}", "TSV")).split())
    assert stored == {e["event_id"] for e in events} and await count(store) == len(events)


async def test_a_batch_of_a_log_that_lost_its_tail_is_not_taken_for_one_stored_before(
    settings: ConsumerSettings, store: ChdbWriter, consumers: list[Consumer]
) -> None:
    """The broker lost the tail of a partition's log (the only replica's disk, an unclean
    leader election) and new records took its offsets. A batch read again over the same
    offsets as one stored before starts with the same record (the log kept it), and its token
    named no more than that: the insert was dropped as that batch's repeat, and its new events
    were lost without a count."""
    bootstrap, topic = settings.kafka_bootstrap, settings.kafka_topic
    kept, lost, new = mail_opens(5), mail_opens(5, start=5), mail_opens(5, start=10)
    await produce(bootstrap, topic, [orjson.dumps(e) for e in [*kept, *new]], partitions=(0,))
    records = sorted(await read_topic(bootstrap, topic, 10), key=lambda r: r.offset)
    assert [r.offset for r in records] == list(range(10))
    # What the log held before: the kept records, then the lost ones, stored as one batch of
    # offsets 0-9 (the last written before the new ones) and committed past them.
    p0 = TopicPartition(topic, 0)
    before = token_for(p0, 0, 9, records[0].timestamp, records[0].timestamp + 1)
    await Ingest(store).store(join_lines([orjson.dumps(e) for e in [*kept, *lost]]), before)
    await commit_for_group(settings, {p0: (500, "")})  # the log now ends below the commit
    consumer = Consumer(settings, store)
    consumers.append(consumer)

    async def committed_at_the_end() -> bool:
        committed, _ = await group_offsets(bootstrap, settings.kafka_group, topic)
        return committed.get(0) == (10, "")

    await wait_for(committed_at_the_end, "the new log read and committed", consumer.task)
    await consumer.close()
    assert consumer.value("beacon_consumer_partition_restarts_total") == 1
    stored = set((await store.query(f"SELECT toString(event_id) FROM {EVENTS}", "TSV")).split())
    assert stored == {e["event_id"] for e in [*kept, *lost, *new]}


async def test_transaction_markers_are_not_counted_as_records_the_broker_removed(
    settings: ConsumerSettings, store: ChdbWriter, consumers: list[Consumer]
) -> None:
    """Another producer's transactions (Kafka Connect, Flink, MirrorMaker): each commit
    writes a marker that takes an offset and is never handed over. Counted as removed
    records, they fired the alert that pages on lost events."""
    events = [orjson.dumps(e) for e in mail_opens(60)]
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, transactional_id=f"t-{uuid.uuid4().hex}"
    )
    await producer.start()
    try:
        for i in range(0, len(events), 10):  # markers between records and at the logs' ends
            async with producer.transaction():
                for j, value in enumerate(events[i : i + 10]):
                    await producer.send(settings.kafka_topic, value, partition=j % PARTITIONS)
    finally:
        await producer.stop()
    consumer = Consumer(settings, store)
    consumers.append(consumer)
    await wait_for(at_least(store, len(events)), "every event stored", consumer.task)

    # Committed past the last markers: the gaps were looked at.
    await wait_for(caught_up(consumer, settings.kafka_topic), "every lag at 0", consumer.task)
    await consumer.close()
    assert consumer.value("beacon_consumer_records_expired_total") == 0
    assert await count(store) == await count(store, "uniqExact(event_id)") == len(events)


async def test_another_producers_aborted_or_open_transactions_are_not_stored(
    settings: ConsumerSettings, store: ChdbWriter, consumers: list[Consumer]
) -> None:
    """A transaction another producer aborted took its records back: read as they were
    written, they were stored and their bad lines sent to the DLQ, where Kafka's own clients
    and ClickHouse's Kafka engine (read_committed) never see them. Records of a transaction
    still open wait for its end."""
    await create_topic(settings.kafka_bootstrap, settings.kafka_dlq_topic)
    events = [orjson.dumps(e) for e in mail_opens(45)]
    aborted, committed, pending = [*events[:20], b"{not json"], events[20:30], events[30:]
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, transactional_id=f"t-{uuid.uuid4().hex}"
    )
    await producer.start()
    try:
        for values, end in ((aborted, "abort"), (committed, "commit"), (pending, "")):
            await producer.begin_transaction()
            sent = [
                await producer.send(settings.kafka_topic, value, partition=j % PARTITIONS)
                for j, value in enumerate(values)
            ]
            await asyncio.gather(*sent)
            if end == "abort":
                await producer.abort_transaction()
            elif end == "commit":
                await producer.commit_transaction()
        consumer = Consumer(settings, store)
        consumers.append(consumer)
        await wait_for(at_least(store, len(committed)), "the committed events", consumer.task)
        # The open transaction's records wait, and show as lag (a transaction left open for
        # good would hold back every record after it in its partition).
        held = len(pending) // PARTITIONS
        await wait_for(lagging(consumer, settings.kafka_topic, held), "its lag", consumer.task)
        assert await count(store) == len(committed)  # nor the open transaction's, yet
        await producer.commit_transaction()
    finally:
        await producer.stop()
    await wait_for(at_least(store, len(committed) + len(pending)), "the rest", consumer.task)
    await wait_for(caught_up(consumer, settings.kafka_topic), "every lag at 0", consumer.task)
    await consumer.close()
    assert await count(store) == await count(store, "uniqExact(event_id)") == 25
    assert consumer.value("beacon_consumer_dlq_records_total", reason="malformed_json") == 0
    assert consumer.value("beacon_consumer_records_expired_total") == 0


async def test_records_removed_past_the_commit_hold_back_neither_lag_nor_cuts_nor_a_replay(
    settings: ConsumerSettings, store: ChdbWriter, consumers: list[Consumer]
) -> None:
    """Retention (here a deletion) removed records of every partition past its commit: all
    30 of one committed at 5 and of one with a range recorded in flight, offsets 5-19 of
    the third, committed at 5. The client starts each again at what is left and hands over
    that (of the first two: nothing). Batches are an hour old at most and 1,000 rows, so
    only a quiet cut stores the third's 10 left while the consumer runs, once every
    partition is read to its end as the broker has it."""
    settings = replace(settings, batch_max_age_ms=3_600_000, batch_max_rows=1000)
    bootstrap, topic = settings.kafka_bootstrap, settings.kafka_topic
    events, later = mail_opens(90), mail_opens(30, start=90)
    await produce(bootstrap, topic, [orjson.dumps(e) for e in events])  # 30 a partition
    p0, p1, p2 = (TopicPartition(topic, p) for p in range(PARTITIONS))
    await commit_for_group(settings, {p0: (5, ""), p1: (0, inflight_metadata(0, 9)), p2: (5, "")})
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        deleted = {p0: RecordsToDelete(30), p1: RecordsToDelete(30), p2: RecordsToDelete(20)}
        await admin.delete_records(deleted)
    finally:
        await admin.close()
    consumer = Consumer(settings, store)
    consumers.append(consumer)
    left = events[62::3]  # the third partition's offsets 20-29
    await wait_for(at_least(store, len(left)), "the records left stored", consumer.task)

    await wait_for(caught_up(consumer, topic), "every lag at 0", consumer.task)
    assert consumer.value("beacon_consumer_batch_cuts_total", reason="quiet") == 1
    # Not counted: the recorded range (offsets 0-9), which may have been stored before.
    assert consumer.value("beacon_consumer_records_expired_total") == 25 + 20 + 15
    assert consumer.value("beacon_consumer_replayed_batches_total") == 1

    async def committed_past_them() -> bool:
        committed, _ = await group_offsets(bootstrap, settings.kafka_group, topic)
        return committed == {0: (30, ""), 1: (30, ""), 2: (30, "")}

    await wait_for(committed_past_them, "commits past the removed records", consumer.task)
    await consumer.close()
    # The next member finds nothing gone and nothing to replay.
    consumer = Consumer(settings, store)
    consumers.append(consumer)
    await produce(bootstrap, topic, [orjson.dumps(e) for e in later])  # 10 a partition

    async def read() -> bool:
        return consumer.value("beacon_consumer_rows_read_total") == len(later)

    await wait_for(read, "the later events read", consumer.task)
    await consumer.close()
    assert consumer.value("beacon_consumer_records_expired_total") == 0
    assert consumer.value("beacon_consumer_replayed_batches_total") == 0
    stored = set((await store.query(f"SELECT toString(event_id) FROM {EVENTS}", "TSV")).split())
    kept = left + later
    assert stored == {e["event_id"] for e in kept} and await count(store) == len(kept)
    committed, ends = await group_offsets(bootstrap, settings.kafka_group, topic)
    assert committed == {0: (40, ""), 1: (40, ""), 2: (40, "")}
    assert ends == {0: 40, 1: 40, 2: 40}


async def test_a_poll_takes_the_room_left_under_the_byte_bound_not_all_that_was_prefetched(
    settings: ConsumerSettings, store: ChdbWriter, consumers: list[Consumer]
) -> None:
    """getmany() counts records: with 5,000 a poll, the first took all 200 records fetched
    (~1 MB) past a bound of 40 kB. A poll asks for the room left in records of the size the
    last one brought, so what waits unbatched stays within about a record of the bound."""
    # Cut by bytes alone (and at the end, quiet): an age cut would come before the bound.
    settings = replace(settings, batch_max_bytes=40_000, batch_max_rows=100_000)
    settings = replace(settings, batch_max_age_ms=3_600_000, kafka_max_records=5000)
    events = mail_opens(1600)
    chunks = packed(events, 8)
    record_bytes = max(map(len, chunks))
    await produce(settings.kafka_bootstrap, settings.kafka_topic, chunks)
    _, most = await store_weighing(
        settings, store, consumers, len(events), lambda parts: sum(p.bytes for p in parts)
    )
    assert settings.batch_max_bytes <= most <= settings.batch_max_bytes + record_bytes


async def store_weighing(
    settings: ConsumerSettings,
    store: ChdbWriter,
    consumers: list[Consumer],
    events: int,
    weigh: Callable[[list[PartitionBuffer]], int],
) -> tuple[Consumer, int]:
    """A consumer until `events` rows are stored, each once: it, closed, and the most
    `weigh` made of its feed's partition buffers after any of its reads."""
    consumer = Consumer(settings, store)
    consumers.append(consumer)
    feed = consumer.feed
    most = 0
    read = feed.read

    async def read_and_weigh(final: bool) -> int:
        nonlocal most
        taken = await read(final)
        most = max(most, weigh(list(feed.parts.values())))
        return taken

    feed.read = read_and_weigh  # type: ignore[method-assign]

    async def stored() -> bool:
        return await count(store) >= events

    await wait_for(stored, "every event stored", consumer.task)
    await consumer.close()
    assert await count(store) == await count(store, "uniqExact(event_id)") == events
    return consumer, most


async def test_while_a_recorded_range_is_read_through_the_other_partitions_wait_in_the_bound(
    settings: ConsumerSettings, store: ChdbWriter, consumers: list[Consumer]
) -> None:
    """A replay reads its range through however large it was cut: polls then take only its
    partition. Polling them all read the others' backlog whole meanwhile (here ~150 kB each
    against a bound of 40 kB), past any bound."""
    settings = replace(settings, batch_max_bytes=40_000, batch_max_rows=100_000)
    settings = replace(settings, batch_max_age_ms=3_600_000, kafka_max_records=5000)
    settings = replace(settings, kafka_partition_fetch_bytes=4096)  # many fetches a range
    events = mail_opens(2400)
    chunks = packed(events, 8)
    record_bytes = max(map(len, chunks))
    await produce(settings.kafka_bootstrap, settings.kafka_topic, chunks)  # 100 a partition
    # Partition 0's records recorded as a batch in flight (offsets 0-99): cut by a member
    # that died before its insert was committed.
    tp0 = TopicPartition(settings.kafka_topic, 0)
    await record_in_flight(settings, tp0, inflight_metadata(0, len(chunks) // PARTITIONS - 1))

    def others_while_replaying(parts: list[PartitionBuffer]) -> int:
        if all(p.inflight is None for p in parts):
            return 0
        return sum(p.bytes for p in parts if p.tp != tp0)

    consumer, most_others = await store_weighing(
        settings, store, consumers, len(events), others_while_replaying
    )
    assert consumer.value("beacon_consumer_replayed_batches_total") == 1
    assert 0 < most_others <= settings.batch_max_bytes + record_bytes


async def test_record_batches_larger_than_the_partition_fetch_bytes_are_all_stored_once(
    settings: ConsumerSettings, store: ChdbWriter, consumers: list[Consumer]
) -> None:
    """BEACON_KAFKA_PARTITION_FETCH_BYTES bounds aiokafka's read-ahead a partition. Below the
    size of a record batch the broker still sends the first batch of the first partition with
    data in each fetch: at one byte every batch is too large, and none may be lost or stall."""
    settings = replace(settings, kafka_partition_fetch_bytes=1, batch_max_rows=200)
    events = mail_opens(600)
    await produce(settings.kafka_bootstrap, settings.kafka_topic, packed(events, 8))
    consumer = Consumer(settings, store)
    consumers.append(consumer)
    # aiokafka keeps its configuration private; this is the value its fetches carry.
    assert consumer.feed.source.consumer._max_partition_fetch_bytes == 1

    async def stored() -> bool:
        return await count(store) >= len(events)

    await wait_for(stored, "every event stored", consumer.task)
    await consumer.close()
    assert await count(store) == await count(store, "uniqExact(event_id)") == len(events)
    committed, ends = await group_offsets(
        settings.kafka_bootstrap, settings.kafka_group, settings.kafka_topic
    )
    assert committed == {p: (ends[p], "") for p in range(PARTITIONS)}


class FailingWriter:
    """The real chDB writer behind an edge that fails every insert until `heal()`: the test
    ends the outage itself, so a retry cannot land between the outage's end and its checks."""

    def __init__(self, writer: ChdbWriter) -> None:
        self.writer = writer
        self.failing = True
        self.failures = 0

    def heal(self) -> None:
        self.failing = False

    async def insert_from(self, table: str, columns: Any, select: str, token: str) -> None:
        if self.failing:
            self.failures += 1
            raise StoreError("Code: 210. DB::NetException: Connection refused (test)")
        await self.writer.insert_from(table, columns, select, token)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.writer, name)


@pytest.mark.timeout(120)
async def test_the_bench_topic_holds_every_event_and_the_pipeline_stores_them_all(
    settings: ConsumerSettings, store: ChdbWriter, consumers: list[Consumer]
) -> None:
    """Regression: loadtest/bench_consumer.py "stalled" after a first batch. Its producer
    ignored BatchBuilder.append() returning None on a full batch, so each 2000-event send kept
    only what fit in 16 KiB and the topic held ~2% of the events; the pipeline had
    stored all of them and was idle. A larger volume (tens of record batches per partition)
    through the bench's own filler, then the pipeline in small batches, every event stored."""
    from loadtest.bench_consumer import fill_topic

    total = 12_000
    topic = f"{settings.kafka_topic}.bench"
    values = [orjson.dumps(e) for e in mail_opens(total)]
    await fill_topic(settings.kafka_bootstrap, topic, PARTITIONS, values)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    assert sum(ends.values()) == total, ends  # was 211: what fit in 16 KiB batches

    member = Consumer(replace(settings, kafka_topic=topic, batch_max_rows=500), store)
    consumers.append(member)

    async def stored() -> bool:
        return member.value("beacon_consumer_rows_inserted_total") >= total

    await wait_for(stored, "every bench event stored", member.task)
    await member.close()
    assert await count(store) == await count(store, "uniqExact(event_id)") == total


@pytest.mark.timeout(180)
@pytest.mark.parametrize("bound_bytes", [None, 20_000], ids=["room", "full-buffers"])
async def test_a_failing_store_pauses_keeps_the_member_and_loses_nothing(
    settings: ConsumerSettings,
    store: ChdbWriter,
    consumers: list[Consumer],
    bound_bytes: int | None,
) -> None:
    # full-buffers: every partition's buffer fills behind the failing batch, so nothing is
    # asked of Kafka meanwhile; the member stays all the same.
    if bound_bytes is not None:
        settings = replace(settings, batch_max_bytes=bound_bytes, batch_max_rows=100_000)
    events = mail_opens(600)
    await produce(settings.kafka_bootstrap, settings.kafka_topic, [orjson.dumps(e) for e in events])
    writer = FailingWriter(store)
    # The outage's least length: a member that stops calling getmany() for 6 s leaves the
    # group, so it stays only because the loop keeps polling while it backs off. It lasts
    # until that much time has passed and what it must cause was seen, however long that takes.
    # (6 s, not less: a loaded machine's stores after the outage must not outlast it.)
    outage_ends = time.monotonic() + 14.0
    consumer = Consumer(settings, writer, max_poll_interval_ms=6000)
    consumers.append(consumer)
    lag_seen = 0.0
    paused_seen = 0.0
    full_seen = bound_bytes is None  # full-buffers: a read that asked Kafka nothing, seen

    async def lagging() -> bool:
        nonlocal lag_seen, paused_seen, full_seen
        full_seen = full_seen or consumer.feed.skipped
        lag_seen = max(lag_seen, sum(
            consumer.value("beacon_consumer_lag_records", topic=settings.kafka_topic,
                           partition=str(p)) for p in range(PARTITIONS)))  # fmt: skip
        paused_seen = max(paused_seen, consumer.value("beacon_consumer_paused_partitions"))
        return (
            time.monotonic() >= outage_ends
            and lag_seen == len(events)  # nothing committed while nothing is stored
            and paused_seen >= 1  # the batch's partitions; the others read up to a batch
            and consumer.value("beacon_consumer_retries_total", step="insert") >= 3
            and full_seen
        )

    what = "every event lagging, the batch's partitions paused, three retries"
    await wait_for(lagging, what, consumer.task)
    assert await count(store) == 0
    writer.heal()
    retries = consumer.value("beacon_consumer_retries_total", step="insert")
    print(f"insert retries during the outage: {retries:.0f}")

    async def stored() -> bool:
        return await count(store) >= len(events)

    await wait_for(stored, "the backlog to drain", consumer.task)
    assert consumer.feed.assignments == 1  # never rebalanced: the member stayed
    await consumer.close()
    assert await count(store) == await count(store, "uniqExact(event_id)") == len(events)
    committed, ends = await group_offsets(
        settings.kafka_bootstrap, settings.kafka_group, settings.kafka_topic
    )
    assert {p: c[0] for p, c in committed.items()} == ends
    assert consumer.value("beacon_consumer_paused_partitions") == 0


class Crash(Exception):
    """Stands for the process dying: nothing in the pipeline catches it."""


class CrashAtInsert:
    """The real chDB writer, and a death as an insert begins: whatever was recorded in flight
    before it is what the next member finds."""

    def __init__(self, writer: ChdbWriter) -> None:
        self.writer = writer

    async def insert_from(self, table: str, columns: Any, select: str, token: str) -> None:
        raise Crash(token)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.writer, name)


async def test_a_partial_replay_records_itself_partial_before_its_insert(
    settings: ConsumerSettings, store: ChdbWriter, consumers: list[Consumer]
) -> None:
    """Partition 0 recorded as one range of a two-partition batch whose other range is not
    recorded (its member committed it): a partial replay, which inserts under fresh tokens
    only. Its member dies at the insert: the next must find it recorded as partial, or it
    would take partition 0's range for a whole batch and store it under that batch's token,
    past the events the partial replay stored."""
    settings = replace(settings, batch_max_rows=10_000, kafka_max_records=10_000)
    events = mail_opens(60)
    await produce(settings.kafka_bootstrap, settings.kafka_topic, [orjson.dumps(e) for e in events])
    tp0 = TopicPartition(settings.kafka_topic, 0)
    last = len(events) // PARTITIONS - 1
    await record_in_flight(settings, tp0, inflight_metadata(0, last, "ab" * 16, 2))
    dying = Consumer(settings, CrashAtInsert(store))
    with pytest.raises(Crash):
        await asyncio.wait_for(dying.task, WAIT_S)
    committed, _ = await group_offsets(
        settings.kafka_bootstrap, settings.kafka_group, settings.kafka_topic
    )
    assert committed[0] == (0, inflight_metadata(0, last, partial=True))

    consumer = Consumer(settings, store)
    consumers.append(consumer)
    await wait_for(at_least(store, len(events)), "every event stored", consumer.task)
    await consumer.close()
    assert await count(store) == await count(store, "uniqExact(event_id)") == len(events)


class CrashAfterInsert(CrashAtInsert):
    """The real chDB writer, and a death right after ClickHouse acknowledged an insert: the
    worst moment, the batch stored and its offsets not committed."""

    async def insert_from(self, table: str, columns: Any, select: str, token: str) -> None:
        await self.writer.insert_from(table, columns, select, token)
        raise Crash(token)


async def test_a_range_recorded_past_an_open_transaction_waits_for_it_and_stores_once(
    settings: ConsumerSettings, store: ChdbWriter, consumers: list[Consumer]
) -> None:
    """A member that read the records of open transactions (the release before consumers read
    committed ones only) recorded a range past the last stable offset, stored it and died.
    Its replay took the range for ended at that offset, and the rest came after the commit as
    fresh records: stored again, without the replay's id check."""
    settings = replace(settings, batch_max_rows=10_000, kafka_max_records=10_000)
    events = [orjson.dumps(e) for e in mail_opens(20)]
    await produce(settings.kafka_bootstrap, settings.kafka_topic, events[:10], partitions=(0,))
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, transactional_id=f"t-{uuid.uuid4().hex}"
    )
    await producer.start()
    try:
        await producer.begin_transaction()
        sent = [await producer.send(settings.kafka_topic, v, partition=0) for v in events[10:]]
        await asyncio.gather(*sent)
        uncommitted = {"isolation_level": "read_uncommitted"}
        dying = Consumer(settings, CrashAfterInsert(store), **uncommitted)
        with pytest.raises(Crash):
            await asyncio.wait_for(dying.task, WAIT_S)
        committed, _ = await group_offsets(
            settings.kafka_bootstrap, settings.kafka_group, settings.kafka_topic
        )
        assert committed[0] == (0, inflight_metadata(0, 19))  # recorded past the open ones
        assert await count(store) == 20

        consumer = Consumer(settings, store)
        consumers.append(consumer)
        labels = {"topic": settings.kafka_topic, "partition": "0"}
        registry = consumer.metrics.registry

        async def ends_listed() -> bool:
            return registry.get_sample_value("beacon_consumer_lag_records", labels) is not None

        await wait_for(ends_listed, "the partition's end listed", consumer.task)
        await asyncio.sleep(3 * settings.batch_max_age_ms / 1000)  # time to cut, were it cut
        await producer.commit_transaction()
    finally:
        await producer.stop()
    await wait_for(caught_up(consumer, settings.kafka_topic), "every lag at 0", consumer.task)
    await consumer.close()
    assert await count(store) == await count(store, "uniqExact(event_id)") == 20


@pytest.mark.parametrize("per_record", [1, 3], ids=["one-event-records", "ndjson-chunks"])
async def test_a_batch_stored_but_not_committed_is_replayed_with_its_offsets(
    settings: ConsumerSettings, store: ChdbWriter, consumers: list[Consumer], per_record: int
) -> None:
    # Batches far larger than what arrives: every cut is an age cut, which a re-read would
    # not reproduce (more records are there by then) without the recorded range.
    settings = replace(settings, batch_max_rows=10_000, kafka_max_records=10_000)
    first, second = mail_opens(90), mail_opens(90, start=90)
    await produce(settings.kafka_bootstrap, settings.kafka_topic, packed(first, per_record))
    dying = Consumer(settings, CrashAfterInsert(store))
    with pytest.raises(Crash):
        await asyncio.wait_for(dying.task, WAIT_S)
    stored_before = await count(store)
    assert stored_before > 0
    committed, _ = await group_offsets(
        settings.kafka_bootstrap, settings.kafka_group, settings.kafka_topic
    )
    in_flight = [parse_inflight(metadata) for _, metadata in committed.values()]
    last = 90 // per_record // PARTITIONS - 1  # every record of a partition in one batch
    assert any(i is not None and i[:2] == (0, last) for i in in_flight), in_flight
    await produce(settings.kafka_bootstrap, settings.kafka_topic, packed(second, per_record))

    consumer = Consumer(settings, store)
    consumers.append(consumer)

    async def stored() -> bool:
        return await count(store) >= 180

    await wait_for(stored, "every event stored", consumer.task)
    await consumer.close()
    assert await count(store) == await count(store, "uniqExact(event_id)") == 180
    # One batch, recorded across every partition: one replay, not one a partition.
    assert consumer.value("beacon_consumer_replayed_batches_total") == 1
    committed, ends = await group_offsets(
        settings.kafka_bootstrap, settings.kafka_group, settings.kafka_topic
    )
    assert committed == {p: (ends[p], "") for p in range(PARTITIONS)}


class CrashKeepingOnlyTheToken(CrashAtInsert):
    """An embedded store killed in the middle of an insert: its dedup token recorded, the
    batch's rows not (here: another row is stored under the token, then the process dies)."""

    def __init__(self, writer: ChdbWriter, stray: bytes) -> None:
        super().__init__(writer)
        self.stray = stray

    async def insert_from(self, table: str, columns: Any, select: str, token: str) -> None:
        await self.writer.insert(table, self.stray, token)
        raise Crash(token)


async def test_a_replay_trusts_the_stored_ids_not_the_recorded_token(
    settings: ConsumerSettings, store: ChdbWriter, consumers: list[Consumer]
) -> None:
    settings = replace(settings, batch_max_rows=10_000, kafka_max_records=10_000)
    events = mail_opens(90)
    [stray] = mail_opens(1, start=1000)
    await produce(settings.kafka_bootstrap, settings.kafka_topic, [orjson.dumps(e) for e in events])
    dying = Consumer(
        settings, CrashKeepingOnlyTheToken(store, Enricher().to_row(orjson.dumps(stray)))
    )
    with pytest.raises(Crash):
        await asyncio.wait_for(dying.task, WAIT_S)
    assert await count(store, "uniqExact(event_id)") == 1  # the tokens are taken, no batch row

    consumer = Consumer(settings, store)
    consumers.append(consumer)

    async def stored() -> bool:
        return await count(store, "uniqExact(event_id)") >= 91

    await wait_for(stored, "every event stored despite its token", consumer.task)
    await consumer.close()
    ids = await store.query(f"SELECT DISTINCT toString(event_id) FROM {EVENTS}", "TSV")
    assert set(ids.split()) == {e["event_id"] for e in events} | {stray["event_id"]}
    assert consumer.value("beacon_consumer_replayed_batches_total") >= 1


async def read_topic(bootstrap: str, topic: str, expected: int) -> list[ConsumerRecord]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    got: list[ConsumerRecord] = []
    try:
        deadline = time.monotonic() + WAIT_S
        while len(got) < expected and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                got.extend(batch)
    finally:
        await consumer.stop()
    return got


async def through_to_the_dlq(
    settings: ConsumerSettings,
    store: ChdbWriter,
    consumers: list[Consumer],
    values: list[bytes],
    good: int,
    bad: int,
    **producer_options: Any,
) -> tuple[Consumer, list[ConsumerRecord]]:
    """`values` through a pipeline until `good` rows are stored and `bad` records are in the
    DLQ: each good row stored once, and the group committed past all of them (the bad too).
    Returns the closed consumer (for its metrics) and the DLQ records."""
    await create_topic(settings.kafka_bootstrap, settings.kafka_dlq_topic)
    await produce(settings.kafka_bootstrap, settings.kafka_topic, values, **producer_options)
    consumer = Consumer(settings, store)
    consumers.append(consumer)

    async def stored() -> bool:
        return await count(store) >= good

    await wait_for(stored, "the good events stored", consumer.task)
    dead = await read_topic(settings.kafka_bootstrap, settings.kafka_dlq_topic, bad)
    await consumer.close()
    assert await count(store) == await count(store, "uniqExact(event_id)") == good
    committed, ends = await group_offsets(
        settings.kafka_bootstrap, settings.kafka_group, settings.kafka_topic
    )
    assert {p: c[0] for p, c in committed.items()} == ends
    return consumer, dead


async def test_a_dead_letter_topic_deleted_meanwhile_is_made_again_not_waited_for(
    settings: ConsumerSettings, store: ChdbWriter, consumers: list[Consumer]
) -> None:
    """The DLQ topic deleted while the consumers run (a purge), on brokers that create no
    topic a producer asks for: the next bad line's batch failed at its DLQ step at every try,
    and every batch after it waited, until a restart made the topic again."""
    bootstrap, dlq = settings.kafka_bootstrap, settings.kafka_dlq_topic
    first = [orjson.dumps(e) for e in mail_opens(6)]
    await produce(bootstrap, settings.kafka_topic, [*first, b"{not json"])
    consumer = Consumer(settings, store)
    consumers.append(consumer)
    assert len(await read_topic(bootstrap, dlq, 1)) == 1
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([dlq])
        deadline = time.monotonic() + WAIT_S
        while dlq in await admin.list_topics():
            assert time.monotonic() < deadline, "the dead-letter topic was not deleted"
            await asyncio.sleep(0.2)
    finally:
        await admin.close()

    then = [orjson.dumps(e) for e in mail_opens(6, start=6)]
    await produce(bootstrap, settings.kafka_topic, [b'{"no_event_id": 1}', *then])

    async def committed_at_the_end() -> bool:
        committed, ends = await group_offsets(bootstrap, settings.kafka_group, settings.kafka_topic)
        return {p: c[0] for p, c in committed.items()} == ends

    await wait_for(committed_at_the_end, "every record committed", consumer.task)
    await consumer.close()
    assert await count(store, "uniqExact(event_id)") == len(first) + len(then)
    [dead] = await read_topic(bootstrap, dlq, 1)  # the topic made again holds the new one
    assert dead.value == b'{"no_event_id": 1}'


async def test_undecodable_records_go_to_the_dlq_and_the_rest_is_stored(
    settings: ConsumerSettings, store: ChdbWriter, consumers: list[Consumer]
) -> None:
    good = [orjson.dumps(e) for e in mail_opens(60)]
    bad = [b"{not json", b'{"no_event_id": 1}']
    # partition 0 gets "{not json" at offset 10, partition 1 the second one at offset 10
    values = good[:30] + bad + good[30:]
    consumer, dead = await through_to_the_dlq(
        settings, store, consumers, values, len(good), len(bad)
    )
    assert sorted(r.value for r in dead) == sorted(bad)
    headers = {r.value: dict(r.headers) for r in dead}
    assert headers[b"{not json"][REASON] == b"malformed_json"
    assert headers[b"{not json"][SOURCE_TOPIC] == settings.kafka_topic.encode()
    assert headers[b"{not json"][SOURCE_PARTITION] == b"0"
    assert headers[b"{not json"][SOURCE_OFFSET] == b"10"
    assert headers[b'{"no_event_id": 1}'][REASON] == b"not_an_event"
    assert consumer.value("beacon_consumer_dlq_records_total", reason="malformed_json") == 1
    assert consumer.value("beacon_consumer_rows_rejected_total", reason="not_an_event") == 1


async def test_a_bad_line_of_a_chunk_goes_alone_to_the_dlq_and_its_neighbours_are_stored(
    settings: ConsumerSettings, store: ChdbWriter, consumers: list[Consumer]
) -> None:
    """Records as the collector packs them (NDJSON chunks) beside one-event records."""
    good = [orjson.dumps(e) for e in mail_opens(90)]
    chunk = b"\n".join([*good[:20], b"{not json", *good[20:40]])  # the bad one is line 20
    values = [chunk, b"\n".join(good[40:60]) + b"\n", *good[60:]]
    consumer, dead = await through_to_the_dlq(settings, store, consumers, values, len(good), 1)
    [record] = dead
    headers = dict(record.headers)
    assert record.value == b"{not json"
    assert (headers[REASON], headers[SOURCE_OFFSET], headers[SOURCE_LINE]) == (
        b"malformed_json",
        b"0",
        b"20",
    )
    assert consumer.value("beacon_consumer_rows_inserted_total") == len(good)


async def test_a_line_too_large_for_a_dlq_record_goes_there_cut_with_its_length(
    settings: ConsumerSettings, store: ChdbWriter, consumers: list[Consumer]
) -> None:
    """A record can hold more than a Kafka request does by default (1 MiB): here lz4 takes a
    2 MiB line under the topic's limit. Its dead letter is cut, not refused for good."""
    good = [orjson.dumps(e) for e in mail_opens(20)]
    huge = b"{" + b"x" * (2 << 20)  # not JSON
    values = [*good[:10], huge, *good[10:]]
    consumer, dead = await through_to_the_dlq(
        settings, store, consumers, values, len(good), 1,
        compression_type="lz4", max_request_size=4 << 20,
    )  # fmt: skip
    [record] = dead
    headers = dict(record.headers)
    assert record.value == huge[:LINE_MAX_BYTES]
    assert (headers[REASON], headers[TRUNCATED]) == (b"malformed_json", str(len(huge)).encode())
    assert consumer.value("beacon_consumer_dlq_records_total", reason="malformed_json") == 1


async def a_bad_line_through(
    settings: ConsumerSettings,
    store: ChdbWriter,
    consumers: list[Consumer],
    key: bytes | None,
    headers: list[tuple[str, bytes]],
) -> tuple[bytes, Consumer, ConsumerRecord]:
    """A 400 KiB line that is not JSON, under `key` and `headers` (another producer's record,
    lz4 keeps it under a request's 1 MiB), then good lines, through to the DLQ: the line, the
    closed consumer and its dead letter."""
    line = b"{" + b"x" * (400 << 10)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, acks="all", compression_type="lz4",
        max_request_size=4 << 20,
    )  # fmt: skip
    await producer.start()
    try:
        await producer.send_and_wait(
            settings.kafka_topic, line, key=key, headers=headers, partition=0
        )
    finally:
        await producer.stop()
    good = [orjson.dumps(e) for e in mail_opens(20)]
    consumer, [record] = await through_to_the_dlq(settings, store, consumers, good, len(good), 1)
    return line, consumer, record


async def test_a_bad_line_under_a_huge_key_and_headers_goes_to_the_dlq_without_them(
    settings: ConsumerSettings, store: ChdbWriter, consumers: list[Consumer]
) -> None:
    """Another producer's record: with its key and headers the dead letter would pass what a
    Kafka request holds (1 MiB), refused for good, its partition held behind it."""
    key, headers = b"k" * (700 << 10), [("trace", b"t" * 1000)]
    line, consumer, record = await a_bad_line_through(settings, store, consumers, key, headers)
    assert (record.key, record.value) == (None, line)
    meta = dict(record.headers)
    assert meta[SOURCE_OMITTED] == str(len(key) + len("trace") + 1000).encode()
    assert (meta[REASON], meta[SOURCE_PARTITION], meta[SOURCE_OFFSET]) == (
        b"malformed_json", b"0", b"0",
    )  # fmt: skip
    assert "trace" not in meta
    assert consumer.value("beacon_consumer_dlq_records_total", reason="malformed_json") == 1


async def test_a_bad_line_under_many_empty_headers_goes_to_the_dlq_without_them(
    settings: ConsumerSettings, store: ChdbWriter, consumers: list[Consumer]
) -> None:
    """Empty headers hold no bytes but take their lengths on the wire: with 350,000 of them
    the dead letter would pass what a Kafka request holds, refused for good."""
    headers = [("", b"")] * 350_000
    line, consumer, record = await a_bad_line_through(settings, store, consumers, None, headers)
    meta = dict(record.headers)
    assert (record.value, meta[SOURCE_OMITTED], meta[REASON]) == (line, b"0", b"malformed_json")
    assert consumer.value("beacon_consumer_dlq_records_total", reason="malformed_json") == 1


@pytest.mark.timeout(180)
async def test_a_member_stays_in_its_group_while_a_slow_dlq_takes_a_batchs_letters(
    settings: ConsumerSettings, store: ChdbWriter, consumers: list[Consumer]
) -> None:
    """The dead-letter step outlasting max_poll_interval_ms (6 s here): the member left its
    group, the batch was read again and its letters sent again, each try as long."""
    good = [orjson.dumps(e) for e in mail_opens(60)]
    await create_topic(settings.kafka_bootstrap, settings.kafka_dlq_topic)
    await produce(settings.kafka_bootstrap, settings.kafka_topic, [*good[:30], b"{no", *good[30:]])
    consumer = Consumer(settings, store, max_poll_interval_ms=6000)
    consumers.append(consumer)
    dead_letters = consumer.feed.dead_letters
    send = dead_letters.send

    async def slowly(rejects: Any) -> None:
        await asyncio.sleep(14.0)  # a DLQ broker that takes long (a quota, catching up)
        await send(rejects)

    dead_letters.send = slowly  # type: ignore[method-assign]
    await wait_for(at_least(store, len(good)), "the good events stored", consumer.task)
    await wait_for(caught_up(consumer, settings.kafka_topic), "the lag to be 0", consumer.task)
    assert consumer.feed.assignments == 1  # never rebalanced: the member stayed
    await consumer.close()
    assert await count(store) == await count(store, "uniqExact(event_id)") == len(good)
    dead = await read_topic(settings.kafka_bootstrap, settings.kafka_dlq_topic, 1)
    assert [r.value for r in dead] == [b"{no"]
    assert consumer.value("beacon_consumer_batches_total", outcome="revoked") == 0


@pytest.mark.timeout(180)
async def test_a_member_stays_in_its_group_while_an_erasures_rebuild_takes_long(
    settings: ConsumerSettings, store: ChdbWriter, consumers: list[Consumer]
) -> None:
    """A person erased while their event was on its way: the batch's erase step deletes it and
    rebuilds the rollups of its day, minutes on a large day. Past max_poll_interval_ms (6 s
    here) the member left its group, and each next owner replayed the batch, rebuilt the day
    again as long, and left in turn: the partition was never committed."""
    await store.execute(f"SYSTEM START MERGES {EVENTS}")  # a DELETE waits for its mutation
    events = mail_opens(40)
    await produce(settings.kafka_bootstrap, settings.kafka_topic, [orjson.dumps(e) for e in events])
    racing = ErasedBeforeTheInsert(store, "recipient", "rcpt-7")
    consumer = Consumer(settings, racing, max_poll_interval_ms=6000)
    consumers.append(consumer)
    ingest = consumer.pipeline.ingest
    erase_recorded = ingest.erase_recorded
    rebuilds = 0

    async def slowly(erase: Any) -> int:
        nonlocal rebuilds
        rebuilds += 1
        await asyncio.sleep(14.0)  # the rebuild of a large day
        return await erase_recorded(erase)

    ingest.erase_recorded = slowly  # type: ignore[method-assign]
    await wait_for(caught_up(consumer, settings.kafka_topic), "the lag to be 0", consumer.task)
    assert consumer.feed.assignments == 1  # never rebalanced: the member stayed
    await consumer.close()
    assert racing.erased == 0 and rebuilds == 1
    assert consumer.value("beacon_consumer_rows_erased_total") == 1
    assert await count(store, "uniqExact(event_id)") == len(events) - 1
    assert await count(store, "countIf(recipient = 'rcpt-7')") == 0
    assert consumer.value("beacon_consumer_batches_total", outcome="revoked") == 0


class RawKey(str):
    """A header key of bytes that are not UTF-8, as a C client writes one: aiokafka's pure
    Python batch builder asks the key for its bytes."""

    def encode(self, *args: Any, **kwargs: Any) -> bytes:
        return b"\xfftrace"


async def test_a_record_whose_header_key_is_not_utf8_is_stored_with_its_batch(
    settings: ConsumerSettings, store: ChdbWriter, consumers: list[Consumer]
) -> None:
    """Another producer's record batch (lz4) with such keys in its last three records, between
    the collector's: aiokafka's reader raised on it at every fetch, the consumer exited, and
    every member after it met it again. Read as Kafka's own clients read it, key replaced; a
    bad line among them goes to the DLQ with the key as read."""
    lines = [orjson.dumps(e) for e in mail_opens(30)]
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        batch = producer.create_batch()
        batch._builder = _DefaultRecordBatchBuilderPy(2, 3, 0, -1, -1, -1, batch_size=1 << 20)
        for i, line in enumerate([*lines[10:13], b"{no"]):
            batch.append(key=None, value=line, timestamp=None, headers=[(RawKey(), b"v")] * i)
        batch.close()
        await (await producer.send_batch(batch, settings.kafka_topic, partition=0))
    finally:
        await producer.stop()
    consumer, [dead] = await through_to_the_dlq(
        settings, store, consumers, lines[:10] + lines[13:], len(lines), 1
    )
    assert consumer.value("beacon_consumer_records_header_replaced_total") == 3
    assert dead.value == b"{no"
    assert [h for h in dead.headers if h[0] == "\ufffdtrace"] == [("\ufffdtrace", b"v")] * 3


async def test_a_field_its_column_cannot_take_sends_only_that_record_to_the_dlq(
    settings: ConsumerSettings, store: ChdbWriter, consumers: list[Consumer]
) -> None:
    events = mail_opens(41)
    # Valid JSON events; a visitor id below UInt64 and a flag above UInt8 cannot be stored
    # as they are. A number where a string column is can: it is stored as its text, as
    # ClickHouse's JSONEachRow reads it.
    unfit = [{**events[0], "visitor_id": -1}, {**events[1], "dnt": 300}]
    events[40]["site"] = 5
    good = [orjson.dumps(e) for e in events[2:]]
    bad = [orjson.dumps(e) for e in unfit]
    values = good[:20] + bad + good[20:]
    consumer, dead = await through_to_the_dlq(
        settings, store, consumers, values, len(good), len(bad)
    )
    assert sorted(r.value for r in dead) == sorted(bad)
    assert {dict(r.headers)[REASON] for r in dead} == {b"bad_field_type"}
    assert consumer.value("beacon_consumer_dlq_records_total", reason="bad_field_type") == 2
    assert await count(store, "countIf(site = '5')") == 1


@pytest.mark.timeout(180)
async def test_two_members_share_the_partitions_and_store_each_event_once(
    settings: ConsumerSettings, store: ChdbWriter, consumers: list[Consumer]
) -> None:
    first, second = mail_opens(1500), mail_opens(1500, start=1500)
    await produce(settings.kafka_bootstrap, settings.kafka_topic, [orjson.dumps(e) for e in first])
    a = Consumer(settings, store)
    consumers.append(a)

    async def some_stored() -> bool:
        return await count(store) >= 300

    await wait_for(some_stored, "the first member to store some", a.task)
    b = Consumer(settings, store)  # joins mid-stream: a rebalance with batches on the way
    consumers.append(b)

    async def shared() -> bool:
        return bool(a.feed.parts) and bool(b.feed.parts)

    await wait_for(shared, "both members to own partitions", a.task, b.task)
    await produce(settings.kafka_bootstrap, settings.kafka_topic, [orjson.dumps(e) for e in second])

    async def all_stored() -> bool:
        return await count(store) >= 3000

    await wait_for(all_stored, "every event stored", a.task, b.task)
    await asyncio.sleep(1.0)  # a late double would show by now
    for member in (a, b):
        assert member.value("beacon_consumer_rows_inserted_total") > 0  # both took part
    await asyncio.gather(a.close(), b.close())
    assert await count(store) == await count(store, "uniqExact(event_id)") == 3000


# -- the consumer process, killed -------------------------------------------------------------


class ConsumerProcess:
    """`beacon consume` on Kafka with its own data directory and store port."""

    def __init__(self, settings: ConsumerSettings) -> None:
        self.settings = settings
        self.store_port = free_port()
        self.log_path = settings.data_dir / "consume.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        s = self.settings
        return {
            **os.environ,
            "BEACON_DATA_DIR": str(s.data_dir),
            "BEACON_STORE_PORT": str(self.store_port),
            "BEACON_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
            "BEACON_KAFKA_TOPIC": s.kafka_topic,
            "BEACON_KAFKA_DLQ_TOPIC": s.kafka_dlq_topic,
            "BEACON_KAFKA_GROUP": s.kafka_group,
            "BEACON_BATCH_MAX_ROWS": "50",
            "BEACON_BATCH_MAX_AGE_MS": "100",
            "BEACON_KAFKA_MAX_RECORDS": "200",
        }

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "beacon", "consume"],
                env=self.env(),
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_path.read_text()
            try:
                if self.query("SELECT 1").strip() == "1":
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError("beacon consume did not come up:\n" + self.log_path.read_text())

    def query(self, sql: str) -> str:
        return store_port_query(self.store_port, sql)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)


@pytest.fixture
def process(settings: ConsumerSettings) -> Iterator[ConsumerProcess]:
    p = ConsumerProcess(settings)
    yield p
    if p.proc is not None and p.proc.poll() is None:
        p.proc.kill()
        p.proc.wait()


async def prepare_store_without_merges(settings: ConsumerSettings) -> None:
    """Create the schema and keep parts from merging (the setting survives restarts, unlike
    SYSTEM STOP MERGES), so count() shows every row ever inserted, doubles included."""
    writer = ChdbWriter(settings.store_dir)
    try:
        await migrate(writer, settings.retention_days)
        await writer.execute(
            f"ALTER TABLE {EVENTS} MODIFY SETTING max_bytes_to_merge_at_max_space_in_pool = 1"
        )
    finally:
        await writer.close()


async def wait_for_inflight(settings: ConsumerSettings, timeout_s: float) -> bool:
    """True as soon as some partition's committed metadata records a batch in flight."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        committed, _ = await group_offsets(
            settings.kafka_bootstrap, settings.kafka_group, settings.kafka_topic
        )
        if any(parse_inflight(metadata) for _, metadata in committed.values()):
            return True
    return False


@pytest.mark.timeout(300)
async def test_sigkilled_consumer_stores_every_event_once(
    settings: ConsumerSettings, process: ConsumerProcess
) -> None:
    await prepare_store_without_merges(settings)
    await create_topic(settings.kafka_bootstrap, settings.kafka_dlq_topic)
    total, chunks = 6000, 30
    events = [orjson.dumps(e) for e in mail_opens(total)]

    async def produce_slowly() -> None:
        """Records keep arriving through the kills, so batches are cut by age as well."""
        step = total // chunks
        for i in range(0, total, step):
            await produce(settings.kafka_bootstrap, settings.kafka_topic, events[i : i + step])
            await asyncio.sleep(0.3)

    def stored() -> int:
        return int(process.query(f"SELECT count() FROM {EVENTS}"))

    producing = asyncio.create_task(produce_slowly())
    await asyncio.to_thread(process.start)
    kills = kills_in_flight = 0
    for threshold in (total // 8, total // 3, total // 2, 2 * total // 3, 5 * total // 6):
        deadline = time.monotonic() + WAIT_S
        while await asyncio.to_thread(stored) < threshold:
            assert time.monotonic() < deadline, process.log_path.read_text()[-3000:]
            await asyncio.sleep(0.05)
        # Three kills at least, more until one hit a batch in flight (the kill can land just
        # after its commit on a loaded machine): the restarted consumer has stored since.
        if kills >= 3 and "replaying in-flight offsets" in process.log_path.read_text():
            break
        # Kill while a batch is in flight (its range is committed as metadata) when we can
        # catch one in a few seconds: that is the case the recorded range is for.
        in_flight = await wait_for_inflight(settings, 3.0)
        process.kill()
        kills += 1
        kills_in_flight += in_flight
        await asyncio.to_thread(process.start)
    await producing

    deadline = time.monotonic() + 2 * WAIT_S
    while await asyncio.to_thread(stored) < total:
        assert time.monotonic() < deadline, process.log_path.read_text()[-3000:]
        await asyncio.sleep(0.2)
    committed, ends = await group_offsets(
        settings.kafka_bootstrap, settings.kafka_group, settings.kafka_topic
    )
    while {p: c[0] for p, c in committed.items()} != ends:
        assert time.monotonic() < deadline, (committed, ends)
        await asyncio.sleep(0.2)
        committed, ends = await group_offsets(
            settings.kafka_bootstrap, settings.kafka_group, settings.kafka_topic
        )

    raw, unique, final = map(int, process.query(
        f"SELECT count(), uniqExact(event_id), (SELECT count() FROM {EVENTS} FINAL) "
        f"FROM {EVENTS}"
    ).split())  # fmt: skip
    parts = int(process.query(f"SELECT uniqExact(_part) FROM {EVENTS}"))  # the active ones
    log_text = process.log_path.read_text()
    replays = log_text.count("replaying in-flight offsets")
    print(
        f"\nsent {total}, kills {kills} ({kills_in_flight} with a batch in flight), "
        f"stored raw {raw}, unique {unique}, FINAL {final}, active parts {parts}, "
        f"in-flight ranges replayed {replays}"
    )
    assert unique == final == total
    assert raw == total, f"{raw - total} raw duplicates"
    assert replays >= 1  # the kills did hit batches in flight, and their repeats were dropped
    assert process.proc is not None
    process.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(process.proc.wait, 60) == 0


# -- the service's choices ---------------------------------------------------------------------


async def test_the_service_picks_the_clickhouse_server_when_a_url_is_set(tmp_path: Path) -> None:
    from analytics.connect import open_writer
    from analytics.store.http import HttpWriter

    url = "http://127.0.0.1:1/"  # never reached: constructing a writer connects nothing
    writer = open_writer(ConsumerSettings(data_dir=tmp_path, clickhouse_url=url))
    try:
        assert isinstance(writer, HttpWriter)
        assert not (tmp_path / "clickhouse").exists()  # no embedded store opened
    finally:
        await writer.close()


class GroupLoading:
    """The source's admin client while the group's coordinator moves: the broker answers an
    offset fetch with a group-level error (COORDINATOR_LOAD_IN_PROGRESS, NOT_COORDINATOR) and
    no partitions, which aiokafka returns as an empty answer instead of raising (seen against
    a real three-broker cluster whose coordinator was killed: ~100 ms of such answers)."""

    def __init__(self, admin: Any, empty_answers: int) -> None:
        self.admin = admin
        self.empty_answers = empty_answers

    async def list_consumer_group_offsets(self, group: str, **options: Any) -> dict:
        answer = await self.admin.list_consumer_group_offsets(group, **options)
        if self.empty_answers:
            self.empty_answers -= 1
            return {}
        return answer

    def __getattr__(self, name: str) -> Any:
        return getattr(self.admin, name)


async def test_an_offset_fetch_answered_empty_is_retried_not_read_as_never_committed(
    settings: ConsumerSettings, store: ChdbWriter, consumers: list[Consumer]
) -> None:
    topic = settings.kafka_topic
    await produce(settings.kafka_bootstrap, topic, [orjson.dumps(e) for e in mail_opens(300)])
    a = Consumer(settings, store)
    await wait_for(at_least(store, 300), "the first member to store every event", a.task)
    await a.close()  # committed: the next member starts where it ended

    b = Consumer(settings, store)
    consumers.append(b)
    loading = b.feed.source.admin = GroupLoading(b.feed.source.admin, empty_answers=2)
    more = [orjson.dumps(e) for e in mail_opens(60, start=300)]
    await produce(settings.kafka_bootstrap, topic, more)
    await wait_for(at_least(store, 360), "the new events stored", b.task)
    await asyncio.sleep(1.0)  # a re-read from the start would show by now
    await b.close()
    assert await count(store) == await count(store, "uniqExact(event_id)") == 360
    assert loading.empty_answers == 0  # the member was given both empty answers


class SlowInserts:
    """The real chDB writer, its inserts held `delay_s` first: a large batch, a slow server."""

    def __init__(self, writer: ChdbWriter, delay_s: float) -> None:
        self.writer = writer
        self.delay_s = delay_s

    async def insert_from(self, table: str, columns: Any, select: str, token: str) -> None:
        await asyncio.sleep(self.delay_s)
        await self.writer.insert_from(table, columns, select, token)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.writer, name)


async def test_a_member_joining_during_an_insert_replays_after_it_not_beside_it(
    settings: ConsumerSettings, store: ChdbWriter, consumers: list[Consumer]
) -> None:
    # One batch across the three partitions, its insert under way when a second member
    # joins: the partition it is given is replayed as part of a batch (not its whole token),
    # so its stored ids are checked, which must wait for the first member's insert to land.
    settings = replace(
        settings, batch_max_rows=10_000, kafka_max_records=10_000, kafka_session_timeout_ms=6000
    )
    delay_s = 4.0
    await produce(
        settings.kafka_bootstrap, settings.kafka_topic, [orjson.dumps(e) for e in mail_opens(300)]
    )
    a = Consumer(settings, SlowInserts(store, delay_s))
    consumers.append(a)

    async def marked() -> bool:
        try:
            committed, _ = await group_offsets(
                settings.kafka_bootstrap, settings.kafka_group, settings.kafka_topic
            )
        except KafkaError:  # no group yet
            return False
        return any(parse_inflight(metadata) for _, metadata in committed.values())

    await wait_for(marked, "the first member's batch in flight", a.task)
    b = Consumer(settings, store)
    consumers.append(b)

    await wait_for(at_least(store, 300, "uniqExact(event_id)"), "every event", a.task, b.task)
    await asyncio.sleep(delay_s + 2)  # a second insert of the same rows would show by now

    async def b_owns() -> bool:  # replayed, or committed by a before it left
        return bool(b.feed.parts)

    await wait_for(b_owns, "the second member to take partitions over", a.task, b.task)
    await asyncio.gather(a.close(), b.close())
    assert await count(store) == await count(store, "uniqExact(event_id)") == 300


async def test_a_batch_revoked_as_its_commit_lands_is_counted_once(
    settings: ConsumerSettings, store: ChdbWriter, consumers: list[Consumer]
) -> None:
    """The commit answered, and the group's revocation ran before the member took the answer:
    the batch was counted revoked, then stored too. Each batch cut ends counted once."""
    await produce(
        settings.kafka_bootstrap, settings.kafka_topic, [orjson.dumps(e) for e in mail_opens(30)]
    )
    a = Consumer(settings, store)
    consumers.append(a)
    landed, revoked = asyncio.Event(), asyncio.Event()
    commit, revoke = a.feed.source.commit, a.feed._revoke

    async def answered_late(offsets: Any) -> None:
        await commit(offsets)
        if not landed.is_set() and all(metadata == "" for _, metadata in offsets.values()):
            landed.set()  # the batch's commit, not its mark
            await asyncio.wait_for(revoked.wait(), WAIT_S)

    def revoking(tps: Partitions) -> None:
        revoke(tps)
        if tps:  # a first join revokes none
            revoked.set()

    a.feed.source.commit = answered_late  # type: ignore[method-assign]
    a.feed._revoke = revoking  # type: ignore[method-assign]
    await wait_for(landed.wait, "the first batch's commit answered", a.task)
    b = Consumer(settings, store)
    consumers.append(b)
    await wait_for(at_least(store, 30, "uniqExact(event_id)"), "every event", a.task, b.task)
    await asyncio.gather(a.close(), b.close())
    ended = [a.value("beacon_consumer_batches_total", outcome=o) for o in ("stored", "revoked")]
    cut = sum(a.value("beacon_consumer_batch_cuts_total", reason=r) for r in CUT_REASONS)
    assert revoked.is_set() and ended[1] >= 1 and sum(ended) == cut
    assert await count(store) == 30


async def test_a_topic_made_again_is_stored_though_its_offsets_repeat_the_old_ones(
    settings: ConsumerSettings, store: ChdbWriter, consumers: list[Consumer]
) -> None:
    """Deleting a topic drops its group's offsets; made again, its records restart at offset
    0, so its batches can name the old topic's ranges. The dedup token must tell them apart,
    or ClickHouse drops the new events as repeats of the old."""
    topic = f"again.{uuid.uuid4().hex[:12]}"
    settings = replace(settings, kafka_topic=topic, kafka_dlq_topic=f"{topic}.dlq")
    old, new = mail_opens(2), mail_opens(2, start=2)
    for events in (old, new):
        await create_topic(settings.kafka_bootstrap, topic)
        await produce(settings.kafka_bootstrap, topic, packed(events, 2))  # one record: [0, 0]
        consumer = Consumer(settings, store)

        async def inserted(c: Consumer = consumer) -> bool:
            return c.value("beacon_consumer_inserts_total", outcome="ok") >= 1

        await wait_for(inserted, "the record's batch inserted", consumer.task)
        await consumer.close()
        await delete_topic(settings.kafka_bootstrap, topic)
    assert await count(store) == await count(store, "uniqExact(event_id)") == 4


async def delete_topic(bootstrap: str, name: str) -> None:
    """Delete `name` and wait until it is gone (deletion is asynchronous on the broker)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([name])
        deadline = time.monotonic() + WAIT_S
        while name in await admin.list_topics():
            assert time.monotonic() < deadline, f"topic {name} still listed"
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


async def test_a_commit_tried_across_a_rebalance_is_never_sent_under_the_new_generation(
    settings: ConsumerSettings,
) -> None:
    """aiokafka tries a commit again while its coordinator does not answer, each try under the
    member's generation of the moment: one that outlived a rebalance would commit offsets of
    partitions that may be another member's now. The revocation ends it instead."""
    from aiokafka.errors import RequestTimedOutError
    from aiokafka.protocol.commit import OffsetCommitRequest

    first = KafkaSource(settings)
    second = KafkaSource(settings)
    revocations: list[Partitions] = []

    async def revoked(tps: Partitions) -> None:
        revocations.append(tps)

    await first.start(revoked, lambda tps: None)
    try:
        await wait_for(_polled_until_assigned(first), "the first member's partitions")
        coordinator = first.consumer._coordinator
        old_generation = coordinator.generation
        sent_under: list[int] = []  # the generation of each commit request the member built
        send = coordinator._send_req

        async def unanswered(request: Any) -> Any:
            if isinstance(request, OffsetCommitRequest):
                sent_under.append(coordinator.generation)
                raise RequestTimedOutError()  # retriable: aiokafka tries again
            return await send(request)

        coordinator._send_req = unanswered
        tp = next(iter(first.assignment()))
        commit = asyncio.create_task(first.commit({tp: (1, "")}))
        await wait_for(_sent(sent_under), "a commit tried")
        await second.start(revoked, lambda tps: None)
        await wait_for(_polled_until_assigned(second, first), "the second member's partitions")
        with pytest.raises(KafkaError):
            await asyncio.wait_for(commit, WAIT_S)  # ended by the revocation, not a timeout
        assert any(revocations) and coordinator.generation != old_generation
        assert set(sent_under) == {old_generation}
    finally:
        await first.stop()
        await second.stop()


def _polled_until_assigned(*members: KafkaSource) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        for member in members:
            await member.poll(10, 1)  # also keeps the member in its group
        return all(member.assignment() for member in members)

    return check


def _sent(sent_under: list[int]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return bool(sent_under)

    return check
