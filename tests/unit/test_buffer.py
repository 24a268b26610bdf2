"""The event buffer keeps each event in a block of its own size, and holds no more than its
bounds."""

from __future__ import annotations

import ctypes
import ctypes.util

import orjson

from collector.buffer import EventBuffer
from collector.metrics import CollectorMetrics
from collector.sinks.memory import MemorySink
from tests.support.helpers import metric_value

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc_usable_size.restype = ctypes.c_size_t
libc.malloc_usable_size.argtypes = [ctypes.c_void_p]


def block_bytes(blob: bytes) -> int:
    """The C heap block behind a bytes object this size (CPython: its address is the block)."""
    return int(libc.malloc_usable_size(id(blob)))


def test_an_event_is_kept_in_a_block_its_size_not_orjsons(metrics: CollectorMetrics) -> None:
    buffer = EventBuffer(
        MemorySink(), metrics, max_events=10, max_bytes=1 << 20, linger_ms=5, flush_interval_ms=50
    )
    row = {"event_type": "open", "user_agent": "Mozilla/5.0 " * 40}
    blob = orjson.dumps(row)
    assert 500 < len(blob) < 600
    # orjson hands back the block it wrote into: the case the buffer guards against.
    assert block_bytes(blob) >= 4096
    assert buffer.offer(blob)
    [kept] = buffer._events
    assert kept == blob
    assert block_bytes(kept) < 2 * len(blob)


async def test_the_buffer_holds_no_more_bytes_than_its_bound(metrics: CollectorMetrics) -> None:
    """A stalled sink with events ~100x the usual (every prop and URL at its limit): a count
    alone let the buffer take gigabytes. Past the bytes bound events are refused and counted,
    a POST's batch whole; once the pump hands them on, there is room again."""
    sink = MemorySink()
    buffer = EventBuffer(
        sink, metrics, max_events=100_000, max_bytes=4 << 20, linger_ms=5, flush_interval_ms=50
    )
    big = orjson.dumps({"props": {f"k{i}": "x" * 512 for i in range(100)}})
    assert 50_000 < len(big) < 60_000
    taken = 0
    while buffer.offer(big):
        taken += 1
    assert taken == (4 << 20) // len(big)
    assert not buffer.offer_all([b"{}", big])
    assert metric_value(metrics, "beacon_events_dropped_total", reason="buffer_full") == 1 + 2
    assert buffer.offer(b"{}")  # what still fits
    assert await buffer._drain_once() == taken + 1
    assert buffer.offer_all([big, big])


async def test_an_event_offered_after_the_last_drain_is_refused_and_counted(
    metrics: CollectorMetrics,
) -> None:
    # A connection that outlived the server's shutdown: nothing would ever send its events.
    sink = MemorySink()
    buffer = EventBuffer(
        sink, metrics, max_events=100, max_bytes=1 << 20, linger_ms=5, flush_interval_ms=50
    )
    buffer.start()
    assert buffer.offer(b'{"n":1}')
    await buffer.close()
    assert [e["n"] for e in sink.events()] == [1]
    assert not buffer.offer(b'{"n":2}')
    assert not buffer.offer_all([b'{"n":3}', b'{"n":4}'])
    assert metric_value(metrics, "beacon_events_dropped_total", reason="shutdown") == 3
