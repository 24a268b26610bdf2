"""GET /c through a real server on loopback: signed redirects only, never an open redirect."""

from __future__ import annotations

import logging

import pytest

from collector.destinations import check_destination
from collector.loglimit import LimitedLog
from collector.redirect import with_click_id
from collector.signing import Keyring, parse_keys, sign
from collector.sinks.memory import MemorySink
from collector.urls import click_url
from tests.support.helpers import metric_value

KEYS = "k1:click-secret-0123456789abcdef"
KEYRING = Keyring([("k1", b"click-secret-0123456789abcdef")])
IDS = {"s": "shop", "c": "spring", "m": "m-1", "r": "u-77"}
GOOD = "https://shop.example/sale?utm_source=mail#top"

# CWE-601 bypasses: each must be refused, signed or not, with no Location header.
TRICKS = {
    "scheme_relative": "//evil.example/path",
    "scheme_relative_backslash": "/\\evil.example",
    "backslashes": "https:\\\\evil.example",
    "backslash_before_at": "https://shop.example\\@evil.example",
    "userinfo": "https://shop.example@evil.example",
    "userinfo_password": "https://user:pass@evil.example/",
    "userinfo_encoded_slash": "https://shop.example%2f@evil.example",
    "crlf": "https://shop.example/\r\nSet-Cookie: pwned=1",
    "lf": "https://shop.example/\nLocation: https://evil.example",
    "cr": "https://shop.example/\rx",
    "tab_in_scheme": "java\tscript:alert(1)",
    "javascript": "javascript:alert(document.domain)",
    "javascript_mixed_case": "JaVaScRiPt:alert(1)",
    "javascript_leading_space": " javascript:alert(1)",
    "javascript_in_http_clothes": "javascript://shop.example/%0aalert(1)",
    "data": "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
    "vbscript": "vbscript:msgbox(1)",
    "ftp": "ftp://evil.example/",
    "unicode_full_stop": "https://evil\u3002example",
    "unicode_cyrillic_a": "https://shop.ex\u0430mple",
    "unicode_fullwidth_solidus": "https:\uff0f\uff0fevil.example",
    "double_encoded_scheme": "https%3A%2F%2Fevil.example",
    "double_encoded_slashes": "%2F%2Fevil.example",
    "triple_encoded": "https%253A%252F%252Fevil.example",
    "single_slash": "https:/evil.example",
    "no_slash": "https:evil.example",
    "triple_slash": "https:///evil.example",
    "encoded_host": "https://evil.example%00.shop.example",
    "bad_port": "http://evil.example:99999/",
    "nul": "https://shop.example/\x00",
    "empty": "",
}


@pytest.fixture
async def clicks(make_client):  # type: ignore[no-untyped-def]
    sink = MemorySink()
    client = await make_client(sink, signing_keys=KEYS)
    return client, sink


def signed_params(destination: str, **ids: str) -> dict[str, str]:
    """Signed with the real key but without the library's destination check."""
    params = {"d": destination, **IDS, **ids}
    return {**params, "sig": sign(KEYRING, "/c", params)}


async def test_a_signed_click_redirects_with_a_click_id_and_is_recorded(clicks, metrics):
    client, sink = clicks
    url = click_url(
        "", KEYRING, GOOD, site="shop", campaign="spring", message="m-1", recipient="u-77"
    )
    resp = await client.get(url, allow_redirects=False)
    assert resp.status == 302
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    assert resp.headers["Cache-Control"] == "no-store"
    location = resp.headers["Location"]
    assert location.startswith("https://shop.example/sale?utm_source=mail&bcid=")
    assert location.endswith("#top")  # the click id goes before the fragment
    await client.close()
    [event] = sink.events()
    assert event["event_type"] == "click" and event["transport"] == "redirect"
    assert event["verified"] == 1
    assert location == f"https://shop.example/sale?utm_source=mail&bcid={event['click_id']}#top"
    assert event["click_id"] == event["event_id"]
    assert (event["campaign"], event["message"], event["recipient"]) == ("spring", "m-1", "u-77")
    assert (event["url_host"], event["url_path"]) == ("shop.example", "/sale")
    assert metric_value(metrics, "beacon_click_redirects_total", outcome="redirected") == 1


@pytest.mark.parametrize("destination", TRICKS.values(), ids=TRICKS.keys())
async def test_a_bypass_trick_is_refused_unsigned_and_signed(clicks, metrics, destination):
    client, sink = clicks
    for params in ({"d": destination, **IDS}, signed_params(destination)):
        resp = await client.get("/c", params=params, allow_redirects=False)
        assert resp.status == 400
        assert "Location" not in resp.headers and "Set-Cookie" not in resp.headers
        assert resp.headers["Referrer-Policy"] == "no-referrer"
        body = await resp.text()
        assert "not valid" in body and "evil" not in body and "refresh" not in body
    await client.close()
    assert sink.events() == []
    assert metric_value(metrics, "beacon_click_redirects_total", outcome="refused") == 2


@pytest.mark.parametrize("destination", TRICKS.values(), ids=TRICKS.keys())
def test_the_destination_check_refuses_every_trick(destination):
    assert check_destination(destination) != ""


