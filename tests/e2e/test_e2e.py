"""`beacon run` as a user runs it: a subprocess on loopback, real HTTP, real chDB underneath."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.support.beacon_run import Beacon, send_mix, wait_for_rows
from tests.support.helpers import clear_of_midnight

# Room before midnight UTC for the mix, sent in under a second: the collector rotates the
# cookieless visitor ids at midnight, and the mix has four visitors.
MIX_S = 60


@pytest.fixture
def beacon(tmp_path: Path) -> Iterator[Beacon]:
    with Beacon(tmp_path / "data") as b:
        yield b


async def test_beacon_run_stores_exactly_the_mix(beacon: Beacon) -> None:
    await clear_of_midnight(MIX_S)
    expected = await send_mix(beacon.base)
    total = sum(expected.values())
    assert await wait_for_rows(beacon, total) == total
    await asyncio.sleep(1.0)  # anything extra (a junk event stored, a double) would show by now
    rows = beacon.query(
        "SELECT event_type, site, campaign, count(), uniqExact(event_id) FROM beacon.events "
        "GROUP BY event_type, site, campaign"
    )
    got = {}
    for line in rows.splitlines():
        kind, site, campaign, n, unique = line.split("\t")
        assert n == unique  # no event stored twice
        got[kind, site, campaign] = int(n)
    assert got == dict(expected)
    visitors = beacon.query("SELECT uniqExact(visitor_id) FROM beacon.events WHERE site = 'blog'")
    assert int(visitors) == 4

    report = beacon.report("--format", "json")
    assert report.returncode == 0, report.stderr
    by_key = {(r["event_type"], r["site"], r["campaign"]): r for r in orjson.loads(report.stdout)}
    assert {k: r["events"] for k, r in by_key.items()} == dict(expected)
    assert by_key["open", "mail", "welcome"]["recipients"] == 5
    table = beacon.report()
    assert "welcome" in table.stdout and f"{total} events" in table.stdout

    metrics = beacon.query("SELECT 1")  # the store answers; now the collector's own counters
    assert metrics.strip() == "1"
    async with aiohttp.ClientSession() as http, http.get(f"{beacon.base}/metrics") as r:
        text = await r.text()
    assert 'beacon_events_dropped_total{reason="dnt"} 6.0' in text
    assert 'beacon_events_dropped_total{reason="bad_event_type"} 5.0' in text
    assert beacon.stop() == 0


async def test_sigterm_loses_no_accepted_event(beacon: Beacon) -> None:
    sent = 0
    async with aiohttp.ClientSession(headers={"Content-Type": "application/json"}) as http:
        for burst in range(10):
            batch = [{"e": "custom", "s": "load", "p": {"burst": burst}} for _ in range(100)]
            async with http.post(f"{beacon.base}/e", data=orjson.dumps(batch)) as r:
                assert r.status == 204
            sent += 100
        for _ in range(200):
            async with http.get(f"{beacon.base}/p.gif?s=load") as r:
                assert r.status == 200
            sent += 1
    # Stop right away: the events are in the collector's buffer or spool, not yet in ClickHouse.
    assert await asyncio.to_thread(beacon.stop) == 0
    report = beacon.report("--format", "json", "--site", "load")  # opens the store directly now
    assert report.returncode == 0, report.stderr
    assert sum(r["events"] for r in orjson.loads(report.stdout)) == sent


async def test_a_long_read_through_the_store_port_holds_up_no_event(beacon: Beacon) -> None:
    """A read that would run for minutes: pixels sent while it runs are stored, and when its
    client leaves the store stops it and says so; then SIGTERM stops Beacon cleanly."""
    async with aiohttp.ClientSession() as http:
        for i in range(40):
            async with http.get(f"{beacon.base}/p.gif?s=before&u=/p{i}") as r:
                assert r.status == 200
        assert await wait_for_rows(beacon, 40) == 40
        # 40 branches of 2 s (sleepEachRow caps a block at 3 s): about a minute, idle, read
        # only from Beacon's own table.
        branch = "SELECT sleepEachRow(0.05) AS s FROM beacon.events"
        sql = f"SELECT sum(s) FROM ({' UNION ALL '.join([branch] * 40)})"
        body = orjson.dumps({"sql": sql, "format": "TSV"})
        url = f"http://127.0.0.1:{beacon.store_port}/query"
        headers = {"Content-Type": "application/json"}
        reading = asyncio.create_task(http.post(url, data=body, headers=headers))
        for i in range(60):
            async with http.get(f"{beacon.base}/p.gif?s=during&u=/p{i}") as r:
                assert r.status == 200
        assert await wait_for_rows(beacon, 100) == 100
        if reading.done():
            answer = reading.result()
            raise AssertionError(f"the read ended first: {answer.status} {await answer.text()}")
        reading.cancel()

        async def gone() -> float:
            async with http.get(f"http://127.0.0.1:{beacon.store_port}/metrics") as r:
                text = await r.text()
            line = 'beacon_store_queries_total{outcome="client_gone"} '
            found = [ln for ln in text.splitlines() if ln.startswith(line)]
            return float(found[0].split()[-1]) if found else 0.0

        deadline = time.monotonic() + 60
        stopped = await gone()
        while stopped < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            stopped = await gone()
        assert stopped == 1
    assert await asyncio.to_thread(beacon.stop) == 0
