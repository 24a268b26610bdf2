"""How fast reports answer over many events: from the rollups, and from raw events.

    python -m loadtest.bench_reports [--events 10000000] [--days 30] [--rounds 3] [--keep DIR]
        [--reuse] [--web-only]

Builds a store in chDB with the consumers' own migrations, fills it with an INSERT ... SELECT
from numbers() (loadtest/report_events.py: web visits with their sources, countries, devices
and goals, email campaigns with Apple MPP, bots, Gmail's proxy and link scanners, ad
campaigns, orders with reloads), so the views fill the rollups as they would in production;
settles every ended day as the consumer would (the visits too); then times each `beacon
report` view and the dashboard's visit breakdowns both ways (best of --rounds) and checks they
agree. Prints a table; not a test. `--keep DIR --reuse` times the reports again over a kept
store; `--web-only` times the web views alone.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from analytics.campaign_report import campaign_report
from analytics.migrations import migrate
from analytics.report_window import Filters, Window
from analytics.rollup_settle import Settler
from analytics.rollups import ROLLUPS
from analytics.schema import EVENTS
from analytics.store.chdb import ChdbWriter
from analytics.views import NO_FILTERS, Request, view_rows
from analytics.visits import VISITS
from analytics.web import WebConfig, visit_rows
from loadtest.report_events import GOALS, LIVE, generate_sql


class TimedSettler(Settler):
    """The consumer's settler, adding up the time its days' visits take."""

    visits_s = 0.0

    async def _visits(self, day: dt.date, settled: bool) -> None:
        started = time.perf_counter()
        await super()._visits(day, settled)
        self.visits_s += time.perf_counter() - started


def timed(label: str, work: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    result = work()
    print(f"{label:<44} {time.perf_counter() - started:8.1f} s", flush=True)
    return result


def view_of(window: Window, name: str, **extra: Any) -> Callable[[Callable[[str], str], str], Any]:
    """The view `name` over `window` (Request's `extra` fields), as (query, source) -> rows."""
    return lambda query, source: view_rows(query, Request(name, window, source=source, **extra))


def reports(window: Window) -> dict[str, Callable[[Callable[[str], str], str], Any]]:
    """Every report `beacon report` has, as (query, source) -> rows."""

    def view(name: str, **extra: Any) -> Callable[[Callable[[str], str], str], Any]:
        return view_of(window, name, **extra)

    return {
        "campaign view (all campaigns)": view("campaign"),
        "campaign view, by day": view("campaign", group="day"),
        "ad view": view("ad"),
        "site view": view("site"),
        "pages, top 20": view("pages"),
        "referrers, top 20": view("referrers"),
        "events by day, site, campaign, type": view("events", group="day"),
        "one email campaign (--campaign)": lambda q, s: campaign_report(
            q, "mail-3", window=window, source=s
        ),
        "one ad campaign, by ad (--campaign)": lambda q, s: campaign_report(
            q, "fall-3", window=window, source=s
        ),
        **web_reports(window),
    }


def web_reports(window: Window) -> dict[str, Callable[[Callable[[str], str], str], Any]]:
    """The web views and the dashboard's visit breakdowns (analytics/web.py)."""
    web = WebConfig(goals=GOALS)

    def view(name: str, **extra: Any) -> Callable[[Callable[[str], str], str], Any]:
        return view_of(window, name, web=web, **extra)

    def breakdown(keys: tuple[str, ...], filters: Filters = NO_FILTERS) -> Callable[..., Any]:
        return lambda query, source: visit_rows(
            query, Request("visits", window, filters, source=source, web=web), keys
        )

    from_search = Filters(web=(("source", "search"),))
    return {
        "visits": view("visits"),
        "visits, by day": view("visits", group="day"),
        "sources, top 20": view("sources"),
        "countries, top 20": view("countries"),
        "devices, top 20": view("devices"),
        "goals (signup, download, /thanks)": view("goals"),
        "dashboard: pages, top 20": breakdown(("page",)),
        "dashboard: entry pages, top 20": breakdown(("entry_page",)),
        "dashboard: exit pages, top 20": breakdown(("exit_page",)),
        "dashboard: browsers, top 20": breakdown(("browser",)),
        "dashboard: countries of search visits": breakdown(("country",), from_search),
        # Raw events only, whatever the source (the last five minutes are never settled).
        "realtime (raw events by nature)": view("realtime"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="build the store here and keep it")
    parser.add_argument(
        "--reuse", action="store_true", help="time the reports over the store --keep kept"
    )
    parser.add_argument("--web-only", action="store_true", help="only the web views")
    args = parser.parse_args()
    if args.reuse and args.keep is None:
        parser.error("--reuse needs --keep DIR")
    path = args.keep or Path(tempfile.mkdtemp(prefix="beacon-bench-reports-"))
    if not args.reuse:
        shutil.rmtree(path, ignore_errors=True)
    writer = ChdbWriter(path)
    try:
        if not args.reuse:
            build(writer, args)
        settle(writer)
        time_reports(writer, args)
    finally:
        writer.close_sync()
        if args.keep is None:
            shutil.rmtree(path, ignore_errors=True)


def build(writer: ChdbWriter, args: argparse.Namespace) -> None:
    """The store: its tables, and the generated events (the views fill the rollups)."""
    n = args.events
    timed("migrate (events table, rollups, views)", lambda: asyncio.run(migrate(writer, 0)))
    sql = generate_sql(n, args.days)
    timed(f"insert {n:,} events (views fill the rollups)", lambda: writer.query_sync(sql, "TSV"))


def settle(writer: ChdbWriter) -> None:
    """Every ended day, as the consumer's settler does (nothing inserts meanwhile); prints
    the tables' sizes."""
    settler = TimedSettler(writer, insert_margin_s=-5)
    days = timed("settle every ended day", lambda: asyncio.run(settler.settle_due()))
    print(f"  {len(days)} days settled; their visits took {settler.visits_s:.1f} s of it")
    names = (EVENTS.split(".")[1], VISITS.split(".")[1], *(r.name for r in ROLLUPS))
    tables = ", ".join(repr(name) for name in names)
    print(writer.query_sync(
        "SELECT table, sum(rows) AS rows, formatReadableSize(sum(bytes_on_disk)) AS size "
        "FROM system.parts WHERE active AND database = 'beacon' "
        f"AND table IN ({tables}) GROUP BY table ORDER BY table", "PrettyCompactMonoBlock",
    ))  # fmt: skip


def time_reports(writer: ChdbWriter, args: argparse.Namespace) -> None:
    """Each report from both sources, best of --rounds; says when the answers differ."""
    window = Window.last_days(args.days + 1, dt.datetime.now(dt.UTC))
    chosen = web_reports(window) if args.web_only else reports(window)
    print(f"{'report':<40} {'rollups':>9} {'raw':>9}  statements (rollups/raw)")
    for label, report in chosen.items():
        if label.startswith("realtime"):
            timed("add a minute of live web events", lambda: writer.query_sync(LIVE, "TSV"))
        best: dict[str, float] = {}
        answers: dict[str, Any] = {}
        statements: dict[str, int] = {}
        for source in ("rollup", "raw"):
            for _ in range(args.rounds):
                count = [0]

                def query(sql: str, count: list[int] = count) -> str:
                    count[0] += 1
                    return writer.query_sync(sql, "JSONEachRow")

                started = time.perf_counter()
                answers[source] = report(query, source)
                elapsed = time.perf_counter() - started
                best[source] = min(best.get(source, elapsed), elapsed)
                statements[source] = count[0]
        same = "" if answers["rollup"] == answers["raw"] else "  DIFFERENT ANSWERS"
        print(
            f"{label:<40} {best['rollup']:8.3f}s {best['raw']:8.3f}s  "
            f"{statements['rollup']}/{statements['raw']}{same}"
        )


if __name__ == "__main__":
    main()
