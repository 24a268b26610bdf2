"""Turn validated request fields into the flat event row that goes on the wire."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

# 2: `verified` on every event; click_id, order_id, value, currency when the event has them;
# `consent` on every event (collector/consent.py).
SCHEMA_VERSION = 2
# engagement: scroll depth and engaged time of a page view, sent by the snippet (t.js).
EVENT_TYPES = frozenset(
    {"pageview", "open", "impression", "click", "conversion", "custom", "send", "engagement"}
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
CURRENCY_RE = re.compile(r"^[A-Z]{3}$")
# Click ids are UUIDv7 strings made here; anything else would only ever fail to join.
CLICK_ID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}$")


class Rejected(Exception):
    """The input cannot become an event; `reason` is a short label for counters and clients."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def uuid7(now_ms: int) -> str:
    """A UUIDv7 (RFC 9562): 48-bit Unix ms, version, variant, 74 random bits."""
    rand = int.from_bytes(os.urandom(10), "big")
    value = (now_ms & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76 | (rand >> 68 & 0xFFF) << 64
    value |= 0b10 << 62 | rand & 0x3FFF_FFFF_FFFF_FFFF
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


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
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
    except ValueError:
        return "", "", ""
    kept = [
        (k, v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
        if k.startswith("utm_") or k in keep_query
    ]
    return host, parts.path, urlencode(kept) if kept else ""


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
        try:
            value = Decimal(raw_value.strip())
        except InvalidOperation:
            raise Rejected("bad_value") from None
        exponent = value.as_tuple().exponent
        if not value.is_finite() or not 0 <= value < MAX_VALUE:
            raise Rejected("bad_value")
        if isinstance(exponent, int) and exponent < VALUE_EXPONENT_MIN:
            raise Rejected("bad_value")  # more decimals than the column keeps: not rounded
        # A plain decimal string on the wire keeps it exact ("1E+2" -> "100", "-0" -> "0").
        out["value"] = format(abs(value), "f")
    currency = fields.get("cur", "")
    if currency:
        if not CURRENCY_RE.match(currency.upper()):
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
) -> dict[str, Any]:
    """The event row; raises Rejected for input that must not be stored.

    `event_id` is made here unless given (the click redirect needs it first: it is the click id).
    """
    event_type = fields.get("e") or "pageview"
    if event_type not in EVENT_TYPES:
        raise Rejected("bad_event_type")
    if len(page_url) > MAX_URL_CHARS:
        page_url = page_url[:MAX_URL_CHARS]
        notes.append("url_truncated")
    referrer = strip_query(fields.get("ref", ""))
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
            raise Rejected(f"{name}_too_long")
        event[name] = value
    event.update(
        url_host=host,
        url_path=path,
        url_query=query,
        referrer=referrer,
        props=props,
        user_agent=user_agent,
        ip=ip,
        visitor_id=visitor_id,
        dnt=int(dnt),
        transport=transport,
        verified=int(verified),
    )
    event.update(conversion_fields(fields, notes))
    if transport == "redirect":
        event["click_id"] = event["event_id"]  # the id appended to the landing URL
    return event
