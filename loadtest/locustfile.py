"""Locust users for Beacon: email, web and ad traffic in realistic proportions.

    make loadtest                          # headless, bounded, against a local `beacon run`
    .venv/bin/python -m locust -f loadtest/locustfile.py --host http://127.0.0.1:8080  # web UI

(`python -m` from the repository root, so `loadtest.*` imports.) Each simulated user keeps
one identity (user agent, site, recipient), so visitor ids repeat as in real traffic. Users
by weight: web visitors 6, ad slots 3, email readers 1. Within each, the task weights follow
common industry rates: mail click-to-open ~15 %, display ad click-through ~1.5 %, ~20 % of
ad clicks converting; pages send a batch of their own events about once in four views.

Web pages load the /t.js snippet once a visit (a reload revalidates it: 304); the snippet
sends the page view and, when the page is left, its engagement by POST /e. One visitor in ten
has no JavaScript: the <noscript> pixel counts the page. About 5 % of visitors and ad slots
send Global Privacy Control: the snippet then sends nothing, and the collector drops their
page-view pixels and impressions by design (beacon_events_dropped_total{reason="dnt"}).
Clicks go through signed /c links (302, not followed); link checkers probe them with HEAD,
which records nothing, and browsers prefetch them, which records a click flagged with its
purpose. loadtest/traffic.py says what each request must store; loadtest/locust_run.py
compares that with the store.
"""

from __future__ import annotations

import random
import uuid

from locust import between, task

from loadtest.traffic import (
    BATCH_NOTE,
    GPC_DROP_NOTE,
    BeaconUser,
    plain_query,
)

BROWSERS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; SM-S921B) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:127.0) Gecko/20100101 Firefox/127.0",
)
# How mail clients fetch images: Gmail through its proxy, Apple Mail (often prefetched by
# Mail Privacy Protection), Outlook desktop.
MAIL_CLIENTS = (
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)",
    "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17726; Pro)",
)
SITES = ("shop", "blog", "news")
SECTIONS = ("home", "product", "category", "article", "checkout")
CAMPAIGNS = ("spring-sale", "welcome", "newsletter-24", "winback")
ADS = ("banner-1", "banner-2", "video-3", "native-4")
GPC_SHARE = 0.05
NO_SCRIPT_SHARE = 0.1
RELOAD_SHARE = 0.1  # page views that revalidate the cached snippet


def gpc_headers() -> dict[str, str]:
    return {"Sec-GPC": "1"} if random.random() < GPC_SHARE else {}


class EmailReader(BeaconUser):
    """Opens a campaign mail now and then, and clicks through about one open in six."""

    weight = 1
    wait_time = between(5, 30)

    def on_start(self) -> None:
        self.user_agent = random.choice(MAIL_CLIENTS)
        self.ids = {
            "site": "shop",
            "campaign": random.choice(CAMPAIGNS),
            "message": f"m-{random.randrange(5000)}",
            "recipient": f"u-{random.randrange(1_000_000)}",
        }
        self.link = f"https://shop.example/{self.ids['campaign']}?utm_source=mail"

    @task(6)
    def open(self) -> None:
        self.pixel("/p.gif open (signed)", self.signed_pixel_query("open", **self.ids), "open")

    @task(1)
    def click_link(self) -> None:
        self.click("/c click (mail)", self.link, self.ids)

    @task(1)
    def link_checker(self) -> None:
        # A mail security scanner checks where the link goes before the reader sees it.
        self.click("/c (link checker)", self.link, self.ids, probe="head")


