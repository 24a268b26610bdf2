"""Collector faults on real `beacon serve` processes and a real Kafka broker.

Every case sends marked pixel requests (`p.n=<case>-<i>`, campaign `<case>`) from keep-alive
clients, injects its fault mid-load, and counts **sent** (markers answered 200) against
**stored**, each marker under a single event id: for the Kafka cases the distinct markers read
back from the topic (after a SIGKILL, once a new process on the same data directory has closed
and replayed what the killed one left; after a SIGTERM nothing may be left in the spool), for
the embedded spool case those in the spool's segments. The consumer half (Kafka to ClickHouse)
is covered by test_pipeline_faults.py.
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

from collector.settings import SPOOL_MIN_BYTES
from contract.segments import CLOSED_SUFFIX, OPEN_SUFFIX, closed_segments
from tests.faults.conftest import (
    Proc,
    Procs,
    base_url,
    create_topics,
    http_get,
    metric_sum,
    scrape,
)
from tests.faults.report import record
from tests.support.helpers import segments_of

LOAD_S = 1.5  # load before the fault
SPOOL_FULL_TIMEOUT_S = 60.0  # load until the smallest spool is full, at most this long
MAX_REQUESTS = 8000  # per case, whatever the machine's speed
CONCURRENCY = 8
RATE_PER_S = 2000  # all clients together: the fault lands mid-load, not after it
# The memory mode's promise under SIGKILL: what was answered in the last linger_ms plus one
# Kafka ack deadline (kafka_timeout_ms, 5 s by default) may be lost; nothing older.
MEMORY_KILL_WINDOW_BOUND_S = 0.02 + 5.0
KAFKA_UP_TIMEOUT_S = 30.0
# After a restart every answered marker is in Kafka; the replay deletes a segment once Kafka
# acknowledged it, so the killed process's segments go soon after (a failed try is retried
# within the replay's 0.5 s poll; one ack deadline is 5 s).
REPLAY_CLEANUP_TIMEOUT_S = 20.0
RECOVERY_TIMEOUT_S = 10.0  # spool case: ready again once a consumer took the closed segments


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

    def running(self) -> bool:
        """Some client has markers left to send."""
        return any(not task.done() for task in self._tasks)

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


async def wait_segments_gone(spool_dir: Path, pid: int, timeout_s: float) -> list[str]:
    """Poll until no segment of process `pid` is left (replayed and deleted), or timeout_s;
    returns what is left."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = segments_of(spool_dir, pid)
        if not left or time.monotonic() > deadline:
            return left
        await asyncio.sleep(0.1)


