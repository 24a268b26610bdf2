"""`beacon report --campaign`: the funnel of one campaign, and last-click attribution.

Definitions (docs/reports.md "Campaign report"):
- sent: `--sent N`, else distinct (message, recipient) of `send` events; unknown without both.
- opens / clicks: events; machine ones are flagged by analytics/machine_opens.py (per row in
  the consumer, the scanner rule here at query time); unique ones count people: a
  (message, recipient), else a visitor id, else the event itself.
- unique clicks count people with a click that is not a machine's.
- conversions: one per order id (a repeated order id counts once: its first pixel, one that
  carries a click id preferred), one per event without an order id. A conversion belongs to
  the campaign and ad of the click whose id it carries (last click: the landing page keeps
  the newest click id), else to the campaign and ad of its own pixel.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import orjson

from analytics.funnel import Query, conversions, funnel_counts, memo, plan_for, steady
from analytics.ivt import DUPLICATE_CLICK_WINDOW_S
from analytics.report import cell, run_query
from analytics.report_window import Filters, Window
from analytics.settings import StoreSettings
from analytics.viewability import figures, viewability_counts

CENTS = Decimal("0.01")


def money(text: str) -> str:
    """A revenue sum as text: at least cents, never rounded."""
    value = Decimal(text)
    return str(value.quantize(CENTS) if value == value.quantize(CENTS) else value.normalize())


def ratio(part: int, whole: int | None) -> float | None:
    return round(part / whole, 4) if whole else None


def revenue_by_currency(conversions: Sequence[dict[str, Any]]) -> dict[str, str]:
    totals: dict[str, Decimal] = {}
    for row in conversions:
        totals[row["currency"]] = totals.get(row["currency"], Decimal(0)) + Decimal(row["revenue"])
    # Conversions without a value or currency add nothing worth a line.
    return {
        currency: money(str(total))
        for currency, total in sorted(totals.items())
        if currency or total
    }


def funnel(
    counts: dict[str, Any], conversions: Sequence[dict[str, Any]], sent: int | None
) -> dict[str, Any]:
    """The report's figures from the funnel counts and the attributed conversions."""
    sent = sent if sent is not None else (counts["sent_events"] or None)
    human_clicks = counts["clicks"] - counts["machine_clicks"]
    converted = sum(row["conversions"] for row in conversions)
    if sent:  # email: people who clicked, of messages sent
        ctr = ratio(counts["unique_clicks"], sent)
    else:  # ads: clicks per impression
        ctr = ratio(human_clicks, counts["impressions"])
    return {
        "sent": sent,
        "impressions": counts["impressions"],
        "invalid_impressions": counts["invalid_impressions"],
        "opens": counts["opens"],
        "unique_opens": counts["unique_opens"],
        "human_opens": counts["opens"] - counts["machine_opens"],
        "machine_opens": counts["machine_opens"],
        "unique_human_opens": counts["unique_human_opens"],
        "proxied_opens": counts["proxied_opens"],
        "clicks": counts["clicks"],
        "machine_clicks": counts["machine_clicks"],
        "unique_clicks": counts["unique_clicks"],
        "invalid_clicks": counts["invalid_clicks"],
        "ctr": ctr,
        "click_to_open_rate": ratio(counts["unique_clicks"], counts["unique_opens"]),
        "conversions": converted,
        "conversion_rate": ratio(converted, counts["unique_clicks"]),
        "revenue": revenue_by_currency(conversions),
    }


def campaign_report(
    query: Query,
    campaign: str,
    days: int = 7,
    site: str | None = None,
    sent: int | None = None,
    verified_only: bool = False,
    source: str = "rollup",
    window: Window | None = None,
    include_ivt: bool = False,
    duplicate_click_window_s: int = DUPLICATE_CLICK_WINDOW_S,
) -> dict[str, Any]:
    """The campaign's funnel, and the same figures per ad when it has ads."""
    window = window or Window.last_days(days)
    filters = Filters(
        site, campaign, None, verified_only, (), include_ivt, duplicate_click_window_s
    )
    # Each read with its own memory of answers: one read again must ask again.
    return steady(
        query,
        source,
        lambda: _report(memo(query), campaign, sent, source, window, filters),
        window,
    )


