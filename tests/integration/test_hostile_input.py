"""Hostile input a security review found, through real servers on loopback: digits of other
scripts, half-stored batches, aggregate rows that kept the millisecond, forwarded headers sent
twice, zone ids, IPv6 networks, non-canonical cookies, bidi controls, lenient decimals."""

from __future__ import annotations

import asyncio
import sys
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry

from analytics.dashboard.app import COOKIE as DASHBOARD_COOKIE
from analytics.dashboard.service import create_dashboard_app
from analytics.query_server import create_query_app
from collector.consent import MS_PER_HOUR, UINT64_MAX
from collector.pixel import GIF_BYTES
from collector.settings import Settings
from collector.signing import Keyring, sign
from collector.sinks.memory import MemorySink
from collector.urls import click_url
from contract.config import SettingsError
from contract.numbers import parse_uint
from loadtest.fuzz import collector, scrape
from tests.support.chdb_events import Store
from tests.support.fastpath_corpus import UA, pixel
from tests.support.helpers import metric_value
from tests.support.raw_http import names, one_connection, port_of, spooled

XFF = "X-Forwarded-For"
ENV = {"BEACON_SECRET": "visitor-secret-0123456789abcdef"}
KEYS = "k1:click-secret-0123456789abcdef"
KEYRING = Keyring([("k1", b"click-secret-0123456789abcdef")])
DASHBOARD_TOKEN = "a-long-random-dashboard-token-42"

# Every character Unicode calls a number (decimal digits, other digits such as "²" and "①",
# letter numbers such as "Ⅻ"): what str.isdigit, str.isnumeric or int() take for one.
NUMBER_CHARS = [
    chr(code)
    for code in range(sys.maxunicode + 1)
    if unicodedata.category(chr(code)) in ("Nd", "No", "Nl")
]
ASCII_DIGITS = "0123456789"


def fixed(metrics: object, reason: str) -> float:
    return metric_value(metrics, "beacon_input_fixed_total", reason=reason)


def dropped(metrics: object, reason: str) -> float:
    return metric_value(metrics, "beacon_events_dropped_total", reason=reason)


async def post(client: TestClient, events: object, **headers: str):  # type: ignore[no-untyped-def]
    return await client.post(
        "/e", data=orjson.dumps(events), headers={"Content-Type": "application/json", **headers}
    )


# -- A: one ASCII-only integer parser --------------------------------------------------------


def test_of_every_unicode_number_character_only_ascii_digits_parse() -> None:
    assert len(NUMBER_CHARS) > 1500  # the whole table, not a sample
    hazards = [c for c in NUMBER_CHARS if c.isdigit() and c not in ASCII_DIGITS]
    assert "²" in hazards and "٣" in hazards  # what the old checks let through
    for char in NUMBER_CHARS:
        expected = int(char) if char in ASCII_DIGITS else None
        for text in (char, f"1{char}", f"{char}1", f"{char}{char}"):
            if char not in ASCII_DIGITS:
                assert parse_uint(text, UINT64_MAX) is None, hex(ord(char))
        assert parse_uint(char, UINT64_MAX) == expected, hex(ord(char))


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.sampled_from([*NUMBER_CHARS, " ", "_", "+", "-", "\n"]), max_size=24))
def test_a_string_parses_exactly_when_it_is_ascii_digits(text: str) -> None:
    value = parse_uint(text, 10**24)
    if text and all(c in ASCII_DIGITS for c in text):
        assert value == int(text)
    else:
        assert value is None


def test_bounds_and_the_canonical_form() -> None:
    assert parse_uint("0", 10) == 0 and parse_uint("10", 10) == 10
    assert parse_uint("11", 10) is None and parse_uint("0", 10, min_value=1) is None
    assert parse_uint("07", 10) == 7 and parse_uint("07", 10, canonical=True) is None
    assert parse_uint("007", 10) is None  # more digits than the bound has: not read at all
    assert parse_uint("0", 10, canonical=True) == 0
    assert parse_uint("1" * 5000, UINT64_MAX) is None  # no ValueError from int()'s own limit
    assert parse_uint(str(UINT64_MAX), UINT64_MAX) == UINT64_MAX
    for text in ("", " 1", "1 ", "+1", "-1", "1_0", "0x1", "1.0", "1\n"):
        assert parse_uint(text, UINT64_MAX) is None, text


