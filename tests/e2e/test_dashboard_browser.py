"""The dashboard in headless Chromium: sign in with the token, read the numbers the simulated
traffic must give, click a row to filter the page, watch the realtime tile refresh, and keep a
screenshot: in the test's temporary directory, or as docs/dashboard.png (the README's) when
BEACON_DOCS_SCREENSHOT=1."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.async_api import Page

from tests.support.browser import chromium
from tests.support.helpers import clear_of_midnight
from tests.support.simulation import TOKEN, AnalyticsBeacon, run_simulation

DOCS_SHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"
# Room before midnight UTC for the simulation's traffic, which takes seconds: the collector
# rotates visitor ids at midnight, and the truth counts each visitor once.
TRAFFIC_S = 60
# A laptop's screen.
VIEWPORT = {"width": 1440, "height": 900}


@pytest.fixture
def beacon(tmp_path: Path) -> Iterator[AnalyticsBeacon]:
    with AnalyticsBeacon(tmp_path / "data") as b:
        yield b


def plain(text: str) -> str:
    return text.replace(",", "").strip()


async def kpi(page: Page, name: str) -> str:
    return plain(await page.locator(f"[data-kpi={name}] .value").inner_text())


async def cell(page: Page, row: str, field: str) -> str:
    return plain(await page.locator(f"{row} td[data-field={field}]").inner_text())


async def no_overlap(page: Page, chart: str) -> int:
    """How many axis labels `chart` shows; fails when two of them overlap on the screen."""
    boxes = []
    for label in await page.locator(f"{chart} text[data-tick]").all():
        box = await label.bounding_box()
        assert box is not None
        boxes.append(box)
    for a, b in itertools.pairwise(boxes):
        assert a["x"] + a["width"] < b["x"], (a, b)
    return len(boxes)


async def sign_in(page: Page, url: str) -> None:
    response = await page.goto(url)
    assert response is not None and response.status == 401  # the sign-in form, no numbers
    assert await page.locator("[data-kpi]").count() == 0
    await page.fill("input[name=token]", "not-the-token")
    await page.click("button[type=submit]")
    assert "not the dashboard token" in await page.locator(".error").inner_text()
    await page.fill("input[name=token]", TOKEN)
    await page.click("button[type=submit]")
    await page.wait_for_selector("[data-kpi=opens]")


@pytest.mark.timeout(120 + TRAFFIC_S)  # the default, and a wait for midnight to pass
async def test_the_dashboard_shows_the_simulated_numbers(
    beacon: AnalyticsBeacon, tmp_path: Path
) -> None:
    await clear_of_midnight(TRAFFIC_S)
    truth = await run_simulation(beacon, seed=11)
    campaigns = {row["campaign"]: row for row in truth["campaigns"]}
    url = f"http://127.0.0.1:{beacon.store_port}/dashboard?days=1"
    async with chromium() as context:
        page = await context.new_page()
        await page.set_viewport_size(VIEWPORT)
        await page.clock.install()  # the realtime tile's timer, run on below without waiting
        await sign_in(page, url)
        await page.goto(url)
        [cookie] = await context.cookies()
        assert (cookie["httpOnly"], cookie["sameSite"]) == (True, "Strict")
        assert TOKEN not in cookie["value"]

        # Email and ads, as before.
        assert await kpi(page, "opens") == str(sum(c["opens"] for c in campaigns.values()))
        human_clicks = sum(c["clicks"] - c["machine_clicks"] for c in campaigns.values())
        assert await kpi(page, "clicks") == str(human_clicks)
        assert await kpi(page, "conversions") == str(
            sum(c["conversions"] for c in campaigns.values())
        )
        shop = next(s for s in truth["sites"] if s["site"] == "sim-shop")
        assert await kpi(page, "revenue") == f"{shop['revenue']['EUR']} EUR"
        for name, row in campaigns.items():
            tr = f'[data-table=campaigns] tr[data-campaign="{name}"]'
            assert await cell(page, tr, "unique_opens") == str(row["unique_opens"])
            assert await cell(page, tr, "machine_opens") == str(row["machine_opens"])
            assert await cell(page, tr, "unique_clicks") == str(row["unique_clicks"])
            assert await cell(page, tr, "ctr") == f"{row['ctr']:.2%}"
            assert await cell(page, tr, "conversions") == str(row["conversions"])
        assert await page.locator("[data-table=ads] tbody tr").count() == len(truth["ads"])
        for ad in truth["ads"]:  # the ad server's and the ad tag's impressions; viewability
            tr = f'[data-table=ads] tr[data-campaign="{ad["campaign"]}"][data-ad="{ad["ad"]}"]'
            assert await cell(page, tr, "impressions") == str(ad["impressions"])
            assert await cell(page, tr, "viewable_impressions") == str(ad["viewable_impressions"])
            assert await cell(page, tr, "viewability_rate") == f"{ad['viewability_rate']:.2%}"

        # The web: every simulated visitor, every page view of a visit (the crawler's are
        # none), all of them in the last minutes.
        web = truth["web"]
        visitors = sum(r["visitors"] for r in web["visits"])
        assert await kpi(page, "visitors") == str(visitors)
        assert await kpi(page, "pageviews") == str(sum(r["pageviews"] for r in web["visits"]))
        assert await kpi(page, "realtime") == str(sum(r["visitors"] for r in web["realtime"]))
        # The crawler loads every page once (collector/simulate/web.py): no visit.
        most_viewed = max(p["pageviews"] for p in truth["pages"]) - 1
        top = page.locator("[data-table=pages] tbody tr").first
        assert plain(await top.locator("[data-field=pageviews]").inner_text()) == str(most_viewed)
        assert await page.locator("svg.chart").count() == 3
        assert await no_overlap(page, "section.wide svg.chart") >= 12  # hours of one day
        assert await page.locator("section.wide svg.chart line.day").count() >= 1  # midnight

        # The realtime tile asks its endpoint again after 30 s, without a reload.
        assert await page.locator("[data-kpi=realtime][data-updated]").count() == 0
        await page.clock.run_for(31_000)
        await page.wait_for_selector("[data-kpi=realtime][data-updated]")
        assert await kpi(page, "realtime") == str(sum(r["visitors"] for r in web["realtime"]))

        # A row filters the whole page: the referrer host that brought the most visitors.
        row = page.locator(
            '[data-table=referrers] tbody tr.pick:not([data-referrer-host=""])'
        ).first
        host = await row.get_attribute("data-referrer-host")
        row_visitors = plain(await row.locator("td[data-field=visitors]").inner_text())
        await row.locator("a").click()
        await page.wait_for_selector("[data-filter=referrer_host]")
        assert await page.locator("[data-filter=referrer_host] b").inner_text() == host
        assert f"referrer_host={host}" in page.url
        assert await kpi(page, "visitors") == row_visitors != str(visitors)
        assert await page.locator("[data-table=referrers] tbody tr").count() == 1
        assert await kpi(page, "opens") == str(sum(c["opens"] for c in campaigns.values()))
        shot = DOCS_SHOT if os.environ.get("BEACON_DOCS_SCREENSHOT") else tmp_path / "dash.png"
        await page.screenshot(path=str(shot), full_page=True)
        await page.click("[data-filter=referrer_host] a")
        await page.wait_for_selector(".filters .hint")
        assert await kpi(page, "visitors") == str(visitors)

        # A page's row filters by its site too; each filter clears on its own.
        row = page.locator("[data-table=pages] tbody tr.pick").first
        path, site = await row.get_attribute("data-page"), await row.get_attribute("data-site")
        row_visitors = plain(await row.locator("td[data-field=visitors]").inner_text())
        await row.locator("a").click()
        await page.wait_for_selector("[data-filter=page]")
        assert await page.locator("[data-filter=page] b").inner_text() == path
        assert await page.locator("[data-filter=site] b").inner_text() == site
        assert await page.locator(".picker summary").inner_text() == site
        assert await kpi(page, "visitors") == row_visitors  # who viewed the page
        await page.click("[data-filter=page] a")
        await page.wait_for_selector("[data-filter=site]")
        assert await page.locator("[data-filter=page]").count() == 0
        await page.click(".filters a.clear")
        await page.wait_for_selector(".filters .hint")
        assert await kpi(page, "visitors") == str(visitors)
    assert shot.stat().st_size > 20_000
    print(f"dashboard screenshot: {shot}")
    assert beacon.stop() == 0
