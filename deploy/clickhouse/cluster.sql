-- Beacon schema for a ClickHouse cluster: every table of the single-node schema
-- (single-node.sql, analytics/schema.py) as <name>_local, ReplicatedReplacingMergeTree on each
-- shard, behind a Distributed <name> that consumers insert into and reports read. Made by
--   python -m analytics.ddl cluster > deploy/clickhouse/cluster.sql
-- from the statements that `beacon migrate` and the consumers run in cluster mode
-- (BEACON_CLICKHOUSE_CLUSTER=<name>: ON CLUSTER '<name>', analytics/cluster_ddl.py), and
-- checked by tests/integration/test_deploy.py. Needs the macros {cluster}, {shard} and
-- {replica} on every server ({replica} unique in the whole cluster) and Keeper. Either let
-- `beacon migrate` (or the first consumer) create it, or run this file once, on any node:
--   clickhouse-client --multiquery < deploy/clickhouse/cluster.sql
-- Consumers in cluster mode then find every migration recorded and change nothing but the
-- TTL, when BEACON_RETENTION_DAYS differs. They insert into the Distributed tables with
-- distributed_foreground_insert = 1, insert_quorum and a dedup token on each insert, and
-- settle the rollups on each shard; see docs/operations.md "ClickHouse".

CREATE DATABASE IF NOT EXISTS beacon ON CLUSTER '{cluster}';

CREATE TABLE IF NOT EXISTS beacon.schema_migrations ON CLUSTER '{cluster}'
(version UInt32, name String, applied_at DateTime DEFAULT now())
ENGINE = ReplicatedMergeTree('/clickhouse/tables/beacon/schema_migrations', '{replica}')
ORDER BY version;

-- Migration 1: create events.
CREATE TABLE IF NOT EXISTS beacon.events_local ON CLUSTER '{cluster}'
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
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/beacon/events_local', '{replica}')
PARTITION BY toYYYYMM(received_at)
ORDER BY (site, toDate(received_at), event_type, received_at, event_id)
SETTINGS replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS beacon.events ON CLUSTER '{cluster}' AS beacon.events_local
ENGINE = Distributed('{cluster}', beacon, events_local, cityHash64(event_id));

-- Migration 2: user agent columns.
ALTER TABLE beacon.events_local ON CLUSTER '{cluster}'
    ADD COLUMN IF NOT EXISTS browser LowCardinality(String) AFTER user_agent,
    ADD COLUMN IF NOT EXISTS browser_version LowCardinality(String) AFTER browser,
    ADD COLUMN IF NOT EXISTS os LowCardinality(String) AFTER browser_version,
    ADD COLUMN IF NOT EXISTS device_type LowCardinality(String) AFTER os,
    ADD COLUMN IF NOT EXISTS is_bot UInt8 AFTER device_type;

ALTER TABLE beacon.events ON CLUSTER '{cluster}'
    ADD COLUMN IF NOT EXISTS browser LowCardinality(String) AFTER user_agent,
    ADD COLUMN IF NOT EXISTS browser_version LowCardinality(String) AFTER browser,
    ADD COLUMN IF NOT EXISTS os LowCardinality(String) AFTER browser_version,
    ADD COLUMN IF NOT EXISTS device_type LowCardinality(String) AFTER os,
    ADD COLUMN IF NOT EXISTS is_bot UInt8 AFTER device_type;

-- Migration 3: signed urls, conversions, machine opens.
ALTER TABLE beacon.events_local ON CLUSTER '{cluster}'
    ADD COLUMN IF NOT EXISTS verified UInt8 AFTER transport,
    ADD COLUMN IF NOT EXISTS click_id String AFTER verified,
    ADD COLUMN IF NOT EXISTS order_id String AFTER click_id,
    ADD COLUMN IF NOT EXISTS value Decimal(18, 4) AFTER order_id,
    ADD COLUMN IF NOT EXISTS currency LowCardinality(String) AFTER value,
    ADD COLUMN IF NOT EXISTS machine_open UInt8 AFTER is_bot,
    ADD COLUMN IF NOT EXISTS machine_reason LowCardinality(String) AFTER machine_open,
    ADD COLUMN IF NOT EXISTS mail_proxy LowCardinality(String) AFTER machine_reason,
    ADD INDEX IF NOT EXISTS click_id_bloom click_id TYPE bloom_filter(0.01) GRANULARITY 4;

