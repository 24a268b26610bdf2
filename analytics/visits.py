"""Visits: a visitor's runs of web events, computed from `events FINAL`, kept per settled day.

A visit is one visitor's run of page views, engagement reports and custom events on a site
with no gap over the visit gap (BEACON_VISIT_GAP_S, 30 minutes by default) and never across
midnight UTC: the cookieless visitor id changes at midnight, so no visit could cross it for
most visitors, and cutting every visit there makes each day's visits final once the day is.

Why a table of visits and not a materialized view: where a visit ends depends on events that
may come in other inserts, so no insert block can say it. Settling (analytics/rollup_settle.py)
writes a closed day's visits here, one row each, with the gap it used (`visits_settled`);
reports read those rows for settled days and compute the same rows from raw events for every
other day (analytics/web.py). Which host counts as the site's own, the source groups and the
goals are applied when reading, so a change of those settings applies to every day at once;
a change of the gap sends the days settled with the old one back to raw events until the next
rebuild.

On a cluster, events are sharded by event id, so no shard holds a whole visit: visits are
computed from the Distributed events when reading, never settled per shard.
"""

from __future__ import annotations

from analytics.schema import DATABASE, EVENTS
from analytics.sources import host_sql

VISITS = f"{DATABASE}.rollup_visits"
# Which days of rollup_visits hold the visits made with which gap; 0: none (not settled).
VISITS_SETTLED = f"{DATABASE}.visits_settled"
WEB_EVENTS = (
    "site != '' AND visitor_id != 0 AND is_bot = 0 "
    "AND event_type IN ('pageview', 'engagement', 'custom')"
)
DEFAULT_VISIT_GAP_S = 1800

COLUMNS = (
    ("period", "DateTime('UTC')"),  # the day the visit starts (and ends) in
    ("site", "LowCardinality(String)"),
    ("visitor_id", "UInt64"),
    ("start", "DateTime64(3, 'UTC')"),
    ("pageviews", "UInt32"),
    ("bounce", "UInt8"),
    ("duration_ms", "UInt64"),
    ("entry_page", "String"),
    ("exit_page", "String"),
    ("pages", "Array(String)"),  # every page view's path, in order
    ("custom_events", "Array(String)"),  # the custom events' names, each once
    ("referrer_host", "String"),  # of its first page view, lower case, no www.
    ("landing_host", "String"),  # that page's own host, the same way
    ("utm_source", "String"),
    ("utm_medium", "String"),
    ("utm_campaign", "String"),
    ("country", "LowCardinality(String)"),
    ("device_type", "LowCardinality(String)"),
    ("browser", "LowCardinality(String)"),
    ("os", "LowCardinality(String)"),
)
COLUMN_NAMES = ", ".join(c for c, _ in COLUMNS)


def create_table(table: str = VISITS) -> str:
    cols = ",\n    ".join(f"{c} {t}" for c, t in COLUMNS)
    return (
        f"CREATE TABLE IF NOT EXISTS {table}\n(\n    {cols}\n)\n"
        "ENGINE = MergeTree\nPARTITION BY toDate(period)\n"
        "ORDER BY (site, period, visitor_id, start)"
    )


SETTLED_DDL = f"""CREATE TABLE IF NOT EXISTS {VISITS_SETTLED}
(day Date, visit_gap_s UInt32, at DateTime64(6, 'UTC') DEFAULT now64(6))
ENGINE = ReplacingMergeTree(at)
ORDER BY day"""


def utm(name: str, query: str = "url_query") -> str:
    return f"decodeURLFormComponent(extractURLParameter(concat('?', {query}), '{name}'))"


# Events are numbered in (received_at, event_id) order within their visitor's day (`seq`, from
# the window that cuts the visits), so a visit's first and last events are found by comparing
# integers, not (time, UUID) tuples. A visit's first page view decides where it came from and
# who made it: page views rank first, then that order.
ORDER = "seq"
FIRST = "seq + if(event_type = 'pageview', 0, 4294967296)"


def first(column: str) -> str:
    """`column` of a visit's first page view, else of its first event."""
    return f"argMin({column}, {FIRST})"


# The first page view's raw values are picked once; hosts and utm_* are worked out from them
# per visit, not per event.
PER_VISIT = f"""
    toStartOfDay(min(received_at)) AS period, site, visitor_id, min(received_at) AS start,
    toUInt32(countIf(event_type = 'pageview')) AS pageviews,
    toUInt8(pageviews = 1 AND countIf(event_type = 'custom') = 0) AS bounce,
    sum(engaged) AS engaged_ms,
    if(engaged_ms > 0, engaged_ms,
       toUInt64(toUnixTimestamp64Milli(max(received_at)) - toUnixTimestamp64Milli(start)))
        AS duration_ms,
    argMinIf(url_path, {ORDER}, event_type = 'pageview') AS entry_page,
    argMaxIf(url_path, {ORDER}, event_type = 'pageview') AS exit_page,
    arrayMap(x -> x.2, arraySort(groupArrayIf(({ORDER}, url_path), event_type = 'pageview')))
        AS pages,
    arraySort(groupUniqArrayIf(custom_event, custom_event != '')) AS custom_events,
    {host_sql(f"domain({first('referrer')})")} AS referrer_host,
    {host_sql(first("url_host"))} AS landing_host,
    {first("url_query")} AS landing_query,
    {utm("utm_source", "landing_query")} AS utm_source,
    {utm("utm_medium", "landing_query")} AS utm_medium,
    {utm("utm_campaign", "landing_query")} AS utm_campaign,
    {first("country")} AS country,
    {first("device_type")} AS device_type,
    {first("browser")} AS browser,
    {first("os")} AS os"""


def select(where: str, gap_s: int, source: str = EVENTS) -> str:
    """The visits of the web events of `source` (FINAL) that match `where`, which must take
    whole days (a visit is cut from its day's events): one row each, COLUMNS in order."""
    gap_ms = int(gap_s) * 1000
    window = "PARTITION BY site, visitor_id, day ORDER BY received_at, event_id"
    # The props a visit needs are taken out before the events are sorted: the map would be
    # carried through both sorts.
    return f"""
SELECT {COLUMN_NAMES} FROM (
SELECT {PER_VISIT}
FROM (
    SELECT *, sum(new_visit) OVER ({window} ROWS UNBOUNDED PRECEDING) AS visit,
           row_number() OVER ({window}) AS seq
    FROM (
        SELECT site, visitor_id, toDate(received_at) AS day, received_at, event_id,
               event_type, url_host, url_path, url_query, referrer, country,
               device_type, browser, os,
               if(event_type = 'engagement', toUInt64OrZero(props['engaged_ms']), 0) AS engaged,
               if(event_type = 'custom', props['event'], '') AS custom_event,
               toUnixTimestamp64Milli(received_at) - lagInFrame(
                   toUnixTimestamp64Milli(received_at), 1, toInt64(0)) OVER
                   ({window} ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) > {gap_ms} AS new_visit
        FROM {source} FINAL
        WHERE {WEB_EVENTS} AND ({where})
    )
)
GROUP BY site, visitor_id, day, visit
)"""


def migration_statements() -> list[str]:
    """Schema migration 7: the visits table and its settled days; the visits of the days
    already settled are made by the migration's settling pass."""
    return [create_table(), SETTLED_DDL]
