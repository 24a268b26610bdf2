"""Turn wire events into ClickHouse rows: the consumer's own additions happen here."""

from __future__ import annotations

import orjson

from collector.event import SCHEMA_VERSION


class BadRow(Exception):
    """A line that cannot become a row; `reason` labels the counter (and the DLQ header)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def decode(line: bytes) -> dict:
    """Parse and check one wire event; raises BadRow."""
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise BadRow("malformed_json") from None
    if not isinstance(event, dict) or "event_id" not in event:
        raise BadRow("not_an_event")
    if event.get("schema_version", 0) > SCHEMA_VERSION:
        raise BadRow("unknown_schema_version")
    if not isinstance(event.get("received_at"), int):
        raise BadRow("bad_received_at")
    return event


class Enricher:
    """Wire event -> JSONEachRow line for beacon.events, with what the consumer adds."""

    def to_row(self, line: bytes) -> bytes:
        event = decode(line)
        # ClickHouse reads a DateTime64 number as seconds; the wire carries milliseconds.
        event["received_at"] = event["received_at"] / 1000
        return orjson.dumps(event)
