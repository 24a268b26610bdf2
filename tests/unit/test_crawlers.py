"""The crawler list (consumers/crawlers.py) in the user-agent parser: what it adds to ua-parser,
the patterns narrowed because they match people, the agents Beacon itself sends."""

from __future__ import annotations

import re

import pytest
from crawleruseragents import CRAWLER_USER_AGENTS_DATA

from collector.simulate.plan import READER_AGENTS
from collector.simulate.steps import BROWSER
from collector.simulate.web import AGENTS, CRAWLER
from consumers import crawlers
from consumers.useragent import UserAgentParser
from tests.support import chdb_events
from tests.unit.test_enrich import UA_TABLE

ENTRIES = {entry["pattern"]: entry for entry in CRAWLER_USER_AGENTS_DATA}
# People's agents that a pattern of the list matches as it stands (crawlers.NARROWED says why):
# phones and apps of uap-core's test corpus, and Facebook's in-app browser.
PEOPLE = {
    "MetaIAB Facebook": (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 18_6_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, "
        "like Gecko) Mobile/22G100 Safari/604.1 MetaIAB Facebook",
        "Mozilla/5.0 (Linux; Android 15; SM-S928B Build/AP3A.240905.015.A2; ) AppleWebKit/537.36"
        " (KHTML, like Gecko) Version/4.0 Chrome/142.0.7444.74 Mobile Safari/537.36 MetaIAB "
        "Facebook",
    ),
    r"AP3A\.240617\.008": (
        "Mozilla/5.0 (Linux; U; Android 15; en-gb; CPH2617 Build/AP3A.240617.008) AppleWebKit/"
        "537.36 (KHTML, like Gecko) Chrome/125.0.6422.72 Mobile Safari/537.36 "
        "HeyTapBrowser/45.13.6.1",
    ),
    r"008\/": (
        "Opera/9.80 (MAUI Runtime; Opera Mini/4.4.39008/37.9178; U; en) Presto/2.12.423 "
        "Version/12.16",
        "sprd-L008/1.0 Linux/2.6.35.7 Android/2.3.5 Release/09.10.2012 Browser/AppleWebKit533.1"
        " (KHTML, like Gecko) Mozilla/5.0 Mobile",
    ),
    "Butterfly": (
        "Mozilla/5.0 (Linux; Android 4.4.1; HTC Butterfly S Build/KRT16M) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Chrome/32.0.1700.99 Mobile Safari/537.36",
    ),
    r"RED\/": (
        "Mozilla/5.0 (iPad; U; CPU iPhone OS 7_0 like Mac OS X; de-DE) WIRED/3.2.3.11.87970",
    ),
    "speedy": ("YahooMobileMail/1.0 (Android Mail; 1.3.6) (speedy;HTC;PG06100;2.2/FRF91)",),
    "Sonic": (
        "Mozilla/5.0 (Linux; U; Android 2.3;en-us; ViewSonic-ViewPad7e Build/ERE27) "
        "AppleWebKit/533.1 (KHTML, Like Gecko) Version/4.0 Mobile Safari/533.1",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko)"
        " Slack/4.36.140 Chrome/120.0.6099.56 Electron/28.0.0 Safari/537.36 Sonic "
        "Slack_SSB/4.36.140",
    ),
}
# ByteDance's crawler: ua-parser names it (family "Bytespider") but calls its device a phone.
BYTESPIDER = (
    "Mozilla/5.0 (Linux; Android 5.0) AppleWebKit/537.36 (KHTML, like Gecko) Mobile "
    "Safari/537.36 (compatible; Bytespider; spider-feedback@bytedance.com)"
)
# Every agent Beacon's own simulator and test fixtures send as a person or a mail client.
OWN_AGENTS = {
    "simulate.steps.BROWSER": BROWSER,
    "simulate.plan ad clicker": f"{BROWSER} sim-ad/7-0-1-2",
    **{f"simulate.plan.READER_AGENTS[{k}]": ua for k, ua in READER_AGENTS.items()},
    **{f"simulate.web.AGENTS[{i}]": agent.ua for i, agent in enumerate(AGENTS)},
    "support.chdb_events.BROWSER": chdb_events.BROWSER,
    "support.chdb_events.TEST_UA": chdb_events.TEST_UA,
    **{f"test_enrich.UA_TABLE[{i}]": ua for i, (ua, ok) in enumerate(UA_TABLE) if not ok.is_bot},
}


