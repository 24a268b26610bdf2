-- Beacon schema for a single ClickHouse server: what `beacon consume` migrates to
-- (analytics/schema.py), with the default retention of 395 days. Made by
--   python -m analytics.ddl single-node \
--     > deploy/clickhouse/single-node.sql
-- and checked against the migrations by tests/integration/test_deploy.py.
-- Safe to run twice.

CREATE DATABASE IF NOT EXISTS beacon;

CREATE TABLE IF NOT EXISTS beacon.schema_migrations
(
    `version` UInt32,
    `name` String,
    `applied_at` DateTime DEFAULT now()
)
ENGINE = MergeTree
ORDER BY version
SETTINGS index_granularity = 8192;

CREATE TABLE IF NOT EXISTS beacon.events
(
    `schema_version` UInt8,
    `event_id` UUID,
    `received_at` DateTime64(3, 'UTC'),
    `event_type` LowCardinality(String),
    `site` LowCardinality(String),
    `campaign` LowCardinality(String),
    `message` String,
    `recipient` String,
    `ad` LowCardinality(String),
    `url_host` LowCardinality(String),
    `url_path` String,
    `url_query` String,
    `referrer` String,
    `props` Map(LowCardinality(String), String),
    `user_agent` String,
    `browser` LowCardinality(String),
    `browser_version` LowCardinality(String),
    `os` LowCardinality(String),
    `device_type` LowCardinality(String),
    `is_bot` UInt8,
    `machine_open` UInt8,
    `machine_reason` LowCardinality(String),
    `mail_proxy` LowCardinality(String),
    `ivt` LowCardinality(String),
    `ip` String,
    `country` LowCardinality(String),
    `visitor_id` UInt64,
    `dnt` UInt8,
    `consent` LowCardinality(String),
    `transport` LowCardinality(String),
    `verified` UInt8,
    `click_id` String,
    `order_id` String,
    `value` Decimal(18, 4),
    `currency` LowCardinality(String),
    `inserted_at` DateTime DEFAULT now(),
    INDEX click_id_bloom click_id TYPE bloom_filter(0.01) GRANULARITY 4
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(received_at)
ORDER BY (site, toDate(received_at), event_type, received_at, event_id)
TTL toDateTime(received_at) + toIntervalDay(395)
SETTINGS non_replicated_deduplication_window = 10000, index_granularity = 8192;

CREATE TABLE IF NOT EXISTS beacon.erasures
(
    `field` LowCardinality(String),
    `value_hash` UInt64,
    `erased_at` DateTime64(3, 'UTC')
)
ENGINE = MergeTree
ORDER BY (field, value_hash)
TTL toDateTime(erased_at) + toIntervalDay(395)
SETTINGS index_granularity = 8192;

CREATE TABLE IF NOT EXISTS beacon.rollup_clicks
(
    `period` DateTime('UTC'),
    `click_id` String,
    `click_campaign` SimpleAggregateFunction(any, LowCardinality(String)),
    `click_ad` SimpleAggregateFunction(any, LowCardinality(String))
)
ENGINE = AggregatingMergeTree
PARTITION BY toDate(period)
ORDER BY (click_id, period)
TTL period + toIntervalDay(395)
SETTINGS index_granularity = 8192;

CREATE TABLE IF NOT EXISTS beacon.rollup_events_hourly
(
    `period` DateTime('UTC'),
    `site` LowCardinality(String),
    `campaign` LowCardinality(String),
    `ad` LowCardinality(String),
    `event_type` LowCardinality(String),
    `verified` UInt8,
    `machine_open` UInt8,
    `is_bot` UInt8,
    `proxied` UInt8,
    `ivt` LowCardinality(String),
    `events_settled` SimpleAggregateFunction(sum, UInt64),
    `events_live` AggregateFunction(uniqExact, UUID),
    `live` SimpleAggregateFunction(max, UInt8),
    `settled` SimpleAggregateFunction(max, UInt8),
    `people` AggregateFunction(uniqExact, String),
    `recipients` AggregateFunction(uniqExact, String),
    `visitors` AggregateFunction(uniqExact, String)
)
ENGINE = AggregatingMergeTree
PARTITION BY toDate(period)
PRIMARY KEY (site, campaign, ad, period, event_type, verified, machine_open, is_bot, proxied)
ORDER BY (site, campaign, ad, period, event_type, verified, machine_open, is_bot, proxied, ivt)
TTL period + toIntervalDay(395)
SETTINGS index_granularity = 8192;

CREATE TABLE IF NOT EXISTS beacon.rollup_orders
(
    `period` DateTime('UTC'),
    `site` LowCardinality(String),
    `verified` UInt8,
    `order_key` FixedString(16),
    `rank` AggregateFunction(min, Tuple(
        UInt8,
        DateTime64(3, 'UTC'),
        UUID)),
    `first_campaign` AggregateFunction(argMin, LowCardinality(String), Tuple(
        UInt8,
        DateTime64(3, 'UTC'),
        UUID)),
    `first_ad` AggregateFunction(argMin, LowCardinality(String), Tuple(
        UInt8,
        DateTime64(3, 'UTC'),
        UUID)),
    `first_click_id` AggregateFunction(argMin, String, Tuple(
        UInt8,
        DateTime64(3, 'UTC'),
        UUID)),
    `first_value` AggregateFunction(argMin, Decimal(18, 4), Tuple(
        UInt8,
        DateTime64(3, 'UTC'),
        UUID)),
    `first_currency` AggregateFunction(argMin, LowCardinality(String), Tuple(
        UInt8,
        DateTime64(3, 'UTC'),
        UUID)),
    `first_hour` AggregateFunction(argMin, DateTime('UTC'), Tuple(
        UInt8,
        DateTime64(3, 'UTC'),
        UUID))
)
ENGINE = AggregatingMergeTree
PARTITION BY toDate(period)
ORDER BY (site, order_key, period, verified)
TTL period + toIntervalDay(395)
SETTINGS index_granularity = 8192;

CREATE TABLE IF NOT EXISTS beacon.rollup_pages_daily
(
    `period` DateTime('UTC'),
    `site` LowCardinality(String),
    `url_host` LowCardinality(String),
    `url_path` String,
    `event_type` LowCardinality(String),
    `scroll_pct` UInt8,
    `events_settled` SimpleAggregateFunction(sum, UInt64),
    `events_live` AggregateFunction(uniqExact, UUID),
    `live` SimpleAggregateFunction(max, UInt8),
    `settled` SimpleAggregateFunction(max, UInt8),
    `visitors` AggregateFunction(uniqExact, String)
)
ENGINE = AggregatingMergeTree
PARTITION BY toDate(period)
ORDER BY (site, period, url_host, url_path, event_type, scroll_pct)
TTL period + toIntervalDay(395)
SETTINGS index_granularity = 8192;

CREATE TABLE IF NOT EXISTS beacon.rollup_referrers_daily
(
    `period` DateTime('UTC'),
    `site` LowCardinality(String),
    `referrer_host` String,
    `events_settled` SimpleAggregateFunction(sum, UInt64),
    `events_live` AggregateFunction(uniqExact, UUID),
    `live` SimpleAggregateFunction(max, UInt8),
    `settled` SimpleAggregateFunction(max, UInt8),
    `visitors` AggregateFunction(uniqExact, String)
)
ENGINE = AggregatingMergeTree
PARTITION BY toDate(period)
ORDER BY (site, period, referrer_host)
TTL period + toIntervalDay(395)
SETTINGS index_granularity = 8192;

CREATE TABLE IF NOT EXISTS beacon.rollup_settling
(
    `day` Date,
    `done` UInt8,
    `at` DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree(at)
ORDER BY day
SETTINGS index_granularity = 8192;

CREATE TABLE IF NOT EXISTS beacon.rollup_viewability_hourly
(
    `period` DateTime('UTC'),
    `site` LowCardinality(String),
    `campaign` LowCardinality(String),
    `ad` LowCardinality(String),
    `event_type` LowCardinality(String),
    `verified` UInt8,
    `kind` LowCardinality(String),
    `measured` UInt8,
    `ivt` LowCardinality(String),
    `events_settled` SimpleAggregateFunction(sum, UInt64),
    `events_live` AggregateFunction(uniqExact, UUID),
    `live` SimpleAggregateFunction(max, UInt8),
    `settled` SimpleAggregateFunction(max, UInt8)
)
ENGINE = AggregatingMergeTree
PARTITION BY toDate(period)
PRIMARY KEY (site, campaign, ad, period, event_type, verified, kind, measured)
ORDER BY (site, campaign, ad, period, event_type, verified, kind, measured, ivt)
TTL period + toIntervalDay(395)
SETTINGS index_granularity = 8192;

CREATE TABLE IF NOT EXISTS beacon.rollup_visits
(
    `period` DateTime('UTC'),
    `site` LowCardinality(String),
    `visitor_id` UInt64,
    `start` DateTime64(3, 'UTC'),
    `pageviews` UInt32,
    `bounce` UInt8,
    `duration_ms` UInt64,
    `entry_page` String,
    `exit_page` String,
    `pages` Array(String),
    `custom_events` Array(String),
    `referrer_host` String,
    `landing_host` String,
    `utm_source` String,
    `utm_medium` String,
    `utm_campaign` String,
    `country` LowCardinality(String),
    `device_type` LowCardinality(String),
    `browser` LowCardinality(String),
    `os` LowCardinality(String)
)
ENGINE = MergeTree
PARTITION BY toDate(period)
ORDER BY (site, period, visitor_id, start)
TTL period + toIntervalDay(395)
SETTINGS index_granularity = 8192;

CREATE TABLE IF NOT EXISTS beacon.visits_settled
(
    `day` Date,
    `visit_gap_s` UInt32,
    `at` DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree(at)
ORDER BY day
SETTINGS index_granularity = 8192;

CREATE MATERIALIZED VIEW IF NOT EXISTS beacon.rollup_clicks_mv TO beacon.rollup_clicks
(
    `period` DateTime('UTC'),
    `click_id` String,
    `click_campaign` String,
    `click_ad` String
)
AS SELECT
    toStartOfHour(received_at) AS period,
    click_id AS click_id,
    any(campaign) AS click_campaign,
    any(ad) AS click_ad
FROM beacon.events
WHERE (event_type = 'click') AND (click_id != '')
GROUP BY
    period,
    click_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS beacon.rollup_events_hourly_mv TO beacon.rollup_events_hourly
(
    `period` DateTime('UTC'),
    `site` LowCardinality(String),
    `campaign` LowCardinality(String),
    `ad` LowCardinality(String),
    `event_type` LowCardinality(String),
    `verified` UInt8,
    `machine_open` UInt8,
    `is_bot` UInt8,
    `proxied` LowCardinality(UInt8),
    `ivt` LowCardinality(String),
    `events_settled` UInt64,
    `events_live` AggregateFunction(uniqExact, UUID),
    `live` UInt8,
    `settled` UInt8,
    `people` AggregateFunction(uniqExact, String),
    `recipients` AggregateFunction(uniqExact, String),
    `visitors` AggregateFunction(uniqExact, String)
)
AS SELECT
    toStartOfHour(received_at) AS period,
    site AS site,
    campaign AS campaign,
    ad AS ad,
    event_type AS event_type,
    verified AS verified,
    machine_open AS machine_open,
    is_bot AS is_bot,
    mail_proxy != '' AS proxied,
    ivt AS ivt,
    toUInt64(0) AS events_settled,
    uniqExactState(event_id) AS events_live,
    toUInt8(1) AS live,
    toUInt8(0) AS settled,
    uniqExactStateIf(if(recipient != '', concat(message, char(0), recipient), if(visitor_id != 0, concat(char(1), toString(visitor_id)), concat(char(2), toString(event_id)))), (event_type IN ('send', 'open', 'click'))) AS people,
    uniqExactStateIf(recipient, recipient != '') AS recipients,
    uniqExactStateIf(toString(visitor_id), visitor_id != 0) AS visitors
FROM beacon.events
WHERE 1
GROUP BY
    period,
    site,
    campaign,
    ad,
    event_type,
    verified,
    machine_open,
    is_bot,
    proxied,
    ivt;

CREATE MATERIALIZED VIEW IF NOT EXISTS beacon.rollup_orders_mv TO beacon.rollup_orders
(
    `period` DateTime('UTC'),
    `site` LowCardinality(String),
    `verified` UInt8,
    `order_key` FixedString(16),
    `rank` AggregateFunction(min, Tuple(
        UInt8,
        DateTime64(3, 'UTC'),
        UUID)),
    `first_campaign` AggregateFunction(argMin, String, Tuple(
        UInt8,
        DateTime64(3, 'UTC'),
        UUID)),
    `first_ad` AggregateFunction(argMin, String, Tuple(
        UInt8,
        DateTime64(3, 'UTC'),
        UUID)),
    `first_click_id` AggregateFunction(argMin, String, Tuple(
        UInt8,
        DateTime64(3, 'UTC'),
        UUID)),
    `first_value` AggregateFunction(argMin, Decimal(18, 4), Tuple(
        UInt8,
        DateTime64(3, 'UTC'),
        UUID)),
    `first_currency` AggregateFunction(argMin, String, Tuple(
        UInt8,
        DateTime64(3, 'UTC'),
        UUID)),
    `first_hour` AggregateFunction(argMin, DateTime('UTC'), Tuple(
        UInt8,
        DateTime64(3, 'UTC'),
        UUID))
)
AS SELECT
    toStartOfHour(received_at) AS period,
    site AS site,
    verified AS verified,
    sipHash128(if(order_id != '', order_id, toString(event_id))) AS order_key,
    minState((click_id = '', received_at, event_id)) AS rank,
    argMinState(campaign, (click_id = '', received_at, event_id)) AS first_campaign,
    argMinState(ad, (click_id = '', received_at, event_id)) AS first_ad,
    argMinState(click_id, (click_id = '', received_at, event_id)) AS first_click_id,
    argMinState(value, (click_id = '', received_at, event_id)) AS first_value,
    argMinState(currency, (click_id = '', received_at, event_id)) AS first_currency,
    argMinState(toStartOfHour(received_at), (click_id = '', received_at, event_id)) AS first_hour
FROM beacon.events
WHERE event_type = 'conversion'
GROUP BY
    period,
    site,
    verified,
    order_key;

CREATE MATERIALIZED VIEW IF NOT EXISTS beacon.rollup_pages_daily_mv TO beacon.rollup_pages_daily
(
    `period` DateTime('UTC'),
    `site` LowCardinality(String),
    `url_host` LowCardinality(String),
    `url_path` String,
    `event_type` LowCardinality(String),
    `scroll_pct` UInt16,
    `events_settled` UInt64,
    `events_live` AggregateFunction(uniqExact, UUID),
    `live` UInt8,
    `settled` UInt8,
    `visitors` AggregateFunction(uniqExact, String)
)
AS SELECT
    toStartOfDay(received_at) AS period,
    site AS site,
    url_host AS url_host,
    url_path AS url_path,
    event_type AS event_type,
    if(event_type = 'engagement', least(intDiv(toUInt8OrZero(props['scroll_pct']), 25) * 25, 100), 0) AS scroll_pct,
    toUInt64(0) AS events_settled,
    uniqExactState(event_id) AS events_live,
    toUInt8(1) AS live,
    toUInt8(0) AS settled,
    uniqExactStateIf(toString(visitor_id), visitor_id != 0) AS visitors
FROM beacon.events
WHERE event_type IN ('pageview', 'engagement')
GROUP BY
    period,
    site,
    url_host,
    url_path,
    event_type,
    scroll_pct;

CREATE MATERIALIZED VIEW IF NOT EXISTS beacon.rollup_referrers_daily_mv TO beacon.rollup_referrers_daily
(
    `period` DateTime('UTC'),
    `site` LowCardinality(String),
    `referrer_host` String,
    `events_settled` UInt64,
    `events_live` AggregateFunction(uniqExact, UUID),
    `live` UInt8,
    `settled` UInt8,
    `visitors` AggregateFunction(uniqExact, String)
)
AS SELECT
    toStartOfDay(received_at) AS period,
    site AS site,
    domain(referrer) AS referrer_host,
    toUInt64(0) AS events_settled,
    uniqExactState(event_id) AS events_live,
    toUInt8(1) AS live,
    toUInt8(0) AS settled,
    uniqExactStateIf(toString(visitor_id), visitor_id != 0) AS visitors
FROM beacon.events
WHERE event_type = 'pageview'
GROUP BY
    period,
    site,
    referrer_host;

CREATE MATERIALIZED VIEW IF NOT EXISTS beacon.rollup_viewability_hourly_mv TO beacon.rollup_viewability_hourly
(
    `period` DateTime('UTC'),
    `site` LowCardinality(String),
    `campaign` LowCardinality(String),
    `ad` LowCardinality(String),
    `event_type` LowCardinality(String),
    `verified` UInt8,
    `kind` String,
    `measured` UInt8,
    `ivt` LowCardinality(String),
    `events_settled` UInt64,
    `events_live` AggregateFunction(uniqExact, UUID),
    `live` UInt8,
    `settled` UInt8
)
AS SELECT
    toStartOfHour(received_at) AS period,
    site AS site,
    campaign AS campaign,
    ad AS ad,
    event_type AS event_type,
    verified AS verified,
    props['kind'] AS kind,
    (props['measured']) = '1' AS measured,
    ivt AS ivt,
    toUInt64(0) AS events_settled,
    uniqExactState(event_id) AS events_live,
    toUInt8(1) AS live,
    toUInt8(0) AS settled
FROM beacon.events
WHERE (event_type IN ('impression', 'viewable')) AND ((props['imp']) != '')
GROUP BY
    period,
    site,
    campaign,
    ad,
    event_type,
    verified,
    kind,
    measured,
    ivt;

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
