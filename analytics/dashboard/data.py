"""The numbers on the dashboard, from the same views `beacon report` prints."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from analytics.campaign_report import money
from analytics.funnel import Query, conversions, funnel_counts, memo
from analytics.report_window import DAY, HOUR, Filters, Window
from analytics.views import Request, view_rows

TOP_ROWS = 10
CAMPAIGN_ROWS = 15


def buckets(window: Window, group: str) -> list[str]:
    """Every hour or day of the window, labelled as the reports label them."""
    step = HOUR if group == "hour" else DAY
    at = window.start if group == "hour" else window.start.replace(hour=0)
    out = []
    while at < window.end:
        out.append(at.strftime("%Y-%m-%d %H:00") if group == "hour" else at.date().isoformat())
        at += step
    return out


def dashboard_data(query: Query, window: Window, group: str, filters: Filters) -> dict[str, Any]:
    """Series per period, the campaign table, sites, top pages and referrers, totals."""
    labels = buckets(window, group)
    query = memo(query)
    per_period = funnel_counts(query, window, filters, (), group)
    orders = conversions(query, window, filters, (), group)

    def series(name: str) -> list[int]:
        return [per_period.get((label,), {}).get(name, 0) for label in labels]

    opens, machine = series("opens"), series("machine_opens")
    clicks, machine_clicks = series("clicks"), series("machine_clicks")
    converted = [sum(r["conversions"] for r in orders.get((label,), [])) for label in labels]
    revenue: dict[str, Decimal] = {}
    for per_currency in orders.values():
        for row in per_currency:
            if row["currency"] or Decimal(row["revenue"]):
                revenue[row["currency"]] = revenue.get(row["currency"], Decimal(0)) + Decimal(
                    row["revenue"]
                )
    sites = view_rows(query, Request("site", window, filters))
    return {
        "window": {"start": iso(window.start), "end": iso(window.end), "group": group},
        "labels": labels,
        "series": {
            "opens": opens,
            "human_opens": [o - m for o, m in zip(opens, machine, strict=True)],
            "machine_opens": machine,
            "human_clicks": [c - m for c, m in zip(clicks, machine_clicks, strict=True)],
            "conversions": converted,
        },
        "totals": {
            "opens": sum(opens),
            "machine_opens": sum(machine),
            "clicks": sum(clicks),
            "human_clicks": sum(clicks) - sum(machine_clicks),
            "conversions": sum(converted),
            "revenue": {c: money(str(v)) for c, v in sorted(revenue.items())},
            "pageviews": sum(s["pageviews"] for s in sites),
            "unique_visitors": sum(s["unique_visitors"] for s in sites),
        },
        "campaigns": busiest(view_rows(query, Request("campaign", window, filters))),
        "sites": sites,
        "pages": view_rows(query, Request("pages", window, filters, limit=TOP_ROWS)),
        "referrers": view_rows(query, Request("referrers", window, filters, limit=TOP_ROWS)),
    }


def busiest(campaigns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The campaigns most people saw first, at most CAMPAIGN_ROWS of them."""
    ranked = sorted(campaigns, key=lambda c: (-c["unique_opens"], -c["impressions"], c["campaign"]))
    return ranked[:CAMPAIGN_ROWS]


def iso(at: dt.datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%MZ")
