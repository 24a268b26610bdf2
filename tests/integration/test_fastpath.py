"""The pixel fast path (collector/fastpath.py) in real `beacon serve` processes: it records and
answers exactly what aiohttp's route would, hands everything else to aiohttp, closes idle and
stopping connections, and stays out of the way when it is off."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from collector.pixel import GIF_BYTES
from loadtest.fuzz import collector, scrape, send_raw, total
from tests.support.fastpath_corpus import CORPUS, UA, pixel
from tests.support.helpers import free_port
from tests.support.raw_http import Answer, names, one_connection, port_of, read_answer, spooled

ENV = {"BEACON_SECRET": "visitor-secret-0123456789abcdef"}  # same visitor ids in every process
OTHER = 'beacon_fast_path_handoffs_total{reason="other_request"}'
SPLIT = 'beacon_fast_path_handoffs_total{reason="split_head"}'
PROBE = 'beacon_fast_path_handoffs_total{reason="probe"}'
REFUSED = "beacon_bad_requests_total"


def handoffs(base: str, before: dict[str, float]) -> tuple[float, float]:
    """(other_request, split_head) handoffs since `before`; scrapes count as `probe`."""
    now = scrape(base)
    return now.get(OTHER, 0) - before.get(OTHER, 0), now.get(SPLIT, 0) - before.get(SPLIT, 0)


Run = tuple[list[Answer], tuple[float, float], list[dict[str, Any]]]


async def both_paths(tmp_path: Path, env: dict[str, str], requests: list[bytes]) -> list[Run]:
    """`requests` over one connection to a collector with the fast path and to one without:
    for each, the answers, the handoffs and the events it stored."""
    runs = []
    for name, extra in (("fast", {}), ("aiohttp", {"BEACON_PIXEL_FAST_PATH": "0"})):
        directory = tmp_path / name
        directory.mkdir()
        with collector(directory, {**env, **extra}) as (_, base):
            before = scrape(base)
            answers = await one_connection(port_of(base), requests)
            moved = handoffs(base, before)
        runs.append((answers, moved, spooled(directory)))
    (fast, fast_handoffs, _), (slow, slow_handoffs, _) = runs
    # Otherwise a comparison would be aiohttp's against itself.
    assert all("server" not in names(a) for a in fast)
    assert all("server" in names(a) for a in slow)
    assert fast_handoffs == slow_handoffs == (0, 0)  # none on these connections
    return runs


def comparable(answer: Answer) -> tuple[int, list[tuple[str, str]], bytes]:
    skip = {"date", "server"}
    return answer[0], [h for h in answer[1] if h[0].lower() not in skip], answer[2]


async def test_fast_answers_and_events_equal_aiohttps(tmp_path: Path) -> None:
    (fast, _, fast_events), (slow, _, slow_events) = await both_paths(tmp_path, ENV, CORPUS)
    for f, s in zip(fast, slow, strict=True):
        assert f[0] == s[0] == 200 and f[2] == s[2] == GIF_BYTES
        assert comparable(f) == comparable(s)
    made = ("event_id", "received_at")  # differ between any two processes
    events = [
        [{k: v for k, v in e.items() if k not in made} for e in x]
        for x in (fast_events, slow_events)
    ]
    assert len(events[0]) > 20  # most of the corpus is recorded: the comparison means something
    assert events[0] == events[1]


# Known to iporigin (tests/unit/test_networks.py asserts what `iporigin.classify` says).
AWS = "52.95.110.1"  # hosting: Amazon AWS
GOOGLEBOT = "66.249.66.1"  # bot: Googlebot
HOME = "81.2.69.142"  # unknown: a residential ISP's
# (site, the request's extra header lines, the `network` and `purpose` it must be recorded with)
FLAGGED = [
    ("aws", [b"X-Forwarded-For: " + AWS.encode()], "data_center", None),
    ("crawler", [b"X-Forwarded-For: 8.8.8.8, " + GOOGLEBOT.encode()], "crawler", None),
    ("home", [b"X-Forwarded-For: " + HOME.encode()], None, None),
    ("mapped", [b"X-Forwarded-For: ::ffff:" + AWS.encode()], "data_center", None),
    ("prefetch", [b"Sec-Purpose: prefetch"], None, "prefetch"),
    ("prerender", [b"Sec-Purpose: prefetch;prerender"], None, "prerender"),
    ("preview", [b"X-Purpose: preview"], None, "preview"),
    ("firefox", [b"X-Moz: prefetch"], None, "prefetch"),
    (
        "both",
        [b"X-Forwarded-For: " + AWS.encode(), b"Purpose: prefetch"],
        "data_center",
        "prefetch",
    ),
]
FORWARDED = {**ENV, "BEACON_FORWARDED_HEADER": "X-Forwarded-For"}


async def test_network_and_purpose_are_recorded_alike_on_both_paths(tmp_path: Path) -> None:
    """The whole forwarded address is classified (the client's own claim left of the proxy's
    is ignored) while the stored one is truncated; speculative pixels are recorded with their
    purpose."""
    requests = [pixel(f"s={site}", UA, *lines) for site, lines, _, _ in FLAGGED]
    runs = await both_paths(tmp_path, FORWARDED, requests)
    for answers, _, events in runs:
        assert [a[2] for a in answers] == [GIF_BYTES] * len(FLAGGED)
        assert [(e["site"], e.get("network"), e.get("purpose")) for e in events] == [
            (site, network, purpose) for site, _, network, purpose in FLAGGED
        ]
        ips = {e["site"]: e["ip"] for e in events}
        # Stored truncated (an IPv4-mapped address as its IPv4 one), classified whole.
        assert (ips["aws"], ips["crawler"], ips["mapped"]) == (
            "52.95.110.0", "66.249.66.0", "52.95.110.0"
        )  # fmt: skip


async def test_head_records_nothing_and_off_flags_no_network(tmp_path: Path) -> None:
    head = b"HEAD /p.gif?s=head HTTP/1.1\r\nHost: beacon.test\r\nSec-Purpose: prefetch\r\n\r\n"
    with collector(tmp_path, {**FORWARDED, "BEACON_NETWORK_DB": "off"}) as (_, base):
        before = scrape(base)
        [answer] = await one_connection(
            port_of(base), [pixel("s=off", UA, b"X-Forwarded-For: " + AWS.encode())]
        )
        head_answers, _ = await send_raw(port_of(base), head)
        after = scrape(base)
    assert answer[0] == 200 and [a[0] for a in head_answers] == [200]
    [event] = spooled(tmp_path)
    assert (event["site"], event["ip"], "network" in event) == ("off", "52.95.110.0", False)
    head_sample = 'beacon_requests_total{endpoint="pixel",outcome="head"}'
    assert after[head_sample] - before.get(head_sample, 0) == 1
    flagged = 'beacon_events_flagged_total{flag="data_center"}'
    assert after[flagged] == before[flagged] == 0


COOKIE = "beacon_vid"
COOKIE_CORPUS = [
    pixel("s=new&consent=1&r=a", UA),  # consented, no cookie: one is set
    pixel("s=known&consent=1&r=b", UA, f"Cookie: {COOKIE}=12345".encode()),
    pixel("s=quoted&consent=1&r=c", UA, f'Cookie: x=1; {COOKIE}="777"; y=2'.encode()),
    pixel("s=forged&consent=1&r=d", UA, f"Cookie: {COOKIE}=x1".encode()),  # noted, replaced
    pixel("s=huge&consent=1&r=e", UA, f"Cookie: {COOKIE}=18446744073709551616".encode()),
    pixel("s=twice&consent=1&r=f", UA, f"Cookie: {COOKIE}=5; {COOKIE}=6".encode()),
    pixel("s=odd-names&consent=1&r=g", UA, f"Cookie: we{{ird}}=1; {COOKIE}=77".encode()),
    pixel("s=no-consent&r=h", UA, f"Cookie: {COOKIE}=999".encode()),  # the daily hash
    pixel("s=refused&consent=0&r=i", UA, f"Cookie: {COOKIE}=999".encode()),
    pixel("s=dnt&consent=1&r=j", UA, b"DNT: 1"),
    pixel("s=refused-event&consent=1&e=no-such-type&r=k", UA),  # not stored: no cookie either
]


async def test_cookie_mode_fast_answers_and_events_equal_aiohttps(tmp_path: Path) -> None:
    env = {**ENV, "BEACON_VISITOR_COOKIE": "1"}
    runs = await both_paths(tmp_path, env, COOKIE_CORPUS)
    new_id = re.compile(rf"^{COOKIE}=(\d+);")
    seen = []
    for answers, _, events in runs:
        # New ids are random: each answer's own, and the event it belongs to carries it.
        issued = {
            int(m.group(1))
            for _, headers, _ in answers
            for name, value in headers
            if name == "Set-Cookie" and (m := new_id.match(value))
        }
        # New, forged and huge; with DNT there is no visitor id, for a refused event no cookie.
        assert len(issued) == 3
        masked = [
            {
                k: ("issued" if k == "visitor_id" and v in issued else v)
                for k, v in e.items()
                if k not in ("event_id", "received_at")
            }
            for e in events
        ]
        headers = [
            [(n, new_id.sub(f"{COOKIE}=N;", v)) for n, v in comparable(a)[1]] for a in answers
        ]
        seen.append((headers, masked))
    assert seen[0] == seen[1]
    by_recipient = {e["recipient"]: e["visitor_id"] for e in seen[0][1]}
    assert by_recipient["b"] == 12345 and by_recipient["c"] == 777 and by_recipient["g"] == 77
    assert by_recipient["a"] == by_recipient["d"] == "issued"


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
        assert handoffs(base, before) == (1, 0)  # the POST's
        assert scrape(base)[PROBE] - before[PROBE] == 2  # that scrape and this one
        before = scrape(base)
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(base))
        writer.write(split[:30])
        await asyncio.sleep(0.2)  # the halves arrive as two reads
        writer.write(split[30:])
        rejoined = await read_answer(reader)
        writer.close()
        assert handoffs(base, before) == (0, 0)
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
        assert handoffs(base, before) == (0, 1)  # the stalled head
        timed_out = 'beacon_connections_timed_out_total{phase="header"}'
        assert scrape(base).get(timed_out, 0) - before.get(timed_out, 0) == 1
    assert spooled(tmp_path) == []


@pytest.mark.parametrize(
    "junk",
    [b"\x16\x03\x01\x00\xffjunk\r\n\r\n", pixel("s=nul", b"X: a\x00b")],
    ids=["bytes", "pixel-with-nul"],
)
@pytest.mark.parametrize("durability", ["memory", "wal"])
async def test_a_pixel_and_junk_in_one_write_get_two_answers(
    tmp_path: Path, junk: bytes, durability: str
) -> None:
    """HTTP/1.1 pipelining: the fast path answers the pixel, and aiohttp refuses what follows
    (aiohttp alone refuses the whole read, the pixel with it). With the write-ahead log the
    pixel's answer waits for the log's write, and still comes first."""
    with collector(tmp_path, {**ENV, "BEACON_DURABILITY": durability}) as (_, base):
        before = scrape(base)
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(base))
        writer.write(pixel("s=piped&r=first", UA) + junk)
        first, second = await read_answer(reader), await read_answer(reader)
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed after the 400
        writer.close()
        assert total(scrape(base), REFUSED) - total(before, REFUSED) == 1
    assert (first[0], first[2]) == (200, GIF_BYTES) and "server" not in names(first)
    assert second[0] == 400 and "server" in names(second)
    assert [(e["site"], e["recipient"]) for e in spooled(tmp_path)] == [("piped", "first")]


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
    answers, _ = await send_raw(served, raw)
    answer, headers = answers[0]
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
    # Long next to one pixel on loopback: a pixel sent after the signal lands however loaded
    # the machine (the first connection keeps sending through all of it).
    env["BEACON_DRAIN_MS"] = "1000"
    serve = [sys.executable, "-m", "beacon", "serve", "--workers", "1"]
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
    print(f"{len(answered) - 20} pixels answered after the signal")
    assert len(answered) > 20, "no pixel answered after the signal"
    assert sorted(e["recipient"] for e in spooled(tmp_path)) == sorted(answered)


async def test_off_every_pixel_is_aiohttps(tmp_path: Path) -> None:
    with collector(tmp_path, {**ENV, "BEACON_PIXEL_FAST_PATH": "0"}) as (_, base):
        before = scrape(base)
        answers = await one_connection(port_of(base), [pixel("s=off", UA)] * 3)
        assert handoffs(base, before) == (0, 0)
    assert all(a[0] == 200 and "server" in names(a) for a in answers)


async def test_the_rate_limit_applies_on_the_fast_path(tmp_path: Path) -> None:
    """Over the limit a pixel still gets its GIF, from the fast path, and nothing is
    recorded; the buckets are the middleware's, so a client is limited the same on both paths."""
    env = {**ENV, "BEACON_RATE_LIMIT_PER_S": "0.01", "BEACON_RATE_LIMIT_BURST": "3"}
    with collector(tmp_path, env) as (_, base):
        before = scrape(base)
        answers = await one_connection(port_of(base), [pixel(f"s=rl&r=r{i}", UA) for i in range(5)])
        # Then aiohttp (the connection handed over by a POST) finds the same empty bucket.
        post = b"POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}"
        [refused] = await one_connection(port_of(base), [post])
        after = scrape(base)
        assert handoffs(base, before) == (1, 0)
    assert [a[0] for a in answers] == [200] * 5
    assert all(a[2] == GIF_BYTES and "server" not in names(a) for a in answers)  # fast answers
    assert refused[0] == 429
    assert [e["recipient"] for e in spooled(tmp_path)] == ["r0", "r1", "r2"]

    def delta(sample: str) -> float:
        return after.get(sample, 0) - before.get(sample, 0)

    assert delta('beacon_rate_limited_total{endpoint="pixel"}') == 2
    assert delta('beacon_requests_total{endpoint="pixel",outcome="rate_limited"}') == 2
    assert delta('beacon_rate_limited_total{endpoint="events"}') == 1
    # Every answer timed, the limited ones too, on both paths (tests/unit/test_ratelimit.py).
    assert delta('beacon_hot_path_seconds_count{endpoint="pixel"}') == 5
    assert delta('beacon_requests_total{endpoint="events",outcome="429"}') == 1
    assert delta('beacon_hot_path_seconds_count{endpoint="events"}') == 1


