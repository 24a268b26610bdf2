"""A day of inserts into the embedded store with its merges running: what merging costs.

    python -m loadtest.bench_merges [--events 6000000] [--batch-rows 70000] [--bases 5,10]

`make bench-consumer` counts the merges of a fresh table, a few hundred thousand events; a
live store merges each row again and again as its parts grow (ClickHouse's merge selector
joins about `merge_selector_base` parts of a size into one, so a row is merged about
log_base(parts) times over a partition's life). This stores a day of bench_enrich's events
with consumers/ingest.Ingest, in inserts of `--batch-rows` spread over the day's hours, merges
running as in a live consumer, once for each `merge_selector_base` of `--bases`, alternating
for `--rounds`, each in a fresh process and store pinned to one CPU. For each it prints CPU
µs an event (while inserting, then with the merges until none ran for two seconds), rows
merged an event, the parts left in beacon.events and rollup_events_hourly, the most
anonymous memory, and the best of three of two reads of the day: a `FINAL` count of raw
events and a rollup's sets merged. Prints figures, not a timed test.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from analytics.store.chdb import ChdbWriter
from consumers.ingest import Ingest
from consumers.sources.protocol import join_lines
from loadtest.bench_consumer import chunks, merges_done, status_mb
from loadtest.bench_enrich import wire_lines
from loadtest.bench_ingest import merge_tree_tables

DAY_MS = 86_400_000
READS = {
    "raw events, FINAL": "SELECT count() FROM beacon.events FINAL WHERE site = 'shop'",
    "a rollup's sets": "SELECT campaign, uniqExactMerge(people) FROM beacon.rollup_events_hourly "
    "GROUP BY campaign",
}
COUNTERS = ("MergedRows", "Merge")


def counters(writer: ChdbWriter) -> dict[str, int]:
    names = ", ".join(f"'{c}'" for c in COUNTERS)
    out = writer.query_sync(
        f"SELECT event, value FROM system.events WHERE event IN ({names})", "TSV"
    )
    got = dict(line.split("\t") for line in out.splitlines())
    return {c: int(got.get(c, 0)) for c in COUNTERS}


def set_base(writer: ChdbWriter, base: float) -> None:
    for table in merge_tree_tables(writer):
        writer.query_sync(f"ALTER TABLE beacon.{table} MODIFY SETTING merge_selector_base = {base}")


async def one_day(writer: ChdbWriter, opts: argparse.Namespace, base: float) -> dict[str, Any]:
    set_base(writer, base)
    inserts = -(-opts.events // opts.batch_rows)
    midnight = datetime.datetime.now(datetime.UTC).replace(hour=0, minute=0, second=0)
    start_ms = int(midnight.timestamp()) * 1000
    before = counters(writer)
    peak = status_mb("RssAnon")["RssAnon"]
    sampling = True

    def sample() -> None:
        nonlocal peak
        while sampling:
            peak = max(peak, status_mb("RssAnon")["RssAnon"])
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    assert sampler.ident is not None
    sampler_clock = time.pthread_getcpuclockid(sampler.ident)  # its own CPU is left out
    ingest = Ingest(writer)
    made_s = 0.0  # making the events, on this thread, left out: merges run meanwhile
    started = time.process_time()
    for i, first in enumerate(range(0, opts.events, opts.batch_rows)):
        rows = min(opts.batch_rows, opts.events - first)
        made = time.thread_time()
        # A batch's events a millisecond apart, the batches spread over the day's hours.
        lines = wire_lines(rows, 3_000, first=first, start_ms=start_ms + i * DAY_MS // inserts)
        body = join_lines(chunks(lines, 65_536))
        made_s += time.thread_time() - made
        stored = await ingest.store(body, f"day-{base}-{i}")
        assert stored.rows == rows, (stored.rows, rows)
    inserts_s = time.process_time() - started - made_s - time.clock_gettime(sampler_clock)
    merges_done(writer.query_sync, quiet_s=2.0, wait_s=900)
    cpu_s = time.process_time() - started - made_s - time.clock_gettime(sampler_clock)
    sampling = False
    sampler.join()
    after = counters(writer)
    parts = dict(
        line.split("\t")
        for line in writer.query_sync(
            "SELECT table, count() FROM system.parts WHERE active AND database = 'beacon' "
            "GROUP BY table",
            "TSV",
        ).splitlines()
    )
    reads = {}
    for name, sql in READS.items():
        best = float("inf")
        for _ in range(3):
            started_wall = time.monotonic()
            writer.query_sync(sql, "TSV")
            best = min(best, time.monotonic() - started_wall)
        reads[name] = best * 1000
    stored_rows = int(writer.query_sync("SELECT count() FROM beacon.events", "TSV"))
    assert stored_rows == opts.events, stored_rows
    return {
        "base": base,
        "inserts": inserts,
        "cpu_us_per_event": cpu_s / opts.events * 1e6,
        "inserts_us_per_event": inserts_s / opts.events * 1e6,
        "merged_rows_per_event": (after["MergedRows"] - before["MergedRows"]) / opts.events,
        "merges": after["Merge"] - before["Merge"],
        "parts_events": int(parts.get("events", 0)),
        "parts_rollup_events_hourly": int(parts.get("rollup_events_hourly", 0)),
        "peak_anon_mb": peak,
        "read_ms": reads,
    }


async def child(opts: argparse.Namespace) -> dict[str, Any]:
    from analytics.migrations import migrate  # here: it makes the views' SQL as it is imported

    writer = ChdbWriter(Path(opts.workdir))
    await migrate(writer, 0)
    try:
        return await one_day(writer, opts, opts.base)
    finally:
        writer.close_sync()


def run_child(opts: argparse.Namespace, base: float, workdir: str) -> dict[str, Any]:
    """One day in a fresh process and store: what one run leaves (memory chDB keeps, files)
    does not reach the next."""
    args = [sys.executable, "-m", "loadtest.bench_merges", "--child", "--workdir", workdir,
            "--base", str(base), "--events", str(opts.events), "--batch-rows",
            str(opts.batch_rows), "--cpu", str(opts.cpu)]  # fmt: skip
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def show(r: dict[str, Any], opts: argparse.Namespace) -> None:
    reads = ", ".join(f"{name} {ms:,.0f} ms" for name, ms in r["read_ms"].items())
    print(
        f"merge_selector_base {r['base']:g}: {opts.events:,} events in {r['inserts']} inserts\n"
        f"  CPU µs an event            {r['cpu_us_per_event']:6.2f}"
        f"   ({r['inserts_us_per_event']:.2f} while inserting, then merges until quiet)\n"
        f"  rows merged an event       {r['merged_rows_per_event']:6.2f}   ({r['merges']} merges)\n"
        f"  parts left                 events {r['parts_events']}, "
        f"rollup_events_hourly {r['parts_rollup_events_hourly']}\n"
        f"  anonymous memory, most     {r['peak_anon_mb']:,.0f} MB (a batch's lines included)\n"
        f"  reads, best of 3           {reads}",
        flush=True,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=6_000_000)
    p.add_argument("--batch-rows", type=int, default=70_000, help="rows an insert")
    p.add_argument("--bases", default="5,10", help="merge_selector_base values to compare")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--cpu", type=int, default=max(os.sched_getaffinity(0)))
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--base", type=float, help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    opts = p.parse_args()
    if opts.child:
        os.sched_setaffinity(0, {opts.cpu})  # before chDB starts a thread: they inherit it
        print(json.dumps(asyncio.run(child(opts))), flush=True)
        return
    results = []
    for _ in range(opts.rounds):
        for base in (float(b) for b in opts.bases.split(",")):
            with tempfile.TemporaryDirectory(prefix="bench-merges-") as workdir:
                results.append(run_child(opts, base, workdir))
            show(results[-1], opts)
    if opts.json:
        Path(opts.json).write_text(json.dumps({"events": opts.events, "runs": results}, indent=1))


if __name__ == "__main__":
    main()
