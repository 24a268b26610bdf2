"""Web analytics figures: visitors, visits, bounce rate, visit duration, sources, countries,
devices and goals, from visits (analytics/visits.py); realtime visitors from raw events.

Visits of settled days are read from `rollup_visits`, every other day's are computed from
`events FINAL` by the same SQL, and both kinds of rows go through one aggregation: the numbers
are the same either way (`--source raw` computes every day). Rates are worked out here from
whole-number sums, so a rounding rule is written once.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from analytics import visits
from analytics.funnel import Query, rows
from analytics.ivt import DUPLICATE_CLICK_WINDOW_S
from analytics.report_window import DAY, Filters, Window, bucket, sql_string, sql_time
from analytics.rollup_query import day_list
from analytics.rollups import EVENTS_HOURLY, SETTLING
from analytics.schema import EVENTS
from analytics.sources import referrer_sql, source_sql

# What a visit can be broken down and filtered by.
WEB_KEYS = (
    "source", "referrer_host", "utm_source", "utm_medium", "utm_campaign", "country",
    "device_type", "browser", "os", "page", "entry_page", "exit_page", "goal",
)  # fmt: skip
FIGURES = ("visitors", "visits", "pageviews", "views_per_visit", "bounce_rate",
           "visit_duration_s")  # fmt: skip
GOAL_FIGURES = ("visitors", "converted", "conversions", "conversion_rate")
REALTIME_S = 300


@dataclass(frozen=True)
class WebConfig:
    """The report-time settings of web figures (BEACON_VISIT_GAP_S, _GOALS, _SITE_HOSTS), and
    the dashboard's duplicate click window (BEACON_DUPLICATE_CLICK_WINDOW_S)."""

    visit_gap_s: int = visits.DEFAULT_VISIT_GAP_S
    goals: tuple[str, ...] = ()  # empty: every custom event is a goal
    site_hosts: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    duplicate_click_window_s: int = DUPLICATE_CLICK_WINDOW_S

    @classmethod
    def from_settings(cls, settings: Any) -> WebConfig:
        from analytics.settings import site_hosts_of

        return cls(
            settings.visit_gap_s,
            settings.goals,
            site_hosts_of(settings.site_hosts),
            settings.duplicate_click_window_s,
        )


class Asked(Protocol):
    """What a web figure needs of a report request (analytics/views.py Request)."""

    @property
    def window(self) -> Window: ...
    @property
    def filters(self) -> Filters: ...
    @property
    def group(self) -> str | None: ...
    @property
    def source(self) -> str: ...
    @property
    def limit(self) -> int: ...
    @property
    def web(self) -> WebConfig: ...


def ratio(part: int, whole: int, digits: int) -> float | None:
    return round(part / whole, digits) if whole else None


def window_days(window: Window) -> list[dt.date]:
    last = (window.end - dt.timedelta(microseconds=1)).date()
    day, out = window.start.date(), []
    while day <= last:
        out.append(day)
        day += DAY
    return out


def settled_days_sql(window: Window, gap_s: int) -> str:
    """Days whose stored visits answer: settled with this gap, every rollup row of the day
    settled (no late live row), and not being settled again."""
    since, until = sql_time(window.start.replace(hour=0)), sql_time(window.end + DAY)
    return f"""
SELECT toString(day) AS day FROM (
    SELECT toDate(period) AS day, max(live) AS l, max(settled) AS s FROM {EVENTS_HOURLY.table}
    WHERE period >= {since} AND period < {until} GROUP BY day
) WHERE l = 0 AND s = 1
  AND day IN (SELECT day FROM {visits.VISITS_SETTLED} FINAL WHERE visit_gap_s = {int(gap_s)})
  AND day NOT IN (SELECT day FROM {SETTLING} FINAL WHERE done = 0)"""


def stored_days(query: Query, asked: Asked) -> set[dt.date]:
    if asked.source == "raw":
        return set()
    found = rows(query, settled_days_sql(asked.window, asked.web.visit_gap_s))
    return {dt.date.fromisoformat(r["day"]) for r in found}


