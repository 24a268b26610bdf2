"""Duplicate clicks (analytics/ivt.py DUPLICATE_CLICK): a valid click on an ad by a person who
clicked the same ad of the same campaign and site at most the window before.

Each earlier valid click counts, a duplicate too: a person clicking every 20 s with a 30 s
window makes one click and duplicates. A person is a message's recipient, else a visitor id;
a click with neither (kept without consent, or from an anonymous request) is never a
duplicate, as nothing says who made it. The rule needs each person's clicks in time order,
which no rollup keeps, so both report sources read the same SQL over `events FINAL` (clicks
on ads only, and a replayed copy counted once), looking back one window before the report's
start so that a window's first clicks are judged like any other.
"""

from __future__ import annotations

import datetime as dt

from analytics.raw_query import group_by, inner_keys
from analytics.report_window import Filters, Window, sql_time
from analytics.rollup_query import EVENT_COLUMNS
from analytics.rollups import person
from analytics.schema import EVENTS


def duplicate_clicks_sql(
    window: Window, filters: Filters, keys: tuple[str, ...], group: str | None
) -> str:
    """By (period, *keys): `duplicate_clicks`, the valid ad clicks the rule takes out (with
    a window of 0 there are none: callers ask nothing)."""
    window_ms = int(filters.duplicate_click_window_s) * 1000
    since = window.start - dt.timedelta(milliseconds=window_ms)
    names = "".join(k + ", " for k in ([group] if group else []) + list(keys))
    return f"""
SELECT {names}count() AS duplicate_clicks
FROM (
    SELECT *, lagInFrame(toNullable(at_ms)) OVER (
        PARTITION BY k_site, k_campaign, k_ad, person ORDER BY at_ms, event_id
        ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) AS previous_ms
    FROM (
        SELECT {inner_keys(keys, group)}e.site AS k_site, e.campaign AS k_campaign,
               e.ad AS k_ad, e.event_id AS event_id, {person("e.")} AS person,
               toUnixTimestamp64Milli(e.received_at) AS at_ms
        FROM {EVENTS} AS e FINAL
        WHERE e.event_type = 'click' AND e.ad != '' AND e.ivt = ''
          AND (e.recipient != '' OR e.visitor_id != 0)
          AND e.received_at >= {sql_time(since)} AND e.received_at < {sql_time(window.end)}
          AND {filters.sql(EVENT_COLUMNS)}
    )
)
WHERE at_ms >= {int(window.start.timestamp() * 1000)}
  AND previous_ms IS NOT NULL AND at_ms - previous_ms <= {window_ms}
{group_by(keys, group)}
"""
