"""`beacon kafka init`: create the event topic and the dead-letter topic with their replication,
min.insync.replicas and retention, idempotently; say where an existing topic is weaker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import InvalidReplicationFactorError, KafkaError, TopicAlreadyExistsError

from collector.settings import DAY_MS, PREFIX, Settings

MIN_INSYNC = "min.insync.replicas"
RETENTION = "retention.ms"
DESCRIBE_PAUSE_S = 0.1  # between looks at a topic the brokers do not all know yet


class KafkaInitError(RuntimeError):
    """Kafka could not be reached or refused to create a topic; the message says which."""


@dataclass(frozen=True, slots=True)
class TopicPlan:
    """What the settings ask of one topic."""

    name: str
    partitions: int
    replication: int
    min_insync_replicas: int
    retention_ms: int
    retention_variable: str  # the setting that gave retention_ms, for the warnings
    parallel: bool  # consumers read it in parallel: fewer partitions than asked is weaker

    def new_topic(self) -> NewTopic:
        configs = {MIN_INSYNC: str(self.min_insync_replicas), RETENTION: str(self.retention_ms)}
        return NewTopic(self.name, self.partitions, self.replication, topic_configs=configs)


@dataclass(frozen=True, slots=True)
class TopicStatus:
    """One topic as the cluster describes it after `kafka init`, and where it falls short."""

    name: str
    created: bool  # False: it existed already
    partitions: int
    replicas: int  # the fewest replicas any partition has
    min_insync_replicas: int
    retention_ms: int
    wanted_partitions: int
    warnings: tuple[str, ...] = ()

    def describe(self) -> str:
        verb = "created" if self.created else "exists"
        text = (
            f"{self.name}: {verb} ({plural(self.partitions, 'partition')}, "
            f"{plural(self.replicas, 'replica')}, "
            f"{MIN_INSYNC}={self.min_insync_replicas}, {RETENTION}={self.retention_ms}"
            f" ({duration(self.retention_ms)}))"
        )
        if self.partitions > self.wanted_partitions:
            # Not weaker, but the setting no longer tells how many consumers can work.
            text += f"; {PREFIX}KAFKA_PARTITIONS is {self.wanted_partitions}, left as it is"
        return text


def duration(ms: int) -> str:
    """A retention.ms for people: '3 days', '12 hours', 'forever' (Kafka's -1)."""
    if ms < 0:
        return "forever"
    for unit, size in (("day", DAY_MS), ("hour", DAY_MS // 24), ("minute", 60_000)):
        if ms >= size and ms % size == 0:
            count = ms // size
            return plural(count, unit)
    return f"{ms / DAY_MS:.2f} days" if ms >= DAY_MS else f"{ms} ms"


def plans(settings: Settings) -> list[TopicPlan]:
    events = TopicPlan(
        settings.kafka_topic,
        settings.kafka_partitions,
        settings.kafka_replication,
        settings.kafka_min_insync_replicas,
        settings.kafka_retention_ms,
        f"{PREFIX}KAFKA_RETENTION_MS",
        parallel=True,
    )
    # The dead-letter topic is read by people, later: it keeps records longer.
    dlq = TopicPlan(
        settings.kafka_dlq_topic,
        settings.kafka_partitions,
        settings.kafka_replication,
        settings.kafka_min_insync_replicas,
        settings.kafka_dlq_retention_ms,
        f"{PREFIX}KAFKA_DLQ_RETENTION_MS",
        parallel=False,
    )
    return [events, dlq]


def plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def too_few_brokers(settings: Settings, brokers: int) -> str:
    """The one line a refusal prints: how many brokers, and which settings to lower."""
    replication = max(brokers, 1)
    insync = max(1, min(settings.kafka_min_insync_replicas, replication - 1))
    which = "a single broker" if replication == 1 else f"{replication} brokers"
    return (
        f"the cluster at {settings.kafka_bootstrap} has {plural(brokers, 'broker')}, too few "
        f"for {PREFIX}KAFKA_REPLICATION={settings.kafka_replication}; nothing created. For "
        f"{which}: --set kafka_replication={replication} --set kafka_min_insync_replicas="
        f"{insync} (or {PREFIX}KAFKA_REPLICATION={replication} "
        f"{PREFIX}KAFKA_MIN_INSYNC_REPLICAS={insync})"
    )


def shorter(have_ms: int, want_ms: int) -> bool:
    """Whether a retention of have_ms keeps records for less time than want_ms (-1: forever)."""
    if have_ms < 0:
        return False
    return want_ms < 0 or have_ms < want_ms


def weaknesses(
    plan: TopicPlan, partitions: int, replicas: int, insync: int, retention_ms: int
) -> Iterator[str]:
    """One warning line per property of the topic weaker than the settings ask."""
    name = plan.name
    if replicas < plan.replication:
        yield (
            f"{name}: {plural(replicas, 'replica')}, fewer than {PREFIX}KAFKA_REPLICATION="
            f"{plan.replication}: losing a broker can lose events (kafka-reassign-partitions.sh "
            "adds replicas)"
        )
    # Kafka caps min.insync.replicas at the replica count (Partition.effectiveMinIsr): a
    # 1-replica topic with min.insync.replicas=2 takes acks=all writes on its one copy.
    effective = min(insync, replicas)
    if effective < plan.min_insync_replicas:
        have = f"{MIN_INSYNC}={insync}" + (
            f", in effect {effective} (Kafka caps it at the replicas)" if effective < insync else ""
        )
        fix = (
            f" (kafka-configs.sh --alter --entity-type topics --entity-name {name} "
            f"--add-config {MIN_INSYNC}={plan.min_insync_replicas})"
            if insync < plan.min_insync_replicas
            else ""
        )
        yield (
            f"{name}: {have}, lower than {PREFIX}KAFKA_MIN_INSYNC_REPLICAS="
            f"{plan.min_insync_replicas}: an acks=all write can rest on {effective} "
            f"cop{'y' if effective == 1 else 'ies'}{fix}"
        )
    if shorter(retention_ms, plan.retention_ms):
        yield (
            f"{name}: {RETENTION}={retention_ms} ({duration(retention_ms)}), shorter than "
            f"{plan.retention_variable}={plan.retention_ms} ({duration(plan.retention_ms)}): "
            f"records can be deleted before they are read (kafka-configs.sh "
            f"--alter --entity-type topics --entity-name {name} --add-config "
            f"{RETENTION}={plan.retention_ms})"
        )
    if plan.parallel and partitions < plan.partitions:
        yield (
            f"{name}: {plural(partitions, 'partition')}, fewer than {PREFIX}KAFKA_PARTITIONS="
            f"{plan.partitions}: at most {partitions} consumers do work (kafka-topics.sh "
            f"--alter --topic {name} --partitions {plan.partitions}, or lower the setting)"
        )


async def create(
    admin: AIOKafkaAdminClient, missing: list[TopicPlan], settings: Settings
) -> set[str]:
    """Create the missing topics; the names of those created. One made meanwhile by someone
    else (a sibling init container) counts as existing."""
    if not missing:
        return set()
    new = [plan.new_topic() for plan in missing]
    response = await admin.create_topics(new, timeout_ms=settings.kafka_timeout_ms)
    created = set()
    for topic, code, *message in response.topic_errors:
        if code == 0:
            created.add(topic)
        if code in (0, TopicAlreadyExistsError.errno):
            continue
        text = message[0] if message and message[0] else f"error code {code}"
        if code == InvalidReplicationFactorError.errno:  # fewer live brokers than we counted
            raise KafkaInitError(
                f"cannot create topic {topic}: {text}; lower {PREFIX}KAFKA_REPLICATION "
                "(one broker: --set kafka_replication=1 --set kafka_min_insync_replicas=1)"
            )
        raise KafkaInitError(f"cannot create topic {topic}: {text}")
    return created


async def describe(
    admin: AIOKafkaAdminClient, names: list[str], timeout_ms: int
) -> dict[str, tuple[list[Any], dict[str, str]]]:
    """{topic: (its partitions, {config: value})}, asked again until every broker asked
    knows every topic (a topic just created reaches each broker's metadata in turn)."""
    deadline = time.monotonic() + timeout_ms / 1000
    resources = [
        ConfigResource(ConfigResourceType.TOPIC, name, {MIN_INSYNC: None, RETENTION: None})
        for name in names
    ]
    while True:
        # Only once both exist: a metadata request naming a missing topic creates it with
        # the broker's defaults where auto.create.topics.enable is on (Kafka's default).
        topics = {t["topic"]: t for t in await admin.describe_topics(names)}
        configs: dict[str, dict[str, str]] = {}
        for response in await admin.describe_configs(resources):
            for code, _message, _kind, name, entries in response.resources:
                if code == 0:
                    configs[name] = {entry[0]: entry[1] for entry in entries}
        found = {
            name: (topics[name]["partitions"], configs[name])
            for name in names
            if name in topics
            and topics[name]["error_code"] == 0
            and topics[name]["partitions"]
            and {MIN_INSYNC, RETENTION} <= configs.get(name, {}).keys()
        }
        if len(found) == len(names):
            return found
        if time.monotonic() > deadline:
            absent = ", ".join(n for n in names if n not in found)
            raise KafkaInitError(f"topic {absent} is not described by the cluster (yet?)")
        await asyncio.sleep(DESCRIBE_PAUSE_S)


async def init_topics(settings: Settings) -> list[TopicStatus]:
    """Create settings.kafka_topic and settings.kafka_dlq_topic unless they exist; describe
    both, with a warning per property weaker than the settings. Never changes a topic."""
    if not settings.kafka_bootstrap:
        raise KafkaInitError(f"{PREFIX}KAFKA_BOOTSTRAP is empty: no Kafka to create topics on")
    wanted = plans(settings)
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id="beacon-kafka-init",
        request_timeout_ms=settings.kafka_timeout_ms,
    )
    try:
        try:
            await admin.start()
        except KafkaError as exc:
            raise KafkaInitError(
                f"cannot reach Kafka at {settings.kafka_bootstrap} ({exc}); "
                f"is the broker running and {PREFIX}KAFKA_BOOTSTRAP right?"
            ) from None
        brokers = len((await admin.describe_cluster())["brokers"])
        existing = set(await admin.list_topics())
        missing = [plan for plan in wanted if plan.name not in existing]
        # Checked here rather than left to the broker: no topic is made unless both can be.
        if missing and brokers < settings.kafka_replication:
            raise KafkaInitError(too_few_brokers(settings, brokers))
        created = await create(admin, missing, settings)
        names = [plan.name for plan in wanted]
        described = await describe(admin, names, settings.kafka_timeout_ms)
    except KafkaError as exc:
        raise KafkaInitError(f"Kafka at {settings.kafka_bootstrap}: {exc!r}") from None
    finally:
        await admin.close()
    statuses = []
    for plan in wanted:
        partitions, configs = described[plan.name]
        replicas = min(len(p["replicas"]) for p in partitions)
        insync, retention_ms = int(configs[MIN_INSYNC]), int(configs[RETENTION])
        found = weaknesses(plan, len(partitions), replicas, insync, retention_ms)
        statuses.append(
            TopicStatus(
                plan.name,
                plan.name in created,
                len(partitions),
                replicas,
                insync,
                retention_ms,
                plan.partitions,
                tuple(found),
            )
        )
    return statuses
