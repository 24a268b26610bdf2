"""The numbers on the dashboard, from the same views `beacon report` prints."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from analytics.campaign_report import money
from analytics.dashboard.web_figures import web_data
from analytics.funnel import Query, conversions, funnel_counts, memo, steady
from analytics.report_window import DAY, HOUR, Filters, Window
from analytics.views import Request, view_rows
from analytics.web import WebConfig

CAMPAIGN_ROWS = 15
AD_ROWS = 15


def buckets(window: Window, group: str) -> list[str]:
    """Every hour or day of the window, labelled as the reports label them."""
    step = HOUR if group == "hour" else DAY
    at = window.start if group == "hour" else window.start.replace(hour=0)
    out = []
    while at < window.end:
        out.append(at.strftime("%Y-%m-%d %H:00") if group == "hour" else at.date().isoformat())
        at += step
    return out


def mail_filters(filters: Filters, web: WebConfig) -> Filters:
    """What the email and ad figures are filtered by: the event ids (a visit's source,
    country or page says nothing of an open); invalid traffic left out."""
    return Filters(
        filters.site, filters.campaign, filters.ad, filters.verified_only,
        duplicate_click_window_s=web.duplicate_click_window_s,
    )  # fmt: skip


def dashboard_data(
    query: Query, window: Window, group: str, filters: Filters, web: WebConfig
) -> dict[str, Any]:
    """The page's numbers: sites for the picker, the web figures, the email and ad ones."""
    # Read again whole if a day was marked meanwhile (funnel.steady), each time with its own
    # memory of answers.
    return steady(query, "rollup", lambda: _data(memo(query), window, group, filters, web), window)


def _data(
    query: Query, window: Window, group: str, filters: Filters, web: WebConfig
) -> dict[str, Any]:
    labels = buckets(window, group)
    return {
        "window": {"start": iso(window.start), "end": iso(window.end), "group": group},
        "labels": labels,
        "visit_gap_s": web.visit_gap_s,
        # Every site of the range, whatever is chosen: the picker offers the others too.
        "sites": view_rows(query, Request("site", window)),
        "web": web_data(query, window, group, filters, web, labels),
        **mail_data(query, window, group, mail_filters(filters, web), labels),
    }


def mail_data(
    query: Query, window: Window, group: str, filters: Filters, labels: list[str]
) -> dict[str, Any]:
    """Opens, clicks (human and machine) and conversions per period, campaigns and ads."""
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
    return {
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
        },
        "campaigns": busiest(view_rows(query, Request("campaign", window, filters))),
        "ads": busiest_ads(view_rows(query, Request("ad", window, filters))),
    }


def busiest(campaigns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The campaigns most people saw first, at most CAMPAIGN_ROWS of them."""
    ranked = sorted(campaigns, key=lambda c: (-c["unique_opens"], -c["impressions"], c["campaign"]))
    return ranked[:CAMPAIGN_ROWS]


def busiest_ads(ads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ads shown most, at most AD_ROWS of them."""
    ranked = sorted(ads, key=lambda a: (-a["impressions"], -a["clicks"], a["campaign"], a["ad"]))
    return ranked[:AD_ROWS]


def iso(at: dt.datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%MZ")
