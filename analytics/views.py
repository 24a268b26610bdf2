"""The views of `beacon report --view` and the dashboard: rows of figures, from either source.

events     events, visitors and recipients by period, site, campaign, event type
campaign   the email and ad funnel per campaign (analytics/campaign_report.py defines it)
ad         the same per campaign and ad, with the /a.js tag's viewable impressions
site       page views, unique visitors, events, conversions and revenue per site
pages      the most viewed pages, with visitors and scroll depth reached
referrers  where page views came from (the referrer's host)
visits     visitors, visits, page views, views per visit, bounce rate, visit duration per site
sources    the same per source group, referrer host and UTM source, medium and campaign
countries  the same per country
devices    the same per device type, browser and operating system
goals      per goal, source and UTM campaign: visitors, converted visitors, conversion rate
ivt        invalid impressions, viewable events and clicks left out, by campaign, ad, reason
realtime   visitors and page views per site in the last five minutes (raw events)
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from analytics import rollup_query
from analytics.campaign_report import funnel, revenue_by_currency
from analytics.duplicate_clicks import duplicate_clicks_sql
from analytics.funnel import (
    COUNTS,
    Query,
    conversions,
    funnel_counts,
    names,
    plan_for,
    rows,
    steady,
)
from analytics.ivt import DUPLICATE_CLICK
from analytics.report_window import Filters, Window
from analytics.viewability import figures, viewability_counts
from analytics.web import FIGURES, GOAL_FIGURES, WebConfig, goal_rows, realtime_rows, visit_rows

NO_FILTERS = Filters()
VIEWS = ("events", "campaign", "ad", "site", "pages", "referrers", "visits", "sources",
         "countries", "devices", "goals", "realtime", "ivt")  # fmt: skip
# The web views: the keys of their rows (analytics/web.py).
VISIT_KEYS = {
    "visits": ("site",),
    "sources": ("site", "source", "referrer_host", "utm_source", "utm_medium", "utm_campaign"),
    "countries": ("site", "country"),
    "devices": ("site", "device_type", "browser", "os"),
}
GOAL_KEYS = ("site", "source", "utm_campaign")
# Views of web traffic by site: rollup_pages_daily, rollup_referrers_daily and rollup_visits
# keep no campaign, ad or verified column, so these views refuse those filters, from raw
# events too (realtime reads them alone), rather than count the whole site under them.
SITE_VIEWS = frozenset({"pages", "referrers", *VISIT_KEYS, "goals", "realtime"})
# What the terminal table shows of each view (JSON and CSV carry every figure).
TABLE_COLUMNS = {
    "events": ("site", "campaign", "event_type", "events", "visitors", "recipients"),
    "campaign": (
        "campaign", "sent", "opens", "unique_opens", "machine_opens", "unique_clicks", "ctr",
        "click_to_open_rate", "conversions", "revenue",
    ),
    "ad": (
        "campaign", "ad", "impressions", "viewable_impressions", "viewability_rate", "clicks",
        "machine_clicks", "unique_clicks", "ctr", "conversions", "revenue",
    ),
    "site": ("site", "pageviews", "unique_visitors", "events", "conversions", "revenue"),
    "pages": (
        "site", "url_host", "url_path", "pageviews", "unique_visitors", "scroll_25", "scroll_50",
        "scroll_75", "scroll_100",
    ),
    "referrers": ("site", "referrer_host", "pageviews", "unique_visitors"),
    **{view: keys + FIGURES for view, keys in VISIT_KEYS.items()},
    "goals": ("site", "goal", "source", "utm_campaign", *GOAL_FIGURES),
    "realtime": ("site", "visitors", "pageviews"),
    "ivt": ("campaign", "ad", "event_type", "reason", "events"),
}  # fmt: skip


@dataclass(frozen=True)
class Request:
    """One report: which view, over which window, of which events, grouped how."""

    view: str
    window: Window
    filters: Filters = NO_FILTERS
    group: str | None = None  # hour or day: one row per period too
    source: str = "rollup"  # or raw: beacon.events only
    sent: int | None = None  # messages sent, when the sender knows better than send events
    limit: int = 20  # pages, referrers and the web views: the top ones
    web: WebConfig = field(default_factory=WebConfig)

    def columns(self) -> tuple[str, ...]:
        return ((self.group,) if self.group else ()) + TABLE_COLUMNS[self.view]


def refused_filters(view: str, filters: Filters, prefix: str = "--") -> str | None:
    """Why `view` cannot take the campaign, ad or verified filter of `filters` (each named
    with `prefix`: the CLI's options, or the dashboard's parameters), or None."""
    given = (("campaign", filters.campaign is not None), ("ad", filters.ad is not None),
             ("verified", filters.verified_only))  # fmt: skip
    names = [prefix + name for name, on in given if on]
    if view not in SITE_VIEWS or not names:
        return None
    return (f"{', '.join(names)} cannot filter the {view} view, which counts web traffic by "
            "site alone (no campaign, ad or signature)")  # fmt: skip


def view_rows(query: Query, request: Request) -> list[dict[str, Any]]:
    """The rows of `request.view`, ordered by their keys (pages, referrers: most viewed);
    raises ValueError for a filter the view cannot apply."""
    refused = refused_filters(request.view, request.filters)
    if refused:
        raise ValueError(refused)
    return steady(query, request.source, lambda: _view_rows(query, request), request.window)


def _view_rows(query: Query, request: Request) -> list[dict[str, Any]]:
    window, filters = request.window, request.filters
    if request.view == "campaign":
        return funnel_rows(query, request, ("campaign",))
    if request.view == "ad":
        return [r for r in funnel_rows(query, request, ("campaign", "ad")) if r["ad"]]
    if request.view == "site":
        return site_rows(query, request)
    if request.view in VISIT_KEYS:
        return visit_rows(query, request, VISIT_KEYS[request.view])
    if request.view == "goals":
        return goal_rows(query, request, GOAL_KEYS)
    if request.view == "realtime":
        return realtime_rows(query, request)
    plan = plan_for(query, window, request.source)
    if request.view == "events":
        return rows(query, rollup_query.events_sql(window, filters, request.group or "day", plan))
    if request.view == "pages":
        return rows(query, rollup_query.pages_sql(window, filters, request.limit, plan))
    if request.view == "referrers":
        return rows(query, rollup_query.referrers_sql(window, filters, request.limit, plan))
    if request.view == "ivt":
        return ivt_rows(query, request, plan)
    raise ValueError(f"unknown view {request.view!r}; one of {', '.join(VIEWS)}")


def funnel_rows(query: Query, request: Request, keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """Funnel figures per key: every machine rule, attributed conversions, rates."""
    args = (query, request.window, request.filters, keys, request.group, request.source)
    plan = plan_for(query, request.window, request.source)
    counts = funnel_counts(*args, plan)
    converted = conversions(*args, plan)
    viewable = viewability_counts(*args, plan)
    zero = dict.fromkeys(COUNTS, 0)
    sent = request.sent if request.filters.campaign is not None else None
    out = []
    for key in sorted(set(counts) | set(converted)):
        found = counts.get(key, zero)
        if not any(found.values()) and key not in converted:
            continue
        out.append(
            {**dict(zip(names(keys, request.group), key, strict=True)),
             **funnel(found, converted.get(key, []), sent), **figures(viewable.get(key))}
        )  # fmt: skip
    return out


def ivt_rows(query: Query, request: Request, plan: rollup_query.Plan) -> list[dict[str, Any]]:
    """What the ad figures leave out as invalid traffic, and why: the consumer's reasons and
    the duplicate clicks, by campaign, ad and event type (and period)."""
    window, filters, group = request.window, request.filters, request.group
    found = rows(query, rollup_query.ivt_sql(window, filters, group, plan))
    if filters.duplicate_click_window_s > 0:
        sql = duplicate_clicks_sql(window, filters, ("campaign", "ad"), group)
        found += [
            {**{k: r[k] for k in names(("campaign", "ad"), group)}, "event_type": "click",
             "reason": DUPLICATE_CLICK, "events": r["duplicate_clicks"]}
            for r in rows(query, sql)
        ]  # fmt: skip
    order = [*names(("campaign", "ad", "event_type", "reason"), group)]
    return sorted(found, key=lambda r: tuple(str(r[k]) for k in order))


def site_rows(query: Query, request: Request) -> list[dict[str, Any]]:
    """Traffic per site, with the conversions whose pixel is on that site."""
    window, filters = request.window, request.filters
    plan = plan_for(query, window, request.source)
    sql = rollup_query.site_sql(window, filters, request.group, plan)
    found = rows(query, sql)
    key_names = names(("site",), request.group)
    site_filters = replace(filters, campaign=None, ad=None, web=())
    converted = conversions(
        query, window, site_filters, ("site",), request.group, request.source, plan
    )
    by_key = {tuple(str(r[k]) for k in key_names): r for r in found}
    for key in converted:
        by_key.setdefault(
            key, {**dict(zip(key_names, key, strict=True)), "pageviews": 0, "unique_visitors": 0,
                  "events": 0}
        )  # fmt: skip
    out = []
    for key in sorted(by_key):
        per_currency = converted.get(key, [])
        row = by_key[key]
        row["conversions"] = sum(c["conversions"] for c in per_currency)
        row["revenue"] = revenue_by_currency(per_currency)
        out.append(row)
    return out