@pytest.mark.parametrize("fast_path", ["1", "0"], ids=["fast_path", "aiohttp"])
async def test_a_cookie_of_other_digits_gets_the_pixel_and_is_counted(
    tmp_path: Path, fast_path: str
) -> None:
    env = {**ENV, "BEACON_VISITOR_COOKIE": "1", "BEACON_PIXEL_FAST_PATH": fast_path}
    values = ["²", "٣", "\uff11", "0123", "+5", "1_0"]
    requests = [
        pixel(f"s=digits&consent=1&r=r{i}", UA, f"Cookie: beacon_vid={value}".encode())
        for i, value in enumerate(values)
    ]
    with collector(tmp_path, env) as (_, base):
        answers = await one_connection(port_of(base), requests)
        refused = scrape(base).get('beacon_input_fixed_total{reason="bad_visitor_cookie"}')
    assert [(a[0], a[2]) for a in answers] == [(200, GIF_BYTES)] * len(values)
    assert all(("server" in names(a)) == (fast_path == "0") for a in answers)  # that path's
    assert refused == len(values)
    events = spooled(tmp_path)
    assert [e["recipient"] for e in events] == [f"r{i}" for i in range(len(values))]
    assert all(e["visitor_id"] > 0 for e in events)  # each a new cookie id instead
    log = (tmp_path / "collector.log").read_text("utf-8", "replace")
    assert "Traceback" not in log and "beacon_vid" not in log


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    s = Store(tmp_path_factory.mktemp("hostile") / "clickhouse")
    yield s
    s.close()


async def test_erase_refuses_a_visitor_id_of_other_digits(store: Store, tmp_path: Path) -> None:
    registry = CollectorRegistry()
    app = create_query_app(store.writer, store.reader(), registry, tmp_path / "audit.log")  # type: ignore[arg-type]
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        for value in ("²", "٤٢", "\uff14\uff12", " 42", "4_2", "+42"):
            body = orjson.dumps({"field": "visitor", "value": value})
            resp = await client.post(
                "/erase", data=body, headers={"Content-Type": "application/json"}
            )
            assert resp.status == 400, value
            assert await resp.json() == {"error": "bad_visitor_id"}
    sample = {"outcome": "bad_request"}
    assert registry.get_sample_value("beacon_erase_requests_total", sample) == 6
    assert not (tmp_path / "audit.log").exists()  # nothing erased, nothing audited


async def test_the_dashboard_refuses_sessions_and_numbers_of_other_digits(store: Store) -> None:
    app = create_dashboard_app(store.reader(), DASHBOARD_TOKEN)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        for session in ("²", "²²²²²²²²²².abc", "9999999999.²", "0999999999.ab", "\uff11\uff12.ab"):
            resp = await client.get(
                "/dashboard", headers={"Cookie": f"{DASHBOARD_COOKIE}={session}"}
            )
            assert resp.status == 401, session
            assert "data-kpi" not in await resp.text()
        bearer = {"Authorization": f"Bearer {DASHBOARD_TOKEN}"}
        for days in ("٣", "²", " 3", "3_0", "+3"):
            resp = await client.get("/dashboard/data.json", params={"days": days}, headers=bearer)
            assert resp.status == 400, days
        # A bearer token that is not UTF-8: refused, not a UnicodeEncodeError.
        reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
        writer.write(
            b"GET /dashboard HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            b"Authorization: Bearer \xff\xfe\r\n\r\n"
        )
        status_line = await reader.readline()
        writer.close()
        assert status_line.split()[1] == b"401"


