"""Security controls of a real `beacon serve` process: slow clients, size limits, bodies the
parser or the decoder refuses, secrets kept out of repr and logs, log lines safe from input."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry

from collector.limits import handler_options
from collector.metrics import CollectorMetrics
from collector.settings import Settings
from consumers.settings import ConsumerSettings
from loadtest.fuzz import collector, scrape

SECRET = "visitor-secret-0123456789abcdef"
SIGNING_SECRET = "signing-secret-0123456789abcdef"
HEADER_TIMEOUT_MS = 400
ENV = {
    "BEACON_HEADER_TIMEOUT_MS": str(HEADER_TIMEOUT_MS),
    "BEACON_BODY_TIMEOUT_MS": "400",
    "BEACON_SECRET": SECRET,
    "BEACON_SIGNING_KEYS": f"k1:{SIGNING_SECRET}",
    "BEACON_LOG_LEVEL": "DEBUG",
}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """(port, log file) of one collector shared by this module's tests."""
    data_dir = tmp_path_factory.mktemp("security")
    with collector(data_dir, ENV) as (_, base):
        yield int(base.rsplit(":", 1)[1]), data_dir / "collector.log"


def counter(port: int, sample: str) -> float:
    return scrape(f"http://127.0.0.1:{port}").get(sample, 0.0)


def bad_requests(port: int) -> float:
    samples = scrape(f"http://127.0.0.1:{port}")
    return sum(v for k, v in samples.items() if k.startswith("beacon_bad_requests_total"))


async def exchange(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send `raw`, read one whole response (status, headers, body) until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    data = await asyncio.wait_for(reader.read(-1), 10)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


async def closed_while_trickling(
    port: int, trickle: bytes, interval_s: float, give_up_s: float
) -> tuple[bool, float]:
    """Trickle `trickle` one byte per interval until the server closes the connection or
    `give_up_s` passes: (whether the server closed it, seconds it was held, for the log)."""
    started = time.monotonic()
    closed = False
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for byte in trickle:
            writer.write(bytes([byte]))
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                if await asyncio.wait_for(reader.read(1), interval_s) == b"":
                    closed = True
                    break
            if time.monotonic() - started > give_up_s:
                break
    except ConnectionError:
        closed = True
    writer.close()
    return closed, time.monotonic() - started


@pytest.mark.parametrize(
    ("head", "periods"),
    [
        # A pixel head: at most three periods (one in the fast path, then aiohttp's two).
        (b"GET /p.gif HTTP/1.1\r\nHost: t\r\nX-Slow: ", 3),
        # Not a pixel: the fast path hands it to aiohttp at the first byte, so the deadline's
        # one to two periods apply.
        (b"POST /e HTTP/1.1\r\nHost: x\r\nX-Slow: ", 2),
    ],
    ids=["pixel", "not_a_pixel"],
)
async def test_a_trickled_request_head_is_cut_and_counted(served, head, periods):
    port, _ = served
    sample = 'beacon_connections_timed_out_total{phase="header"}'
    before = counter(port, sample)
    # One header byte every 100 ms, for ever: without a deadline it holds the connection
    # for the keep-alive timeout (75 s; aiohttp's default: an hour). The client gives up
    # well before that, however slow the machine: the deadline must have cut it.
    closed, held_s = await closed_while_trickling(port, head + b"s" * 1000, 0.1, give_up_s=30)
    print(f"trickled head held {held_s:.2f} s (due: {periods} x {HEADER_TIMEOUT_MS} ms)")
    assert closed, "the server never cut the trickled head"
    assert counter(port, sample) == before + 1


async def test_a_head_that_stops_half_way_is_cut_and_counted(served):
    port, _ = served
    sample = 'beacon_connections_timed_out_total{phase="header"}'
    before = counter(port, sample)
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /p.gif HTTP/1.1\r\nHost: t\r\n")  # no blank line: the head never ends
    # Closed without an answer, long before the 75 s keep-alive timeout would have done it.
    assert await asyncio.wait_for(reader.read(), 30) == b""
    writer.close()
    print(f"stalled head held {time.monotonic() - started:.2f} s")
    assert counter(port, sample) == before + 1


async def test_idle_keep_alive_and_slow_but_finished_heads_are_served(served):
    port, _ = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = b"GET /p.gif?e=open&s=ka HTTP/1.1\r\nHost: t\r\n\r\n"
    for _ in range(3):
        writer.write(request[:10])  # a head split across a period boundary
        await asyncio.sleep(HEADER_TIMEOUT_MS / 1000 * 0.6)
        writer.write(request[10:])
        status_line = await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)
        assert status_line.startswith(b"HTTP/1.1 200")
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(43)
        await asyncio.sleep(HEADER_TIMEOUT_MS / 1000 * 3)  # idle: left to the keep-alive timeout
    writer.close()


