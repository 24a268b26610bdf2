"""What the simulator sends, decided up front from a seed, and the numbers it must produce.

Each person or visitor is one script of requests sent in order (a click before the
conversion that names it; a web visitor's visits, apart by pauses); scripts run side by side.
The truth is counted from the plan as it is made, with the definitions of docs/reports.md
("Campaign report", "Invalid traffic", "Web analytics"), not from anything the collector
answers. Web visitors: collector/simulate/web.py; pages with the ad tag:
collector/simulate/ad_tag.py; who sends invalid traffic: collector/simulate/invalid.py.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from collector.simulate.ad_tag import AdTagPlanner
from collector.simulate.invalid import CRAWLER, DATA_CENTER_IP, PREFETCH_HEADERS
from collector.simulate.steps import BROWSER, Script, Step
from collector.simulate.truth import Truth
from collector.simulate.visits import goal_list
from collector.simulate.web import WebPlanner

# Apple Mail Privacy Protection's prefetch sends a bare "Mozilla/5.0" (SocketLabs,
# "Identifying Apple MPP opens"): what Apple sends, whatever Beacon's rules make of it.
APPLE_MPP = "Mozilla/5.0"
GMAIL = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
BOT = "curl/8.5.0"
READER_AGENTS = {"apple_mpp": APPLE_MPP, "gmail": GMAIL, "person": BROWSER}
SHOP = "sim-shop"
NEWS = "sim-news"
NEWS_HOST = "news.sim.example"
WEB_SITES = (("sim-blog", "blog.sim.example"), ("sim-docs", "docs.sim.example"))
PRICES = ("9.99", "24.50", "120.00")
INVALID_AMOUNTS = (
    "crawler_impressions", "data_center_impressions", "data_center_clicks",
    "data_center_tag_impressions", "prefetch_impressions", "duplicate_clickers",
)  # fmt: skip


@dataclass(frozen=True)
class Config:
    """The mix to send; rates are fractions of the people who could."""

    seed: int = 1
    campaigns: int = 2  # email campaigns, one message each
    recipients: int = 200  # per email campaign
    links: int = 3  # per message (at least 2: the scanner rule needs two)
    open_rate: float = 0.5
    reopen_rate: float = 0.2
    click_rate: float = 0.4  # of those who opened
    conversion_rate: float = 0.3  # of those who clicked
    reload_rate: float = 0.2  # thank-you pages loaded twice: the same order again
    mpp_share: float = 0.15  # recipients on Apple Mail Privacy Protection
    gmail_share: float = 0.1  # through Gmail's image proxy
    bot_share: float = 0.02  # a program fetches the pixel
    scanner_share: float = 0.03  # a link scanner opens and clicks everything (at least one)
    ad_campaigns: int = 1
    ads: int = 2  # per ad campaign
    impressions: int = 150  # per ad
    ad_ctr: float = 0.06
    tag_impressions: int = 60  # per ad: pages where the /a.js tag measured the slot
    unmeasured_share: float = 0.1  # of those, browsers that cannot observe it (measured "0")
    viewable_rate: float = 0.6  # of the measured ones, those that met their kind's MRC rule
    # Invalid traffic per ad (docs/reports.md "Invalid traffic"), besides the link checker's
    # click: what the ad figures leave out.
    crawler_impressions: int = 3  # ad-server pixels a crawler fetched (AhrefsBot)
    data_center_impressions: int = 3  # ad-server pixels fetched from a cloud server's address
    data_center_clicks: int = 1  # clicks from that address
    data_center_tag_impressions: int = 2  # /a.js sessions there: impression and viewable event
    prefetch_impressions: int = 3  # ad-server pixels a browser fetched ahead (Sec-Purpose)
    duplicate_clickers: int = 2  # of the people who click an ad, those who click it twice
    visitors: int = 40  # per web site
    max_views: int = 4  # page views per visit, 1 to this (and a thank-you page after a signup)
    max_visits: int = 3  # visits per visitor, 1 to this
    # Of visitors after a visit, those who come back: after a pause of 2 x visit_gap_s + 1 s,
    # so with the collector's BEACON_VISIT_GAP_S (1800 s unless set) a run takes that long.
    return_rate: float = 0.0
    visit_gap_s: float = 1800.0  # the collector's BEACON_VISIT_GAP_S
    event_rate: float = 0.1  # page views followed by a custom `download` event
    signup_rate: float = 0.15  # visits that end in a `signup` event and the /thanks page
    goals: str = ""  # the collector's BEACON_GOALS ("": every custom event is a goal)


class Planner:
    """`signed`: the collector has signing keys, so clicks go through /c and a conversion
    names its click by id; without, clicks are POSTed and conversions name their campaign."""

    def __init__(self, config: Config, signed: bool) -> None:
        if config.links < 2:
            raise ValueError("links: at least 2 (a scanner clicks every link of a message)")
        for name in INVALID_AMOUNTS:
            if getattr(config, name) < 0:
                raise ValueError(f"{name}: 0 or more")
        self.config = config
        self.signed = signed
        self.rng = random.Random(config.seed)
        self.truth = Truth(goal_list(config.goals))
        self.sends: list[Script] = []
        self.scripts: list[Script] = []

    def plan(self) -> tuple[list[list[Script]], Truth]:
        """Scripts in two phases: what the sender reports first, then everything else."""
        for n in range(self.config.campaigns):
            self.email_campaign(n)
        for n in range(self.config.ad_campaigns):
            self.ad_campaign(n)
        web = WebPlanner(self.config, self.rng, self.truth)
        for site, host in WEB_SITES:
            self.scripts += web.site(site, host)
        # After the web visitors, so that adding them left every earlier choice of a seed as
        # it was.
        for n in range(self.config.ad_campaigns):
            self.ad_tag(n)
        return [self.sends, self.scripts], self.truth

    def email_campaign(self, n: int) -> None:
        c = self.config
        campaign = f"sim-mail-{n}"
        ids = {"site": SHOP, "campaign": campaign, "message": f"m-{c.seed}-{n}"}
        recipients = [f"u{c.seed}-{n}-{i:04d}" for i in range(c.recipients)]
        # The sender reports what it sent before anything else happens: the scanner rule
        # looks for bursts just after the send.
        sends = [{"e": "send", "s": SHOP, "c": campaign, "m": ids["message"], "r": r}
                 for r in recipients]  # fmt: skip
        self.sends += [[Step("post", {"events": sends[i : i + 100]})]
                       for i in range(0, len(sends), 100)]  # fmt: skip
        self.truth.sent(campaign, SHOP, ids["message"], recipients)
        links = [f"https://shop.sim.example/{n}/link-{k}" for k in range(c.links)]
        for i, r in enumerate(recipients):
            person = {**ids, "recipient": r}
            roll = self.rng.random()
            shares = (c.scanner_share, c.mpp_share, c.bot_share, c.gmail_share)
            edges = [sum(shares[: k + 1]) for k in range(len(shares))]
            # Who this recipient is, chosen here: the truth records that choice per request.
            if i == 0 or roll < edges[0]:
                self.scanner(person, links)
            elif roll < edges[1]:
                self.reader(person, links, "apple_mpp")
            elif roll < edges[2]:
                self.scripts.append([Step("pixel", {"kind": "open", **person}, BOT)])
                self.truth.open(person, "bot")
            elif roll < edges[3]:
                self.reader(person, links, "gmail")
            else:
                self.reader(person, links, "person")

    def scanner(self, person: dict[str, str], links: list[str]) -> None:
        """The open and every link of the message at once, right after delivery."""
        steps = [Step("pixel", {"kind": "open", **person})]
        steps += [Step("click", {"dest": link, **person}) for link in links]
        self.scripts.append(steps)
        self.truth.open(person, "scanner")
        for _ in links:
            self.truth.click(person, "scanner")

    def reader(self, person: dict[str, str], links: list[str], opener: str) -> None:
        """Someone who may open (as `opener`: themselves, through Gmail's proxy, or Apple's
        prefetch on their behalf), click, and buy."""
        c = self.config
        ua = READER_AGENTS[opener]
        prefetch = opener == "apple_mpp"  # Apple fetches every message on arrival, read or not
        if not prefetch and self.rng.random() >= c.open_rate:
            return
        steps = [Step("pixel", {"kind": "open", **person}, ua)]
        self.truth.open(person, opener)
        if not prefetch and self.rng.random() < c.reopen_rate:
            steps.append(Step("pixel", {"kind": "open", **person}, ua))
            self.truth.open(person, opener)
        if self.rng.random() < c.click_rate:
            # People click some links, never every one: that is what a scanner does.
            chosen = self.rng.sample(links, self.rng.randint(1, len(links) - 1))
            for link in chosen:
                steps.append(Step("click", {"dest": link, **person}))
                self.truth.click(person, "person")
            if self.rng.random() < c.conversion_rate:
                steps += self.order(person["campaign"], "", f"o-{person['recipient']}")
        self.scripts.append(steps)

    def order(self, campaign: str, ad: str, order_id: str) -> Script:
        value = self.rng.choice(PRICES)
        pixel = {"site": SHOP, "value": value, "currency": "EUR", "order_id": order_id,
                 "campaign": campaign, "ad": ad}  # fmt: skip
        reloads = 2 if self.rng.random() < self.config.reload_rate else 1
        stored_as = "" if self.signed else campaign
        self.truth.conversion(campaign, ad, SHOP, Decimal(value), reloads, stored_as)
        return [Step("convert", pixel) for _ in range(reloads)]

    def ad_campaign(self, n: int) -> None:
        c = self.config
        campaign = f"sim-ads-{n}"
        for k in range(c.ads):
            ids = {"site": NEWS, "campaign": campaign, "ad": f"banner-{k}"}
            shown = [Step("pixel", {"kind": "impression", "cb": str(i), **ids})
                     for i in range(c.impressions)]  # fmt: skip
            self.scripts.append(shown)
            self.truth.impressions(NEWS, campaign, ids["ad"], c.impressions)
            dest = f"https://shop.sim.example/ads/{n}/{k}"
            for i in range(max(1, round(c.impressions * c.ad_ctr))):
                ua = f"{BROWSER} sim-ad/{c.seed}-{n}-{k}-{i}"  # one visitor per clicker
                steps = [Step("click", {"dest": dest, **ids}, ua)]
                self.truth.click({**ids, "visitor": ua}, "person")
                # The first ones click again at once (a double click), from the same browser
                # and address: the same visitor, milliseconds apart.
                if i < c.duplicate_clickers:
                    steps.append(Step("click", {"dest": dest, **ids}, ua))
                    self.truth.click({**ids, "visitor": ua}, "person", again=True)
                if self.rng.random() < c.conversion_rate:
                    steps += self.order(campaign, ids["ad"], f"o-ad-{c.seed}-{n}-{k}-{i}")
                self.scripts.append(steps)
            self.scripts.append([Step("click", {"dest": dest, **ids}, BOT)])  # a link checker
            self.truth.click({**ids, "visitor": BOT}, "bot")
            self.scripts += self.invalid_ad_traffic(ids, dest)

    def invalid_ad_traffic(self, ids: dict[str, str], dest: str) -> list[Script]:
        """An ad's pixels and clicks that nobody saw or made: a crawler's, a cloud server's
        (collector/simulate/invalid.py) and a browser's prefetches; a script each."""
        c = self.config
        site, campaign, ad = ids["site"], ids["campaign"], ids["ad"]

        def pixels(count: int, tag: str, **sent_as: Any) -> Script:
            return [Step("pixel", {"kind": "impression", "cb": f"{tag}-{i}", **ids}, **sent_as)
                    for i in range(count)]  # fmt: skip

        crawler = pixels(c.crawler_impressions, "crawler", ua=CRAWLER)
        self.truth.impressions(site, campaign, ad, c.crawler_impressions, "bot")
        cloud = pixels(c.data_center_impressions, "dc", ip=DATA_CENTER_IP)
        self.truth.impressions(site, campaign, ad, c.data_center_impressions, "data_center")
        for _ in range(c.data_center_clicks):
            cloud.append(Step("click", {"dest": dest, **ids}, ip=DATA_CENTER_IP))
            self.truth.click({**ids, "visitor": f"{DATA_CENTER_IP} {BROWSER}"}, "data_center")
        ahead = pixels(c.prefetch_impressions, "prefetch", headers=dict(PREFETCH_HEADERS))
        self.truth.impressions(site, campaign, ad, c.prefetch_impressions, "prefetch")
        return [script for script in (crawler, cloud, ahead) if script]

    def ad_tag(self, n: int) -> None:
        """The campaign's ads on pages with the /a.js tag, besides the ad server's pixels."""
        tag = AdTagPlanner(self.config, self.rng, self.truth)
        for k in range(self.config.ads):
            self.scripts += tag.ad(NEWS, NEWS_HOST, f"sim-ads-{n}", f"banner-{k}")


def plan(config: Config, signed: bool) -> tuple[list[list[Script]], Truth]:
    return Planner(config, signed).plan()
