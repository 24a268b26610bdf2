"""Properties of reading a pixel request (hypothesis): the event holds what its query says, as
aiohttp's own parser reads the query; and the fast path's `parse_head` reads a head as aiohttp
does or leaves it to aiohttp."""

from __future__ import annotations

import re
import string
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import orjson
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDictProxy, MultiDictProxy
from prometheus_client import CollectorRegistry
from yarl import URL

from collector import event as ev
from collector.app import COLLECTOR, create_app
from collector.fastpath import PixelRequest, parse_head
from collector.handlers import Collector
from collector.head_limits import MAX_LINE_BYTES
from collector.metrics import CollectorMetrics
from collector.sanitize import CONTROL_RE
from collector.settings import Settings
from collector.sinks.memory import MemorySink
from tests.support.aiohttp_parser import aiohttp_message, aiohttp_parse
from tests.support.helpers import reference_split

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
UA = "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"
ASCII = string.ascii_letters + string.digits


class Request:
    """What the pixel handler reads of a request, from aiohttp's parser (web.Request's own
    `query` and `headers` are these same objects)."""

    method = "GET"
    remote = "203.0.113.7"

    def __init__(self, query: MultiDictProxy[str], headers: CIMultiDictProxy[str]) -> None:
        self.query = query
        self.headers = headers


class Kept:
    """The buffer, the edge these tests are not about: keeps what the handler offers."""

    def __init__(self) -> None:
        self.events: list[bytes] = []

    def offer(self, event: bytes) -> bool:
        self.events.append(event)
        return True


def pixel_collector() -> tuple[Collector, Kept, CollectorMetrics]:
    settings_ = Settings(data_dir=Path("unused"), secret="query-properties-secret", sink="memory")
    metrics = CollectorMetrics(CollectorRegistry())
    collector = create_app(settings_, MemorySink(), metrics)[COLLECTOR]
    collector.buffer = kept = Kept()  # type: ignore[assignment]
    return collector, kept, metrics


def dropped(metrics: CollectorMetrics) -> dict[str, float]:
    return {
        s.labels["reason"]: s.value
        for family in metrics.registry.collect()
        if family.name == "beacon_events_dropped"
        for s in family.samples
        if s.name.endswith("_total") and s.value  # every reason is exported, at 0 until used
    }


# -- the event a pixel query makes ---------------------------------------------------------


def hex_digits(size: int) -> st.SearchStrategy[str]:
    return st.text(alphabet="0123456789abcdef", min_size=size, max_size=size)


uuid7 = st.builds(
    lambda a, b, c, d, e, variant: f"{a}-{b}-7{c}-{variant}{d}-{e}",
    hex_digits(8), hex_digits(4), hex_digits(3), hex_digits(3), hex_digits(12),
    st.sampled_from("89ab"),
)  # fmt: skip
# Any text, short; and long ASCII text around each length limit (a request line holds 8190
# bytes, and a character that is not ASCII takes up to 12 of them percent-encoded).
text = st.text(max_size=20)


def around(limit: int, alphabet: str = ASCII) -> st.SearchStrategy[str]:
    return st.text(alphabet=alphabet, min_size=limit - 8, max_size=limit + 8)


# Each value is mostly one the collector keeps, so that most events are recorded and compared.
ids = st.one_of(text, text, around(ev.MAX_ID_CHARS))
url_text = st.text(alphabet="aZ09=&?#%/:@. \t\n", max_size=20)
urls = st.one_of(
    text,
    st.builds(
        "{}{}{}".format, st.sampled_from(["https://", "http://", "//", ""]), url_text, url_text
    ),
    # A path around the limit, then a query with a kept key.
    st.builds(
        "https://shop.example/{}?utm_source={}".format,
        around(ev.MAX_URL_CHARS - 21, ASCII + "/%."),
        url_text,
    ),
)
decimals = st.decimals(min_value=0, max_value=10**15, places=5).map(str)
# Currencies that are not ASCII letters are test_a_currency_is_three_ascii_letters' (below).
currencies = st.text(alphabet="eurUSDgbpxyz1$. ", min_size=0, max_size=4)
KEY_VALUES = {
    "e": st.sampled_from(sorted(ev.EVENT_TYPES)) | text,
    **{short: ids for short, _ in ev.ID_FIELDS},
    "v": st.one_of(decimals, decimals, text),
    "cur": st.sampled_from(["eur", "USD", "gBp"]) | currencies,
    "o": ids,
    "bcid": uuid7 | text,
    "sig": text,
}
controls = st.text(alphabet="ab\x00\n\t\x85\u2028", max_size=3)  # a name of controls only goes
props = st.tuples(
    st.one_of(text, controls, controls, around(ev.MAX_PROP_KEY_CHARS)).map("p.".__add__),
    text | around(ev.MAX_PROP_VALUE_CHARS),
)
# Up to a few more than MAX_PROPS distinct names (repeats come from `props`).
many_props = (
    st.integers(0, ev.MAX_PROPS + 6)
    .flatmap(lambda size: st.lists(text, min_size=size, max_size=size))
    .map(lambda values: [(f"p.k{i}", value) for i, value in enumerate(values)])
)
known = st.one_of(*(st.tuples(st.just(key), value) for key, value in KEY_VALUES.items()))
unknown = st.tuples(text, text)  # keys the collector ignores
pages = st.lists(st.tuples(st.sampled_from(["u", "ref"]), urls), max_size=3)
pairs = st.builds(
    lambda *parts: [pair for part in parts for pair in part],
    pages,
    st.lists(st.one_of(known, known, props, unknown), max_size=12),
    many_props,
)
# How a mail or web client encodes the query: form style (+ for space), %20, or yarl's way.
encoders = st.sampled_from(
    [
        urlencode,
        lambda q: urlencode(q, quote_via=quote),
        lambda q: URL.build(path="/p.gif", query=q).raw_query_string,
    ]
)


