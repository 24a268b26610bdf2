"""The Kafka read alone: CPU per event for Beacon's client and for librdkafka's, one CPU.

    python -m loadtest.bench_kafka_read [--events 1200000] [--rounds 3] [--json PATH]

Fills two topics with the same bench events (bench_enrich's mix, 6 partitions, lz4, acks=all)
on a broker of its own pinned to the other CPU: one as the collector writes them (NDJSON
chunks of up to 64 KiB a record) and one with an event a record (older collectors). Then, in
a process of its own pinned to one CPU, each client joins a fresh group and reads a topic
whole, each record's value touched:

- aiokafka as `beacon consume` drives it (`consumers/sources/kafka.py`'s KafkaSource, its
  `poll`, the settings' defaults);
- confluent-kafka (librdkafka), `Consumer.consume()` with as many records a call and the same
  read-ahead: `max.partition.fetch.bytes` as Beacon's setting, its queue held to that times
  the partitions;
- confluent-kafka-64MiB: the same with librdkafka's own queue (`queued.max.messages.kbytes`,
  64 MiB), which fetches ten times further ahead.

CPU time of the process (every thread, librdkafka's included) over the second half of the
records: the group's join and the first fetches are left out. Rounds alternate the clients.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from loadtest.bench.system import free_port
from loadtest.bench_consumer import chunks, cpu_seconds, fill_topic

CLIENTS = ("aiokafka", "confluent-kafka", "confluent-kafka-64MiB")
PARTITIONS = 6
RECORD_MAX_BYTES = (64 * 1024, 1)  # the collector's default; one event a record


def settings(bootstrap: str, topic: str) -> Any:
    from consumers.settings import ConsumerSettings

    env = {
        "BEACON_KAFKA_BOOTSTRAP": bootstrap,
        "BEACON_KAFKA_TOPIC": topic,
        "BEACON_KAFKA_GROUP": f"bench-{uuid.uuid4().hex[:8]}",
        "BEACON_DATA_DIR": str(Path(tempfile.gettempdir()) / "beacon-bench-kafka-read"),  # unused
    }
    return ConsumerSettings.from_env(env)


async def read_aiokafka(bootstrap: str, topic: str, records: int) -> float:
    """CPU seconds of this process over the second half of `records`, read as Beacon does."""
    from consumers.sources.kafka import KafkaSource

    conf = settings(bootstrap, topic)
    source = KafkaSource(conf)
    await source.start(lambda tps: None, lambda tps: None)
    read = value_bytes = 0
    half_cpu = 0.0
    try:
        while read < records:
            for batch in (await source.poll(500, conf.kafka_max_records)).values():
                for record in batch:
                    value_bytes += len(record.value)
                    read += 1
                    if read == records // 2:
                        half_cpu = cpu_seconds()
        return cpu_seconds() - half_cpu
    finally:
        await source.stop()


def read_confluent(bootstrap: str, topic: str, records: int, queue_bytes: int) -> float:
    """The same with librdkafka's consumer, its read-ahead queue held to `queue_bytes`."""
    from confluent_kafka import Consumer

    conf = settings(bootstrap, topic)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": conf.kafka_group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "max.partition.fetch.bytes": conf.kafka_partition_fetch_bytes,
            "queued.max.messages.kbytes": (
                queue_bytes or PARTITIONS * conf.kafka_partition_fetch_bytes
            )
            // 1024,
        }
    )
    consumer.subscribe([topic])
    read = value_bytes = 0
    half_cpu = 0.0
    try:
        while read < records:
            for message in consumer.consume(num_messages=conf.kafka_max_records, timeout=0.5):
                if message.error():
                    raise RuntimeError(str(message.error()))
                value_bytes += len(message.value())
                read += 1
                if read == records // 2:
                    half_cpu = cpu_seconds()
        return cpu_seconds() - half_cpu
    finally:
        consumer.close()