async def topic_records(
    bootstrap: str, topic: str, want: set[str], case: str, quiet_s: float
) -> list[tuple[bytes, int]]:
    """(event, timestamp_ms) of the events of `topic` (a record holds one, or an NDJSON chunk
    of several: each line with its record's timestamp) until every `want` marker is in, or
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
            fresh = [
                (line, r.timestamp)
                for rs in batches.values()
                for r in rs
                if r.value
                for line in r.value.split(b"\n")
            ]
            if fresh:
                last_new = time.monotonic()
                lines.extend(fresh)
                seen |= set(case_rows([value for value, _ in fresh], case))
            elif want <= seen:
                break
    finally:
        await consumer.stop()
    return lines


def doubled_markers(ids: dict[str, set[str]]) -> list[str]:
    """Markers stored under two event ids (a double count, which fails a case)."""
    return sorted(marker for marker, event_ids in ids.items() if len(event_ids) > 1)


async def wait_exit(popen: subprocess.Popen[bytes], timeout_s: float = 30.0) -> int | None:
    """The exit code, or None if the process had not exited in timeout_s (then SIGKILLed)."""
    try:
        return await asyncio.to_thread(popen.wait, timeout_s)
    except subprocess.TimeoutExpired:
        popen.kill()
        await asyncio.to_thread(popen.wait)
        return None


async def wait_kafka_up(proc: Proc) -> None:
    """Wait until the collector's producer reaches the broker: it connects in the background,
    and events taken before that go to the spool (replayed later, not what a case measures)."""
    deadline = time.monotonic() + KAFKA_UP_TIMEOUT_S
    while metric_sum(await asyncio.to_thread(scrape, base_url(proc)), "beacon_kafka_up") != 1:
        assert time.monotonic() < deadline, f"Kafka never up:\n{proc.log_tail()}"
        await asyncio.sleep(0.05)


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
    await wait_kafka_up(serve)
    load = TimedLoad(base_url(serve), case).start()
    await asyncio.sleep(LOAD_S)
    spilled_before_stop = metric_sum(scrape(base_url(serve)), "beacon_kafka_spilled_events_total")
    assert serve.popen is not None
    signalled = time.monotonic()
    serve.popen.terminate()
    exit_code = await wait_exit(serve.popen)
    stopped_s = time.monotonic() - signalled
    await asyncio.sleep(0.2)  # the load sees refused connections now
    await load.stop()

    sent = load.sent()
    left = case_rows(spool_lines(data_dir / "spool"), case)
    records = await topic_records(kafka_bootstrap, topic, sent, case, quiet_s=3.0)
    in_kafka = case_rows([value for value, _ in records], case)
    # Answer to Kafka: the WAL ships closed segments, so its latency grows by the segment age.
    p50_ms, p99_ms = latency_ms(records, case)
    record(
        case,
        sent=len(sent),
        stored=len(sent & in_kafka.keys()),
        loss_window_s=None,
        promise="no loss: drain, then every event to Kafka; nothing left in the spool",
        left_in_spool=len(left),
        spilled_before_stop=int(spilled_before_stop),
        exit_code=str(exit_code),
        stop_s=round(stopped_s, 2),
        refused=load.errors,
        non_200=load.other_status,
        kafka_latency_p50_ms=p50_ms,
        kafka_latency_p99_ms=p99_ms,
    )
    assert exit_code == 0, serve.log_tail()
    assert load.other_status == 0
    assert not doubled_markers(in_kafka), f"double counts: {doubled_markers(in_kafka)[:5]}"
    # The broker is up throughout: `memory` produced its buffer and `wal` shipped its segments
    # before exit; an event left for the next start would be late, and lost if none came.
    assert not left, f"{len(left)} events left in the spool at exit: {sorted(left)[:5]}"
    assert sent and sent <= in_kafka.keys(), f"{len(sent - in_kafka.keys())} not in Kafka"


@pytest.mark.parametrize("durability", ["memory", "wal"])
async def test_collector_sigkill_under_load(
    procs: Procs, tmp_path: Path, kafka_bootstrap: str, durability: str
) -> None:
    case = f"collector_sigkill_{durability}"
    topic = f"faults.{case}.{int(time.time() * 1000)}"
    await create_topics(kafka_bootstrap, topic)
    data_dir = tmp_path / "data"
    spool_dir = data_dir / "spool"
    settings = kafka_settings(kafka_bootstrap, topic, durability)
    serve = procs.collector(data_dir, **settings)
    await wait_kafka_up(serve)
    assert serve.popen is not None
    killed_pid = serve.popen.pid
    load = TimedLoad(base_url(serve), case).start()
    await asyncio.sleep(LOAD_S)
    # Events Kafka acknowledged before the kill (at least this many: the count only grows).
    acked_before_kill = (await asyncio.to_thread(scrape, base_url(serve))).get(
        'beacon_kafka_events_total{outcome="acked"}', 0.0
    )
    killed = time.monotonic()
    serve.kill()
    await asyncio.sleep(0.2)
    await load.stop()
    sent = load.sent()
    left_open = [name for name in segments_of(spool_dir, killed_pid) if name.endswith(OPEN_SUFFIX)]

    # The next start closes what the kill left open (before it answers) and replays the spool
    # to Kafka. Stored is what reached Kafka: an event still on disk has not been replayed.
    restarted = procs.collector(data_dir, **settings)
    open_after_restart = [
        name for name in segments_of(spool_dir, killed_pid) if name.endswith(OPEN_SUFFIX)
    ]
    records = await topic_records(kafka_bootstrap, topic, sent, case, quiet_s=4.0)
    # Replayed segments are deleted once Kafka acknowledged them.
    left_after_replay = await wait_segments_gone(spool_dir, killed_pid, REPLAY_CLEANUP_TIMEOUT_S)
    restart_exit_code = restarted.terminate()
    in_kafka = case_rows([value for value, _ in records], case)
    lost = sent - in_kafka.keys()
    # The loss window: how long before the kill the oldest lost event was answered (0 when
    # the client only read its answer after the kill: it was on the wire).
    window_s = round(max(0.0, killed - min(load.answered[m] for m in lost)), 3) if lost else 0.0
    record(
        case,
        sent=len(sent),
        stored=len(sent & in_kafka.keys()),
        loss_window_s=window_s if durability == "memory" else None,
        promise=(
            "no answered event lost: the open segment closed at restart and replayed to Kafka"
            if durability == "wal"
            else f"loss only within linger_ms + kafka_timeout_ms ({MEMORY_KILL_WINDOW_BOUND_S} s)"
        ),
        answered_last_1s=sum(1 for t in load.answered.values() if killed - t <= 1.0),
        acked_before_kill=int(acked_before_kill),
        open_segments_left_by_kill=len(left_open),
        open_after_restart=len(open_after_restart),
        segments_after_replay=len(left_after_replay),
        restart_exit_code=str(restart_exit_code),
        non_200=load.other_status,
    )
    assert load.other_status == 0
    assert sent
    assert not doubled_markers(in_kafka), f"double counts: {doubled_markers(in_kafka)[:5]}"
    assert not open_after_restart, f"the restart left the kill's open: {open_after_restart}"
    assert not left_after_replay, f"the kill's segments not replayed: {left_after_replay}"
    assert restart_exit_code == 0, restarted.log_tail()
    if durability == "wal":
        # Under load the log always has a segment open (a new one opens at the next event
        # after a close): the kill leaves it, so the restart's recovery is what is tested.
        assert left_open, "the kill left no open segment: recovery not exercised"
        assert not lost, f"{len(lost)} answered events not in Kafka: {sorted(lost)[:5]}"
    else:
        # The memory mode's promise, without a clock: what may be lost is what Kafka had not
        # yet acknowledged, so every event acknowledged before the kill is in the topic after
        # it. How long before the kill the lost ones were answered is loss_window_s, recorded.
        assert len(in_kafka) >= acked_before_kill, (
            f"{acked_before_kill:.0f} acknowledged before the kill, {len(in_kafka)} in Kafka"
        )


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
        spool_max_bytes=SPOOL_MIN_BYTES,  # about 2,400 events of this load
        spool_segment_max_age_ms=100,
        flush_interval_ms=100,
    )
    base = base_url(serve)
    load = TimedLoad(base, case).start()
    # Until the spool is full (~2,400 events of this load): however slow the machine is today.
    began = time.monotonic()
    while time.monotonic() - began < SPOOL_FULL_TIMEOUT_S and load.running():
        if metric_sum(scrape(base), "beacon_events_dropped_total"):
            break
        await asyncio.sleep(0.2)
    await load.stop()
    dropped_when_full = metric_sum(scrape(base), "beacon_events_dropped_total")
    ready_when_full = http_get(base + "/readyz")[0]
    healthy_when_full = http_get(base + "/healthz")[0]  # up, and answering

    # A consumer takes the closed segments: readiness and intake come back.
    taken: list[bytes] = []
    freed = time.monotonic()
    recovered_s: float | None = None
    while time.monotonic() - freed < RECOVERY_TIMEOUT_S:
        if http_get(base + "/readyz")[0] == 200:
            recovered_s = time.monotonic() - freed
            break
        for path in closed_segments(spool_dir):
            taken.extend(line for line in path.read_bytes().splitlines() if line)
            path.unlink()
        await asyncio.sleep(0.05)
    after = TimedLoad(base, case, first=MAX_REQUESTS)  # markers of their own
    if recovered_s is not None:
        after.start()
        await asyncio.sleep(0.2)
        await after.stop()
        await asyncio.sleep(0.1)  # past linger_ms: the buffer has handed everything to the spool
    final = scrape(base)
    exit_code = serve.terminate()

    sent = load.sent() | after.sent()
    ids = case_rows(taken + spool_lines(spool_dir), case)
    stored = set(ids)
    dropped = int(metric_sum(final, "beacon_events_dropped_total"))
    # Every reason is exported from the start, at 0: the ones that counted something.
    reasons = {k: v for k, v in final.items() if k.startswith("beacon_events_dropped_total") and v}
    record(
        case,
        sent=len(sent),
        stored=len(sent & stored),
        loss_window_s=None,
        promise="every drop counted (spool_full); serving throughout; intake back once freed",
        dropped_counted=dropped,
        ready_when_full=ready_when_full,
        healthy_when_full=healthy_when_full,
        recovered_s=-1.0 if recovered_s is None else round(recovered_s, 2),
        sent_after_free=len(after.sent()),
        stored_after_free=len(after.sent() & stored),
        non_200=load.other_status + after.other_status,
        refused=load.errors + after.errors,
        reasons=",".join(sorted(reasons)),
        exit_code=str(exit_code),
    )
    assert healthy_when_full == 200
    assert recovered_s is not None, "never ready again after space was freed"
    assert exit_code == 0, serve.log_tail()
    assert not doubled_markers(ids), f"double counts: {doubled_markers(ids)[:5]}"
    assert load.other_status == 0 and after.other_status == 0  # every pixel answered 200
    assert load.errors == 0 and after.errors == 0  # none reset or timed out unanswered
    assert set(reasons) == {'beacon_events_dropped_total{reason="spool_full"}'}
    assert dropped_when_full > 0 and ready_when_full == 503
    assert len(sent - stored) == dropped  # nothing lost that was not counted
    assert after.sent() and after.sent() <= stored  # intake recovered
