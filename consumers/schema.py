"""The ClickHouse schema as versioned, idempotent migrations."""

from __future__ import annotations

import re

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

MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (1, "create events", EVENTS_V1),
    (2, "user agent columns", EVENTS_V2),
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
        await writer.execute(sql)
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
    """Set the events TTL to `retention_days` (0 removes it); a no-op when already so."""
    create = await writer.query(
        f"SELECT create_table_query FROM system.tables "
        f"WHERE database = '{DATABASE}' AND name = 'events'",
        "TSVRaw",
    )
    current = TTL_DAYS_RE.search(create)
    current_days = int(current.group(1) or current.group(2)) if current else 0
    if current_days == retention_days:
        return
    if retention_days == 0:
        await writer.execute(f"ALTER TABLE {EVENTS} REMOVE TTL")
    else:
        ttl = f"toDateTime(received_at) + INTERVAL {retention_days} DAY"
        await writer.execute(f"ALTER TABLE {EVENTS} MODIFY TTL {ttl}")
