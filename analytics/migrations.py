"""The ClickHouse schema as versioned, idempotent migrations, and the retention TTL."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable

from analytics.rollup_settle import Settler, settles_here
from analytics.rollups import ROLLUPS, migration_statements
from analytics.schema import DATABASE, EVENTS_V1, EVENTS_V2, EVENTS_V3, EVENTS_V4
from analytics.settings import StoreSettings
from analytics.store import Writer


async def rollups_v5(writer: Writer) -> None:
    """Rollup tables and their materialized views (analytics/rollups.py), then the rollups of
    the events already stored. Safe to rerun: IF NOT EXISTS, and the backfill replaces whole
    days (analytics/rollup_settle.py)."""
    for sql in migration_statements():
        await writer.execute(sql)
    if await settles_here(writer):
        await Settler(writer).backfill()


# A migration is one statement, or a coroutine for one that needs more than SQL.
Migration = str | Callable[[Writer], Awaitable[None]]
MIGRATIONS: tuple[tuple[int, str, Migration], ...] = (
    (1, "create events", EVENTS_V1),
    (2, "user agent columns", EVENTS_V2),
    (3, "signed urls, conversions, machine opens", EVENTS_V3),
    (4, "consent basis", EVENTS_V4),
    (5, "rollups", rollups_v5),
)

SCHEMA_MIGRATIONS = f"""
CREATE TABLE IF NOT EXISTS {DATABASE}.schema_migrations
(version UInt32, name String, applied_at DateTime DEFAULT now())
ENGINE = MergeTree ORDER BY version
"""


async def migrate(writer: Writer, retention_days: int) -> list[int]:
    """Apply the migrations not yet recorded, then the retention TTL; returns versions applied."""
    await writer.execute(f"CREATE DATABASE IF NOT EXISTS {DATABASE}")
    await writer.execute(SCHEMA_MIGRATIONS)
    done_text = await writer.query(f"SELECT version FROM {DATABASE}.schema_migrations", "TSV")
    done = {int(v) for v in done_text.split()}
    applied = []
    for version, name, sql in MIGRATIONS:
        if version in done:
            continue
        if isinstance(sql, str):
            await writer.execute(sql)
        else:
            await sql(writer)
        await writer.execute(
            f"INSERT INTO {DATABASE}.schema_migrations (version, name) VALUES ({version}, '{name}')"
        )
        applied.append(version)
    await apply_retention(writer, retention_days)
    return applied


# ClickHouse shows the TTL back normalised, `INTERVAL 30 DAY` as `toIntervalDay(30)`; both are
# read so a TTL is neither re-applied at every start (MODIFY TTL recomputes it over every
# part) nor left in place when retention is set to 0.
TTL_DAYS_RE = re.compile(r"\bTTL .*?(?:INTERVAL (\d+) DAY|toIntervalDay\((\d+)\))")


async def apply_retention(writer: Writer, retention_days: int) -> None:
    """Set the TTL of the events and the rollups to `retention_days` (0 removes it); a no-op
    for a table already so. The rollups keep what the events keep: they hold hashes of ids."""
    await apply_ttl(writer, "events", "toDateTime(received_at)", retention_days)
    for rollup in ROLLUPS:
        # Not there (yet), or Distributed in front of a cluster (no TTL there): left alone.
        await apply_ttl(writer, rollup.name, "period", retention_days, "AND engine LIKE '%Tree'")


async def apply_ttl(
    writer: Writer, table: str, column: str, retention_days: int, only: str = ""
) -> None:
    create = await writer.query(
        f"SELECT create_table_query FROM system.tables "
        f"WHERE database = '{DATABASE}' AND name = '{table}' {only}",
        "TSVRaw",
    )
    if only and not create.strip():
        return
    current = TTL_DAYS_RE.search(create)
    current_days = int(current.group(1) or current.group(2)) if current else 0
    if current_days == retention_days:
        return
    if retention_days == 0:
        await writer.execute(f"ALTER TABLE {DATABASE}.{table} REMOVE TTL")
    else:
        ttl = f"{column} + INTERVAL {retention_days} DAY"
        await writer.execute(f"ALTER TABLE {DATABASE}.{table} MODIFY TTL {ttl}")


def migrate_command(settings: StoreSettings) -> int:
    """`beacon migrate`: the embedded store's schema brought up to date."""
    from analytics.store.chdb import ChdbWriter  # chDB is a heavy import: only its owner pays

    async def go() -> list[int]:
        writer = ChdbWriter(settings.store_dir)
        try:
            return await migrate(writer, settings.retention_days)
        finally:
            await writer.close()

    applied = asyncio.run(go())
    print(f"applied migrations: {applied}" if applied else "schema is up to date")
    return 0
