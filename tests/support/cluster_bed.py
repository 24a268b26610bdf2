"""Test-only: cluster mode on chDB's one-node cluster, one scenario per process.

    python -m tests.support.cluster_bed SCENARIO   -> JSON on stdout

The cluster is analytics/ddl.py's CLUSTER_CONFIG (cluster `beacon`, one shard, one replica,
macros), plus `three`: three shards that are all this node, to see an insert's fan-out. The
writer is analytics/ddl.py's ConnWriter in cluster mode: every ON CLUSTER statement is parsed
whole by ClickHouse's parser, then run without the clause (chDB runs no distributed DDL) on the
plain twins of the Replicated engines (a replica of chDB's in-memory Keeper stays read-only).
Every chDB engine is one per process, and a connection with a Keeper is never closed (closing
hangs): each scenario runs in a process of its own, which ends with os._exit.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from analytics import erasure
from analytics.cluster import ModeError
from analytics.ddl import CLUSTER_CONFIG, ONE_NODE, ConnWriter
from analytics.migrations import migrate
from analytics.rollup_settle import Settler, settle_all
from analytics.rollups import ROLLUPS
from analytics.schema import EVENTS
from analytics.store import Cluster
from consumers.ingest import Ingest
from tests.support.chdb_events import hour_ago_ms, wire

SHARD = "<shard><internal_replication>true</internal_replication><replica><host>localhost</host>"
THREE = "<three>" + f"{SHARD}<port>9000</port></replica></shard>" * 3 + "</three>"
CONFIG = CLUSTER_CONFIG.replace("</remote_servers>", f"{THREE}</remote_servers>")
LOCAL_TABLES = ["events_local", *(f"{r.name}_local" for r in ROLLUPS)]


def connect() -> Any:
    import chdb

    workdir = Path(tempfile.mkdtemp(prefix="beacon-cluster-bed-"))
    (workdir / "config.xml").write_text(CONFIG)
    return chdb.connect(f"{workdir / 'store'}?config-file={workdir / 'config.xml'}")


def people(at_ms: int) -> list[dict[str, Any]]:
    """Events that reach every rollup view: alice (2), bob, a visitor, a page, an order."""
    return [
        wire("open", at_ms, site="mail", campaign="c1", message="m1", recipient="alice"),
        wire(
            "click",
            at_ms + 1,
            site="mail",
            campaign="c1",
            message="m1",
            recipient="alice",
            click_id="k-1",
        ),
        wire("open", at_ms + 2, site="mail", campaign="c1", message="m1", recipient="bob"),
        wire(
            "pageview",
            at_ms + 3,
            site="blog",
            visitor_id=42,
            referrer="https://r.example/x",
            url_host="blog.example",
            url_path="/a",
        ),
        wire("conversion", at_ms + 4, site="shop", order_id="o-1", value="9.5", currency="EUR"),
    ]


def body(events: list[dict[str, Any]]) -> list[bytes]:
    return [b"\n".join(orjson.dumps(e) for e in events)]


def count(writer: ConnWriter, sql: str) -> int:
    return int(writer.run(sql, "TSV").strip() or 0)


def parts(writer: ConnWriter) -> dict[str, int]:
    """Active parts of each local table."""
    text = writer.run(
        "SELECT table, count() FROM system.parts WHERE database = 'beacon' AND active "
        "GROUP BY table",
        "JSONCompactEachRow",
    )
    found = dict(map(orjson.loads, text.splitlines()))
    return {t: int(found.get(t, 0)) for t in LOCAL_TABLES}


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {t: after[t] - before[t] for t in after if after[t] != before[t]}


async def cluster_writer(conn: Any) -> ConnWriter:
    writer = ConnWriter(conn, ONE_NODE, plain=True)
    await migrate(writer, 395)
    return writer


async def scenario_migrate(conn: Any) -> dict[str, Any]:
    writer = ConnWriter(conn, ONE_NODE, plain=True)
    first = await migrate(writer, 395)
    parsed = list(writer.parsed)
    second = await migrate(writer, 395)
    engines = writer.run(
        "SELECT name, engine FROM system.tables WHERE database = 'beacon' ORDER BY name",
        "JSONCompactEachRow",
    )
    return {
        "first": first,
        "second": second,
        "parsed_first": parsed,
        "parsed_second": writer.parsed[len(parsed) :],
        "engines": dict(map(orjson.loads, engines.splitlines())),
    }


async def refused(run: Callable[[], Awaitable[object]]) -> str:
    try:
        await run()
    except ModeError as exc:
        return str(exc)
    return ""


async def scenario_mismatch(conn: Any) -> dict[str, Any]:
    single = ConnWriter(conn)
    clustered = ConnWriter(conn, ONE_NODE, plain=True)
    elsewhere = ConnWriter(conn, Cluster("nosuch"), plain=True)
    out = {"unknown_cluster": await refused(lambda: migrate(elsewhere, 395))}
    await migrate(single, 395)  # a single-node schema
    out["cluster_on_single"] = await refused(lambda: migrate(clustered, 395))
    out["erase_cluster_on_single"] = await refused(
        lambda: erasure.erase(clustered, "recipient", "alice")
    )
    for table in ("rollup_settling", *(r.name for r in ROLLUPS), "events", "schema_migrations"):
        single.run(f"DROP TABLE IF EXISTS beacon.{table}")
    for view in (r.view for r in ROLLUPS):
        single.run(f"DROP TABLE IF EXISTS {view}")
    await migrate(clustered, 395)  # a cluster's schema
    out["single_on_cluster"] = await refused(lambda: migrate(single, 395))
    out["erase_single_on_cluster"] = await refused(
        lambda: erasure.erase(single, "recipient", "alice")
    )
    return out


def rollup_people(writer: ConnWriter) -> dict[str, int]:
    """What the rollups hold of the test's people, read through the Distributed tables."""
    return {
        "recipients": count(
            writer, "SELECT uniqExactMerge(recipients) FROM beacon.rollup_events_hourly"
        ),
        "events": count(
            writer,
            "SELECT sum(events_settled) + uniqExactMerge(events_live) "
            "FROM beacon.rollup_events_hourly WHERE site = 'mail'",
        ),
        "clicks": count(writer, "SELECT count() FROM beacon.rollup_clicks_local"),
    }


