"""A Kafka broker lost for good: one broker of three SIGKILLed under load and never restarted.

A 3-node KRaft cluster on loopback (every node a broker and a voter of the metadata quorum;
`start_cluster` in deploy/kafka/kafka.py), the events topic and its dead-letter topic with 3
replicas and `min.insync.replicas=2`, the internal topics with 3 replicas. Real `beacon serve`
(Kafka sink, producer `acks=all`) and `beacon consume` subprocesses get all three addresses.
The broker killed is the consumer group's coordinator in one run and the metadata quorum's
leader in the other; each also leads one of the topic's partitions. Two brokers keep a quorum
majority and satisfy `min.insync.replicas`, so the promise is the pipeline's usual one: every
event answered ends in the store exactly once after dedup, with nobody restarting anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from tests.faults.conftest import (
    Load,
    Proc,
    Procs,
    Query,
    base_url,
    http_get,
    kafka_settings,
    metric_sum,
    raw_rows,
    scrape,
    store_port_query,
    wait_stored,
)
from tests.faults.report import record
from tests.support import kafka_broker

# Starting three brokers on a loaded machine can take minutes, and so can the catch-up.
pytestmark = [pytest.mark.timeout(900)]

PROMISE = "zero loss, no double count, no restart needed"
NODES = 3
PARTITIONS = 3
REPLICATION = 3
MIN_INSYNC_REPLICAS = 2
RATE_PER_S = 200.0  # pixels per second from CONCURRENCY keep-alive clients
CONCURRENCY = 6
BEFORE_KILL_S = 8.0  # load before the kill
AFTER_KILL_S = 40.0  # load goes on this long after the kill
# The load's own bounds, whatever the test does: about 1.5 x what the phases above send.
LOAD_MAX_REQUESTS = int(1.5 * RATE_PER_S * (BEFORE_KILL_S + AFTER_KILL_S))
LOAD_MAX_S = 2 * (BEFORE_KILL_S + AFTER_KILL_S)
CATCH_UP_TIMEOUT_S = 300.0  # after the load stops: every answered event stored by then
START_TIMEOUT_S = 120.0  # collector producing, consumer storing, before the kill
SETTLE_S = 2.0  # after everything is stored: time for a late repeat to show
SAMPLE_INTERVAL_S = 0.25
BACKLOG_BEFORE_S = 5.0  # the store's usual backlog: its highest in this long before the kill
READYZ_TIMEOUT_S = 5.0  # a load balancer's usual health check timeout
QUORUM_LEADER = re.compile(
    r"^\[([\d-]+ [\d:,]+)\] INFO \[RaftManager id=(\d+)\] Completed transition to Leader\(",
    re.MULTILINE,
)
LOG_LEVEL = re.compile(r"^\d{4}-\d\d-\d\d [\d:,.]+ (WARNING|ERROR|CRITICAL) (\S+)")


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Three brokers of this case's own; every node still running is stopped at the end."""
    with kafka_broker.cluster(tmp_path_factory.mktemp("kafka-cluster"), NODES) as running:
        yield running


@dataclass
class Sample:
    """One look at the collector (its Kafka link, its spill and replay counts, /readyz) and
    at the store (how many answered events it does not hold yet)."""

    at: float  # time.monotonic()
    kafka_up: float
    spilled: float
    replayed: float
    readyz: int  # HTTP status, 0 when nothing answered within READYZ_TIMEOUT_S
    backlog: int | None  # answered minus rows stored (None: the store did not answer)