def child(client: str, bootstrap: str, topic: str, records: int) -> None:
    if client == "aiokafka":
        cpu_s = asyncio.run(read_aiokafka(bootstrap, topic, records))
    else:  # Beacon's read-ahead (0), or librdkafka's default queue
        queue_bytes = 64 << 20 if client.endswith("-64MiB") else 0
        cpu_s = read_confluent(bootstrap, topic, records, queue_bytes)
    print(json.dumps({"cpu_s": cpu_s}))


def run_child(
    opts: argparse.Namespace, client: str, bootstrap: str, topic: str, records: int
) -> float:
    """A read in a fresh process on `opts.cpu`: CPU seconds of its second half."""
    command = [sys.executable, "-m", "loadtest.bench_kafka_read", "--child", client,
               "--bootstrap", bootstrap, "--topic", topic, "--records", str(records)]  # fmt: skip
    run = subprocess.run(
        ["taskset", "-c", str(opts.cpu), *command],
        capture_output=True,
        text=True,
        timeout=opts.timeout_s,
    )
    if run.returncode != 0:
        raise RuntimeError(f"{client} read failed: {run.stderr[-2000:]}")
    return float(json.loads(run.stdout.splitlines()[-1])["cpu_s"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=1_200_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cpu", type=int, default=0, help="the reader's CPU")
    p.add_argument("--other-cpu", type=int, default=1, help="the broker's and producer's CPU")
    p.add_argument("--timeout-s", type=float, default=600)
    p.add_argument("--json", default="", help="also write the figures to this file")
    # A child's own arguments.
    p.add_argument("--child", choices=CLIENTS, help=argparse.SUPPRESS)
    p.add_argument("--bootstrap", default="", help=argparse.SUPPRESS)
    p.add_argument("--topic", default="", help=argparse.SUPPRESS)
    p.add_argument("--records", type=int, default=0, help=argparse.SUPPRESS)
    opts = p.parse_args()
    if opts.child:
        child(opts.child, opts.bootstrap, opts.topic, opts.records)
        return 0
    os.sched_setaffinity(0, {opts.other_cpu})
    from loadtest.bench.__main__ import load_kafka_script
    from loadtest.bench_enrich import wire_lines

    lines = wire_lines(opts.events, 3000)
    workdir = Path(tempfile.mkdtemp(prefix="beacon-bench-kafka-read-"))
    broker = load_kafka_script().start_broker(
        workdir / "kafka", free_port(), free_port(), partitions=PARTITIONS
    )
    figures: dict[str, dict[str, list[float]]] = {}
    try:
        topics = {}
        for record_max in RECORD_MAX_BYTES:
            topic = f"bench.{uuid.uuid4().hex[:8]}"
            values = chunks(lines, record_max)
            asyncio.run(fill_topic(broker.bootstrap, topic, PARTITIONS, values))
            topics[record_max] = (topic, len(values))
        del lines
        print(f"{opts.events:,} events; CPU µs an event over the second half of a read, "
              f"one CPU, {opts.rounds} rounds alternating", flush=True)  # fmt: skip
        for round_no in range(opts.rounds):
            for record_max, (topic, records) in topics.items():
                label = f"{record_max} B records" if record_max > 1 else "an event a record"
                clients = CLIENTS[round_no % 3 :] + CLIENTS[: round_no % 3]
                for client in clients:
                    cpu_s = run_child(opts, client, broker.bootstrap, topic, records)
                    us = cpu_s * 1e6 / (opts.events / 2)
                    figures.setdefault(label, {}).setdefault(client, []).append(round(us, 3))
                    print(f"  round {round_no + 1}, {label:18s} {client:16s} {us:6.3f}", flush=True)
    finally:
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print("µs an event (min-max):")
    for label, by_client in figures.items():
        cells = ", ".join(f"{c} {min(v):.3f}-{max(v):.3f}" for c, v in by_client.items())
        print(f"  {label:18s} {cells}")
    if opts.json:
        Path(opts.json).write_text(json.dumps({"events": opts.events, "us_per_event": figures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
