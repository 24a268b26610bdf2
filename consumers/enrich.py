"""What the consumer adds to an event: the user agent's columns and the machine-open rules, once
per distinct (user agent, address) pair (`Enricher.agent_row`, used by consumers/ingest.py), and
the invalid-traffic reason (analytics/ivt.py).

`decode` and `to_row` make the same row from one wire line in Python: the reference that
tests/integration/test_ingest.py holds the ingest's SQL to, column by column."""

from __future__ import annotations

import re
from typing import Any

import orjson

from analytics import ivt
from analytics.machine_opens import classify_open
from consumers.useragent import UserAgentParser
from contract.event import RECEIVED_AT_MAX_MS, SCHEMA_VERSION, Rejected

# What collector.event writes into the Decimal(18, 4) column: digits, at most 4 decimals.
VALUE_RE = re.compile(r"^[0-9]{1,14}(?:\.[0-9]{1,4})?\Z")  # ASCII digits, as consumers/ingest.py
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}\Z")
COUNTRY_RE = re.compile(r"[A-Za-z]{2}")  # fullmatch; as consumers/ingest.py COUNTRY_RE


def country(value: Any) -> str:
    """The country column of a wire value: two ASCII letters, upper case; else "" (a bad
    country loses the country, not the event)."""
    return value.upper() if isinstance(value, str) and COUNTRY_RE.fullmatch(value) else ""


def wire_text(value: Any) -> str:
    """A wire field read as text as the ingest reads a String field (JSONExtract): null or
    missing is '', a number or other JSON its text; enough to tell '' apart exactly."""
    if value is None:
        return ""
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def wire_int(value: Any) -> int:
    """A wire field read as an integer as the ingest reads one (JSONExtract): null or missing
    is 0, a fraction its integer part, a numeric string the number; raises Rejected
    ("bad_field_type") for anything else."""
    if value is None:
        return 0
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, str) and value.lstrip("-").isascii() and value.lstrip("-").isdigit():
        return int(value)
    raise Rejected("bad_field_type")


def decode(line: bytes) -> dict[str, Any]:
    """Parse and check one wire event; raises Rejected."""
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise Rejected("malformed_json") from None
    if not isinstance(event, dict) or "event_id" not in event:
        raise Rejected("not_an_event")
    event_id = event["event_id"]
    if not (isinstance(event_id, str) and UUID_RE.match(event_id)):
        raise Rejected("bad_event_id")  # the UUID column would refuse the whole insert
    # Older versions only lack fields; their columns read the defaults.
    if not 0 <= wire_int(event.get("schema_version")) <= SCHEMA_VERSION:
        raise Rejected("unknown_schema_version")
    received_at = event.get("received_at")
    if not (isinstance(received_at, int) and 0 <= received_at <= RECEIVED_AT_MAX_MS):
        raise Rejected("bad_received_at")
    # A string field holding other JSON keeps its text, as in the ingest.
    if not isinstance(event.get("user_agent", ""), str):
        event["user_agent"] = wire_text(event["user_agent"])
    # ClickHouse refusing one value would fail the whole insert: check it here, per row.
    if event.get("value") is not None:
        event["value"] = wire_text(event["value"])
        if not VALUE_RE.match(event["value"]):
            raise Rejected("bad_value")
    return event


class Enricher:
    """Wire event -> row of beacon.events, with what the consumer adds.

    One per consumer process (it holds the UA cache, which is why it is not a function):
    `ua_cache_max_entries` at least the rows of a batch parses each distinct UA once a batch.
    """

    def __init__(self, ua_cache_max_entries: int = 10_000) -> None:
        self.user_agents = UserAgentParser(ua_cache_max_entries)

    def enrich(self, line: bytes) -> dict[str, Any]:
        """Wire event -> the row of beacon.events as a dict; `received_at` stays in ms."""
        event = decode(line)
        event["country"] = country(event.get("country"))
        user_agent = event.get("user_agent", "")
        ua = self.user_agents(user_agent)
        # Column names of schema migration 2 (analytics/schema.py).
        event["browser"] = ua.browser
        event["browser_version"] = ua.browser_version
        event["os"] = ua.os
        event["device_type"] = ua.device_type
        event["is_bot"] = ua.is_bot
        kind = classify_open(user_agent, str(event.get("ip", "")), ua.is_bot)
        if event.get("event_type") == "open":
            # Column names of schema migration 3; the rules are in analytics/machine_opens.py.
            event["machine_open"] = kind.machine_open
            event["machine_reason"] = kind.machine_reason
            event["mail_proxy"] = kind.mail_proxy
        # Schema migration 9: the agent's proxy counts for every event type, not only opens.
        event["ivt"] = ivt.classify(
            kind.mail_proxy,
            ua.is_bot,
            wire_text(event.get("network")),
            wire_text(event.get("purpose")),
        )
        return event

    def agent_row(self, user_agent: str, ip: str) -> list[str | int]:
        """What the consumer adds for a user agent, as consumers/ingest.py AGENT_COLUMNS: the
        UA's columns and what the machine-open rules say of an open with it from `ip`."""
        ua = self.user_agents(user_agent)
        kind = classify_open(user_agent, ip, ua.is_bot)
        return [user_agent, ip, ua.browser, ua.browser_version, ua.os, ua.device_type,
                ua.is_bot, kind.machine_open, kind.machine_reason, kind.mail_proxy]  # fmt: skip

    def to_row(self, line: bytes) -> bytes:
        """Wire event -> one JSONEachRow line (without its newline)."""
        return orjson.dumps(json_row(self.enrich(line)))


def json_row(event: dict[str, Any]) -> dict[str, Any]:
    """An enriched event for JSONEachRow: ClickHouse reads a DateTime64 number as seconds,
    the wire carries milliseconds."""
    return {**event, "received_at": event["received_at"] / 1000}
