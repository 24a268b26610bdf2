"""Pipeline faults under load: Kafka stopped and slowed, a consumer SIGKILLed mid-batch,
ClickHouse failing. Real `beacon serve` (Kafka sink) and `beacon consume` subprocesses, a real
broker of this module's own behind a delaying proxy, real chDB.

Each case sends marked pixels throughout, injects its fault, lets the pipeline recover, and
records sent (answered 200) against stored (distinct markers after dedup). The promise for
all four is the same: nothing answered is lost and nothing is counted twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from analytics.store.http import INSERT_QUERY_ID_PREFIX
from tests.faults.conftest import (
    Load,
    Proc,
    Procs,
    Query,
    Verdict,
    base_url,
    create_topics,
    http_get,
    kafka_settings,
    metric_sum,
    raw_rows,
    scrape,
    store_port_query,
    wait_stored,
)
from tests.faults.proxy import DelayProxy
from tests.faults.report import record
from tests.support import kafka_broker
from tests.support.clickhouse_front import ClickHouseFront, Seen

pytestmark = [pytest.mark.timeout(150)]

PROMISE = "zero loss, no double count"
RATE_PER_S = 150.0  # pixels per second of every case: a few thousand per case
OUTAGE_S = 10.0  # how long the broker stays down / ClickHouse keeps failing
CATCH_UP_TIMEOUT_S = 60.0
SETTLE_S = 1.0  # after everything is stored: time for a late repeat to show
KAFKA_TIMEOUT_MS = 1500  # the collector's produce timeout: a verdict on a dead broker soon
READYZ_INTERVAL_S = 0.15  # how often /readyz is asked during the broker outage
READYZ_TIMEOUT_S = 5.0  # a load balancer's usual health check timeout


@dataclass
class ProxiedBroker:
    """A broker of this module's own that advertises a DelayProxy's port, so every client's
    traffic (collector and consumer) passes the proxy; it can be stopped and started again."""

    dir: Path
    proxy: DelayProxy
    port: int
    controller_port: int
    running: Any = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.proxy.port}"

    def start(self) -> None:
        if self.running is None:
            kafka = kafka_broker.load_kafka_script()
            self.running = kafka.start_broker(
                self.dir, self.port, self.controller_port, advertised_port=self.proxy.port
            )

    def stop(self) -> None:
        if self.running is not None:
            self.running.stop()
            self.running = None


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxiedBroker]:
    port, controller_port = kafka_broker.free_ports(2)
    proxy = DelayProxy(port).start()
    own = ProxiedBroker(tmp_path_factory.mktemp("faults-kafka"), proxy, port, controller_port)
    try:
        own.start()
        yield own
    finally:
        own.stop()
        proxy.stop()


@dataclass
class Pipeline:
    """One case's collector and consumer on a fresh topic, and the marker prefix of its load."""

    prefix: str
    topic: str
    collector: Proc
    consumer: Proc
    query: Query

    @property
    def base(self) -> str:
        return base_url(self.collector)

    def collector_metrics(self) -> dict[str, float]:
        return scrape(self.base)

    def consumer_metrics(self) -> dict[str, float]:
        return scrape(base_url(self.consumer))


def consumer_settings(bootstrap: str, topic: str) -> dict[str, str | int]:
    """Consumer settings of every case: short batches and retries, so a case ends soon."""
    return {
        **kafka_settings(bootstrap, topic),
        "batch_max_age_ms": 500,
        "retry_max_ms": 2000,
        # A killed member's partitions go to the next one after this (the broker's minimum).
        "kafka_session_timeout_ms": 6000,
    }


