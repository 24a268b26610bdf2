"""Where an event's CPU goes in the consumer's store step, beside chDB storing the same rows.

    python -m loadtest.bench_ingest [--events 600000] [--batch-rows 100000] [--cpu N] [--typed]

Runs consumers/ingest.Ingest on bench_enrich's events (in NDJSON records of 64 KiB, as the
collector produces them) into an embedded store with Beacon's schema and views, and times each
statement it sends, the Python between them, and the merges its inserts start (held back until
the last insert, so none runs in another step's time, then run and waited for). Then, in the
same process and store (its tables emptied), it stores the same rows again from ClickHouse's
`Native` format in inserts of the same size: what `make bench-consumer` calls the storage
limit. Everything but the Kafka read, in µs of CPU an event (chDB's threads included: pin it to
one CPU). Prints figures, not a timed test.

`--typed` also stores the same events as they would come if the wire carried typed rows
instead of JSON lines: each collector flush of 1,000 events as an Arrow record batch of the
staging table's columns (what a collector's pump would write), loaded as it is into the
staging table, no parse and no checks; then the same enrichment, insert and merges. It prints
what writing those batches costs in Python (on the collector's core) beside orjson's event,
and checks that both ways store the same rows.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from decimal import Decimal
from itertools import accumulate, chain
from pathlib import Path
from typing import Any

from analytics import rollups
from analytics.store.chdb import ChdbWriter
from consumers.ingest import EVENT_COLUMNS, STAGED, Ingest
from consumers.sources.protocol import join_lines
from loadtest.bench_consumer import chunks, merges_done, native_blocks, store_native
from loadtest.bench_enrich import wire_lines

MERGES = "merges the inserts started"


class TimedWriter:
    """A ChdbWriter whose calls add their CPU seconds to `spent`, under the name of the step
    of an Ingest whose temporary tables are `lines` and `stage`."""

    def __init__(self, writer: ChdbWriter, lines: str, stage: str) -> None:
        self.writer = writer
        self.lines = lines
        self.stage = stage
        self.spent: defaultdict[str, float] = defaultdict(float)

    def step(self, call: str, what: str) -> str:
        if call == "load":
            if what == self.stage:
                return "typed rows in (ArrowStream)"
            return "lines in (LineAsString)" if what == self.lines else "enriched agents in"
        if call == "insert_from":
            return "insert into beacon.events (join, views)"
        if what.startswith(f"INSERT INTO {self.stage}"):
            return "parse and checks into staging (JSONExtract)"
        if "GROUP BY ALL" in what:
            return "distinct agents back"
        if what.startswith("SELECT n, reason"):
            return "counts and rejects back"
        return "temporary tables (create, empty)"

    def __getattr__(self, name: str) -> object:
        call = getattr(self.writer, name)
        if name not in ("load", "insert_from", "execute", "query"):
            return call

        async def timed(*args: object) -> object:
            started = time.process_time()
            try:
                return await call(*args)
            finally:
                what = str(args[0])
                self.spent[self.step(name, what)] += time.process_time() - started

        return timed


def settle(writer: ChdbWriter) -> float:
    """Start the merges held back and return their CPU seconds once none has run for a
    second."""
    started = time.process_time()
    writer.query_sync("SYSTEM START MERGES")
    merges_done(writer.query_sync)
    return time.process_time() - started


def merge_tree_tables(writer: ChdbWriter) -> list[str]:
    """The store's MergeTree tables in `beacon`, the views' own included."""
    return writer.query_sync(
        "SELECT name FROM system.tables WHERE database = 'beacon' AND engine LIKE '%MergeTree'",
        "TSV",
    ).split()


def empty(writer: ChdbWriter) -> None:
    """Empty the store's tables, the schema kept."""
    for table in merge_tree_tables(writer):
        writer.query_sync(f"TRUNCATE TABLE beacon.{table}")


