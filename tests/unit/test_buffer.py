"""The event buffer keeps each event in a block of its own size, and holds no more than its
bounds."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util

import orjson

from collector.buffer import EventBuffer
from collector.metrics import CollectorMetrics
from collector.sinks.memory import MemorySink
from tests.support.helpers import metric_value
from tests.support.kafka_sink import wait_for

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


class StuckDiskSink(MemorySink):
    """A memory sink whose flush waits until released: a spool disk whose fsync hangs."""

    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0
        self.release = asyncio.Event()

    async def flush(self) -> None:
        self.flushes += 1
        await self.release.wait()


async def test_a_flush_wanted_while_one_hangs_comes_right_after_it(
    metrics: CollectorMetrics,
) -> None:
    # The flush at a pause closes the spool's segment: skipped because the one before still
    # ran, the burst's end would wait for the next interval (or the next pause).
    sink = StuckDiskSink()
    buffer = EventBuffer(
        sink, metrics, max_events=100, max_bytes=1 << 20, linger_ms=5,
        flush_interval_ms=600_000, idle_flush_ms=20,
    )  # fmt: skip
    buffer.start()
    try:
        assert buffer.offer(b'{"n":1}')
        await wait_for(lambda: sink.flushes == 1, 30, "the flush at the first pause")
        assert buffer.offer(b'{"n":2}')  # drained beside the stuck flush, then another pause
        await wait_for(lambda: len(sink.events()) == 2, 30, "the drain beside the flush")
        await asyncio.sleep(0.2)  # past the second pause: its flush waits for the first
        assert sink.flushes == 1
        sink.release.set()
        await wait_for(lambda: sink.flushes == 2, 30, "the second pause's flush")
    finally:
        sink.release.set()
        await buffer.close()


async def test_a_close_behind_a_hung_flush_hands_on_the_last_events_and_refuses_later_ones(
    metrics: CollectorMetrics,
) -> None:
    sink = StuckDiskSink()
    buffer = EventBuffer(
        sink, metrics, max_events=100, max_bytes=1 << 20, linger_ms=5, flush_interval_ms=20
    )
    buffer.start()
    closing = None
    try:
        await wait_for(lambda: sink.flushes == 1, 30, "a flush to hang")
        assert buffer.offer(b'{"n":1}')
        closing = asyncio.create_task(buffer.close())
        taken = [1]  # and those offered before the pump's last drain

        def refused() -> bool:
            n = taken[-1] + 1
            if buffer.offer(b'{"n":%d}' % n):
                taken.append(n)
                return False
            return True

        # Refused (and counted) once the pump has stopped, not kept while the flush hangs
        # (a worker killed at its stop timeout would lose them uncounted); what was taken
        # before is handed on all the same.
        await wait_for(refused, 30, "late events to be refused")
        await wait_for(lambda: len(sink.events()) == len(taken), 30, "the last events handed on")
        assert not closing.done()
        assert metric_value(metrics, "beacon_events_dropped_total", reason="shutdown") == 1
    finally:
        sink.release.set()
        if closing is not None:
            await closing
    assert [e["n"] for e in sink.events()] == taken