async def test_with_the_log_a_read_of_pixels_is_one_write_answered_after_it(tmp_path: Path) -> None:
    """BEACON_DURABILITY=wal: the pixels of one read (here pipelined in one write) go into the
    log in one write, and each is answered, in order, once that write is on disk."""
    env = {**ENV, "BEACON_DURABILITY": "wal", "BEACON_SPOOL_SEGMENT_MAX_AGE_MS": "3600000",
           "BEACON_SPOOL_SEGMENT_IDLE_MS": "3600000"}  # fmt: skip
    with collector(tmp_path, env) as (_, base):
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(base))
        writer.write(b"".join(pixel(f"s=group&r=r{i}", UA) for i in range(10)))
        answers = [await read_answer(reader) for _ in range(10)]
        # Answered after the write: the open segment already holds all ten, in order.
        [segment] = (tmp_path / "spool").glob("*.open")
        lines = segment.read_bytes().splitlines()
        writer.close()
        samples = scrape(base)
    assert [(a[0], a[2]) for a in answers] == [(200, GIF_BYTES)] * 10
    assert [orjson.loads(line)["recipient"] for line in lines] == [f"r{i}" for i in range(10)]
    assert samples["beacon_wal_events_total{}"] == 10
    assert samples["beacon_wal_writes_total{}"] < 10  # one, unless the read came in parts
    assert samples['beacon_requests_total{endpoint="pixel",outcome="recorded"}'] == 10
