"""Report queries straight from `beacon.events FINAL`, written apart from the rollup ones.

`beacon report --source raw` answers from these, and the tests hold them against the rollup
path: two ways to the same numbers. Both take the scanner rule's bursts from
analytics/machine_opens.py (`scanner_bursts_sql`), these with FINAL; the rollup path's share
of the rule is in analytics/scanner_query.py.
"""

from __future__ import annotations

from analytics.machine_opens import SCANNER_WINDOW_MS, scanner_bursts_sql
from analytics.report_window import DAY, Filters, Window, bucket, sql_time
from analytics.rollup_query import ATTRIBUTION_LOOKBACK_DAYS, EVENT_COLUMNS
from analytics.rollups import RANK, person
from analytics.schema import EVENTS

# An open or click of a recipient within the scanner window of their burst.
IN_BURST = (
    "(b.recipient != '' AND abs(toUnixTimestamp64Milli(e.received_at) - "
    f"toUnixTimestamp64Milli(b.burst_at)) <= {SCANNER_WINDOW_MS})"
)
# What the consumer flagged per row: machine opens, and clicks from bot user agents.
FLAGGED = "(e.machine_open = 1 OR (e.event_type = 'click' AND e.is_bot = 1))"


def where_sql(window: Window, filters: Filters) -> str:
    return f"{window.sql('received_at')} AND {filters.sql(EVENT_COLUMNS)}"


def inner_keys(keys: tuple[str, ...], group: str | None) -> str:
    """The grouping keys as columns of an inner SELECT over `e` (beacon.events)."""
    cols = [f"e.{k} AS {k}" for k in keys]
    if group:
        cols.insert(0, f"{bucket(group, 'e.received_at')} AS {group}")
    return "".join(c + ", " for c in cols)


def group_by(keys: tuple[str, ...], group: str | None) -> str:
    names = ([group] if group else []) + list(keys)
    return f"GROUP BY {', '.join(names)} ORDER BY {', '.join(names)}" if names else ""


def funnel_sql(
    where: str, keys: tuple[str, ...] = (), group: str | None = None, valid: str = "1"
) -> str:
    """The funnel counts of the events matching `where`, every machine rule applied;
    impressions and clicks under `valid` (Filters.valid over `e.`), and the invalid ones
    apart."""
    names = "".join(k + ", " for k in ([group] if group else []) + list(keys))
    bursts = scanner_bursts_sql(f"{EVENTS} FINAL", where)
    return f"""
WITH bursts AS ({bursts})
SELECT {names}
    uniqExactIf(person, event_type = 'send') AS sent_events,
    countIf(event_type = 'impression' AND valid) AS impressions,
    countIf(event_type = 'impression' AND ivt != '') AS invalid_impressions,
    countIf(event_type = 'open') AS opens,
    countIf(event_type = 'open' AND machine) AS machine_opens,
    countIf(event_type = 'open' AND mail_proxy != '') AS proxied_opens,
    uniqExactIf(person, event_type = 'open') AS unique_opens,
    uniqExactIf(person, event_type = 'open' AND NOT machine) AS unique_human_opens,
    countIf(event_type = 'click' AND valid) AS clicks,
    countIf(event_type = 'click' AND valid AND machine) AS machine_clicks,
    uniqExactIf(person, event_type = 'click' AND valid AND NOT machine) AS unique_clicks,
    countIf(event_type = 'click' AND ivt != '') AS invalid_clicks
FROM (
    SELECT {inner_keys(keys, group)}e.event_type AS event_type, e.mail_proxy AS mail_proxy,
           {person("e.")} AS person, e.ivt AS ivt, {valid} AS valid,
           ({FLAGGED} OR {IN_BURST}) AS machine
    FROM {EVENTS} AS e FINAL
    LEFT JOIN bursts AS b ON e.message = b.message AND e.recipient = b.recipient
    WHERE {where}
)
{group_by(keys, group)}
"""


def orders_sql(window: Window, filters: Filters) -> str:
    """One row per order whose earliest pixel is in the window (its first pixel, preferring
    one with a click id, decides), attributed to the campaign and ad of that click when it
    is known, else to the pixel's own."""
    # Pixels of the look-back too (rollup_query.ATTRIBUTION_LOOKBACK_DAYS): an order with one
    # before the window was counted in an earlier window.
    lookback = Window(window.start - ATTRIBUTION_LOOKBACK_DAYS * DAY, window.end)
    where = f"{lookback.sql('received_at')} AND {filters.sql(frozenset({'site', 'verified'}))}"
    return f"""
SELECT o.site AS site, o.hour AS hour, k.click_id != '' AS attributed,
       if(attributed, k.campaign, o.campaign) AS campaign, if(attributed, k.ad, o.ad) AS ad,
       o.value AS value, o.currency AS currency
FROM (
    SELECT site, order_key,
           argMin(click_id, rank) AS click_id, argMin(campaign, rank) AS campaign,
           argMin(ad, rank) AS ad, argMin(value, rank) AS value,
           argMin(currency, rank) AS currency, argMin(toStartOfHour(received_at), rank) AS hour
    FROM (
        SELECT site, if(order_id != '', order_id, toString(event_id)) AS order_key, click_id,
               campaign, ad, value, currency, received_at, {RANK} AS rank
        FROM {EVENTS} FINAL
        WHERE event_type = 'conversion' AND {where}
    )
    GROUP BY site, order_key
    HAVING min(received_at) >= {sql_time(window.start)}
) AS o
LEFT JOIN (
    SELECT click_id, any(campaign) AS campaign, any(ad) AS ad
    FROM {EVENTS} FINAL
    WHERE event_type = 'click' AND click_id != '' AND {lookback.sql("received_at")}
    GROUP BY click_id
) AS k ON o.click_id = k.click_id"""