UUID7_RE = re.compile("[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def query_fields(query: list[tuple[str, str]]) -> tuple[dict[str, str], dict[str, str]]:
    """The known keys (the first of each) and the properties that fit their limits."""
    fields: dict[str, str] = {}
    props: dict[str, str] = {}
    for key, value in query:
        if key.startswith("p."):
            name = key[2:]
            fits = 0 < len(name) <= ev.MAX_PROP_KEY_CHARS and len(value) <= ev.MAX_PROP_VALUE_CHARS
            if fits and (len(props) < ev.MAX_PROPS or name in props):
                props[name] = value
        elif key in ev.KNOWN_KEYS:
            fields.setdefault(key, value)
    return fields, props


def expected_conversion(fields: dict[str, str], refused: set[str]) -> dict[str, Any]:
    """Value, currency, order and click id as docs/tracking.md describes them; refusals into
    `refused`."""
    row: dict[str, Any] = {}
    if fields.get("v"):
        try:
            row["value"] = value = Decimal(fields["v"].strip())
        except InvalidOperation:
            refused.add("bad_value")
        else:
            places = -int(value.as_tuple().exponent) if value.is_finite() else 99
            if not (value.is_finite() and 0 <= value < 10**14 and places <= 4):
                refused.add("bad_value")
    if fields.get("cur"):
        row["currency"] = fields["cur"].upper()
        if not re.fullmatch("[A-Za-z]{3}", fields["cur"]):  # ISO 4217
            refused.add("bad_currency")
    if fields.get("o"):
        row["order_id"] = fields["o"]
        if len(row["order_id"]) > ev.MAX_ID_CHARS:
            refused.add("order_id_too_long")
    if UUID7_RE.fullmatch(fields.get("bcid", "")):  # any other is dropped, the event kept
        row["click_id"] = fields["bcid"]
    return row


def expected_row(query: list[tuple[str, str]]) -> dict[str, Any] | set[str]:
    """What the event must hold, as docs/tracking.md describes it, or the reasons to refuse it."""
    fields, props = query_fields(query)
    refused: set[str] = set()
    row: dict[str, Any] = {"event_type": fields.get("e") or "pageview"}
    if row["event_type"] not in ev.EVENT_TYPES:
        refused.add("bad_event_type")
    for short, name in ev.ID_FIELDS:
        row[name] = fields.get(short, "")
        if len(row[name]) > ev.MAX_ID_CHARS:
            refused.add(f"{name}_too_long")
    host, path, page_query = reference_split(fields.get("u", "")[: ev.MAX_URL_CHARS], frozenset())
    row |= {"url_host": host, "url_path": path, "url_query": page_query}
    # The referrer's origin and path: no query, no fragment.
    row["referrer"] = re.split("[?#]", fields.get("ref", ""))[0][: ev.MAX_URL_CHARS]
    row |= expected_conversion(fields, refused)
    # Stored strings lose every control character; a property key made only of them goes.
    row = {k: CONTROL_RE.sub("", v) if isinstance(v, str) else v for k, v in row.items()}
    row["props"] = {CONTROL_RE.sub("", k): CONTROL_RE.sub("", v) for k, v in props.items()}
    row["props"].pop("", None)
    return refused or row


STORED = (
    "event_type", *(name for _, name in ev.ID_FIELDS), "url_host", "url_path", "url_query",
    "referrer", "props", "currency", "order_id", "click_id",
)  # fmt: skip


@FAST
@given(pairs, encoders)
async def test_the_event_holds_what_the_pixel_query_says(query, encode):
    line = f"GET /p.gif?{encode(query)} HTTP/1.1"
    assume(len(line) < MAX_LINE_BYTES)  # a longer one is refused with a 400 before any handler
    head = f"{line}\r\nHost: t\r\nUser-Agent: {UA}".encode()
    message = aiohttp_message(head)
    request = Request(message.url.query, message.headers)
    assert list(request.query.items()) == query  # the encoding took nothing away
    collector, kept, metrics = pixel_collector()
    outcome = collector.pixel_outcome(request, None)
    event(outcome)
    expected = expected_row(query)
    if isinstance(expected, set):
        assert outcome == "rejected"
        reasons = set(dropped(metrics))
        assert len(reasons) == 1 and reasons <= expected  # for a reason the query gives
        return
    assert outcome == "recorded"
    row = orjson.loads(kept.events[0])
    assert {k: row.get(k) for k in STORED} == {k: expected.get(k) for k in STORED}
    assert (row["user_agent"], row["transport"], row["verified"]) == (UA, "pixel", 0)
    assert ("value" in row) == ("value" in expected)
    if "value" in row:  # a plain decimal string, exactly the number sent
        assert re.fullmatch(r"[0-9]+(\.[0-9]+)?", row["value"])
        assert Decimal(row["value"]) == expected["value"]


@pytest.mark.parametrize(
    "currency", ["\u00dfa", "\ufb00x", "EUR\n"], ids=["sharp-s", "ff-ligature", "newline"]
)
def test_a_currency_is_three_ascii_letters(currency: str) -> None:
    """str.upper() turns "\u00dfa" into "SSA" and "\ufb00x" into "FFX": a currency the query
    never said would be stored."""
    with pytest.raises(ev.Rejected):
        ev.conversion_fields({"cur": currency}, [])


# -- the fast path's head parser against aiohttp's -----------------------------------------

TOKEN = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
PRINTABLE = "".join(map(chr, range(0x20, 0x7F)))
HIGH = "".join(map(chr, range(0x80, 0x100)))
# Each part is mostly what the fast path reads, and now and then what it must leave to
# aiohttp: a name that is no token, a control in a value, a space or fragment in the query.
header_names = st.one_of(
    st.sampled_from(
        ["Host", "host", "User-Agent", "Referer", "Connection", "Content-Length",
         "Transfer-Encoding", "Upgrade", "Expect", "DNT", "Sec-Purpose", "X-Forwarded-For"]
    ),
    st.text(alphabet=TOKEN, min_size=1, max_size=12),
    st.text(alphabet=TOKEN + " (@", max_size=12),
)  # fmt: skip
# Printable ASCII, tab and bytes >= 0x80 (latin-1 text, one byte a character).
value_text = st.text(alphabet=PRINTABLE + "\t" + HIGH, max_size=15)
header_values = st.one_of(
    st.sampled_from(["keep-alive", "Keep-Alive \t", "close", "0", "chunked"]),
    value_text,
    st.builds("{}{}{}".format, value_text, st.sampled_from("\x00\x01\x0b\x1b\x7f\r\n"), value_text),
)
header_lines = st.builds(
    lambda name, sep, value: name.encode() + b":" + sep + value.encode("latin-1"),
    header_names,
    st.sampled_from([b"", b" ", b"\t", b" \t "]),
    header_values,
)
queries = st.one_of(
    st.none(),
    st.text(alphabet=PRINTABLE.replace(" ", "").replace("#", ""), max_size=60).map(str.encode),
    st.text(alphabet=PRINTABLE, max_size=60).map(str.encode),
)
heads = st.builds(
    lambda query, host, lines: b"\r\n".join(
        [b"GET /p.gif" + (b"" if query is None else b"?" + query) + b" HTTP/1.1"]
        + ([b"Host: t"] if host else [])
        + lines
    ),
    queries,
    st.sampled_from([True, True, True, False]),
    st.lists(header_lines, max_size=4),
)


@settings(max_examples=600, deadline=None)
@given(heads)
async def test_parse_head_reads_what_aiohttp_reads_or_hands_it_over(head):
    parsed = parse_head(head)
    event("handed over" if isinstance(parsed, str) else "read")
    if isinstance(parsed, str):
        assert parsed == "other_request"
        return
    assert isinstance(parsed, PixelRequest)
    mine = [(k.lower(), v) for k, v in parsed.headers.items()], list(parsed.query.items())
    assert mine == aiohttp_parse(head)
