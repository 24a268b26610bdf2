"""The per-worker connection cap (collector/conncap.py): idle sockets cannot exhaust the file
descriptors or keep health probes out. At the cap an idle connection makes room for a new one,
oldest first; a new one is refused at once only when every connection is in a request; each is
counted, and the log says so once per interval, not once per connection."""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web

from collector import conncap
from collector.app import COLLECTOR, create_app
from collector.conncap import ConnectionCap, default_max_connections
from collector.fastpath import fast_paths
from collector.limits import GuardedSite, handler_options
from collector.metrics import CollectorMetrics
from collector.settings import Settings
from collector.sinks.memory import MemorySink
from loadtest.fuzz import collector, scrape
from tests.support.helpers import metric_value

CAP = 8
EXCESS = 20
CLOSED_IDLE = 'beacon_connections_capped_total{action="closed_idle"}'
REFUSED = 'beacon_connections_capped_total{action="refused"}'
WARNING = "connection cap of"
PARTIAL_PIXEL = b"GET /p.gif?e=open&s=cap HTTP/1.1\r\nHost: t\r\n"  # no blank line yet
Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def until(condition: Callable[[], bool], what: str, timeout_s: float = 20) -> None:
    """Wait for `condition`, up to a generous deadline."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.01)


async def answer(reader: asyncio.StreamReader) -> int:
    """The status of the next whole response on `reader`."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    await asyncio.wait_for(reader.readexactly(length), 10)
    return int(head.split(b" ")[1])


def get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=10) as response:
        return int(response.status)


@pytest.mark.parametrize("fast_path", ["1", "0"], ids=["fast_path", "aiohttp_only"])
async def test_idle_sockets_over_the_cap_are_closed_counted_and_health_still_answers(
    tmp_path: Path, fast_path: str
) -> None:
    env = {
        "BEACON_MAX_CONNECTIONS": str(CAP),
        "BEACON_PIXEL_FAST_PATH": fast_path,
        "BEACON_SECRET": "visitor-secret-0123456789abcdef",
    }
    with collector(tmp_path, env) as (_, base):
        idle: list[Streams] = []
        try:
            made_room = await overfill(base, idle)
        finally:
            for _, writer in idle:
                writer.close()
        log = (tmp_path / "collector.log").read_text()
    # Said at once, then at most once a minute with the counts: not once per connection.
    warnings = [line for line in log.splitlines() if WARNING in line]
    assert 1 <= len(warnings) <= 2 < made_room
    assert f"{WARNING} {CAP} reached (BEACON_MAX_CONNECTIONS)" in warnings[0]


async def overfill(base: str, idle: list[Streams]) -> int:
    """Opens CAP + EXCESS idle sockets into `idle`, checks the oldest made room, for probes
    too; returns how many were closed to make room."""
    port = int(base.rsplit(":", 1)[1])
    for _ in range(CAP + EXCESS):  # one after the other: the server admits them in order
        idle.append(await asyncio.open_connection("127.0.0.1", port))
    ends = [asyncio.ensure_future(reader.read()) for reader, _ in idle]  # b"" at close

    def closed() -> list[bool]:
        return [end.done() for end in ends]

    try:
        # The oldest idle ones made room for the newest, at once.
        await until(lambda: sum(closed()) == EXCESS, "excess idle sockets never closed")
        assert closed() == [True] * EXCESS + [False] * CAP
        assert all(end.result() == b"" for end in ends[:EXCESS])

        # A health probe on a new connection takes the next idle one's place.
        assert await asyncio.to_thread(get, base + "/healthz") == 200
        assert await asyncio.to_thread(get, base + "/readyz") == 200
        samples = await asyncio.to_thread(scrape, base)
        # Each new connection at the cap closed one of these sockets: the probes' own are
        # newer and busy or just used, so never chosen first.
        made_room = int(samples[CLOSED_IDLE])
        assert EXCESS + 1 <= made_room <= EXCESS + 3
        await until(lambda: sum(closed()) == made_room, "the probes found no room")
        assert closed() == [True] * made_room + [False] * (CAP + EXCESS - made_room)
        assert samples.get(REFUSED, 0) == 0
        assert samples["beacon_connections_max{}"] == CAP
        assert samples["beacon_connections_open{}"] <= CAP
    finally:
        for end in ends:
            end.cancel()
        await asyncio.gather(*ends, return_exceptions=True)

    # The newest idle socket is still served.
    reader, writer = idle[-1]
    writer.write(b"GET /p.gif?e=open&s=cap HTTP/1.1\r\nHost: t\r\n\r\n")
    assert await answer(reader) == 200
    return made_room


