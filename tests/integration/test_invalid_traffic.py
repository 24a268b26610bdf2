"""Invalid traffic in the ad figures: classified by the consumer (crawlers, data-center
addresses, prefetches), duplicate clicks found when reading; left out by default, counted
apart, included on request; hand-counted, from both sources, live and settled."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from analytics.campaign_report import campaign_report
from analytics.report_window import Filters, Window
from analytics.rollup_settle import Settler
from analytics.views import Request, view_rows
from tests.support.chdb_events import Store, wire

GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
GMAIL = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
AD = {"site": "news", "campaign": "fall"}


def day_ms(days_ago: int, hour: int) -> int:
    today = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return int((today - dt.timedelta(days=days_ago, hours=-hour)).timestamp() * 1000)


def hour_ms(days_ago: int) -> int:
    """A minute into the current hour, `days_ago` days back: inside the last `days_ago` + 1
    days' window and outside the shorter ones, whatever the time of day."""
    hour = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
    return int((hour - dt.timedelta(days=days_ago, minutes=-1)).timestamp() * 1000)


def impression(at: int, ad: str = "banner-1", **fields: Any) -> dict[str, Any]:
    return wire("impression", at, ad=ad, **AD, **fields)


def click(at: int, visitor: int, ad: str = "banner-1", **fields: Any) -> dict[str, Any]:
    return wire("click", at, ad=ad, visitor_id=visitor, **AD, **fields)


def traffic(days_ago: int) -> list[dict[str, Any]]:
    """banner-1: 5 valid impressions, and 2 from a data center, 2 prefetched, 2 from Googlebot;
    one through Gmail's proxy from a data center (valid: a proxy is never invalid traffic).
    Clicks on banner-1: visitor 1 at 0, 5, 100 and 120 s (the second and fourth are
    duplicates with a 30 s window, the fourth not with 10 s), visitor 2 at 1 s and on banner-2
    at 2 s (another ad), two anonymous clicks 1 s apart (never duplicates), one from a data
    center. The tag: a measured, viewable impression, and one from a data center."""
    t = hour_ms(days_ago)
    out = [impression(t + i) for i in range(5)]
    out += [impression(t + 10 + i, network="data_center") for i in range(2)]
    out += [impression(t + 20 + i, purpose="prefetch") for i in range(2)]
    out += [impression(t + 30 + i, user_agent=GOOGLEBOT) for i in range(2)]
    out.append(impression(t + 40, user_agent=GMAIL, network="data_center"))
    out += [click(t + s * 1000, 1) for s in (0, 5, 100, 120)]
    out += [click(t + 1000, 2), click(t + 2000, 2, ad="banner-2")]
    out += [click(t + 3000 + s * 1000, 0) for s in (0, 1)]
    out.append(click(t + 4000, 3, network="data_center"))
    tag = {"ad": "banner-1", **AD}
    for imp, network in (("a", ""), ("b", "data_center")):
        extra = {"network": network} if network else {}
        props = {"imp": f"{days_ago}{imp}", "kind": "display"}
        out.append(wire("impression", t + 50, props={**props, "measured": "1"}, **tag, **extra))
        out.append(wire("viewable", t + 1100, props=props, **tag, **extra))
    return out


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "clickhouse")
    s.add(traffic(1) + traffic(0))
    yield s
    s.close()


def ads(store: Store, window: Window, filters: Filters) -> dict[str, dict[str, Any]]:
    """The ad view from both sources, which must agree; keyed by ad."""
    found = view_rows(store.query, Request("ad", window, filters))
    assert found == view_rows(store.query, Request("ad", window, filters, source="raw"))
    return {r["ad"]: r for r in found}


DEFAULT = Filters()


def ivt(store: Store, window: Window, filters: Filters = DEFAULT) -> list[dict[str, Any]]:
    found = view_rows(store.query, Request("ivt", window, filters))
    assert found == view_rows(store.query, Request("ivt", window, filters, source="raw"))
    return found