def visits_sql(asked: Asked, stored: set[dt.date]) -> str:
    """The window's visits (by start), stored ones for `stored` days, computed for the rest."""
    window, site = asked.window, asked.filters.site
    site_sql = f"site = {sql_string(site)}" if site is not None else "1"
    in_window = window.sql("start")
    days = window_days(window)
    kept = [d for d in days if d in stored]
    rest = [d for d in days if d not in stored]
    parts = []
    if kept:
        parts.append(
            f"SELECT {visits.COLUMN_NAMES} FROM {visits.VISITS} "
            f"WHERE toDate(period) IN ({day_list(kept)}) AND {in_window} AND {site_sql}"
        )
    if rest:
        where = f"toDate(received_at) IN ({day_list(rest)}) AND {site_sql}"
        computed = visits.select(where, asked.web.visit_gap_s, EVENTS)
        parts.append(f"SELECT {visits.COLUMN_NAMES} FROM ({computed}) WHERE {in_window}")
    return "\nUNION ALL\n".join(parts)


def reached_sql(goals: tuple[str, ...]) -> str:
    """The goals a visit reached, as an array: the listed ones (in their order), or its custom
    events. One has() per goal: a lambda over the list would copy each visit's pages for it."""
    if not goals:
        return "custom_events"
    parts = [
        f"if(has({'pages' if g.startswith('/') else 'custom_events'}, {sql_string(g)}), "
        f"[{sql_string(g)}], [])"
        for g in goals
    ]
    return f"arrayConcat({', '.join(parts)})"


def derived_sql(asked: Asked, source: str) -> str:
    """Visit rows with the read-time columns: the referrer less the site's own hosts, the
    source group, the goals reached."""
    cfg = asked.web
    plain = [c for c, _ in visits.COLUMNS if c != "referrer_host"]
    # LowCardinality: the source rules' regular expressions then run once per distinct host
    # of a block, not once per visit.
    return (
        f"SELECT {', '.join(plain)}, toLowCardinality({referrer_sql(cfg.site_hosts)}) AS ref_host, "
        f"{source_sql('ref_host')} AS source, {reached_sql(cfg.goals)} AS goals\n"
        f"FROM ({source})"
    )


def filter_sql(filters: Filters) -> str:
    """The web filters (key, value) over derived visit rows; "1" for none."""
    out = []
    for key, value in filters.web:
        text = sql_string(value)
        if key == "page":
            out.append(f"has(pages, {text})")
        elif key == "goal":
            out.append(f"has(goals, {text})")
        elif key == "referrer_host":
            out.append(f"ref_host = {text}")
        elif key in WEB_KEYS:
            out.append(f"{key} = {text}")
        else:
            raise ValueError(f"unknown filter {key!r}; one of {', '.join(WEB_KEYS)}")
    return " AND ".join(out) or "1"


def column_of(key: str) -> str:
    return "ref_host" if key == "referrer_host" else key