def _report(
    query: Query, campaign: str, sent: int | None, source: str, window: Window, filters: Filters
) -> dict[str, Any]:
    plan = plan_for(query, window, source)
    [total] = funnel_counts(query, window, filters, (), None, source, plan).values()
    by_ad = (query, window, filters, ("ad",), None, source, plan)
    per_ad = {ad: counts for (ad,), counts in funnel_counts(*by_ad).items()}
    converted = {ad: found for (ad,), found in conversions(*by_ad).items()}
    viewable = {ad: found for (ad,), found in viewability_counts(*by_ad).items()}
    everything = [row for found in converted.values() for row in found]
    seen = next(
        iter(viewability_counts(query, window, filters, (), None, source, plan).values()), None
    )
    report = {"campaign": campaign, **funnel(total, everything, sent), **figures(seen)}
    ads = sorted(set(per_ad) | set(converted))
    if any(ads):
        empty = dict.fromkeys(total, 0)
        report["by_ad"] = [
            {"ad": ad, **funnel(per_ad.get(ad, empty), converted.get(ad, []), sent),
             **figures(viewable.get(ad))}
            for ad in ads
        ]  # fmt: skip
    return report


# What the table shows of each ad of a campaign (JSON carries every figure).
AD_LINES = (
    "impressions", "invalid_impressions", "viewable_impressions", "viewability_rate", "clicks",
    "unique_clicks", "invalid_clicks", "ctr", "conversions", "revenue",
)  # fmt: skip


def attribution(
    query: Query, window: Window, filters: Filters, source: str
) -> list[dict[str, Any]]:
    """Conversions, attributed ones and revenue by campaign, ad and currency: what `beacon
    report --attribution` prints. Read again, as every report, when a day was marked while
    it ran (funnel.steady)."""

    def read() -> list[dict[str, Any]]:
        found = conversions(query, window, filters, source=source)
        return [row for per_key in found.values() for row in per_key]

    return steady(query, source, read, window)


def format_campaign(report: dict[str, Any]) -> str:
    """The report as `beacon report --campaign` prints it: a figure a line, then each ad's."""
    lines = [f"campaign {report['campaign']}"]
    keys = [k for k in report if k not in ("campaign", "by_ad")]
    lines += [f"  {k:<20} {cell(report[k]):>14}" for k in keys]
    for ad in report.get("by_ad", []):
        lines.append(f"\nad {ad['ad'] or '(none)'}")
        lines += [f"  {k:<20} {cell(ad[k]):>14}" for k in AD_LINES]
    return "\n".join(lines) + "\n"


def campaign_text(settings: StoreSettings, args: argparse.Namespace, window: Window) -> str:
    """What `beacon report --campaign X` or `--attribution` prints."""

    def query(sql: str) -> str:
        return run_query(settings, sql)

    if args.attribution:
        filters = Filters(args.site, args.campaign, None, args.verified, (), args.include_ivt)
        found = attribution(query, window, filters, args.source)
        if args.format == "json":
            return orjson.dumps(found, option=orjson.OPT_INDENT_2).decode() + "\n"
        if not found:
            return "no conversions in this range\n"
        header = f"{'campaign':<20} {'ad':<16} {'conversions':>11} {'attributed':>10}  revenue"
        body = [
            f"{r['campaign'] or '-':<20} {r['ad'] or '-':<16} {r['conversions']:>11} "
            f"{r['attributed']:>10}  {money(r['revenue'])} {r['currency']}".rstrip()
            for r in found
        ]
        return "\n".join([header, *body]) + "\n"
    report = campaign_report(
        query, args.campaign, site=args.site, sent=args.sent, verified_only=args.verified,
        source=args.source, window=window, include_ivt=args.include_ivt,
        duplicate_click_window_s=settings.duplicate_click_window_s,
    )  # fmt: skip
    if args.format == "json":
        return orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n"
    return format_campaign(report)