async def start_pipeline(
    procs: Procs, tmp_path: Path, broker: ProxiedBroker, case: str, **consumer: str | int
) -> Pipeline:
    """A fresh topic, `beacon serve` with the Kafka sink and `beacon consume` on it."""
    await asyncio.to_thread(broker.start)  # a case that failed half-way may have left it down
    topic = f"faults.{case}.{uuid.uuid4().hex[:8]}"
    await create_topics(broker.bootstrap, topic)
    collector = await asyncio.to_thread(
        procs.collector,
        tmp_path / "collector",
        sink="kafka",
        kafka_timeout_ms=KAFKA_TIMEOUT_MS,
        spool_segment_max_age_ms=200,
        flush_interval_ms=200,
        **kafka_settings(broker.bootstrap, topic),
    )
    settings = {**consumer_settings(broker.bootstrap, topic), **consumer}
    consumer_proc = await asyncio.to_thread(procs.consumer, tmp_path / "consumer", settings)
    port = int(consumer_proc.env["BEACON_STORE_PORT"])
    prefix = f"{case}-{uuid.uuid4().hex[:6]}"
    return Pipeline(prefix, topic, collector, consumer_proc, store_port_query(port))


async def wait_kafka_up(pipe: Pipeline, want: int, timeout_s: float) -> float:
    """Poll the collector's `beacon_kafka_up` until it is `want`; seconds waited."""
    started = time.monotonic()
    while metric_sum(pipe.collector_metrics(), "beacon_kafka_up") != want:
        assert time.monotonic() - started < timeout_s, f"beacon_kafka_up never became {want}"
        await asyncio.sleep(0.1)
    return time.monotonic() - started


async def sample_status(url: str, samples: list[tuple[int, float]], stop: asyncio.Event) -> None:
    """GET url every READYZ_INTERVAL_S until `stop`: (status, seconds to answer) per sample,
    status 0 when nothing answered within READYZ_TIMEOUT_S."""
    while not stop.is_set():
        asked = time.monotonic()
        status = (await asyncio.to_thread(http_get, url, READYZ_TIMEOUT_S))[0]
        samples.append((status, time.monotonic() - asked))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), READYZ_INTERVAL_S)


Exits = tuple[int | None, int | None]  # collector's and consumer's exit codes (None: SIGKILLed)


async def stop_both(pipe: Pipeline, consumer: Proc | None = None) -> Exits:
    """SIGTERM collector and consumer (off the loop: a front in this process must answer the
    consumer's last insert); their exit codes, which `check` wants both 0."""
    collector_code = await asyncio.to_thread(pipe.collector.terminate)
    consumer_code = await asyncio.to_thread((consumer or pipe.consumer).terminate)
    return collector_code, consumer_code


async def finish(pipeline: Pipeline, load: Load, query: Query | None = None) -> Verdict:
    """Stop the load, wait for every answered marker to be stored, then count once more a
    moment later: a late replay that stored a marker twice would show by then."""
    await load.stop()
    query = query or pipeline.query
    result, _ = await wait_stored(query, pipeline.prefix, load.answered, CATCH_UP_TIMEOUT_S)
    if result.lost:
        return result
    await asyncio.sleep(SETTLE_S)
    final, _ = await wait_stored(query, pipeline.prefix, load.answered, 0)
    return final


def check(result: Verdict, load: Load, exits: Exits) -> None:
    """The promise of every case: enough load, nothing lost, nothing counted twice; collector
    and consumer exit cleanly on SIGTERM (their logs are in the test's tmp_path)."""
    assert exits == (0, 0), f"collector/consumer exit codes {exits}"
    assert result.sent > 1000, f"too little load to mean anything: {result}, {load.failures}"
    # Every pixel answered 200 whatever fails behind the collector (its spool takes events).
    assert not load.failures, f"pixels not answered 200: {dict(load.failures)}"
    assert not result.lost, f"{result.sent - result.stored} answered events lost: {result}"
    assert not result.doubles, f"markers stored under two event ids: {result}"


# -- Kafka stopped and started again under load --------------------------------------------


