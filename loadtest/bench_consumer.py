"""Consumer throughput: events per second per core, Kafka -> enrichment -> chDB.

    python -m loadtest.bench_consumer [--events 300000] [--source kafka|spool] [--cpu 0]
    python -m loadtest.bench_consumer --insert-only [--events 60000]

Fills a fresh topic (or spool) with realistic events first (bench_enrich's user-agent mix),
then runs the real pipeline of `beacon consume` (Pipeline over a Kafka or spool feed, Enricher,
ChdbWriter) in this process, pinned to one CPU with chDB's threads, until every event is in
ClickHouse. The broker and the producer run on the other CPU. Reports events per wall second
between the first read and the last insert (on one CPU: per core), and events per CPU second
of this process (user + system, chDB's threads included).

--insert-only measures chDB alone, on one CPU, for rows already enriched: CPU per row of an
insert as JSONEachRow and as Arrow columns, alternately, with the rollup views, without them,
and into a Null table (parsing only): what bounds the pipeline whatever Python costs.
--read-only measures aiokafka alone: the same consumer polling the filled topic, each record
decoded by orjson and dropped. The two are the fixed costs any consumer on them pays.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BATCH_MAX_BYTES = 1 << 20  # per producer record batch, as the collector's default


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def fill_topic(bootstrap: str, topic: str, partitions: int, lines: list[bytes]) -> None:
    """Create the topic and produce the events as the collector does (batches, lz4, acks=all)."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        compression_type="lz4",
        linger_ms=5,
        max_batch_size=BATCH_MAX_BYTES,
    )
    await producer.start()
    try:
        acks: list[asyncio.Future[Any]] = []
        start = 0
        while start < len(lines):
            batch = producer.create_batch()
            end = start
            # append() returns None once the batch is full (max_batch_size): that record and
            # the rest go in the next batch. Ignoring it dropped all but the first ~16 KiB of
            # every batch, so the topic held a fraction of the events and the bench waited
            # for rows that were never produced (it looked like a consumer stall).
            while end < len(lines) and end - start < 2000:
                if batch.append(key=None, value=lines[end], timestamp=None) is None:
                    break
                end += 1
            if end == start:
                raise ValueError(f"event {start} is larger than a batch ({BATCH_MAX_BYTES} B)")
            batch.close()
            partition = len(acks) % partitions
            acks.append(await producer.send_batch(batch, topic, partition=partition))
            start = end
        await asyncio.gather(*acks)
    finally:
        await producer.stop()
    # Every event must be in the topic, or the consumer side waits for rows that never come.
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        stored = sum((await consumer.end_offsets(tps)).values())
    finally:
        await consumer.stop()
    if stored != len(lines):
        raise RuntimeError(f"the topic holds {stored:,} records, {len(lines):,} produced")


def fill_spool(spool_dir: Path, lines: list[bytes], segment_rows: int = 20_000) -> None:
    """Closed segments as the collector leaves them (`<ms>-<pid>-<seq>.ndjson`)."""
    spool_dir.mkdir(parents=True, exist_ok=True)
    now_ms = int(time.time() * 1000)
    for seq, start in enumerate(range(0, len(lines), segment_rows)):
        name = f"{now_ms:013d}-{os.getpid():07d}-{seq:06d}.ndjson"
        (spool_dir / name).write_bytes(b"\n".join(lines[start : start + segment_rows]) + b"\n")


