"""The event on the wire: its schema version (docs/tracking.md "Event format"), and what
refusing one looks like on either side."""

# 2: `verified` on every event; click_id, order_id, value, currency when the event has them;
# `consent` on every event (collector/consent.py).
SCHEMA_VERSION = 2

# The longest retention (BEACON_RETENTION_DAYS; 0 keeps events for good): a row's TTL, its
# time plus the retention, must stay within a DateTime (to 2106-02-07), or ClickHouse wraps it
# into the past and deletes the row at its part's first merge.
RETENTION_DAYS_MAX = 3660

# The range of `received_at` (ms since the epoch): a DateTime's, the type of the rollups'
# periods, less the longest retention (to 2096-01-30); a time outside it is refused, not stored
# wrapped, saturated or deleted by its TTL at the first merge.
RECEIVED_AT_MAX_MS = (2**32 - RETENTION_DAYS_MAX * 86_400) * 1000 - 1

# The values of the optional field `network`: the class the collector found for the whole
# client address (collector/networks.py), which the consumer's invalid-traffic rule reads
# (analytics/ivt.py). Left out for any other address.
NETWORK_DATA_CENTER = "data_center"
NETWORK_CRAWLER = "crawler"
NETWORKS = (NETWORK_DATA_CENTER, NETWORK_CRAWLER)


class Rejected(Exception):
    """Input that cannot become an event (at the collector) or a row (at the consumer);
    `reason` is a short label for counters, clients and the dead-letter header."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
