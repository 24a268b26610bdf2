"""BEACON_DURABILITY=wal through real HTTP: the event is on disk before its answer, a SIGKILLed
`beacon serve` loses no answered event (its open segment closed and replayed to a real Kafka at
restart), a full spool refuses events with a count.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiokafka import AIOKafkaConsumer

from collector import fastpath
from collector.app import COLLECTOR, create_app
from collector.handlers import MAX_BATCH_EVENTS
from collector.metrics import CollectorMetrics
from collector.settings import SPOOL_MIN_BYTES, Settings
from collector.sinks.spool import SpoolSink
from collector.spool.writer import spool_limits
from contract.segments import CLOSED_SUFFIX, OPEN_SUFFIX, closed_segments
from tests.support.fastpath_corpus import UA, pixel
from tests.support.helpers import Transport, free_port, metric_value, segments_of

# -- shared helpers: a real `beacon serve`, markers read back from Kafka and the spool --------


@contextmanager
def serve(data_dir: Path, port: int, **env: str) -> Iterator[subprocess.Popen[bytes]]:
    """`beacon serve` (one process) on loopback until ready; killed on exit if still alive."""
    full_env = {
        **os.environ,
        "BEACON_DATA_DIR": str(data_dir),
        "BEACON_PORT": str(port),
        "BEACON_SECRET": "wal-test-secret-0123456789",  # 16 characters at least
        **{f"BEACON_{key.upper()}": value for key, value in env.items()},
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "beacon", "serve", "--workers", "1"], env=full_env
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


def wait_ready(base: str, proc: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "beacon serve exited at start"
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except (OSError, urllib.error.HTTPError):
            pass
        time.sleep(0.05)
    raise AssertionError("beacon serve never became ready")


def pixel_url(base: str, marker: int) -> str:
    return f"{base}/p.gif?e=open&s=wal&p.n={marker}"


def marker_of(row: dict[str, object]) -> int:
    props = row["props"]
    assert isinstance(props, dict)
    return int(props["n"])


async def read_topic(
    bootstrap: str, topic: str, expect: set[int], timeout_s: float = 45
) -> list[dict[str, object]]:
    """Every record of `topic`, read until all `expect` markers are in (or the timeout)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    rows: list[dict[str, object]] = []
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    assert record.value is not None
                    for line in record.value.split(b"\n"):  # an NDJSON chunk a record
                        row = orjson.loads(line)
                        rows.append(row)
                        seen.add(marker_of(row))
            if expect <= seen and not batches:
                break
    finally:
        await consumer.stop()
    return rows


def spool_rows(spool_dir: Path) -> list[dict[str, object]]:
    """Events still in spool segments, closed or open (whole lines only)."""
    rows: list[dict[str, object]] = []
    if spool_dir.exists():
        for path in sorted(spool_dir.iterdir()):
            if path.name.endswith((CLOSED_SUFFIX, OPEN_SUFFIX)):
                rows.extend(orjson.loads(line) for line in path.read_bytes().splitlines() if line)
    return rows


def distinct_markers(rows: list[dict[str, object]]) -> set[int]:
    """The markers stored; fails if one marker came with two event ids (a double count)."""
    ids: dict[int, set[object]] = {}
    for row in rows:
        ids.setdefault(marker_of(row), set()).add(row["event_id"])
    doubled = {m: i for m, i in ids.items() if len(i) > 1}
    assert not doubled, f"markers stored under several event ids: {list(doubled.items())[:5]}"
    return set(ids)


# -- in-process collector on loopback ----------------------------------------------------------


