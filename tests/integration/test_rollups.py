"""Rollups on real chDB: the views and settled days give the numbers raw events give.

Every view is asked twice, from the rollups and from `events FINAL`, and the answers must be
equal; then replays, late events, settling, erasure and the migration backfill must keep it so.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from analytics import erasure, raw_query, rollup_settle, scanner_query
from analytics.campaign_report import attribution, campaign_report, money
from analytics.funnel import FUNNEL_TYPES, SOURCES, conversions
from analytics.machine_opens import scanner_bursts_sql
from analytics.migrations import MIGRATIONS, migrate
from analytics.report_window import DAY, GROUPS, Filters, Window
from analytics.rollup_settle import STAGE_NAME_RE, Settler, settle_loop
from analytics.rollups import EVENTS_HOURLY, ORDERS, ROLLUPS, SETTLING
from analytics.schema import EVENTS
from analytics.store import StoreError
from analytics.store.http import HttpWriter
from analytics.views import VIEWS, Request, view_rows
from analytics.visits import VISITS_SETTLED
from consumers.enrich import Enricher
from consumers.ingest import Ingest
from consumers.sources.protocol import join_lines
from tests.support.chdb_events import Store, wire
from tests.support.clickhouse_front import ClickHouseFront
from tests.support.helpers import wait_for

DAY_MS = 86_400_000
LINKS = ("/new", "/sale", "/faq")
MPP = "Mozilla/5.0"
BOT = "curl/8.5.0"
# Web traffic by site: no campaign, ad or verified column in their rollups.
SITE_VIEWS = ("pages", "referrers", "visits", "sources", "countries", "devices", "goals",
              "realtime")  # fmt: skip


def day_start_ms(now: dt.datetime, days_ago: int) -> int:
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return int((today - dt.timedelta(days=days_ago)).timestamp() * 1000)


def traffic(now: dt.datetime, seed: int, days_ago: int) -> list[dict[str, Any]]:
    """A day of mixed traffic, a few hours into the day `days_ago` days before `now`'s."""
    rng = random.Random(seed)
    # Today's start just after midnight: inside the current hour's window whatever the time.
    t0 = day_start_ms(now, days_ago) + (3_600_000 * (1 + days_ago) if days_ago else 60_000)
    email = {"site": "shop", "campaign": f"mail-{seed % 2}", "message": f"m{seed}"}
    events = []
    for i in range(40):
        r = f"r{i}"
        at = t0 + i * 10_000
        events.append(wire("send", at, recipient=r, verified=0, **email))
        if i % 4 == 0:
            ua = MPP if i % 8 == 0 else BOT
            events.append(wire("open", at + 500, recipient=r, user_agent=ua, **email))
        elif i % 3:
            events.append(wire("open", at + 5_000, recipient=r, verified=1, **email))
            if rng.random() < 0.6:
                link = rng.choice(LINKS[:2])  # people click some of the links, not all
                events.append(
                    wire("click", at + 8_000, recipient=r, url_host="shop.example",
                         url_path=link, verified=1, **email)
                )  # fmt: skip
    for i in range(3):  # link scanners: the open and every link within a second
        r, at = f"scan{i}", t0 + 500_000 + i * 60_000
        events.append(wire("send", at - 20_000, recipient=r, **email))
        events.append(wire("open", at, recipient=r, **email))
        shop = {"url_host": "shop.example", "recipient": r, **email}
        events += [wire("click", at + 100 + n, url_path=u, **shop) for n, u in enumerate(LINKS)]
    ad = {"site": "news", "campaign": f"fall-{seed % 2}"}
    for i in range(60):
        events.append(wire("impression", t0 + i * 1000, ad=f"banner-{i % 2}", **ad))
    for i in range(6):
        click = wire("click", t0 + 70_000 + i, ad=f"banner-{i % 2}", visitor_id=100 + i, **ad)
        click["click_id"] = click["event_id"]
        events.append(click)
        order = {"order_id": f"o-{seed}-{i}", "value": "19.90", "currency": "EUR"}
        conversion = wire("conversion", t0 + 90_000 + i, site="shop", click_id=click["event_id"],
                          **order)  # fmt: skip
        events.append(conversion)
        if i < 2:  # the thank-you page reloaded: the same order again
            events.append(wire("conversion", t0 + 95_000 + i, site="shop", **order))
    for i in range(80):
        visitor = 1000 * (days_ago + 1) + rng.randrange(25)
        page = {"site": "blog", "url_host": "blog.example", "url_path": f"/p{rng.randrange(6)}"}
        ref = rng.choice(["", "https://search.example/q", "https://news.example/a"])
        at = t0 + 200_000 + i * 1000
        events.append(wire("pageview", at, visitor_id=visitor, referrer=ref, **page))
        scroll = {"scroll_pct": str(rng.randrange(101))}
        events.append(wire("engagement", at + 500, visitor_id=visitor, props=scroll, **page))
    return events


