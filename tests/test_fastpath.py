"""The pixel fast path (collector/fastpath.py) in real `beacon serve` processes: it records and
answers exactly what aiohttp's route would, hands everything else to aiohttp, closes idle and
stopping connections, and stays out of the way when it is off."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_parser import HttpRequestParser

from collector.app import COLLECTOR, create_app
from collector.fastpath import FastPaths, PixelFastPath, PixelRequest, parse_head
from collector.metrics import CollectorMetrics
from collector.pixel import GIF_BYTES
from collector.settings import Settings
from collector.sinks.memory import MemorySink
from collector.sinks.spool import closed_segments
from loadtest.fuzz import collector, scrape, send_raw
from tests.helpers import free_port, metric_value

pytestmark = pytest.mark.slow

ENV = {"BEACON_SECRET": "visitor-secret-0123456789abcdef"}  # same visitor ids in every process
OTHER = 'beacon_fast_path_handoffs_total{reason="other_request"}'
SPLIT = 'beacon_fast_path_handoffs_total{reason="split_head"}'
UA = b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"
Answer = tuple[int, list[tuple[str, str]], bytes]


def pixel(query: str, *fields: bytes) -> bytes:
    target = f"/p.gif?{query}" if query else "/p.gif"
    return b"\r\n".join([f"GET {target} HTTP/1.1".encode(), b"Host: beacon.test", *fields]) + (
        b"\r\n\r\n"
    )


PAGE = "https%3A%2F%2Fshop.test%2Fitem%3Futm_source%3Dnews%26utm_medium%3Demail%26id%3D7%26x%3D"
CORPUS = [
    pixel("e=open&s=news&c=spring&m=m1&r=alice", b"User-Agent: Mozilla/5.0 (GoogleImageProxy)"),
    pixel(f"s=shop&u={PAGE}&ref=https%3A%2F%2Fsearch.test%2F%3Fq%3Dshoes", UA),
    pixel("s=a%2Bb&c=x%2By&r=%2B", UA),
    pixel("s=bad%zz&c=%&m=%e9%28&r=%C3%A9", UA),
    pixel("s=plus&c=spring+sale&p.note=a+b+c", UA),
    pixel("s=blank&c=&m=&r=", UA),
    pixel("s=one&s=two&c=a&c=b&p.k=1&p.k=2", UA),
    pixel("e=custom&s=props&p.plan=pro&p.n=3&p.=empty&p.long=" + "v" * 600, UA),
    pixel("s=long&u=https%3A%2F%2Flong.test%2F" + "a" * 3000, UA),
    pixel("s=ua", b"User-Agent: Bot\xff\xfe/1.0"),
    pixel("s=referer", UA, b"Referer: https://r.test/\xff\xfe?utm_source=x&q=1"),
    pixel("s=dnt", UA, b"DNT: 1"),
    pixel("s=gpc", UA, b"Sec-GPC: 1"),
    pixel("s=prefetch", UA, b"Sec-Purpose: prefetch"),
    pixel("s=purpose", UA, b"Purpose: prefetch"),
    pixel("s=case", b"user-AGENT: Odd/1.0", b"rEFERER: https://case.test/a?utm_campaign=c"),
    pixel("s=spaces", b"User-Agent: \t  Spaced UA/2  \t", b"Referer:https://tight.test/"),
    pixel("s=keepalive", UA, b"Connection: keep-alive"),
    pixel("e=nonsense&s=unknown", UA),
    pixel("s=granted&consent=1", UA),
    pixel("s=denied&consent=0", UA),
    pixel("s=odd-consent&consent=maybe", UA),
    pixel("e=conversion&s=shop&v=12.50&cur=eur&o=A1&bcid=not-a-uuid", UA),
    pixel("e=conversion&s=shop&v=abc", UA),
    pixel("", UA),
    pixel("e=engagement&s=eng&p.depth=75&u=https://eng.test/%C3%A9t%C3%A9", UA),
    pixel("e=click&s=ads&ad=ad1;x=1&r=semi", UA),
    pixel("s=" + "x" * 300, UA),
    pixel("s=headers", UA, b"Accept: image/*", b"X-Forwarded-For: 203.0.113.9", b"X-Empty:"),
    pixel("s=chars&p.q=a|b{c}\"d<e>\\^`'!$*", UA),
]


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    """One whole response: status, header lines in order, body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head[:-4].decode("latin-1").split("\r\n")
    headers = [(name, value) for name, _, value in (line.partition(": ") for line in lines[1:])]
    length = next((int(v) for k, v in headers if k.lower() == "content-length"), 0)
    return int(lines[0].split()[1]), headers, await reader.readexactly(length)