class TypedIngest(Ingest):
    """The store step if record values were typed rows: Arrow IPC streams of the staging
    table's columns, loaded as they are (a typed column cannot hold a malformed value, so
    there is nothing to check or reject)."""

    async def _stage(self, body: Sequence[bytes]) -> None:
        await self._tables()
        await self.writer.load(self.stage, body, "ArrowStream")


def typed_schema() -> Any:
    import pyarrow as pa

    kinds = {
        "UInt8": pa.uint8(),
        "UInt64": pa.uint64(),
        "String": pa.string(),
        "UUID": pa.binary(16),  # the id's 16 bytes, as ClickHouse reads a UUID from Arrow
        "Decimal(18, 4)": pa.decimal128(18, 4),
        "DateTime64(3, 'UTC')": pa.timestamp("ms", tz="UTC"),
        "Map(String, String)": pa.map_(pa.string(), pa.string()),
    }
    return pa.schema([(name, kinds[kind]) for name, kind, _ in STAGED])


def typed_row(event: dict[str, Any]) -> tuple[Any, ...]:
    """An event as the tuple a collector would keep instead of its JSON (the staging table's
    columns, in order): what it does per request today, not timed here."""
    defaults = {"String": "", "Map(String, String)": {}}
    row: list[Any] = []
    for name, kind, _ in STAGED:
        if name == "agent_ip":
            ip = event.get("ip", "")
            row.append(ip if ip.startswith("17.") else "")
        elif name == "event_id":  # the collector would keep the id's bytes, not its text
            row.append(uuid.UUID(event["event_id"]).bytes)
        elif name == "value":  # a conversion's value; most events have none (null: 0)
            row.append(Decimal(event["value"]) if event.get("value") else None)
        else:
            row.append(event.get(name, defaults.get(kind, 0)))
    return tuple(row)


