"""`beacon run` as a user runs it, for end-to-end tests: a subprocess on loopback with its own
data directory and ports, and the known mix of events they send."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Self

import aiohttp
import orjson

from tests.support.helpers import free_port, store_port_query


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
        self.command = [sys.executable, "-m", "beacon", "run"]

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
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(self.command, env=self.env(), stdout=log, stderr=log)
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

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Whatever a test left running is killed (a test that stops it checks its exit)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

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
        for _ in range(3):  # prefetched: stored, flagged with `purpose`
            await pixel("e=open&s=mail&c=welcome", {"Sec-Purpose": "prefetch"})
            expected["open", "mail", "welcome"] += 1
        # None of these may be stored.
        for _ in range(4):
            async with http.head(f"{base}/p.gif?e=open&s=mail") as r:
                assert r.status == 200
        for _ in range(5):
            await pixel("e=bogus&s=mail")
        for _ in range(6):
            await pixel("e=open&s=mail&c=welcome", {"DNT": "1"})
        async with http.post(
            f"{base}/e", data=b"{oops", headers={"Content-Type": "application/json"}
        ) as r:
            assert r.status == 400
    return expected
