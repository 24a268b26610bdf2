"""Report queries over the rollups, with raw events wherever a rollup cannot answer.

`rows_sql` is the planner. For a window it reads the stored rows of the whole periods the
window covers, and computes rows of the same shape from `events FINAL` for the rest: the
partial days at the ends of a window over a daily rollup, days being settled, and settled
days that met a late live row (analytics/rollup_settle.py). Both kinds of rows merge in one
aggregation, so a report needs no second pass and every figure comes out exact.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field

from analytics.ivt import FILTERED_TYPES
from analytics.report_window import DAY, Filters, Window, bucket, sql_time
from analytics.rollups import (
    CLICKS,
    EVENTS_HOURLY,
    ORDERS,
    PAGES_DAILY,
    REFERRERS_DAILY,
    ROLLUPS,
    SETTLING,
    VIEWABILITY_HOURLY,
    Rollup,
)

EVENT_COLUMNS = frozenset({"site", "campaign", "ad", "verified", "event_type"})
# Clicks this far before a report window still own the conversions inside it; and an
# order's pixels this far before it make a later pixel inside it (a thank-you page reloaded
# after midnight) no new order. One bound for both: a report reads no further back than its
# clicks, and an order first seen before that could not be attributed to its click anyway.
ATTRIBUTION_LOOKBACK_DAYS = 30
ALL_ROLLUPS = "*"


@dataclass(frozen=True)
class Plan:
    """Where a report's rows come from: raw events only, or the rollups except on
    `raw_days` (per rollup table name; ALL_ROLLUPS: every one)."""

    raw: bool = False
    raw_days: Mapping[str, frozenset[dt.date]] = field(default_factory=dict)

    def days(self, rollup: Rollup) -> frozenset[dt.date]:
        return self.raw_days.get(rollup.name, frozenset()) | self.raw_days.get(
            ALL_ROLLUPS, frozenset()
        )


RAW = Plan(raw=True)


def plan_sql(window: Window) -> str:
    """Days the rollups cannot answer: being settled, or settled and live at once (a late
    event that the next settling pass folds in)."""
    since, until = sql_time(window.start - DAY), sql_time(window.end)
    mixed = [
        f"SELECT '{r.name}' AS name, day FROM (SELECT toDate(period) AS day, max(live) AS l, "
        f"max(settled) AS s FROM {r.table} WHERE period >= {since} AND period < {until} "
        f"GROUP BY day) WHERE l = 1 AND s = 1"
        for r in ROLLUPS
        if r.counted
    ]
    settling = f"SELECT '{ALL_ROLLUPS}' AS name, day FROM {SETTLING} FINAL WHERE done = 0"
    return " UNION ALL ".join([*mixed, settling])


def plan_from(rows: list[dict[str, str]]) -> Plan:
    days: dict[str, set[dt.date]] = {}
    for row in rows:
        days.setdefault(row["name"], set()).add(dt.date.fromisoformat(row["day"]))
    return Plan(raw_days={name: frozenset(found) for name, found in days.items()})


def day_list(days: list[dt.date]) -> str:
    return ", ".join(f"toDate('{d.isoformat()}')" for d in days)


def rows_sql(rollup: Rollup, window: Window, where: str = "1", plan: Plan = RAW) -> str:
    """Rollup rows for `window` whose dims match `where`: stored ones where the rollup can
    answer, and rows computed from `events FINAL` for the rest."""
    columns = ", ".join(c for c, _ in rollup.columns())
    lo_at, hi_at = window.inner(rollup.grain)
    in_window = window.sql("received_at")
    if plan.raw or lo_at >= hi_at:
        everything = rollup.select(settled=True, where=f"{in_window} AND {where}")
        return f"SELECT {columns} FROM ({everything})"
    lo, hi = sql_time(lo_at), sql_time(hi_at)
    # The days of [lo_at, hi_at): an hourly rollup's window can end within its last day.
    last_day = (hi_at - dt.timedelta(microseconds=1)).date()
    days = sorted(d for d in plan.days(rollup) if lo_at.date() <= d <= last_day)
    skip = f" AND toDate(period) NOT IN ({day_list(days)})" if days else ""
    parts = [
        f"SELECT {columns} FROM {rollup.table} "
        f"WHERE period >= {lo} AND period < {hi}{skip} AND {where}"
    ]
    rest = [f"toDate(received_at) IN ({day_list(days)})"] if days else []
    if window.start < lo_at:  # the partial periods at the ends of the window
        rest.append(f"received_at < {lo}")
    if hi_at < window.end:
        rest.append(f"received_at >= {hi}")
    if rest:
        computed = rollup.select(
            settled=True, where=f"{in_window} AND ({' OR '.join(rest)}) AND {where}"
        )
        parts.append(f"SELECT {columns} FROM ({computed})")
    return "\nUNION ALL\n".join(parts)


def count(condition: str = "1") -> str:
    """Events of the merged rows that match `condition`: settled sums plus live id sets."""
    return f"(sumIf(events_settled, {condition}) + uniqExactMergeIf(events_live, {condition}))"


def keys_sql(keys: tuple[str, ...], group: str | None, column: str = "period") -> list[str]:
    """SELECT expressions of the grouping keys: the time bucket first, then dims."""
    out = [f"{bucket(group, column)} AS {group}"] if group else []
    return out + list(keys)


def grouped(select: list[str], source: str, keys: list[str], order: str = "") -> str:
    names = [k.rsplit(" AS ", 1)[-1] for k in keys]
    group = f"GROUP BY {', '.join(names)}" if names else ""
    order_by = order or (f"ORDER BY {', '.join(names)}" if names else "")
    return f"SELECT {', '.join(keys + select)}\nFROM ({source})\n{group}\n{order_by}"


def funnel_sql(
    window: Window,
    filters: Filters,
    keys: tuple[str, ...],
    group: str | None,
    plan: Plan,
    where: str = "1",
) -> str:
    """Funnel counts by the events' own flags (the scanner rule comes on top: funnel.py)."""
    human_open = "event_type = 'open' AND machine_open = 0"
    human_click = "event_type = 'click' AND machine_open = 0 AND is_bot = 0"
    valid = filters.valid()
    select = [
        "uniqExactMergeIf(people, event_type = 'send') AS sent_events",
        count(f"event_type = 'impression' AND {valid}") + " AS impressions",
        count("event_type = 'impression' AND ivt != ''") + " AS invalid_impressions",
        count("event_type = 'open'") + " AS opens",
        count("event_type = 'open' AND machine_open = 1") + " AS machine_opens",
        count("event_type = 'open' AND proxied = 1") + " AS proxied_opens",
        "uniqExactMergeIf(people, event_type = 'open') AS unique_opens",
        f"uniqExactMergeIf(people, {human_open}) AS unique_human_opens",
        count(f"event_type = 'click' AND {valid}") + " AS clicks",
        count(f"event_type = 'click' AND {valid} AND NOT ({human_click})") + " AS machine_clicks",
        f"uniqExactMergeIf(people, {human_click} AND {valid}) AS unique_clicks",
        count("event_type = 'click' AND ivt != ''") + " AS invalid_clicks",
    ]
    source = rows_sql(EVENTS_HOURLY, window, f"{filters.sql(EVENT_COLUMNS)} AND {where}", plan)
    return grouped(select, source, keys_sql(keys, group))