@pytest.mark.parametrize(
    "destination",
    [
        "https://shop.example",
        "http://shop.example:8080/a/b?x=1&y=%20z#frag",
        "HTTPS://SHOP.EXAMPLE/",
        "https://xn--bcher-kva.example/",
        "https://[2001:db8::1]:8443/p",
        "https://127.0.0.1/",
    ],
)
def test_the_destination_check_accepts_plain_http_urls(destination):
    assert check_destination(destination) == ""


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"d": "https://evil.example/"}, "bad_signature"),  # destination swapped
        ({"r": "u-78"}, "bad_signature"),  # another recipient
        ({"sig": "k9.AAAAAAAAAAAAAAAAAAAAAA"}, "unknown_key"),
        ({"sig": "garbage"}, "malformed"),
    ],
)
async def test_a_tampered_link_gets_the_400_page(clicks, metrics, change, reason):
    client, sink = clicks
    params = {**signed_params(GOOD), **change}
    resp = await client.get("/c", params=params, allow_redirects=False)
    assert resp.status == 400 and "Location" not in resp.headers
    await client.close()
    assert sink.events() == []
    assert metric_value(metrics, "beacon_click_refused_total", reason=reason) == 1


async def test_unsigned_and_signing_disabled(make_client, metrics):
    client = await make_client(signing_keys=KEYS)
    resp = await client.get("/c", params={"d": GOOD}, allow_redirects=False)
    assert resp.status == 400
    assert metric_value(metrics, "beacon_click_refused_total", reason="unsigned") == 1
    no_keys = await make_client()
    resp = await no_keys.get("/c", params=signed_params(GOOD), allow_redirects=False)
    assert resp.status == 400
    assert metric_value(metrics, "beacon_click_refused_total", reason="signing_disabled") == 1


async def test_a_refused_click_is_logged_with_its_reason_once_a_minute(make_client, caplog):
    client = await make_client(signing_keys=KEYS)
    with caplog.at_level(logging.WARNING, logger="beacon.collector"):
        for _ in range(3):
            resp = await client.get("/c", params={"d": GOOD}, allow_redirects=False)
            assert resp.status == 400
    lines = [r.getMessage() for r in caplog.records if "click link refused" in r.getMessage()]
    # The first refusal of a cause is a line at once; the next two wait for the minute.
    assert lines == [
        "click link refused (unsigned): the link carries no signature; key ids here: "
        + ", ".join(kid for kid, _ in parse_keys(KEYS, "keys"))
    ]


def test_limited_log_says_how_many_lines_it_held_back(caplog):
    now = [0.0]
    limited = LimitedLog(logging.getLogger("beacon.test"), interval_s=60, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="beacon.test"):
        for at in (0, 1, 2, 30, 61, 62, 200):
            now[0] = at
            limited.warning("a", "cause a")
        limited.warning("b", "cause b")
    assert [r.getMessage() for r in caplog.records] == [
        "cause a",
        "cause a (and 3 more like it since the last line)",
        "cause a (and 1 more like it since the last line)",
        "cause b",
    ]


async def test_a_refused_link_goes_to_the_configured_fallback(make_client, metrics):
    fallback = "https://shop.example/link-expired"
    client = await make_client(signing_keys=KEYS, click_fallback_url=fallback)
    for params in ({"d": "https://evil.example/"}, signed_params("javascript:alert(1)")):
        resp = await client.get("/c", params=params, allow_redirects=False)
        assert resp.status == 302 and resp.headers["Location"] == fallback
        assert resp.headers["Referrer-Policy"] == "no-referrer"
    assert metric_value(metrics, "beacon_click_redirects_total", outcome="fallback") == 2


async def test_head_redirects_and_records_nothing_a_prefetch_is_a_flagged_click(clicks, metrics):
    client, sink = clicks
    params = signed_params(GOOD)
    head = await client.head("/c", params=params, allow_redirects=False)
    assert head.status == 302 and head.headers["Location"] == GOOD
    pre = await client.get(
        "/c", params=params, headers={"Sec-Purpose": "prefetch"}, allow_redirects=False
    )
    # A prefetched answer is what the browser shows if the person follows the link: it
    # carries the click id, for the conversion to name.
    assert pre.status == 302 and "bcid=" in pre.headers["Location"]
    await client.close()
    [event] = sink.events()
    assert (event["event_type"], event["purpose"]) == ("click", "prefetch")
    assert pre.headers["Location"] == with_click_id(GOOD, event["click_id"])
    assert metric_value(metrics, "beacon_requests_total", endpoint="click", outcome="head") == 1
    recorded = metric_value(metrics, "beacon_requests_total", endpoint="click", outcome="recorded")
    assert recorded == 1
    assert metric_value(metrics, "beacon_events_flagged_total", flag="prefetch") == 1


async def test_junk_queries_are_counted_never_a_500(clicks, metrics):
    client, sink = clicks
    for query in ("", "?d=%ff%fe&sig=%", "?sig=k1.&sig=k1.", "?d=" + "a" * 5000, "?%%%=&&&"):
        resp = await client.get("/c" + query, allow_redirects=False)
        assert resp.status == 400
    await client.close()
    assert sink.events() == []
    refused = sum(
        metric_value(metrics, "beacon_click_refused_total", reason=r)
        for r in ("unsigned", "malformed", "duplicate_param")
    )
    assert refused == 5


async def test_a_click_with_dnt_under_policy_all_redirects_without_recording(make_client):
    sink = MemorySink()
    client = await make_client(sink, signing_keys=KEYS, dnt_policy="all")
    resp = await client.get(
        "/c", params=signed_params(GOOD), headers={"DNT": "1"}, allow_redirects=False
    )
    assert resp.status == 302 and resp.headers["Location"] == GOOD  # no click id: no click row
    await client.close()
    assert sink.events() == []


def test_with_click_id_keeps_query_and_fragment():
    assert with_click_id("https://a.example/", "x") == "https://a.example/?bcid=x"
    assert with_click_id("https://a.example/?q=1", "x") == "https://a.example/?q=1&bcid=x"
    assert with_click_id("https://a.example/?", "x") == "https://a.example/?bcid=x"
    assert with_click_id("https://a.example/p#f?g", "x") == "https://a.example/p?bcid=x#f?g"