ALTER TABLE beacon.events ON CLUSTER '{cluster}'
    ADD COLUMN IF NOT EXISTS verified UInt8 AFTER transport,
    ADD COLUMN IF NOT EXISTS click_id String AFTER verified,
    ADD COLUMN IF NOT EXISTS order_id String AFTER click_id,
    ADD COLUMN IF NOT EXISTS value Decimal(18, 4) AFTER order_id,
    ADD COLUMN IF NOT EXISTS currency LowCardinality(String) AFTER value,
    ADD COLUMN IF NOT EXISTS machine_open UInt8 AFTER is_bot,
    ADD COLUMN IF NOT EXISTS machine_reason LowCardinality(String) AFTER machine_open,
    ADD COLUMN IF NOT EXISTS mail_proxy LowCardinality(String) AFTER machine_reason;

-- Migration 4: consent basis.
ALTER TABLE beacon.events_local ON CLUSTER '{cluster}'
    ADD COLUMN IF NOT EXISTS consent LowCardinality(String) AFTER dnt;

ALTER TABLE beacon.events ON CLUSTER '{cluster}'
    ADD COLUMN IF NOT EXISTS consent LowCardinality(String) AFTER dnt;

-- Migration 5: rollups.
CREATE TABLE IF NOT EXISTS beacon.rollup_settling_local ON CLUSTER '{cluster}'
(day Date, done UInt8, at DateTime64(6, 'UTC') DEFAULT now64(6))
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/beacon/rollup_settling_local', '{replica}', at)
ORDER BY day;

CREATE TABLE IF NOT EXISTS beacon.rollup_settling ON CLUSTER '{cluster}' AS beacon.rollup_settling_local
ENGINE = Distributed('{cluster}', beacon, rollup_settling_local, rand());

CREATE TABLE IF NOT EXISTS beacon.rollup_events_hourly_local ON CLUSTER '{cluster}'
(
    period DateTime('UTC'),
    site LowCardinality(String),
    campaign LowCardinality(String),
    ad LowCardinality(String),
    event_type LowCardinality(String),
    verified UInt8,
    machine_open UInt8,
    is_bot UInt8,
    proxied UInt8,
    events_settled SimpleAggregateFunction(sum, UInt64),
    events_live AggregateFunction(uniqExact, UUID),
    live SimpleAggregateFunction(max, UInt8),
    settled SimpleAggregateFunction(max, UInt8),
    people AggregateFunction(uniqExact, String),
    recipients AggregateFunction(uniqExact, String),
    visitors AggregateFunction(uniqExact, String)
)
ENGINE = ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/beacon/rollup_events_hourly_local', '{replica}')
PARTITION BY toDate(period)
ORDER BY (site, campaign, ad, period, event_type, verified, machine_open, is_bot, proxied);

CREATE TABLE IF NOT EXISTS beacon.rollup_events_hourly ON CLUSTER '{cluster}' AS beacon.rollup_events_hourly_local
ENGINE = Distributed('{cluster}', beacon, rollup_events_hourly_local, rand());

CREATE TABLE IF NOT EXISTS beacon.rollup_pages_daily_local ON CLUSTER '{cluster}'
(
    period DateTime('UTC'),
    site LowCardinality(String),
    url_host LowCardinality(String),
    url_path String,
    event_type LowCardinality(String),
    scroll_pct UInt8,
    events_settled SimpleAggregateFunction(sum, UInt64),
    events_live AggregateFunction(uniqExact, UUID),
    live SimpleAggregateFunction(max, UInt8),
    settled SimpleAggregateFunction(max, UInt8),
    visitors AggregateFunction(uniqExact, String)
)
ENGINE = ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/beacon/rollup_pages_daily_local', '{replica}')
PARTITION BY toDate(period)
ORDER BY (site, period, url_host, url_path, event_type, scroll_pct);

CREATE TABLE IF NOT EXISTS beacon.rollup_pages_daily ON CLUSTER '{cluster}' AS beacon.rollup_pages_daily_local
ENGINE = Distributed('{cluster}', beacon, rollup_pages_daily_local, rand());

CREATE TABLE IF NOT EXISTS beacon.rollup_referrers_daily_local ON CLUSTER '{cluster}'
(
    period DateTime('UTC'),
    site LowCardinality(String),
    referrer_host String,
    events_settled SimpleAggregateFunction(sum, UInt64),
    events_live AggregateFunction(uniqExact, UUID),
    live SimpleAggregateFunction(max, UInt8),
    settled SimpleAggregateFunction(max, UInt8),
    visitors AggregateFunction(uniqExact, String)
)
ENGINE = ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/beacon/rollup_referrers_daily_local', '{replica}')
PARTITION BY toDate(period)
ORDER BY (site, period, referrer_host);

