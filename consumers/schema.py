"""The ClickHouse schema as versioned, idempotent migrations."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from consumers.writers import Writer

DATABASE = "beacon"
EVENTS = f"{DATABASE}.events"

# Field names are the wire format's (README "Event format"); the consumer converts
# `received_at` from ms to seconds because ClickHouse reads DateTime64 text as seconds.
EVENTS_V1 = f"""
CREATE TABLE IF NOT EXISTS {EVENTS}
(
    schema_version UInt8,
    event_id UUID,
    received_at DateTime64(3, 'UTC'),
    event_type LowCardinality(String),
    site LowCardinality(String),
    campaign LowCardinality(String),
    message String,
    recipient String,
    ad LowCardinality(String),
    url_host LowCardinality(String),
    url_path String,
    url_query String,
    referrer String,
    props Map(LowCardinality(String), String),
    user_agent String,
    ip String,
    visitor_id UInt64,
    dnt UInt8,
    transport LowCardinality(String),
    inserted_at DateTime DEFAULT now()
)
-- Replacing on the sort key, which ends in event_id: the backstop for replayed events that
-- reach the table twice with different insert tokens. Reports read with FINAL.
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(received_at)
ORDER BY (site, toDate(received_at), event_type, event_id)
-- Plain MergeTree ignores insert_deduplication_token without this window.
SETTINGS non_replicated_deduplication_window = 10000
"""

# What the consumer derives from user_agent (consumers/useragent.py). IF NOT EXISTS keeps the
# statement safe to rerun when a migration ran but was not recorded (a crash in between).
EVENTS_V2 = f"""
ALTER TABLE {EVENTS}
    ADD COLUMN IF NOT EXISTS browser LowCardinality(String) AFTER user_agent,
    ADD COLUMN IF NOT EXISTS browser_version LowCardinality(String) AFTER browser,
    ADD COLUMN IF NOT EXISTS os LowCardinality(String) AFTER browser_version,
    ADD COLUMN IF NOT EXISTS device_type LowCardinality(String) AFTER os,
    ADD COLUMN IF NOT EXISTS is_bot UInt8 AFTER device_type
"""

# Signed URLs, clicks and conversions (wire schema_version 2, collector/event.py) and the
# machine-open flags the consumer adds (consumers/machine_opens.py). Money is Decimal so that
# revenue adds up exactly; the bloom filter lets attribution find a click by its id without
# reading every click.
EVENTS_V3 = f"""
ALTER TABLE {EVENTS}
    ADD COLUMN IF NOT EXISTS verified UInt8 AFTER transport,
    ADD COLUMN IF NOT EXISTS click_id String AFTER verified,
    ADD COLUMN IF NOT EXISTS order_id String AFTER click_id,
    ADD COLUMN IF NOT EXISTS value Decimal(18, 4) AFTER order_id,
    ADD COLUMN IF NOT EXISTS currency LowCardinality(String) AFTER value,
    ADD COLUMN IF NOT EXISTS machine_open UInt8 AFTER is_bot,
    ADD COLUMN IF NOT EXISTS machine_reason LowCardinality(String) AFTER machine_open,
    ADD COLUMN IF NOT EXISTS mail_proxy LowCardinality(String) AFTER machine_reason,
    ADD INDEX IF NOT EXISTS click_id_bloom click_id TYPE bloom_filter(0.01) GRANULARITY 4
"""

# On what basis a row was kept: granted, not_required, or missing (stored without identifiers);
# collector/consent.py. Rows from before read "".
EVENTS_V4 = f"""
ALTER TABLE {EVENTS}
    ADD COLUMN IF NOT EXISTS consent LowCardinality(String) AFTER dnt
"""


async def rollups_v5(writer: Writer) -> None:
    """Rollup tables and their materialized views (consumers/rollups.py), then the rollups of
    the events already stored. Safe to rerun: IF NOT EXISTS, and the backfill replaces whole
    days (consumers/rollup_settle.py)."""
    from consumers.rollup_settle import Settler, settles_here
    from consumers.rollups import migration_statements

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
    from consumers.rollups import ROLLUPS

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
