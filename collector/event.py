"""Turn validated request fields into the flat event row that goes on the wire."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from contract.event import SCHEMA_VERSION, Rejected

# engagement: scroll depth and engaged time of a page view, sent by the snippet (t.js);
# viewable: an ad impression that met its MRC viewability rule, sent by the ad tag (a.js).
EVENT_TYPES = frozenset(
    {
        "pageview",
        "open",
        "impression",
        "click",
        "conversion",
        "custom",
        "send",
        "engagement",
        "viewable",
    }
)

# Short request parameter -> event field (ClickHouse column).
ID_FIELDS = (("s", "site"), ("c", "campaign"), ("m", "message"), ("r", "recipient"), ("ad", "ad"))
# Conversion parameters: value, currency (ISO 4217), order id, and the click id that the click
# redirect appended to the landing URL (collector/redirect.py).
CONVERSION_KEYS = frozenset({"v", "cur", "o", "bcid"})
# consent: 1/0 (collector/consent.py).
KNOWN_KEYS = frozenset(
    {"e", "u", "ref", "consent"} | {short for short, _ in ID_FIELDS} | CONVERSION_KEYS
)

MAX_PROPS = 30
MAX_PROP_KEY_CHARS = 64
MAX_PROP_VALUE_CHARS = 512
MAX_URL_CHARS = 2000
MAX_ID_CHARS = 256
MAX_USER_AGENT_CHARS = 512
# The value column is Decimal(18, 4): 14 integer digits, 4 fractional ones.
MAX_VALUE = Decimal("1e14")
VALUE_EXPONENT_MIN = -4
CURRENCY_RE = re.compile(r"[A-Za-z]{3}")  # ISO 4217, any case; ASCII only (fullmatch)
# A conversion value: ASCII digits with an optional point and decimals, nothing else (fullmatch).
# Decimal() alone also takes spaces, underscores ("1_000"), signs, exponents and the digits of
# every script ("١٢"); none of them is how a price is written in a URL or JSON.
VALUE_RE = re.compile(r"[0-9]+(?:\.[0-9]+)?")
MAX_VALUE_TEXT_CHARS = 64  # far more than the column's 18 digits, with leading zeros
# What urlencode (quote_plus) leaves as it is.
UNRESERVED_RE = re.compile(r"[A-Za-z0-9_.~-]*")
# Click ids are UUIDv7 strings made here; anything else would only ever fail to join.
CLICK_ID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}\Z")

# Every reason this module refuses an event with, and every note of what it cut: the labels of
# beacon_events_dropped_total and beacon_input_fixed_total, made at 0 by collector/metrics.py.
TOO_LONG = {name: f"{name}_too_long" for _, name in ID_FIELDS}
REJECT_REASONS = (
    "bad_event_type",
    "bad_value",
    "bad_currency",
    "order_id_too_long",
    *TOO_LONG.values(),
)
PROP_NOTES = ("prop_key_invalid", "prop_value_too_long", "too_many_props")
NOTES = (*PROP_NOTES, "url_truncated", "user_agent_truncated", "bad_click_id")


def uuid7(now_ms: int) -> str:
    """A UUIDv7 (RFC 9562): 48-bit Unix ms, version, variant, 74 random bits."""
    rand = int.from_bytes(os.urandom(10), "big")
    value = (now_ms & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76 | (rand >> 68 & 0xFFF) << 64
    value |= 0b10 << 62 | rand & 0x3FFF_FFFF_FFFF_FFFF
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# The variant nibble of a UUID is 10xx: a random hex digit mapped onto 8, 9, a or b.
VARIANT_NIBBLE = dict(zip("0123456789abcdef", "89ab" * 4, strict=True))
UUID_POOL_BYTES = 4096


class Uuid7Source:
    """UUIDv7 strings like `uuid7()`, from random bytes drawn 4 KiB at a time.

    One `os.urandom` call (a syscall) per ~400 ids instead of one per id, and one format
    per id over hex digits: ~0.7 us per id against ~1.7 us for `uuid7()`.
    """

    __slots__ = ("_ms", "_pool", "_pos", "_prefix")

    def __init__(self) -> None:
        self._pool = ""
        self._pos = 0
        self._ms = -1
        self._prefix = ""

    def __call__(self, now_ms: int) -> str:
        if now_ms != self._ms:
            t = f"{now_ms & 0xFFFF_FFFF_FFFF:012x}"
            self._prefix = f"{t[:8]}-{t[8:]}-7"
            self._ms = now_ms
        pos = self._pos
        if pos + 19 > len(self._pool):
            self._pool = os.urandom(UUID_POOL_BYTES).hex()
            pos = 0
        self._pos = pos + 19
        r = self._pool[pos : pos + 19]  # 76 random bits, of which 74 are kept
        return f"{self._prefix}{r[:3]}-{VARIANT_NIBBLE[r[3]]}{r[4:7]}-{r[7:]}"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def clean_props(props: Iterable[tuple[str, str]], notes: list[str]) -> dict[str, str]:
    """Keep at most MAX_PROPS properties within the key and value limits; note what was cut."""
    kept: dict[str, str] = {}
    for key, value in props:
        if not key or len(key) > MAX_PROP_KEY_CHARS:
            notes.append("prop_key_invalid")
        elif len(value) > MAX_PROP_VALUE_CHARS:
            notes.append("prop_value_too_long")
        elif len(kept) >= MAX_PROPS and key not in kept:
            notes.append("too_many_props")
        else:
            kept[key] = value
    return kept


def split_url(url: str, keep_query: frozenset[str]) -> tuple[str, str, str]:
    """(host, path, query) of a page URL, keeping only utm_* and allow-listed query keys."""
    if not url:  # a pixel in a mail client has no page
        return "", "", ""
    parts = split_http_url(url)
    if parts is None:
        try:
            split = urlsplit(url)
            parts = ((split.hostname or "").lower(), split.path, split.query)
        except ValueError:
            return "", "", ""
    host, path, query = parts
    if not query:
        return host, path, ""
    if "%" in query or "+" in query:
        pairs = parse_qsl(query, keep_blank_values=True)
    else:  # nothing to decode: what parse_qsl gives, without its per-pair unquoting
        pairs = [(k, v) for k, _, v in (p.partition("=") for p in query.split("&") if p)]
    kept = [(k, v) for k, v in pairs if k.startswith("utm_") or k in keep_query]
    if not kept:
        return host, path, ""
    if all(UNRESERVED_RE.fullmatch(k) and UNRESERVED_RE.fullmatch(v) for k, v in kept):
        return host, path, "&".join([f"{k}={v}" for k, v in kept])  # urlencode would keep them
    return host, path, urlencode(kept)


def split_http_url(url: str) -> tuple[str, str, str] | None:
    """(lowercased host, path, query) as `urlsplit` gives them, for the common URL; None
    for any other (relative, other schemes, IPv6 hosts, characters `urlsplit` strips or
    checks), which `urlsplit` then handles. A few string partitions instead of `urlsplit`
    and its `.hostname` property.
    """
    if url.startswith("https://"):
        rest = url[8:]
    elif url.startswith("http://"):
        rest = url[7:]
    else:
        return None
    # urlsplit drops tabs and newlines anywhere, strips leading and trailing controls and
    # spaces, and checks non-ASCII hosts under NFKC: none of that on this path.
    if not url.isascii() or not url.isprintable() or url[-1] == " ":
        return None
    if "[" in url or "]" in url:  # IPv6 hosts, and brackets urlsplit may refuse
        return None
    end = len(rest)
    for mark in "/?#":
        i = rest.find(mark)
        if i != -1 and i < end:
            end = i
    netloc, rest = rest[:end], rest[end:]
    rest = rest.partition("#")[0]
    path, _, query = rest.partition("?")
    host = netloc.rpartition("@")[2].partition(":")[0]
    return host.lower(), path, query


def strip_query(url: str) -> str:
    """A referrer without its query and fragment: where people came from, not what they typed."""
    cut = len(url)
    for mark in ("?", "#"):
        i = url.find(mark)
        if i != -1 and i < cut:
            cut = i
    return url[:cut]


def conversion_fields(fields: Mapping[str, str], notes: list[str]) -> dict[str, str]:
    """The click and conversion fields present in `fields`, checked; raises Rejected.

    A bad value or currency rejects the event (revenue must not be guessed); a mangled click
    id only loses the attribution, so the conversion is kept without it and noted.
    """
    out: dict[str, str] = {}
    raw_value = fields.get("v", "")
    if raw_value:
        if len(raw_value) > MAX_VALUE_TEXT_CHARS or not VALUE_RE.fullmatch(raw_value):
            raise Rejected("bad_value")
        value = Decimal(raw_value)
        exponent = value.as_tuple().exponent
        if not value.is_finite() or not 0 <= value < MAX_VALUE:
            raise Rejected("bad_value")
        if isinstance(exponent, int) and exponent < VALUE_EXPONENT_MIN:
            raise Rejected("bad_value")  # more decimals than the column keeps: not rounded
        # A plain decimal string on the wire, without leading zeros ("007.50" -> "7.50").
        out["value"] = format(value, "f")
    currency = fields.get("cur", "")
    if currency:
        # Checked before upper-casing: str.upper() makes "SSA" of "\u00dfa".
        if not CURRENCY_RE.fullmatch(currency):
            raise Rejected("bad_currency")
        out["currency"] = currency.upper()
    order_id = fields.get("o", "")
    if order_id:
        if len(order_id) > MAX_ID_CHARS:
            raise Rejected("order_id_too_long")
        out["order_id"] = order_id
    click_id = fields.get("bcid", "")
    if click_id:
        if CLICK_ID_RE.match(click_id):
            out["click_id"] = click_id
        else:
            notes.append("bad_click_id")
    return out


def build_event(
    fields: Mapping[str, str],
    props: dict[str, str],
    *,
    page_url: str,
    user_agent: str,
    ip: str,
    visitor_id: int,
    dnt: bool,
    transport: str,
    received_ms: int,
    keep_query: frozenset[str],
    notes: list[str],
    verified: bool = False,
    event_id: str = "",
    country: str = "",
    network: str = "",
    purpose: str = "",
) -> dict[str, Any]:
    """The event row; raises Rejected for input that must not be stored (what it refuses
    depends on `fields` alone: see check_fields).

    `event_id` is made here unless given (the collector makes its own, to the hour for rows
    kept without consent); `country` is the client's (collector/geo.py), "" when unknown;
    `network` the class of its address (collector/networks.py) and `purpose` what a
    speculative request said it is (collector/request_view.py), each on the wire only when
    not "" (most events have neither, and consumers read a missing one as "").
    """
    event_type = fields.get("e") or "pageview"
    if event_type not in EVENT_TYPES:
        raise Rejected("bad_event_type")
    if len(page_url) > MAX_URL_CHARS:
        page_url = page_url[:MAX_URL_CHARS]
        notes.append("url_truncated")
    referrer = fields.get("ref", "")
    if referrer:
        referrer = strip_query(referrer)
    if len(referrer) > MAX_URL_CHARS:
        referrer = referrer[:MAX_URL_CHARS]
        notes.append("url_truncated")
    if len(user_agent) > MAX_USER_AGENT_CHARS:
        user_agent = user_agent[:MAX_USER_AGENT_CHARS]
        notes.append("user_agent_truncated")
    host, path, query = split_url(page_url, keep_query)
    event: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "event_id": event_id or uuid7(received_ms),
        "received_at": received_ms,
        "event_type": event_type,
    }
    for short, name in ID_FIELDS:
        value = fields.get(short, "")
        if len(value) > MAX_ID_CHARS:
            raise Rejected(TOO_LONG[name])
        event[name] = value
    event["url_host"] = host
    event["url_path"] = path
    event["url_query"] = query
    event["referrer"] = referrer
    event["props"] = props
    event["user_agent"] = user_agent
    event["ip"] = ip
    event["country"] = country
    if network:
        event["network"] = network
    if purpose:
        event["purpose"] = purpose
    event["visitor_id"] = visitor_id
    event["dnt"] = int(dnt)
    event["transport"] = transport
    event["verified"] = int(verified)
    if not CONVERSION_KEYS.isdisjoint(fields):  # most events are no conversion
        event.update(conversion_fields(fields, notes))
    if transport == "redirect":
        event["click_id"] = event["event_id"]  # the id appended to the landing URL
    return event


def check_fields(fields: Mapping[str, str]) -> None:
    """Raise Rejected when build_event would refuse `fields`.

    By building a throwaway row, so the two cannot disagree: for POST /e, whose events are
    checked all before any is stored.
    """
    build_event(
        fields,
        {},
        page_url="",
        user_agent="",
        ip="",
        visitor_id=0,
        dnt=False,
        transport="beacon",
        received_ms=0,
        keep_query=frozenset(),
        notes=[],
        event_id="check",
    )
