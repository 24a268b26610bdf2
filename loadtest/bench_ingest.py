"""Where an event's CPU goes in the consumer's store step, beside chDB storing the same rows.

    python -m loadtest.bench_ingest [--events 300000] [--batch-rows 100000] [--cpu 1]

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
from collections.abc import Callable, Sequence
from pathlib import Path

from analytics.migrations import migrate
from analytics.store import insert_settings
from analytics.store.chdb import ChdbWriter
from consumers.ingest import EVENT_COLUMNS, Ingest
from consumers.sources.protocol import join_lines
from loadtest.bench_consumer import chunks, merges_done
from loadtest.bench_enrich import wire_lines

MERGES = "merges the inserts started"


class TimedWriter:
    """A ChdbWriter whose calls add their CPU seconds to `spent`, under a name for the step."""

    def __init__(self, writer: ChdbWriter, ingest_names: Callable[[], Ingest]) -> None:
        self.writer = writer
        self.ingest = ingest_names
        self.spent: defaultdict[str, float] = defaultdict(float)

    def step(self, call: str, what: str) -> str:
        i = self.ingest()
        if call == "load":
            return "lines in (LineAsString)" if what == i.lines else "enriched agents in"
        if call == "insert_from":
            return "insert into beacon.events (join, views)"
        if what.startswith(f"INSERT INTO {i.stage}"):
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


async def run(opts: argparse.Namespace) -> None:
    lines = wire_lines(opts.events, 3_000)
    batches = [
        join_lines(chunks(lines[at : at + opts.batch_rows], 65_536))
        for at in range(0, opts.events, opts.batch_rows)
    ]
    writer = ChdbWriter(Path(tempfile.mkdtemp(prefix="beacon-bench-ingest-")))
    await migrate(writer, 0)
    ingest: Ingest | None = None
    timed = TimedWriter(writer, lambda: ingest)  # type: ignore[arg-type,return-value]
    ingest = Ingest(timed)  # type: ignore[arg-type]
    started = time.process_time()
    writer.query_sync("SYSTEM STOP MERGES")
    for i, body in enumerate(batches):
        stored = await ingest.store(body, f"bench-ingest-{i}")
        assert stored.rows == min(opts.batch_rows, opts.events - i * opts.batch_rows), stored
    merges = settle(writer)
    pipeline = time.process_time() - started
    spent = dict(timed.spent)
    spent["Python: distinct agents enriched (parsed on first sight), glue"] = (
        pipeline - merges - sum(spent.values())
    )
    spent[MERGES] = merges

    # The storage limit: the same rows, in time order, from Native, into the emptied tables.
    columns = ", ".join(EVENT_COLUMNS)
    natives: Sequence[bytes] = [
        writer._session.query(
            f"SELECT {columns} FROM beacon.events ORDER BY received_at, event_id "
            f"LIMIT {opts.batch_rows} OFFSET {at}",
            "Native",
        ).bytes()
        for at in range(0, opts.events, opts.batch_rows)
    ]
    tables = writer.query_sync(
        "SELECT name FROM system.tables WHERE database = 'beacon' AND engine LIKE '%MergeTree'",
        "TSV",
    ).split()
    for table in tables:
        writer.query_sync(f"TRUNCATE TABLE beacon.{table}")
    started = time.process_time()
    writer.query_sync("SYSTEM STOP MERGES")
    for i, block in enumerate(natives):
        head = f"INSERT INTO beacon.events ({columns}) {insert_settings(f'bench-limit-{i}')}"
        writer._insert(head, "Native", block)
    limit_merges = settle(writer)
    limit = time.process_time() - started
    rows = int(writer.query_sync("SELECT count() FROM beacon.events", "TSV"))
    assert rows == opts.events, rows
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


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    args.add_argument("--events", type=int, default=300_000)
    args.add_argument("--batch-rows", type=int, default=100_000)
    args.add_argument("--cpu", type=int, default=1, help="the CPU to pin the process to")
    opts = args.parse_args()
    os.sched_setaffinity(0, {opts.cpu})  # before chDB starts a thread: they inherit it
    asyncio.run(run(opts))


if __name__ == "__main__":
    main()