@pytest.fixture(scope="module")
def parser() -> UserAgentParser:
    return UserAgentParser()


def instances(pattern: str) -> list[str]:
    return list(ENTRIES[pattern]["instances"])


def test_every_narrowed_pattern_is_still_in_the_list() -> None:
    # A release that drops or rewrites one of them: look at the list again (pyproject pin).
    assert set(crawlers.NARROWED) <= set(ENTRIES)


@pytest.mark.parametrize("pattern", sorted(crawlers.NARROWED))
def test_a_narrowed_pattern_keeps_its_crawlers_and_lets_people_through(pattern: str) -> None:
    narrowed = crawlers.NARROWED[pattern]
    for person in PEOPLE[pattern]:
        assert re.search(pattern, person), "the list's pattern as it stands matches this person"
        assert not crawlers.best_matcher()(person), person
    if narrowed is None:  # dropped: its instances are people's browsers
        assert all(not crawlers.best_matcher()(ua) for ua in instances(pattern))
    else:
        assert all(re.search(narrowed, ua) for ua in instances(pattern))


def test_every_instance_the_list_gives_is_a_crawler_but_those_of_dropped_patterns() -> None:
    dropped = {p for p, narrowed in crawlers.NARROWED.items() if narrowed is None}
    missed = [
        ua
        for pattern, entry in ENTRIES.items()
        if pattern not in dropped
        for ua in entry["instances"]
        if not crawlers.best_matcher()(ua)
    ]
    assert missed == []


def test_the_rust_and_python_matchers_agree() -> None:
    patterns = crawlers.patterns()
    native, python = crawlers.rust_matcher(patterns), crawlers.python_matcher(patterns)
    agents = [
        *(ua for entry in ENTRIES.values() for ua in entry["instances"]),
        *(ua for people in PEOPLE.values() for ua in people),
        *OWN_AGENTS.values(),
    ]
    assert [native(ua) for ua in agents] == [python(ua) for ua in agents]
    assert sum(map(native, agents)) > 1500  # both say something


def test_the_native_matcher_is_in_use() -> None:
    # The figures of docs/performance.md assume it; the Python one answers the same, slower.
    assert crawlers.best_matcher().__qualname__.startswith("rust_matcher")


def test_a_crawler_only_the_list_knows_is_a_bot(parser: UserAgentParser) -> None:
    without_list = UserAgentParser(crawlers=lambda ua: False)
    assert without_list(BYTESPIDER).is_bot == 0  # ua-parser and BOT_TOKENS alone: a phone
    info = parser(BYTESPIDER)
    assert (info.device_type, info.is_bot) == ("bot", 1)
    assert info.browser == "Bytespider"  # the rest of ua-parser's answer is kept


def test_mail_proxies_in_the_list_stay_people(parser: UserAgentParser) -> None:
    for ua in (READER_AGENTS["gmail"], instances("YahooMailProxy")[0]):
        assert crawlers.best_matcher()(ua)  # the list has them...
        assert parser(ua).is_bot == 0  # ...and the parser checks the proxies first


@pytest.mark.parametrize("name", sorted(OWN_AGENTS))
def test_beacons_own_agents_are_not_crawlers(parser: UserAgentParser, name: str) -> None:
    ua = OWN_AGENTS[name]
    assert parser(ua).is_bot == 0
    if "Proxy" not in ua:
        assert not crawlers.best_matcher()(ua)


def test_the_simulators_crawler_is_one(parser: UserAgentParser) -> None:
    assert crawlers.best_matcher()(CRAWLER) and parser(CRAWLER).is_bot == 1