def compare(store: Store, window: Window, thorough: bool = False) -> dict[str, Any]:
    """Every view from both sources (`thorough`: every grouping and some filters too); they
    must be equal. Returns the rollup ones."""
    out = {}
    some_filters = (Filters(), Filters(verified_only=True), Filters(site="shop"))
    for view in VIEWS:
        for group in (None, *GROUPS) if thorough else (None, "hour"):
            for filters in some_filters if thorough else (Filters(),):
                if view in SITE_VIEWS and filters.verified_only:
                    for source in SOURCES:
                        with pytest.raises(ValueError, match="cannot filter"):
                            view_rows(store.query, Request(view, window, filters, group, source))
                    continue
                request = Request(view, window, filters, group)
                rolled = view_rows(store.query, request)
                raw = view_rows(store.query, Request(view, window, filters, group, "raw"))
                assert rolled == raw, (view, group, filters)
                out[view, group, filters] = rolled
    for campaign in ("mail-0", "mail-1", "fall-0", "fall-1"):
        rolled = campaign_report(store.query, campaign, window=window)
        assert rolled == campaign_report(store.query, campaign, window=window, source="raw")
    return out


def test_a_rebuild_cut_short_after_a_later_one_ended_leaves_the_day_due(
    store: Store, now: dt.datetime
) -> None:
    # A settling pass read the day; an erasure then deleted a person's rows and its rebuild,
    # begun later, ended first and marked the day done. The pass's swap landed after it (the
    # person in it) and the pass stopped before its end. The rebuild's done stood over that
    # swap: reports read the day from its rollups, the person counted in them.
    store.add(traffic(now, 1, 2))
    day = now.date() - dt.timedelta(days=2)
    clock = ticking_noon(now)

    async def erase_meanwhile() -> None:
        assert await erasure.erase(store.writer, "recipient", "r1") > 0

    writer = Interleaved(CutAfterFirstSwap(store.writer), erase_meanwhile)
    with pytest.raises(Cut):
        run(Settler(writer, clock=clock, insert_margin_s=-5).rebuild([day]))
    settler = Settler(store.writer, clock=clock, insert_margin_s=-5)
    assert run(settler.due_days()) == [day]
    compare(store, window_days(now, 4))  # the day read from raw events until the next pass
    run(settler.settle_due())
    assert run(settler.due_days()) == []
    compare(store, window_days(now, 4))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "clickhouse")
    yield s
    s.close()


def window_days(now: dt.datetime, days: int) -> Window:
    return Window.last_days(days, now)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def settler_of(store: Store, now: dt.datetime) -> Settler:
    """A settler that thinks it is noon of `now`'s day (so yesterday has ended, whatever the
    time), and that may settle every row stored so far: nothing inserts while these tests
    settle."""
    noon = day_start_ms(now, 0) / 1000 + 12 * 3600
    return Settler(store.writer, clock=lambda: noon, insert_margin_s=-5)


def test_every_view_is_the_same_from_rollups_and_raw_events(store: Store, now: dt.datetime) -> None:
    for days_ago in (2, 1, 0):
        store.add(traffic(now, days_ago, days_ago))
    found = compare(store, window_days(now, 4), thorough=True)
    campaigns = {r["campaign"]: r for r in found["campaign", None, Filters()]}
    # mail-0 on two days, each: 5 Apple MPP + 5 bot opens, and 3 scanners (an open, 3 clicks).
    assert campaigns["mail-0"]["machine_opens"] == 2 * (5 + 5 + 3)
    assert campaigns["mail-0"]["machine_clicks"] == 2 * 3 * 3
    # The shop's orders reach the ad campaign by click id; a reloaded order counts once.
    assert campaigns["fall-0"]["conversions"] == 2 * 6
    ads = {(r["campaign"], r["ad"]): r for r in found["ad", None, Filters()]}
    assert ads["fall-0", "banner-0"]["conversions"] == 2 * 3
    assert ads["fall-0", "banner-0"]["revenue"] == {"EUR": f"{2 * 3 * 19.90:.2f}"}
    pages = found["pages", None, Filters()]
    assert sum(p["pageviews"] for p in pages) == 3 * 80
    # A window over part of a day: the daily rollups read the ends from raw events.
    start = now - dt.timedelta(days=1, hours=5)
    compare(store, Window.parse(start.strftime("%Y-%m-%dT%H"), None, now))


def test_views_by_site_refuse_a_campaign_ad_or_verified_filter_from_either_source(
    store: Store, now: dt.datetime
) -> None:
    # Page views of the blog, under no campaign: a pages view "of fall-0" would be the blog's.
    store.add(traffic(now, 0, 0))
    window = window_days(now, 1)
    given = {"--campaign": Filters(campaign="fall-0"), "--ad": Filters(ad="banner-0"),
             "--verified": Filters(verified_only=True)}  # fmt: skip
    for view, (name, filters), source in itertools.product(SITE_VIEWS, given.items(), SOURCES):
        with pytest.raises(ValueError, match=f"^{name} cannot filter the {view} view,"):
            view_rows(store.query, Request(view, window, filters, source=source))
    both = Filters(campaign="fall-0", verified_only=True)
    with pytest.raises(ValueError, match=r"^--campaign, --verified cannot filter the pages"):
        view_rows(store.query, Request("pages", window, both))
    # The site is theirs to filter by; the views of events take the others.
    assert view_rows(store.query, Request("pages", window, Filters(site="blog")))
    for view in sorted(set(VIEWS) - set(SITE_VIEWS)):
        rows = view_rows(
            store.query, Request(view, window, Filters(campaign="fall-0", ad="banner-0"))
        )
        assert all(r.get("campaign", "fall-0") == "fall-0" for r in rows), view