def visit_rows(query: Query, asked: Asked, keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """The figures per `keys` ("site" and WEB_KEYS but goal), per period with a group;
    sorted by visits (most first), then keys; the top `limit` per period when keyed."""
    if "goal" in keys:
        raise ValueError("goals have figures of their own: goal_rows")
    source = derived_sql(asked, visits_sql(asked, stored_days(query, asked)))
    where = filter_sql(asked.filters)
    if "page" in keys:
        # A row per page view; a visit counts once per page, on its first view of it (one
        # pass: counting a page's views in the visit's pages for each page is quadratic).
        source = (
            f"SELECT *, page, nth FROM ({source}) ARRAY JOIN pages AS page, "
            f"arrayEnumerateUniq(pages) AS nth WHERE {where}"
        )
        where = "1"
        counts = ["countIf(nth = 1) AS visits", "count() AS pageviews",
                  "sumIf(bounce, nth = 1) AS bounces",
                  "sumIf(duration_ms, nth = 1) AS duration_ms"]  # fmt: skip
    else:
        counts = ["count() AS visits", "sum(pageviews) AS pageviews", "sum(bounce) AS bounces",
                  "sum(duration_ms) AS duration_ms"]  # fmt: skip
    group = asked.group
    names = ([group] if group else []) + list(keys)
    select = [f"{bucket(group, 'start')} AS {group}"] if group else []
    select += [f"{column_of(k)} AS {k}" for k in keys]
    select += ["uniqExact(visitor_id) AS visitors", *counts]
    order = ", ".join([*([group] if group else []), "visits DESC", *keys])
    limit = ""
    if keys:
        limit = f"LIMIT {int(asked.limit)}" + (f" BY {group}" if group else "")
    group_by = f"GROUP BY {', '.join(names)}" if names else ""
    sql = (
        f"SELECT {', '.join(select)}\nFROM ({source})\nWHERE {where}\n{group_by}\n"
        f"ORDER BY {order}\n{limit}"
    )
    return [figures(r) for r in rows(query, sql) if r["visits"]]


def figures(row: dict[str, Any]) -> dict[str, Any]:
    """A row's sums as the figures a person reads."""
    visits_n, bounces, duration_ms = row["visits"], row.pop("bounces"), row.pop("duration_ms")
    row["views_per_visit"] = ratio(row["pageviews"], visits_n, 2)
    row["bounce_rate"] = ratio(bounces, visits_n, 4)
    seconds = ratio(duration_ms, visits_n * 1000, 1) if visits_n else None
    row["visit_duration_s"] = seconds
    return row


def goal_rows(query: Query, asked: Asked, keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """Per goal (and `keys`): visitors of the group, visitors and visits that reached it,
    and the conversion rate; goals nobody reached are left out."""
    if "goal" in keys or "page" in keys:
        raise ValueError("goal rows are keyed by goal already, and a visit has many pages")
    source = derived_sql(asked, visits_sql(asked, stored_days(query, asked)))
    where = filter_sql(asked.filters)
    group = asked.group
    period = [f"{bucket(group, 'start')} AS {group}"] if group else []
    key_cols = [f"{column_of(k)} AS {k}" for k in keys]
    names = ([group] if group else []) + list(keys)
    # One pass over the visits (computing them is the cost): each visit once as itself, for
    # its group's visitors (reached 0), and once more per goal it reached.
    counts = ["reached", "goal", "uniqExact(visitor_id) AS visitors", "count() AS visits"]
    found = rows(query, (
        f"SELECT {', '.join([*period, *key_cols, *counts])}\n"
        f"FROM (SELECT *, arrayJoin(arrayPushFront(arrayMap(g -> (1, g), goals), (0, ''))) AS r,\n"
        f"      r.1 AS reached, r.2 AS goal FROM ({source}) WHERE {where})\n"
        f"GROUP BY {', '.join([*names, 'reached', 'goal'])}"
    ))  # fmt: skip
    visitors_of = {
        tuple(str(r[n]) for n in names): r["visitors"] for r in found if not r["reached"]
    }
    out = []
    for r in found:
        if not r["reached"]:
            continue
        n = visitors_of.get(tuple(str(r[k]) for k in names), 0)
        lead = ([group] if group else []) + [k for k in keys if k == "site"]
        out.append({
            **{k: r[k] for k in lead}, "goal": r["goal"],
            **{k: r[k] for k in keys if k != "site"}, "visitors": n,
            "converted": r["visitors"], "conversions": r["visits"],
            "conversion_rate": ratio(r["visitors"], n, 4),
        })  # fmt: skip
    return sorted(out, key=goal_order(group, keys))


def goal_order(group: str | None, keys: tuple[str, ...]) -> Any:
    def key(row: dict[str, Any]) -> tuple:
        lead = (row[group],) if group else ()
        site = (row["site"],) if "site" in keys else ()
        rest = tuple(str(row[k]) for k in keys if k != "site")
        return (*lead, *site, row["goal"], -row["converted"], *rest)

    return key


def realtime_rows(query: Query, asked: Asked) -> list[dict[str, Any]]:
    """Visitors and page views per site in the last five minutes, from raw events."""
    site = asked.filters.site
    site_sql = f"AND site = {sql_string(site)}" if site is not None else ""
    return rows(query, f"""
SELECT site, uniqExact(visitor_id) AS visitors, countIf(event_type = 'pageview') AS pageviews
FROM {EVENTS} FINAL
WHERE {visits.WEB_EVENTS} AND received_at >= now64(3) - toIntervalSecond({REALTIME_S}) {site_sql}
GROUP BY site ORDER BY site""")  # fmt: skip
