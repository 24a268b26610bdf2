"""User agent -> browser, version, OS, device type and bot flag, with ua-parser's native core
and the crawler list (consumers/crawlers.py)."""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import NamedTuple

from ua_parser import Domain, Resolver, load_lazy_builtins

from consumers.crawlers import Matcher, best_matcher

# Crawlers, HTTP libraries and headless browsers that ua-parser's regexes.yaml does not mark as
# device "Spider" (it does mark Googlebot and bingbot; they are listed too so this list alone
# documents what we call a bot). Names as the tools send them, matched case-insensitively
# anywhere; the wider, maintained catalogue (consumers/crawlers.py) is matched besides.
BOT_TOKENS = (
    "HeadlessChrome",  # Puppeteer / Playwright / Selenium with headless Chrome
    "PhantomJS",
    "Chrome-Lighthouse",  # PageSpeed Insights
    "Googlebot",
    "bingbot",
    "curl/",
    "Wget/",
    "python-requests",
    "Python-urllib",
    "aiohttp/",
    "Go-http-client",
    "libwww-perl",
)
# Image proxies of mail providers fetch when a person opens the mail: a real open, never a bot
# (DESIGN.md), whatever ua-parser or the crawler list says: Yahoo's proxy (analytics/
# machine_opens.py IMAGE_PROXIES) is a "Spider" to ua-parser, and the list has both. Checked
# first. Their UA's OS part is fixed and fake, so it is dropped.
MAIL_PROXY_TOKENS = ("GoogleImageProxy", "YahooMailProxy")

BOT_RE = re.compile("|".join(map(re.escape, BOT_TOKENS)), re.IGNORECASE)
MAIL_PROXY_RE = re.compile("|".join(map(re.escape, MAIL_PROXY_TOKENS)))

# Device type rules after selwin/python-user-agents (`user_agents/parsers.py`), which maps the same
# ua-parser families to mobile / tablet / PC.
TABLET_DEVICES = frozenset(("iPad", "Kindle", "Kindle Fire", "Kindle Fire HD", "Galaxy Tab"))
MOBILE_DEVICES = frozenset(("iPhone", "iPod", "Generic Smartphone", "Generic Feature Phone"))
MOBILE_OS = frozenset(
    ("iOS", "Windows Phone", "Windows Mobile", "Symbian OS", "BlackBerry OS", "KaiOS")
)
DESKTOP_OS = frozenset(
    ("Windows", "Mac OS X", "Linux", "Ubuntu", "Chrome OS", "Fedora", "Debian", "FreeBSD")
)

OTHER = "Other"  # ua-parser's family when nothing matched


class UserAgentInfo(NamedTuple):
    """What the consumer stores about a user agent (the column names of beacon.events)."""

    browser: str
    browser_version: str  # "major.minor", "major", or "" when unknown
    os: str
    device_type: str  # desktop | mobile | tablet | bot | other
    is_bot: int  # UInt8 column


def version(major: str | None, minor: str | None) -> str:
    if not major:
        return ""
    return f"{major}.{minor}" if minor else major


def device_type(ua: str, os_family: str, device_family: str, brand: str) -> str:
    """Tablet before mobile: Android tablets and iPads also match the mobile rules."""
    if device_family in TABLET_DEVICES or brand == "Generic_Android_Tablet":
        return "tablet"
    if os_family == "Android":
        # Android tablets omit "Mobile" from the UA (Chrome and Firefox both follow this:
        # https://developer.chrome.com/docs/multidevice/user-agent/).
        return "mobile" if "Mobile" in ua else "tablet"
    if device_family in MOBILE_DEVICES or os_family in MOBILE_OS:
        return "mobile"
    if os_family in DESKTOP_OS:
        return "desktop"
    return "other"


class UserAgentParser:
    """Parses each distinct user agent once while it stays in a bounded LRU.

    The native resolver is not cached itself: this LRU holds the finished `UserAgentInfo`,
    which is cheaper than ua-parser's cached PartialResult plus our mapping on every row.
    Keep `cache_max_entries` >= rows per batch and no UA is parsed twice within a batch.
    """

    def __init__(
        self,
        cache_max_entries: int = 10_000,
        resolver: Resolver | None = None,
        crawlers: Matcher | None = None,
    ) -> None:
        if cache_max_entries < 1:
            raise ValueError("cache_max_entries must be at least 1")
        self.cache_max_entries = cache_max_entries
        self._cache: OrderedDict[str, UserAgentInfo] = OrderedDict()
        self._resolver = resolver or best_resolver()
        self._crawlers = crawlers or best_matcher()
        self.parses = 0  # cache misses, for tests and the benchmark

    def __len__(self) -> int:
        return len(self._cache)

    def __call__(self, ua: str) -> UserAgentInfo:
        info = self._cache.get(ua)
        if info is not None:
            self._cache.move_to_end(ua)
            return info
        info = self._parse(ua)
        self._cache[ua] = info
        if len(self._cache) > self.cache_max_entries:
            self._cache.popitem(last=False)
        return info

    def _parse(self, ua: str) -> UserAgentInfo:
        self.parses += 1
        result = self._resolver(ua, Domain.ALL).complete()
        agent, os_, device = result.user_agent, result.os, result.device
        browser = agent.family if agent else OTHER
        browser_version = version(agent.major, agent.minor) if agent else ""
        os_family = os_.family if os_ else OTHER
        if MAIL_PROXY_RE.search(ua):
            return UserAgentInfo(browser, browser_version, OTHER, "other", 0)
        device_family = device.family if device else OTHER
        # The list last: most agents are people's, and they go through all three.
        if device_family == "Spider" or BOT_RE.search(ua) or self._crawlers(ua):
            return UserAgentInfo(browser, browser_version, os_family, "bot", 1)
        brand = (device.brand or "") if device else ""
        kind = device_type(ua, os_family, device_family, brand)
        return UserAgentInfo(browser, browser_version, os_family, kind, 0)


def best_resolver() -> Resolver:
    """ua-parser's Rust core (ua-parser-rs) when installed, its pure-Python one otherwise.

    Lazy builtins with the native core, as ua_parser/__init__.py does for its default parser:
    the Rust side compiles the regexes, the Python matchers would only be compiled for nothing.
    Building it takes ~0.15 s: once per Enricher, not per batch.
    """
    from ua_parser import BasicResolver, load_builtins

    try:
        from ua_parser.regex import Resolver as RegexResolver
    except ImportError:  # ua-parser-rs missing: correct results, ~10x slower
        return BasicResolver(load_builtins())
    return RegexResolver(load_lazy_builtins())