def events_sql(window: Window, filters: Filters, group: str, plan: Plan) -> str:
    """Events, visitors and recipients by period, site, campaign and event type."""
    select = [
        count() + " AS events",
        "uniqExactMerge(visitors) AS visitors",
        "uniqExactMerge(recipients) AS recipients",
    ]
    source = rows_sql(EVENTS_HOURLY, window, filters.sql(EVENT_COLUMNS), plan)
    return grouped(select, source, keys_sql(("site", "campaign", "event_type"), group))


def site_sql(window: Window, filters: Filters, group: str | None, plan: Plan) -> str:
    """Page views, unique visitors and all events by site."""
    select = [
        count("event_type = 'pageview'") + " AS pageviews",
        "uniqExactMergeIf(visitors, event_type = 'pageview') AS unique_visitors",
        count() + " AS events",
    ]
    source = rows_sql(EVENTS_HOURLY, window, filters.sql(EVENT_COLUMNS), plan)
    return grouped(select, source, keys_sql(("site",), group))


def top_sql(
    rollup: Rollup,
    keys: list[str],
    views: str,
    select: list[str],
    window: Window,
    where: str,
    plan: Plan,
    limit: int,
) -> str:
    """The `limit` rows with the most `views` (ties by key), with `select` merged for those
    alone: unique visitors are the costly part, so they are merged for the top rows only."""
    names = ", ".join(keys)
    if plan.raw:  # raw events: one pass (two would read them twice)
        order = f"ORDER BY pageviews DESC, {names} LIMIT {int(limit)}"
        return grouped(select, rows_sql(rollup, window, where, plan), keys, order)
    ranked = grouped(
        [f"{views} AS views"], rows_sql(rollup, window, where, plan), keys,
        f"ORDER BY views DESC, {names} LIMIT {int(limit)}",
    )  # fmt: skip
    top = f"SELECT {names} FROM ({ranked})"
    source = rows_sql(rollup, window, f"{where} AND ({names}) IN ({top})", plan)
    return grouped(select, source, keys, f"ORDER BY pageviews DESC, {names}")


