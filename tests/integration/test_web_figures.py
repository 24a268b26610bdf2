"""Visits, sources, countries, devices and goals: hand-counted figures from both sources, before
and after the day is settled, with a late event and a changed visit gap."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from analytics.report_cli import web_filters
from analytics.report_window import Filters, Window
from analytics.rollup_settle import Settler
from analytics.views import Request, view_rows
from analytics.web import WebConfig, goal_rows, settled_days_sql, visit_rows
from tests.support.chdb_events import Store, wire

MINUTE_MS = 60_000
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
GOALS = WebConfig(goals=("signup", "/thanks"))


def yesterday_ms(now: dt.datetime, hour: int) -> int:
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return int((today - dt.timedelta(days=1, hours=-hour)).timestamp() * 1000)


def page(at: int, visitor: int, path: str, ref: str = "", **more: Any) -> dict[str, Any]:
    return wire("pageview", at, site="blog", url_host="blog.example", url_path=path,
                referrer=ref, visitor_id=visitor, **more)  # fmt: skip


def engaged(at: int, visitor: int, path: str, ms: int, **more: Any) -> dict[str, Any]:
    props = {"engaged_ms": str(ms), "scroll_pct": "50"}
    return wire("engagement", at, site="blog", url_host="blog.example", url_path=path,
                visitor_id=visitor, props=props, **more)  # fmt: skip


def traffic(now: dt.datetime) -> list[dict[str, Any]]:
    """Four visits of three people and a crawler, yesterday (of `now`) from 10:00 UTC."""
    t0 = yesterday_ms(now, 10)
    de, fr = {"country": "DE"}, {"country": "FR"}
    return [
        # Visitor 11: from a search, two pages, 10 s engaged, signs up (visit 1); back after an
        # hour, one page, nothing reported (visit 2: a bounce of 0 s, direct).
        page(t0, 11, "/a", "https://www.google.com/search", **de),
        engaged(t0 + 1000, 11, "/a", 4000, **de),
        page(t0 + MINUTE_MS, 11, "/b", "https://blog.example/a", **de),
        engaged(t0 + MINUTE_MS + 1000, 11, "/b", 6000, **de),
        wire("custom", t0 + MINUTE_MS + 2000, site="blog", url_host="blog.example",
             url_path="/b", visitor_id=11, props={"event": "signup"}, **de),
        page(t0 + 61 * MINUTE_MS, 11, "/a", **de),
        # Visitor 22: a newsletter link to /thanks from webmail, 2 s engaged: a bounce.
        page(t0 + 5 * MINUTE_MS, 22, "/thanks", "https://mail.google.com/",
             url_query="utm_source=newsletter&utm_medium=email&utm_campaign=fall", **fr),
        engaged(t0 + 5 * MINUTE_MS + 500, 22, "/thanks", 2000, **fr),
        # Visitor 44 on a phone: from t.co, two pages ten minutes apart, no engagement report.
        page(t0 + 7 * MINUTE_MS, 44, "/a", "https://t.co/xyz", user_agent=IPHONE),
        page(t0 + 17 * MINUTE_MS, 44, "/c", "https://blog.example/a", user_agent=IPHONE),
        # A crawler is no visitor.
        page(t0 + 9 * MINUTE_MS, 55, "/a", user_agent=GOOGLEBOT),
    ]  # fmt: skip


@pytest.fixture
def store(tmp_path: Path, now: dt.datetime) -> Iterator[Store]:
    s = Store(tmp_path / "clickhouse")
    s.add(traffic(now))
    yield s
    s.close()


def window(now: dt.datetime) -> Window:
    return Window.last_days(3, now)


def settle(store: Store, now: dt.datetime, gap_s: int = 1800) -> None:
    """Settle as a consumer would at noon of `now`'s day: yesterday has ended."""
    noon = now.replace(hour=12, minute=0, second=0, microsecond=0).timestamp()
    settler = Settler(store.writer, clock=lambda: noon, insert_margin_s=-5, visit_gap_s=gap_s)
    asyncio.run(settler.settle_due())