@dataclass
class Watch:
    """Samples the collector and the store every SAMPLE_INTERVAL_S until stopped."""

    base: str
    load: Load
    query: Query
    samples: list[Sample] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        while not self._stop.is_set():
            metrics = await asyncio.to_thread(scrape, self.base)
            status = (await asyncio.to_thread(http_get, self.base + "/readyz", READYZ_TIMEOUT_S))[0]
            self.samples.append(
                Sample(
                    time.monotonic(),
                    metric_sum(metrics, "beacon_kafka_up"),
                    metric_sum(metrics, "beacon_kafka_spilled_events_total"),
                    metric_sum(metrics, "beacon_kafka_replayed_events_total"),
                    status,
                    await self._backlog(),
                )
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), SAMPLE_INTERVAL_S)

    async def _backlog(self) -> int | None:
        answered = len(self.load.answered)
        try:
            stored = await asyncio.to_thread(raw_rows, self.query, self.load.prefix)
        except OSError:
            return None
        return answered - stored

    def stop(self) -> None:
        self._stop.set()

    def after(self, since: float) -> list[Sample]:
        return [s for s in self.samples if s.at >= since]


def link_figures(samples: list[Sample], killed_at: float) -> dict[str, float]:
    """When, after the kill, the collector saw Kafka down, had it back for good, and spilled
    and replayed its last event (-1: not seen)."""

    def since_kill(sample: Sample | None) -> float:
        return round(sample.at - killed_at, 1) if sample is not None else -1.0

    first_down = next((s for s in samples if s.kafka_up != 1), None)
    back = None  # the first sample of the last run of kafka_up == 1
    for sample in samples:
        if sample.kafka_up != 1:
            back = None
        elif back is None:
            back = sample
    last = samples[-1] if samples else None
    last_spill = next((s for s in samples if last and s.spilled == last.spilled), None)
    last_replay = next((s for s in samples if last and s.replayed == last.replayed), None)
    return {
        "kafka_down_seen_after_kill_s": since_kill(first_down),
        "kafka_up_for_good_after_kill_s": since_kill(back) if first_down else 0.0,
        "last_spill_after_kill_s": since_kill(last_spill) if last and last.spilled else 0.0,
        "last_replay_after_kill_s": since_kill(last_replay) if last and last.replayed else 0.0,
    }


def backlog_figures(
    before: list[Sample], after: list[Sample], killed_at: float
) -> dict[str, float]:
    """The store's backlog (answered, not yet stored): its highest in the BACKLOG_BEFORE_S
    before the kill, its peak after, and when after the kill it was back to the level before
    (end-to-end recovery; -1: not while sampled)."""
    usual = max((s.backlog for s in before if s.backlog is not None), default=0)
    known = [s for s in after if s.backlog is not None]
    peak = max(known, key=lambda s: s.backlog or 0, default=None)
    back = next((s for s in known if peak and s.at >= peak.at and (s.backlog or 0) <= usual), None)
    return {
        "backlog_before_kill_max": usual,
        "backlog_peak": peak.backlog or 0 if peak else 0,
        "backlog_peak_after_kill_s": round(peak.at - killed_at, 1) if peak else -1.0,
        "backlog_usual_again_after_kill_s": round(back.at - killed_at, 1) if back else -1.0,
    }


# -- Kafka side -----------------------------------------------------------------------------


async def create_topics(bootstrap: str, topic: str) -> None:
    """The events topic and its dead-letter topic, 3 replicas, 2 needed in sync for a write."""
    configs = {"min.insync.replicas": str(MIN_INSYNC_REPLICAS)}
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(topic, PARTITIONS, REPLICATION, topic_configs=configs),
                NewTopic(topic + ".dlq", 1, REPLICATION, topic_configs=configs),
            ]
        )
    finally:
        await admin.close()