@pytest.fixture
async def spool_client(settings: Settings, metrics: CollectorMetrics):  # type: ignore[no-untyped-def]
    """`await spool_client(**overrides)`: a real collector on loopback over a spool sink."""
    clients: list[TestClient] = []

    async def make(max_bytes: int = 1 << 30, **overrides):  # type: ignore[no-untyped-def]
        config = replace(settings, sink="spool", spool_max_bytes=max_bytes, **overrides)
        sink = SpoolSink(
            config.spool_dir,
            metrics,
            **(spool_limits(config) | {"max_bytes": max_bytes}),
        )
        client = TestClient(TestServer(create_app(config, sink, metrics), host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


def on_disk(spool_dir: Path) -> set[int]:
    return {marker_of(row) for row in spool_rows(spool_dir)}


async def test_wal_event_is_on_disk_before_the_answer(spool_client, settings, metrics):
    # A linger of a minute: without the log, nothing would reach the disk during this test.
    client = await spool_client(
        durability="wal", linger_ms=60_000, spool_segment_max_age_ms=3_600_000
    )
    for marker in range(20):
        response = await client.get(f"/p.gif?e=open&s=wal&p.n={marker}")
        assert response.status == 200
        assert on_disk(settings.spool_dir) == set(range(marker + 1))
    response = await client.post("/e", json=[{"e": "click", "p": {"n": "20"}}])
    assert response.status == 204
    assert 20 in on_disk(settings.spool_dir)
    assert metric_value(metrics, "beacon_wal_events_total") == 21
    [segment] = settings.spool_dir.glob("*" + OPEN_SUFFIX)  # still open: readers wait for it
    assert closed_segments(settings.spool_dir) == []
    assert segment.read_bytes().endswith(b"\n")


async def test_memory_durability_answers_before_the_disk(spool_client, settings, metrics):
    """The contrast that shows the test above can fail: the default keeps events in memory."""
    client = await spool_client(linger_ms=60_000)
    response = await client.get("/p.gif?e=open&s=wal&p.n=1")
    assert response.status == 200
    assert on_disk(settings.spool_dir) == set()


async def test_wal_segments_age_into_closed_segments(spool_client, settings, metrics):
    client = await spool_client(durability="wal", linger_ms=10, spool_segment_max_age_ms=100)
    for marker in range(5):
        assert (await client.get(f"/p.gif?e=open&s=wal&p.n={marker}")).status == 200
    deadline = time.monotonic() + 60
    while not closed_segments(settings.spool_dir):
        assert time.monotonic() < deadline, "the aged segment was never closed"
        await asyncio.sleep(0.02)
    rows = [
        orjson.loads(x)
        for p in closed_segments(settings.spool_dir)
        for x in p.read_bytes().splitlines()
    ]
    assert {marker_of(r) for r in rows} == set(range(5))
    assert metric_value(metrics, "beacon_wal_segments_total") >= 1


async def test_wal_spool_full_is_counted_and_recovers(spool_client, settings, metrics):
    client = await spool_client(
        max_bytes=4096,
        durability="wal",
        linger_ms=10,
        flush_interval_ms=50,
        spool_segment_max_age_ms=50,
    )
    statuses = [(await client.get(f"/p.gif?e=open&s=wal&p.n={i}")).status for i in range(40)]
    assert statuses == [200] * 40  # the pixel is answered whatever happens to its event
    dropped = metric_value(metrics, "beacon_events_dropped_total", reason="spool_full")
    kept = on_disk(settings.spool_dir)
    assert dropped > 0 and len(kept) + dropped == 40
    # Each such pixel's request says why its event was lost, as the drop does.
    requests = {"endpoint": "pixel", "outcome": "spool_full"}
    assert metric_value(metrics, "beacon_requests_total", **requests) == dropped
    assert (
        metric_value(metrics, "beacon_requests_total", endpoint="pixel", outcome="buffer_full") == 0
    )
    busy = await client.post("/e", json={"e": "click", "p": {"n": "100"}})
    assert busy.status == 503  # a POST client can retry later
    assert (await busy.json())["error"] == "busy"

    # A consumer takes the closed segments away: the log takes events again.
    deadline = time.monotonic() + 60
    while not closed_segments(settings.spool_dir):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)  # let the open segment age out too
    for path in closed_segments(settings.spool_dir):
        path.unlink()
    deadline = time.monotonic() + 60
    while True:
        response = await client.post("/e", json={"e": "click", "p": {"n": "101"}})
        if response.status == 204:
            break
        assert time.monotonic() < deadline, "the log never took events again"
        await asyncio.sleep(0.05)
    assert 101 in on_disk(settings.spool_dir)


# A process whose files may not pass 4 KiB: a write that crosses it is cut short, the next one
# fails (EFBIG), as a full disk would. SIGXFSZ is ignored so the failure comes back as errors.
TORN_WRITE_SCRIPT = """
import asyncio, json, resource, signal, sys
from pathlib import Path
from prometheus_client import CollectorRegistry
from collector.metrics import CollectorMetrics
from collector.spool.wal import WriteAheadLog

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
metrics = CollectorMetrics(CollectorRegistry())
wal = WriteAheadLog(Path(sys.argv[1]), metrics, segment_max_bytes=1 << 30,
                    segment_max_age_ms=3_600_000, segment_idle_ms=3_600_000,
                    max_bytes=1 << 30)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
events = [b'{"n":%d,"pad":"%s"}' % (i, b"x" * 300) for i in range(30)]
if sys.argv[2] == "one":
    answers = [wal.append(event) for event in events]
else:  # a POST's batches of five, each written all or none; the limit falls in the third
    answers = [wal.append_all(events[i : i + 5]) for i in range(0, 30, 5)]
asyncio.run(wal.close())
errors = metrics.registry.get_sample_value("beacon_events_dropped_total", {"reason": "spool_error"})
print(json.dumps({"answers": answers, "errors": errors, "healthy": wal.healthy()}))
"""


def torn_writes(spool_dir: Path, how: str) -> dict:
    run = subprocess.run(
        [sys.executable, "-c", TORN_WRITE_SCRIPT, str(spool_dir), how],
        capture_output=True,
        check=True,
        timeout=60,
    )
    return orjson.loads(run.stdout)


def logged(spool_dir: Path) -> list[int]:
    """The events in the log's closed segments, in order; each segment whole lines only."""
    segments = [path.read_bytes() for path in closed_segments(spool_dir)]
    assert all(data.endswith(b"\n") for data in segments)  # a torn tail is cut: whole events
    return [orjson.loads(line)["n"] for data in segments for line in data.splitlines()]


def test_wal_write_torn_at_the_file_size_limit_goes_whole_into_a_new_segment(tmp_path: Path):
    # Before, the torn line was cut back and counted as lost, and every later event refused
    # (503, or a pixel lost) until the segment closed at its age.
    spool_dir = tmp_path / "spool"
    result = torn_writes(spool_dir, "one")
    assert result["answers"] == [True] * 30 and not result["errors"] and result["healthy"]
    assert logged(spool_dir) == list(range(30))  # each once: the torn one cut, written again
    assert len(closed_segments(spool_dir)) > 1


def test_wal_torn_batch_is_cut_back_whole(tmp_path: Path):
    # A POST's batch is written all or none: none of it may stay behind in the segment it
    # tore, and it goes whole into the next.
    spool_dir = tmp_path / "spool"
    result = torn_writes(spool_dir, "batches")
    assert result["answers"] == [True] * 6 and not result["errors"] and result["healthy"]
    segments = [path.read_bytes().splitlines() for path in closed_segments(spool_dir)]
    assert [len(lines) for lines in segments] == [10, 10, 10]  # batches of 5, 2 a segment
    assert logged(spool_dir) == list(range(30))


def test_wal_needs_a_spool():
    from collector.settings import SettingsError

    with pytest.raises(SettingsError, match="BEACON_DURABILITY=wal"):
        Settings.from_env({"BEACON_DURABILITY": "wal", "BEACON_SINK": "memory"})
    with pytest.raises(SettingsError, match="BEACON_DURABILITY"):
        Settings.from_env({"BEACON_DURABILITY": "fsync"})


# -- a real process, SIGKILLed ------------------------------------------------------------------


async def test_sigkilled_wal_collector_loses_no_answered_event(
    tmp_path: Path, kafka_bootstrap: str, kafka_topic: str
):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        "kafka_bootstrap": kafka_bootstrap,
        "kafka_topic": kafka_topic,
        "durability": "wal",
        "spool_segment_max_age_ms": "200",
    }
    answered: set[int] = set()
    with serve(tmp_path, port, **env) as proc:
        async with aiohttp.ClientSession() as http:
            for marker in range(400):
                async with http.get(pixel_url(base, marker)) as response:
                    assert response.status == 200
                    answered.add(marker)
        proc.send_signal(signal.SIGKILL)  # right after the last answer: no time to flush
        assert proc.wait(10) == -signal.SIGKILL
    spool_dir = tmp_path / "spool"
    left_open = [name for name in segments_of(spool_dir, proc.pid) if name.endswith(OPEN_SUFFIX)]
    assert left_open  # what the kill left open
    with serve(tmp_path, port, **env):  # recovers the open segment and replays it
        # Closed at start, before the process is ready.
        assert not [n for n in segments_of(spool_dir, proc.pid) if n.endswith(OPEN_SUFFIX)]
        rows = await read_topic(kafka_bootstrap, kafka_topic, answered)
        # Each replayed segment is deleted once Kafka acknowledged it.
        deadline = time.monotonic() + 20
        while segments_of(spool_dir, proc.pid):
            assert time.monotonic() < deadline, f"not replayed: {segments_of(spool_dir, proc.pid)}"
            await asyncio.sleep(0.1)
    # Kafka alone, not the disk: an event still in a segment has not been replayed.
    assert distinct_markers(rows) == answered


