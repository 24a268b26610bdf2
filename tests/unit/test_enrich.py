"""Enrichment: real user agents through ua-parser's native core, the UA cache, bad rows."""

from __future__ import annotations

import orjson
import pytest

from consumers.enrich import Enricher
from consumers.useragent import UserAgentInfo, UserAgentParser
from contract.event import RECEIVED_AT_MAX_MS, Rejected

# Real user agents as browsers, mail clients and tools send them.
CHROME_WIN = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.6099.109 Safari/537.36"
)
SAFARI_IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1_2 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.1.2 Mobile/15E148 Safari/604.1"
)
SAFARI_IPAD = (
    "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/16.6 Mobile/15E148 Safari/604.1"
)
FIREFOX_LINUX = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0"
CHROME_ANDROID_PHONE = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.6099.144 Mobile Safari/537.36"
)
CHROME_ANDROID_TABLET = (
    "Mozilla/5.0 (Linux; Android 13; SM-X710) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.6099.144 Safari/537.36"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
HEADLESS_CHROME = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "HeadlessChrome/120.0.6099.109 Safari/537.36"
)
GMAIL_IMAGE_PROXY = (
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
)
APPLE_MAIL_MAC = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)"
)
APPLE_MAIL_PRIVACY_PROXY = "Mozilla/5.0"  # Mail Privacy Protection: no details at all

UA_TABLE = [
    (CHROME_WIN, UserAgentInfo("Chrome", "120.0", "Windows", "desktop", 0)),
    (SAFARI_IPHONE, UserAgentInfo("Mobile Safari", "17.1", "iOS", "mobile", 0)),
    (SAFARI_IPAD, UserAgentInfo("Mobile Safari", "16.6", "iOS", "tablet", 0)),
    (FIREFOX_LINUX, UserAgentInfo("Firefox", "121.0", "Ubuntu", "desktop", 0)),
    (CHROME_ANDROID_PHONE, UserAgentInfo("Chrome Mobile", "120.0", "Android", "mobile", 0)),
    (CHROME_ANDROID_TABLET, UserAgentInfo("Chrome", "120.0", "Android", "tablet", 0)),
    (GOOGLEBOT, UserAgentInfo("Googlebot", "2.1", "Other", "bot", 1)),
    (HEADLESS_CHROME, UserAgentInfo("HeadlessChrome", "120.0", "Linux", "bot", 1)),
    # A real open through Gmail's proxy, not a bot; the proxy's "Windows XP" is not the reader's.
    (GMAIL_IMAGE_PROXY, UserAgentInfo("GmailImageProxy", "", "Other", "other", 0)),
    (APPLE_MAIL_MAC, UserAgentInfo("Apple Mail", "605.1", "Mac OS X", "desktop", 0)),
    (APPLE_MAIL_PRIVACY_PROXY, UserAgentInfo("Other", "", "Other", "other", 0)),
    ("curl/8.5.0", UserAgentInfo("curl", "8.5", "Other", "bot", 1)),
    ("python-requests/2.31.0", UserAgentInfo("Python Requests", "2.31", "Other", "bot", 1)),
    ("Go-http-client/1.1", UserAgentInfo("Go-http-client", "1.1", "Other", "bot", 1)),
    ("", UserAgentInfo("Other", "", "Other", "other", 0)),
]


@pytest.fixture(scope="module")
def parser() -> UserAgentParser:
    return UserAgentParser()  # one native resolver for the module: building it takes ~0.15 s


@pytest.fixture(scope="module")
def enricher() -> Enricher:
    return Enricher()


@pytest.mark.parametrize(("ua", "expected"), UA_TABLE, ids=lambda v: str(v)[:40])
def test_user_agents_parse_to_browser_os_device_and_bot(parser, ua, expected):
    assert parser(ua) == expected


def test_the_native_core_is_in_use(parser):
    # ua-parser falls back to its pure-Python resolver silently; the figures assume ua-parser-rs.
    assert type(parser._resolver).__module__ == "ua_parser.regex"


