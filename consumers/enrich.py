"""Turn wire events into ClickHouse rows: the consumer's own additions happen here."""

from __future__ import annotations

import orjson

from collector.event import SCHEMA_VERSION


class BadRow(Exception):
    """A line that cannot become a row; `reason` labels the counter."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def to_row(line: bytes) -> bytes:
    """One wire event (JSON) -> one JSONEachRow line for beacon.events."""
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise BadRow("malformed_json") from None
    if not isinstance(event, dict) or "event_id" not in event:
        raise BadRow("not_an_event")
    if event.get("schema_version", 0) > SCHEMA_VERSION:
        raise BadRow("unknown_schema_version")
    received_ms = event.get("received_at")
    if not isinstance(received_ms, int):
        raise BadRow("bad_received_at")
    # ClickHouse reads a DateTime64 number as seconds; the wire carries milliseconds.
    event["received_at"] = received_ms / 1000
    return orjson.dumps(event)
