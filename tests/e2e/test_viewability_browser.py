"""The ad tag (/a.js) in headless Chromium: ad slots in a page, in a same-origin iframe and in a
cross-origin iframe are held in view for set times, and the events the collector received
say exactly which impressions became viewable under the MRC rule of their kind.

Holds are timed by the page's own clock (tests/support/ad_pages.py, holdInView); the test
only waits for conditions. A slot that must not become viewable is scrolled away before its
rule is met; the slots that must are held last, so their events arriving, with the page
closed, says that nothing else is on its way.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import pytest
from aiohttp.test_utils import TestClient

from collector.sinks.memory import MemorySink
from tests.support.ad_pages import Pages, Slot, frame_document, publisher_page
from tests.support.browser import chromium, chromium_tabs
from tests.support.helpers import metric_value

WAIT_S = 30
# The MRC rule of each kind: the least continuous time in view a viewable event can report.
RULE_MS = {"display": 1000, "large": 1000, "video": 2000}


@dataclass(frozen=True)
class Hold:
    """A slot, how much of it is shown and for how long, and whether that makes it viewable."""

    slot: Slot
    share: float
    ms: int
    viewable: bool
    kind: str  # what the tag must decide it is


# Those that must not become viewable first; those that must, after (see the module's doc).
HOLDS = [
    Hold(Slot("quick"), 1, 500, viewable=False, kind="display"),
    Hold(Slot("partial"), 0.4, 3000, viewable=False, kind="display"),
    Hold(Slot("video-short", "video", video="marked"), 1, 1500, viewable=False, kind="video"),
    Hold(Slot("held"), 1, 1200, viewable=True, kind="display"),
    Hold(Slot("large-partial", "large"), 0.4, 3000, viewable=True, kind="large"),
    Hold(Slot("video-long", "video", video="element"), 1, 2500, viewable=True, kind="video"),
]


def of_type(sink: MemorySink, event_type: str) -> list[dict]:
    return [e for e in sink.events() if e["event_type"] == event_type]


async def wait_for(sink: MemorySink, event_type: str, count: int) -> list[dict]:
    """The events of a type once there are `count` of them (or what there is at the deadline)."""
    deadline = time.monotonic() + WAIT_S
    found = of_type(sink, event_type)
    while len(found) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        found = of_type(sink, event_type)
    return found


async def collector_with_sink(make_client) -> tuple[TestClient, MemorySink]:  # type: ignore[no-untyped-def]
    sink = MemorySink()
    return await make_client(sink), sink


def check_impressions(found: list[dict], holds: list[Hold]) -> dict[str, dict]:
    """One impression per slot, of the kind the tag had to decide; by ad id."""
    by_ad = {e["ad"]: e for e in found}
    assert len(found) == len(by_ad) == len(holds), found
    for hold in holds:
        event = by_ad[hold.slot.ad]
        assert (event["site"], event["campaign"]) == ("news", "fall")
        assert event["url_host"] == "127.0.0.1"  # the publisher's page, also from an ad frame
        assert event["props"]["kind"] == hold.kind and event["props"]["measured"] == "1"
        assert len(event["props"]["imp"]) >= 8
    assert len({e["props"]["imp"] for e in found}) == len(found)
    return by_ad


@pytest.mark.parametrize("where", ["page", "same-origin iframe", "cross-origin iframe"])
async def test_exactly_the_impressions_held_long_enough_become_viewable(make_client, where):
    client, sink = await collector_with_sink(make_client)
    collector = str(client.make_url("")).rstrip("/")
    slots = [hold.slot for hold in HOLDS]
    # The cross-origin ad server: another port under another name, so another site (and
    # another renderer process under site isolation).
    async with Pages() as publisher, Pages("localhost") as ad_server:
        frames = {"page": "", "same-origin iframe": publisher, "cross-origin iframe": ad_server}
        server = frames[where]
        frame_base = server.base if isinstance(server, Pages) else ""
        if isinstance(server, Pages):
            for slot in slots:
                server.documents[f"/frame/{slot.ad}"] = frame_document(collector, slot)
        publisher.documents["/news"] = publisher_page(collector, slots, frame_base)
        async with chromium_tabs() as browser:
            page = await browser.contexts[0].new_page()
            await page.goto(publisher.base + "/news")
            if frame_base:  # the page can read a same-origin frame's document, not the other
                readable = "id => document.getElementById(id).contentDocument !== null"
                assert await page.evaluate(readable, slots[0].ad) == (server is publisher)
            impressions = check_impressions(await wait_for(sink, "impression", len(HOLDS)), HOLDS)
            for hold in HOLDS:
                await page.evaluate(
                    "([id, share, ms]) => holdInView(id, share, ms)",
                    [hold.slot.ad, hold.share, hold.ms],
                )
            await page.close()
        expected = {hold.slot.ad for hold in HOLDS if hold.viewable}
        viewable = await wait_for(sink, "viewable", len(expected))
    assert {e["ad"] for e in viewable} == expected and len(viewable) == len(expected), viewable
    for event in viewable:
        hold = next(h for h in HOLDS if h.slot.ad == event["ad"])
        props = event["props"]
        assert props["imp"] == impressions[hold.slot.ad]["props"]["imp"]
        assert props["kind"] == hold.kind
        assert int(props["in_view_ms"]) >= RULE_MS[hold.kind]
        shown_pct = round(hold.share * 100)  # the share the page showed
        assert shown_pct - 2 <= int(props["max_visible_pct"]) <= shown_pct, props
        where_from = (event["site"], event["campaign"], event["url_host"])
        assert where_from == ("news", "fall", "127.0.0.1")


# A button that shows the slot and, 300 ms later by the page's clock, opens a tab over the page
# (its click is the user activation window.open needs), so the page is hidden before the
# slot's first second in view is over. The page notes when its own observer saw the slot in
# view while visible, when the tab opened, and whether the page was hidden 300 ms after that
# (headless Chromium hides it at once, but sends visibilitychange only when it shows again):
# the test's precondition.
COVER = """<button id="cover" style="position:fixed;top:0;left:0">cover</button>
<script>
var seen = {inViewAt: 0, openedAt: 0, hiddenSoon: false};
new IntersectionObserver(function (entries) {
  var e = entries[entries.length - 1];
  if (e.intersectionRatio >= 0.5 && document.visibilityState === "visible" && !seen.inViewAt)
    seen.inViewAt = e.time;
}, {threshold: [0.5]}).observe(document.getElementById("behind-tab"));
document.getElementById("cover").addEventListener("click", function () {
  var el = document.getElementById("behind-tab");
  window.scrollTo(0, el.offsetTop - 100);
  setTimeout(function () {
    seen.openedAt = performance.now();
    window.open("/blank");
    setTimeout(function () { seen.hiddenSoon = document.visibilityState === "hidden"; }, 300);
  }, 300);
});
</script>"""


async def test_a_hidden_tab_counts_no_time_in_view(make_client):
    client, sink = await collector_with_sink(make_client)
    collector = str(client.make_url("")).rstrip("/")
    slot = Slot("behind-tab")
    async with Pages() as publisher, chromium_tabs() as browser:
        publisher.documents["/news"] = publisher_page(collector, [slot], extra=COVER)
        publisher.documents["/blank"] = "<!doctype html><title>Another tab</title>"
        page = await browser.contexts[0].new_page()
        await page.goto(publisher.base + "/news")
        [impression] = await wait_for(sink, "impression", 1)
        async with browser.contexts[0].expect_page() as opened:
            await page.click("#cover")
        cover = await opened.value
        # Polled by a timer: a hidden page runs no animation frames.
        await page.wait_for_function("seen.hiddenSoon", polling=100)
        seen = await page.evaluate("seen")
        # Precondition: the slot was in view while the page was visible, and the page was
        # hidden before a display ad's second was over (else it may rightly be viewable).
        assert 0 < seen["inViewAt"] < seen["openedAt"] < seen["inViewAt"] + 700, seen
        # Hidden, with the slot in full view, for three times its rule's second.
        hidden_ms = 3000
        await page.evaluate("ms => new Promise(done => setTimeout(done, ms))", hidden_ms)
        # A marker from the hidden page: once it is stored, a viewable event sent while the
        # page was hidden would be stored too.
        await page.evaluate(
            "url => navigator.sendBeacon(url, JSON.stringify({e: 'custom', s: 'marker'}))",
            collector + "/e",
        )
        assert await wait_for(sink, "custom", 1)
        assert of_type(sink, "viewable") == []
        await cover.close()
        await page.bring_to_front()  # shown again, with the slot in view
        [viewable] = await wait_for(sink, "viewable", 1)
        await page.close()
    props = viewable["props"]
    assert props["imp"] == impression["props"]["imp"] and props["max_visible_pct"] == "100"
    # In view before the tab covered the page (under a second) plus from the moment it was
    # shown again: not the hidden seconds.
    assert RULE_MS["display"] <= int(props["in_view_ms"]) < hidden_ms, props


@pytest.mark.parametrize("signal", ["gpc", "dnt"])
async def test_gpc_or_dnt_in_the_browser_sends_nothing(make_client, metrics, signal):
    client, sink = await collector_with_sink(make_client)
    collector = str(client.make_url("")).rstrip("/")
    slot = Slot("opted-out")
    async with Pages() as publisher, chromium(**{signal: True}) as browser:
        publisher.documents["/news"] = publisher_page(collector, [slot])
        page = await browser.new_page()
        await page.goto(publisher.base + "/news")
        await page.wait_for_load_state("load")  # the tag has run, and seen the signal
        await page.evaluate("([id, ms]) => holdInView(id, 1, ms)", [slot.ad, 1500])
        await page.close()
    # A control page in a browser without the signal: once its viewable event is stored,
    # anything the opted-out page had sent would have been stored too.
    async with Pages() as publisher, chromium() as browser:
        publisher.documents["/news"] = publisher_page(collector, [Slot("control")])
        page = await browser.new_page()
        await page.goto(publisher.base + "/news")
        await wait_for(sink, "impression", 1)
        await page.evaluate("([id, ms]) => holdInView(id, 1, ms)", ["control", 1500])
        await page.close()
    assert [e["ad"] for e in await wait_for(sink, "viewable", 1)] == ["control"]
    assert {e["ad"] for e in sink.events()} == {"control"}
    # The opted-out page did load the tag, and not one POST came from it: the control's
    # impression and viewable event are the only ones.
    served = metric_value(metrics, "beacon_requests_total", endpoint="ad_tag", outcome="served")
    assert served == 2
    posts = metric_value(metrics, "beacon_requests_total", endpoint="events", outcome="recorded")
    assert posts == 2
