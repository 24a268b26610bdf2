"""Web visitors of the simulation: who they are, where they come from, what they do.

Every fact the web truth counts is a choice made here and written down as a literal: which
address (and so which country) a visitor has, which browser, which referrer and what kind of
source it is. Nothing is worked out with Beacon's own rules (source groups, country lookup,
user agent parsing), so a rule that gets one wrong makes a report disagree with the truth.
"""

from __future__ import annotations

import ipaddress
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from collector.simulate.steps import Script, Step
from collector.simulate.truth import Truth
from collector.simulate.visits import Visit

T = TypeVar("T")
PAGES = ("/", "/post-1", "/post-2", "/post-3", "/pricing", "/about")
PAGE_WEIGHTS = (8, 5, 4, 3, 2, 1)
THANKS = "/thanks"  # the page after a signup: a page goal
SIGNUP = "signup"  # a custom event that is a goal
DOWNLOAD = "download"  # a custom event that is a goal only when every custom event is one

# Client addresses: networks, each inside one block of the country data set the collector
# ships (ip-location-db geo-whois-asn-country 2.3.2026061719, ranges checked by hand), with
# that block's country. Visitor k from a network has its (k+1)-th address, so no two share
# one. 10.1.0.0/16 is private: no country.
NETWORKS = (  # (network, country, weight)
    ("73.0.0.0/16", "US", 6),
    ("84.128.0.0/16", "DE", 3),
    ("2a02:8100::/64", "DE", 2),  # IPv6
    ("86.0.0.0/16", "GB", 3),
    ("90.0.0.0/16", "FR", 2),
    ("126.0.0.0/16", "JP", 2),
    ("49.32.0.0/16", "IN", 2),
    ("152.240.0.0/16", "BR", 1),
    ("1.120.0.0/16", "AU", 1),
    ("10.1.0.0/16", "", 1),
)


@dataclass(frozen=True)
class Agent:
    """A browser's user agent, with what ua-parser 1.0 names its browser and OS (checked
    once with ua_parser.parse) and the kind of device it runs on."""

    ua: str
    device_type: str
    browser: str
    os: str
    weight: int


AGENTS = (
    Agent("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/124.0.0.0 Safari/537.36", "desktop", "Chrome", "Windows", 6),
    Agent("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.67", "desktop", "Edge", "Windows", 2),
    Agent("Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0",
          "desktop", "Firefox", "Windows", 2),
    Agent("Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
          "desktop", "Firefox", "Linux", 1),
    Agent("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like "
          "Gecko) Version/17.4 Safari/605.1.15", "desktop", "Safari", "Mac OS X", 3),
    Agent("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, "
          "like Gecko) Version/17.4 Mobile/15E148 Safari/604.1", "mobile", "Mobile Safari",
          "iOS", 4),
    Agent("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/124.0.6367.82 Mobile Safari/537.36", "mobile", "Chrome Mobile", "Android", 3),
    Agent("Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
          "Gecko) Version/17.4 Mobile/15E148 Safari/604.1", "tablet", "Mobile Safari", "iOS", 1),
    # A Galaxy Tab S9: Android without "Mobile" in the agent.
    Agent("Mozilla/5.0 (Linux; Android 13; SM-X710) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/124.0.6367.82 Safari/537.36", "tablet", "Chrome", "Android", 1),
)  # fmt: skip
# A search engine's crawler loads every page: page views, but no visitor and no visit.
CRAWLER = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
CRAWLER_IP = "66.249.66.1"


@dataclass(frozen=True)
class Landing:
    """How a visit arrives: the referrer its first page sends ("{own}": the site's own host)
    and that page's query, with what docs/reports.md's source rules make of them, worked
    out by hand."""

    referrer: str
    query: str
    source: str
    referrer_host: str
    utm: tuple[str, str, str]  # source, medium, campaign, decoded
    weight: int


NO_UTM = ("", "", "")
LANDINGS = (
    Landing("", "", "direct", "", NO_UTM, 6),
    Landing("https://www.google.com/", "", "search", "google.com", NO_UTM, 6),
    Landing("https://duckduckgo.com/", "", "search", "duckduckgo.com", NO_UTM, 2),
    Landing("https://www.bing.com/", "", "search", "bing.com", NO_UTM, 1),
    Landing("https://t.co/x", "", "social", "t.co", NO_UTM, 2),
    Landing("https://m.facebook.com/", "", "social", "m.facebook.com", NO_UTM, 1),  # a subdomain
    Landing("https://news.ycombinator.com/item", "", "social", "news.ycombinator.com", NO_UTM, 1),
    Landing("https://mail.google.com/", "", "email", "mail.google.com", NO_UTM, 1),  # webmail
    Landing("https://news.example.org/a", "", "other", "news.example.org", NO_UTM, 2),
    Landing("", "utm_source=newsletter&utm_medium=email&utm_campaign=fall", "email", "",
            ("newsletter", "email", "fall"), 3),
    # The medium is compared in lower case; the campaign is decoded.
    Landing("", "utm_source=weekly&utm_medium=Newsletter&utm_campaign=spring%20sale", "email", "",
            ("weekly", "Newsletter", "spring sale"), 1),
    # A social UTM link on a site that is no social network: the medium decides.
    Landing("https://news.example.org/a", "utm_source=mastodon&utm_medium=social&"
            "utm_campaign=launch", "social", "news.example.org", ("mastodon", "social", "launch"),
            1),
    # No referrer but a utm_source: not direct.
    Landing("", "utm_source=partner&utm_campaign=fall", "other", "", ("partner", "", "fall"), 1),
    # The site's own pages (a tab left open past the visit gap), also as www.: no referrer.
    Landing("https://{own}/post-1", "", "direct", "", NO_UTM, 1),
    Landing("https://www.{own}/about", "", "direct", "", NO_UTM, 1),
)  # fmt: skip


