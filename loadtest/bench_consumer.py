"""Consumer throughput: events per CPU second, Kafka (or the spool) -> ClickHouse, one core.

    python -m loadtest.bench_consumer [--events 600000] [--source kafka|spool]
        [--record-max-bytes 65536] [--batch-rows N] [--server]

Fills a fresh topic with realistic events (bench_enrich's user-agent mix) the way the
collector produces them (NDJSON chunks of up to --record-max-bytes per record, lz4, acks=all;
1 gives the one-event records of older collectors), then runs the real pipeline of `beacon
consume` (Pipeline, Ingest, a Kafka or spool feed) in a child process pinned to one CPU,
until every event is in ClickHouse. Prints events per wall second and per CPU second of that
process (chDB's threads included) and its peak RSS.

The storage limit, in the same run: chDB alone, on the same CPU, inserting the rows the
pipeline stored (read back in ClickHouse's Native format, which needs no parsing) into a fresh
store with the same schema, views and insert settings, in inserts of the pipeline's average
size, in the order they arrived. The pipeline's ratio to it is what the consumer costs on top
of storage. Both are printed at the last insert and again with the merges those inserts
started (until none ran for a second): storage's cost includes its merges, and right after
the last insert a faster run has more of them still ahead.

--server: the HTTP writer instead of chDB, against a ClickHouse end (a chDB process behind
ClickHouse's HTTP interface, tests/support/clickhouse_front.py) on the other CPU, not counted:
the consumer's own CPU per event, with ClickHouse parsing and storing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from loadtest.bench.system import free_port

REPO = Path(__file__).resolve().parents[1]
BATCH_MAX_BYTES = 1 << 20  # per producer record batch, as the collector's default


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def status_mb(*keys: str) -> dict[str, float]:
    """Fields of /proc/self/status in MB: VmHWM is this process's peak RSS (getrusage's
    ru_maxrss survives exec, so a child would report its parent's peak); RssFile is what is
    mapped from files (chDB's library), RssAnon the process's own memory."""
    with open("/proc/self/status") as f:
        fields = (line.split(":", 1) for line in f)
        return {k: int(v.split()[0]) / 1024 for k, v in fields if k in keys}


def peak_rss_mb() -> float:
    return status_mb("VmHWM")["VmHWM"]


def chunks(lines: list[bytes], record_max_bytes: int) -> list[bytes]:
    """Record values as the collector makes them (collector/sinks/kafka_link.py)."""
    out: list[bytes] = []
    start = 0
    while start < len(lines):
        end, size = start + 1, len(lines[start])
        while end < len(lines) and size + len(lines[end]) + (end - start) <= record_max_bytes:
            size += len(lines[end])
            end += 1
        out.append(b"\n".join(lines[start:end]))
        start = end
    return out


async def fill_topic(bootstrap: str, topic: str, partitions: int, values: list[bytes]) -> None:
    """Create the topic and produce the values in record batches (lz4, acks=all)."""
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
        while start < len(values):
            batch = producer.create_batch()
            end = start
            # append() returns None once the batch is full (max_batch_size): that record and
            # the rest go in the next batch. Ignoring it dropped all but the first ~16 KiB of
            # every batch, so the topic held a fraction of the events and the bench waited
            # for rows that were never produced (it looked like a consumer stall).
            while end < len(values) and end - start < 2000:
                if batch.append(key=None, value=values[end], timestamp=None) is None:
                    break
                end += 1
            if end == start:
                raise ValueError(f"record {start} is larger than a batch ({BATCH_MAX_BYTES} B)")
            batch.close()
            partition = len(acks) % partitions
            acks.append(await producer.send_batch(batch, topic, partition=partition))
            start = end
        await asyncio.gather(*acks)
    finally:
        await producer.stop()
    # Every record must be in the topic, or the consumer side waits for rows that never come.
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        stored = sum((await consumer.end_offsets(tps)).values())
    finally:
        await consumer.stop()
    if stored != len(values):
        raise RuntimeError(f"the topic holds {stored:,} records, {len(values):,} produced")


def fill_spool(spool_dir: Path, lines: list[bytes], segment_rows: int = 20_000) -> None:
    """Closed segments as the collector leaves them (`<ms>-<pid>-<seq>.ndjson`)."""
    spool_dir.mkdir(parents=True, exist_ok=True)
    now_ms = int(time.time() * 1000)
    for seq, start in enumerate(range(0, len(lines), segment_rows)):
        name = f"{now_ms:013d}-{os.getpid():07d}-{seq:06d}.ndjson"
        (spool_dir / name).write_bytes(b"\n".join(lines[start : start + segment_rows]) + b"\n")


# -- the child processes ------------------------------------------------------------------------


async def consume(opts: argparse.Namespace) -> dict[str, Any]:
    """The pipeline until `opts.events` rows are stored; figures of this process."""
    from prometheus_client import CollectorRegistry

    from analytics.migrations import migrate
    from consumers.metrics import ConsumerMetrics
    from consumers.pipeline import Pipeline
    from consumers.settings import ConsumerSettings

    workdir = Path(opts.workdir)
    # BEACON_* of the environment (a setting to try), under the bench's own.
    env = {k: v for k, v in os.environ.items() if k.startswith("BEACON_")}
    env |= {
        "BEACON_DATA_DIR": str(workdir / "consumer"),
        "BEACON_KAFKA_BOOTSTRAP": opts.bootstrap,
        "BEACON_KAFKA_TOPIC": opts.topic,
        "BEACON_KAFKA_GROUP": f"bench-{uuid.uuid4().hex[:8]}",
        "BEACON_KAFKA_DLQ_TOPIC": f"{opts.topic}.dlq",
    }
    if opts.batch_rows:
        env["BEACON_BATCH_MAX_ROWS"] = str(opts.batch_rows)
    settings = ConsumerSettings.from_env(env)
    if opts.server:
        from analytics.store.http import HttpWriter

        writer: Any = HttpWriter(
            opts.server, timeout_s=600, compression=settings.clickhouse_compression
        )  # the consumer's default, or BEACON_CLICKHOUSE_COMPRESSION
    else:
        from analytics.store.chdb import ChdbWriter

        writer = ChdbWriter(settings.store_dir)
    await migrate(writer, settings.retention_days)
    metrics = ConsumerMetrics(CollectorRegistry())
    stop = asyncio.Event()
    if opts.source == "kafka":
        from consumers.dlq import DeadLetters
        from consumers.sources.kafka import KafkaSource
        from consumers.sources.kafka_feed import KafkaFeed

        dead_letters = DeadLetters(opts.bootstrap, settings.kafka_dlq_topic)
        feed: Any = KafkaFeed(KafkaSource(settings), dead_letters, metrics, settings)
    else:
        from consumers.sources.spool import SpoolSource
        from consumers.sources.spool_feed import SpoolFeed

        feed = SpoolFeed(SpoolSource(settings.spool_dir, settings.checkpoint_path), metrics,
                         settings)  # fmt: skip
    pipeline = Pipeline(feed, writer, metrics, settings)

    def value(metric: str) -> float:
        return float(metrics.registry.get_sample_value(metric) or 0.0)

    task = asyncio.create_task(pipeline.run(stop))
    first_read_at = first_cpu = 0.0
    # Sampled every 10 ms: VmHWM does not split file-backed and anonymous memory.
    peak_anon_mb = peak_file_mb = 0.0
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
        now_mb = status_mb("RssAnon", "RssFile")
        peak_anon_mb = max(peak_anon_mb, now_mb["RssAnon"])
        peak_file_mb = max(peak_file_mb, now_mb["RssFile"])
        await asyncio.sleep(0.01)
    wall_s = time.perf_counter() - first_read_at
    cpu_s = cpu_seconds() - first_cpu
    inserts = value("beacon_consumer_insert_seconds_count")
    stop.set()
    await task
    if not opts.server:  # the merges its inserts started run on this CPU too
        await asyncio.to_thread(merges_done, writer.query_sync)
    settled_cpu_s = cpu_seconds() - first_cpu
    stored = int((await writer.query("SELECT count() FROM beacon.events", "TSV")).strip())
    await writer.close()
    return {"wall_s": wall_s, "cpu_s": cpu_s, "settled_cpu_s": settled_cpu_s,
            "inserts": inserts, "stored": stored,
            "insert_s": value("beacon_consumer_insert_seconds_sum"),
            "peak_rss_mb": peak_rss_mb(), "peak_anon_mb": peak_anon_mb,
            "peak_file_mb": peak_file_mb}  # fmt: skip


def native_blocks(session: Any, events: int, batch_rows: int) -> list[bytes]:
    """beacon.events of the chDB `session` as Native blocks of `batch_rows` rows, the storage
    limit's input. In the order the events arrived (time order), as the pipeline's batches
    hold them. Not by event_id: ClickHouse does not sort UUIDs in their time order, so batches
    cut by id have key ranges that do not overlap, whose parts merge at a fifth of the cost of
    the parts real traffic makes (docs/performance.md "Consumer")."""
    from consumers.ingest import EVENT_COLUMNS

    columns = ", ".join(EVENT_COLUMNS)
    return [
        session.query(
            f"SELECT {columns} FROM beacon.events ORDER BY received_at, event_id "
            f"LIMIT {batch_rows} OFFSET {at}",
            "Native",
        ).bytes()
        for at in range(0, events, batch_rows)
    ]


def store_native(writer: Any, blocks: list[bytes]) -> None:
    """Insert the Native `blocks` into beacon.events of the ChdbWriter `writer`, each under its
    own token, as the pipeline inserts its batches."""
    from analytics.store import insert_settings
    from consumers.ingest import EVENT_COLUMNS

    columns = ", ".join(EVENT_COLUMNS)
    for i, block in enumerate(blocks):
        head = f"INSERT INTO beacon.events ({columns}) {insert_settings(f'limit-{i}')}"
        writer._insert(head, "Native", block)


def storage_limit(opts: argparse.Namespace) -> dict[str, Any]:
    """CPU per row for chDB to store the pipeline's rows again, from memory, in Native."""
    from analytics.migrations import migrate
    from analytics.store.chdb import ChdbWriter, open_session

    # The embedded store's configuration: the first session of a process sets it for all.
    source = open_session(Path(opts.workdir) / "consumer" / "clickhouse")
    batches = native_blocks(source, opts.events, opts.batch_rows)
    source.close()
    from consumers.settings import ConsumerSettings

    # The pipeline's schema, its retention's TTLs included (BEACON_* of the environment too).
    env = {k: v for k, v in os.environ.items() if k.startswith("BEACON_")}
    retention_days = ConsumerSettings.from_env(env).retention_days
    writer = ChdbWriter(Path(opts.workdir) / "limit")
    asyncio.run(migrate(writer, retention_days))
    started = cpu_seconds()
    store_native(writer, batches)
    cpu_s = cpu_seconds() - started
    merges_done(writer.query_sync)
    settled_cpu_s = cpu_seconds() - started
    stored = int(writer.query_sync("SELECT count() FROM beacon.events", "TSV").strip())
    writer.close_sync()
    return {"cpu_s": cpu_s, "settled_cpu_s": settled_cpu_s, "stored": stored,
            "inserts": len(batches)}  # fmt: skip


def merges_done(query: Any, quiet_s: float = 1.0, wait_s: float = 120) -> None:
    """Wait until no merge has run for `quiet_s`: the CPU of the merges the inserts started
    counts too. Right after the last insert, a run that inserts faster has more of its
    merges still ahead of it, so figures at that moment favour it."""
    deadline = time.monotonic() + wait_s
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        if int(query("SELECT count() FROM system.merges", "TSV").strip() or 0):
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            return
        time.sleep(0.05)


def child(opts: argparse.Namespace) -> int:
    os.sched_setaffinity(0, {opts.cpu})  # before chDB starts a thread: they inherit it
    result = storage_limit(opts) if opts.storage_limit else asyncio.run(consume(opts))
    print(json.dumps(result), flush=True)
    return 0


def run_child(opts: argparse.Namespace, *extra: str) -> dict[str, Any]:
    args = [sys.executable, "-m", "loadtest.bench_consumer", "--child", "--workdir", opts.workdir,
            "--events", str(opts.events), "--cpu", str(opts.cpu), "--source", opts.source,
            "--bootstrap", opts.bootstrap, "--topic", opts.topic,
            "--timeout-s", str(opts.timeout_s), *extra]  # fmt: skip
    out = subprocess.run(args, cwd=REPO, check=True, stdout=subprocess.PIPE, text=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


# -- the parent ---------------------------------------------------------------------------------


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=600_000)
    p.add_argument("--distinct-uas", type=int, default=3000)
    p.add_argument("--source", choices=("kafka", "spool"), default="kafka")
    p.add_argument("--partitions", type=int, default=6)
    p.add_argument("--record-max-bytes", type=int, default=64 * 1024,
                   help="the producer's BEACON_KAFKA_RECORD_MAX_BYTES; 1: one event")  # fmt: skip
    p.add_argument("--batch-rows", type=int, default=0, help="BEACON_BATCH_MAX_ROWS (default: its)")
    p.add_argument("--bootstrap", default="", help="an existing broker; default: start one")
    p.add_argument("--server", action="store_true", help="the HTTP writer, ClickHouse apart")
    p.add_argument("--cpu", type=int, default=0, help="the consumer's CPU")
    p.add_argument("--other-cpu", type=int, default=1, help="the broker's and producer's CPU")
    p.add_argument("--timeout-s", type=float, default=600)
    p.add_argument("--json", default="", help="also write the figures to this file")
    # The child processes' own arguments.
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--storage-limit", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--workdir", default="", help=argparse.SUPPRESS)
    p.add_argument("--topic", default="", help=argparse.SUPPRESS)
    p.add_argument("--server-url", dest="server_url", default="", help=argparse.SUPPRESS)
    opts = p.parse_args()
    if opts.child:
        opts.server = opts.server_url
        return child(opts)
    # SIGTERM unwinds like Ctrl-C, so the broker started below is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    os.sched_setaffinity(0, {opts.other_cpu})
    from loadtest.bench.__main__ import load_kafka_script
    from loadtest.bench_enrich import wire_lines

    print(f"generating {opts.events:,} events ({opts.distinct_uas:,} distinct UAs)", flush=True)
    lines = wire_lines(opts.events, opts.distinct_uas)
    opts.workdir = tempfile.mkdtemp(prefix="beacon-bench-consumer-")
    opts.topic = f"bench.{uuid.uuid4().hex[:8]}"
    broker = front = None
    try:
        if opts.source == "kafka":
            if not opts.bootstrap:
                kafka = load_kafka_script()
                ports = [free_port(), free_port()]
                broker = kafka.start_broker(Path(opts.workdir) / "kafka", *ports,
                                            partitions=opts.partitions)  # fmt: skip
                opts.bootstrap = broker.bootstrap
            values = chunks(lines, opts.record_max_bytes)
            print(f"producing {len(values):,} records to {opts.topic} on {opts.bootstrap}",
                  flush=True)  # fmt: skip
            asyncio.run(fill_topic(opts.bootstrap, opts.topic, opts.partitions, values))
        else:
            fill_spool(Path(opts.workdir) / "consumer" / "spool", lines)
        del lines
        extra = ["--batch-rows", str(opts.batch_rows)] if opts.batch_rows else []
        if opts.server:
            front = start_front(Path(opts.workdir) / "server", opts.other_cpu)
            extra += ["--server-url", front[1]]
        result = run_child(opts, *extra)
        print(f"pipeline: {json.dumps(result)}", flush=True)
        limit = None
        if not opts.server:
            opts.batch_rows = max(1, round(result["stored"] / max(1.0, result["inserts"])))
            limit = run_child(opts, "--storage-limit", "--batch-rows", str(opts.batch_rows))
    finally:
        if front is not None:
            front[0].terminate()
            front[0].wait(30)
        if broker is not None:
            broker.stop()
        shutil.rmtree(opts.workdir, ignore_errors=True)
    report(opts, result, limit)
    return 0 if result["stored"] == opts.events else 1