CREATE TABLE IF NOT EXISTS beacon.rollup_referrers_daily ON CLUSTER '{cluster}' AS beacon.rollup_referrers_daily_local
ENGINE = Distributed('{cluster}', beacon, rollup_referrers_daily_local, rand());

CREATE TABLE IF NOT EXISTS beacon.rollup_orders_local ON CLUSTER '{cluster}'
(
    period DateTime('UTC'),
    site LowCardinality(String),
    verified UInt8,
    order_key FixedString(16),
    rank AggregateFunction(min, Tuple(UInt8, DateTime64(3, 'UTC'), UUID)),
    first_campaign AggregateFunction(argMin, LowCardinality(String), Tuple(UInt8, DateTime64(3, 'UTC'), UUID)),
    first_ad AggregateFunction(argMin, LowCardinality(String), Tuple(UInt8, DateTime64(3, 'UTC'), UUID)),
    first_click_id AggregateFunction(argMin, String, Tuple(UInt8, DateTime64(3, 'UTC'), UUID)),
    first_value AggregateFunction(argMin, Decimal(18, 4), Tuple(UInt8, DateTime64(3, 'UTC'), UUID)),
    first_currency AggregateFunction(argMin, LowCardinality(String), Tuple(UInt8, DateTime64(3, 'UTC'), UUID)),
    first_hour AggregateFunction(argMin, DateTime('UTC'), Tuple(UInt8, DateTime64(3, 'UTC'), UUID))
)
ENGINE = ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/beacon/rollup_orders_local', '{replica}')
PARTITION BY toDate(period)
ORDER BY (site, order_key, period, verified);

CREATE TABLE IF NOT EXISTS beacon.rollup_orders ON CLUSTER '{cluster}' AS beacon.rollup_orders_local
ENGINE = Distributed('{cluster}', beacon, rollup_orders_local, rand());

CREATE TABLE IF NOT EXISTS beacon.rollup_clicks_local ON CLUSTER '{cluster}'
(
    period DateTime('UTC'),
    click_id String,
    click_campaign SimpleAggregateFunction(any, LowCardinality(String)),
    click_ad SimpleAggregateFunction(any, LowCardinality(String))
)
ENGINE = ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/beacon/rollup_clicks_local', '{replica}')
PARTITION BY toDate(period)
ORDER BY (click_id, period);

CREATE TABLE IF NOT EXISTS beacon.rollup_clicks ON CLUSTER '{cluster}' AS beacon.rollup_clicks_local
ENGINE = Distributed('{cluster}', beacon, rollup_clicks_local, rand());

CREATE MATERIALIZED VIEW IF NOT EXISTS beacon.rollup_events_hourly_mv ON CLUSTER '{cluster}' TO beacon.rollup_events_hourly_local
AS SELECT toStartOfHour(received_at) AS period, site AS site, campaign AS campaign, ad AS ad, event_type AS event_type, verified AS verified, machine_open AS machine_open, is_bot AS is_bot, mail_proxy != '' AS proxied, toUInt64(0) AS events_settled, uniqExactState(event_id) AS events_live, toUInt8(1) AS live, toUInt8(0) AS settled, uniqExactStateIf(if(recipient != '', concat(message, char(0), recipient), if(visitor_id != 0, concat(char(1), toString(visitor_id)), concat(char(2), toString(event_id)))), event_type IN ('send', 'open', 'click')) AS people, uniqExactStateIf(recipient, recipient != '') AS recipients, uniqExactStateIf(toString(visitor_id), visitor_id != 0) AS visitors
FROM beacon.events_local
WHERE 1
GROUP BY period, site, campaign, ad, event_type, verified, machine_open, is_bot, proxied;

CREATE MATERIALIZED VIEW IF NOT EXISTS beacon.rollup_pages_daily_mv ON CLUSTER '{cluster}' TO beacon.rollup_pages_daily_local
AS SELECT toStartOfDay(received_at) AS period, site AS site, url_host AS url_host, url_path AS url_path, event_type AS event_type, if(event_type = 'engagement', least(intDiv(toUInt8OrZero(props['scroll_pct']), 25) * 25, 100), 0) AS scroll_pct, toUInt64(0) AS events_settled, uniqExactState(event_id) AS events_live, toUInt8(1) AS live, toUInt8(0) AS settled, uniqExactStateIf(toString(visitor_id), visitor_id != 0) AS visitors
FROM beacon.events_local
WHERE event_type IN ('pageview', 'engagement')
GROUP BY period, site, url_host, url_path, event_type, scroll_pct;