def test_a_replayed_event_counts_once_in_the_rollups(store: Store, now: dt.datetime) -> None:
    # What a view with a plain count() would say, to show why the rollups keep event ids.
    store.writer.query_sync(
        "CREATE TABLE beacon.naive (n SimpleAggregateFunction(sum, UInt64)) "
        "ENGINE = AggregatingMergeTree ORDER BY tuple()",
        "TSV",
    )
    store.writer.query_sync(
        f"CREATE MATERIALIZED VIEW beacon.naive_mv TO beacon.naive AS SELECT count() AS n "
        f"FROM {EVENTS}",
        "TSV",
    )
    events = traffic(now, 0, 0)
    store.add(events)
    replayed = "\n".join(store.enricher.to_row(orjson.dumps(e)).decode() for e in events[:50])
    # A retry with the same insert token (deduplicated), then a replay with another token.
    for token in ("t-1", "t-1", "t-2"):
        store.writer.query_sync(
            f"INSERT INTO {EVENTS} SETTINGS async_insert = 0, insert_deduplication_token = "
            f"'{token}' FORMAT JSONEachRow\n{replayed}",
            "TSV",
        )
    [counts] = store.rows(
        f"SELECT (SELECT count() FROM {EVENTS}) AS stored, "
        f"(SELECT count() FROM {EVENTS} FINAL) AS final, (SELECT sum(n) FROM beacon.naive) AS naive"
    )
    # The retried block was dropped from the table, yet the view saw it (ClickHouse 26.9, a
    # target without a dedup window); the replay is in the table twice, FINAL hides it.
    assert counts == {"stored": len(events) + 100, "final": len(events),
                      "naive": len(events) + 150}  # fmt: skip
    found = compare(store, window_days(now, 1))
    opens = sum(r["opens"] for r in found["campaign", None, Filters()])
    assert opens == sum(e["event_type"] == "open" for e in events)


def test_settled_days_hold_sums_and_stay_exact_after_late_events(
    store: Store, now: dt.datetime
) -> None:
    for days_ago in (2, 1, 0):
        store.add(traffic(now, days_ago, days_ago))
    settler = settler_of(store, now)
    settled = run(settler.settle_due())
    today = now.date()
    assert settled == [today - dt.timedelta(days=2), today - dt.timedelta(days=1)]
    assert run(settler.due_days()) == []
    flags = store.rows(
        f"SELECT toString(toDate(period)) AS day, max(live) AS live, max(settled) AS settled "
        f"FROM {EVENTS_HOURLY.table} GROUP BY day ORDER BY day"
    )
    assert [(f["live"], f["settled"]) for f in flags] == [(0, 1), (0, 1), (1, 0)]
    compare(store, window_days(now, 4))
    # A late duplicate of a settled event and a late new one: the day reads raw until the
    # next pass settles it again.
    late = traffic(now, 2, 2)[:30]
    store.add([*late, wire("open", late[0]["received_at"] + 1, site="shop", campaign="mail-0")])
    assert run(settler.due_days()) == [today - dt.timedelta(days=2)]
    compare(store, window_days(now, 4))
    # A window that ends within that day too: an hourly rollup's last day is read raw.
    noon = dt.datetime.combine(today - dt.timedelta(days=2), dt.time(12), dt.UTC)
    compare(store, Window(noon - dt.timedelta(days=1), noon))
    run(settler.settle_due())
    assert run(settler.due_days()) == []
    compare(store, window_days(now, 4))


def test_a_day_being_settled_is_read_from_raw_events(store: Store, now: dt.datetime) -> None:
    store.add(traffic(now, 1, 1))
    yesterday = now.date() - dt.timedelta(days=1)
    # As if a settle stopped after emptying the partition: the mark says not done.
    store.writer.query_sync(f"INSERT INTO {SETTLING} (day, done) VALUES ('{yesterday}', 0)", "TSV")
    for rollup in ROLLUPS:
        store.writer.query_sync(f"ALTER TABLE {rollup.table} DROP PARTITION '{yesterday}'", "TSV")
    compare(store, window_days(now, 3))
    settler = settler_of(store, now)
    assert run(settler.due_days()) == [yesterday]  # and the next pass finishes it
    run(settler.settle_due())
    compare(store, window_days(now, 3))


class Cut(Exception):
    """A settling pass stopped in the middle (its consumer stopped, its store failed)."""


class CutAfterFirstSwap:
    """The store's writer, and a death right after the first partition swapped in."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer

    async def execute(self, sql: str) -> None:
        await self.writer.execute(sql)
        if "REPLACE PARTITION" in sql or "DROP PARTITION" in sql:
            raise Cut(sql)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.writer, name)


class Interleaved:
    """The store's writer; at the first partition swap, `meanwhile` runs first."""

    def __init__(self, writer: Any, meanwhile: Callable[[], Awaitable[None]]) -> None:
        self.writer = writer
        self.meanwhile: Callable[[], Awaitable[None]] | None = meanwhile

    async def execute(self, sql: str) -> None:
        if self.meanwhile is not None and "REPLACE PARTITION" in sql:
            meanwhile, self.meanwhile = self.meanwhile, None
            await meanwhile()
        await self.writer.execute(sql)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.writer, name)