async def scenario_erase(conn: Any) -> dict[str, Any]:
    writer = await cluster_writer(conn)
    ingest = Ingest(writer)
    events = body(people(hour_ago_ms()))
    await ingest.store(events, "bed:erase:0-4")
    before = {"events_local": count(writer, f"SELECT count() FROM {EVENTS}_local"),
              **rollup_people(writer)}  # fmt: skip
    start = len(writer.parsed)
    rows = await erasure.erase(writer, "recipient", "alice")
    statements = writer.parsed[start:]
    after = {"events_local": count(writer, f"SELECT count() FROM {EVENTS}_local"),
             **rollup_people(writer)}  # fmt: skip
    alice = count(writer, f"SELECT count() FROM {EVENTS}_local WHERE recipient = 'alice'")
    # The batch replayed (a consumer died before its commit): the erasure, read through the
    # Distributed table, keeps alice out of what the check of the stored ids finds missing.
    replayed = await ingest.store(events, "bed:erase:0-4", replay=True)
    alice_after_replay = count(
        writer, f"SELECT count() FROM {EVENTS}_local WHERE recipient = 'alice'"
    )
    return {"rows": rows, "before": before, "after": after, "alice_left": alice,
            "replay_erased": replayed.erased, "alice_after_replay": alice_after_replay,
            "statements": statements}  # fmt: skip


async def scenario_dedup(conn: Any) -> dict[str, Any]:
    writer = await cluster_writer(conn)
    for table in LOCAL_TABLES:
        writer.run(f"SYSTEM STOP MERGES beacon.{table}")
    ingest = Ingest(writer)
    events = people(hour_ago_ms())
    stored = []
    for token in ("bed:p0:0-4", "bed:p0:0-4"):  # a replay of the same batch: same token
        stored.append((await ingest.store(body(events), token)).rows)
    count_local = [count(writer, f"SELECT count() FROM {EVENTS}_local")]
    # The same events under a fresh token (a replay by another path): two copies stored, one
    # read with FINAL, on the shard of the first (sharded by event_id).
    await ingest.store(body(events), "bed:other:0-4")
    count_local.append(count(writer, f"SELECT count() FROM {EVENTS}_local"))
    final = count(writer, f"SELECT count() FROM {EVENTS} FINAL")
    # The writer's own insert path (JSONEachRow) through the Distributed table, twice.
    rows = b"\n".join(orjson.dumps(e) for e in people(hour_ago_ms() + 10_000))
    for _ in range(2):
        await writer.insert(EVENTS, rows, "bed:json:0-4")
    count_local.append(count(writer, f"SELECT count() FROM {EVENTS}_local"))
    return {"stored": stored, "events_local": count_local, "final": final}