CREATE MATERIALIZED VIEW IF NOT EXISTS beacon.rollup_referrers_daily_mv ON CLUSTER '{cluster}' TO beacon.rollup_referrers_daily_local
AS SELECT toStartOfDay(received_at) AS period, site AS site, domain(referrer) AS referrer_host, toUInt64(0) AS events_settled, uniqExactState(event_id) AS events_live, toUInt8(1) AS live, toUInt8(0) AS settled, uniqExactStateIf(toString(visitor_id), visitor_id != 0) AS visitors
FROM beacon.events_local
WHERE event_type = 'pageview'
GROUP BY period, site, referrer_host;

CREATE MATERIALIZED VIEW IF NOT EXISTS beacon.rollup_orders_mv ON CLUSTER '{cluster}' TO beacon.rollup_orders_local
AS SELECT toStartOfHour(received_at) AS period, site AS site, verified AS verified, sipHash128(if(order_id != '', order_id, toString(event_id))) AS order_key, minState((click_id = '', received_at, event_id)) AS rank, argMinState(campaign, (click_id = '', received_at, event_id)) AS first_campaign, argMinState(ad, (click_id = '', received_at, event_id)) AS first_ad, argMinState(click_id, (click_id = '', received_at, event_id)) AS first_click_id, argMinState(value, (click_id = '', received_at, event_id)) AS first_value, argMinState(currency, (click_id = '', received_at, event_id)) AS first_currency, argMinState(toStartOfHour(received_at), (click_id = '', received_at, event_id)) AS first_hour
FROM beacon.events_local
WHERE event_type = 'conversion'
GROUP BY period, site, verified, order_key;

CREATE MATERIALIZED VIEW IF NOT EXISTS beacon.rollup_clicks_mv ON CLUSTER '{cluster}' TO beacon.rollup_clicks_local
AS SELECT toStartOfHour(received_at) AS period, click_id AS click_id, any(campaign) AS click_campaign, any(ad) AS click_ad
FROM beacon.events_local
WHERE event_type = 'click' AND click_id != ''
GROUP BY period, click_id;

-- Migration 6: country.
ALTER TABLE beacon.events_local ON CLUSTER '{cluster}'
    ADD COLUMN IF NOT EXISTS country LowCardinality(String) AFTER ip;

ALTER TABLE beacon.events ON CLUSTER '{cluster}'
    ADD COLUMN IF NOT EXISTS country LowCardinality(String) AFTER ip;

-- Migration 7: visits.
CREATE TABLE IF NOT EXISTS beacon.rollup_visits_local ON CLUSTER '{cluster}'
(
    period DateTime('UTC'),
    site LowCardinality(String),
    visitor_id UInt64,
    start DateTime64(3, 'UTC'),
    pageviews UInt32,
    bounce UInt8,
    duration_ms UInt64,
    entry_page String,
    exit_page String,
    pages Array(String),
    custom_events Array(String),
    referrer_host String,
    landing_host String,
    utm_source String,
    utm_medium String,
    utm_campaign String,
    country LowCardinality(String),
    device_type LowCardinality(String),
    browser LowCardinality(String),
    os LowCardinality(String)
)
ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/beacon/rollup_visits_local', '{replica}')
PARTITION BY toDate(period)
ORDER BY (site, period, visitor_id, start);

CREATE TABLE IF NOT EXISTS beacon.rollup_visits ON CLUSTER '{cluster}' AS beacon.rollup_visits_local
ENGINE = Distributed('{cluster}', beacon, rollup_visits_local, rand());

CREATE TABLE IF NOT EXISTS beacon.visits_settled_local ON CLUSTER '{cluster}'
(day Date, visit_gap_s UInt32, at DateTime64(6, 'UTC') DEFAULT now64(6))
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/beacon/visits_settled_local', '{replica}', at)
ORDER BY day;

CREATE TABLE IF NOT EXISTS beacon.visits_settled ON CLUSTER '{cluster}' AS beacon.visits_settled_local
ENGINE = Distributed('{cluster}', beacon, visits_settled_local, rand());

