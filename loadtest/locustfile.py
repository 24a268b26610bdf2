"""Locust users for Beacon: email, web and ad traffic in realistic proportions.

    make loadtest                                         # headless, bounded, local `beacon run`
    make loadtest HOST=http://collector.internal:8080     # any collector or cluster
    locust -f loadtest/locustfile.py --host http://127.0.0.1:8080   # the web UI

Each simulated user keeps one identity (user agent, site, recipient), so visitor ids repeat as
they do in real traffic. Users by weight: web visitors 6, ad slots 3, email readers 1. Within
each, the task weights follow common industry rates: mail click-to-open ~15 %, display ad
click-through ~1.5 % and ~20 % of ad clicks converting; page views outnumber beacon events
about 3 to 1. About 5 % of web visitors send Global Privacy Control, so some page views are
dropped by design (beacon_events_dropped_total{reason="dnt"}), not lost.

Clicks are recorded with the pixel (`e=click`); the signed /c redirect needs the collector's
signing key and is left to a later load profile.
"""

from __future__ import annotations

import random
from urllib.parse import urlencode

import orjson
from locust import FastHttpUser, between, task

GIF_BYTES = 43

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


class BeaconUser(FastHttpUser):
    """Shared checks: the pixel always answers 200 with the GIF; POST /e answers 204."""

    abstract = True
    user_agent = BROWSERS[0]

    def pixel(
        self, name: str, params: dict[str, str], headers: dict[str, str] | None = None
    ) -> None:
        sent = {"User-Agent": self.user_agent, **(headers or {})}
        with self.client.get(
            "/p.gif?" + urlencode(params), headers=sent, name=name, catch_response=True
        ) as r:
            if r.status_code != 200 or len(r.content or b"") != GIF_BYTES:
                r.failure(f"pixel answered {r.status_code} with {len(r.content or b'')} bytes")

    def beacon(self, name: str, events: list[dict], headers: dict[str, str]) -> None:
        # navigator.sendBeacon with a string sends text/plain.
        sent = {"User-Agent": self.user_agent, "Content-Type": "text/plain", **headers}
        with self.client.post(
            "/e", data=orjson.dumps(events).decode(), headers=sent, name=name, catch_response=True
        ) as r:
            if r.status_code != 204:
                r.failure(f"POST /e answered {r.status_code}: {(r.content or b'')[:100]!r}")


class EmailReader(BeaconUser):
    """Opens a campaign mail now and then, and clicks through about one open in six."""

    weight = 1
    wait_time = between(5, 30)

    def on_start(self) -> None:
        self.user_agent = random.choice(MAIL_CLIENTS)
        self.recipient = f"u-{random.randrange(1_000_000)}"
        self.campaign = random.choice(CAMPAIGNS)
        self.message = f"m-{random.randrange(5000)}"

    def ids(self) -> dict[str, str]:
        return {"s": "shop", "c": self.campaign, "m": self.message, "r": self.recipient}

    @task(6)
    def open(self) -> None:
        self.pixel("/p.gif open", {"e": "open", **self.ids()})

    @task(1)
    def click(self) -> None:
        self.pixel("/p.gif click (mail)", {"e": "click", **self.ids()})


class WebVisitor(BeaconUser):
    """Reads pages of one site; the page's script sends a few custom events by beacon."""

    weight = 6
    wait_time = between(3, 15)

    def on_start(self) -> None:
        self.user_agent = random.choice(BROWSERS)
        self.site = random.choice(SITES)
        self.privacy = {"Sec-GPC": "1"} if random.random() < 0.05 else {}
        self.page = f"https://{self.site}.example/"

    @task(3)
    def page_view(self) -> None:
        referrer = self.page
        section = random.choice(SECTIONS)
        self.page = f"https://{self.site}.example/{section}/{random.randrange(500)}"
        if random.random() < 0.2:  # some arrive from a campaign link
            self.page += f"?utm_source=mail&utm_campaign={random.choice(CAMPAIGNS)}"
        headers = {"Referer": self.page, **self.privacy}
        params = {"s": self.site, "u": self.page, "ref": referrer, "p.section": section}
        self.pixel("/p.gif pageview", params, headers)

    @task(1)
    def custom_events(self) -> None:
        actions = ("scroll_75", "video_play", "add_to_cart", "signup")
        events = [
            {"e": "custom", "s": self.site, "u": self.page,
             "p": {"action": random.choice(actions), "step": random.randrange(1, 5)}}
            for _ in range(random.choice((1, 1, 1, 2, 3)))
        ]  # fmt: skip
        self.beacon("/e beacon", events, {"Referer": self.page, **self.privacy})


class AdSlot(BeaconUser):
    """An ad slot on a publisher page: impressions, rare clicks, rarer conversions."""

    weight = 3
    wait_time = between(1, 6)

    def on_start(self) -> None:
        self.user_agent = random.choice(BROWSERS)
        self.campaign = random.choice(CAMPAIGNS)

    def ids(self) -> dict[str, str]:
        return {"s": "ads", "c": self.campaign, "ad": random.choice(ADS)}

    @task(400)
    def impression(self) -> None:
        self.pixel("/p.gif impression", {"e": "impression", **self.ids()})

    @task(6)
    def click(self) -> None:
        self.pixel("/p.gif click (ad)", {"e": "click", **self.ids()})

    @task(1)
    def conversion(self) -> None:
        value = f"{random.uniform(5, 200):.2f}"
        params = {"e": "conversion", **self.ids(), "p.value": value, "p.currency": "EUR"}
        self.pixel("/p.gif conversion", params)