class WebVisitor(BeaconUser):
    """Reads pages of one site with the /t.js snippet, or the <noscript> pixel without JS."""

    weight = 6
    wait_time = between(3, 15)

    def on_start(self) -> None:
        self.user_agent = random.choice(BROWSERS)
        self.site = random.choice(SITES)
        self.privacy = gpc_headers()
        self.scripted = random.random() >= NO_SCRIPT_SHARE
        self.etag = ""
        self.page = ""

    @task(3)
    def page_view(self) -> None:
        referrer = self.page
        section = random.choice(SECTIONS)
        self.page = f"https://{self.site}.example/{section}/{random.randrange(500)}"
        if random.random() < 0.2:  # some arrive from a campaign link
            self.page += f"?utm_source=mail&utm_campaign={random.choice(CAMPAIGNS)}"
        if not self.scripted:
            self.noscript_view(referrer, section)
            return
        if not self.etag:
            self.etag = self.script("/t.js")
        elif random.random() < RELOAD_SHARE:
            self.script("/t.js (revalidated: 304)", self.etag)
        if self.privacy:
            return  # the snippet sees Global Privacy Control and sends nothing at all
        if referrer:  # leaving the previous page: its engaged time and scroll depth
            props = {
                "scroll_pct": random.randrange(10, 101),
                "engaged_ms": random.randrange(30_000),
            }
            engagement = {"e": "engagement", "s": self.site, "u": referrer, "p": props}
            self.post_events("/e engagement (snippet)", [engagement])
        view = {"e": "pageview", "s": self.site, "u": self.page, "p": {"screen_px": "1280x720"}}
        self.post_events("/e pageview (snippet)", [{**view, "ref": referrer} if referrer else view])

    def noscript_view(self, referrer: str, section: str) -> None:
        params = {"s": self.site, "u": self.page, "ref": referrer, "p.section": section}
        headers = {"Referer": self.page, **self.privacy}
        if self.privacy:
            self.pixel(
                "/p.gif pageview (noscript, GPC)", plain_query(params), "pageview",
                stores=False, note=GPC_DROP_NOTE, headers=headers,
            )  # fmt: skip
        else:
            self.pixel(
                "/p.gif pageview (noscript)", plain_query(params), "pageview", headers=headers
            )

    @task(1)
    def custom_events(self) -> None:
        if not (self.scripted and self.page):
            return
        # The site's own code reports a few actions at once (custom events are not passive:
        # with GPC the collector keeps them without visitor id or IP).
        actions = ("scroll_75", "video_play", "add_to_cart", "signup")
        batch = [
            {"e": "custom", "s": self.site, "u": self.page,
             "p": {"action": random.choice(actions), "step": str(random.randrange(1, 5))}}
            for _ in range(random.choice((1, 1, 1, 2, 3)))
        ]  # fmt: skip
        self.post_events("/e custom x1-3 (site code)", batch, BATCH_NOTE, self.privacy)


class AdSlot(BeaconUser):
    """An ad slot on a publisher page: impressions, rare clicks, rarer conversions."""

    weight = 3
    wait_time = between(1, 6)

    def on_start(self) -> None:
        self.user_agent = random.choice(BROWSERS)
        self.campaign = random.choice(CAMPAIGNS)
        self.privacy = gpc_headers()
        self.click_id = ""

    def ids(self) -> dict[str, str]:
        return {"site": "news", "campaign": self.campaign, "ad": random.choice(ADS)}

    @task(400)
    def impression(self) -> None:
        # The ad server adds a cache buster, which is not signed.
        query = self.signed_pixel_query("impression", **self.ids())
        query += f"&cb={random.randrange(10**9)}"
        if self.privacy:  # the ad tag does not look at GPC; the collector does
            self.pixel(
                "/p.gif impression (signed, GPC)", query, "impression",
                stores=False, note=GPC_DROP_NOTE, headers=self.privacy,
            )  # fmt: skip
        else:
            self.pixel("/p.gif impression (signed)", query, "impression")

    @task(6)
    def click_ad(self) -> None:
        # With GPC a click is kept, without visitor id or IP.
        landing = f"https://shop.example/{self.campaign}"
        click_id = self.click("/c click (ad)", landing, self.ids(), headers=self.privacy)
        self.click_id = click_id or self.click_id

    @task(4)
    def prefetch(self) -> None:
        # Speculation rules on the publisher's page prefetch the ad's link (~1 % of views).
        landing = f"https://shop.example/{self.campaign}"
        self.click("/c (prefetch)", landing, self.ids(), probe="prefetch")

    @task(1)
    def conversion(self) -> None:
        value = f"{random.uniform(5, 200):.2f}"
        params = {"e": "conversion", "s": "shop", "v": value, "cur": "EUR",
                  "o": f"o-{uuid.uuid4().hex[:12]}"}  # fmt: skip
        if self.click_id:  # the landing page kept the click id: the order names the click
            params["bcid"] = self.click_id
        else:
            params.update(c=self.campaign, ad=random.choice(ADS))
        self.pixel("/p.gif conversion", plain_query(params), "conversion", headers=self.privacy)