Started = Callable[..., Awaitable[tuple[int, ConnectionCap]]]


@pytest.fixture
async def capped_site(settings: Settings, metrics: CollectorMetrics) -> AsyncIterator[Started]:
    """`await capped_site(max_connections, fast_path)`: (port, cap) of a collector on loopback
    with the site `beacon serve` runs, in this process so the test can see each connection."""
    runners: list[web.AppRunner] = []

    async def start(max_connections: int, fast_path: bool) -> tuple[int, ConnectionCap]:
        config = replace(settings, pixel_fast_path=fast_path, header_timeout_ms=60_000)
        app = create_app(config, MemorySink(), metrics)
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, **handler_options(config, metrics)
        )
        await runner.setup()
        runners.append(runner)
        cap = ConnectionCap(max_connections, metrics)
        site = GuardedSite(
            runner,
            "127.0.0.1",
            0,
            header_timeout_s=60.0,
            metrics=metrics,
            fast_paths=fast_paths(config, app[COLLECTOR], metrics, cap),
            cap=cap,
        )
        await site.start()
        return site.port, cap

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast_path", "aiohttp_only"])
async def test_a_new_connection_is_refused_at_once_when_every_one_is_in_a_request(
    capped_site: Started,
    metrics: CollectorMetrics,
    fast_path: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="beacon.collector")
    port, cap = await capped_site(2, fast_path)
    busy = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
    for _, writer in busy:
        writer.write(PARTIAL_PIXEL)  # a head in progress: not idle
    await until(
        lambda: len(cap.open) == 2 and not any(c.idle() for c in cap.open),
        "the heads never arrived",
    )

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed without a byte read
    writer.close()
    assert metric_value(metrics, "beacon_connections_capped_total", action="refused") == 1
    assert len(cap.open) == 2

    # The first head completes: that connection is idle now, and makes room for a probe.
    first_reader, first_writer = busy[0]
    first_writer.write(b"\r\n")
    assert await answer(first_reader) == 200
    await until(lambda: sum(c.idle() for c in cap.open) == 1, "the answered one is not idle")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
    assert await answer(reader) == 200
    assert await asyncio.wait_for(first_reader.read(), 10) == b""  # it made room
    assert metric_value(metrics, "beacon_connections_capped_total", action="closed_idle") == 1

    # The other head was in progress all along: it was left alone and is answered.
    second_reader, second_writer = busy[1]
    second_writer.write(b"\r\n")
    assert await answer(second_reader) == 200
    for _, w in [*busy, (reader, writer)]:
        w.close()
    # Two cap events, one line: the next one comes after WARN_INTERVAL_S at the earliest.
    lines = [r.getMessage() for r in caplog.records if WARNING in r.getMessage()]
    assert lines == [
        f"{WARNING} 2 reached (BEACON_MAX_CONNECTIONS): closed 0 idle connection(s) to make"
        " room, refused 1 new one(s); next report in 60 s at the earliest"
    ]


@pytest.mark.parametrize(("soft", "cap"), [(1024, 896), (65536, 65408), (200, 100)])
def test_the_default_cap_leaves_descriptors_for_the_rest(
    monkeypatch: pytest.MonkeyPatch, soft: int, cap: int
) -> None:
    monkeypatch.setattr(conncap.resource, "getrlimit", lambda _: (soft, soft * 4))
    assert default_max_connections() == cap
    assert Settings().max_connections == 0  # 0: this default, in every worker
