"""`beacon simulate`'s web visitors against `beacon run`: every web report figure (visits,
sources, countries, devices, goals, realtime) equals the simulation's truth, from raw events,
from the rollups of a live day, and from the rollups once the day is settled.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from collector.simulate import Config, Truth
from tests.support.beacon_run import Beacon
from tests.support.helpers import clear_of_midnight
from tests.support.simulation import AnalyticsBeacon, send_simulation

pytestmark = [pytest.mark.timeout(900)]

GAP_S = 15  # BEACON_VISIT_GAP_S: a returning visitor pauses 2 x 15 + 1 s between visits;
# a visit's own requests would have to stall 15 s to split it (a loaded machine stalls 4 s)
GOALS = "signup,/thanks"
CONFIG = Config(
    seed=13, campaigns=1, recipients=40, ad_campaigns=1, impressions=30,  # not web events
    visitors=30, return_rate=0.3, visit_gap_s=GAP_S, goals=GOALS,
)  # fmt: skip
# Room before midnight UTC for the simulation's traffic, about a minute with the returning
# visitors' pauses: the collector's visitor ids and visits end at midnight.
TRAFFIC_S = 300
VIEWS = ("visits", "sources", "countries", "devices", "goals")
KEYS = {
    "visits": ("site",),
    "sources": ("site", "source", "referrer_host", "utm_source", "utm_medium", "utm_campaign"),
    "countries": ("site", "country"),
    "devices": ("site", "device_type", "browser", "os"),
    "goals": ("site", "goal", "source", "utm_campaign"),
}
# As the consumer settles a day an hour after it ends: here with a clock two days on, so
# that today is settled now. Then the raw events go, so that only the rollups can answer.
SETTLE = """
import asyncio, sys, time
from pathlib import Path
from analytics.rollup_settle import Settler
from analytics.store.chdb import ChdbWriter

writer = ChdbWriter(Path(sys.argv[1]))
later = time.time() + 2 * 86400
settler = Settler(writer, clock=lambda: later, insert_margin_s=-5, visit_gap_s=int(sys.argv[2]))
days = asyncio.run(settler.settle_due())
stored = writer.query_sync("SELECT count() FROM beacon.rollup_visits", "TSV").strip()
writer.query_sync("TRUNCATE TABLE beacon.events", "TSV")
print(" ".join(map(str, days)), stored)
writer.close_sync()
"""


class WebBeacon(AnalyticsBeacon):
    def env(self) -> dict[str, str]:
        return {**super().env(), "BEACON_VISIT_GAP_S": str(GAP_S), "BEACON_GOALS": GOALS}


def report(beacon: Beacon, *args: str) -> Any:
    done = beacon.report("--format", "json", *args)
    assert done.returncode == 0, done.stderr
    return orjson.loads(done.stdout)


def keyed(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[tuple, dict[str, Any]]:
    found = {tuple(r[k] for k in keys): r for r in rows}
    assert len(found) == len(rows), "a key twice"
    return found


def check_web_views(beacon: Beacon, truth: Truth, *args: str) -> None:
    """Every web view, whole and by day and hour, equals the truth, row for row."""
    for view in VIEWS:
        got = report(beacon, "--view", view, "--limit", "1000", *args)
        want = truth.web_rows(view)
        if view == "goals":  # ordered by site, goal, converted (most first) only
            assert keyed(got, KEYS[view]) == keyed(want, KEYS[view]), (view, args)
            order = [(r["site"], r["goal"], -r["converted"]) for r in got]
            assert order == sorted(order), (view, args)
        else:  # by visits, most first, then the keys
            assert got == want, (view, args)
        for group in ("day", "hour"):
            got = report(beacon, "--view", view, "--limit", "1000", "--group", group, *args)
            keys = (group, *KEYS[view])
            assert keyed(got, keys) == keyed(truth.web_rows(view, group), keys), (view, group)
    top = report(beacon, "--view", "sources", "--limit", "3", *args)
    assert top == truth.web_rows("sources")[:3]
    blog = report(beacon, "--view", "countries", "--site", "sim-blog", "--limit", "1000", *args)
    assert blog == [r for r in truth.web_rows("countries") if r["site"] == "sim-blog"]


def settle_and_drop_events(data_dir: Path) -> tuple[str, int]:
    """Settle every ended day as the consumer does, today included, and empty beacon.events;
    the days settled and the visits stored for them."""
    done = subprocess.run(
        [sys.executable, "-c", SETTLE, str(data_dir / "clickhouse"), str(GAP_S)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    days, stored = done.stdout.split()
    return days, int(stored)


async def test_every_web_figure_equals_the_simulated_truth(tmp_path: Path) -> None:
    with WebBeacon(tmp_path / "data") as beacon:
        day = await clear_of_midnight(TRAFFIC_S)
        truth, _ = await send_simulation(beacon, CONFIG)
        if dt.datetime.now(dt.UTC).date() != day:  # visitor ids and visits end at midnight
            pytest.fail(f"the simulation took over {TRAFFIC_S} s and crossed midnight UTC")
        # The last 5 minutes, from raw events whatever the source: every visitor of the run.
        realtime = truth.web_rows("realtime")
        assert report(beacon, "--view", "realtime") == realtime
        assert report(beacon, "--view", "realtime", "--source", "raw") == realtime
        assert [r["visitors"] for r in realtime] == [CONFIG.visitors] * 2
        check_web_views(beacon, truth, "--source", "raw")
        check_web_views(beacon, truth)  # today's rollups are live: event id sets
        assert beacon.stop() == 0
        settled = settle_and_drop_events(beacon.data_dir)
        assert settled == (day.isoformat(), len(truth.web.visits))
        # Nobody holds the store now: each report opens it itself. With no raw event left,
        # the settled day's stored visits answer alone.
        assert report(beacon, "--view", "visits", "--source", "raw") == []
        check_web_views(beacon, truth)
