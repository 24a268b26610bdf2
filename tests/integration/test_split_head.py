"""A pixel head split across reads (collector/splithead.py): the fast path's work on it is linear
in its length however it is cut, it reaches the same verdict as on the whole head, and a head
trickled a byte at a time to a real `beacon serve` still gets its pixel from the fast path."""

from __future__ import annotations

import asyncio
import socket

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from collector import fastpath
from collector.app import COLLECTOR, create_app
from collector.fastpath import FastPaths, PixelFastPath
from collector.metrics import CollectorMetrics
from collector.pixel import GIF_BYTES
from collector.settings import Settings
from collector.sinks.memory import MemorySink
from collector.splithead import (
    COMPLETE,
    END_OF_HEAD,
    SPLIT_HEAD_MAX_BYTES,
    WAITING,
    SplitHead,
    first_part_verdict,
)
from loadtest.fuzz import collector, scrape, total
from tests.support.helpers import Transport, metric_value


def pixel_head(size: int) -> bytes:
    """A whole pixel request of `size` bytes: a padding header fills it up."""
    start = b"GET /p.gif?e=open&s=split HTTP/1.1\r\nHost: t\r\nX-Pad: "
    return start + b"p" * (size - len(start) - len(END_OF_HEAD)) + END_OF_HEAD


def trickle(head: bytes) -> tuple[SplitHead, list[str]]:
    """`head` fed one byte a read, as the fast path would: its SplitHead and every verdict."""
    split = SplitHead(head[:1])
    return split, [split.add(head[i : i + 1]) for i in range(1, len(head))]


@pytest.mark.parametrize("size", [1024, 8192, SPLIT_HEAD_MAX_BYTES - 1])
def test_a_head_trickled_a_byte_at_a_time_costs_linear_work(size: int) -> None:
    head = pixel_head(size)
    split, verdicts = trickle(head)
    assert verdicts == [WAITING] * (size - 2) + [COMPLETE]
    assert split.join() == head
    # Each byte is looked at with at most 3 before it, and joined once: rescanning and joining
    # the whole head on every read would be size**2 / 2 (4 Mi for 8 KiB, 128 Mi for 16 KiB).
    assert split.scanned_bytes <= 4 * size
    assert split.joined_bytes == size


def reference(received: bytes) -> str:
    """The verdict on everything received so far, from scratch (what each read used to do)."""
    if END_OF_HEAD in received:
        return COMPLETE
    return first_part_verdict(received)


HEADS = [
    pixel_head(300),
    b"GET /p.gif HTTP/1.1\r\nHost: t\r\nX: a\nb\r\n\r\n",  # a bare LF: aiohttp's to refuse
    b"GET /p.gif HTTP/1.1\r\nHost: t\r\nX: a\x00b\r\n\r\n",  # a NUL
    b"GET /p.gig HTTP/1.1\r\nHost: t\r\n\r\n",  # not a pixel, found out at its 10th byte
    b"GET /p.gif?x=" + b"a" * SPLIT_HEAD_MAX_BYTES + b" HTTP/1.1\r\n\r\n",  # too long to wait
    b"GET /p.gif HTTP/1.1\r\nHost: t\r\r\n\r\n",  # CR CR LF: the blank line still ends it
]


@hypothesis_settings(max_examples=300, deadline=None)
@given(st.sampled_from(HEADS), st.lists(st.integers(1, 400), min_size=1, max_size=60))
def test_reads_cut_anywhere_reach_the_verdict_the_whole_head_gets(
    head: bytes, sizes: list[int]
) -> None:
    cuts, at = [], 1
    for size in sizes:  # the first read is one byte, the rest as drawn, then the remainder
        cuts.append(at)
        at += size
    parts = [head[a:b] for a, b in zip([0, *cuts], [*cuts, len(head)], strict=True) if a < b]
    if reference(parts[0]) != WAITING:
        return  # the first read alone decides: no split head is kept
    split = SplitHead(parts[0])
    received = parts[0]
    for part in parts[1:]:
        received += part
        verdict = split.add(part)
        assert verdict == reference(received)
        if verdict != WAITING:
            assert split.join() == received
            return


async def test_the_fast_path_joins_a_trickled_head_once(
    settings: Settings, metrics: CollectorMetrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    kept: list[SplitHead] = []

    class Recorded(SplitHead):
        __slots__ = ()

        def __init__(self, first: bytes) -> None:
            super().__init__(first)
            kept.append(self)

    monkeypatch.setattr(fastpath, "SplitHead", Recorded)
    collector_ = create_app(settings, MemorySink(), metrics)[COLLECTOR]
    paths = FastPaths(collector_, metrics, 60.0, head_timeout_s=60.0)
    connection = PixelFastPath(paths, asyncio.Protocol)
    transport = Transport()
    connection.connection_made(transport)  # type: ignore[arg-type]
    head = pixel_head(8192)
    for i in range(len(head)):
        connection.data_received(head[i : i + 1])
    await asyncio.sleep(0)  # the answer is sent at the end of the loop iteration
    connection.connection_lost(None)
    assert transport.written.startswith(b"HTTP/1.1 200 OK\r\n")
    assert transport.written.endswith(GIF_BYTES)
    [split] = kept
    assert split.joined_bytes == len(head) and split.scanned_bytes <= 4 * len(head)
    recorded = metric_value(metrics, "beacon_requests_total", endpoint="pixel", outcome="recorded")
    assert recorded == 1


async def test_a_real_server_answers_a_head_sent_one_byte_at_a_time(tmp_path) -> None:
    head = pixel_head(2048)
    with collector(tmp_path, {"BEACON_SECRET": "visitor-secret-0123456789abcdef"}) as (_, base):
        before = scrape(base)
        reader, writer = await asyncio.open_connection("127.0.0.1", int(base.rsplit(":", 1)[1]))
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # one segment per byte
        for i in range(len(head)):
            writer.write(head[i : i + 1])
            await writer.drain()
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        body = await asyncio.wait_for(reader.readexactly(len(GIF_BYTES)), 30)
        writer.close()
        after = scrape(base)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and body == GIF_BYTES
    assert b"Server:" not in answer  # answered by the fast path, not handed to aiohttp
    for reason in ("other_request", "split_head"):  # scrapes are handed over as `probe`
        handoffs = f'beacon_fast_path_handoffs_total{{reason="{reason}"}}'
        assert total(after, handoffs) == total(before, handoffs)
    recorded = 'beacon_requests_total{endpoint="pixel",outcome="recorded"}'
    assert total(after, recorded) == total(before, recorded) + 1