class BusySession:
    """The store's writer as a server's whose session is still busy with a statement its
    client gave up on: a staging table's insert lands but its client times out, and its DROP
    is refused (SESSION_IS_LOCKED). `held`: the insert waits for it first."""

    def __init__(self, writer: Any, held: asyncio.Event | None = None) -> None:
        self.writer = writer
        self.held = held
        self.inserting = asyncio.Event()

    async def execute(self, sql: str) -> None:
        stage = "_stage_" in sql.split("(", 1)[0]
        if stage and sql.startswith("DROP TABLE IF EXISTS") and self.inserting.is_set():
            raise StoreError("session is locked by a concurrent client")
        if stage and sql.startswith("INSERT INTO"):
            self.inserting.set()
            if self.held is not None:
                await self.held.wait()
            await self.writer.execute(sql)
            raise StoreError("no answer in 60 s; the statement may still run there")
        await self.writer.execute(sql)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.writer, name)


def stages(store: Store) -> list[str]:
    sql = f"SELECT name FROM system.tables WHERE match(name, '{STAGE_NAME_RE}')"
    return [row["name"] for row in store.rows(sql)]


def test_a_staging_table_left_by_a_settle_is_dropped_by_a_pass_an_hour_on(
    store: Store, now: dt.datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A day's rows (ids, visitors) that no erasure or retention would reach.
    store.add(traffic(now, 1, 1))
    noon = day_start_ms(now, 0) / 1000 + 12 * 3600
    busy = Settler(BusySession(store.writer), clock=lambda: noon, insert_margin_s=-5)
    with pytest.raises(StoreError, match="no answer"):  # the insert's, not its DROP's
        run(busy.settle_due())
    assert len(stages(store)) == 1
    settler = settler_of(store, now)
    run(settler.settle_due())  # the settle done; the table made just now is not left over
    assert len(stages(store)) == 1
    monkeypatch.setattr(rollup_settle, "STAGE_LEFT_AFTER_S", -1)  # an hour on
    store.add(traffic(now, 2, 2))  # a day due again
    [left] = stages(store)
    refusing = Settler(RefusedDrop(store.writer, left), clock=lambda: noon, insert_margin_s=-5)
    assert run(refusing.settle_due()) == [now.date() - dt.timedelta(days=2)]  # not stopped
    assert len(stages(store)) == 1  # the one that will not go, tried again the next pass
    run(settler.settle_due())
    assert stages(store) == []
    assert run(settler.due_days()) == []
    compare(store, window_days(now, 4))


class RefusedDrop:
    """The store's writer, refusing to drop `table` (a DROP the server refuses)."""

    def __init__(self, writer: Any, table: str) -> None:
        self.writer = writer
        self.table = table

    async def execute(self, sql: str) -> None:
        if sql.startswith("DROP TABLE IF EXISTS") and sql.endswith(self.table):
            raise StoreError("refused")
        await self.writer.execute(sql)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.writer, name)


async def test_a_settle_cancelled_while_its_drop_fails_ends_the_loop(
    store: Store, now: dt.datetime
) -> None:
    # A consumer that stops cancels the loop during a staging insert; the DROP in the
    # insert's `finally`, refused, took the cancellation's place, the loop caught it as a
    # store error and went on, and the consumer waited for it for good.
    store.add(traffic(now, 1, 1))
    noon = day_start_ms(now, 0) / 1000 + 12 * 3600
    busy = BusySession(store.writer, held=asyncio.Event())
    loop = asyncio.create_task(
        settle_loop(Settler(busy, clock=lambda: noon, insert_margin_s=-5), asyncio.Event())
    )
    await asyncio.wait_for(busy.inserting.wait(), 60)
    loop.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(loop, 60)


def test_a_report_a_rebuild_began_under_is_read_again(store: Store, now: dt.datetime) -> None:
    """A report reads its plan, then its statements: a run that marks and swaps a day in
    between (here: cut short after its first swap, which holds none of the rows inserted
    within its margin, so drops the day's) would be read as the plan found it, rollups for
    that day."""
    store.add(traffic(now, 0, 0))
    today = now.date()
    midnight = dt.datetime.combine(today, dt.time(), dt.UTC)
    window = Window(midnight, midnight + dt.timedelta(days=1))
    began: list[str] = []

    def query(sql: str) -> str:  # the store, and a rebuild of today after the report's plan
        if not began and EVENTS_HOURLY.table in sql and SETTLING not in sql:
            began.append(sql)
            with pytest.raises(Cut):
                run(Settler(CutAfterFirstSwap(store.writer)).rebuild([today]))
        return store.query(sql)

    for view in ("events", "campaign"):
        began.clear()
        rolled = view_rows(query, Request(view, window))
        assert began and rolled == view_rows(store.query, Request(view, window, source="raw"))
        run(settler_of(store, now).settle_due())  # today done again, for the next view


