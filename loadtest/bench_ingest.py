"""Where an event's CPU goes in the consumer's store step, beside chDB storing the same rows.

    python -m loadtest.bench_ingest [--events 600000] [--batch-rows 100000] [--cpu N]

Runs consumers/ingest.Ingest on bench_enrich's events (in NDJSON records of 64 KiB, as the
collector produces them) into an embedded store with Beacon's schema and views, and times each
statement it sends, the Python between them, and the merges its inserts start (held back until
the last insert, so none runs in another step's time, then run and waited for). Then, in the
same process and store (its tables emptied), it stores the same rows again from ClickHouse's
`Native` format in inserts of the same size: what `make bench-consumer` calls the storage
limit. Everything but the Kafka read, in µs of CPU an event (chDB's threads included: pin it to
one CPU). Prints figures, not a timed test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from analytics import rollups
from analytics.store.chdb import ChdbWriter
from consumers.ingest import Ingest
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


def empty(writer: ChdbWriter) -> None:
    """Empty the store's tables, the schema kept."""
    tables = writer.query_sync(
        "SELECT name FROM system.tables WHERE database = 'beacon' AND engine LIKE '%MergeTree'",
        "TSV",
    ).split()
    for table in tables:
        writer.query_sync(f"TRUNCATE TABLE beacon.{table}")


async def run(opts: argparse.Namespace) -> None:
    from analytics.migrations import migrate  # here: it makes the views' SQL as it is imported

    lines = wire_lines(opts.events, 3_000)
    batches = [
        join_lines(chunks(lines[at : at + opts.batch_rows], 65_536))
        for at in range(0, opts.events, opts.batch_rows)
    ]
    writer = ChdbWriter(Path(opts.workdir))
    await migrate(writer, 0)
    ingest = Ingest(writer)
    timed = TimedWriter(writer, ingest.lines, ingest.stage)
    ingest.writer = timed  # type: ignore[assignment]  # the Writer calls it times
    # A pass first, untimed: the timed ones then find the memory and the user agents of a
    # consumer that has been running (the first pass also pays the kernel's fresh pages).
    for name in ("warm", "timed"):
        empty(writer)
        started = time.process_time()
        timed.spent.clear()
        writer.query_sync("SYSTEM STOP MERGES")
        for i, body in enumerate(batches):
            stored = await ingest.store(body, f"bench-{name}-{i}")
            assert stored.rows == min(opts.batch_rows, opts.events - i * opts.batch_rows)
        merges = settle(writer)
        pipeline = time.process_time() - started
    spent = dict(timed.spent)
    spent["Python: each distinct agent's enrichment (cached), the glue"] = (
        pipeline - merges - sum(spent.values())
    )
    spent[MERGES] = merges

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
        "--live-sums",
        action="store_true",
        help="live rollup rows count events as plain sums, not sets of event ids: what the "
        "sets cost (not exact under replays: docs/performance.md)",
    )
    opts = args.parse_args()
    if opts.live_sums:  # before the schema is made from it
        live = rollups.SETTLED_STATES.replace("toUInt8(0) AS live", "toUInt8(1) AS live")
        rollups.LIVE_STATES = live.replace("toUInt8(1) AS settled", "toUInt8(0) AS settled")
    os.sched_setaffinity(0, {opts.cpu})  # before chDB starts a thread: they inherit it
    with tempfile.TemporaryDirectory(prefix="beacon-bench-ingest-") as workdir:
        opts.workdir = workdir
        asyncio.run(run(opts))


if __name__ == "__main__":
    main()