async def one_connection(port: int, requests: list[bytes]) -> list[Answer]:
    """Each request written and answered in turn over one keep-alive connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answers = []
    for raw in requests:
        writer.write(raw)
        answers.append(await read_answer(reader))
    writer.close()
    return answers


def names(answer: Answer) -> set[str]:
    return {name.lower() for name, _ in answer[1]}


def spooled(data_dir: Path) -> list[dict[str, Any]]:
    """Every event the process left (read after it exited), in order."""
    lines = [x for p in closed_segments(data_dir / "spool") for x in p.read_bytes().splitlines()]
    return [orjson.loads(line) for line in lines]


def handoffs(base: str, before: dict[str, float]) -> tuple[float, float]:
    """(other_request, split_head) handoffs since `before`, this scrape's own request included."""
    now = scrape(base)
    return now.get(OTHER, 0) - before.get(OTHER, 0), now.get(SPLIT, 0) - before.get(SPLIT, 0)


def port_of(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


async def test_fast_answers_and_events_equal_aiohttps(tmp_path: Path) -> None:
    results = []
    for name, env in (("fast", ENV), ("aiohttp", {**ENV, "BEACON_PIXEL_FAST_PATH": "0"})):
        (tmp_path / name).mkdir()
        with collector(tmp_path / name, env) as (_, base):
            before = scrape(base)
            answers = await one_connection(port_of(base), CORPUS)
            results.append((answers, handoffs(base, before)))
    (fast, fast_handoffs), (slow, slow_handoffs) = results
    # Otherwise the comparison below would be aiohttp's against itself.
    assert all("server" not in names(a) for a in fast)
    assert all("server" in names(a) for a in slow)
    assert fast_handoffs == (1, 0)  # the scrape's own request: none on the corpus' connection
    assert slow_handoffs == (0, 0)
    skip = {"date", "server"}
    for f, s in zip(fast, slow, strict=True):
        assert f[0] == s[0] == 200 and f[2] == s[2]
        assert [h for h in f[1] if h[0].lower() not in skip] == [
            h for h in s[1] if h[0].lower() not in skip
        ]
    made = ("event_id", "received_at")  # differ between any two processes
    events = [
        [{k: v for k, v in e.items() if k not in made} for e in spooled(tmp_path / name)]
        for name in ("fast", "aiohttp")
    ]
    assert len(events[0]) > 20  # most of the corpus is recorded: the comparison means something
    assert events[0] == events[1]


async def test_other_requests_go_to_aiohttp_and_split_heads_wait_for_their_rest(
    tmp_path: Path,
) -> None:
    post = b'{"e": "custom", "s": "handoff", "r": "posted"}'
    pipeline = [
        pixel("s=handoff&r=first", UA),
        b"POST /e HTTP/1.1\r\nHost: beacon.test\r\nContent-Type: application/json\r\n"
        + b"Content-Length: %d\r\n\r\n" % len(post)
        + post,
        pixel("s=handoff&r=after", UA),
    ]
    split = pixel("s=handoff&r=split", UA)
    with collector(tmp_path, ENV) as (_, base):
        before = scrape(base)
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(base))
        writer.write(b"".join(pipeline))  # one write: the fast path meets all three at once
        first, posted, after = [await read_answer(reader) for _ in range(3)]
        writer.close()
        assert handoffs(base, before) == (2, 0)  # the POST's, and this scrape's own
        before = scrape(base)
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(base))
        writer.write(split[:30])
        await asyncio.sleep(0.2)  # the halves arrive as two reads
        writer.write(split[30:])
        rejoined = await read_answer(reader)
        writer.close()
        assert handoffs(base, before) == (1, 0)  # this scrape's own
    assert (first[0], first[2]) == (200, after[2]) and "server" not in names(first)
    assert posted[0] == 204 and "server" in names(posted)
    assert after[0] == 200 and "server" in names(after)
    assert rejoined[0] == 200 and "server" not in names(rejoined)
    recorded = [(e["recipient"], e["transport"]) for e in spooled(tmp_path)]
    assert recorded == [
        ("first", "pixel"), ("posted", "beacon"), ("after", "pixel"), ("split", "pixel")
    ]  # fmt: skip


