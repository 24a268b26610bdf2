"""The snippet in a real browser: headless Chromium loads pages served on loopback, scrolls,
clicks, navigates and closes; the events are looked up in ClickHouse behind `beacon run`."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator

import orjson
import pytest
from playwright.async_api import Page

from tests.support.beacon_run import Beacon
from tests.support.browser import PAGE_HEIGHT_PX, Site, chromium
from tests.support.helpers import clear_of_midnight

SEARCH = "https://search.example/results?q=private+words"
WAIT_S = 30
# Room before midnight UTC for a visit, which takes seconds: the collector rotates the
# cookieless visitor id at midnight, and the visit's events must have one.
VISIT_S = 60


@pytest.fixture(scope="module")
def beacon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Beacon]:
    """One collector for the module: cookie mode on, consent required for the site `shop`."""
    with Beacon(
        tmp_path_factory.mktemp("browser") / "data",
        {"BEACON_VISITOR_COOKIE": "1", "BEACON_CONSENT_REQUIRED": "shop"},
    ) as b:
        yield b


def rows(beacon: Beacon, site: str) -> list[dict]:
    text = beacon.query(
        "SELECT event_type, url_path, url_query, referrer, props, visitor_id, consent, "
        f"transport, user_agent FROM beacon.events WHERE site = '{site}' ORDER BY received_at",
        "JSONEachRow",
    )
    return [orjson.loads(line) for line in text.splitlines()]


async def wait_rows(beacon: Beacon, site: str, count: int) -> list[dict]:
    deadline = time.monotonic() + WAIT_S
    found = await asyncio.to_thread(rows, beacon, site)
    while len(found) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        found = await asyncio.to_thread(rows, beacon, site)
    return found


def events_requests(beacon: Beacon) -> float:
    """POST /e requests the collector has seen, whatever their outcome."""
    import urllib.request

    with urllib.request.urlopen(beacon.base + "/metrics", timeout=5) as r:
        text = r.read().decode()
    found = re.findall(r'^beacon_requests_total\{endpoint="events",[^}]*\} (\S+)$', text, re.M)
    return sum(float(v) for v in found)


async def visit(page: Page, url: str) -> None:
    """What a reader does: load, scroll to the end, click, follow an in-app link, scroll."""
    await page.goto(url, referer=SEARCH)
    await page.wait_for_function("typeof window.beacon === 'function'")  # the snippet ran
    await page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    await page.wait_for_timeout(300)  # engaged time, and the scroll event is delivered
    await page.click("#signup")
    await page.click("#next")  # pushState: the SPA's next page
    await page.evaluate("window.scrollTo(0, 2000)")
    await page.wait_for_timeout(300)


async def test_a_visit_reports_pageviews_scroll_engagement_and_events(beacon: Beacon) -> None:
    await clear_of_midnight(VISIT_S)
    async with Site(beacon.base) as site, chromium() as browser:
        page = await browser.new_page()
        article = site.url("/article")
        await visit(page, article + "?utm_source=news&utm_medium=email&secret=s3&site=web")
        screen = await page.evaluate("screen.width + 'x' + screen.height")
        await page.close()  # the tab closes: visibilitychange + pagehide send the engagement
    found = await wait_rows(beacon, "web", 5)
    kinds = [(r["event_type"], r["url_path"]) for r in found]
    assert sorted(kinds) == sorted(
        [
            ("pageview", "/article"),
            ("custom", "/article"),
            ("engagement", "/article"),
            ("pageview", "/spa/next"),
            ("engagement", "/spa/next"),
        ]
    ), found
    by_kind = {kind: r for kind, r in zip(kinds, found, strict=True)}
    first = by_kind["pageview", "/article"]
    assert first["url_query"] == "utm_source=news&utm_medium=email"  # secret=, site= dropped
    assert first["props"] == {"screen_px": screen}
    assert first["referrer"] == "https://search.example/results"  # without the search words
    assert (first["transport"], first["consent"]) == ("beacon", "not_required")
    assert "HeadlessChrome" in first["user_agent"]
    assert by_kind["custom", "/article"]["props"] == {"event": "signup", "plan": "pro"}
    engaged = by_kind["engagement", "/article"]["props"]
    assert engaged["scroll_pct"] == "100" and int(engaged["engaged_ms"]) >= 200
    spa = by_kind["pageview", "/spa/next"]
    assert spa["referrer"] == article  # the previous page, without its query
    assert spa["url_query"] == ""
    seen_pct = round((2000 + 720) * 100 / PAGE_HEIGHT_PX)
    closing = by_kind["engagement", "/spa/next"]["props"]
    assert closing["scroll_pct"] == str(seen_pct) and int(closing["engaged_ms"]) >= 200
    assert len({r["visitor_id"] for r in found}) == 1 and found[0]["visitor_id"] != 0


@pytest.mark.parametrize("signal", ["gpc", "dnt"])
async def test_gpc_or_dnt_in_the_browser_sends_nothing(beacon: Beacon, signal: str) -> None:
    posts_before = await asyncio.to_thread(events_requests, beacon)
    async with Site(beacon.base) as site, chromium(**{signal: True}) as browser:
        page = await browser.new_page()
        await visit(page, site.url(f"/article?site=opted-out-{signal}"))
        flags = await page.evaluate("[navigator.globalPrivacyControl, navigator.doNotTrack]")
        assert flags == ([True, None] if signal == "gpc" else [None, "1"])
        await page.close()
        # A control visit in a normal browser afterwards: once it is stored, anything the
        # opted-out visit had sent would be stored too (one collector, one ordered spool).
    async with Site(beacon.base) as site, chromium() as browser:
        page = await browser.new_page()
        await page.goto(site.url(f"/control?site=control-{signal}"))
        await page.wait_for_function("typeof window.beacon === 'function'")
        await page.close()
    assert len(await wait_rows(beacon, f"control-{signal}", 1)) >= 1
    assert await asyncio.to_thread(rows, beacon, f"opted-out-{signal}") == []
    # Not one POST from the opted-out page: the control visit's pageview is the only new one
    # (and its engagement, when the closing tab reported one).
    posts = await asyncio.to_thread(events_requests, beacon) - posts_before
    assert 1 <= posts <= 2, posts


async def test_consent_pending_until_granted_then_a_visitor_cookie(beacon: Beacon) -> None:
    async with Site(beacon.base) as site, chromium() as browser:
        page = await browser.new_page()
        posts_before = await asyncio.to_thread(events_requests, beacon)
        await page.goto(site.url("/checkout?site=shop&consent=pending"))
        await page.wait_for_function("typeof window.beacon === 'function'")
        await page.click("#signup")
        await page.wait_for_timeout(300)
        assert await asyncio.to_thread(events_requests, beacon) == posts_before  # nothing yet
        await page.evaluate("beacon('consent', true)")  # the site's consent banner said yes
        await page.wait_for_timeout(300)
        await page.click("#signup")
        await page.wait_for_timeout(200)
        await page.close()
        cookies = {c["name"]: c for c in await browser.cookies()}
    found = await wait_rows(beacon, "shop", 3)
    assert [r["event_type"] for r in found] == ["pageview", "custom", "engagement"]
    assert {r["consent"] for r in found} == {"granted"}
    # Never scrolled: what a 720 px window shows of the page, measured once it had loaded.
    assert found[2]["props"]["scroll_pct"] == str(round(720 * 100 / PAGE_HEIGHT_PX))
    cookie = cookies["beacon_vid"]
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Lax"
    assert {r["visitor_id"] for r in found} == {int(cookie["value"])}
