"""Shared parts of the fault suite: `beacon` subprocesses, a marked load, stored-marker counts.

Every pixel request of a case carries a unique marker (`p.n=<prefix>-<i>`, stored in
`props['n']`); **sent** is the markers answered 200, **stored** the sent markers found in
ClickHouse after dedup (FINAL), and a marker stored under two event ids is a double count.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from prometheus_client.parser import text_string_to_metric_families

from tests.faults.report import RESULTS
from tests.support import helpers
from tests.support.helpers import free_port

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0

Query = Callable[[str], str]  # SQL in, TSV out (a store port, or a ClickHouse front)


# -- subprocesses ---------------------------------------------------------------------------


def beacon_env(data_dir: Path, **settings: str | int) -> dict[str, str]:
    """The environment of a `beacon` subprocess: data_dir plus BEACON_<NAME> for each setting."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BEACON_")}
    # 16 characters at least: a shorter secret is refused at start.
    env.update(BEACON_DATA_DIR=str(data_dir), BEACON_SECRET="faults-secret-0123456789")
    env.update({f"BEACON_{k.upper()}": str(v) for k, v in settings.items()})
    return env


def http_get(url: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
    """GET url: (status, body); (0, b"") when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


@dataclass
class Proc:
    """One `beacon <args>` subprocess with its own log file."""

    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    health_url: str = ""  # answers 200 once the process is up
    popen: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = START_TIMEOUT_S) -> Proc:
        """Start it and wait for `health_url` (if any) to answer 200."""
        with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "beacon", *self.args],
                env=self.env,
                stdout=log,
                stderr=log,
                start_new_session=True,  # a Ctrl-C of the test run is not a fault we inject
            )
        deadline = time.monotonic() + timeout_s
        while self.health_url and http_get(self.health_url, 1.0)[0] != 200:
            assert self.running, f"{self.name} exited at start:\n{self.log_tail()}"
            assert time.monotonic() < deadline, f"{self.name} not up:\n{self.log_tail()}"
            time.sleep(0.1)
        return self

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def terminate(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM and wait: the exit code, or None if it had not exited in timeout_s (it is
        SIGKILLed then). No assert here: a case records its figures before it asserts."""
        assert self.popen is not None
        if self.running:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.popen is not None:
            if self.running:
                self.popen.kill()
            self.popen.wait()

    def log_tail(self, n_lines: int = 30) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n_lines:])


@dataclass
class Procs:
    """Starts `beacon` collectors and consumers for one test; kills what is left at the end."""

    log_dir: Path
    started: list[Proc] = field(default_factory=list)

    def collector(self, data_dir: Path, **settings: str | int) -> Proc:
        """`beacon serve --workers 1` on a free port, up once /healthz answers."""
        port = free_port()
        env = beacon_env(data_dir, port=port, drain_ms=200, **settings)
        return self._start("serve", ["serve", "--workers", "1"], env, f"127.0.0.1:{port}")

    def consumer(
        self, data_dir: Path, settings: Mapping[str, str | int], store_port: int = 0
    ) -> Proc:
        """`beacon consume` with its query port on `store_port` (free if 0), up once it answers."""
        port = store_port or free_port()
        env = beacon_env(data_dir, **{**settings, "store_port": port})
        return self._start("consume", ["consume"], env, f"127.0.0.1:{port}")

    def _start(self, name: str, args: list[str], env: dict[str, str], addr: str) -> Proc:
        log_path = self.log_dir / f"{name}-{len(self.started)}.log"
        proc = Proc(name, args, env, log_path, f"http://{addr}/healthz")
        self.started.append(proc)
        return proc.start()

    def kill_all(self) -> None:
        for proc in self.started:
            proc.kill()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    """Start `beacon` subprocesses through this; any still running are killed after the test."""
    started = Procs(tmp_path)
    try:
        yield started
    finally:
        started.kill_all()


def base_url(proc: Proc) -> str:
    """http://host:port of a process started by Procs."""
    return proc.health_url.removesuffix("/healthz")


def scrape(url: str) -> dict[str, float]:
    """`name{label="v",...}` -> value from one /metrics page (missing page: empty)."""
    status, body = http_get(url + "/metrics")
    out: dict[str, float] = {}
    if status != 200:
        return out
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def metric_sum(metrics: dict[str, float], name: str) -> float:
    """The sum of every sample of `name` (all label values)."""
    return sum(v for k, v in metrics.items() if k == name or k.startswith(name + "{"))


def kafka_settings(bootstrap: str, topic: str) -> dict[str, str | int]:
    """The Kafka settings collector and consumer share: one topic, its DLQ, one group."""
    return {
        "kafka_bootstrap": bootstrap,
        "kafka_topic": topic,
        "kafka_dlq_topic": topic + ".dlq",
        "kafka_group": "group-" + topic,
    }


# -- load -----------------------------------------------------------------------------------