def test_a_copy_stored_after_a_reports_plan_is_not_counted_twice(
    store: Store, now: dt.datetime
) -> None:
    """A replay's copy of an event of a settled day (a fresh token), stored after a report
    read its plan: the plan sent the day to its sums, and the copy's live row added its id
    to them once more. No settling mark changed, so the report was not read again."""
    events = traffic(now, 1, 2)
    store.add(events)
    run(settler_of(store, now).settle_due())
    window = window_days(now, 4)
    copies = iter(e for e in events if e["event_type"] == "open")
    copied: list[str] = []
    tokens = (f"replay-{n}-{int(now.timestamp())}" for n in itertools.count())

    def query(sql: str) -> str:  # the store, and a copy stored before the first rollup read
        if not copied and EVENTS_HOURLY.table in sql and SETTLING not in sql:
            copied.append(sql)
            line = orjson.dumps(next(copies))
            run(Ingest(store.writer).store(join_lines([line]), next(tokens)))
        return store.query(sql)

    for view in ("events", "campaign"):
        copied.clear()
        rolled = view_rows(query, Request(view, window))
        assert copied and rolled == view_rows(store.query, Request(view, window, source="raw"))
        run(settler_of(store, now).settle_due())  # the day settled again, for the next view
    compare(store, window)


def test_attribution_is_read_again_when_an_erasure_marks_a_day_meanwhile(
    store: Store, now: dt.datetime
) -> None:
    """`beacon report --attribution` read its plan, then the orders: an erasure of the site
    that marked the day and deleted its events in between (its rebuild still to come) left
    the report reading the settled orders of people no longer stored."""
    store.add(traffic(now, 0, 2))
    run(settler_of(store, now).settle_due())
    day = (now - dt.timedelta(days=2)).date().isoformat()
    window = window_days(now, 4)
    erased: list[str] = []

    def query(sql: str) -> str:  # the store, and the erasure's first steps before the orders
        if not erased and ORDERS.table in sql and SETTLING not in sql:
            erased.append(sql)
            run(rollup_settle.due_before_erasure(store.writer, [day]))
            where = erasure.condition("site", "shop")
            run(store.writer.execute(erasure.delete_statement(where, None)))
        return store.query(sql)

    everyone = Filters(None, None, None, False, (), False)
    assert attribution(store.query, window, everyone, "rollup")  # the site's orders, before
    found = attribution(query, window, everyone, "rollup")
    assert erased and found == attribution(store.query, window, everyone, "raw") == []


def test_an_order_reloaded_after_midnight_counts_on_the_day_of_its_first_pixel(
    store: Store, now: dt.datetime
) -> None:
    """A thank-you page loaded before midnight and reloaded after: each day's report took the
    order's first pixel among that day's pixels alone, so the second day counted the order
    again and the days' conversions and revenue added up to more than the two days'."""
    midnight = day_start_ms(now, 1)
    click = wire("click", midnight - 3_600_000, site="news", campaign="fall", ad="banner-1")
    click["click_id"] = click["event_id"]
    order = {"site": "shop", "click_id": click["event_id"], "order_id": "o-late",
             "value": "40.00", "currency": "EUR"}  # fmt: skip
    store.add([
        click,
        wire("conversion", midnight - 1_800_000, **order),
        wire("conversion", midnight + 1_800_000, **order),  # the reload
        wire("conversion", midnight + 36_000_000, site="shop", order_id="o-next", value="5",
             currency="EUR"),
    ])  # fmt: skip
    start = dt.datetime.fromtimestamp(day_start_ms(now, 2) / 1000, dt.UTC)
    first, second = (Window(start + n * DAY, start + (n + 1) * DAY) for n in (0, 1))
    both = Window(first.start, second.end)

    def orders(window: Window, source: str) -> dict[str, list[tuple[int, str]]]:
        found = conversions(store.query, window, Filters(), keys=("campaign",), source=source)
        return {c: [(r["conversions"], money(r["revenue"])) for r in rows]
                for (c,), rows in found.items()}  # fmt: skip

    def check() -> None:
        for source in SOURCES:
            assert orders(first, source) == {"fall": [(1, "40.00")]}, source
            assert orders(second, source) == {"": [(1, "5.00")]}, source
            # The two days' sum: each order once.
            assert orders(both, source) == {"fall": [(1, "40.00")], "": [(1, "5.00")]}, source
        compare(store, second)

    check()  # live rows
    # The first day being settled: the second's report reads its orders from raw events.
    day = first.start.date()
    store.writer.query_sync(f"INSERT INTO {SETTLING} (day, done) VALUES ('{day}', 0)", "TSV")
    for rollup in ROLLUPS:
        store.writer.query_sync(f"ALTER TABLE {rollup.table} DROP PARTITION '{day}'", "TSV")
    check()
    run(settler_of(store, now).settle_due())
    check()  # settled days


def ticking_noon(now: dt.datetime) -> Callable[[], float]:
    """A settler's clock at noon of `now`'s day, every reading a millisecond later than the
    one before."""
    noon, ticks = day_start_ms(now, 0) / 1000 + 12 * 3600, itertools.count()
    return lambda: noon + next(ticks) / 1000