async def test_kafka_broker_restart_under_load(
    procs: Procs, tmp_path: Path, broker: ProxiedBroker
) -> None:
    pipe = await start_pipeline(procs, tmp_path, broker, "kafka_restart")
    load = Load(pipe.base, pipe.prefix, RATE_PER_S).start()
    await asyncio.sleep(4)

    # Still ready from the stop until the producer is back: the spool takes the events, so a
    # load balancer keeps sending them here.
    readyz: list[tuple[int, float]] = []
    reconnected = asyncio.Event()
    sampler = asyncio.create_task(sample_status(pipe.base + "/readyz", readyz, reconnected))
    try:
        down_at = time.monotonic()
        await asyncio.to_thread(broker.stop)
        noticed_s = await wait_kafka_up(pipe, 0, 30)
        sampled_when_noticed = len(readyz)
        await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
        sampled_while_down = len(readyz) - sampled_when_noticed
        during = pipe.collector_metrics()
        restart_at = time.monotonic()
        await asyncio.to_thread(broker.start)  # same data dir, same ports
        up_at = time.monotonic()
        reconnected_s = await wait_kafka_up(pipe, 1, 60)
    finally:
        reconnected.set()
        await sampler
    sampled_s = time.monotonic() - down_at
    not_ready = [status for status, _ in readyz if status != 200]
    await asyncio.sleep(4)

    result = await finish(pipe, load)
    stored_at = time.monotonic()
    after = pipe.collector_metrics()
    duplicates = raw_rows(pipe.query, pipe.prefix) - result.stored
    exits = await stop_both(pipe)
    record(
        "kafka_broker_restart",
        sent=result.sent,
        stored=result.stored,
        loss_window_s=None,
        promise=PROMISE,
        broker_down_s=round(restart_at - down_at, 1),
        outage_s=round(up_at - down_at, 1),
        kafka_down_noticed_after_s=round(noticed_s, 1),
        readyz_samples=len(readyz),
        readyz_samples_while_down=sampled_while_down,
        readyz_not_200=len(not_ready),
        readyz_sampled_s=round(sampled_s, 1),
        readyz_slowest_s=round(max(s for _, s in readyz), 2) if readyz else -1.0,
        kafka_up_after_restart_s=round(reconnected_s, 1),
        all_stored_after_restart_s=round(stored_at - up_at, 1),
        spilled_during_outage=int(metric_sum(during, "beacon_kafka_spilled_events_total")),
        replayed=int(metric_sum(after, "beacon_kafka_replayed_events_total")),
        repeats_awaiting_merge=duplicates,
        client_errors=sum(load.failures.values()),
        exit_codes="{}/{}".format(*exits),
    )
    check(result, load, exits)
    # The claim "throughout" was looked at: /readyz was asked after the collector knew Kafka
    # was down and before the broker came back (how many a second is the record's figure).
    assert sampled_while_down > 0, f"no /readyz sample while Kafka was down: {len(readyz)} in all"
    assert not not_ready, f"a collector that can spool must stay ready: {not_ready[:10]}"
    assert metric_sum(during, "beacon_kafka_spilled_events_total") > 0, "nothing spilled"
    assert metric_sum(after, "beacon_kafka_replayed_events_total") > 0, "nothing replayed"


# -- Kafka slowed by a delaying proxy between it and every client ---------------------------

SLOW_PHASES_MS_S = ((200.0, 8.0), (1000.0, 6.0))  # (delay each way, how long)


