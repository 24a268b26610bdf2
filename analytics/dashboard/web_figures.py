"""The web half of the dashboard: visits, their sources, pages, places and devices, goals,
and realtime visitors, from analytics/web.py (the `beacon report` views' own queries; the
tables of one key each in one scan of the visits, visit_tables.py)."""

from __future__ import annotations

from typing import Any

from analytics.dashboard.visit_tables import grouped_rows
from analytics.funnel import Query
from analytics.report_window import Filters, Window
from analytics.views import Request
from analytics.web import FIGURES, WebConfig, goal_rows, realtime_rows, visit_rows

TOP_ROWS = 10
# The tables: name -> the keys of their rows. Pages are a site's own: without a site chosen,
# the site is a key too (last: the tables list it after the page).
TABLES = {
    "sources": ("source",),
    "referrers": ("referrer_host",),
    "utm_source": ("utm_source",),
    "utm_medium": ("utm_medium",),
    "utm_campaign": ("utm_campaign",),
    "pages": ("page",),
    "entry_pages": ("entry_page",),
    "exit_pages": ("exit_page",),
    "countries": ("country",),
    "devices": ("device_type",),
    "browsers": ("browser",),
    "os": ("os",),
}
PAGE_TABLES = ("pages", "entry_pages", "exit_pages")
TOTALS = "totals"


def web_filters(filters: Filters) -> Filters:
    """What the web figures are filtered by: the site and the web keys (campaign and ad name
    email and ad events, which are not visits)."""
    return Filters(site=filters.site, web=filters.web)


def table_keys(name: str, filters: Filters) -> tuple[str, ...]:
    keys = TABLES[name]
    return keys if name not in PAGE_TABLES or filters.site is not None else (*keys, "site")


def no_visits() -> dict[str, Any]:
    return {"visitors": 0, "visits": 0, "pageviews": 0, "views_per_visit": None,
            "bounce_rate": None, "visit_duration_s": None}  # fmt: skip


def web_data(
    query: Query, window: Window, group: str, filters: Filters, web: WebConfig, labels: list[str]
) -> dict[str, Any]:
    """Tiles, the visitors and page views series, the tables, goals and realtime visitors."""
    filters = web_filters(filters)
    asked = Request("visits", window, filters, limit=TOP_ROWS, web=web)
    names = [name for name in TABLES if name != "pages"]
    key_sets = [(), *(table_keys(name, filters) for name in names)]
    totals, *tables = grouped_rows(query, asked, key_sets)
    found = dict(zip(names, tables, strict=True))
    # A visit views many pages: a row per page it viewed, a query of its own.
    found["pages"] = visit_rows(query, asked, table_keys("pages", filters))
    series = visit_rows(query, Request("visits", window, filters, group=group, web=web), ())
    per_period = {row[group]: row for row in series}
    return {
        TOTALS: {name: (totals[0] if totals else no_visits())[name] for name in FIGURES},
        "realtime": realtime_figures(query, filters, web),
        "series": {
            name: [per_period.get(label, {}).get(name, 0) for label in labels]
            for name in ("visitors", "pageviews")
        },
        "tables": {name: found[name] for name in TABLES},
        "goals": goal_rows(query, Request("goals", window, filters, web=web), ())[:TOP_ROWS],
    }


def realtime_figures(query: Query, filters: Filters, web: WebConfig) -> dict[str, int]:
    """Visitors and page views of the last 5 minutes, over the chosen site or all of them."""
    request = Request("realtime", Window.last_days(1), web_filters(filters), web=web)
    found = realtime_rows(query, request)
    return {name: sum(row[name] for row in found) for name in ("visitors", "pageviews")}
