"""The pixel fast path's parser and error path in-process: `parse_head` reads what aiohttp's
own parser reads and refuses what is not a plain pixel; a failing event still gets its GIF."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from collector import fastpath
from collector.app import COLLECTOR, create_app
from collector.fastpath import FastPaths, PixelFastPath, PixelRequest, parse_head
from collector.metrics import CollectorMetrics
from collector.pixel import GIF_BYTES
from collector.settings import Settings
from collector.sinks.memory import MemorySink
from tests.support.aiohttp_parser import aiohttp_parse
from tests.support.fastpath_corpus import CORPUS, UA, pixel
from tests.support.helpers import Transport, metric_value

HEAD = b"GET /p.gif?a=1 HTTP/1.1\r\nHost: x"
EDGES = [
    HEAD + b"".join(b"\r\nX-%d: 1" % i for i in range(127)),  # as many headers as aiohttp takes
    b"GET /p.gif?" + b"a" * 8169 + b" HTTP/1.1\r\nHost: x",  # a request line of 8189 bytes
    HEAD + b"\r\nX: " + b"v" * 8186,  # a header line of 8189 bytes
    HEAD + b"\r\nX:\t \t\r\nConnection:keep-alive",
    HEAD + b"\r\nConnection: Keep-Alive \t\r\nX: \x80\xc3\xa9 z",
    b'GET /p.gif?a="<>\\^`{|}&b=%2e%2E/.. HTTP/1.1\r\nHost:',
    b"GET /p.gif? HTTP/1.1\r\nHost: x",
    HEAD + b"\r\nUpgrade-Insecure-Requests: 1\r\nExpect-CT: x",  # not Upgrade, not Expect
]


@pytest.mark.parametrize("head", [r[:-4] for r in CORPUS] + EDGES)
async def test_parse_head_reads_what_aiohttp_reads(head: bytes) -> None:
    parsed = parse_head(head)
    assert isinstance(parsed, PixelRequest)
    # aiohttp's parser spells some header names its own way; headers are compared by value.
    mine = [(k.lower(), v) for k, v in parsed.headers.items()], list(parsed.query.items())
    assert mine == aiohttp_parse(head)


@pytest.mark.parametrize(
    "head",
    [
        b"GET /p.gifs HTTP/1.1\r\nHost: x",
        b"GET /p.gif?a=1#frag HTTP/1.1\r\nHost: x",
        b"GET /p.gif HTTP/1.0\r\nHost: x",
        b"get /p.gif HTTP/1.1\r\nHost: x",
        b"GET /p.gif HTTP/1.1\r\nHost: x\r\nhost: y",
        b"GET /p.gif HTTP/1.1\r\nUser-Agent: t",  # no Host: aiohttp answers 400
        b"GET /p.gif HTTP/1.1\r\nHost: x\r\nContent-Length: 0",
        b"GET /p.gif HTTP/1.1\r\nHost: x\r\nConnection: close",
        b"GET /p.gif HTTP/1.1\r\nHost: x\r\nX: a\x00b",
        b"GET /p.gif HTTP/1.1\r\nHost: x\r\nX: a\rb",
        b"GET /p.gif HTTP/1.1\r\nHost: x\r\nX : y",
        b"GET /p.gif HTTP/1.1\r\nHost: x\r\n folded",
        b"GET /p.gif?" + b"a" * 8200 + b" HTTP/1.1\r\nHost: x",
        HEAD + b"".join(b"\r\nX-%d: 1" % i for i in range(128)),
    ],
)
def test_parse_head_refuses_what_is_not_a_plain_pixel(head: bytes) -> None:
    assert parse_head(head) == "other_request"


async def test_a_failing_event_still_gets_its_pixel_and_is_counted(
    settings: Settings, metrics: CollectorMetrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    collector_ = create_app(settings, MemorySink(), metrics)[COLLECTOR]

    def broken(*_: Any) -> str:
        raise KeyError("a bug")

    monkeypatch.setattr(collector_, "pixel_outcome", broken)
    connection = PixelFastPath(FastPaths(collector_, metrics, 60.0), asyncio.Protocol)
    transport = Transport()
    connection.connection_made(transport)  # type: ignore[arg-type]
    connection.data_received(pixel("s=bug", UA) * 2)
    connection.connection_lost(None)
    assert transport.written.count(b"HTTP/1.1 200 OK\r\n") == 2
    assert transport.written.endswith(GIF_BYTES)
    errors = metric_value(metrics, "beacon_requests_total", endpoint="pixel", outcome="error")
    assert errors == 2


async def test_a_connection_made_after_close_all_is_closed_before_any_pixel(
    settings: Settings, metrics: CollectorMetrics
) -> None:
    # Accepted as the listener closed, its connection_made comes a loop turn after close_all:
    # its pixels would be answered after the buffer's last drain, their events lost.
    sink = MemorySink()
    paths = FastPaths(create_app(settings, sink, metrics)[COLLECTOR], metrics, 60.0)
    paths.close_all()
    transport = Transport()
    PixelFastPath(paths, asyncio.Protocol).connection_made(transport)  # type: ignore[arg-type]
    assert transport.closed
    assert not paths.open


async def test_under_load_answers_wait_for_the_end_of_the_loop_iteration(
    settings: Settings, metrics: CollectorMetrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read is answered at once, until reads come BUSY_READS a millisecond (here 2: a slow
    machine makes that many whatever happens): from then on each waits for the end of the
    loop iteration, until an iteration holds a single one."""
    monkeypatch.setattr(fastpath, "BUSY_READS", 2)
    paths = FastPaths(create_app(settings, MemorySink(), metrics)[COLLECTOR], metrics, 60.0)
    connection = PixelFastPath(paths, asyncio.Protocol)
    transport = Transport()
    connection.connection_made(transport)  # type: ignore[arg-type]
    answered = 0
    for read in range(1000):  # in a tight loop: many reads a millisecond, however slow
        connection.data_received(pixel(f"s=load&r=r{read}", UA))
        if transport.written.count(b"HTTP/1.1 200 OK") == answered:
            break  # held
        answered += 1
    assert answered >= 1  # the first read of all is answered at once
    assert paths.held and not connection.idle()  # a held answer keeps its connection busy
    await asyncio.sleep(0)  # the end of this loop iteration
    assert transport.written.count(b"HTTP/1.1 200 OK") == answered + 1
    assert not paths.holding and connection.idle()  # a single answer held: the load is gone
    connection.data_received(pixel("s=load&r=after", UA))
    assert transport.written.count(b"HTTP/1.1 200 OK") == answered + 2
    connection.connection_lost(None)
