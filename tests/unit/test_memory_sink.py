"""The memory sink keeps the newest events only: a server on it stays bounded."""

from __future__ import annotations

from dataclasses import replace

from aiohttp.test_utils import TestClient, TestServer

from collector.app import create_app
from collector.metrics import CollectorMetrics
from collector.server import make_sink
from collector.settings import Settings
from collector.sinks.memory import MemorySink
from tests.support.helpers import metric_value


def batch(first: int, count: int) -> list[bytes]:
    return [b'{"n":%d}' % i for i in range(first, first + count)]


async def test_unbounded_by_default_keeps_every_batch() -> None:
    sink = MemorySink()
    for first in range(0, 1000, 100):
        await sink.send(batch(first, 100))
    assert [e["n"] for e in sink.events()] == list(range(1000))


async def test_old_batches_go_whole_once_the_newest_hold_the_bound() -> None:
    discarded: list[int] = []
    sink = MemorySink(max_events=10, on_discard=discarded.append)
    await sink.send(batch(0, 4))
    await sink.send(batch(4, 4))
    await sink.send(batch(8, 4))  # 12 kept: the first batch still needed for 10
    assert discarded == []
    await sink.send(batch(12, 4))  # 16: the newest three batches hold 12 >= 10
    assert discarded == [4]
    assert [e["n"] for e in sink.events()] == list(range(4, 16))
    await sink.send(batch(16, 30))  # one batch larger than the bound is kept whole
    assert discarded == [4, 4, 4, 4]
    assert [e["n"] for e in sink.events()] == list(range(16, 46))
    assert sink.kept == 30


async def test_a_server_on_the_memory_sink_counts_what_it_lets_go(
    settings: Settings, metrics: CollectorMetrics
) -> None:
    # A tick a millisecond: the 20-event buffer is handed on long before 20 requests come.
    settings = replace(settings, buffer_max_events=20, linger_ms=1)
    sink = make_sink(settings, metrics)
    assert isinstance(sink, MemorySink)
    client = TestClient(TestServer(create_app(settings, sink, metrics), host="127.0.0.1"))
    await client.start_server()
    try:
        for i in range(100):
            response = await client.get(f"/p.gif?e=open&s=shop&r=u-{i}")
            assert response.status == 200
            await client.post("/e", json={"e": "custom", "s": "shop", "r": f"b-{i}"})
    finally:
        await client.close()  # the buffer's last batch reaches the sink
    kept = sink.events()
    discarded = metric_value(metrics, "beacon_events_dropped_total", reason="memory_sink_discarded")
    accepted = sum(
        metric_value(metrics, "beacon_events_accepted_total", transport=transport)
        for transport in ("pixel", "beacon")
    )
    assert accepted > 150  # a few may find the 20-event buffer full between ticks
    assert 20 <= len(kept) < 60
    assert len(kept) + discarded == accepted  # every accepted event kept or counted
    # The newest are the ones kept: at most 60 events, so from the last 30-odd requests.
    assert min(int(event["recipient"].split("-")[1]) for event in kept) >= 60
