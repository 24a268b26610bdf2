"""`beacon kafka init` against the session's real single-node Kafka: the refusal of the
production defaults (replication 3, min.insync.replicas 2), topics created with their
min.insync.replicas and retention, and the warnings about an existing weaker topic, which is
left as it is."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import UnknownTopicOrPartitionError

from beacon.__main__ import main
from collector.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SINGLE = ["--set", "kafka_replication=1", "--set", "kafka_min_insync_replicas=1"]
TOPIC_CONFIG = 1  # DescribeConfigs config_source: set on the topic itself (DYNAMIC_TOPIC_CONFIG)
WANTED = ("min.insync.replicas", "retention.ms")
UNKNOWN_TOPIC = UnknownTopicOrPartitionError.errno  # a topic the asked broker does not know yet
WAIT_S = 60


def fresh(prefix: str) -> list[str]:
    """--set flags naming a fresh events topic and its dead-letter topic."""
    name = f"{prefix}.{uuid.uuid4().hex[:8]}"
    return ["--set", f"kafka_topic={name}", "--set", f"kafka_dlq_topic={name}.dlq"]


def topic_of(flags: list[str]) -> str:
    return flags[1].partition("=")[2]


async def admin_client(bootstrap: str) -> AIOKafkaAdminClient:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    return admin


async def describe(bootstrap: str, name: str) -> dict[str, Any]:
    """{partitions, replicas, configs: {name: (value, source)}} of a topic, as Kafka says; a
    topic just created is asked for again until the broker knows it (up to WAIT_S)."""
    admin = await admin_client(bootstrap)
    deadline = time.monotonic() + WAIT_S
    try:
        while True:
            (topic,) = await admin.describe_topics([name])
            resource = ConfigResource(ConfigResourceType.TOPIC, name, dict.fromkeys(WANTED))
            (response,) = await admin.describe_configs([resource])
            (result,) = response.resources
            unknown = topic["error_code"] == UNKNOWN_TOPIC or result[0] == UNKNOWN_TOPIC
            if not unknown or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
    finally:
        await admin.close()
    assert result[0] == 0, result
    return {
        "partitions": len(topic["partitions"]),
        "replicas": {len(p["replicas"]) for p in topic["partitions"]},
        "configs": {entry[0]: (entry[1], entry[3]) for entry in result[4]},
    }


async def topics(bootstrap: str) -> set[str]:
    admin = await admin_client(bootstrap)
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


def beacon(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m beacon ...` as a real process, with no BEACON_* from this environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BEACON_")}
    return subprocess.run(
        [sys.executable, "-m", "beacon", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_defaults_ask_for_three_replicas_two_in_sync_and_retention():
    settings = Settings()
    assert (settings.kafka_replication, settings.kafka_min_insync_replicas) == (3, 2)
    assert settings.kafka_retention_ms == 3 * 24 * 3600 * 1000
    assert settings.kafka_dlq_retention_ms == 14 * 24 * 3600 * 1000


def test_more_in_sync_than_replicas_is_refused_at_start(capsys):
    assert main(["kafka", "init", "--set", "kafka_replication=1"], {}) == 2
    err = capsys.readouterr().err
    # The variable left at its default by name, the one typed as it was typed.
    assert "BEACON_KAFKA_MIN_INSYNC_REPLICAS=2 is more than --set kafka_replication=1" in err
    env = {"BEACON_KAFKA_REPLICATION": "2", "BEACON_KAFKA_MIN_INSYNC_REPLICAS": "3"}
    assert main(["kafka", "init"], env) == 2
    err = capsys.readouterr().err
    assert "BEACON_KAFKA_MIN_INSYNC_REPLICAS=3 is more than BEACON_KAFKA_REPLICATION=2" in err
    assert main(["kafka", "init", "--set", "kafka_retention_ms=0"], {}) == 2
    assert "--set kafka_retention_ms: -1 (forever) or a positive number" in capsys.readouterr().err


def test_defaults_on_one_broker_refuse_in_one_line_and_create_nothing(kafka_bootstrap):
    names = fresh("refused")
    done = beacon("kafka", "init", "--kafka-bootstrap", kafka_bootstrap, *names)
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr  # no traceback, no log noise
    assert lines[0].startswith(f"beacon kafka init: the cluster at {kafka_bootstrap} has 1 ")
    assert "1 broker, too few for BEACON_KAFKA_REPLICATION=3; nothing created" in lines[0]
    assert "--set kafka_replication=1 --set kafka_min_insync_replicas=1" in lines[0]
    name = topic_of(names)
    assert not {name, name + ".dlq"} & asyncio.run(topics(kafka_bootstrap))


def test_single_broker_settings_create_both_topics_with_their_configs(kafka_bootstrap):
    names = fresh("made")
    retention = ["--set", "kafka_retention_ms=7200000", "--set", "kafka_dlq_retention_ms=-1"]
    argv = ["kafka", "init", "--kafka-bootstrap", kafka_bootstrap, *SINGLE, *names, *retention]
    done = beacon(*argv)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # nothing weaker than asked: no warning
    name = topic_of(names)
    assert done.stdout.splitlines() == [
        f"{name}: created (6 partitions, 1 replica, min.insync.replicas=1, "
        "retention.ms=7200000 (2 hours))",
        f"{name}.dlq: created (6 partitions, 1 replica, min.insync.replicas=1, "
        "retention.ms=-1 (forever))",
    ]
    # Set on the topics themselves, not inherited from the broker (whose min.insync is 1 too).
    events = asyncio.run(describe(kafka_bootstrap, name))
    assert events["configs"] == {
        "min.insync.replicas": ("1", TOPIC_CONFIG),
        "retention.ms": ("7200000", TOPIC_CONFIG),
    }
    assert (events["partitions"], events["replicas"]) == (6, {1})
    dlq = asyncio.run(describe(kafka_bootstrap, name + ".dlq"))
    assert dlq["configs"]["retention.ms"] == ("-1", TOPIC_CONFIG)

    again = beacon(*argv)  # idempotent, and says what is there
    assert again.returncode == 0 and again.stderr == ""
    assert again.stdout == done.stdout.replace(": created (", ": exists (")


def test_an_acks_all_write_lands_in_a_topic_kafka_init_made(kafka_bootstrap):
    """What collectors do (acks=all) works on the single-broker settings."""
    names = fresh("acks")
    assert main(["kafka", "init", "--kafka-bootstrap", kafka_bootstrap, *SINGLE, *names], {}) == 0

    async def write() -> int:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        await producer.start()
        try:
            return (await producer.send_and_wait(topic_of(names), b'{"event_id":"1"}')).offset
        finally:
            await producer.stop()

    assert asyncio.run(write()) == 0


def test_an_existing_weaker_topic_is_warned_about_and_left_unchanged(kafka_bootstrap, capsys):
    names = fresh("weak")
    name = topic_of(names)

    async def create_by_hand() -> None:
        admin = await admin_client(kafka_bootstrap)
        try:
            await admin.create_topics(
                [
                    NewTopic(name, 2, 1),  # no configs: the broker's min.insync 1, 7 days
                    NewTopic(name + ".dlq", 1, 1, topic_configs={"retention.ms": "3600000"}),
                ]
            )
        finally:
            await admin.close()

    asyncio.run(create_by_hand())
    before = {n: asyncio.run(describe(kafka_bootstrap, n)) for n in (name, name + ".dlq")}

    # The production defaults: replication 3, min.insync.replicas 2, 3 and 14 days.
    assert main(["kafka", "init", "--kafka-bootstrap", kafka_bootstrap, *names], {}) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        f"{name}: exists (2 partitions, 1 replica, min.insync.replicas=1, "
        "retention.ms=604800000 (7 days))",
        f"{name}.dlq: exists (1 partition, 1 replica, min.insync.replicas=1, "
        "retention.ms=3600000 (1 hour))",
    ]
    *lines, summary = err.splitlines()
    assert summary == (
        "beacon kafka init: 6 warnings; existing topics are never changed here (exit status 0)"
    )
    prefix = "beacon kafka init: warning: "
    assert all(line.startswith(prefix) for line in lines), err
    warnings = [line.removeprefix(prefix) for line in lines]
    expected = [
        f"{name}: 1 replica, fewer than BEACON_KAFKA_REPLICATION=3",
        f"{name}: min.insync.replicas=1, lower than BEACON_KAFKA_MIN_INSYNC_REPLICAS=2",
        f"{name}: 2 partitions, fewer than BEACON_KAFKA_PARTITIONS=6",
        f"{name}.dlq: 1 replica, fewer than BEACON_KAFKA_REPLICATION=3",
        f"{name}.dlq: min.insync.replicas=1, lower than BEACON_KAFKA_MIN_INSYNC_REPLICAS=2",
        f"{name}.dlq: retention.ms=3600000 (1 hour), shorter than "
        "BEACON_KAFKA_DLQ_RETENTION_MS=1209600000 (14 days)",
    ]
    assert len(warnings) == len(expected), err
    for line, start in zip(warnings, expected, strict=True):
        assert line.startswith(start + ":"), (line, start)
    # The events topic keeps 7 days, more than the 3 asked: no warning about it.
    assert not any("retention" in line for line in warnings if line.startswith(f"{name}:"))

    after = {n: asyncio.run(describe(kafka_bootstrap, n)) for n in (name, name + ".dlq")}
    assert after == before  # nothing changed: same partitions, replicas, configs and sources


def test_kafka_caps_min_insync_at_the_replicas_and_the_warning_says_so(kafka_bootstrap, capsys):
    """min.insync.replicas=2 on a 1-replica topic does not stop an acks=all write on Kafka 4
    (Partition.effectiveMinIsr caps it): the write rests on one copy, and init says so."""
    names = fresh("capped")
    name = topic_of(names)

    async def create_and_write() -> int:
        admin = await admin_client(kafka_bootstrap)
        try:
            configs = {"min.insync.replicas": "2", "retention.ms": str(30 * 24 * 3600 * 1000)}
            await admin.create_topics(
                [
                    NewTopic(name, 6, 1, topic_configs=configs),
                    NewTopic(name + ".dlq", 1, 1, topic_configs=configs),
                ]
            )
        finally:
            await admin.close()
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        await producer.start()
        try:
            return (await producer.send_and_wait(name, b"{}")).offset
        finally:
            await producer.stop()

    assert asyncio.run(create_and_write()) == 0
    assert main(["kafka", "init", "--kafka-bootstrap", kafka_bootstrap, *names], {}) == 0
    err = capsys.readouterr().err
    assert (
        f"{name}: min.insync.replicas=2, in effect 1 (Kafka caps it at the replicas), lower "
        "than BEACON_KAFKA_MIN_INSYNC_REPLICAS=2: an acks=all write can rest on 1 copy\n"
    ) in err
    assert "kafka-configs.sh" not in err.split(f"{name}: min.insync")[1].split("\n")[0]


@pytest.mark.parametrize("brokers", [1, 2])
def test_the_refusal_suggests_settings_that_fit(brokers):
    from collector.kafka_admin import too_few_brokers

    settings = Settings(kafka_bootstrap="k:9092", kafka_replication=3)
    line = too_few_brokers(settings, brokers)
    wanted = {
        1: "For a single broker: --set kafka_replication=1 --set kafka_min_insync_replicas=1",
        2: "For 2 brokers: --set kafka_replication=2 --set kafka_min_insync_replicas=1",
    }
    assert wanted[brokers] in line


def test_a_consumer_that_finds_no_dead_letter_topic_makes_it_as_kafka_init_would(kafka_bootstrap):
    from consumers.settings import ConsumerSettings
    from consumers.sources.kafka import KafkaSource
    from contract.common import DLQ_RETENTION_MS

    name = f"made-by-consumer-{uuid.uuid4().hex[:8]}.dlq"
    settings = ConsumerSettings.from_env({"BEACON_KAFKA_BOOTSTRAP": kafka_bootstrap})

    async def make() -> None:
        source = KafkaSource(settings)
        await source.admin.start()
        try:
            await source.ensure_topic(name)
            await source.ensure_topic(name)  # there already: left as it is
        finally:
            await source.admin.close()
            await source.consumer.stop()  # made with the source, never started here

    asyncio.run(make())
    dlq = asyncio.run(describe(kafka_bootstrap, name))
    # One broker: one copy, and min.insync.replicas no more than the copies.
    assert dlq["configs"] == {
        "min.insync.replicas": ("1", TOPIC_CONFIG),
        "retention.ms": (str(DLQ_RETENTION_MS), TOPIC_CONFIG),
    }
    assert dlq["replicas"] == {1}
