"""The web half of the dashboard: visits, their sources, pages, places and devices, goals,
and realtime visitors, all from analytics/web.py (the `beacon report` views' own queries)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from analytics.funnel import Query
from analytics.report_window import Filters, Window
from analytics.views import Request
from analytics.web import WebConfig, goal_rows, realtime_rows, visit_rows

TOP_ROWS = 10
FIGURES = ("visitors", "visits", "pageviews", "views_per_visit", "bounce_rate", "visit_duration_s")
# The tables: name -> the keys of their rows. Pages are a site's own: without a site chosen,
# the site is a key too.
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
# Queries of one page in flight at once: the store runs each on its own threads too.
PARALLEL_QUERIES = 3


def web_filters(filters: Filters) -> Filters:
    """What the web figures are filtered by: the site and the web keys (campaign and ad name
    email and ad events, which are not visits)."""
    return Filters(site=filters.site, web=filters.web)


def table_keys(name: str, filters: Filters) -> tuple[str, ...]:
    keys = TABLES[name]
    return keys if name not in PAGE_TABLES or filters.site is not None else ("site", *keys)


def figures(row: dict[str, Any] | None) -> dict[str, Any]:
    """The figures of a row, zeros (and None for the ratios) when there were no visits."""
    if row is None:
        return {"visitors": 0, "visits": 0, "pageviews": 0, "views_per_visit": None,
                "bounce_rate": None, "visit_duration_s": None}  # fmt: skip
    return {name: row[name] for name in FIGURES}


def web_data(
    query: Query, window: Window, group: str, filters: Filters, web: WebConfig, labels: list[str]
) -> dict[str, Any]:
    """Tiles, the visitors and page views series, the tables, goals and realtime visitors."""
    filters = web_filters(filters)

    def ask(keys: tuple[str, ...], group_by: str | None = None) -> list[dict[str, Any]]:
        request = Request("visits", window, filters, group=group_by, limit=TOP_ROWS, web=web)
        return visit_rows(query, request, keys)

    jobs: dict[str, Callable[[], Any]] = {
        "totals": lambda: ask(()),
        "series": lambda: ask((), group),
        "goals": lambda: goal_rows(query, Request("goals", window, filters, web=web), ()),
        "realtime": lambda: realtime_figures(query, filters, web),
    }
    for name in TABLES:
        jobs[name] = lambda name=name: ask(table_keys(name, filters))  # type: ignore[misc]
    with ThreadPoolExecutor(PARALLEL_QUERIES, thread_name_prefix="dashboard") as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
        found = {name: future.result() for name, future in futures.items()}
    per_period = {row[group]: row for row in found["series"]}
    return {
        "totals": figures(found["totals"][0] if found["totals"] else None),
        "realtime": found["realtime"],
        "series": {
            name: [per_period.get(label, {}).get(name, 0) for label in labels]
            for name in ("visitors", "pageviews")
        },
        "tables": {name: found[name] for name in TABLES},
        "goals": found["goals"][:TOP_ROWS],
    }


def realtime_figures(query: Query, filters: Filters, web: WebConfig) -> dict[str, int]:
    """Visitors and page views of the last 5 minutes, over the chosen site or all of them."""
    request = Request("realtime", Window.last_days(1), web_filters(filters), web=web)
    found = realtime_rows(query, request)
    return {name: sum(row[name] for row in found) for name in ("visitors", "pageviews")}