# -- B: POST /e stores a whole batch or none of it -------------------------------------------


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ({"r": "x" * 300}, "recipient_too_long"),
        ({"s": "x" * 257}, "site_too_long"),
        ({"e": "conversion", "v": "1_000"}, "bad_value"),
        ({"e": "conversion", "v": "9.5", "cur": "EURO"}, "bad_currency"),
        ({"e": "conversion", "o": "o" * 300}, "order_id_too_long"),
    ],
)
async def test_a_batch_with_one_bad_event_stores_none(make_client, metrics, bad, reason):
    sink = MemorySink()
    client = await make_client(sink)
    resp = await post(client, [{"e": "send", "s": "shop", "r": "good"}, {"e": "send", **bad}])
    assert resp.status == 400
    assert await resp.json() == {"error": reason, "index": 1}  # no "recorded": none was
    await client.close()
    assert sink.events() == []
    assert dropped(metrics, reason) == 2  # both events of the refused request
    assert metric_value(metrics, "beacon_events_accepted_total", transport="beacon") == 0
    assert metric_value(metrics, "beacon_requests_total", endpoint="events", outcome="400") == 1


async def test_a_refused_batch_is_checked_whatever_the_privacy_decision(make_client, metrics):
    """A DNT request whose events would be dropped anyway is still refused whole when one of
    them is invalid: what a client is told does not depend on the visitor's settings."""
    sink = MemorySink()
    client = await make_client(sink)
    batch = [{"e": "pageview", "s": "blog"}, {"e": "pageview", "r": "x" * 300}]
    resp = await post(client, batch, DNT="1")
    assert resp.status == 400 and (await resp.json())["index"] == 1
    await client.close()
    assert sink.events() == [] and dropped(metrics, "dnt") == 0


# -- C: rows kept without consent keep nothing finer than the hour ---------------------------


def uuid7_ms(event_id: str) -> int:
    return int(event_id.replace("-", "")[:12], 16)


async def test_aggregate_rows_and_landing_urls_keep_no_time_finer_than_the_hour(
    make_client, metrics
):
    sink = MemorySink()
    client = await make_client(
        sink, consent_required=("*",), consent_missing="aggregate", signing_keys=KEYS
    )
    landing = "https://shop.example/sale?utm_source=mail#top"
    url = click_url("", KEYRING, landing, site="shop", campaign="spring", recipient="u-77")
    resp = await client.get(url, allow_redirects=False)
    assert resp.status == 302
    assert resp.headers["Location"] == landing  # no bcid: it is a UUIDv7, the exact ms
    params = {"d": landing, "s": "shop", "consent": "1"}
    signed = {**params, "sig": sign(KEYRING, "/c", params)}
    consented = await client.get("/c", params=signed, allow_redirects=False)
    assert "bcid=" in consented.headers["Location"]  # with consent, as before
    await client.get("/p.gif", params={"e": "open", "s": "shop", "r": "u-77"})
    await post(client, [{"e": "custom", "s": "shop"}, {"e": "conversion", "s": "shop"}])
    await client.close()
    rows = sink.events()
    aggregate = [r for r in rows if r["consent"] == "missing"]
    assert [r["event_type"] for r in aggregate] == ["click", "open", "custom", "conversion"]
    for row in aggregate:
        assert row["received_at"] % MS_PER_HOUR == 0
        assert uuid7_ms(row["event_id"]) == row["received_at"], row["event_type"]
        assert "click_id" not in row
    assert len({r["event_id"] for r in aggregate}) == 4  # still unique: random bits
    [granted] = [r for r in rows if r["consent"] == "granted"]
    assert granted["click_id"] == granted["event_id"]
    assert f"bcid={granted['click_id']}" in consented.headers["Location"]


# -- D: the forwarded header, every line of it -----------------------------------------------


async def test_the_client_ip_is_read_from_every_line_of_the_forwarded_header(make_client, metrics):
    sink = MemorySink()
    client = await make_client(sink, forwarded_header=XFF, ip_mode="full")
    two_lines = CIMultiDict([(XFF, "198.51.100.9"), (XFF, "192.0.2.1, 203.0.113.7")])
    await client.get("/p.gif", params={"r": "two-lines"}, headers=two_lines)
    await post(client, {"e": "send", "r": "posted"}, **{XFF: "203.0.113.8"})
    await client.close()
    assert [(e["recipient"], e["ip"]) for e in sink.events()] == [
        ("two-lines", "203.0.113.7"), ("posted", "203.0.113.8")
    ]  # fmt: skip
    assert fixed(metrics, "bad_forwarded_header") == 0


