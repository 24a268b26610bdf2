"""Ad viewability figures (the /a.js tag's impressions and viewable events) in the ad view, the
campaign view and the campaign report: hand-counted, from both sources, live and settled."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from analytics.campaign_report import campaign_report
from analytics.report_window import Window
from analytics.rollup_settle import Settler
from analytics.views import Request, view_rows
from tests.support.chdb_events import Store, wire

# The day the traffic is made for, once: a run across midnight (UTC) still finds its today's
# rows on the day it calls today.
TODAY = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
NOON = TODAY + dt.timedelta(hours=12)


def day_ms(days_ago: int, hour: int) -> int:
    return int((TODAY - dt.timedelta(days=days_ago, hours=-hour)).timestamp() * 1000)


def tagged(event_type: str, at: int, ad: str, imp: str, **props: str) -> dict[str, Any]:
    return wire(event_type, at, site="news", campaign="fall", ad=ad, props={"imp": imp, **props})


def traffic(days_ago: int) -> list[dict[str, Any]]:
    """banner-1: four measured impressions (two viewable), one the browser could not measure,
    three from the ad server's pixel; banner-2: two measured, none viewable."""
    t = day_ms(days_ago, 0) + 60_000
    d = f"d{days_ago}-"
    out = [tagged("impression", t + i, "banner-1", f"{d}i{i}", kind="display", measured="1")
           for i in range(4)]  # fmt: skip
    out.append(tagged("impression", t + 9, "banner-1", f"{d}i9", kind="display", measured="0"))
    out += [tagged("viewable", t + 1000 + i, "banner-1", f"{d}i{i}", kind="display",
                   in_view_ms="1010", max_visible_pct="100") for i in range(2)]  # fmt: skip
    out += [wire("impression", t + 20 + i, site="news", campaign="fall", ad="banner-1")
            for i in range(3)]  # fmt: skip
    out += [tagged("impression", t + 30 + i, "banner-2", f"{d}j{i}", kind="large", measured="1")
            for i in range(2)]  # fmt: skip
    return out


EVENTS = traffic(1) + traffic(0)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "clickhouse")
    s.add(EVENTS)
    yield s
    s.close()


def check(store: Store, window: Window, days: int) -> None:
    """Every figure `days` days of traffic make, from both sources."""
    by_source = {}
    for source in ("rollup", "raw"):
        ads = {r["ad"]: r for r in view_rows(store.query, Request("ad", window, source=source))}
        by_source[source] = ads
        one = ads["banner-1"]
        assert one["impressions"] == 8 * days
        assert (one["measured_impressions"], one["viewable_impressions"]) == (4 * days, 2 * days)
        assert one["viewability_rate"] == 0.5
        two = ads["banner-2"]
        assert (two["measured_impressions"], two["viewable_impressions"]) == (2 * days, 0)
        assert two["viewability_rate"] == 0.0
        [fall] = view_rows(store.query, Request("campaign", window, source=source))
        assert fall["viewability_rate"] == round(2 / 6, 4)
        report = campaign_report(store.query, "fall", window=window, source=source)
        assert (report["measured_impressions"], report["viewable_impressions"]) == (
            6 * days, 2 * days
        )  # fmt: skip
        assert [a["viewability_rate"] for a in report["by_ad"]] == [0.5, 0.0]
    assert by_source["rollup"] == by_source["raw"]


def test_viewability_from_the_rollup_and_from_raw_events(store: Store) -> None:
    window = Window.last_days(3)
    check(store, window, days=2)
    noon = NOON.timestamp()
    asyncio.run(Settler(store.writer, clock=lambda: noon, insert_margin_s=-5).settle_due())
    settled = store.rows(
        f"SELECT toDate(period) = toDate('{TODAY:%Y-%m-%d}') AS today, max(settled) AS s "
        "FROM beacon.rollup_viewability_hourly GROUP BY today ORDER BY today"
    )
    assert settled == [{"today": 0, "s": 1}, {"today": 1, "s": 0}]
    check(store, window, days=2)
    # A replayed viewable event (a new insert, the same event id) counts once.
    [again] = [e for e in EVENTS if e["event_type"] == "viewable"][:1]
    store.add([again])
    check(store, window, days=2)
