"""The event on the wire: its schema version (docs/events.md, README "Event format")."""

# 2: `verified` on every event; click_id, order_id, value, currency when the event has them;
# `consent` on every event (collector/consent.py).
SCHEMA_VERSION = 2