def test_a_rebuild_cut_short_while_another_ran_leaves_the_day_due(
    store: Store, now: dt.datetime
) -> None:
    # Two consumers settle the same day; the one that began second stops between its swap
    # and the end of its run. The first one's end must not mark the day done over it.
    store.add(traffic(now, 1, 1))
    yesterday = now.date() - dt.timedelta(days=1)
    clock = ticking_noon(now)
    second = Settler(CutAfterFirstSwap(store.writer), clock=clock, insert_margin_s=-5)

    async def second_run() -> None:
        with pytest.raises(Cut):
            await second.rebuild([yesterday])

    first = Settler(Interleaved(store.writer, second_run), clock=clock, insert_margin_s=-5)
    run(first.rebuild([yesterday]))
    settler = Settler(store.writer, clock=clock, insert_margin_s=-5)
    assert run(settler.due_days()) == [yesterday]  # the next pass settles it again
    run(settler.settle_due())
    assert run(settler.due_days()) == []
    compare(store, window_days(now, 3))


def test_a_run_whose_swap_landed_after_an_erasures_rebuild_leaves_the_day_due(
    store: Store,
    now: dt.datetime,
) -> None:
    # An erasure rebuilds the day while a settling pass runs: the pass staged the day with the
    # person, and its swap lands after the rebuild's. Whose landed last is not known at the
    # end, so the day must not be marked done: the next pass settles it again. Two passes
    # that overlap with no erasure land the same rows: the day is done (consumers that settle
    # in step would otherwise keep it due for good).
    store.add(traffic(now, 1, 1))
    yesterday = now.date() - dt.timedelta(days=1)
    noon, ticks = day_start_ms(now, 0) / 1000 + 12 * 3600, itertools.count()

    def clock() -> float:
        return noon + next(ticks) / 1000

    def settler(writer: Any) -> Settler:
        return Settler(writer, clock=clock, insert_margin_s=-5)

    async def rebuilt() -> None:
        await settler(store.writer).rebuild([yesterday])

    run(settler(Interleaved(store.writer, rebuilt)).rebuild([yesterday]))
    assert run(settler(store.writer).due_days()) == []

    async def erased_and_rebuilt() -> None:
        where = erasure.condition("recipient", "r1")
        await store.writer.execute(erasure.delete_statement(where, None))
        await rebuilt()

    run(settler(Interleaved(store.writer, erased_and_rebuilt)).rebuild([yesterday]))
    assert run(settler(store.writer).due_days()) == [yesterday]
    run(settler(store.writer).settle_due())
    assert run(settler(store.writer).due_days()) == []
    compare(store, window_days(now, 3))


def test_a_delete_still_running_when_a_run_ends_leaves_the_day_due(
    store: Store, now: dt.datetime
) -> None:
    # An erasure's DELETE outlives its client (a server goes on after the writer gave up, and
    # the erasure, failed, rebuilds nothing): a settling pass that reads the day before the
    # DELETE lands must not mark it done, or the person stays in its rollups for good.
    store.add(traffic(now, 1, 1))
    yesterday = now.date() - dt.timedelta(days=1)
    settler = settler_of(store, now)
    run(store.writer.execute(f"SYSTEM STOP MERGES {EVENTS}"))  # mutations wait too
    where = erasure.condition("recipient", "r1")
    run(store.writer.execute(f"DELETE FROM {EVENTS} WHERE {where} "
                             "SETTINGS lightweight_deletes_sync = 0"))  # fmt: skip
    run(settler.settle_due())
    assert run(settler.due_days()) == [yesterday]
    run(store.writer.execute(f"SYSTEM START MERGES {EVENTS}"))
    deleted = f"SELECT count() AS n FROM {EVENTS} WHERE {where}"
    wait_for(lambda: store.rows(deleted) == [{"n": 0}], "the DELETE to land")
    assert run(settler.due_days()) == [yesterday]
    run(settler.settle_due())
    assert run(settler.due_days()) == []
    compare(store, window_days(now, 3))
    assert_r1_left_the_sets(store)


def test_neither_a_failing_delete_nor_another_mutation_keeps_a_day_due(
    store: Store, now: dt.datetime
) -> None:
    # A DELETE that fails for good has deleted nothing, and other mutations (a TTL's
    # materialization, here an UPDATE queued behind the failing DELETE) delete no person:
    # holding days due for them rebuilt every day settled meanwhile at every pass, for good.
    store.add(traffic(now, 1, 1))
    settler = settler_of(store, now)
    failing = "throwIf(event_type = 'send', 'a DELETE that fails') = 1"
    run(store.writer.execute(f"ALTER TABLE {EVENTS} DELETE WHERE {failing} "
                             "SETTINGS mutations_sync = 0"))  # fmt: skip
    failed = "SELECT count() AS n FROM system.mutations WHERE latest_fail_reason != ''"
    wait_for(lambda: store.rows(failed) == [{"n": 1}], "the DELETE to fail")
    run(store.writer.execute(f"ALTER TABLE {EVENTS} UPDATE url_query = url_query WHERE 1 "
                             "SETTINGS mutations_sync = 0"))  # fmt: skip
    try:
        run(settler.settle_due())
        assert run(settler.due_days()) == []
        compare(store, window_days(now, 3))
    finally:
        run(store.writer.execute("KILL MUTATION WHERE database = 'beacon' SYNC"))


def assert_r1_left_the_sets(store: Store) -> None:
    """mail-1 went to 43 people on one day: with r1's hash gone from the sets, adding it adds
    one."""
    [found] = store.rows(
        f"SELECT uniqExactMerge(state) AS with_r1 FROM (SELECT recipients AS state FROM "
        f"{EVENTS_HOURLY.table} WHERE campaign = 'mail-1' UNION ALL SELECT uniqExactState('r1'))"
    )
    assert found == {"with_r1": 43}


