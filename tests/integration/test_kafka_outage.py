"""Kafka going away under load and coming back: a dedicated broker this module stops and starts."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from collector.kafka_admin import init_topics
from collector.settings import Settings
from tests.support import kafka_broker
from tests.support.helpers import metric_value
from tests.support.kafka_sink import (
    RecordingSink,
    events_in,
    fire_pixels,
    kafka_sink,
    read_topic,
    spooled_events,
    wait_for,
)

OUTAGE_S = 12.0  # the broker stays down at least this long (the issue asks for 10 s)


class OwnBroker:
    """A broker on fixed ports and one data dir, so it can be stopped and started again."""

    def __init__(self, directory: Path) -> None:
        self.kafka = kafka_broker.load_kafka_script()
        self.dir = directory
        self.port, self.controller_port = kafka_broker.free_ports(2)
        self.running: Any = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        if self.running is None:
            self.running = self.kafka.start_broker(self.dir, self.port, self.controller_port)

    def stop(self) -> None:
        if self.running is not None:
            self.running.stop()
            self.running = None


@pytest.fixture(scope="module")
def own_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnBroker]:
    broker = OwnBroker(tmp_path_factory.mktemp("own-kafka"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
async def own_settings(settings: Settings, own_broker: OwnBroker) -> Settings:
    """Kafka settings on the dedicated broker (running), with a fresh 3-partition topic."""
    own_broker.start()  # a test that failed half-way may have left it stopped
    name = f"outage.{uuid.uuid4().hex[:8]}"
    kafka = replace(
        settings,
        kafka_bootstrap=own_broker.bootstrap,
        kafka_topic=name,
        kafka_dlq_topic=name + ".dlq",
        kafka_partitions=3,
        kafka_replication=1,  # a single broker
        kafka_min_insync_replicas=1,
        # Short enough that the test does not wait long for a verdict on a dead broker.
        kafka_timeout_ms=1500,
        # Segments close quickly, so replay has something to take soon after Kafka is back.
        spool_segment_max_age_ms=200,
        flush_interval_ms=200,
    )
    await init_topics(kafka)
    return kafka


def event_ids(raw_events: list[bytes]) -> list[str]:
    return [orjson.loads(raw)["event_id"] for raw in raw_events]


class Load:
    """Steady pixel requests from a background task until stopped; keeps every status."""

    def __init__(self, client: Any, concurrency: int = 4, pause_s: float = 0.01) -> None:
        self.client = client
        self.statuses: list[int] = []
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._worker(w, pause_s)) for w in range(concurrency)]

    async def _worker(self, worker: int, pause_s: float) -> None:
        seq = 0
        while not self._stop.is_set():
            params = {"e": "impression", "s": "load", "r": f"w{worker}-{seq}"}
            resp = await self.client.get("/p.gif", params=params)
            await resp.read()
            self.statuses.append(resp.status)
            seq += 1
            await asyncio.sleep(pause_s)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


async def status(client: Any, path: str) -> int:
    resp = await client.get(path)
    await resp.read()
    return int(resp.status)


@pytest.mark.timeout(300)
async def test_outage_spills_to_disk_and_replays_without_loss(
    make_client, own_settings, own_broker, metrics
):
    sink = RecordingSink(kafka_sink(own_settings, metrics))
    client = await make_client(sink=sink, flush_interval_ms=own_settings.flush_interval_ms)
    await wait_for(sink.connected, 30, "the sink to reach Kafka")
    load = Load(client)
    try:
        await wait_for(
            lambda: metric_value(metrics, "beacon_kafka_events_total", outcome="acked") > 0,
            60,
            "Kafka to acknowledge some of the load",
        )

        down_at = time.monotonic()
        answered_before = len(load.statuses)
        await asyncio.to_thread(own_broker.stop)
        # The sink notices Kafka is away; the collector stays ready, its spool takes the events.
        deadline = time.monotonic() + 30
        while sink.connected():
            assert time.monotonic() < deadline, "the sink never noticed the broker stopped"
            await asyncio.sleep(0.1)
        assert await status(client, "/readyz") == 200
        await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))

        def met_the_outage() -> bool:
            """Load answered while the broker is down, spilled, and on disk."""
            spilled = sum(
                metric_value(metrics, "beacon_kafka_spilled_events_total", reason=r)
                for r in ("kafka_down", "timeout", "queue_full")
            )
            on_disk = any(own_settings.spool_dir.iterdir())
            return len(load.statuses) > answered_before and spilled > 0 and on_disk

        # The broker stays down until the load has met the outage, however slow the machine.
        await wait_for(met_the_outage, 60, "events answered and spilled to the spool")
        assert await status(client, "/readyz") == 200
        answered_during = len(load.statuses) - answered_before

        await asyncio.to_thread(own_broker.start)  # same data dir, same ports
        deadline = time.monotonic() + 60
        while not sink.connected():
            assert time.monotonic() < deadline, "the sink never reached Kafka again"
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.5)
    finally:
        await load.stop()

    # Replay empties the spool: every segment sent and acknowledged, then deleted.
    spool_dir = own_settings.spool_dir
    await wait_for(lambda: not any(spool_dir.iterdir()), 60, "replay to empty the spool")
    await client.close()

    records = await read_topic(own_settings.kafka_bootstrap, own_settings.kafka_topic)
    accepted = event_ids(sink.events)
    stored = event_ids(events_in(records))
    assert load.statuses and set(load.statuses) == {200}
    assert len(accepted) == len(set(accepted)) == len(load.statuses)
    assert metric_value(metrics, "beacon_events_accepted_total", transport="pixel") == len(accepted)
    assert set(stored) == set(accepted)  # nothing lost; duplicates allowed
    replayed = metric_value(metrics, "beacon_kafka_replayed_events_total")
    assert replayed > 0
    spilled_by = {
        r: int(metric_value(metrics, "beacon_kafka_spilled_events_total", reason=r))
        for r in ("kafka_down", "timeout", "queue_full")
    }
    print(
        f"\noutage: accepted {len(accepted)} ({answered_during} while the broker was down), "
        f"records in topic {len(stored)}, unique {len(set(stored))}, "
        f"duplicates {len(stored) - len(set(stored))}, spilled {spilled_by}, "
        f"replayed {replayed:.0f}"
    )


async def test_close_with_the_broker_just_stopped_spools_everything(
    own_settings, own_broker, metrics
):
    sink = kafka_sink(own_settings, metrics)
    await wait_for(sink.connected, 30, "the sink to reach Kafka")
    first = [orjson.dumps({"event_id": f"a{i}"}) for i in range(300)]
    await sink.send(first)
    await wait_for(
        lambda: metric_value(metrics, "beacon_kafka_events_total", outcome="acked") == 300,
        30,
        "the first events to be acknowledged",
    )
    await asyncio.to_thread(own_broker.stop)
    # The sink has not noticed yet: these go into the queue and to the producer, then time out.
    late = [orjson.dumps({"event_id": f"b{i}"}) for i in range(300)]
    await sink.send(late[:150])
    await asyncio.sleep(0.05)
    await sink.send(late[150:])
    await sink.close()  # the SIGTERM path

    assert sorted(spooled_events(own_settings.spool_dir)) == sorted(late)
    assert metric_value(metrics, "beacon_kafka_queue_bytes") == 0
    assert metric_value(metrics, "beacon_kafka_up") == 0


async def test_start_while_kafka_is_down_then_replay(
    make_client, own_settings, own_broker, metrics
):
    await asyncio.to_thread(own_broker.stop)
    sink = RecordingSink(kafka_sink(own_settings, metrics))
    client = await make_client(sink=sink, flush_interval_ms=own_settings.flush_interval_ms)
    await fire_pixels(client, 0, 100)  # served while producer.start() keeps failing
    assert not sink.connected()
    assert await status(client, "/readyz") == 200  # the spool takes them meanwhile
    await wait_for(lambda: any(own_settings.spool_dir.glob("*.ndjson")), 60, "a closed segment")

    await asyncio.to_thread(own_broker.start)
    await wait_for(sink.connected, 60, "the sink to reach Kafka")
    await wait_for(lambda: not any(own_settings.spool_dir.iterdir()), 30, "replay")
    await client.close()

    records = await read_topic(own_settings.kafka_bootstrap, own_settings.kafka_topic)
    assert set(event_ids(events_in(records))) == set(event_ids(sink.events))
    assert len(sink.events) == 100
    assert metric_value(metrics, "beacon_kafka_replayed_events_total") > 0