def batch(size: int, at_ms: int) -> bytes:
    """`size` events, a fifth of each kind, so every rollup view gets rows."""
    kinds = people(at_ms)
    out = []
    for i in range(size):
        event = dict(kinds[i % len(kinds)])
        event.update(wire(event["event_type"], at_ms + i), recipient=f"r-{i}")
        event["click_id"] = f"k-{i}" if event["event_type"] == "click" else ""
        out.append(orjson.dumps(event))
    return b"\n".join(out)


async def scenario_parts(conn: Any) -> dict[str, Any]:
    """New parts per insert on each shard: through the Distributed table, into the shard's
    events_local directly, and through a Distributed table over three shards (this node)."""
    writer = await cluster_writer(conn)
    three = "Distributed('three', beacon, events_local, cityHash64(event_id))"
    writer.run(f"CREATE TABLE beacon.events_three AS {EVENTS}_local ENGINE = {three}")
    for table in LOCAL_TABLES:
        writer.run(f"SYSTEM STOP MERGES beacon.{table}")
    size, at_ms, out = 10_000, hour_ago_ms(), {}
    for name, table, token in (
        ("distributed", EVENTS, "bed:d:0"),
        ("local", f"{EVENTS}_local", "bed:l:0"),
        ("distributed_3_shards", "beacon.events_three", ""),
    ):
        before = parts(writer)
        rows = batch(size, at_ms).decode()
        at_ms += size
        started = time.perf_counter()
        if token:
            await writer.insert(table, rows.encode(), token)
        else:  # the three "shards" share one table here, so one token would fold their slices
            writer.run(f"INSERT INTO {table} SETTINGS distributed_foreground_insert = 1, "
                       f"insert_deduplicate = 0 FORMAT JSONEachRow\n{rows}")  # fmt: skip
        seconds = time.perf_counter() - started
        out[name] = {"new_parts": delta(before, parts(writer)), "rows": size,
                     "seconds": round(seconds, 3)}  # fmt: skip
    return out


class Recording(ConnWriter):
    """ConnWriter keeping every statement it ran."""

    def __init__(self, conn: Any) -> None:
        super().__init__(conn, ONE_NODE, plain=True)
        self.ran: list[str] = []

    def run(self, sql: str, fmt: str = "TSV") -> str:
        self.ran.append(sql)
        return super().run(sql, fmt)


async def scenario_settle(conn: Any) -> dict[str, Any]:
    """A closed day settled on each shard's _local tables, as the consumers' loop does."""
    writer = Recording(conn)
    await migrate(writer, 395)
    two_days_ago = hour_ago_ms() - 2 * 86_400_000
    await Ingest(writer).store(body(people(two_days_ago)), "bed:settle:0-4")
    flags = "SELECT max(live), max(settled) FROM beacon.rollup_events_hourly_local"
    live = writer.run(flags, "JSONCompactEachRow").strip()
    start = len(writer.ran)
    settler = Settler(writer, insert_margin_s=-5)  # every row in: they came a second ago
    first = await settle_all(settler)
    statements = [sql for sql in writer.ran[start:] if not sql.startswith("SELECT")]
    second = await settle_all(settler)
    return {
        "first": first,
        "second": second,
        "live_before": orjson.loads(live),
        "flags_after": orjson.loads(writer.run(flags, "JSONCompactEachRow").strip()),
        "events": rollup_people(writer)["events"],
        "statements": statements,
    }


SCENARIOS = {
    "settle": scenario_settle,
    "migrate": scenario_migrate,
    "mismatch": scenario_mismatch,
    "erase": scenario_erase,
    "dedup": scenario_dedup,
    "parts": scenario_parts,
}


def main() -> None:
    try:
        result = asyncio.run(SCENARIOS[sys.argv[1]](connect()))
        sys.stdout.write(json.dumps(result, indent=1, default=str) + "\n")
        sys.stdout.flush()
    except BaseException as exc:  # the answer, then out: the connection is never closed
        sys.stderr.write(f"cluster_bed {sys.argv[1]}: {exc!r}\n")
        sys.stderr.flush()
        os._exit(1)
    os._exit(0)


if __name__ == "__main__":
    main()