async def test_kafka_slowed_by_a_delaying_proxy(
    procs: Procs, tmp_path: Path, broker: ProxiedBroker
) -> None:
    pipe = await start_pipeline(procs, tmp_path, broker, "kafka_slow")
    load = Load(pipe.base, pipe.prefix, RATE_PER_S).start()
    await asyncio.sleep(3)
    forwarded_before = broker.proxy.forwarded_bytes
    slow_at = time.monotonic()
    try:
        for delay_ms, duration_s in SLOW_PHASES_MS_S:
            broker.proxy.delay_ms = delay_ms
            await asyncio.sleep(duration_s)
    finally:
        broker.proxy.delay_ms = 0.0
    fast_at = time.monotonic()
    slowed = pipe.collector_metrics()
    await asyncio.sleep(3)

    result = await finish(pipe, load)
    stored_at = time.monotonic()
    # A batch spilled on a late ack reached Kafka all the same: its events can be stored
    # before their spooled copy is replayed. Wait for the spool to be sent.
    after = pipe.collector_metrics()
    deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
    while time.monotonic() < deadline and metric_sum(
        after, "beacon_kafka_replayed_events_total"
    ) < metric_sum(after, "beacon_kafka_spilled_events_total"):
        await asyncio.sleep(0.2)
        after = pipe.collector_metrics()
    duplicates = raw_rows(pipe.query, pipe.prefix) - result.stored
    exits = await stop_both(pipe)
    spilled = {
        reason: int(after.get(f'beacon_kafka_spilled_events_total{{reason="{reason}"}}', 0))
        for reason in ("kafka_down", "timeout", "queue_full")
    }
    record(
        "kafka_slow_proxy",
        sent=result.sent,
        stored=result.stored,
        loss_window_s=None,
        promise=PROMISE,
        slow_s=round(fast_at - slow_at, 1),
        delays_ms="/".join(f"{d:.0f}" for d, _ in SLOW_PHASES_MS_S),
        all_stored_after_slow_s=round(stored_at - fast_at, 1),
        spilled_while_slow=int(metric_sum(slowed, "beacon_kafka_spilled_events_total")),
        **{f"spilled_{reason}": n for reason, n in spilled.items()},
        replayed=int(metric_sum(after, "beacon_kafka_replayed_events_total")),
        repeats_awaiting_merge=duplicates,
        client_errors=sum(load.failures.values()),
        exit_codes="{}/{}".format(*exits),
    )
    check(result, load, exits)
    assert broker.proxy.forwarded_bytes > forwarded_before, "no Kafka traffic through the proxy"
    # The delays took effect: events went to the spool (Kafka too slow to ack, or taken for
    # down), and every one of them was replayed.
    replayed = int(metric_sum(after, "beacon_kafka_replayed_events_total"))
    assert sum(spilled.values()) > 0, "Kafka never too slow for the collector"
    assert replayed == sum(spilled.values()), f"spilled {spilled}, replayed {replayed}"


# -- a consumer SIGKILLed while a batch is on its way ----------------------------------------

MAX_KILLS = 8
WANT_MID_BATCH_KILLS = 2
INFLIGHT_PREFIX = "beacon-inflight:"


Mark = tuple[int, str]  # (partition, commit metadata)


async def inflight_marks(admin: AIOKafkaAdminClient, group: str) -> set[Mark]:
    """The group's commits whose metadata says a batch is between its mark and its commit."""
    got = await admin.list_consumer_group_offsets(group)
    return {(tp.partition, meta.metadata) for tp, meta in got.items()
            if meta.metadata.startswith(INFLIGHT_PREFIX)}  # fmt: skip


async def kill_mid_batch(
    admin: AIOKafkaAdminClient, group: str, proc: Proc, stale: set[Mark]
) -> set[Mark]:
    """SIGKILL `proc` as soon as it marks a batch in flight (its insert is under way), not
    counting `stale` marks a killed predecessor left; returns the marks left after the kill."""
    deadline = time.monotonic() + 30
    while not (await inflight_marks(admin, group)) - stale:
        assert time.monotonic() < deadline, f"no batch in flight:\n{proc.log_tail()}"
        await asyncio.sleep(0.005)
    assert proc.popen is not None
    os.kill(proc.popen.pid, signal.SIGKILL)
    await asyncio.to_thread(proc.popen.wait)
    return await inflight_marks(admin, group)