class Addresses:
    """A new address from a network each time: every visitor has an address of their own."""

    def __init__(self) -> None:
        self.used: Counter[str] = Counter()

    def take(self, network: str) -> str:
        self.used[network] += 1
        found = ipaddress.ip_network(network)
        if self.used[network] >= found.num_addresses - 1:
            raise ValueError(f"visitors: more than {network} has addresses for")
        return str(found[self.used[network]])


class WebConfig(Protocol):
    """What the web visitors are made of: the simulation's Config (collector/simulate/plan.py)."""

    @property
    def visitors(self) -> int: ...
    @property
    def max_views(self) -> int: ...
    @property
    def max_visits(self) -> int: ...
    @property
    def return_rate(self) -> float: ...
    @property
    def visit_gap_s(self) -> float: ...
    @property
    def event_rate(self) -> float: ...
    @property
    def signup_rate(self) -> float: ...


class WebPlanner:
    """The visitors of web sites: one script each, visits apart by a pause longer than the
    visit gap."""

    def __init__(self, config: WebConfig, rng: random.Random, truth: Truth) -> None:
        self.config = config
        self.rng = rng
        self.truth = truth
        self.addresses = Addresses()
        self.landed: Counter[str] = Counter()  # visits of each site so far

    def pick(self, table: Sequence[T], weights: list[int], n: int) -> T:
        """The n-th entry for the first ones, so that a site with enough visitors has each;
        then by weight."""
        return table[n] if n < len(table) else self.rng.choices(table, weights)[0]

    def site(self, site: str, host: str) -> list[Script]:
        scripts = [self.crawler(site, host)]
        scripts += [self.visitor(site, host, v) for v in range(self.config.visitors)]
        return scripts

    def crawler(self, site: str, host: str) -> Script:
        """Every page once, with no referrer and no engagement (it runs no script)."""
        who = f"{CRAWLER_IP} {CRAWLER}"
        steps = []
        for path in PAGES:
            url = f"https://{host}{path}"
            steps.append(Step("pixel", {"kind": "", "s": site, "u": url}, CRAWLER, CRAWLER_IP))
            self.truth.pageview(site, url, "", who)
        return steps

    def visitor(self, site: str, host: str, n: int) -> Script:
        c = self.config
        network, country, _ = self.pick(NETWORKS, [w for *_, w in NETWORKS], n)
        agent = self.pick(AGENTS, [a.weight for a in AGENTS], n)
        ip = self.addresses.take(network)
        who = f"{ip} {agent.ua}"  # the cookieless id hashes site, address and agent
        steps: Script = []
        for k in range(c.max_visits):
            if k:  # a returning visitor: back after more than the visit gap
                steps.append(Step("pause", {"seconds": 2 * c.visit_gap_s + 1}))
            landing = self.pick(LANDINGS, [w.weight for w in LANDINGS], self.landed[site])
            self.landed[site] += 1
            dims = {
                "site": site, "source": landing.source, "referrer_host": landing.referrer_host,
                "utm_source": landing.utm[0], "utm_medium": landing.utm[1],
                "utm_campaign": landing.utm[2], "country": country,
                "device_type": agent.device_type, "browser": agent.browser, "os": agent.os,
            }  # fmt: skip
            visit = self.truth.web.visit(Visit(who, f"{site}/{n}/{k}", dims))
            steps += self.visit(visit, host, landing, agent.ua, ip)
            if self.rng.random() >= c.return_rate:
                break
        return steps

    def visit(self, visit: Visit, host: str, landing: Landing, ua: str, ip: str) -> Script:
        """Page views, each reached from the one before, each followed by its engagement
        report; now and then a download; some end in a signup and its thank-you page."""
        c = self.config
        site = visit.dims["site"]
        steps: Script = []
        referrer = landing.referrer.format(own=host)
        url = ""

        def event(name: str) -> None:
            custom = {"e": "custom", "s": site, "u": url, "p": {"event": name}}
            steps.append(Step("post", {"events": [custom]}, ua, ip))
            self.truth.custom(site)
            visit.events.append(name)

        def page(path: str, query: str = "") -> None:
            nonlocal referrer, url
            url = f"https://{host}{path}" + (f"?{query}" if query else "")
            view = {"kind": "", "s": site, "u": url, "ref": referrer}
            steps.append(Step("pixel", view, ua, ip, mark="" if visit.pages else visit.mark))
            self.truth.pageview(site, url, referrer, visit.visitor)
            visit.pages.append(path)
            if self.rng.random() < c.event_rate:
                event(DOWNLOAD)
            engaged_ms, scroll = self.rng.randint(500, 90_000), self.rng.randrange(101)
            report = {"e": "engagement", "s": site, "u": url,
                      "p": {"engaged_ms": engaged_ms, "scroll_pct": scroll}}  # fmt: skip
            steps.append(Step("post", {"events": [report]}, ua, ip))
            self.truth.engagement(site, url, scroll)
            visit.engaged_ms += engaged_ms
            referrer = url  # the next page is reached from this one

        page(self.rng.choices(PAGES, PAGE_WEIGHTS)[0], landing.query)
        for _ in range(self.rng.randint(1, c.max_views) - 1):
            page(self.rng.choices(PAGES, PAGE_WEIGHTS)[0])
        if self.rng.random() < c.signup_rate:
            event(SIGNUP)
            if self.rng.random() < 0.8:  # the others close the tab before the thank-you page
                page(THANKS)
        return steps