async def test_a_split_head_whose_rest_never_comes_meets_aiohttps_deadline(
    tmp_path: Path,
) -> None:
    env = {**ENV, "BEACON_HEADER_TIMEOUT_MS": "300"}
    with collector(tmp_path, env) as (_, base):
        before = scrape(base)
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(base))
        writer.write(pixel("s=stalled", UA)[:40])  # and nothing more
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed, no answer
        writer.close()
        assert handoffs(base, before) == (1, 1)  # this scrape's own, and the stalled head
        timed_out = 'beacon_connections_timed_out_total{phase="header"}'
        assert scrape(base).get(timed_out, 0) - before.get(timed_out, 0) == 1
    assert spooled(tmp_path) == []


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """Port of one default collector with a short keep-alive timeout, shared below."""
    env = {**ENV, "BEACON_KEEPALIVE_TIMEOUT_MS": "300"}
    with collector(tmp_path_factory.mktemp("fastpath"), env) as (_, base):
        yield port_of(base)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET /p.gif?s=old HTTP/1.0\r\nHost: beacon.test\r\n\r\n", 200),
        (b"HEAD /p.gif?s=head HTTP/1.1\r\nHost: beacon.test\r\n\r\n", 200),
        (pixel("s=close", b"Connection: close"), 200),
        (pixel("s=twice", b"Host: other.test"), 400),
        (pixel("s=chunked", b"Transfer-Encoding: chunked") + b"0\r\n\r\n", 200),
    ],
    ids=["http10", "head", "close", "duplicate-host", "chunked"],
)
async def test_requests_the_fast_path_refuses_get_aiohttps_answer(
    served: int, raw: bytes, status: int
) -> None:
    answer, headers, _ = await send_raw(served, raw)
    assert answer == status and "server" in {name.lower() for name, _ in headers}


async def test_an_idle_fast_connection_is_closed(served: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", served)
    writer.write(pixel("s=idle", UA))
    answer = await read_answer(reader)
    assert answer[0] == 200 and "server" not in names(answer)  # the fast path's own timer
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()


async def until_closed(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: str
) -> set[str]:
    """Pixels sent one after another on a connection until it closes; those answered."""
    answered = set()
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        for n in range(100_000):
            writer.write(pixel(f"s=stop&r={name}-{n}", UA))
            if (await read_answer(reader))[0] == 200:
                answered.add(f"{name}-{n}")
    writer.close()
    return answered


async def test_sigterm_closes_fast_connections_and_keeps_their_events(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, **ENV, "BEACON_DATA_DIR": str(tmp_path), "BEACON_PORT": str(port)}
    env["BEACON_DRAIN_MS"] = "100"
    serve = [sys.executable, "-m", "collector", "serve", "--workers", "1"]
    proc = await asyncio.create_subprocess_exec(*serve, env=env)
    try:
        connections = []
        for _ in range(300):  # until it listens
            with contextlib.suppress(OSError):
                connections.append(await asyncio.open_connection("127.0.0.1", port))
                break
            await asyncio.sleep(0.05)
        connections += [await asyncio.open_connection("127.0.0.1", port) for _ in range(19)]
        answered = set()
        for i, (reader, writer) in enumerate(connections):
            writer.write(pixel(f"s=stop&r=r{i}", UA))
            answer = await read_answer(reader)
            assert answer[0] == 200 and "server" not in names(answer)
            answered.add(f"r{i}")
        proc.send_signal(signal.SIGTERM)
        # Pixels keep coming through the drain and the stop, until the server closes each
        # connection: whatever it answered must be in the spool, the last ones included.
        for i, stream in enumerate(connections):
            answered |= await until_closed(*stream, f"r{i}")
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert len(answered) > 20
    assert sorted(e["recipient"] for e in spooled(tmp_path)) == sorted(answered)


@pytest.mark.parametrize(
    "off",
    [
        {"BEACON_PIXEL_FAST_PATH": "0"},
        {"BEACON_VISITOR_COOKIE": "1"},
        {"BEACON_RATE_LIMIT_PER_S": "1000"},
    ],
    ids=["off", "visitor-cookie", "rate-limit"],
)
async def test_off_every_pixel_is_aiohttps(tmp_path: Path, off: dict[str, str]) -> None:
    with collector(tmp_path, {**ENV, **off}) as (_, base):
        before = scrape(base)
        answers = await one_connection(port_of(base), [pixel("s=off", UA)] * 3)
        assert handoffs(base, before) == (0, 0)
    assert all(a[0] == 200 and "server" in names(a) for a in answers)


def aiohttp_parse(head: bytes) -> tuple[list[tuple[str, str]], list[tuple[str, str]]] | str:
    """(headers with lowercased names, query pairs) as the server's parser reads `head`."""
    loop = asyncio.get_running_loop()
    parser = HttpRequestParser(
        BaseProtocol(loop),
        loop,
        2**16,
        max_line_size=8190,
        max_field_size=8190,
        max_headers=128,
    )
    try:
        message = parser.feed_data(head + b"\r\n\r\n")[0][0][0]
    except Exception as exc:
        return type(exc).__name__
    return [(k.lower(), v) for k, v in message.headers.items()], list(message.url.query.items())


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


class Transport:
    """The edge this test is not about: what the connection wrote."""

    def __init__(self) -> None:
        self.written = b""

    def get_extra_info(self, name: str) -> Any:
        return ("203.0.113.7", 40000) if name == "peername" else None

    def write(self, data: bytes) -> None:
        self.written += data


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