async def test_a_line_of_the_clients_own_does_not_pick_its_bucket(make_client, metrics):
    client = await make_client(rate_limit_per_s=0.01, rate_limit_burst=1, forwarded_header=XFF)
    statuses = []
    for i in range(3):
        lines = CIMultiDict([(XFF, f"198.51.100.{i}"), (XFF, "203.0.113.1")])
        resp = await client.post("/e", json={"e": "send"}, headers=lines)
        statuses.append(resp.status)
    assert statuses == [204, 429, 429]


async def test_trusted_hops_pick_the_address_that_many_from_the_right(make_client, metrics):
    sink = MemorySink()
    client = await make_client(sink, forwarded_header=XFF, forwarded_trusted_hops=2, ip_mode="full")
    lines = CIMultiDict([(XFF, "198.51.100.9, 203.0.113.7"), (XFF, "10.0.0.2")])
    await client.get("/p.gif", params={"r": "two-hops"}, headers=lines)
    await client.get("/p.gif", params={"r": "one-hop"}, headers={XFF: "203.0.113.9"})
    await client.close()
    rows = {e["recipient"]: e["ip"] for e in sink.events()}
    assert rows["two-hops"] == "203.0.113.7"
    assert rows["one-hop"] == "127.0.0.1"  # fewer hops than proxies: the peer, and counted
    assert fixed(metrics, "bad_forwarded_header") == 1
    assert Settings.from_env({"BEACON_FORWARDED_TRUSTED_HOPS": "3"}).forwarded_trusted_hops == 3
    assert Settings().forwarded_trusted_hops == 1
    with pytest.raises(SettingsError, match="BEACON_FORWARDED_TRUSTED_HOPS"):
        Settings.from_env({"BEACON_FORWARDED_TRUSTED_HOPS": "0"})


async def test_a_bad_forwarded_header_is_counted_once_with_the_rate_limit_on(make_client, metrics):
    client = await make_client(rate_limit_per_s=100.0, rate_limit_burst=100, forwarded_header=XFF)
    assert (await client.get("/p.gif", params={"r": "a"}, headers={XFF: "junk"})).status == 200
    assert (await post(client, {"e": "send"}, **{XFF: "not-an-ip"})).status == 204
    assert (await client.get("/p.gif", params={"r": "b"})).status == 200  # none at all
    assert fixed(metrics, "bad_forwarded_header") == 3


async def test_the_fast_path_reads_the_forwarded_header_as_aiohttp_does(tmp_path: Path) -> None:
    env = {
        **ENV,
        "BEACON_FORWARDED_HEADER": XFF,
        "BEACON_IP_MODE": "full",
        "BEACON_RATE_LIMIT_PER_S": "100",
        "BEACON_RATE_LIMIT_BURST": "100",
    }
    xff = XFF.encode()
    with collector(tmp_path, env) as (_, base):
        port = port_of(base)
        [one] = await one_connection(
            port, [pixel("r=one", UA, xff + b": 198.51.100.9, 203.0.113.7")]
        )
        two_lines = pixel("r=two", UA, xff + b": 198.51.100.9", xff + b": 203.0.113.8")
        [two] = await one_connection(port, [two_lines])
        [bad] = await one_connection(port, [pixel("r=bad", UA, xff + b": junk")])
        counted = scrape(base).get('beacon_input_fixed_total{reason="bad_forwarded_header"}')
    assert "server" not in names(one) and "server" not in names(bad)  # the fast path's
    assert two[0] == 200  # a repeated header goes to aiohttp: the same rule there
    ips = {e["recipient"]: e["ip"] for e in spooled(tmp_path)}
    assert ips == {"one": "203.0.113.7", "two": "203.0.113.8", "bad": "127.0.0.1"}
    assert counted == 1  # once, though the rate limit asked first


# -- E: the small items -----------------------------------------------------------------------


async def test_full_ip_mode_drops_an_ipv6_zone_id(make_client):
    sink = MemorySink()
    client = await make_client(sink, forwarded_header=XFF, ip_mode="full")
    await client.get("/p.gif", params={"r": "zoned"}, headers={XFF: "fe80::1%eth0"})
    await client.get("/p.gif", params={"r": "plain"}, headers={XFF: "2001:db8::1"})
    await client.close()
    assert [e["ip"] for e in sink.events()] == ["fe80::1", "2001:db8::1"]