def test_each_distinct_user_agent_is_parsed_once():
    parser = UserAgentParser(cache_max_entries=100)
    for _ in range(50):
        for ua in (CHROME_WIN, SAFARI_IPHONE, GOOGLEBOT):
            parser(ua)
    assert parser.parses == 3


def test_the_cache_is_bounded_and_evicts_the_least_recently_used():
    parser = UserAgentParser(cache_max_entries=3)
    for i in range(10):
        parser(f"Mozilla/5.0 Test/{i}")
    assert len(parser) == 3
    parser("Mozilla/5.0 Test/7")  # recently used: now the newest
    parser("Mozilla/5.0 Test/new")  # evicts Test/8, the least recently used
    misses = parser.parses
    parser("Mozilla/5.0 Test/7")
    assert parser.parses == misses  # still cached
    parser("Mozilla/5.0 Test/8")
    assert parser.parses == misses + 1  # was evicted, parsed again
    assert len(parser) == 3


def test_a_cache_without_room_is_refused():
    with pytest.raises(ValueError):
        UserAgentParser(cache_max_entries=0)


def wire_event(**fields: object) -> bytes:
    event = {
        "schema_version": 1,
        "event_id": "0190b3a4-0000-7000-8000-000000000001",
        "received_at": 1_767_225_600_123,
        "event_type": "open",
        "user_agent": SAFARI_IPHONE,
    }
    event.update(fields)
    return orjson.dumps({k: v for k, v in event.items() if v is not None})


def test_to_row_adds_the_user_agent_columns_and_converts_the_time(enricher):
    row = orjson.loads(enricher.to_row(wire_event()))
    assert row["received_at"] == pytest.approx(1_767_225_600.123)
    assert row["user_agent"] == SAFARI_IPHONE  # kept as sent
    assert (row["browser"], row["browser_version"], row["os"]) == ("Mobile Safari", "17.1", "iOS")
    assert (row["device_type"], row["is_bot"]) == ("mobile", 0)


def test_an_event_without_user_agent_is_enriched_as_unknown(enricher):
    row = orjson.loads(enricher.to_row(wire_event(user_agent=None)))
    assert (row["browser"], row["os"], row["device_type"], row["is_bot"]) == (
        "Other",
        "Other",
        "other",
        0,
    )


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"{not json", "malformed_json"),
        (b"[1, 2]", "not_an_event"),
        (b'{"received_at": 1}', "not_an_event"),
        (wire_event(schema_version=99), "unknown_schema_version"),
        (wire_event(schema_version=-1), "unknown_schema_version"),
        (wire_event(received_at="yesterday"), "bad_received_at"),
        (wire_event(received_at=-1), "bad_received_at"),
        (wire_event(received_at=2**32 * 1000), "bad_received_at"),  # past a DateTime's range
        (wire_event(received_at=RECEIVED_AT_MAX_MS + 1), "bad_received_at"),  # its TTL would wrap
        (wire_event(value="1E+2"), "bad_value"),
        (wire_event(event_id="not-a-uuid"), "bad_event_id"),
        (wire_event(event_id=7), "bad_event_id"),
        (wire_event(schema_version="three"), "bad_field_type"),
        (wire_event(schema_version=[3]), "bad_field_type"),
    ],
)
def test_bad_lines_are_rejected_with_a_reason(enricher, line, reason):
    with pytest.raises(Rejected) as caught:
        enricher.to_row(line)
    assert caught.value.reason == reason


def test_numbers_and_strings_are_read_as_the_ingest_reads_them(enricher):
    """As consumers/ingest.py's JSONExtract (tests/integration/test_ingest.py): a numeric
    string or a fraction is a schema version, a number a value's text, an array an agent's."""
    row = orjson.loads(
        enricher.to_row(wire_event(schema_version="1", value=12.5, user_agent=["Mozilla"]))
    )
    assert (row["value"], row["user_agent"], row["browser"]) == ("12.5", '["Mozilla"]', "Other")
    assert orjson.loads(enricher.to_row(wire_event(schema_version=1.9)))["event_type"] == "open"
