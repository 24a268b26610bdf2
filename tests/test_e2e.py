"""`beacon run` as a user runs it: a subprocess on loopback, real HTTP, real chDB underneath."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.helpers import free_port, store_port_query

pytestmark = pytest.mark.slow


class Beacon:
    """A running `beacon run` with its own data directory and ports."""

    def __init__(self, data_dir: Path, extra_env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.extra_env = extra_env or {}
        self.port = free_port()
        self.store_port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir.parent / f"beacon-run-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "BEACON_DATA_DIR": str(self.data_dir),
            "BEACON_PORT": str(self.port),
            "BEACON_STORE_PORT": str(self.store_port),
            "BEACON_BATCH_MAX_AGE_MS": "200",
            "BEACON_SPOOL_SEGMENT_MAX_AGE_MS": "200",
            "BEACON_FLUSH_INTERVAL_MS": "100",
            "BEACON_DRAIN_MS": "200",
            **self.extra_env,
        }

    def start(self) -> None:
        cmd = [sys.executable, "-m", "beacon", "run"]
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(cmd, env=self.env(), stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_path.read_text()
            try:
                if self.query("SELECT 1").strip() == "1" and self._ready():
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError("beacon run did not come up:\n" + self.log_path.read_text())

    def _ready(self) -> bool:
        import urllib.request

        with urllib.request.urlopen(self.base + "/readyz", timeout=2) as r:
            return r.status == 200

    def query(self, sql: str, fmt: str = "TSV") -> str:
        return store_port_query(self.store_port, sql, fmt)

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(90)

    def report(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "beacon", "report", *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=60,
        )


@pytest.fixture
def beacon(tmp_path: Path) -> Iterator[Beacon]:
    b = Beacon(tmp_path / "data")
    b.start()
    yield b
    if b.proc is not None and b.proc.poll() is None:
        b.proc.kill()
        b.proc.wait()


def count_rows(b: Beacon) -> int:
    return int(b.query("SELECT count() FROM beacon.events"))


async def wait_for_rows(b: Beacon, expected: int, timeout_s: float = 60) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        n = await asyncio.to_thread(count_rows, b)
        if n >= expected:
            return n
        await asyncio.sleep(0.2)
    return await asyncio.to_thread(count_rows, b)


async def send_mix(base: str) -> Counter[tuple[str, str, str]]:
    """Send a known mix; returns what must be stored, by (event_type, site, campaign)."""
    expected: Counter[tuple[str, str, str]] = Counter()
    uas = [f"Mozilla/5.0 Test/{i}" for i in range(4)]
    async with aiohttp.ClientSession(headers={"Content-Type": "application/json"}) as http:

        async def pixel(query: str, headers: dict[str, str] | None = None) -> None:
            async with http.get(f"{base}/p.gif?{query}", headers=headers) as r:
                assert r.status == 200 and len(await r.read()) == 43

        for i in range(12):  # email opens, 5 recipients
            await pixel(f"e=open&s=mail&c=welcome&m=m1&r=r{i % 5}", {"User-Agent": uas[i % 4]})
            expected["open", "mail", "welcome"] += 1
        for i in range(20):  # page views from 4 browsers
            await pixel(f"s=blog&u=https://blog.example/p{i}", {"User-Agent": uas[i % 4]})
            expected["pageview", "blog", ""] += 1
        for _ in range(9):
            await pixel("e=impression&s=ads&c=fall&ad=a1")
            expected["impression", "ads", "fall"] += 1
        for _ in range(3):
            await pixel("e=conversion&s=ads&c=fall&ad=a1&p.value=9.90&p.currency=EUR")
            expected["conversion", "ads", "fall"] += 1
        clicks = [{"e": "click", "s": "mail", "c": "welcome", "r": f"r{i}"} for i in range(7)]
        async with http.post(f"{base}/e", data=orjson.dumps(clicks)) as r:
            assert r.status == 204
        expected["click", "mail", "welcome"] += 7
        # None of these may be stored.
        for _ in range(4):
            async with http.head(f"{base}/p.gif?e=open&s=mail") as r:
                assert r.status == 200
        for _ in range(3):
            await pixel("e=open&s=mail&c=welcome", {"Sec-Purpose": "prefetch"})
        for _ in range(5):
            await pixel("e=bogus&s=mail")
        for _ in range(6):
            await pixel("e=open&s=mail&c=welcome", {"DNT": "1"})
        async with http.post(
            f"{base}/e", data=b"{oops", headers={"Content-Type": "application/json"}
        ) as r:
            assert r.status == 400
    return expected


async def test_beacon_run_stores_exactly_the_mix(beacon: Beacon) -> None:
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