class Load:
    """Marked pixel requests at about `rate_per_s` from `concurrency` keep-alive clients, until
    stop(), `max_requests` requests or `max_s` seconds, whichever comes first."""

    def __init__(
        self,
        base: str,
        prefix: str,
        rate_per_s: float = 150.0,
        concurrency: int = 6,
        max_requests: int = 100_000,
        max_s: float = 600.0,
    ) -> None:
        self.base, self.prefix = base, prefix
        self.answered: set[str] = set()  # markers answered 200: the events the case sent
        self.failures: Counter[str] = Counter()  # other answers and errors, by kind
        self.requests = 0  # sent so far; the next marker's number
        self._interval_s = concurrency / rate_per_s
        self._concurrency = concurrency
        self._max_requests, self._max_s = max_requests, max_s
        self._deadline = 0.0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> Load:
        self._deadline = time.monotonic() + self._max_s
        self._tasks = [asyncio.create_task(self._client()) for _ in range(self._concurrency)]
        return self

    async def stop(self) -> None:
        """Stop sending; returns once every request on the way has its answer."""
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def _more(self) -> bool:
        return (
            not self._stop.is_set()
            and self.requests < self._max_requests
            and time.monotonic() < self._deadline
        )

    async def _client(self) -> None:
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while self._more():
                started = time.monotonic()
                marker = f"{self.prefix}-{self.requests}"
                self.requests += 1
                params = {"e": "impression", "s": "faults", "c": self.prefix, "p.n": marker}
                try:
                    async with http.get(f"{self.base}/p.gif", params=params) as r:
                        await r.read()
                        if r.status == 200:
                            self.answered.add(marker)
                        else:
                            self.failures[f"http_{r.status}"] += 1
                except (aiohttp.ClientError, TimeoutError) as exc:
                    self.failures[type(exc).__name__] += 1
                await asyncio.sleep(max(0.0, self._interval_s - (time.monotonic() - started)))


# -- the store ------------------------------------------------------------------------------


def store_port_query(port: int) -> Query:
    """A Query through a consumer's loopback query port (read-only SQL)."""

    def query(sql: str) -> str:
        return helpers.store_port_query(port, sql)

    return query


def ids_by_marker(query: Query, prefix: str) -> dict[str, int]:
    """Distinct event ids per stored marker of `prefix`, after dedup (FINAL)."""
    out = query(
        "SELECT props['n'], uniqExact(event_id) FROM beacon.events FINAL "
        f"WHERE campaign = '{prefix}' GROUP BY props['n']"
    )
    pairs = (line.split("\t") for line in out.splitlines() if line)
    return {marker: int(ids) for marker, ids in pairs}


def raw_rows(query: Query, prefix: str) -> int:
    """Rows of `prefix` before dedup: more than the distinct ids when a repeat reached the table
    and awaits its merge."""
    return int(query(f"SELECT count() FROM beacon.events WHERE campaign = '{prefix}'"))


@dataclass(frozen=True)
class Verdict:
    """Sent against stored for one case."""

    sent: int
    stored: int  # sent markers found in the store
    lost: list[str]  # sent markers not stored (first few)
    doubles: list[str]  # markers stored under more than one event id (first few)
    unanswered_stored: int  # stored markers whose request got no 200 (the client saw an error)


def verdict(sent: set[str], stored: dict[str, int]) -> Verdict:
    """Compare the markers answered 200 with those stored."""
    lost = sorted(sent - stored.keys())
    doubles = sorted(m for m, ids in stored.items() if ids > 1)
    return Verdict(
        len(sent), len(sent & stored.keys()), lost[:10], doubles[:10], len(stored.keys() - sent)
    )


async def wait_stored(
    query: Query, prefix: str, sent: set[str], timeout_s: float
) -> tuple[Verdict, float]:
    """Poll until every sent marker is stored, or timeout_s; (verdict, seconds waited)."""
    started = time.monotonic()
    while True:
        try:
            found = await asyncio.to_thread(ids_by_marker, query, prefix)
        except OSError:  # the store is restarting; ask again
            found = {}
        result = verdict(sent, found)
        if result.stored == result.sent or time.monotonic() - started > timeout_s:
            return result, time.monotonic() - started
        await asyncio.sleep(0.5)


# -- Kafka ----------------------------------------------------------------------------------


async def create_topics(bootstrap: str, topic: str, partitions: int = 3) -> None:
    """Create `topic` with `partitions` partitions and its dead-letter topic `<topic>.dlq`."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1), NewTopic(topic + ".dlq", 1, 1)])
    finally:
        await admin.close()


# -- the closing table ----------------------------------------------------------------------


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """End `make faults` with sent / stored / lost / window per case from the results file."""
    if not RESULTS.exists():
        return
    rows = [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]
    if not rows:
        return
    tr = terminalreporter
    tr.write_sep("=", f"fault suite: {RESULTS}")
    width = max(len(str(r["case"])) for r in rows)
    tr.write_line(f"{'case':<{width}}  {'sent':>7} {'stored':>7} {'lost':>6} {'window_s':>9}")
    for r in rows:
        window = r.get("loss_window_s")
        window_text = "-" if window is None else f"{window:.2f}"
        tr.write_line(
            f"{r['case']:<{width}}  {r['sent']:>7} {r['stored']:>7} {r['lost']:>6} {window_text:>9}"
        )
