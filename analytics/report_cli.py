"""`beacon report`: its options, and which report they ask for.

Without `--view` it prints what it always did: the daily table of events, or with
`--campaign` that campaign's funnel, or with `--attribution` the attributed conversions.
"""

from __future__ import annotations

import argparse
import sys

from analytics.funnel import SOURCES
from analytics.report import FORMATS, StoreUnavailable, render, run_query
from analytics.report_window import GROUPS, Filters, Window
from analytics.settings import StoreSettings
from analytics.store import StoreError
from analytics.views import VIEWS, Request, view_rows
from analytics.web import WEB_KEYS, WebConfig


def add_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--view", choices=VIEWS,
        help="events (default), campaign, ad, site, pages, referrers, ivt; web: visits, "
        "sources, countries, devices, goals, realtime: a row per each",
    )  # fmt: skip
    sub.add_argument("--days", type=int, default=7, help="the last N x 24 hours (default 7)")
    sub.add_argument("--from", dest="start", help="start, UTC ISO date or hour (with --to)")
    sub.add_argument("--to", dest="end", help="end, exclusive (default: the current hour's end)")
    sub.add_argument("--group", choices=GROUPS, help="one row per hour or day as well")
    sub.add_argument("--site", help="only this site")
    sub.add_argument("--campaign", help="this campaign's funnel: opens, clicks, conversions, by ad")
    sub.add_argument("--ad", help="only this ad")
    sub.add_argument("--by-day", action="store_true", help="with --campaign: daily counts")
    sub.add_argument("--sent", type=int, help="messages sent (else: send events)")
    sub.add_argument("--verified", action="store_true", help="signed events only")
    sub.add_argument("--include-ivt", action="store_true",
                     help="count invalid traffic (crawlers, data centers, prefetches, duplicate "
                     "clicks) in the ad figures too; --view ivt lists it")  # fmt: skip
    sub.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                     help="web views: only visits with this source, country, page, goal... "
                     f"(repeatable; keys: {', '.join(WEB_KEYS)})")  # fmt: skip
    sub.add_argument(
        "--attribution", action="store_true", help="last-click conversions by campaign, ad"
    )
    sub.add_argument(
        "--limit", type=int, default=20, help="pages, referrers, web views: top N (20)"
    )
    sub.add_argument("--source", choices=SOURCES, default="rollup",
                     help="rollup (default: rollups, raw events where they cannot answer) "
                     "or raw (raw events only); both give the same numbers")  # fmt: skip
    sub.add_argument("--format", choices=FORMATS, default="table")


def window_of(args: argparse.Namespace) -> Window:
    if args.start:
        return Window.parse(args.start, args.end)
    if args.end:
        raise ValueError("--to needs --from")
    return Window.last_days(args.days)


def report_text(settings: StoreSettings, args: argparse.Namespace) -> str:
    """What `beacon report` prints for `args`; raises ValueError for a bad window."""
    window = window_of(args)
    if args.view is None and (args.attribution or (args.campaign is not None and not args.by_day)):
        from analytics.campaign_report import campaign_text

        if args.format == "csv":
            raise ValueError("--campaign and --attribution print a table or JSON; for CSV use "
                             "--view campaign or --view ad")  # fmt: skip
        return campaign_text(settings, args, window)
    filters = Filters(
        args.site, args.campaign, args.ad, args.verified, web_filters(args.filter),
        args.include_ivt, settings.duplicate_click_window_s,
    )  # fmt: skip
    group = args.group or ("day" if args.view in (None, "events") else None)
    request = Request(
        args.view or "events",
        window,
        filters,
        group,
        args.source,
        args.sent,
        args.limit,
        WebConfig.from_settings(settings),
    )
    found = view_rows(lambda sql: run_query(settings, sql), request)
    return render(found, request.columns(), args.format)


def web_filters(given: list[str]) -> tuple[tuple[str, str], ...]:
    """`--filter KEY=VALUE` options as web filters; raises ValueError naming a bad one."""
    out = []
    for text in given:
        key, sep, value = text.partition("=")
        if not sep or key not in WEB_KEYS:
            raise ValueError(
                f"--filter {text!r}: expected KEY=VALUE, KEY one of {', '.join(WEB_KEYS)}"
            )
        out.append((key, value))
    return tuple(out)


def report_command(settings: StoreSettings, args: argparse.Namespace) -> int:
    try:
        sys.stdout.write(report_text(settings, args))
    except ValueError as exc:
        print(f"beacon report: {exc}", file=sys.stderr)
        return 2
    except (StoreUnavailable, StoreError) as exc:
        print(f"beacon report: {exc}", file=sys.stderr)
        return 1
    return 0