-- Migration 8: ad viewability.
CREATE TABLE IF NOT EXISTS beacon.rollup_viewability_hourly_local ON CLUSTER '{cluster}'
(
    period DateTime('UTC'),
    site LowCardinality(String),
    campaign LowCardinality(String),
    ad LowCardinality(String),
    event_type LowCardinality(String),
    verified UInt8,
    kind LowCardinality(String),
    measured UInt8,
    events_settled SimpleAggregateFunction(sum, UInt64),
    events_live AggregateFunction(uniqExact, UUID),
    live SimpleAggregateFunction(max, UInt8),
    settled SimpleAggregateFunction(max, UInt8)
)
ENGINE = ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/beacon/rollup_viewability_hourly_local', '{replica}')
PARTITION BY toDate(period)
ORDER BY (site, campaign, ad, period, event_type, verified, kind, measured);

CREATE TABLE IF NOT EXISTS beacon.rollup_viewability_hourly ON CLUSTER '{cluster}' AS beacon.rollup_viewability_hourly_local
ENGINE = Distributed('{cluster}', beacon, rollup_viewability_hourly_local, rand());

CREATE MATERIALIZED VIEW IF NOT EXISTS beacon.rollup_viewability_hourly_mv ON CLUSTER '{cluster}' TO beacon.rollup_viewability_hourly_local
AS SELECT toStartOfHour(received_at) AS period, site AS site, campaign AS campaign, ad AS ad, event_type AS event_type, verified AS verified, props['kind'] AS kind, props['measured'] = '1' AS measured, toUInt64(0) AS events_settled, uniqExactState(event_id) AS events_live, toUInt8(1) AS live, toUInt8(0) AS settled
FROM beacon.events_local
WHERE event_type IN ('impression', 'viewable') AND props['imp'] != ''
GROUP BY period, site, campaign, ad, event_type, verified, kind, measured;

-- Migration 9: invalid traffic.
ALTER TABLE beacon.events_local ON CLUSTER '{cluster}'
    ADD COLUMN IF NOT EXISTS ivt LowCardinality(String) AFTER mail_proxy;

ALTER TABLE beacon.events ON CLUSTER '{cluster}'
    ADD COLUMN IF NOT EXISTS ivt LowCardinality(String) AFTER mail_proxy;

ALTER TABLE beacon.rollup_events_hourly_local ON CLUSTER '{cluster}'
    ADD COLUMN IF NOT EXISTS ivt LowCardinality(String) AFTER proxied,
    MODIFY ORDER BY (site, campaign, ad, period, event_type, verified, machine_open, is_bot, proxied, ivt);

ALTER TABLE beacon.rollup_events_hourly ON CLUSTER '{cluster}'
    ADD COLUMN IF NOT EXISTS ivt LowCardinality(String) AFTER proxied;

ALTER TABLE beacon.rollup_events_hourly_mv ON CLUSTER '{cluster}'
MODIFY QUERY SELECT toStartOfHour(received_at) AS period, site AS site, campaign AS campaign, ad AS ad, event_type AS event_type, verified AS verified, machine_open AS machine_open, is_bot AS is_bot, mail_proxy != '' AS proxied, ivt AS ivt, toUInt64(0) AS events_settled, uniqExactState(event_id) AS events_live, toUInt8(1) AS live, toUInt8(0) AS settled, uniqExactStateIf(if(recipient != '', concat(message, char(0), recipient), if(visitor_id != 0, concat(char(1), toString(visitor_id)), concat(char(2), toString(event_id)))), event_type IN ('send', 'open', 'click')) AS people, uniqExactStateIf(recipient, recipient != '') AS recipients, uniqExactStateIf(toString(visitor_id), visitor_id != 0) AS visitors
FROM beacon.events_local
WHERE 1
GROUP BY period, site, campaign, ad, event_type, verified, machine_open, is_bot, proxied, ivt;

ALTER TABLE beacon.rollup_viewability_hourly_local ON CLUSTER '{cluster}'
    ADD COLUMN IF NOT EXISTS ivt LowCardinality(String) AFTER measured,
    MODIFY ORDER BY (site, campaign, ad, period, event_type, verified, kind, measured, ivt);

ALTER TABLE beacon.rollup_viewability_hourly ON CLUSTER '{cluster}'
    ADD COLUMN IF NOT EXISTS ivt LowCardinality(String) AFTER measured;

