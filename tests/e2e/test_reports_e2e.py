"""`beacon simulate` against `beacon run`: every report number equals the ground truth, read
from the rollups and from raw events.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.support.beacon_run import Beacon, wait_for_rows
from tests.support.helpers import clear_of_midnight
from tests.support.simulation import AnalyticsBeacon, run_simulation

# Room before midnight UTC for the simulation's traffic, which takes seconds: the collector
# rotates visitor ids at midnight, and the truth counts each visitor once.
TRAFFIC_S = 60


@pytest.fixture
def beacon(tmp_path: Path) -> Iterator[AnalyticsBeacon]:
    with AnalyticsBeacon(tmp_path / "data") as b:
        yield b


def report(beacon: Beacon, *args: str) -> Any:
    done = beacon.report("--format", "json", *args)
    assert done.returncode == 0, done.stderr
    return orjson.loads(done.stdout)


def keyed(rows: list[dict[str, Any]], *keys: str) -> dict[tuple, dict[str, Any]]:
    return {tuple(r[k] for k in keys): r for r in rows}


def only(rows: dict[tuple, dict[str, Any]], wanted: dict[tuple, dict[str, Any]]) -> dict:
    """The rows of `rows` that `wanted` has, with the fields `wanted` has."""
    return {k: {f: rows.get(k, {}).get(f) for f in v} for k, v in wanted.items()}


def check_views(beacon: Beacon, truth: dict[str, Any], *args: str) -> None:
    views = {
        "campaign": ("campaign",),
        "ad": ("campaign", "ad"),
        "site": ("site",),
        "pages": ("site", "url_host", "url_path"),
        "referrers": ("site", "referrer_host"),
    }
    truth_rows = {"campaign": "campaigns", "ad": "ads", "site": "sites", "pages": "pages",
                  "referrers": "referrers"}  # fmt: skip
    for view, keys in views.items():
        got = keyed(report(beacon, "--view", view, "--limit", "1000", *args), *keys)
        want = keyed(truth[truth_rows[view]], *keys)
        assert only(got, want) == want, (view, args)
    events = keyed(report(beacon, "--view", "events", *args), "site", "campaign", "event_type")
    want = keyed(truth["events"], "site", "campaign", "event_type")
    assert only(events, want) == want
    # The invalid traffic left out, and why; counted in, the ads' figures are what arrived.
    assert report(beacon, "--view", "ivt", *args) == truth["ivt"], args
    included = keyed(report(beacon, "--view", "ad", "--include-ivt", *args), "campaign", "ad")
    for row in truth["ads"]:
        got = included[row["campaign"], row["ad"]]
        assert got["impressions"] == row["impressions"] + row["invalid_impressions"], args
        assert got["clicks"] == row["clicks"] + row["invalid_clicks"], args
    for row in truth["campaigns"]:  # the one-campaign funnel of before
        funnel = report(beacon, "--campaign", row["campaign"], *args)
        assert {k: funnel[k] for k in row} == row
        ads = [{k: v for k, v in a.items() if k != "campaign"} for a in truth["ads"]
               if a["campaign"] == row["campaign"]]  # fmt: skip
        if ads:  # and each ad of the campaign, as `--view ad` has it
            assert [{k: a[k] for k in ads[0]} for a in funnel["by_ad"]] == ads


@pytest.mark.timeout(120 + TRAFFIC_S)  # the default, and a wait for midnight to pass
async def test_every_report_number_equals_the_simulated_truth(beacon: AnalyticsBeacon) -> None:
    day = await clear_of_midnight(TRAFFIC_S)
    truth = await run_simulation(beacon, seed=7)
    if dt.datetime.now(dt.UTC).date() != day:  # visitor ids rotate at midnight UTC
        pytest.fail(f"the simulation took over {TRAFFIC_S} s and crossed midnight UTC")
    assert truth["signed"] and truth["requests"] > 1000
    reasons = {"crawler", "data_center", "prefetch", "duplicate_click"}
    assert {r["reason"] for r in truth["ivt"]} == reasons  # every kind of invalid traffic sent
    check_views(beacon, truth)
    check_views(beacon, truth, "--source", "raw")
    # A window of whole days: the daily rollups (pages, referrers) answer alone. The day of
    # the traffic, not of the clock now: the reports above may have run past midnight.
    whole_days = ("--from", day.isoformat(), "--to", (day + dt.timedelta(days=1)).isoformat())
    check_views(beacon, truth, *whole_days)
    # By hour: rollups and raw events agree period by period.
    for view in ("campaign", "ad", "site", "events"):
        rolled = report(beacon, "--view", view, "--group", "hour")
        assert rolled == report(beacon, "--view", view, "--group", "hour", "--source", "raw")
    # CSV carries the same figures.
    done = beacon.report("--view", "campaign", "--format", "csv")
    parsed = {r["campaign"]: r for r in csv.DictReader(io.StringIO(done.stdout))}
    for row in truth["campaigns"]:
        assert int(parsed[row["campaign"]]["unique_clicks"]) == row["unique_clicks"]
        assert float(parsed[row["campaign"]]["ctr"]) == row["ctr"]
    table = beacon.report("--view", "campaign")
    assert "sim-mail-0" in table.stdout and "click_to_open_rate" in table.stdout
    assert beacon.stop() == 0


async def test_a_filter_a_view_cannot_apply_is_refused_in_one_line(
    beacon: AnalyticsBeacon,
) -> None:
    # Two pages of the blog, one reached from a spring link. Pages, referrers and the web
    # views keep no campaign, ad or signature: "the pages of spring" would be every page.
    async with aiohttp.ClientSession() as http:
        for query in (
            "s=blog&c=spring&u=https://blog.example/a",
            "s=blog&u=https://blog.example/b",
        ):
            async with http.get(f"{beacon.base}/p.gif?{query}") as r:
                assert r.status == 200
    assert await wait_for_rows(beacon, 2) == 2
    for view, *given in (
        ("pages", "--campaign", "spring"), ("referrers", "--ad", "a1"), ("visits", "--verified"),
        ("goals", "--campaign", "spring", "--source", "raw"), ("realtime", "--ad", "a1"),
    ):  # fmt: skip
        done = beacon.report("--view", view, *given)
        assert (done.returncode, done.stdout) == (2, ""), (view, given)
        [line] = done.stderr.splitlines()
        assert line.startswith(f"beacon report: {given[0]} cannot filter the {view} view,"), line
    # The site is theirs to filter by; the events view takes the campaign.
    pages = report(beacon, "--view", "pages", "--site", "blog")
    assert {p["url_path"] for p in pages} == {"/a", "/b"}
    [row] = report(beacon, "--view", "events", "--campaign", "spring")
    assert (row["site"], row["event_type"], row["events"]) == ("blog", "pageview", 1)
