"""The event on the wire: its schema version (docs/tracking.md "Event format"), and what
refusing one looks like on either side."""

# 2: `verified` on every event; click_id, order_id, value, currency when the event has them;
# `consent` on every event (collector/consent.py).
SCHEMA_VERSION = 2


class Rejected(Exception):
    """Input that cannot become an event (at the collector) or a row (at the consumer);
    `reason` is a short label for counters, clients and the dead-letter header."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