ALTER TABLE beacon.rollup_viewability_hourly_mv ON CLUSTER '{cluster}'
MODIFY QUERY SELECT toStartOfHour(received_at) AS period, site AS site, campaign AS campaign, ad AS ad, event_type AS event_type, verified AS verified, props['kind'] AS kind, props['measured'] = '1' AS measured, ivt AS ivt, toUInt64(0) AS events_settled, uniqExactState(event_id) AS events_live, toUInt8(1) AS live, toUInt8(0) AS settled
FROM beacon.events_local
WHERE event_type IN ('impression', 'viewable') AND props['imp'] != ''
GROUP BY period, site, campaign, ad, event_type, verified, kind, measured, ivt;

-- Migration 10: events sort key.
-- Migration 11: erasures.
CREATE TABLE IF NOT EXISTS beacon.erasures_local ON CLUSTER '{cluster}'
(
    field LowCardinality(String),
    value_hash UInt64,
    erased_at DateTime64(3, 'UTC')
)
ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/beacon/erasures_local', '{replica}')
ORDER BY (field, value_hash);

CREATE TABLE IF NOT EXISTS beacon.erasures ON CLUSTER '{cluster}' AS beacon.erasures_local
ENGINE = Distributed('{cluster}', beacon, erasures_local, rand());

-- The retention of each shard's rows (BEACON_RETENTION_DAYS, 395 days).
ALTER TABLE beacon.events_local ON CLUSTER '{cluster}' MODIFY TTL toDateTime(received_at) + INTERVAL 395 DAY;
ALTER TABLE beacon.erasures_local ON CLUSTER '{cluster}' MODIFY TTL toDateTime(erased_at) + INTERVAL 395 DAY;
ALTER TABLE beacon.rollup_events_hourly_local ON CLUSTER '{cluster}' MODIFY TTL period + INTERVAL 395 DAY;
ALTER TABLE beacon.rollup_pages_daily_local ON CLUSTER '{cluster}' MODIFY TTL period + INTERVAL 395 DAY;
ALTER TABLE beacon.rollup_referrers_daily_local ON CLUSTER '{cluster}' MODIFY TTL period + INTERVAL 395 DAY;
ALTER TABLE beacon.rollup_orders_local ON CLUSTER '{cluster}' MODIFY TTL period + INTERVAL 395 DAY;
ALTER TABLE beacon.rollup_clicks_local ON CLUSTER '{cluster}' MODIFY TTL period + INTERVAL 395 DAY;
ALTER TABLE beacon.rollup_viewability_hourly_local ON CLUSTER '{cluster}' MODIFY TTL period + INTERVAL 395 DAY;
ALTER TABLE beacon.rollup_visits_local ON CLUSTER '{cluster}' MODIFY TTL period + INTERVAL 395 DAY;

-- The migrations this schema already has, so consumers apply none of them again.
INSERT INTO beacon.schema_migrations (version, name) SELECT 1, 'create events' WHERE 1 NOT IN (SELECT version FROM beacon.schema_migrations);
INSERT INTO beacon.schema_migrations (version, name) SELECT 2, 'user agent columns' WHERE 2 NOT IN (SELECT version FROM beacon.schema_migrations);
INSERT INTO beacon.schema_migrations (version, name) SELECT 3, 'signed urls, conversions, machine opens' WHERE 3 NOT IN (SELECT version FROM beacon.schema_migrations);
INSERT INTO beacon.schema_migrations (version, name) SELECT 4, 'consent basis' WHERE 4 NOT IN (SELECT version FROM beacon.schema_migrations);
INSERT INTO beacon.schema_migrations (version, name) SELECT 5, 'rollups' WHERE 5 NOT IN (SELECT version FROM beacon.schema_migrations);
INSERT INTO beacon.schema_migrations (version, name) SELECT 6, 'country' WHERE 6 NOT IN (SELECT version FROM beacon.schema_migrations);
INSERT INTO beacon.schema_migrations (version, name) SELECT 7, 'visits' WHERE 7 NOT IN (SELECT version FROM beacon.schema_migrations);
INSERT INTO beacon.schema_migrations (version, name) SELECT 8, 'ad viewability' WHERE 8 NOT IN (SELECT version FROM beacon.schema_migrations);
INSERT INTO beacon.schema_migrations (version, name) SELECT 9, 'invalid traffic' WHERE 9 NOT IN (SELECT version FROM beacon.schema_migrations);
INSERT INTO beacon.schema_migrations (version, name) SELECT 10, 'events sort key' WHERE 10 NOT IN (SELECT version FROM beacon.schema_migrations);
INSERT INTO beacon.schema_migrations (version, name) SELECT 11, 'erasures' WHERE 11 NOT IN (SELECT version FROM beacon.schema_migrations);
