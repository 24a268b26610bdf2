"""BEACON_DURABILITY=wal: readiness comes from the write-ahead log too. When the log cannot write
(here: a real `beacon serve` whose files may not grow, RLIMIT_FSIZE set on it from outside, so
each write fails with EFBIG as on a full disk), /readyz answers 503 with the reason and every
lost event is counted; once it can write again /readyz recovers by itself, though no event
came meanwhile, and what is on disk is exactly what was counted as written."""

from __future__ import annotations

import http.client
import resource
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson

from contract.segments import closed_segments
from loadtest.fuzz import collector, scrape

ENV = {
    "BEACON_SECRET": "visitor-secret-0123456789abcdef",
    "BEACON_DURABILITY": "wal",
    "BEACON_FLUSH_INTERVAL_MS": "100",  # how often the pump checks whether it can write again
    "BEACON_SPOOL_SEGMENT_MAX_AGE_MS": "200",
}
WRITTEN = "beacon_wal_events_total{}"
LOST = 'beacon_events_dropped_total{reason="spool_error"}'
# The pixels' own outcomes: the fast path counts a pixel once the log's write of its event
# ended, as recorded or as the write's failure.
RECORDED = 'beacon_requests_total{endpoint="pixel",outcome="recorded"}'
FAILED = 'beacon_requests_total{endpoint="pixel",outcome="spool_error"}'


def pixel(base: str, marker: int) -> int:
    """The status of one pixel, sent as browsers send them (keep-alive: the pixel fast path
    answers it; urllib's `Connection: close` goes to aiohttp's route)."""
    connection = http.client.HTTPConnection(base.removeprefix("http://"), timeout=10)
    try:
        connection.request("GET", f"/p.gif?e=open&s=wal&p.n={marker}")
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def get(url: str) -> tuple[int, str]:
    """Status and body (latin-1: a GIF too) of a GET."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode("latin-1")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode("latin-1")


def readiness_after_pixels(base: str, wanted: int, first: int) -> tuple[str, int]:
    """Sends pixels (markers from `first`) until /readyz answers `wanted` or a generous
    deadline passes: (its body, the next marker)."""
    deadline = time.monotonic() + 30
    marker = first
    while True:
        assert pixel(base, marker) == 200  # answered whatever
        marker += 1
        status, body = get(base + "/readyz")
        if status == wanted:
            return body, marker
        assert time.monotonic() < deadline, f"/readyz stayed {status}: {body}"
        time.sleep(0.02)


def test_readyz_fails_while_the_wal_cannot_write_and_recovers(tmp_path: Path) -> None:
    unlimited = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
    with collector(tmp_path, ENV) as (proc, base):
        body, marker = readiness_after_pixels(base, 200, 0)
        assert body == "ready\n"
        # Every file of the process stops at 1 byte: each WAL write fails (EFBIG).
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (1, resource.RLIM_INFINITY))
        try:
            body, marker = readiness_after_pixels(base, 503, marker)
            assert body == "write-ahead log unavailable: File too large\n"
            lost = scrape(base)[LOST]
            assert lost > 0
        finally:
            resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, unlimited)

        # No pixel now: the log finds out by itself that it can write again.
        deadline = time.monotonic() + 30
        while get(base + "/readyz") != (200, "ready\n"):
            assert time.monotonic() < deadline, "/readyz never recovered"
            time.sleep(0.02)
        assert pixel(base, marker) == 200
        samples = scrape(base)
        assert samples[LOST] == lost  # the pixel after the recovery was written
        sent = marker + 1
    # The process exited and closed its last segment: on disk is what was counted written.
    lines = [x for p in closed_segments(tmp_path / "spool") for x in p.read_bytes().splitlines()]
    markers = [int(orjson.loads(line)["props"]["n"]) for line in lines]  # each line parses
    assert len(markers) == samples[WRITTEN] and samples[WRITTEN] + lost == sent
    assert (samples[RECORDED], samples[FAILED]) == (samples[WRITTEN], lost)
    assert marker in markers and len(set(markers)) == len(markers)
