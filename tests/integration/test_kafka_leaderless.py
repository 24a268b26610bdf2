"""A recorded batch one of whose partitions has no leader, against three real brokers.

A partition with one replica whose broker is dead is not fetched at all. The batch a dead
member recorded across it and two live partitions must not stop the consumer: the live ranges
go in after BACKLOG_AGES batch ages (partial: only what is not stored already), and the live
partitions' new records are stored meanwhile, as ever. Nor may a fourth partition on the dead
broker that the group never committed (its log's start cannot be read): the others are adopted
without it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry

from analytics.migrations import migrate
from analytics.store.chdb import ChdbWriter
from consumers.metrics import CUT_REASONS as CUTS
from consumers.metrics import ConsumerMetrics
from consumers.service import run_kafka_pipeline
from consumers.settings import ConsumerSettings
from consumers.sources.kafka_batches import inflight_metadata
from tests.integration.test_kafka_consumer import WAIT_S, at_least, count, packed, wait_for
from tests.support import kafka_broker
from tests.support.chdb_events import mail_opens
from tests.support.helpers import metric_value

# Three brokers starting on a loaded machine can take minutes.
pytestmark = [pytest.mark.timeout(900)]

NODES = 3
LEADERLESS = 2  # the partition whose one replica is on the broker killed
RECORDS_PER_PARTITION = 10
EVENTS_PER_RECORD = 4


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with kafka_broker.cluster(tmp_path_factory.mktemp("kafka-cluster"), NODES) as running:
        yield running


async def produce_to(bootstrap: str, topic: str, by_partition: dict[int, list[bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for partition, values in by_partition.items():
            for value in values:
                await producer.send_and_wait(topic, value, partition=partition)
    finally:
        await producer.stop()


def lines(values: list[bytes]) -> int:
    return sum(v.count(b"\n") + 1 for v in values)


async def test_a_partition_without_a_leader_holds_back_neither_its_batch_nor_the_others(
    cluster: Any, tmp_path: Path
) -> None:
    topic = f"leaderless.{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=cluster.bootstrap)
    await admin.start()
    try:
        # One replica a partition, partition p on node p + 1; one more on the node killed.
        one_each = {p: [p + 1] for p in range(NODES)} | {NODES: [LEADERLESS + 1]}
        await admin.create_topics(
            [NewTopic(topic, -1, -1, one_each), NewTopic(topic + ".dlq", 1, NODES)]
        )
    finally:
        await admin.close()
    settings = ConsumerSettings(
        data_dir=tmp_path,
        batch_max_rows=1000,
        batch_max_age_ms=100,
        poll_interval_ms=20,
        retry_max_ms=400,
        kafka_bootstrap=cluster.bootstrap,
        kafka_topic=topic,
        kafka_dlq_topic=f"{topic}.dlq",
        kafka_group=f"group-{uuid.uuid4().hex[:8]}",
        kafka_max_records=100,
    )
    events = mail_opens(NODES * RECORDS_PER_PARTITION * EVENTS_PER_RECORD)
    values = packed(events, EVENTS_PER_RECORD)
    by_partition = {p: values[p::NODES] for p in range(NODES)}
    await produce_to(cluster.bootstrap, topic, by_partition)

    # A member that died before its insert was committed recorded one batch across all three.
    tps = [TopicPartition(topic, p) for p in range(NODES)]
    recorder = AIOKafkaConsumer(
        bootstrap_servers=cluster.bootstrap, group_id=settings.kafka_group, enable_auto_commit=False
    )
    recorder.assign(tps)
    await recorder.start()
    try:
        metadata = inflight_metadata(0, RECORDS_PER_PARTITION - 1, "ab" * 16, NODES)
        deadline = time.monotonic() + WAIT_S
        while True:  # a new cluster makes its offsets topic on the first commit
            try:
                await recorder.commit({tp: (0, metadata) for tp in tps})
                break
            except KafkaError:
                assert time.monotonic() < deadline, "the group's coordinator never answered"
                await asyncio.sleep(0.5)
    finally:
        await recorder.stop()

    dead = next(b for b in cluster.brokers if b.dir.name == f"node-{LEADERLESS + 1}")
    dead.kill()
    store = ChdbWriter(settings.store_dir)
    await migrate(store, 0)
    metrics, stop = ConsumerMetrics(CollectorRegistry()), asyncio.Event()
    # As `beacon consume` runs it: started again after a retriable Kafka error (the dead broker
    # stays in the cluster's metadata a while, and a request sent to it fails).
    task = asyncio.create_task(run_kafka_pipeline(settings, store, metrics, stop))
    try:
        live = lines(by_partition[0]) + lines(by_partition[1])
        await wait_for(at_least(store, live), "the recorded batch's live ranges", task)
        cuts = {
            r: metric_value(metrics, "beacon_consumer_batch_cuts_total", reason=r) for r in CUTS
        }
        assert cuts["replay_split"] == 1, cuts

        # New records of the live partitions are stored while the recorded range waits.
        more = mail_opens(2 * RECORDS_PER_PARTITION * EVENTS_PER_RECORD)
        fresh = packed(more, EVENTS_PER_RECORD)
        await produce_to(cluster.bootstrap, topic, {0: fresh[0::2], 1: fresh[1::2]})
        await wait_for(at_least(store, live + len(more)), "the live partitions' new records", task)
        stored_ids = await count(store, "uniqExact(event_id)")
        assert stored_ids == live + len(more), (stored_ids, live, len(more))  # each once
        leaderless_ids = {orjson.loads(line)["event_id"] for v in by_partition[LEADERLESS]
                          for line in v.split(b"\n")}  # fmt: skip
        ids = ",".join(f"'{i}'" for i in leaderless_ids)
        assert await count(store, f"countIf(event_id IN ({ids}))") == 0  # still to replay

        # The live partitions' lag is still read (one ask for all fails on the leaderless one).
        async def live_lag_known() -> bool:
            return all(
                metrics.registry.get_sample_value(
                    "beacon_consumer_lag_records", {"topic": topic, "partition": str(p)}
                )
                == 0
                for p in (0, 1)
            )

        await wait_for(live_lag_known, "the live partitions' lag", task)
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT_S)
        await store.close()