async def test_an_idle_keep_alive_connection_is_closed_after_the_setting(tmp_path):
    keepalive_ms = 1000
    env = {**ENV, "BEACON_KEEPALIVE_TIMEOUT_MS": str(keepalive_ms)}
    header_cuts = 'beacon_connections_timed_out_total{phase="header"}'
    with collector(tmp_path, env) as (_, base):
        port = int(base.rsplit(":", 1)[1])
        cuts_before = counter(port, header_cuts)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # A POST goes to aiohttp (the pixel fast path has its own idle timer).
        writer.write(b"POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 204")  # no body follows
        answered = time.monotonic()
        # Without the setting, the 75 s default (aiohttp's own: an hour) holds it past this
        # wait, which is generous for a loaded machine: the wait times out.
        assert await asyncio.wait_for(reader.read(), 30) == b""
        print(f"idle keep-alive closed after {time.monotonic() - answered:.2f} s")
        writer.close()
        # Idle is not slow: the keep-alive timeout closed it, not the 400 ms header deadline.
        assert counter(port, header_cuts) == cuts_before


def test_the_keep_alive_timeout_defaults_to_75_s():
    settings = Settings()
    assert settings.keepalive_timeout_ms == 75_000  # docs/security.md; aiohttp's is an hour
    options = handler_options(settings, CollectorMetrics(CollectorRegistry()))
    assert options["keepalive_timeout"] == 75.0  # what aiohttp's RequestHandler is given


async def test_a_trickled_body_gets_408_and_is_counted(served):
    port, _ = served
    sample = 'beacon_connections_timed_out_total{phase="body"}'
    before = counter(port, sample)
    raw = b'POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{"e": "send"'
    started = time.monotonic()
    # Without the body deadline the body never ends and exchange() times out instead.
    status, headers, body = await exchange(port, raw)
    print(f"trickled body answered and closed after {time.monotonic() - started:.2f} s")
    assert (status, orjson.loads(body)) == (408, {"error": "body_timeout"})
    assert headers["Connection"] == "close"
    assert counter(port, sample) == before + 1


async def test_a_broken_chunked_body_is_a_400_not_a_500(served):
    port, _ = served
    raw = b"POST /e HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"
    before = bad_requests(port)
    status, _, _ = await exchange(port, raw)
    assert status == 400
    # The parser refuses it, or the body reader does when the chunk arrives later: counted.
    assert bad_requests(port) == before + 1


async def test_a_broken_gzip_body_is_a_400_and_a_bomb_a_413(served):
    port, _ = served
    before = counter(port, 'beacon_bad_requests_total{reason="malformed_body"}')
    bad = b"\x1f\x8b\x08\x00garbage-not-deflate"
    head = (
        "POST /e HTTP/1.1\r\nHost: t\r\nContent-Encoding: gzip\r\nConnection: close\r\n"
        "Content-Length: {}\r\n\r\n"
    )
    status, _, body = await exchange(port, head.format(len(bad)).encode() + bad)
    assert (status, orjson.loads(body)) == (400, {"error": "malformed_body"})
    assert counter(port, 'beacon_bad_requests_total{reason="malformed_body"}') == before + 1
    # 64 MiB of JSON whitespace in ~64 KiB: the 64 KiB body limit counts decompressed bytes.
    bomb = gzip.compress(b"[" + b" " * (64 << 20) + b"]", compresslevel=9)
    status, _, body = await exchange(port, head.format(len(bomb)).encode() + bomb)
    assert (status, orjson.loads(body)["error"]) == (413, "body_too_large")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"GET /p.gif?u=" + b"a" * 8200 + b" HTTP/1.1\r\nHost: t\r\n\r\n", "line_too_long"),
        (b"GET /p.gif HTTP/1.1\r\nReferer: " + b"r" * 8200 + b"\r\n\r\n", "line_too_long"),
        (b"GET /p.gif HTTP/1.1\r\n" + b"X-A: 1\r\n" * 129 + b"\r\n", "bad_http_message"),
        (b"GET /p.gif HTTP/1.1\r\nX-A: 1\rX-Injected: 1\r\n\r\n", "bad_http_message"),
        (b"GET /p.gif HTTP/1.1\r\nX-A: 1\nX-Injected: 1\r\n\r\n", "bad_http_message"),
        (b"GET /p.gif HTTP/1.1\r\nX-A: 1\x00X-Injected: 1\r\n\r\n", "bad_http_message"),
        (b"<script>X-Injected</script> / HTTP/1.1\r\nHost: t\r\n\r\n", "bad_http_method"),
    ],
    ids=["request_line", "header_line", "header_count", "bare_cr", "bare_lf", "nul", "method"],
)
async def test_heads_over_the_limits_get_400_and_are_counted(served, raw, reason):
    port, _ = served
    sample = f'beacon_bad_requests_total{{reason="{reason}"}}'
    before = counter(port, sample)
    status, headers, body = await exchange(port, raw)
    assert status == 400
    assert "X-Injected" not in headers
    # The reason label, not aiohttp's own text, which quotes the refused bytes back.
    assert body == f"400 {reason}\n".encode()
    assert counter(port, sample) == before + 1