async def test_consumer_sigkilled_mid_batch(
    procs: Procs, tmp_path: Path, broker: ProxiedBroker
) -> None:
    # Bigger batches (1 s of load, and the backlog after each restart) make longer inserts.
    pipe = await start_pipeline(procs, tmp_path, broker, "consumer_kill", batch_max_age_ms=1000)
    group = pipe.consumer.env["BEACON_KAFKA_GROUP"]
    load = Load(pipe.base, pipe.prefix, RATE_PER_S).start()
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    kills, mid_batch, replayed_batches = 0, 0, 0.0
    stale: set[Mark] = set()
    consumer = pipe.consumer
    try:
        await asyncio.sleep(2)
        first_kill_at = time.monotonic()
        while kills < MAX_KILLS and mid_batch < WANT_MID_BATCH_KILLS:
            replayed_batches += metric_sum(
                consumer_metrics(consumer), "beacon_consumer_replayed_batches_total"
            )
            left = await kill_mid_batch(admin, group, consumer, stale)
            # A new mark still there: the batch was stored or not, but never committed.
            mid_batch += bool(left - stale)
            stale = left
            kills += 1
            # The same data dir and query port: the store survives the process.
            settings = {**consumer_settings(broker.bootstrap, pipe.topic), "batch_max_age_ms": 1000}
            consumer = await asyncio.to_thread(
                procs.consumer,
                tmp_path / "consumer",
                settings,
                int(consumer.env["BEACON_STORE_PORT"]),
            )
        last_kill_at = time.monotonic()
        await asyncio.sleep(2)
        result = await finish(pipe, load)
        stored_at = time.monotonic()
    finally:
        await admin.close()
    replayed_batches += metric_sum(
        consumer_metrics(consumer), "beacon_consumer_replayed_batches_total"
    )
    duplicates = raw_rows(pipe.query, pipe.prefix) - result.stored
    exits = await stop_both(pipe, consumer)
    record(
        "consumer_sigkill_mid_batch",
        sent=result.sent,
        stored=result.stored,
        loss_window_s=None,
        promise=PROMISE,
        kills=kills,
        kills_mid_batch=mid_batch,
        kills_span_s=round(last_kill_at - first_kill_at, 1),
        all_stored_after_last_restart_s=round(stored_at - last_kill_at, 1),
        replayed_batches=int(replayed_batches),
        repeats_awaiting_merge=duplicates,
        client_errors=sum(load.failures.values()),
        exit_codes="{}/{}".format(*exits),
    )
    check(result, load, exits)
    # Not every kill is mid-batch by design: the kill follows the test's sight of the mark, and
    # a fast insert and commit can beat it. Hence up to MAX_KILLS tries, and at least one must.
    assert mid_batch >= 1, f"no kill landed between mark and commit in {kills} tries"
    # The next owner replays a marked range with its token: a batch that had landed is
    # dropped by ClickHouse itself, so no repeat reaches the table at all.
    assert duplicates == 0, f"{duplicates} repeated rows stored despite the insert tokens"


def consumer_metrics(proc: Proc) -> dict[str, float]:
    """One scrape of a consumer's /metrics (on its query port)."""
    return scrape(base_url(proc))


# -- ClickHouse failing for a while ----------------------------------------------------------

# (what ClickHouse does, how long): answers 503 to everything (down behind a load balancer),
# then runs each batch's insert but its answer is lost (the connection closed before it).
CLICKHOUSE_PHASES_S = (("refuses", 6.0), ("loses_acks", 6.0))
TOKEN_RE = re.compile(r"insert_deduplication_token = '([^']+)'")
# A refill's token (consumers/ingest.py _refill): the batch's and a fresh suffix, never sent
# again, as what it stored is then no longer missing.
REFILL_TOKEN_RE = re.compile(r":[0-9a-f]{12}$")


@pytest.fixture
async def front(tmp_path: Path) -> AsyncIterator[ClickHouseFront]:
    """ClickHouse's HTTP interface on chDB in this process, which can refuse every request or
    run an insert and lose its answer."""
    async with ClickHouseFront(tmp_path / "front") as running:
        yield running