async def partitions(admin: AIOKafkaAdminClient, topic: str) -> list[dict[str, Any]]:
    """[{partition, leader, replicas, isr}, ...] of `topic`, as the cluster says now; asked
    again while the admin client picks the dead broker (it learns soon enough)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            described = await admin.describe_topics([topic])
            return sorted(described[0]["partitions"], key=lambda p: p["partition"])
        except KafkaError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(SAMPLE_INTERVAL_S)


async def check_replication(admin: AIOKafkaAdminClient, topic: str) -> None:
    """The setup this case claims: 3 replicas of the topic and of the consumer offsets topic,
    2 of them in sync for a write to the topic."""
    for name in (topic, "__consumer_offsets"):
        replicas = {len(p["replicas"]) for p in await partitions(admin, name)}
        assert replicas == {REPLICATION}, f"{name}: replica counts {replicas}"
    wanted = {"min.insync.replicas": None}
    described = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, topic, wanted)]
    )
    entries = {entry[0]: entry[1] for entry in described[0].resources[0][4]}
    assert entries == {"min.insync.replicas": str(MIN_INSYNC_REPLICAS)}, entries


async def wait_failed_over(
    admin: AIOKafkaAdminClient, topic: str, victim: int, killed_at: float
) -> float:
    """Seconds from the kill until every partition of `topic` is led by a live broker and
    the victim has left every in-sync replica set (-1 if not within CATCH_UP_TIMEOUT_S)."""
    while time.monotonic() - killed_at < CATCH_UP_TIMEOUT_S:
        now = await partitions(admin, topic)
        if all(p["leader"] not in (victim, -1) and victim not in p["isr"] for p in now):
            return round(time.monotonic() - killed_at, 1)
        await asyncio.sleep(SAMPLE_INTERVAL_S)
    return -1.0


def quorum_leader(brokers: list[Any]) -> int | None:
    """The node that last became leader of the metadata quorum (the active controller), from
    the role changes each node logs (LOG4J2_PROPERTIES in deploy/kafka/kafka.py)."""
    latest: tuple[str, int] | None = None
    for broker in brokers:
        log = (broker.dir / "kafka.log").read_text(errors="replace")
        for match in QUORUM_LEADER.finditer(log):
            if latest is None or match[1] > latest[0]:
                latest = (match[1], int(match[2]))
    return latest[1] if latest else None


async def topic_records(bootstrap: str, topic: str, prefix: str) -> Counter[str]:
    """Records of `prefix` in `topic` per event_id: a count above 1 is a repeat in Kafka (a
    late ack that was spilled and replayed too); the store's dedup removes it."""
    admin_consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await admin_consumer.start()
    per_id: Counter[str] = Counter()
    try:
        assigned = admin_consumer.assignment()
        while not assigned:
            await asyncio.sleep(0.05)
            assigned = admin_consumer.assignment()
        ends = await admin_consumer.end_offsets(list(assigned))
        while [tp for tp, end in ends.items() if await admin_consumer.position(tp) < end]:
            batches = await admin_consumer.getmany(timeout_ms=1000)
            for records in batches.values():
                for rec in records:
                    for line in (rec.value or b"").splitlines():
                        row = orjson.loads(line)
                        if row.get("campaign") == prefix:
                            per_id[row["event_id"]] += 1
    finally:
        await admin_consumer.stop()
    return per_id


# -- the processes --------------------------------------------------------------------------


def log_lines(proc: Proc) -> dict[str, Any]:
    """Warning and error lines of a process's log: counts, and counts per logger."""
    by_level: Counter[str] = Counter()
    by_logger: Counter[str] = Counter()
    tracebacks = 0
    for line in proc.log_path.read_text(errors="replace").splitlines():
        tracebacks += line.startswith("Traceback")
        if match := LOG_LEVEL.match(line):
            by_level[match[1]] += 1
            by_logger[f"{match[1][0]}:{match[2]}"] += 1
    return {
        "warnings": by_level["WARNING"],
        "errors": by_level["ERROR"] + by_level["CRITICAL"],
        "tracebacks": tracebacks,
        "by_logger": ",".join(f"{name}={n}" for name, n in sorted(by_logger.items())),
    }


def labelled(metrics: dict[str, float], name: str) -> str:
    """`name`'s samples as label=value pairs (e.g. `kafka_down=812,timeout=95`), or 0."""
    pairs = [
        (key.split("{", 1)[1].rstrip("}").split("=", 1)[1].strip('"'), value)
        for key, value in sorted(metrics.items())
        if key.startswith(name + "{") and "," not in key
    ]
    return ",".join(f"{label}={value:.0f}" for label, value in pairs if value) or "0"