async def test_the_largest_array_fits_the_smallest_spool(spool_client, settings, metrics):
    """An array is kept whole or refused: at the smallest spool a collector takes, the largest
    one (every event at the body's limit, the page address and user agent from the request's
    headers at their caps, in characters JSON escapes) is kept, not refused for good."""
    client = await spool_client(max_bytes=SPOOL_MIN_BYTES, durability="wal")
    worst = '"\\' * 2040  # two bytes each, escaped: doubled; under a header's 8190
    events = [{"e": "click", "p": {"n": str(i)}} for i in range(MAX_BATCH_EVENTS)]
    headers = {"Referer": "https://shop.example/" + worst, "User-Agent": worst}
    response = await client.post("/e", json=events, headers=headers)
    assert response.status == 204, await response.text()
    stored = sum(p.stat().st_size for p in settings.spool_dir.iterdir())
    assert stored > SPOOL_MIN_BYTES // 3  # the caps did not shrink the test's own events
    assert on_disk(settings.spool_dir) == set(range(MAX_BATCH_EVENTS))


class DiskCheckingTransport(Transport):
    """Notes, at each write of answers, the recipients the log's files hold at that moment."""

    def __init__(self, spool_dir: Path) -> None:
        super().__init__()
        self.spool_dir = spool_dir
        self.on_disk_at_write: list[set[str]] = []

    def write(self, data: bytes) -> None:
        files = [
            p for p in self.spool_dir.iterdir() if p.name.endswith((OPEN_SUFFIX, CLOSED_SUFFIX))
        ]
        lines = [x for p in files for x in p.read_bytes().splitlines()]
        self.on_disk_at_write.append({orjson.loads(line)["recipient"] for line in lines})
        super().write(data)