def report(opts: argparse.Namespace, result: dict[str, Any], limit: dict[str, Any] | None) -> None:
    n = opts.events
    where = "the HTTP writer, ClickHouse on the other CPU" if opts.server else "embedded chDB"
    form = "one event" if opts.record_max_bytes == 1 else f"<= {opts.record_max_bytes:,} B"
    print(f"source {opts.source} (records of {form}), {where}, {n:,} events, one CPU")
    print(f"  stored in ClickHouse       {result['stored']:>12,}")
    print(
        f"  events / wall second       {n / result['wall_s']:>12,.0f}   ({result['wall_s']:.2f} s)"
    )
    per_cpu = n / result["cpu_s"]
    print(f"  events / CPU second        {per_cpu:>12,.0f}   ({result['cpu_s']:.2f} s)")
    settled = n / result["settled_cpu_s"]
    print(f"    merges included          {settled:>12,.0f}   ({result['settled_cpu_s']:.2f} s, "
          "until no merge ran for 1 s)")  # fmt: skip
    print(f"  inserts                    {result['inserts']:>12,.0f}   "
          f"({result['insert_s']:.2f} s in the ingest's statements)")  # fmt: skip
    print(f"  consumer peak RSS          {result['peak_rss_mb']:>12,.0f} MB   (anonymous "
          f"{result['peak_anon_mb']:,.0f} MB at most, sampled; mapped from files "
          f"{result['peak_file_mb']:,.0f} MB)")  # fmt: skip
    figures = {"events": n, "source": opts.source, "record_max_bytes": opts.record_max_bytes,
               "server": bool(opts.server), "pipeline": result,
               "events_per_cpu_s": per_cpu}  # fmt: skip
    if limit is not None:
        limit_per_cpu = limit["stored"] / limit["cpu_s"]
        print(f"  storage limit, events / CPU second {limit_per_cpu:>10,.0f}   (chDB alone, "
              f"{limit['inserts']} inserts of {opts.batch_rows:,} rows from memory)")  # fmt: skip
        print(f"  pipeline / storage limit   {per_cpu / limit_per_cpu:>12.2f}x")
        limit_settled = limit["stored"] / limit["settled_cpu_s"]
        print(f"    merges included          {settled / limit_settled:>12.2f}x   (storage limit "
              f"{limit_settled:,.0f} events / CPU second)")  # fmt: skip
        figures |= {"storage_limit": limit, "storage_limit_per_cpu_s": limit_per_cpu,
                    "ratio_to_storage_limit": per_cpu / limit_per_cpu,
                    "settled_events_per_cpu_s": settled,
                    "settled_storage_limit_per_cpu_s": limit_settled,
                    "settled_ratio_to_storage_limit": settled / limit_settled}  # fmt: skip
    if opts.json:
        Path(opts.json).write_text(json.dumps(figures, indent=2) + "\n")
        from loadtest.bench.report import bars

        # Both sides at their last insert and with the merges those inserts started (the
        # limit's come mostly after its inserts: the first figures flatter it).
        rows = [(f"pipeline ({where}), at the last insert", per_cpu, f"{per_cpu:,.0f}"),
                ("pipeline, merges included", settled, f"{settled:,.0f}")]  # fmt: skip
        if limit is not None:
            for label, key in (
                ("at the last insert", "storage_limit_per_cpu_s"),
                ("merges included", "settled_storage_limit_per_cpu_s"),
            ):
                rows.append((f"chDB storing the same rows, {label}", figures[key],
                             f"{figures[key]:,.0f}"))  # fmt: skip
        title = f"make bench-consumer: {n:,} events from {opts.source}, one CPU"
        bars(Path(opts.json).with_suffix(".png"), title, "events per CPU second", rows)


def start_front(data_dir: Path, cpu: int) -> tuple[subprocess.Popen[str], str]:
    """A ClickHouse HTTP end on chDB in its own process, pinned to `cpu`; (process, url)."""
    port = free_port()
    code = (
        "import asyncio, os, sys\n"
        f"os.sched_setaffinity(0, {{{cpu}}})\n"
        "from pathlib import Path\n"
        "from tests.support.clickhouse_front import serve\n"
        f"asyncio.run(serve(Path({str(data_dir)!r}), {port}))\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 60
    import urllib.request

    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "ping", timeout=1):
                return process, url
        except OSError:
            time.sleep(0.2)
    process.terminate()
    raise RuntimeError("the ClickHouse HTTP end did not start")


if __name__ == "__main__":
    sys.exit(main())