async def consume(opts: argparse.Namespace, workdir: Path, bootstrap: str, topic: str) -> dict:
    from prometheus_client import CollectorRegistry

    from analytics.migrations import migrate
    from analytics.store.chdb import ChdbWriter
    from consumers.metrics import ConsumerMetrics
    from consumers.pipeline import Pipeline
    from consumers.settings import ConsumerSettings

    settings = ConsumerSettings.from_env(
        {
            "BEACON_DATA_DIR": str(workdir / "consumer"),
            "BEACON_KAFKA_BOOTSTRAP": bootstrap,
            "BEACON_KAFKA_TOPIC": topic,
            "BEACON_KAFKA_GROUP": f"bench-{uuid.uuid4().hex[:8]}",
            "BEACON_KAFKA_DLQ_TOPIC": f"{topic}.dlq",
            "BEACON_BATCH_MAX_ROWS": str(opts.batch_rows),
        }
    )
    if opts.read_only:
        return await read_only(opts, settings)
    writer = ChdbWriter(settings.store_dir)
    await migrate(writer, settings.retention_days)
    metrics = ConsumerMetrics(CollectorRegistry())
    stop = asyncio.Event()
    if opts.source == "kafka":
        from consumers.dlq import DeadLetters
        from consumers.sources.kafka import KafkaSource
        from consumers.sources.kafka_feed import KafkaFeed

        dead_letters = DeadLetters(bootstrap, settings.kafka_dlq_topic)
        feed: Any = KafkaFeed(KafkaSource(settings), dead_letters, metrics, settings)
    else:
        from consumers.sources.spool import SpoolSource
        from consumers.sources.spool_feed import SpoolFeed

        fill_spool(settings.spool_dir, opts.lines)
        source = SpoolSource(settings.spool_dir, settings.checkpoint_path)
        feed = SpoolFeed(source, metrics, settings)
    pipeline = Pipeline(feed, writer, metrics, settings)

    def value(metric: Any) -> float:
        return float(metrics.registry.get_sample_value(metric) or 0.0)

    task = asyncio.create_task(pipeline.run(stop))
    first_read_at = first_cpu = 0.0
    deadline = time.monotonic() + opts.timeout_s
    while value("beacon_consumer_rows_inserted_total") < opts.events:
        if task.done():
            task.result()
            raise RuntimeError("the pipeline stopped early")
        if time.monotonic() > deadline:
            # Stop the pipeline before raising: cancelled by asyncio.run's teardown instead,
            # it cannot leave the group (its LeaveGroup request times out).
            stop.set()
            await asyncio.wait_for(task, 60)  # bounded: the pipeline may be what is stuck
            inserted = value("beacon_consumer_rows_inserted_total")
            raise RuntimeError(f"timed out: {inserted:,.0f} of {opts.events:,} rows inserted")
        if not first_read_at and value("beacon_consumer_rows_read_total") > 0:
            first_read_at, first_cpu = time.perf_counter(), cpu_seconds()
        await asyncio.sleep(0.01)
    wall_s = time.perf_counter() - first_read_at
    cpu_s = cpu_seconds() - first_cpu
    insert_s = value("beacon_consumer_insert_seconds_sum")
    inserts = value("beacon_consumer_insert_seconds_count")
    stop.set()
    await task
    stored = int((await writer.query("SELECT count() FROM beacon.events", "TSV")).strip())
    await writer.close()
    return {"wall_s": wall_s, "cpu_s": cpu_s, "insert_s": insert_s, "inserts": inserts,
            "stored": stored}  # fmt: skip


async def read_only(opts: argparse.Namespace, settings: Any) -> dict:
    """CPU seconds for aiokafka to fetch and unpack every record, orjson to decode each."""
    import orjson

    from consumers.sources.kafka import KafkaSource

    source = KafkaSource(settings)
    await source.start(lambda revoked: None, lambda assigned: None)
    try:
        read = 0
        started = first_cpu = 0.0
        deadline = time.monotonic() + opts.timeout_s
        while read < opts.events and time.monotonic() < deadline:
            polled = await source.poll(100, settings.kafka_max_records)
            if polled and not started:  # from the first fetch, as the pipeline's figure
                started, first_cpu = time.perf_counter(), cpu_seconds()
            for records in polled.values():
                for record in records:
                    orjson.loads(record.value)
                read += len(records)
        return {"wall_s": time.perf_counter() - started, "cpu_s": cpu_seconds() - first_cpu,
                "insert_s": 0.0, "inserts": 0, "stored": read}  # fmt: skip
    finally:
        await source.stop()