def typed_flush(rows: list[tuple[Any, ...]], schema: Any) -> Any:
    """One flush of a collector's pump as an Arrow record batch: the rows turned into columns
    (C-level), each column converted by pyarrow."""
    import pyarrow as pa

    arrays = []
    for field, column in zip(schema, zip(*rows, strict=True), strict=True):
        if isinstance(field.type, pa.MapType):  # offsets, keys and values, each read at C level
            offsets = pa.array(accumulate(map(len, column), initial=0), pa.int32())
            keys = pa.array(chain.from_iterable(map(dict.keys, column)), pa.string())
            values = pa.array(chain.from_iterable(map(dict.values, column)), pa.string())
            arrays.append(pa.MapArray.from_arrays(offsets, keys, values))
        else:
            arrays.append(pa.array(column, field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


FLUSH_EVENTS = 1_000  # a collector's flush in the typed pass: one Arrow record batch
# How the events are met when written: each once, cold (as this bench's batches), or the
# same flush over again, in cache, as a collector's pump meets the events it has just built.
COLD, HOT = "each event once", "one flush's events over again, in cache"


def typed_bodies(
    lines: list[bytes], batch_rows: int
) -> tuple[list[list[bytes]], dict[str, tuple[float, float]]]:
    """The batches as typed record values (a flush of 1,000 each), and the CPU seconds of
    writing the events as JSON (orjson, the collector today) and as Arrow, COLD and HOT."""
    import orjson
    import pyarrow as pa

    schema = typed_schema()
    events = [orjson.loads(line) for line in lines]
    rows = [typed_row(e) for e in events]
    n = len(rows)

    def cpu_s(work: Callable[[], object]) -> float:
        started = time.process_time()
        work()
        return time.process_time() - started

    flushes: list[Any] = []
    # Twice, the second timed: a running collector's allocator has its pages already (the
    # first pass costs ~2.5x, most of it the kernel's fresh pages).
    for _ in range(2):
        flushes.clear()
        arrow_s = cpu_s(
            lambda: flushes.extend(
                typed_flush(rows[at : at + FLUSH_EVENTS], schema)
                for at in range(0, n, FLUSH_EVENTS)
            )
        )
    writing = {
        COLD: (cpu_s(lambda: deque(map(orjson.dumps, events), 0)), arrow_s),
        HOT: (
            cpu_s(lambda: deque(map(orjson.dumps, events[:FLUSH_EVENTS] * (n // FLUSH_EVENTS)), 0)),
            cpu_s(
                lambda: deque(
                    (typed_flush(rows[:FLUSH_EVENTS], schema) for _ in range(n // FLUSH_EVENTS)), 0
                )
            ),
        ),
    }
    per_batch = batch_rows // FLUSH_EVENTS
    bodies = []
    for at in range(0, len(flushes), per_batch):
        # One stream a batch: a consumer would frame the flushes' batches as one (ClickHouse
        # reads a stream to its end-of-stream mark), bytes only.
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, schema) as stream:
            for flush in flushes[at : at + per_batch]:
                stream.write_batch(flush)
        bodies.append([sink.getvalue().to_pybytes()])
    return bodies, writing


def checksum(writer: ChdbWriter) -> str:
    """What beacon.events holds, as one figure: two passes that store the same rows agree."""
    columns = ", ".join(EVENT_COLUMNS)
    return writer.query_sync(
        f"SELECT count(), sum(cityHash64({columns})) FROM beacon.events", "TSV"
    ).strip()


async def timed_passes(
    writer: ChdbWriter, ingest: Ingest, bodies: list[Any], opts: argparse.Namespace, label: str
) -> tuple[dict[str, float], float, str]:
    """Store `bodies` with `ingest` twice (a warming pass, then the timed one): CPU seconds by
    step, in all, and the checksum of what was stored."""
    timed = TimedWriter(writer, ingest.lines, ingest.stage)
    ingest.writer = timed  # type: ignore[assignment]  # the Writer calls it times
    # A pass first, untimed: the timed ones then find the memory and the user agents of a
    # consumer that has been running (the first pass also pays the kernel's fresh pages).
    for name in ("warm", "timed"):
        empty(writer)
        started = time.process_time()
        timed.spent.clear()
        writer.query_sync("SYSTEM STOP MERGES")
        for i, body in enumerate(bodies):
            stored = await ingest.store(body, f"bench-{label}-{name}-{i}")
            assert stored.rows == min(opts.batch_rows, opts.events - i * opts.batch_rows)
        merges = settle(writer)
        pipeline = time.process_time() - started
    spent = dict(timed.spent)
    spent["Python: each distinct agent's enrichment (cached), the glue"] = (
        pipeline - merges - sum(spent.values())
    )
    spent[MERGES] = merges
    return spent, pipeline, checksum(writer)


async def run(opts: argparse.Namespace) -> None:
    from analytics.migrations import migrate  # here: it makes the views' SQL as it is imported

    lines = wire_lines(opts.events, 3_000)
    batches = [
        join_lines(chunks(lines[at : at + opts.batch_rows], 65_536))
        for at in range(0, opts.events, opts.batch_rows)
    ]
    typed = typed_bodies(lines, opts.batch_rows) if opts.typed else None
    writer = ChdbWriter(Path(opts.workdir))
    await migrate(writer, 0)
    spent, pipeline, stored = await timed_passes(writer, Ingest(writer), batches, opts, "json")
    if typed:
        typed_spent, typed_pipeline, typed_stored = await timed_passes(
            writer, TypedIngest(writer), typed[0], opts, "typed"
        )
        assert typed_stored == stored, (typed_stored, stored)  # the same rows either way

    # The storage limit: the same rows, in arrival order, from Native, into the emptied tables.
    blocks = native_blocks(writer._session, opts.events, opts.batch_rows)
    empty(writer)
    started = time.process_time()
    writer.query_sync("SYSTEM STOP MERGES")
    store_native(writer, blocks)
    limit_merges = settle(writer)
    limit = time.process_time() - started
    rows = int(writer.query_sync("SELECT count() FROM beacon.events", "TSV"))
    assert rows == opts.events, rows
    sizes = dict(
        line.split("\t")
        for line in writer.query_sync(
            "SELECT table, sum(bytes_on_disk) FROM system.parts WHERE active AND database = "
            "'beacon' AND table IN ('events', 'rollup_events_hourly') GROUP BY table",
            "TSV",
        ).splitlines()
    )
    events_mib, rollup_mib = (int(sizes[t]) / 2**20 for t in ("events", "rollup_events_hourly"))
    writer.close_sync()

    def us(seconds: float) -> str:
        return f"{seconds / opts.events * 1e6:6.2f}"

    n = len(batches)
    print(f"{opts.events:,} events, {n} inserts of {opts.batch_rows:,}; CPU µs an event")
    print("consumers/ingest.Ingest.store:")
    for step, seconds in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"  {step:60s} {us(seconds)}")
    print(f"  {'all of it':60s} {us(pipeline)}")
    print("chDB storing the same rows from Native (the storage limit):")
    print(f"  {'inserts into beacon.events (views)':60s} {us(limit - limit_merges)}")
    print(f"  {MERGES:60s} {us(limit_merges)}")
    print(f"  {'all of it':60s} {us(limit)}")
    print(f"ratio to the storage limit (Kafka read not included): {limit / pipeline:.2f}x")
    if typed:
        print("the same store step with typed rows on the wire (Arrow, a flush of 1,000 each):")
        for step, seconds in sorted(typed_spent.items(), key=lambda kv: -kv[1]):
            print(f"  {step:60s} {us(seconds)}")
        print(f"  {'all of it':60s} {us(typed_pipeline)}")
        print(
            f"ratio to the storage limit (Kafka read not included): {limit / typed_pipeline:.2f}x"
        )
        print("on the collector's core, writing the events (JSON: orjson, today; Arrow: a flush")
        print("of 1,000 as one record batch), and both ends together with the store step:")
        for how, (json_s, arrow_s) in typed[1].items():
            print(f"  {how}:")
            print(f"    {'JSON / Arrow':58s} {us(json_s)} / {us(arrow_s)}")
            both = f"{us(json_s + pipeline)} / {us(arrow_s + typed_pipeline)}"
            print(f"    {'JSON lines / typed rows, both ends':58s} {both}")
    print(f"rollup_events_hourly: {rollup_mib:.1f} MiB; beacon.events: {events_mib:.1f} MiB")


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    args.add_argument("--events", type=int, default=600_000)
    args.add_argument("--batch-rows", type=int, default=100_000)
    args.add_argument(
        "--cpu",
        type=int,
        default=max(os.sched_getaffinity(0)),
        help="the CPU to pin the process to (default: the last this process may use)",
    )
    args.add_argument(
        "--typed",
        action="store_true",
        help="also store the events as typed rows (Arrow) would bring them: what the parse "
        "and the checks cost against what writing the rows costs the collector",
    )
    args.add_argument(
        "--live-sums",
        action="store_true",
        help="live rollup rows count events as plain sums, not sets of event ids: what the "
        "sets cost (not exact under replays: docs/performance.md)",
    )
    opts = args.parse_args()
    if opts.typed and opts.batch_rows % FLUSH_EVENTS:
        args.error("--typed writes flushes of 1,000 events: --batch-rows must be a multiple")
    if opts.live_sums:  # before the schema is made from it
        live = rollups.SETTLED_STATES.replace("toUInt8(0) AS live", "toUInt8(1) AS live")
        rollups.LIVE_STATES = live.replace("toUInt8(1) AS settled", "toUInt8(0) AS settled")
    os.sched_setaffinity(0, {opts.cpu})  # before chDB starts a thread: they inherit it
    with tempfile.TemporaryDirectory(prefix="beacon-bench-ingest-") as workdir:
        opts.workdir = workdir
        asyncio.run(run(opts))


if __name__ == "__main__":
    main()