@pytest.mark.parametrize("replicas", ["", "replicas"], ids=["one-server", "replicas"])
async def test_an_insert_begun_long_before_a_runs_cut_and_landed_in_its_swap_counts(
    tmp_path: Path, replicas: str, now: dt.datetime
) -> None:
    # A server goes on with an insert whose client gave up, its rows timed by its start. One
    # that began over the margin before a run's cut and landed during the swap (after the
    # staging read, its views' rows before the REPLACE) was in neither the settled sums nor
    # the live rows, and the day, marked done, was not settled again: rollups short of it.
    yesterday = now.date() - dt.timedelta(days=1)
    async with ClickHouseFront(tmp_path / "ch") as front:
        setup, writer = HttpWriter(front.url), HttpWriter(front.url, timeout_s=1.0)
        try:
            await migrate(setup, retention_days=0)
            enricher, began_s = Enricher(), int(time.time())
            rows = [orjson.loads(enricher.to_row(orjson.dumps(e))) for e in traffic(now, 1, 1)]
            front.run(f"INSERT INTO {EVENTS} FORMAT JSONEachRow\n"
                      + "\n".join(orjson.dumps(r).decode() for r in rows[:-20]))  # fmt: skip
            late = b"\n".join(orjson.dumps({**r, "inserted_at": began_s}) for r in rows[-20:])
            gate = threading.Event()
            front.hold = lambda statement: gate if statement.startswith("INSERT") else None
            with pytest.raises(StoreError):  # the client gives up; the server runs it on
                await writer.insert(EVENTS, late, "late-batch")
            front.hold = None
            await asyncio.sleep(2.5)  # it began over the margin (1 s) before the cut

            async def lands() -> None:
                gate.set()
                deadline = time.monotonic() + 60
                while front.running:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)

            noon = day_start_ms(now, 0) / 1000 + 12 * 3600
            watched = Interleaved(setup, lands)
            if replicas:  # the running inserts read on every replica (the front is each one)
                front.clusters.add(replicas)
                watched.processes_cluster = replicas  # type: ignore[attr-defined]
            settler = Settler(watched, clock=lambda: noon, insert_margin_s=1)
            await settler.rebuild([yesterday])
            await Settler(setup, clock=lambda: noon, insert_margin_s=1).settle_due()
            assert front.run(f"SELECT count() FROM {EVENTS} FINAL") == f"{len(rows)}\n"
            read_all = [x for x in front.seen if f"clusterAllReplicas('{replicas}'" in x.statement]
            assert bool(read_all) == bool(replicas)
            compare(FrontQueries(front), window_days(now, 3))  # type: ignore[arg-type]
        finally:
            gate.set()
            await writer.close()
            await setup.close()


class FrontQueries:
    """compare()'s reads, from a ClickHouse front's store."""

    def __init__(self, front: ClickHouseFront) -> None:
        self.front = front

    def query(self, sql: str) -> str:
        return self.front.run(sql, "JSONEachRow")


def test_erasure_rebuilds_the_rollups_without_the_person(store: Store, now: dt.datetime) -> None:
    store.add(traffic(now, 1, 1) + traffic(now, 0, 0))
    run(settler_of(store, now).settle_due())
    before = view_rows(store.query, Request("campaign", window_days(now, 3)))
    assert run(erasure.erase(store.writer, "recipient", "r1")) > 0
    after = compare(store, window_days(now, 3))["campaign", None, Filters()]
    assert sum(r["opens"] for r in after) < sum(r["opens"] for r in before)
    # mail-1 went to 43 people on one day; r1's hash left its sets with the rows: adding it
    # back makes one more.
    [found] = store.rows(
        f"SELECT uniqExactMergeIf(state, kept) AS kept, uniqExactMerge(state) AS with_r1 FROM "
        f"(SELECT recipients AS state, 1 AS kept FROM {EVENTS_HOURLY.table} "
        f"WHERE campaign = 'mail-1' UNION ALL SELECT uniqExactState('r1'), 0)"
    )
    assert found == {"kept": 42, "with_r1": 43}


def test_an_erasures_rebuild_keeps_the_visit_gap_its_days_were_settled_with(
    store: Store,
    now: dt.datetime,
) -> None:
    """`beacon erase` runs with the default gap: a day settled with another kept it (with the
    default, the next pass settled the day again, read from raw events meanwhile)."""
    store.add(traffic(now, 2, 2))
    day = now.date() - dt.timedelta(days=2)
    settler = Settler(
        store.writer, settler_of(store, now).clock, insert_margin_s=-5, visit_gap_s=600
    )
    assert run(settler.settle_due()) == [day]
    assert run(erasure.erase(store.writer, "recipient", "r1")) > 0
    gap = f"SELECT max(visit_gap_s) AS gap FROM {VISITS_SETTLED} FINAL WHERE day = '{day}'"
    assert store.rows(gap) == [{"gap": 600}]