def pages_sql(window: Window, filters: Filters, limit: int, plan: Plan) -> str:
    """The most viewed pages, with visitors and how far down their readers scrolled."""
    views = count("event_type = 'pageview'")
    select = [
        views + " AS pageviews",
        "uniqExactMergeIf(visitors, event_type = 'pageview') AS unique_visitors",
        *(
            count(f"event_type = 'engagement' AND scroll_pct >= {pct}") + f" AS scroll_{pct}"
            for pct in (25, 50, 75, 100)
        ),
    ]
    where = filters.sql(frozenset({"site"}))
    keys = ["site", "url_host", "url_path"]
    return top_sql(PAGES_DAILY, keys, views, select, window, where, plan, limit)


def referrers_sql(window: Window, filters: Filters, limit: int, plan: Plan) -> str:
    select = [count() + " AS pageviews", "uniqExactMerge(visitors) AS unique_visitors"]
    where = filters.sql(frozenset({"site"}))
    keys = ["site", "referrer_host"]
    return top_sql(REFERRERS_DAILY, keys, count(), select, window, where, plan, limit)


def orders_sql(window: Window, filters: Filters, plan: Plan) -> str:
    """One row per order whose earliest pixel is in the window (its first pixel decides),
    with the campaign and ad of the click it names, if that click is known: last-click
    attribution."""
    lookback = Window(window.start - ATTRIBUTION_LOOKBACK_DAYS * DAY, window.end)
    # The look-back's hours too, each read where the plan says (a day being settled from raw
    # events): an order with a row before the window was counted in an earlier one.
    orders = rows_sql(ORDERS, lookback, filters.sql(frozenset({"site", "verified"})), plan)
    clicks = rows_sql(CLICKS, lookback, "1", plan)
    return f"""
SELECT o.site AS site, o.hour AS hour, k.click_id != '' AS attributed,
       if(attributed, k.campaign, o.campaign) AS campaign, if(attributed, k.ad, o.ad) AS ad,
       o.value AS value, o.currency AS currency
FROM (
    SELECT site, order_key, argMinMerge(first_campaign) AS campaign, argMinMerge(first_ad) AS ad,
           argMinMerge(first_click_id) AS click_id, argMinMerge(first_value) AS value,
           argMinMerge(first_currency) AS currency, argMinMerge(first_hour) AS hour
    FROM ({orders}) GROUP BY site, order_key HAVING min(period) >= {sql_time(window.start)}
) AS o
LEFT JOIN (
    SELECT click_id, any(click_campaign) AS campaign, any(click_ad) AS ad
    FROM ({clicks}) GROUP BY click_id
) AS k ON o.click_id = k.click_id"""


def viewability_sql(
    window: Window, filters: Filters, keys: tuple[str, ...], group: str | None, plan: Plan
) -> str:
    """The /a.js tag's measured and viewable impressions by key (analytics/viewability.py)."""
    valid = filters.valid()
    select = [
        count(f"event_type = 'impression' AND measured = 1 AND {valid}")
        + " AS measured_impressions",
        count(f"event_type = 'viewable' AND {valid}") + " AS viewable_impressions",
    ]
    source = rows_sql(VIEWABILITY_HOURLY, window, filters.sql(EVENT_COLUMNS), plan)
    return grouped(select, source, keys_sql(keys, group))


def ivt_sql(window: Window, filters: Filters, group: str | None, plan: Plan) -> str:
    """The invalid impressions, viewable events and clicks the consumer classified, by
    campaign, ad, event type and reason (duplicate clicks come from
    analytics/duplicate_clicks.py)."""
    types = ", ".join(f"'{t}'" for t in FILTERED_TYPES)
    where = f"{filters.sql(EVENT_COLUMNS)} AND ivt != '' AND event_type IN ({types})"
    source = rows_sql(EVENTS_HOURLY, window, where, plan)
    keys = [*keys_sql(("campaign", "ad", "event_type"), group), "ivt AS reason"]
    return grouped([count() + " AS events"], source, keys)
