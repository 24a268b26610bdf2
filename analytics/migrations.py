"""The ClickHouse schema as versioned, idempotent migrations, and the retention TTL."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Awaitable, Callable

from analytics.cluster import check_mode
from analytics.cluster_ddl import cluster_statements, schema_migrations
from analytics.rekey import rekey_events
from analytics.rollup_settle import Settler, on_rollups
from analytics.rollups import (
    IVT_ROLLUPS,
    ROLLUPS,
    ROLLUPS_V5,
    SET_ROLLUPS,
    VIEWABILITY_HOURLY_V8,
    migration_statements,
)
from analytics.schema import (
    DATABASE,
    ERASURES_V1,
    EVENTS_V1,
    EVENTS_V2,
    EVENTS_V3,
    EVENTS_V4,
    EVENTS_V5,
    EVENTS_V6,
)
from analytics.settings import StoreSettings
from analytics.store import VALUES_SETTINGS, Cluster, StoreError, Writer
from analytics.visits import VISITS
from analytics.visits import migration_statements as visits_statements


async def backfill_rollups(writer: Writer) -> None:
    """The rollups of the events stored before them (schema migration 5): every day rebuilt,
    on each shard of a cluster. Safe to rerun: a rebuild replaces whole days
    (analytics/rollup_settle.py)."""
    # The rollups of migration 5 alone: visits (7) and viewability (8) come after.
    await on_rollups(
        writer,
        Settler.backfill,
        lambda w, suffix: Settler(w, suffix=suffix, with_visits=False, rollups=ROLLUPS_V5),
    )


# A migration: its single-node statements (the cluster's are made from them,
# analytics/cluster_ddl.py), and what has to follow them beyond SQL.
Migration = tuple[int, str, tuple[str, ...], Callable[[Writer], Awaitable[None]] | None]
MIGRATIONS: tuple[Migration, ...] = (
    (1, "create events", (EVENTS_V1,), None),
    (2, "user agent columns", (EVENTS_V2,), None),
    (3, "signed urls, conversions, machine opens", (EVENTS_V3,), None),
    (4, "consent basis", (EVENTS_V4,), None),
    # Rollup tables and their materialized views (analytics/rollups.py), then the rollups of
    # the events already stored. IF NOT EXISTS everywhere: safe to rerun.
    (5, "rollups", tuple(migration_statements()), backfill_rollups),
    (6, "country", (EVENTS_V5,), None),
    # The visits of settled days (analytics/visits.py); the consumer's next settling pass
    # makes them for the days settled before, as it does when the visit gap changes.
    (7, "visits", tuple(visits_statements()), None),
    # No event stored before the /a.js tag carries an impression id: nothing to backfill.
    (8, "ad viewability", tuple(migration_statements((VIEWABILITY_HOURLY_V8,))[1:]), None),
    # Events stored before are not classified: their rows, and their rollup rows, read ''.
    (
        9,
        "invalid traffic",
        (EVENTS_V6, *(sql for r in IVT_ROLLUPS for sql in r.add_dim_statements("ivt"))),
        None,
    ),
    # Sorted by arrival time before the event id: merges at a fraction of the cost
    # (analytics/rekey.py); a copy of the table, once.
    (10, "events sort key", (), rekey_events),
    # Nothing to backfill: an erasure before it left no record, and its events are gone.
    (11, "erasures", (ERASURES_V1,), None),
)

SCHEMA_MIGRATIONS = f"""
CREATE TABLE IF NOT EXISTS {DATABASE}.schema_migrations
(version UInt32, name String, applied_at DateTime DEFAULT now())
ENGINE = MergeTree ORDER BY version
"""


def statements(sql: str, cluster: Cluster | None) -> list[str]:
    """What runs for one single-node statement: itself, or its cluster form."""
    return [sql] if cluster is None else cluster_statements(sql, cluster.name)


async def migrate(writer: Writer, retention_days: int) -> list[int]:
    """Apply the migrations not yet recorded, then the retention TTL; returns versions applied.

    In cluster mode (the writer's Cluster) every statement runs ON CLUSTER on the _local tables
    and their Distributed ones; a server whose schema is not the mode's is refused (ModeError).
    The embedded store (the writer owns it) also caps its rollups' merges: cap_set_merges.
    """
    cluster = await check_mode(writer)
    on = f" {cluster.on}" if cluster else ""
    await writer.execute(f"CREATE DATABASE IF NOT EXISTS {DATABASE}{on}")
    await writer.execute(schema_migrations(cluster.name) if cluster else SCHEMA_MIGRATIONS)
    done_text = await writer.query(f"SELECT version FROM {DATABASE}.schema_migrations", "TSV")
    done = {int(v) for v in done_text.split()}
    applied = []
    for version, name, sqls, after in MIGRATIONS:
        if version in done:
            continue
        for sql in sqls:
            for statement in statements(sql, cluster):
                await writer.execute(statement)
        if after is not None:
            await after(writer)
        # Recorded once ON CLUSTER succeeded on every server (it raises otherwise): one row in
        # a table every node replicates.
        await writer.execute(
            f"INSERT INTO {DATABASE}.schema_migrations (version, name) {VALUES_SETTINGS} "
            f"VALUES ({version}, '{name}')"
        )
        applied.append(version)
    await apply_retention(writer, retention_days, cluster)
    if cluster is None and getattr(writer, "exclusive", False):
        await cap_set_merges(writer)
    return applied


# ClickHouse shows the TTL back normalised, `INTERVAL 30 DAY` as `toIntervalDay(30)`; both are
# read so a TTL is neither re-applied at every start (MODIFY TTL recomputes it over every
# part) nor left in place when retention is set to 0.
TTL_DAYS_RE = re.compile(r"\bTTL .*?(?:INTERVAL (\d+) DAY|toIntervalDay\((\d+)\))")


RETAINED = (
    ("events", "toDateTime(received_at)"),
    # No event older than the events' retention is kept, so no erasure need outlive it.
    ("erasures", "toDateTime(erased_at)"),
    *((r.name, "period") for r in ROLLUPS),
    (VISITS.split(".")[1], "period"),
)


async def create_query(writer: Writer, table: str) -> str:
    """The CREATE statement of the MergeTree-family `table` of the database, "" when none."""
    create = await writer.query(
        "SELECT create_table_query FROM system.tables "
        f"WHERE database = '{DATABASE}' AND name = '{table}' AND engine LIKE '%Tree'",
        "TSVRaw",
    )
    return create.strip()


async def apply_retention(
    writer: Writer, retention_days: int, cluster: Cluster | None = None
) -> None:
    """Set the TTL of the events and the rollups to `retention_days` (0 removes it); a no-op
    for a table already so. The rollups keep what the events keep: they hold hashes of ids.
    On a cluster, the _local tables ON CLUSTER (a Distributed table keeps no rows)."""
    suffix, on = ("_local", f" {cluster.on}") if cluster else ("", "")
    for table, column in RETAINED:
        create = await create_query(writer, f"{table}{suffix}")
        if not create:
            continue  # not there (yet)
        current = TTL_DAYS_RE.search(create)
        current_days = int(current.group(1) or current.group(2)) if current else 0
        if current_days != retention_days:
            await writer.execute(ttl_statement(f"{table}{suffix}", column, retention_days, on))


# How large a part of a rollup with sets may grow by merges in the embedded store. A merge
# holds the sets of the rows it merges at ~8x their size on disk, and a live day's sets grow
# with its traffic: uncapped, the embedded consumer's peak RSS followed the day (1.2 GB after
# 2.4 million events, a merge of rollup_events_hourly alone 560 MB), capped it stays where
# its batches put it (0.6 GB; docs/performance.md "Memory of the embedded consumer"). A live
# day is then more parts (rollup_events_hourly: one per 190,000-370,000 events), which a
# report reads in the same pass and settling folds into sums. A ClickHouse server keeps its own
# merge policy: it has the memory, and a cluster's days are far larger.
SET_MERGE_MAX_BYTES = 16 * 2**20
MERGE_CAP_RE = re.compile(r"\bmax_bytes_to_merge_at_max_space_in_pool = (\d+)")


async def cap_set_merges(writer: Writer) -> None:
    """Set SET_MERGE_MAX_BYTES on each rollup with sets; a no-op for a table already so."""
    for rollup in SET_ROLLUPS:
        create = await create_query(writer, rollup.name)
        current = MERGE_CAP_RE.search(create)
        if create and (current is None or int(current.group(1)) != SET_MERGE_MAX_BYTES):
            await writer.execute(
                f"ALTER TABLE {rollup.table} MODIFY SETTING "
                f"max_bytes_to_merge_at_max_space_in_pool = {SET_MERGE_MAX_BYTES}"
            )


def ttl_statement(table: str, column: str, retention_days: int, on: str = "") -> str:
    """The ALTER that sets `table`'s TTL to `retention_days` (0: none)."""
    if retention_days == 0:
        return f"ALTER TABLE {DATABASE}.{table}{on} REMOVE TTL"
    return f"ALTER TABLE {DATABASE}.{table}{on} MODIFY TTL {column} + INTERVAL {retention_days} DAY"


def migrate_command(settings: StoreSettings) -> int:
    """`beacon migrate`: the schema brought up to date: the embedded store's, or the ClickHouse
    server's at BEACON_CLICKHOUSE_URL (a cluster's ON CLUSTER with BEACON_CLICKHOUSE_CLUSTER)."""
    from analytics.connect import open_writer

    async def go() -> list[int]:
        writer = open_writer(settings)
        try:
            return await migrate(writer, settings.retention_days)
        finally:
            await writer.close()

    try:
        applied = asyncio.run(go())
    except StoreError as exc:
        print(f"beacon migrate: {str(exc)[:1000]}", file=sys.stderr)
        return 1
    print(f"applied migrations: {applied}" if applied else "schema is up to date")
    return 0
