"""Collector faults on real `beacon serve` processes and a real Kafka broker.

Every case sends marked pixel requests (`p.n=<case>-<i>`, campaign `<case>`) from keep-alive
clients, injects its fault mid-load, and counts **sent** (markers answered 200) against
**stored**: distinct markers read back from the Kafka topic plus those left in the spool
directory (which the next start replays), each marker under a single event id. The consumer
half (Kafka to ClickHouse) is covered by test_pipeline_faults.py.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from collector.sinks.spool import CLOSED_SUFFIX, OPEN_SUFFIX, closed_segments
from tests.faults.conftest import Procs, base_url, create_topics, http_get, metric_sum, scrape
from tests.faults.report import record

pytestmark = pytest.mark.slow

LOAD_S = 1.5  # load before the fault
MAX_REQUESTS = 8000  # per case, whatever the machine's speed
CONCURRENCY = 8
RATE_PER_S = 2000  # all clients together: the fault lands mid-load, not after it
# The memory mode's promise under SIGKILL: what was answered in the last linger_ms plus one
# Kafka ack deadline (kafka_timeout_ms, 5 s by default) may be lost; nothing older.
MEMORY_KILL_WINDOW_BOUND_S = 0.02 + 5.0


class TimedLoad:
    """Marked pixel requests at up to RATE_PER_S from CONCURRENCY keep-alive clients, and when
    each marker was answered."""

    def __init__(self, base: str, case: str, first: int = 0) -> None:
        self.base, self.case = base, case
        self._next, self._end = first, first + MAX_REQUESTS
        self.answered: dict[str, float] = {}  # marker -> monotonic time of its 200
        self.errors = 0  # refused or reset connections: not sent, the client knows
        self.other_status = 0  # anything but 200 (the pixel has none)
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> TimedLoad:
        self._tasks = [asyncio.create_task(self._client()) for _ in range(CONCURRENCY)]
        return self

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def sent(self) -> set[str]:
        return set(self.answered)

    async def _client(self) -> None:
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while not self._stop.is_set() and self._next < self._end:
                started = time.monotonic()
                marker = f"{self.case}-{self._next}"
                self._next += 1
                params = {"e": "impression", "s": "faults", "c": self.case, "p.n": marker}
                try:
                    async with http.get(f"{self.base}/p.gif", params=params) as r:
                        await r.read()
                        if r.status == 200:
                            self.answered[marker] = time.monotonic()
                        else:
                            self.other_status += 1
                except (aiohttp.ClientError, TimeoutError):
                    self.errors += 1
                    await asyncio.sleep(0.01)  # the process is gone: do not spin
                pause_s = CONCURRENCY / RATE_PER_S - (time.monotonic() - started)
                await asyncio.sleep(max(0.0, pause_s))


# -- reading back what was stored ---------------------------------------------------------------


def latency_ms(records: list[tuple[bytes, int]], case: str) -> tuple[int, int]:
    """(median, p99) of Kafka record time minus the event's receive time, in ms."""
    delays = sorted(
        timestamp_ms - row["received_at"]
        for raw, timestamp_ms in records
        if (row := orjson.loads(raw)).get("campaign") == case
    )
    if not delays:
        return 0, 0
    return delays[len(delays) // 2], delays[min(len(delays) - 1, len(delays) * 99 // 100)]


def case_rows(raw_rows: list[bytes], case: str) -> dict[str, set[str]]:
    """marker -> event ids, for the rows of `case`."""
    out: dict[str, set[str]] = {}
    for raw in raw_rows:
        row = orjson.loads(raw)
        if row.get("campaign") == case:
            out.setdefault(row["props"]["n"], set()).add(row["event_id"])
    return out


def spool_lines(spool_dir: Path) -> list[bytes]:
    lines: list[bytes] = []
    for path in sorted(spool_dir.glob("*.ndjson*")):
        if path.name.endswith((CLOSED_SUFFIX, OPEN_SUFFIX)):
            lines.extend(line for line in path.read_bytes().splitlines() if line)
    return lines


async def topic_records(
    bootstrap: str, topic: str, want: set[str], case: str, quiet_s: float
) -> list[tuple[bytes, int]]:
    """(value, timestamp_ms) of the records of `topic` until every `want` marker is in, or
    nothing new came for quiet_s."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    lines: list[tuple[bytes, int]] = []
    seen: set[str] = set()
    last_new = time.monotonic()
    try:
        while time.monotonic() - last_new < quiet_s:
            batches = await consumer.getmany(timeout_ms=300)
            fresh = [(r.value, r.timestamp) for rs in batches.values() for r in rs if r.value]
            if fresh:
                last_new = time.monotonic()
                lines.extend(fresh)
                seen |= set(case_rows([value for value, _ in fresh], case))
            elif want <= seen:
                break
    finally:
        await consumer.stop()
    return lines


def stored_markers(ids: dict[str, set[str]]) -> set[str]:
    """The distinct markers; fails on a marker stored under two event ids (a double count)."""
    doubled = [marker for marker, event_ids in ids.items() if len(event_ids) > 1]
    assert not doubled, f"stored twice under different event ids: {doubled[:5]}"
    return set(ids)


async def wait_exit(popen: subprocess.Popen[bytes], timeout_s: float = 30.0) -> int:
    return await asyncio.to_thread(popen.wait, timeout_s)


# -- the cases ------------------------------------------------------------------------------------


def kafka_settings(bootstrap: str, topic: str, durability: str) -> dict[str, str | int]:
    # Default segment age (1 s): the Kafka latency figures are those of the defaults.
    return {"kafka_bootstrap": bootstrap, "kafka_topic": topic, "durability": durability}


@pytest.mark.parametrize("durability", ["memory", "wal"])
async def test_collector_sigterm_under_load(
    procs: Procs, tmp_path: Path, kafka_bootstrap: str, durability: str
) -> None:
    case = f"collector_sigterm_{durability}"
    topic = f"faults.{case}.{int(time.time() * 1000)}"
    await create_topics(kafka_bootstrap, topic)
    data_dir = tmp_path / "data"
    serve = procs.collector(data_dir, **kafka_settings(kafka_bootstrap, topic, durability))
    load = TimedLoad(base_url(serve), case).start()
    await asyncio.sleep(LOAD_S)
    assert serve.popen is not None
    signalled = time.monotonic()
    serve.popen.terminate()
    exit_code = await wait_exit(serve.popen)
    stopped_s = time.monotonic() - signalled
    await asyncio.sleep(0.2)  # the load sees refused connections now
    await load.stop()
    assert exit_code == 0, serve.log_tail()

    sent = load.sent()
    left = spool_lines(data_dir / "spool")
    records = await topic_records(kafka_bootstrap, topic, sent, case, quiet_s=3.0)
    stored = stored_markers(case_rows([value for value, _ in records] + left, case))
    # Answer to Kafka: the WAL ships closed segments, so its latency grows by the segment age.
    p50_ms, p99_ms = latency_ms(records, case)
    record(
        case,
        sent=len(sent),
        stored=len(sent & stored),
        loss_window_s=None,
        promise="no loss: drain, then every buffered event to Kafka or the spool",
        left_in_spool=len(case_rows(left, case)),
        stop_s=round(stopped_s, 2),
        refused=load.errors,
        non_200=load.other_status,
        kafka_latency_p50_ms=p50_ms,
        kafka_latency_p99_ms=p99_ms,
    )
    assert load.other_status == 0
    assert sent and sent <= stored


@pytest.mark.parametrize("durability", ["memory", "wal"])
async def test_collector_sigkill_under_load(
    procs: Procs, tmp_path: Path, kafka_bootstrap: str, durability: str
) -> None:
    case = f"collector_sigkill_{durability}"
    topic = f"faults.{case}.{int(time.time() * 1000)}"
    await create_topics(kafka_bootstrap, topic)
    data_dir = tmp_path / "data"
    settings = kafka_settings(kafka_bootstrap, topic, durability)
    serve = procs.collector(data_dir, **settings)
    load = TimedLoad(base_url(serve), case).start()
    await asyncio.sleep(LOAD_S)
    killed = time.monotonic()
    serve.kill()
    await asyncio.sleep(0.2)
    await load.stop()
    sent = load.sent()

    # The next start closes what the kill left open and replays the spool to Kafka.
    restarted = procs.collector(data_dir, **settings)
    records = await topic_records(kafka_bootstrap, topic, sent, case, quiet_s=4.0)
    restarted.terminate()
    in_kafka = [value for value, _ in records]
    stored = stored_markers(case_rows(in_kafka + spool_lines(data_dir / "spool"), case))
    lost = sent - stored
    # The loss window: how long before the kill the oldest lost event was answered (0 when
    # the client only read its answer after the kill: it was on the wire).
    window_s = round(max(0.0, killed - min(load.answered[m] for m in lost)), 3) if lost else 0.0
    record(
        case,
        sent=len(sent),
        stored=len(sent & stored),
        loss_window_s=window_s if durability == "memory" else None,
        promise=(
            "no answered event lost"
            if durability == "wal"
            else f"loss only within linger_ms + kafka_timeout_ms ({MEMORY_KILL_WINDOW_BOUND_S} s)"
        ),
        answered_last_1s=sum(1 for t in load.answered.values() if killed - t <= 1.0),
        non_200=load.other_status,
    )
    assert load.other_status == 0
    assert sent
    if durability == "wal":
        assert not lost, f"{len(lost)} answered events lost: {sorted(lost)[:5]}"
    else:
        assert window_s <= MEMORY_KILL_WINDOW_BOUND_S


@pytest.mark.parametrize("durability", ["memory", "wal"])
async def test_spool_at_its_byte_limit(procs: Procs, tmp_path: Path, durability: str) -> None:
    """Embedded mode (spool sink): a full spool drops with a count, serves on, and recovers."""
    case = f"spool_full_{durability}"
    data_dir = tmp_path / "data"
    spool_dir = data_dir / "spool"
    serve = procs.collector(
        data_dir,
        sink="spool",
        durability=durability,
        spool_max_bytes=256 * 1024,  # about 600 events of this load
        spool_segment_max_age_ms=100,
        flush_interval_ms=100,
    )
    base = base_url(serve)
    load = TimedLoad(base, case).start()
    await asyncio.sleep(LOAD_S)
    await load.stop()
    dropped_when_full = metric_sum(scrape(base), "beacon_events_dropped_total")
    ready_when_full = http_get(base + "/readyz")[0]
    assert http_get(base + "/healthz")[0] == 200  # up, and answering

    # A consumer takes the closed segments: readiness and intake come back.
    taken: list[bytes] = []
    freed = time.monotonic()
    while http_get(base + "/readyz")[0] != 200:
        for path in closed_segments(spool_dir):
            taken.extend(line for line in path.read_bytes().splitlines() if line)
            path.unlink()
        assert time.monotonic() - freed < 10, "never ready again after space was freed"
        await asyncio.sleep(0.05)
    recovered_s = time.monotonic() - freed
    after = TimedLoad(base, case, first=MAX_REQUESTS).start()  # markers of their own
    await asyncio.sleep(0.2)
    await after.stop()
    await asyncio.sleep(0.1)  # past linger_ms: the buffer has handed everything to the spool
    final = scrape(base)
    assert serve.terminate() == 0

    sent = load.sent() | after.sent()
    stored = stored_markers(case_rows(taken + spool_lines(spool_dir), case))
    dropped = int(metric_sum(final, "beacon_events_dropped_total"))
    reasons = {k: v for k, v in final.items() if k.startswith("beacon_events_dropped_total")}
    record(
        case,
        sent=len(sent),
        stored=len(sent & stored),
        loss_window_s=None,
        promise="every drop counted (spool_full); serving throughout; intake back once freed",
        dropped_counted=dropped,
        ready_when_full=ready_when_full,
        recovered_s=round(recovered_s, 2),
        sent_after_free=len(after.sent()),
        stored_after_free=len(after.sent() & stored),
        non_200=load.other_status + after.other_status,
        reasons=",".join(sorted(reasons)),
    )
    assert load.other_status == 0 and after.other_status == 0  # every pixel answered 200
    assert set(reasons) == {'beacon_events_dropped_total{reason="spool_full"}'}
    assert dropped_when_full > 0 and ready_when_full == 503
    assert len(sent - stored) == dropped  # nothing lost that was not counted
    assert after.sent() and after.sent() <= stored  # intake recovered