@pytest.mark.parametrize(
    "raw",
    [b"GET /p.gif?e=open HTTP/1.1\nHost: t\n\n", b"GET /p.gif?e=open HTTP/1.1\r\nX: \x00"],
    ids=["lf_line_ends", "nul"],
)
async def test_a_pixel_head_that_cannot_be_one_goes_to_the_parser_at_once(served, raw):
    """The fast path holds a pixel head until its blank line; one that can never complete
    there goes to aiohttp's parser as it comes, not after a header period."""
    port, _ = served
    handed = 'beacon_fast_path_handoffs_total{reason="other_request"}'
    split = 'beacon_fast_path_handoffs_total{reason="split_head"}'
    before = counter(port, handed), counter(port, split)
    status, _, _ = await exchange(port, raw)
    assert status == 400
    assert (counter(port, handed), counter(port, split)) == (before[0] + 1, before[1])


def test_settings_repr_shows_no_secret():
    settings = Settings(secret=SECRET, signing_keys=f"k1:{SIGNING_SECRET}")
    text = repr(settings) + str(settings)
    assert SECRET not in text and SIGNING_SECRET not in text
    assert "header_timeout_ms=10000" in text  # the rest is still there


def test_consumer_settings_repr_shows_no_secret():
    settings = ConsumerSettings(clickhouse_password=SECRET, dashboard_token=SIGNING_SECRET)
    text = repr(settings) + str(settings)
    assert SECRET not in text and SIGNING_SECRET not in text
    assert "clickhouse_user='default'" in text


async def test_logs_hold_no_secret_and_no_line_from_input(served):
    port, log = served
    # Input that tries to start a log line of its own, in the request line and a header.
    injected = (
        b"GET /p.gif?r=x%0D%0AFORGED-LOG-LINE HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    assert (await exchange(port, injected))[0] == 200
    await exchange(port, b"GET /x\r\nFORGED-LOG-LINE \x00\r\n\r\n")
    await exchange(port, b"\x16\x03\x01FORGED-LOG-LINE\r\n\r\n")
    await asyncio.sleep(0.2)
    text = log.read_text(errors="replace")
    assert "collector listening" in text  # the log is the one the process writes
    assert SECRET not in text and SIGNING_SECRET not in text
    assert "FORGED" not in text  # no request text at all, at the start of a line or not
    assert "Traceback" not in text  # refused requests are counted, not logged with a traceback


async def test_the_access_log_stays_off(served):
    port, log = served
    # Both answered by aiohttp, whose access log would write one line each (at INFO).
    probe = b"GET /healthz?access-log-probe HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    assert (await exchange(port, probe))[0] == 200
    event = b"POST /e HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}"
    assert (await exchange(port, event))[0] == 204
    await asyncio.sleep(0.2)
    text = log.read_text(errors="replace")
    assert "collector listening" in text  # the log is the one the process writes
    assert "access-log-probe" not in text
    assert "/healthz" not in text and "/readyz" not in text and "POST /e" not in text