async def test_the_rate_limit_keys_ipv6_by_network_and_ipv4_by_address(make_client):
    client = await make_client(rate_limit_per_s=0.01, rate_limit_burst=1, forwarded_header=XFF)

    async def status(ip: str) -> int:
        return (await post(client, {"e": "send"}, **{XFF: ip})).status

    assert await status("2001:db8:1:2::1") == 204
    assert await status("2001:db8:1:2:ffff:ffff:ffff:fffe") == 429  # the same /64
    assert await status("2001:db8:1:3::1") == 204  # the next /64
    assert await status("203.0.113.1") == 204
    assert await status("203.0.113.2") == 204  # IPv4: per address
    assert await status("::ffff:203.0.113.3") == 204  # IPv4 in IPv6 form: still per address
    assert await status("203.0.113.3") == 429  # ... and the same address as without it


async def test_the_ipv6_prefix_is_a_setting(make_client):
    client = await make_client(
        rate_limit_per_s=0.01, rate_limit_burst=1, forwarded_header=XFF, rate_limit_ipv6_prefix=128
    )
    for ip in ("2001:db8::1", "2001:db8::2"):
        assert (await post(client, {"e": "send"}, **{XFF: ip})).status == 204
    assert Settings().rate_limit_ipv6_prefix == 64
    assert Settings.from_env({"BEACON_RATE_LIMIT_IPV6_PREFIX": "56"}).rate_limit_ipv6_prefix == 56
    for bad in ("0", "129"):
        with pytest.raises(SettingsError, match="BEACON_RATE_LIMIT_IPV6_PREFIX"):
            Settings.from_env({"BEACON_RATE_LIMIT_IPV6_PREFIX": bad})


async def test_the_visitor_cookie_is_read_only_in_the_form_the_collector_issues(
    make_client, metrics
):
    sink = MemorySink()
    client = await make_client(sink, visitor_cookie=True)
    values = ["0123", "00", "+5", "1_0", "٣", str(UINT64_MAX + 1), "0"]
    for value in [*values, "123"]:
        resp = await client.get(
            "/p.gif",
            params={"s": "shop", "consent": "1"},
            headers={"Cookie": f"beacon_vid={value}"},
        )
        assert resp.status == 200
        assert ("Set-Cookie" in resp.headers) == (value != "123"), value  # refused: a new one
    await client.close()
    ids = [e["visitor_id"] for e in sink.events()]
    assert ids[-1] == 123 and 123 not in ids[:-1] and 5 not in ids
    assert fixed(metrics, "bad_visitor_cookie") == len(values)


async def test_bidi_controls_are_stripped_and_counted(make_client, metrics):
    sink = MemorySink()
    client = await make_client(sink)
    query = {"r": "admin\u202egnp.exe", "c": "\u2066spring\u2069", "p.k\u202d": "v\u202a"}
    await client.get("/p.gif", params=query)
    await client.get("/p.gif", params={"r": "plain\u200dzwj"})  # a joiner is no control
    await client.close()
    first, second = sink.events()
    assert (first["recipient"], first["campaign"]) == ("admingnp.exe", "spring")
    assert first["props"] == {"k": "v"}
    assert second["recipient"] == "plain\u200dzwj"
    assert fixed(metrics, "bidi_chars") == 1 and fixed(metrics, "control_chars") == 0


@pytest.mark.parametrize(
    "value",
    [" 1_000 ", "1_000", "1 000", "١٢", "\uff11\uff12", "1e3", "+5", "-0", ".5", "5.", "0x10"],
)
async def test_a_conversion_value_is_ascii_digits_and_a_point_only(make_client, metrics, value):
    sink = MemorySink()
    client = await make_client(sink)
    resp = await client.get("/p.gif", params={"e": "conversion", "s": "shop", "v": value})
    assert resp.status == 200
    posted = await post(client, {"e": "conversion", "s": "shop", "v": value})
    assert posted.status == 400 and (await posted.json())["error"] == "bad_value"
    await client.close()
    assert sink.events() == []
    assert dropped(metrics, "bad_value") == 2