def both(
    store: Store, now: dt.datetime, view: str, web: WebConfig = GOALS, **filters: Any
) -> list[dict]:
    """The view's rows over `now`'s window from the rollups; they must equal those from raw
    events."""
    asked = Request(view, window(now), Filters(**filters), web=web)
    rolled = view_rows(store.query, asked)
    raw = view_rows(store.query, Request(view, window(now), Filters(**filters), web=web,
                                         source="raw"))  # fmt: skip
    assert rolled == raw, view
    return rolled


def stored_days(store: Store, now: dt.datetime, gap_s: int = 1800) -> list[dict]:
    return store.rows(settled_days_sql(window(now), gap_s))


EXPECTED_VISITS = [{
    "site": "blog", "visitors": 3, "visits": 4, "pageviews": 6, "views_per_visit": 1.5,
    "bounce_rate": 0.5, "visit_duration_s": round((10_000 + 0 + 2_000 + 600_000) / 4000, 1),
}]  # fmt: skip


def check_every_figure(store: Store, now: dt.datetime) -> None:
    assert both(store, now, "visits") == EXPECTED_VISITS
    sources = {(r["source"], r["referrer_host"], r["utm_campaign"]): r["visits"]
               for r in both(store, now, "sources")}  # fmt: skip
    assert sources == {
        ("search", "google.com", ""): 1, ("direct", "", ""): 1,
        ("email", "mail.google.com", "fall"): 1, ("social", "t.co", ""): 1,
    }  # fmt: skip
    countries = {r["country"]: (r["visitors"], r["visits"]) for r in both(store, now, "countries")}
    assert countries == {"DE": (1, 2), "FR": (1, 1), "": (1, 1)}
    devices = {(r["device_type"], r["browser"], r["os"]): r["visits"]
               for r in both(store, now, "devices")}  # fmt: skip
    assert devices == {("desktop", "Chrome", "Windows"): 3, ("mobile", "Mobile Safari", "iOS"): 1}
    goals = [(r["goal"], r["source"], r["utm_campaign"], r["visitors"], r["converted"],
              r["conversion_rate"]) for r in both(store, now, "goals")]  # fmt: skip
    assert goals == [("/thanks", "email", "fall", 1, 1, 1.0), ("signup", "search", "", 1, 1, 1.0)]
    # Without a goal list, every custom event is a goal (and no page is).
    assert [r["goal"] for r in both(store, now, "goals", WebConfig())] == ["signup"]


def test_every_figure_from_raw_events_and_from_settled_visits(
    store: Store, now: dt.datetime
) -> None:
    assert stored_days(store, now) == []
    check_every_figure(store, now)  # nothing settled: both read raw events
    settle(store, now)
    assert len(stored_days(store, now)) == 1  # yesterday's visits are now read from the table
    assert store.rows("SELECT count() AS n FROM beacon.rollup_visits") == [{"n": 4}]
    check_every_figure(store, now)


def test_a_late_event_sends_the_day_back_to_raw_events(store: Store, now: dt.datetime) -> None:
    settle(store, now)
    # Visitor 44 reports engaged time after the day was settled: visit 3 now lasted 3 s.
    store.add([engaged(yesterday_ms(now, 10) + 17 * MINUTE_MS + 100, 44, "/c", 3000,
                       user_agent=IPHONE)])  # fmt: skip
    assert stored_days(store, now) == []
    [row] = both(store, now, "visits")
    assert row["visit_duration_s"] == round((10_000 + 0 + 2_000 + 3_000) / 4000, 1)
    settle(store, now)
    assert len(stored_days(store, now)) == 1
    assert both(store, now, "visits") == [row]


def test_a_new_visit_gap_applies_to_settled_days_too(store: Store, now: dt.datetime) -> None:
    settle(store, now)
    short = WebConfig(visit_gap_s=300, goals=GOALS.goals)  # visitor 44's pages are 10 min apart
    assert stored_days(store, now, 300) == []
    [row] = both(store, now, "visits", short)
    assert (row["visits"], row["bounce_rate"]) == (5, 0.8)
    settle(store, now, gap_s=300)  # the consumer with the new gap settles the day again
    assert len(stored_days(store, now, 300)) == 1
    assert both(store, now, "visits", short) == [row]


