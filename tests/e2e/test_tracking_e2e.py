"""Email and ad tracking end to end: `beacon run`, signed URLs, ClickHouse, `beacon report`.

A simulated email campaign to 1,000 recipients and an ad campaign with two banners, with
fixed numbers of human, proxied, Apple MPP and scanner opens, clicks and conversions; the
report must give exactly those numbers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Iterable, Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import orjson
import pytest

from collector.signing import Keyring
from collector.urls import click_url, pixel_url
from tests.support.beacon_run import Beacon

SECRET = "e2e-secret-0123456789abcdef"
KEYRING = Keyring([("k1", SECRET.encode())])
BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36"
GMAIL = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
LINKS = ("https://shop.example/new", "https://shop.example/sale", "https://shop.example/faq")
RECIPIENTS = [f"r{i:04d}" for i in range(1000)]
EMAIL = {"site": "shop", "campaign": "spring", "message": "m1"}


class SignedBeacon(Beacon):
    """`beacon run` with a signing key and a trusted X-Forwarded-For (to play many clients)."""

    def env(self) -> dict[str, str]:
        return {
            **super().env(),
            "BEACON_SIGNING_KEYS": f"k1:{SECRET}",
            "BEACON_FORWARDED_HEADER": "X-Forwarded-For",
        }


@pytest.fixture
def beacon(tmp_path: Path) -> Iterator[SignedBeacon]:
    with SignedBeacon(tmp_path / "data") as b:
        yield b


async def gather(jobs: Iterable[Awaitable[object]], width: int = 16) -> None:
    """Run request coroutines `width` at a time."""
    pending = list(jobs)
    for i in range(0, len(pending), width):
        await asyncio.gather(*pending[i : i + width])


class Client:
    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self.http, self.base = http, base

    async def pixel(self, url: str, ua: str = BROWSER, ip: str = "203.0.113.9") -> None:
        headers = {"User-Agent": ua, "X-Forwarded-For": ip}
        async with self.http.get(url, headers=headers) as r:
            assert r.status == 200 and len(await r.read()) == 43

    async def click(self, url: str, ua: str = BROWSER, ip: str = "203.0.113.9") -> str:
        """Follows nothing: returns the click id the landing URL received."""
        headers = {"User-Agent": ua, "X-Forwarded-For": ip}
        async with self.http.get(url, headers=headers, allow_redirects=False) as r:
            assert r.status == 302, await r.text()
            return dict(parse_qsl(urlsplit(r.headers["Location"]).query))["bcid"]


async def email_campaign(c: Client) -> None:
    base = c.base
    sends = [{"e": "send", "s": "shop", "c": "spring", "m": "m1", "r": r} for r in RECIPIENTS]
    for i in range(0, 1000, 100):
        async with c.http.post(f"{base}/e", data=orjson.dumps(sends[i : i + 100])) as r:
            assert r.status == 204

    def opened(r: str) -> str:
        return pixel_url(base, KEYRING, "open", recipient=r, **EMAIL)

    def link(r: str, n: int) -> str:
        return click_url(base, KEYRING, LINKS[n], recipient=r, **EMAIL)

    rs = RECIPIENTS
    await gather(c.pixel(opened(r), ip=f"203.0.113.{i % 200}") for i, r in enumerate(rs[:300]))
    await gather(c.pixel(opened(r)) for r in rs[:50])  # opened twice
    await gather(c.pixel(opened(r), GMAIL, "66.249.84.1") for r in rs[300:340])
    await gather(c.pixel(opened(r), "Mozilla/5.0", "17.58.63.10") for r in rs[340:540])
    for r in rs[540:560]:  # link scanners: the open and every link, at once
        await c.pixel(opened(r), ip="40.94.1.1")
        for n in range(3):
            await c.click(link(r, n), ip="40.94.1.1")
    # Forged opens: a valid URL with another recipient id. Recorded, unverified.
    forged = [opened(r).replace("r=r0000", f"r=r{900 + i}") for i, r in enumerate(["r0000"] * 5)]
    await gather(c.pixel(url) for url in forged)

    click_ids: list[str] = []

    async def human_click(r: str, n: int) -> None:
        bcid = await c.click(link(r, n))
        if n == 0 and r < "r0030":
            click_ids.append(bcid)

    await gather(human_click(r, 0) for r in rs[:100])
    await gather(human_click(r, 1) for r in rs[:20])
    await gather(human_click(r, 2) for r in rs[340:350])  # MPP readers click too
    # 30 orders from the first link's landing page; 5 thank-you pages load twice.
    orders = [
        pixel_url(
            base,
            KEYRING,
            "conversion",
            site="shop",
            value="25.50",
            currency="EUR",
            order_id=f"o-{i}",
            click_id=bcid,
        )
        for i, bcid in enumerate(sorted(click_ids))
    ]
    await gather(c.pixel(url) for url in orders + orders[:5])
    stray = pixel_url(
        base, KEYRING, "conversion", site="shop", value="5", currency="EUR", order_id="o-999"
    )
    await c.pixel(stray)  # no click id: belongs to no campaign


async def ad_campaign(c: Client) -> None:
    ads = {"banner-1": (300, 12, 4, "10.00"), "banner-2": (200, 5, 1, "99.99")}
    # Each click from its own address: a different visitor (the id hashes site, IP and UA).
    for n, (ad, (impressions, clicks, conversions, value)) in enumerate(ads.items()):
        ids = {"site": "news", "campaign": "fall", "ad": ad}
        tag = pixel_url(c.base, KEYRING, "impression", **ids)
        await gather(
            c.pixel(f"{tag}&cb={i}", ip=f"198.51.100.{i % 250}") for i in range(impressions)
        )
        link = click_url(c.base, KEYRING, "https://shop.example/fall?utm_source=news", **ids)
        bcids = [await c.click(link, ip=f"192.0.2.{100 * n + i}") for i in range(clicks)]
        for i, bcid in enumerate(bcids[:conversions]):
            url = pixel_url(
                c.base,
                KEYRING,
                "conversion",
                site="shop",
                value=value,
                currency="EUR",
                order_id=f"{ad}-o{i}",
                click_id=bcid,
            )
            await c.pixel(url)


EXPECTED_ROWS = 1000 + (300 + 50 + 40 + 200 + 20 + 5) + (60 + 130) + (35 + 1) + 500 + 17 + 5


def report(b: Beacon, *args: str) -> dict:
    done = b.report("--format", "json", *args)
    assert done.returncode == 0, done.stderr
    return orjson.loads(done.stdout)


async def test_a_simulated_campaign_reports_exactly_the_known_numbers(beacon: SignedBeacon) -> None:
    async with aiohttp.ClientSession(headers={"Content-Type": "application/json"}) as http:
        client = Client(http, beacon.base)
        await email_campaign(client)
        await ad_campaign(client)
    deadline = time.monotonic() + 60
    while int(beacon.query("SELECT count() FROM beacon.events")) < EXPECTED_ROWS:
        assert time.monotonic() < deadline, "events did not all arrive"
        await asyncio.sleep(0.2)
    assert int(beacon.query("SELECT count() FROM beacon.events FINAL")) == EXPECTED_ROWS
    machine = beacon.query(
        "SELECT machine_reason, mail_proxy, count() FROM beacon.events "
        "WHERE event_type = 'open' GROUP BY 1, 2 ORDER BY 1, 2"
    )
    assert machine == "\t\t375\n\tgmail\t40\napple_mpp\tapple\t200\n"
    unverified = beacon.query(
        "SELECT event_type, count() FROM beacon.events WHERE verified = 0 GROUP BY 1 ORDER BY 1"
    )
    assert unverified == "open\t5\nsend\t1000\n"  # the forged opens and the unsigned sends

    spring = report(beacon, "--campaign", "spring", "--verified")
    assert spring == {
        "campaign": "spring",
        "sent": 1000,
        "impressions": 0,
        "invalid_impressions": 0,
        "opens": 610,
        "unique_opens": 560,
        "human_opens": 390,
        "machine_opens": 220,  # 200 Apple MPP + 20 scanners
        "unique_human_opens": 340,
        "proxied_opens": 240,  # 40 via Gmail's proxy (human) + 200 via Apple's
        # The scanners click from Microsoft's cloud (40.94.0.0/16): invalid traffic, data
        # center, left out of the clicks; their burst still makes their opens machine ones.
        "clicks": 130,
        "machine_clicks": 0,
        "unique_clicks": 110,
        "invalid_clicks": 60,
        "ctr": 0.11,
        "click_to_open_rate": round(110 / 560, 4),
        "conversions": 30,  # 35 pixels, 5 repeated order ids
        "conversion_rate": round(30 / 110, 4),
        "revenue": {"EUR": "765.00"},
        # An email campaign has no ad slot for the /a.js tag to measure.
        "measured_impressions": 0,
        "viewable_impressions": 0,
        "viewability_rate": None,
    }
    included = report(beacon, "--campaign", "spring", "--verified", "--include-ivt")
    assert (included["clicks"], included["machine_clicks"]) == (190, 60)  # 20 scanners x 3 links
    assert included["unique_clicks"] == 110 and included["invalid_clicks"] == 60
    everything = report(beacon, "--campaign", "spring", "--sent", "1250")
    assert (everything["opens"], everything["unique_opens"], everything["sent"]) == (615, 565, 1250)
    assert everything["ctr"] == round(110 / 1250, 4)

    fall = report(beacon, "--campaign", "fall", "--verified")
    assert (fall["impressions"], fall["clicks"], fall["unique_clicks"]) == (500, 17, 17)
    assert (fall["ctr"], fall["conversions"], fall["revenue"]) == (0.034, 5, {"EUR": "139.99"})
    by_ad = {row["ad"]: row for row in fall["by_ad"]}
    assert [by_ad[a]["ctr"] for a in ("banner-1", "banner-2")] == [0.04, 0.025]
    assert [by_ad[a]["conversions"] for a in ("banner-1", "banner-2")] == [4, 1]
    assert by_ad["banner-2"]["revenue"] == {"EUR": "99.99"}

    attribution = {(r["campaign"], r["ad"]): r for r in report(beacon, "--attribution")}
    assert attribution["spring", ""]["attributed"] == 30
    assert attribution["", ""]["attributed"] == 0  # the stray order
    table = beacon.report("--campaign", "spring")
    assert "campaign spring" in table.stdout and "765.00 EUR" in table.stdout
    assert beacon.stop() == 0