async def wait_metric(proc: Proc, name: str, at_least: float) -> None:
    """Poll `proc`'s /metrics until the sum of `name` reaches at_least."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while metric_sum(await asyncio.to_thread(scrape, base_url(proc)), name) < at_least:
        assert time.monotonic() < deadline, f"{name} < {at_least}:\n{proc.log_tail()}"
        await asyncio.sleep(0.2)


# -- the case -------------------------------------------------------------------------------


# Which broker dies: the consumer group's coordinator (the consumer loses its group and its
# commits' destination), or the metadata quorum's leader (the active controller: a new one is
# elected before the dead broker can be fenced). Either also leads a partition of the topic.
VICTIMS = ("group_coordinator", "quorum_leader")


@pytest.mark.parametrize("victim_role", VICTIMS)
async def test_kafka_broker_lost_for_good(
    cluster: Any, procs: Procs, tmp_path: Path, victim_role: str
) -> None:
    topic = f"faults.broker_lost.{uuid.uuid4().hex[:8]}"
    await create_topics(cluster.bootstrap, topic)
    shared = kafka_settings(cluster.bootstrap, topic)
    collector = await asyncio.to_thread(
        procs.collector, tmp_path / "collector", sink="kafka", **shared
    )
    consumer_settings = {**shared, "batch_max_age_ms": 500, "retry_max_ms": 2000}
    consumer = await asyncio.to_thread(procs.consumer, tmp_path / "consumer", consumer_settings)
    query = store_port_query(int(consumer.env["BEACON_STORE_PORT"]))
    await wait_metric(collector, "beacon_kafka_up", 1)

    prefix = f"broker_lost-{uuid.uuid4().hex[:6]}"
    base = base_url(collector)
    load = Load(base, prefix, RATE_PER_S, CONCURRENCY, LOAD_MAX_REQUESTS, LOAD_MAX_S).start()
    watch = Watch(base, load, query)
    watcher = asyncio.create_task(watch.run())
    admin = AIOKafkaAdminClient(bootstrap_servers=cluster.bootstrap)
    await admin.start()
    try:
        # The consumer stores before the kill: the group, its coordinator and offsets exist.
        await wait_metric(consumer, "beacon_consumer_rows_inserted_total", 1)
        await check_replication(admin, topic)
        await asyncio.sleep(BEFORE_KILL_S)
        coordinator = await admin.find_coordinator(shared["kafka_group"])
        controller = quorum_leader(cluster.brokers)
        assert controller is not None, "no quorum leader in the brokers' logs"
        victim = coordinator if victim_role == "group_coordinator" else controller
        led = [p["partition"] for p in await partitions(admin, topic) if p["leader"] == victim]
        broker = next(b for b in cluster.brokers if b.dir.name == f"node-{victim}")
        requests_at_kill = load.requests
        killed_at = time.monotonic()
        await asyncio.to_thread(broker.kill)
        failed_over_s = await wait_failed_over(admin, topic, victim, killed_at)
        after_partitions = await partitions(admin, topic)
        await asyncio.sleep(max(0.0, AFTER_KILL_S - (time.monotonic() - killed_at)))
        await load.stop()
        load_stopped_at = time.monotonic()
        result, _ = await wait_stored(query, prefix, load.answered, CATCH_UP_TIMEOUT_S)
        stored_at = time.monotonic()
        if not result.lost:  # a late repeat stored under a second event id would show now
            await asyncio.sleep(SETTLE_S)
            result, _ = await wait_stored(query, prefix, load.answered, 0)
    finally:
        await load.stop()
        watch.stop()
        await watcher
        await admin.close()

    collector_metrics = await asyncio.to_thread(scrape, base)
    consumer_metrics = await asyncio.to_thread(scrape, base_url(consumer))
    ready_at_end = (await asyncio.to_thread(http_get, base + "/readyz"))[0]
    repeats_awaiting_merge = raw_rows(query, prefix) - result.stored
    in_kafka = await topic_records(cluster.bootstrap, topic, prefix)
    exits = (
        await asyncio.to_thread(collector.terminate),
        await asyncio.to_thread(consumer.terminate),
    )
    collector_log, consumer_log = log_lines(collector), log_lines(consumer)
    samples = watch.after(killed_at)
    before = [s for s in watch.samples if killed_at - BACKLOG_BEFORE_S <= s.at < killed_at]
    not_ready = [s.readyz for s in samples if s.readyz != 200]
    record(
        f"kafka_broker_lost_{victim_role}",
        sent=result.sent,
        stored=result.stored,
        loss_window_s=None,
        promise=PROMISE,
        nodes=NODES,
        killed_node=victim,
        killed_led_partitions=",".join(map(str, led)),
        killed_was_coordinator=str(victim == coordinator),
        killed_was_quorum_leader=str(victim == controller),
        sent_after_kill=sum(int(m.rsplit("-", 1)[1]) >= requests_at_kill for m in load.answered),
        partitions_failed_over_s=failed_over_s,
        isr_after="/".join(",".join(map(str, p["isr"])) for p in after_partitions),
        **link_figures(samples, killed_at),
        **backlog_figures(before, samples, killed_at),
        all_stored_after_load_s=round(stored_at - load_stopped_at, 1),
        readyz_samples=len(samples),
        readyz_not_200=len(not_ready),
        readyz_at_end=ready_at_end,
        kafka_records=sum(in_kafka.values()),
        kafka_repeats=sum(in_kafka.values()) - len(in_kafka),
        repeats_awaiting_merge=repeats_awaiting_merge,
        unanswered_stored=result.unanswered_stored,
        client_errors=sum(load.failures.values()),
        spilled=labelled(collector_metrics, "beacon_kafka_spilled_events_total"),
        replayed=int(metric_sum(collector_metrics, "beacon_kafka_replayed_events_total")),
        produced=labelled(collector_metrics, "beacon_kafka_events_total"),
        dropped=labelled(collector_metrics, "beacon_events_dropped_total"),
        spool_bytes_at_end=int(metric_sum(collector_metrics, "beacon_spool_bytes")),
        consumer_retries=labelled(consumer_metrics, "beacon_consumer_retries_total"),
        consumer_inserts=labelled(consumer_metrics, "beacon_consumer_inserts_total"),
        consumer_rejected=labelled(consumer_metrics, "beacon_consumer_rows_rejected_total"),
        consumer_dlq=int(metric_sum(consumer_metrics, "beacon_consumer_dlq_records_total")),
        consumer_replayed_batches=int(
            metric_sum(consumer_metrics, "beacon_consumer_replayed_batches_total")
        ),
        **{f"collector_log_{k}": v for k, v in collector_log.items()},
        **{f"consumer_log_{k}": v for k, v in consumer_log.items()},
        exit_codes="{}/{}".format(*exits),
    )
    assert result.sent > 2000, f"too little load to mean anything: {result}, {load.failures}"
    assert not load.failures, f"pixels not answered 200: {dict(load.failures)}"
    # What the case is about: the node killed led a partition of the topic, and readiness was
    # asked throughout what followed.
    assert led, f"node {victim} led none of {topic}'s partitions"
    assert len(samples) >= 20, f"/readyz asked {len(samples)} times after the kill"
    assert not result.lost, (
        f"{result.sent - result.stored} answered events not stored {CATCH_UP_TIMEOUT_S:g} s "
        f"after the load: {result}\ncollector:\n{collector.log_tail()}\n"
        f"consumer:\n{consumer.log_tail()}"
    )
    assert not result.doubles, f"markers stored under two event ids: {result}"
    assert failed_over_s >= 0, f"partitions never left node {victim}: {after_partitions}"
    # A collector that can spool stays ready through the loss (see the broker restart case).
    assert not not_ready and ready_at_end == 200, f"/readyz answered {not_ready[:10]}"
    assert exits == (0, 0), f"collector/consumer exit codes {exits}"
