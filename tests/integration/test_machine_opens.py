"""Machine-open rules: one test per rule, the Enricher's columns, the scanner rule on chDB."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest

from analytics.campaign_report import campaign_report
from analytics.funnel import SOURCES
from analytics.machine_opens import (
    HUMAN,
    OpenClass,
    classify_open,
    rule_apple_mpp,
    rule_bot_user_agent,
    rule_image_proxy,
    scanner_bursts_sql,
)
from analytics.schema import EVENTS
from consumers.enrich import Enricher
from consumers.useragent import UserAgentParser
from tests.support.chdb_events import Store, hour_ago_ms, wire

GMAIL_PROXY = (
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
)
YAHOO_PROXY = "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html"
APPLE_MAIL = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)"
)
APPLE_MPP = OpenClass(1, "apple_mpp", "apple")


# -- per-row rules ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ua", "ip", "expected"),
    [
        ("Mozilla/5.0", "203.0.113.0", APPLE_MPP),  # the proxy's bare user agent
        (" Mozilla/5.0 ", "", APPLE_MPP),
        (APPLE_MAIL, "17.58.63.0", APPLE_MPP),  # Apple's 17.0.0.0/8, after /24 truncation
        ("Mozilla/5.0", "::ffff:17.1.2.3", APPLE_MPP),
        (APPLE_MAIL, "203.0.113.0", None),  # Apple Mail without MPP: a person
        ("Mozilla/5.0 (X11)", "18.0.0.1", None),
        ("Mozilla/5.0", "not an ip", APPLE_MPP),
        (APPLE_MAIL, "not an ip", None),
    ],
)
def test_rule_apple_mpp(ua, ip, expected):
    assert rule_apple_mpp(ua, ip) == expected


@pytest.mark.parametrize(
    ("ua", "proxy"),
    [(GMAIL_PROXY, "gmail"), (YAHOO_PROXY, "yahoo"), (APPLE_MAIL, None), ("", None)],
)
def test_rule_image_proxy_flags_the_proxy_and_keeps_the_open_human(ua, proxy):
    expected = OpenClass(0, "", proxy) if proxy else None
    assert rule_image_proxy(ua) == expected


def test_rule_bot_user_agent():
    assert rule_bot_user_agent(1) == OpenClass(1, "bot_user_agent", "")
    assert rule_bot_user_agent(0) is None


def test_classify_checks_proxies_first_and_defaults_to_human():
    parser = UserAgentParser()
    yahoo = parser(YAHOO_PROXY)
    assert yahoo.is_bot == 0  # consumers/useragent.py exempts it, as it does Gmail's
    assert classify_open(YAHOO_PROXY, "", yahoo.is_bot) == OpenClass(0, "", "yahoo")
    assert classify_open("curl/8.5.0", "", parser("curl/8.5.0").is_bot).machine_reason == (
        "bot_user_agent"
    )
    assert classify_open(APPLE_MAIL, "203.0.113.0", 0) == HUMAN


def test_the_enricher_classifies_opens_only():
    enricher = Enricher(ua_cache_max_entries=10)
    at = hour_ago_ms()
    mpp = orjson.loads(enricher.to_row(orjson.dumps(wire("open", at, user_agent="Mozilla/5.0"))))
    assert (mpp["machine_open"], mpp["machine_reason"], mpp["mail_proxy"]) == (
        1,
        "apple_mpp",
        "apple",
    )
    gmail = orjson.loads(enricher.to_row(orjson.dumps(wire("open", at, user_agent=GMAIL_PROXY))))
    assert (gmail["machine_open"], gmail["mail_proxy"], gmail["is_bot"]) == (0, "gmail", 0)
    click = orjson.loads(enricher.to_row(orjson.dumps(wire("click", at, user_agent="Mozilla/5.0"))))
    assert "machine_open" not in click  # the column default (0) applies
    v1 = {**wire("open", at), "schema_version": 1}  # older events still go in
    assert orjson.loads(enricher.to_row(orjson.dumps(v1)))["machine_open"] == 0


# -- the scanner rule (query time, on chDB) ---------------------------------------------------

LINKS = ("https://shop.example/a", "https://shop.example/b", "https://shop.example/c")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    s = Store(tmp_path_factory.mktemp("scanner") / "clickhouse")
    yield s
    s.close()


def clicks(campaign: str, recipient: str, start_ms: int, step_ms: int, links=LINKS) -> list[dict]:
    host_path = [link.removeprefix("https://").split("/", 1) for link in links]
    return [
        wire(
            "click",
            start_ms + i * step_ms,
            campaign=campaign,
            message="m1",
            recipient=recipient,
            url_host=host,
            url_path="/" + path,
        )
        for i, (host, path) in enumerate(host_path)
    ]


def bursts(store: Store, campaign: str) -> set[str]:
    sql = scanner_bursts_sql(f"{EVENTS} FINAL", f"campaign = '{campaign}'")
    return {row["recipient"] for row in store.rows(sql)}


def test_rule_scanner_open_and_every_link_within_two_seconds(store):
    t = hour_ago_ms()
    store.add(
        [
            wire("open", t, campaign="scan1", message="m1", recipient="bot"),
            *clicks("scan1", "bot", t + 300, 400),  # all three links within 1.1 s
            *clicks("scan1", "person", t + 60_000, 20_000),  # all three, but over 40 s
            *clicks("scan1", "quick", t, 200, LINKS[:2]),  # two of three links, fast
        ]
    )
    assert bursts(store, "scan1") == {"bot"}


def test_rule_scanner_needs_two_links_at_least(store):
    t = hour_ago_ms()
    store.add(clicks("scan2", "someone", t, 100, LINKS[:1]))  # one-link message, fast click
    assert bursts(store, "scan2") == set()


def test_rule_scanner_burst_long_after_sending_is_a_person(store):
    t = hour_ago_ms()
    store.add(
        [wire("send", t, campaign="scan3", message="m1", recipient=r) for r in ("early", "late")]
        + clicks("scan3", "early", t + 20_000, 300)  # 20 s after sending: a scanner
        + clicks("scan3", "late", t + 3_000_000, 300)  # 50 min after: a fast person
    )
    assert bursts(store, "scan3") == {"early"}


def test_rule_scanner_flags_the_burst_not_the_recipient(store):
    """A scanned recipient who later opens and clicks for real keeps those as human."""
    t = hour_ago_ms()
    store.add(
        [
            wire("open", t, campaign="scan4", message="m1", recipient="r1"),
            *clicks("scan4", "r1", t + 100, 100),
            wire("open", t + 600_000, campaign="scan4", message="m1", recipient="r1"),
            *clicks("scan4", "r1", t + 610_000, 0, LINKS[:1]),
        ]
    )
    for source in SOURCES:  # the raw events' rule, and the rollups' with its correction
        row = campaign_report(store.query, "scan4", days=1, source=source)
        assert (row["opens"], row["machine_opens"], row["unique_human_opens"]) == (2, 1, 1)
        assert (row["clicks"], row["machine_clicks"], row["unique_clicks"]) == (4, 3, 1)