def insert_only(opts: argparse.Namespace, workdir: Path) -> None:
    from analytics.migrations import migrate
    from analytics.store.chdb import ChdbWriter
    from consumers.enrich import Enricher
    from consumers.event_rows import EventRows

    writer = ChdbWriter(workdir / "store")
    asyncio.run(migrate(writer, 0))
    enricher = Enricher()
    parts = [opts.lines[i : i + opts.batch_rows] for i in range(0, opts.events, opts.batch_rows)]
    bodies = [b"".join(enricher.to_row(x) + b"\n" for x in part) for part in parts]
    columns = [EventRows.build([enricher.enrich(x) for x in part])[0] for part in parts]
    tokens = iter(range(1 << 62))

    def cpu_us_per_row(table: str, batches: list[Any]) -> float:
        started = cpu_seconds()
        for batch in batches:
            asyncio.run(writer.insert(table, batch, f"bench-{next(tokens)}"))
        return (cpu_seconds() - started) / opts.events * 1e6

    views = writer.query_sync(
        "SELECT name FROM system.tables WHERE database = 'beacon' AND engine = 'MaterializedView'",
        "TSV",
    ).split()
    print(f"chDB alone, {opts.events:,} enriched rows in inserts of {opts.batch_rows:,}, "
          "CPU us per row (process: chDB's threads included), JSONEachRow | Arrow:")  # fmt: skip
    for stage in ("views", "no_views", "null"):
        if stage == "no_views":
            for view in views:  # dropped after the runs with them
                writer.query_sync(f"DROP VIEW beacon.{view}", "TSV")
        if stage == "null":
            writer.query_sync("CREATE TABLE beacon.events_null AS beacon.events ENGINE = Null")
        # ChdbWriter's own inserts, token and all; a Null table only parses what it gets.
        table = "beacon.events_null" if stage == "null" else "beacon.events"
        for _ in range(opts.rounds):
            json_us = cpu_us_per_row(table, bodies)
            arrow_us = cpu_us_per_row(table, columns)
            print(f"  {stage:<10} {json_us:7.2f} | {arrow_us:7.2f}", flush=True)
    asyncio.run(writer.close())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=300_000)
    p.add_argument("--distinct-uas", type=int, default=3000)
    p.add_argument("--source", choices=("kafka", "spool"), default="kafka")
    p.add_argument("--partitions", type=int, default=6)
    p.add_argument("--batch-rows", type=int, default=10_000, help="BEACON_BATCH_MAX_ROWS")
    p.add_argument("--bootstrap", default="", help="an existing broker; default: start one")
    p.add_argument("--cpu", type=int, default=0, help="the consumer's CPU")
    p.add_argument("--other-cpu", type=int, default=1, help="the broker's and producer's CPU")
    p.add_argument("--timeout-s", type=float, default=600)
    p.add_argument("--insert-only", action="store_true", help="chDB's insert cost alone")
    p.add_argument("--read-only", action="store_true", help="aiokafka's read cost alone")
    p.add_argument("--rounds", type=int, default=3, help="of --insert-only, alternately")
    opts = p.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the broker started below is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    # Before anything starts a thread: threads inherit the affinity of the thread making them.
    os.sched_setaffinity(0, {opts.other_cpu})
    from loadtest.bench.__main__ import load_kafka_script
    from loadtest.bench.system import pinned
    from loadtest.bench_enrich import wire_lines

    print(f"generating {opts.events:,} events ({opts.distinct_uas:,} distinct UAs)", flush=True)
    opts.lines = wire_lines(opts.events, opts.distinct_uas)
    workdir = Path(tempfile.mkdtemp(prefix="beacon-bench-consumer-"))
    if opts.insert_only:
        try:
            with pinned(opts.cpu):
                insert_only(opts, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        return 0
    broker = None
    topic = f"bench.{uuid.uuid4().hex[:8]}"
    try:
        bootstrap = opts.bootstrap
        if opts.source == "kafka":
            if not bootstrap:
                kafka = load_kafka_script()
                ports = [_free_port(), _free_port()]
                broker = kafka.start_broker(workdir / "kafka", *ports, partitions=opts.partitions)
                bootstrap = broker.bootstrap
            print(f"producing to {topic} on {bootstrap}", flush=True)
            asyncio.run(fill_topic(bootstrap, topic, opts.partitions, opts.lines))
        with pinned(opts.cpu):
            result = asyncio.run(consume(opts, workdir, bootstrap, topic))
    finally:
        if broker is not None:
            broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    n = opts.events
    mode = ", read and decoded only" if opts.read_only else ""
    print(f"source {opts.source}{mode}, {n:,} events, batches of {opts.batch_rows:,} rows, one CPU")
    print(f"  {'read' if opts.read_only else 'stored in ClickHouse':<27}{result['stored']:>12,}")
    print(
        f"  events / wall second       {n / result['wall_s']:>12,.0f}   ({result['wall_s']:.2f} s)"
    )
    print(f"  events / CPU second        {n / result['cpu_s']:>12,.0f}   ({result['cpu_s']:.2f} s)")
    print(f"  inserts                    {result['inserts']:>12,.0f}   "
          f"({result['insert_s']:.2f} s in ClickHouse inserts)")  # fmt: skip
    return 0 if result["stored"] == n else 1


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    sys.exit(main())
