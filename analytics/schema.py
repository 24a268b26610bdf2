"""The events table: its name and the statements that made each version of it (applied by
analytics/migrations.py)."""

from __future__ import annotations

DATABASE = "beacon"
EVENTS = f"{DATABASE}.events"
# received_at before event_id: time-ordered batches make parts that merge almost as a copy
# (schema migration 10 copies a table made with the key before it: analytics/rekey.py).
EVENTS_SORT_KEY = "site, toDate(received_at), event_type, received_at, event_id"

# Field names are the wire format's (docs/tracking.md "Event format"); the consumer converts
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
ORDER BY ({EVENTS_SORT_KEY})
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
# machine-open flags the consumer adds (analytics/machine_opens.py). Money is Decimal so that
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

# The client's country, ISO 3166-1 alpha-2 or "" (docs/tracking.md "Event format"): looked up by
# the collector from the whole address before it is truncated (collector/geo.py). Rows from
# before read "".
EVENTS_V5 = f"""
ALTER TABLE {EVENTS}
    ADD COLUMN IF NOT EXISTS country LowCardinality(String) AFTER ip
"""

# Invalid traffic (analytics/ivt.py): why the consumer took an event for one, '' when it did
# not. Rows from before read "" (not classified).
EVENTS_V6 = f"""
ALTER TABLE {EVENTS}
    ADD COLUMN IF NOT EXISTS ivt LowCardinality(String) AFTER mail_proxy
"""

# Who was erased (analytics/erasure.py), as a hash of the id (the list names nobody in clear),
# and when: an event of theirs received before it and stored after it (in the spool or Kafka
# then, or in a batch replayed after a crash) is left out by the consumer (consumers/ingest.py).
ERASURES = f"{DATABASE}.erasures"
ERASURES_V1 = f"""
CREATE TABLE IF NOT EXISTS {ERASURES}
(
    field LowCardinality(String),
    value_hash UInt64,
    erased_at DateTime64(3, 'UTC')
)
ENGINE = MergeTree
ORDER BY (field, value_hash)
"""
