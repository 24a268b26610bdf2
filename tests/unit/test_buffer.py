"""The event buffer keeps each event in a block of its own size."""

from __future__ import annotations

import ctypes
import ctypes.util

import orjson

from collector.buffer import EventBuffer
from collector.metrics import CollectorMetrics
from collector.sinks.memory import MemorySink

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc_usable_size.restype = ctypes.c_size_t
libc.malloc_usable_size.argtypes = [ctypes.c_void_p]


def block_bytes(blob: bytes) -> int:
    """The C heap block behind a bytes object this size (CPython: its address is the block)."""
    return int(libc.malloc_usable_size(id(blob)))


def test_an_event_is_kept_in_a_block_its_size_not_orjsons(metrics: CollectorMetrics) -> None:
    buffer = EventBuffer(MemorySink(), metrics, max_events=10, linger_ms=5, flush_interval_ms=50)
    row = {"event_type": "open", "user_agent": "Mozilla/5.0 " * 40}
    blob = orjson.dumps(row)
    assert 500 < len(blob) < 600
    # orjson hands back the block it wrote into: the case the buffer guards against.
    assert block_bytes(blob) >= 4096
    assert buffer.offer(blob)
    [kept] = buffer._events
    assert kept == blob
    assert block_bytes(kept) < 2 * len(blob)
