"""The dashboard in headless Chromium: sign in with the token, read the numbers the simulated
traffic must give, and keep a screenshot (in the test's temporary directory)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.browser import chromium
from tests.support.simulation import TOKEN, AnalyticsBeacon, run_simulation


@pytest.fixture
def beacon(tmp_path: Path) -> Iterator[AnalyticsBeacon]:
    with AnalyticsBeacon(tmp_path / "data") as b:
        yield b


def plain(text: str) -> str:
    return text.replace(",", "").strip()


async def test_the_dashboard_shows_the_simulated_numbers(
    beacon: AnalyticsBeacon, tmp_path: Path
) -> None:
    truth = await run_simulation(beacon, seed=11)
    campaigns = {row["campaign"]: row for row in truth["campaigns"]}
    async with chromium() as context:
        page = await context.new_page()
        response = await page.goto(f"http://127.0.0.1:{beacon.store_port}/dashboard?days=1")
        assert response is not None and response.status == 401  # the sign-in form, no numbers
        assert await page.locator("[data-kpi]").count() == 0
        await page.fill("input[name=token]", "not-the-token")
        await page.click("button[type=submit]")
        assert "not the dashboard token" in await page.locator(".error").inner_text()
        await page.fill("input[name=token]", TOKEN)
        await page.click("button[type=submit]")
        await page.wait_for_selector("[data-kpi=opens]")
        await page.goto(f"http://127.0.0.1:{beacon.store_port}/dashboard?days=1")
        [cookie] = await context.cookies()
        assert (cookie["httpOnly"], cookie["sameSite"]) == (True, "Strict")
        assert TOKEN not in cookie["value"]

        async def kpi(name: str) -> str:
            return plain(await page.locator(f"[data-kpi={name}] .value").inner_text())

        assert await kpi("opens") == str(sum(c["opens"] for c in campaigns.values()))
        human_clicks = sum(c["clicks"] - c["machine_clicks"] for c in campaigns.values())
        assert await kpi("clicks") == str(human_clicks)
        assert await kpi("conversions") == str(sum(c["conversions"] for c in campaigns.values()))
        assert await kpi("pageviews") == str(sum(s["pageviews"] for s in truth["sites"]))
        shop = next(s for s in truth["sites"] if s["site"] == "sim-shop")
        assert await kpi("revenue") == f"{shop['revenue']['EUR']} EUR"
        for name, row in campaigns.items():
            row_cells = f'tr[data-campaign="{name}"] td'

            async def cell(field: str, cells: str = row_cells) -> str:
                return plain(await page.locator(f"{cells}[data-field={field}]").inner_text())

            assert await cell("unique_opens") == str(row["unique_opens"])
            assert await cell("machine_opens") == str(row["machine_opens"])
            assert await cell("unique_clicks") == str(row["unique_clicks"])
            assert await cell("ctr") == f"{row['ctr']:.2%}"
            assert await cell("conversions") == str(row["conversions"])
        most_viewed = max(p["pageviews"] for p in truth["pages"])
        first_page = page.locator("section:has(h2:text('Top pages')) tbody tr").first
        views = await first_page.locator("[data-field=pageviews]").inner_text()
        assert plain(views) == str(most_viewed)
        assert await page.locator("svg.chart").count() == 2
        shot = tmp_path / "dashboard.png"
        await page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000
    print(f"dashboard screenshot: {shot}")
    assert beacon.stop() == 0
