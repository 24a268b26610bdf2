"""A Kafka sink under test: a recording sink, pixels to fire, the topic and spool to read."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord

from collector.metrics import CollectorMetrics
from collector.settings import Settings
from collector.sinks.kafka import KafkaSink
from collector.sinks.spool import SpoolSink
from collector.spool.writer import spool_limits

UA = "Mozilla/5.0 (X11; Linux x86_64) KafkaTest/1.0"


EVENT_FIELDS = {
    "schema_version", "event_id", "received_at", "event_type", "site", "campaign", "message",
    "recipient", "ad", "url_host", "url_path", "url_query", "referrer", "props", "user_agent",
    "ip", "country", "visitor_id", "dnt", "transport", "verified", "consent",
}  # fmt: skip


class RecordingSink:
    """Wraps a sink and keeps every event handed to it: the events the collector accepted."""

    def __init__(self, inner: KafkaSink) -> None:
        self.inner = inner
        self.events: list[bytes] = []

    async def send(self, events: list[bytes]) -> None:
        self.events.extend(events)
        await self.inner.send(events)

    async def flush(self) -> None:
        await self.inner.flush()

    def healthy(self) -> bool:
        return self.inner.healthy()

    def connected(self) -> bool:
        return self.inner.connected()

    async def close(self) -> None:
        await self.inner.close()


def kafka_sink(settings: Settings, metrics: CollectorMetrics) -> KafkaSink:
    spool = SpoolSink(
        settings.spool_dir,
        metrics,
        **spool_limits(settings),
    )
    return KafkaSink(settings, metrics, spool).start()


async def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def read_topic(bootstrap: str, topic: str, timeout_s: float = 60) -> list[ConsumerRecord]:
    """Every record in the topic now, from the first offset to the end of each partition."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        await wait_for(lambda: bool(consumer.assignment()), timeout_s, "partition assignment")
        ends = await consumer.end_offsets(list(consumer.assignment()))
        records: list[ConsumerRecord] = []
        deadline = time.monotonic() + timeout_s
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            assert time.monotonic() < deadline, "timed out reading the topic"
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(batch)
        return records
    finally:
        await consumer.stop()


def events_in(records: list[ConsumerRecord]) -> list[bytes]:
    """Events of records (one each, or an NDJSON chunk each: docs/tracking.md "Event format")."""
    return [line for r in records for line in (r.value or b"").split(b"\n")]


def spooled_events(spool_dir: Path) -> list[bytes]:
    """Events in the spool's segments, oldest segment first."""
    events: list[bytes] = []
    for path in sorted(spool_dir.iterdir()):
        events.extend(line for line in path.read_bytes().split(b"\n") if line)
    return events


async def fire_pixels(client, first: int, count: int) -> None:  # type: ignore[no-untyped-def]
    async def one(i: int) -> None:
        query = {
            "e": "open", "s": "shop", "c": "spring", "m": f"m-{i}", "r": f"r-{i}", "ad": "ad-1",
            "u": f"https://shop.example/p/{i}?utm_source=mail&secret=x", "p.n": str(i),
        }  # fmt: skip
        resp = await client.get("/p.gif", params=query, headers={"User-Agent": UA})
        assert resp.status == 200
        await resp.read()

    await asyncio.gather(*(one(i) for i in range(first, first + count)))