async def watch_consumer(pipe: Pipeline, duration_s: float, seen: dict[str, float]) -> None:
    """Scrape the consumer for duration_s, keeping the highest paused-partition count and lag."""
    started = time.monotonic()
    while time.monotonic() - started < duration_s:
        now = await asyncio.to_thread(pipe.consumer_metrics)
        for name in ("beacon_consumer_paused_partitions", "beacon_consumer_lag_records"):
            seen[name] = max(seen.get(name, 0.0), metric_sum(now, name))
        await asyncio.sleep(0.5)


async def test_clickhouse_failing_then_back(
    procs: Procs,
    tmp_path: Path,
    broker: ProxiedBroker,
    front: ClickHouseFront,
) -> None:
    server = front
    pipe = await start_pipeline(
        procs, tmp_path, broker, "clickhouse_down", clickhouse_url=server.url
    )

    def query(sql: str) -> str:
        return server.run(sql, "TabSeparated")

    # No merges: a repeat stored would stay a second row, not be folded before it is counted.
    query("SYSTEM STOP MERGES beacon.events")
    load = Load(pipe.base, pipe.prefix, RATE_PER_S).start()
    await asyncio.sleep(3)
    seen: dict[str, float] = {}
    down_at = time.monotonic()
    try:
        for fault, duration_s in CLICKHOUSE_PHASES_S:
            server.fail_all = fault == "refuses"
            # An insert into beacon.events runs to its end, stored, and its answer is lost.
            server.loses_answer = lost_insert if fault == "loses_acks" else None
            await watch_consumer(pipe, duration_s, seen)
    finally:
        server.fail_all, server.loses_answer = False, None
    during = await asyncio.to_thread(pipe.consumer_metrics)
    up_at = time.monotonic()
    await asyncio.sleep(3)

    result = await finish(pipe, load, query)
    stored_at = time.monotonic()
    duplicates = raw_rows(query, pipe.prefix) - result.stored
    exits = await stop_both(pipe)
    retries = during.get('beacon_consumer_retries_total{step="insert"}', 0)
    record(
        "clickhouse_failing",
        sent=result.sent,
        stored=result.stored,
        loss_window_s=None,
        promise=PROMISE,
        outage_s=round(up_at - down_at, 1),
        phases="/".join(f"{f} {d:.0f}s" for f, d in CLICKHOUSE_PHASES_S),
        all_stored_after_back_s=round(stored_at - up_at, 1),
        insert_retries=int(retries),
        acks_lost=len(server.lost_answers),
        paused_partitions_max=int(seen.get("beacon_consumer_paused_partitions", 0)),
        lag_records_max=int(seen.get("beacon_consumer_lag_records", 0)),
        repeats_awaiting_merge=duplicates,
        client_errors=sum(load.failures.values()),
        exit_codes="{}/{}".format(*exits),
    )
    check(result, load, exits)
    assert retries > 0 and seen["beacon_consumer_paused_partitions"] > 0, "no failure met"
    assert server.lost_answers, "no insert lost its answer"
    # The retry of an insert that did land carries the same token: ClickHouse drops it, so
    # not even a repeat awaiting merge reaches the table.
    for lost in server.lost_answers:
        token = token_of(lost)
        assert token, f"an insert without its token: {lost.statement[:300]}"
        if REFILL_TOKEN_RE.search(token):
            continue
        later = server.seen[server.seen.index(lost) + 1 :]
        assert token in map(token_of, later), f"the insert under {token} was not tried again"
    assert duplicates == 0, f"{duplicates} repeated rows stored despite the insert tokens"


def lost_insert(seen: Seen) -> bool:
    """An insert into beacon.events (a batch's, under its token)."""
    return seen.params.get("query_id", "").startswith(INSERT_QUERY_ID_PREFIX)


def token_of(seen: Seen) -> str:
    """The dedup token of an insert: in its statement (insert_from) or its URL (insert)."""
    found = TOKEN_RE.search(seen.statement)
    return found.group(1) if found else seen.params.get("insert_deduplication_token", "")
