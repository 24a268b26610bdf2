"""The settings both sides declare, each default and help text written once: the environment
prefix, the data directory and the spool in it, the topic names. The collector's Settings and
the store's and consumer's settings (analytics/settings.py, consumers/settings.py) use them."""

from __future__ import annotations

from pathlib import Path

PREFIX = "BEACON_"  # every setting is read from PREFIX + its field name in capitals

DATA_DIR = Path("data")
DATA_DIR_HELP = "where the spool, the store and the secret live"
EVENTS_TOPIC = "beacon.events"
EVENTS_TOPIC_HELP = "the events topic"
DLQ_TOPIC = "beacon.events.dlq"
DLQ_TOPIC_HELP = "where lines that cannot be stored go, each alone"
DAY_MS = 24 * 3600 * 1000
# How long the dead-letter topic keeps a record: it is read by people, days later. The default
# of `beacon kafka init` and of a consumer that finds the topic missing.
DLQ_RETENTION_MS = 14 * DAY_MS


def spool_dir(data_dir: Path) -> Path:
    """The spool in a data directory: collectors write segments there, the embedded consumer
    reads them."""
    return data_dir / "spool"