def test_filters_and_breakdowns(store: Store, now: dt.datetime) -> None:
    settle(store, now)
    asked = Request("visits", window(now), Filters(web=(("source", "social"),)), web=GOALS)
    [social] = visit_rows(store.query, asked, ("site",))
    assert (social["visitors"], social["pageviews"]) == (1, 2)
    pages = {
        r["page"]: (r["visits"], r["pageviews"])
        for r in visit_rows(store.query, Request("visits", window(now), web=GOALS), ("page",))
    }
    assert pages == {"/a": (3, 3), "/b": (1, 1), "/c": (1, 1), "/thanks": (1, 1)}
    entries = visit_rows(store.query, Request("visits", window(now), web=GOALS), ("entry_page",))
    assert {r["entry_page"]: r["visits"] for r in entries} == {"/a": 3, "/thanks": 1}
    reached = Request("visits", window(now), Filters(web=(("goal", "signup"),)), web=GOALS)
    assert visit_rows(store.query, reached, ())[0]["visits"] == 1
    viewed = Request("visits", window(now), Filters(web=(("page", "/c"),)), web=GOALS)
    assert visit_rows(store.query, viewed, ())[0]["visitors"] == 1
    per_goal = goal_rows(store.query, Request("goals", window(now), web=GOALS), ())
    assert [(r["goal"], r["visitors"], r["converted"]) for r in per_goal] == [
        ("/thanks", 3, 1),
        ("signup", 3, 1),
    ]
    # The site's own hosts are no source: a referrer from one of them is direct.
    own = WebConfig(goals=GOALS.goals, site_hosts={"blog": ("t.co",)})
    social_now = {r["source"] for r in both(store, now, "sources", own)}
    assert "social" not in social_now
    with pytest.raises(ValueError, match="unknown filter"):
        visit_rows(store.query, Request("visits", window(now), Filters(web=(("x", "y"),))), ())


def test_realtime_counts_the_last_five_minutes_from_raw_events(
    store: Store, now: dt.datetime
) -> None:
    # Read again: the five minutes are the store's last, not of the test's reference time.
    now_ms = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
    store.add([
        page(now_ms - 60_000, 71, "/a"), page(now_ms - 50_000, 71, "/b"),
        page(now_ms - 90_000, 72, "/a"),
        page(now_ms - 10 * MINUTE_MS, 73, "/a"),  # too long ago
    ])  # fmt: skip
    rows = view_rows(store.query, Request("realtime", window(now)))
    assert rows == [{"site": "blog", "visitors": 2, "pageviews": 3}]
    assert view_rows(store.query, Request("realtime", window(now), Filters(site="shop"))) == []


def test_a_bad_filter_is_refused_by_the_report_command() -> None:
    assert web_filters(["country=DE", "page=/a=b"]) == (("country", "DE"), ("page", "/a=b"))
    for bad in ("country", "colour=red"):
        with pytest.raises(ValueError, match="--filter"):
            web_filters([bad])


def test_a_page_viewed_twice_in_a_visit_counts_one_visit_and_two_views(
    tmp_path: Path, now: dt.datetime
) -> None:
    t0 = yesterday_ms(now, 15)
    store = Store(tmp_path / "clickhouse")
    try:
        store.add([page(t0, 66, "/a"), page(t0 + MINUTE_MS, 66, "/b"),
                   page(t0 + 2 * MINUTE_MS, 66, "/a")])  # fmt: skip
        for settled in (False, True):
            if settled:
                settle(store, now)
            by_page = {}
            for source in ("rollup", "raw"):
                asked = Request("visits", window(now), web=WebConfig(goals=("/a",)), source=source)
                found = visit_rows(store.query, asked, ("page",))
                by_page[source] = {r["page"]: (r["visits"], r["pageviews"]) for r in found}
                [goal] = goal_rows(store.query, asked, ())
                assert (goal["goal"], goal["converted"], goal["conversions"]) == ("/a", 1, 1)
            assert by_page["rollup"] == by_page["raw"] == {"/a": (1, 2), "/b": (1, 1)}
    finally:
        store.close()