def check(store: Store, window: Window, days: int) -> None:
    """The figures `days` days of traffic make, from both sources."""
    default = ads(store, window, Filters())
    banner = default["banner-1"]
    assert banner["impressions"] == 7 * days  # 5 valid, Gmail's proxy, the tag's one
    assert banner["invalid_impressions"] == 7 * days  # 2 + 2 + 2 and the tag's
    assert banner["measured_impressions"] == banner["viewable_impressions"] == days
    # visitor 1: two clicks; visitor 2 once; the anonymous two.
    assert banner["clicks"] == 5 * days
    # Visitors 1 and 2 over any days, and each anonymous click as a person of its own.
    assert banner["unique_clicks"] == 2 + 2 * days
    assert banner["invalid_clicks"] == 3 * days  # two duplicates, the data center's
    assert banner["ctr"] == round(banner["clicks"] / banner["impressions"], 4)
    assert default["banner-2"]["clicks"] == days and default["banner-2"]["invalid_clicks"] == 0

    everything = ads(store, window, Filters(include_ivt=True))["banner-1"]
    assert everything["impressions"] == 14 * days
    assert everything["clicks"] == 8 * days
    assert everything["measured_impressions"] == everything["viewable_impressions"] == 2 * days
    assert everything["invalid_clicks"] == banner["invalid_clicks"]

    shorter = ads(store, window, Filters(duplicate_click_window_s=10))["banner-1"]
    assert (shorter["clicks"], shorter["invalid_clicks"]) == (6 * days, 2 * days)
    off = ads(store, window, Filters(duplicate_click_window_s=0))["banner-1"]
    assert (off["clicks"], off["invalid_clicks"]) == (7 * days, days)

    reasons = {(r["ad"], r["event_type"], r["reason"]): r["events"] for r in ivt(store, window)}
    assert reasons == {
        ("banner-1", "impression", "data_center"): 3 * days,
        ("banner-1", "impression", "prefetch"): 2 * days,
        ("banner-1", "impression", "crawler"): 2 * days,
        ("banner-1", "viewable", "data_center"): days,
        ("banner-1", "click", "data_center"): days,
        ("banner-1", "click", "duplicate_click"): 2 * days,
    }
    for source in ("rollup", "raw"):
        report = campaign_report(store.query, "fall", window=window, source=source)
        [by_ad] = [a for a in report["by_ad"] if a["ad"] == "banner-1"]
        assert {k: by_ad[k] for k in banner if k in by_ad} == {
            k: v for k, v in banner.items() if k in by_ad
        }
        assert report["invalid_clicks"] == 3 * days and report["invalid_impressions"] == 7 * days


def test_invalid_traffic_is_left_out_counted_and_included_on_request(store: Store) -> None:
    check(store, Window.last_days(1), 1)
    check(store, Window.last_days(2), 2)
    # Grouped by hour, both sources agree row by row.
    hourly = Request("ivt", Window.last_days(2), group="hour")
    assert view_rows(store.query, hourly) == view_rows(store.query, replace(hourly, source="raw"))


def test_a_duplicate_is_judged_by_the_clicks_before_the_window(store: Store) -> None:
    """A window that starts between visitor 1's first click and the second: the second is a
    duplicate still (the rule looks one window back), the first is outside."""
    t = day_ms(3, 5) - 10_000  # ten seconds before a whole hour
    store.add([click(t, 9), click(t + 15_000, 9)])
    start = dt.datetime.fromtimestamp((t + 10_000) / 1000, dt.UTC)
    window = Window(start, start + dt.timedelta(hours=1))
    [row] = ads(store, window, Filters()).values()
    assert (row["clicks"], row["invalid_clicks"]) == (0, 1)
    assert ivt(store, window) == [{"campaign": "fall", "ad": "banner-1", "event_type": "click",
                                   "reason": "duplicate_click", "events": 1}]  # fmt: skip


def test_settled_days_keep_the_reasons(store: Store) -> None:
    noon = day_ms(0, 12) / 1000
    asyncio.run(Settler(store.writer, clock=lambda: noon, insert_margin_s=-5).settle_due())
    check(store, Window.last_days(2), 2)