class CutAfterDelete:
    """The store's writer, and an erasure stopped right after its DELETE (a timeout, a
    SIGTERM), before it rebuilt the rollups."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer

    async def execute(self, sql: str) -> None:
        await self.writer.execute(sql)
        if sql.startswith("DELETE"):
            raise Cut(sql)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.writer, name)


def test_an_erasure_stopped_before_its_rebuild_leaves_its_days_to_raw_events(
    store: Store,
    now: dt.datetime,
) -> None:
    store.add(traffic(now, 1, 1))
    settler = settler_of(store, now)
    run(settler.settle_due())
    yesterday = now.date() - dt.timedelta(days=1)
    with pytest.raises(Cut):
        run(erasure.erase(CutAfterDelete(store.writer), "recipient", "r1"))
    compare(store, window_days(now, 3))  # the day is read from raw events, without r1
    assert run(erasure.erase(store.writer, "recipient", "r1")) == 0  # nothing left to delete
    assert run(settler.due_days()) == [yesterday]  # so no rebuild: the next pass's
    run(settler.settle_due())
    compare(store, window_days(now, 3))
    assert_r1_left_the_sets(store)


def test_an_erasure_stopped_before_rebuilding_today_leaves_it_to_the_next_pass(
    store: Store,
    now: dt.datetime,
) -> None:
    """As above, on the day not ended: its rollups hold the person until a pass rebuilds it,
    the next one, not the one after the day ends."""
    store.add(traffic(now, 1, 0))
    settler = settler_of(store, now)
    today = now.date()
    with pytest.raises(Cut):
        run(erasure.erase(CutAfterDelete(store.writer), "recipient", "r1"))
    assert run(settler.due_days()) == [today]
    compare(store, window_days(now, 1))  # meanwhile read from raw events, to the window's hour
    run(settler.settle_due())
    assert run(settler.due_days()) == []
    compare(store, window_days(now, 1))
    assert_r1_left_the_sets(store)


def test_unique_states_keep_hashes_not_ids(store: Store, now: dt.datetime) -> None:
    store.add([wire("open", day_start_ms(now, 0), recipient="alice@example.org", message="m",
                    campaign="c", visitor_id=424242)])  # fmt: skip
    states = store.query(
        f"SELECT hex(people), hex(recipients), hex(visitors) FROM {EVENTS_HOURLY.table}"
    )
    assert b"alice".hex().upper() not in states
    assert (424242).to_bytes(8, "little").hex().upper() not in states


def test_the_migration_backfills_what_was_stored_before(tmp_path: Path, now: dt.datetime) -> None:
    store = Store.__new__(Store)
    from analytics.store.chdb import ChdbWriter
    from consumers.enrich import Enricher

    store.writer = ChdbWriter(tmp_path / "clickhouse")
    store._reader = None
    store.enricher = Enricher()
    # A store at version 4: the events table, no rollups yet.
    for version, _, sqls, _ in MIGRATIONS[:4]:
        if version == 1:
            run(store.writer.execute("CREATE DATABASE IF NOT EXISTS beacon"))
        for sql in sqls:
            run(store.writer.execute(sql))
    store.add(traffic(now, 1, 1) + traffic(now, 0, 0))
    assert 5 in run(migrate(store.writer, retention_days=0))  # the rollups and their backfill
    compare(store, window_days(now, 3))
    # Rows inserted a moment ago stay live; once settled, yesterday holds sums, today ids.
    today = now.date()
    assert run(settler_of(store, now).settle_due()) == [today - dt.timedelta(days=1)]
    flags = store.rows(
        f"SELECT toDate(period) = toDate('{today}') AS today, max(live) AS live, "
        f"max(settled) AS settled FROM {EVENTS_HOURLY.table} GROUP BY today ORDER BY today"
    )
    assert flags == [{"today": 0, "live": 0, "settled": 1}, {"today": 1, "live": 1, "settled": 0}]
    compare(store, window_days(now, 3))
    store.close()


def test_the_scanner_steps_find_what_the_reference_rule_finds(
    store: Store, now: dt.datetime
) -> None:
    store.add(traffic(now, 1, 1) + traffic(now, 0, 0))
    where = f"{raw_query.where_sql(window_days(now, 3), Filters())} AND {FUNNEL_TYPES}"

    def bursts(sql: str) -> list[tuple[str, str, str]]:
        return sorted((r["message"], r["recipient"], r["burst_at"]) for r in store.rows(sql))

    # The raw path reads the rule with FINAL, the rollup path's correction without it.
    reference = bursts(scanner_bursts_sql(f"{EVENTS} FINAL", where))
    assert len(reference) == 6 and reference == bursts(scanner_bursts_sql(EVENTS, where))
    for keys, group in (((), None), (("campaign", "ad"), "hour")):
        in_steps = scanner_query.correction(store.rows, where, keys, group)
        assert in_steps == store.rows(scanner_query.correction_sql(where, keys, group))
    # The send-time rule in Python counts seconds as ClickHouse's dateDiff does.
    for start, end in ((900, 1100), (1100, 900), (0, 999), (500, 900_400), (1999, 1), (1, 901_999)):
        [row] = store.rows(
            f"SELECT dateDiff('second', fromUnixTimestamp64Milli({start}, 'UTC'), "
            f"fromUnixTimestamp64Milli({end}, 'UTC')) AS s"
        )
        assert row["s"] == scanner_query.seconds_between(start, end)
