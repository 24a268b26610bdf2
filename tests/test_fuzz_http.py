"""A bounded HTTP fuzz run (loadtest/fuzz.py) against a real `beacon serve` on loopback."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from loadtest.fuzz import FUZZ_ENV, collector, fuzz, print_report

pytestmark = pytest.mark.slow

REQUESTS = 20_000


@pytest.mark.timeout(300)
def test_twenty_thousand_malformed_requests(tmp_path: Path) -> None:
    with collector(tmp_path, FUZZ_ENV) as (pid, base):
        report = asyncio.run(fuzz(pid, base, REQUESTS, concurrency=64, seed=7))
    print_report(report)  # the figures docs/security.md quotes (pytest -s shows them)
    assert report.requests == REQUESTS
    assert report.problems == []
    # Each kind of input was sent, and the parser refused some of it: the run was not idle.
    assert report.statuses["400"] > REQUESTS // 4 and report.statuses["200"] > REQUESTS // 10


def test_header_bytes_that_are_not_utf8_still_get_the_pixel(tmp_path: Path) -> None:
    raw = b"GET /p.gif?e=open&s=a HTTP/1.1\r\nHost: t\r\nReferer: https://r.examp\xa7e/\r\n"
    raw += b"Connection: close\r\n\r\n"

    async def send(port: int) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw)
        status_line = await reader.readline()
        writer.close()
        return status_line

    with collector(tmp_path) as (_, base):
        status_line = asyncio.run(send(int(base.rsplit(":", 1)[1])))
    assert status_line.startswith(b"HTTP/1.1 200")