async def test_held_answers_go_after_one_write_of_their_events(
    settings: Settings, metrics: CollectorMetrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under load (here: two reads a millisecond) the fast path holds its answers to the end
    of the loop iteration; the log writes the held reads' events in one write first, and
    they are counted recorded then."""
    monkeypatch.setattr(fastpath, "BUSY_READS", 2)
    config = replace(settings, sink="spool", durability="wal", spool_segment_idle_ms=3_600_000,
                     spool_segment_max_age_ms=3_600_000)  # fmt: skip
    sink = SpoolSink(config.spool_dir, metrics, **spool_limits(config))
    collector = create_app(config, sink, metrics)[COLLECTOR]
    paths = fastpath.FastPaths(collector, metrics, 60.0)
    transports = [DiskCheckingTransport(config.spool_dir) for _ in range(3)]
    connections = []
    for transport in transports:
        connection = fastpath.PixelFastPath(paths, asyncio.Protocol)
        connection.connection_made(transport)  # type: ignore[arg-type]
        connections.append(connection)
    warm = 0
    while not paths.held:  # until a read is held: two reads within one millisecond
        assert warm < 1000
        warm += 1
        connections[0].data_received(pixel(f"s=held&r=w{warm}", UA))
    writes = metric_value(metrics, "beacon_wal_writes_total")
    for i in (1, 2):
        connections[i].data_received(pixel(f"s=held&r=c{i}", UA))
    # Every read of this iteration since waits: none of the three is answered yet.
    assert [answer.count(b"200 OK") for _, answer, _ in paths.held] == [1, 1, 1]
    assert not transports[1].written and not transports[2].written
    await asyncio.sleep(0)  # the end of the loop iteration
    assert not paths.held
    # One write of the three held events, each on disk before its answer went out.
    assert metric_value(metrics, "beacon_wal_writes_total") == writes + 1
    assert transports[0].on_disk_at_write[-1] >= {f"w{warm}", "c1", "c2"}
    assert "c1" in transports[1].on_disk_at_write[-1]
    assert "c2" in transports[2].on_disk_at_write[-1]
    recorded = metric_value(metrics, "beacon_requests_total", endpoint="pixel", outcome="recorded")
    assert recorded == warm + 2
    for connection in connections:
        connection.connection_lost(None)
    await collector.buffer.close()
