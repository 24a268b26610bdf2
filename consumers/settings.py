"""Consumer settings: the store's (analytics/settings.py) and the ingest path's, one frozen
dataclass built from BEACON_* variables."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from analytics.settings import PREFIX, StoreSettings
from contract import common
from contract.config import from_mapping, setting


@dataclass(frozen=True, slots=True)
class ConsumerSettings(StoreSettings):
    """Everything a consumer process needs; read once in __main__."""

    batch_max_rows: int = setting(
        100_000,
        "rows (lines) per ClickHouse insert: a batch is cut at the record that reaches it",
        min=1,
    )
    batch_max_bytes: int = setting(
        32 * 1024 * 1024,
        "bytes of wire events per ClickHouse insert: a batch is cut at the record that reaches "
        "it; a Kafka consumer buffers about this much besides the batch on its way, however "
        "many partitions it owns, and its Kafka client up to kafka_partition_fetch_bytes a "
        "partition",
        min=1,
    )
    # Two seconds: inserts of 70,000-100,000 rows at a box's rate cost less a row than those of
    # one second, and the end of a burst does not wait for it (the feeds' quiet cut).
    batch_max_age_ms: int = setting(
        2000, "a batch is inserted when its first row is this old", min=1
    )
    poll_interval_ms: int = setting(
        100,
        "how often an idle consumer looks for new segments (or waits on Kafka); a poll interval"
        " with nothing new cuts the batch at once, at most once a batch age",
        min=1,
    )
    retry_max_ms: int = setting(30_000, "longest wait between retries of a failed insert", min=1)

    kafka_bootstrap: str = setting("", "Kafka bootstrap servers; empty: read the local spool")
    kafka_topic: str = setting(common.EVENTS_TOPIC, common.EVENTS_TOPIC_HELP)
    kafka_dlq_topic: str = setting(common.DLQ_TOPIC, common.DLQ_TOPIC_HELP)
    kafka_group: str = setting("beacon-consumers", "consumer group id")
    kafka_max_records: int = setting(
        5000, "records per getmany() at most; fewer when the byte bound leaves less room", min=1
    )
    kafka_partition_fetch_bytes: int = setting(
        1024 * 1024,
        "bytes the Kafka client fetches ahead from each partition the consumer owns "
        "(max_partition_fetch_bytes), held besides the batch bound; a larger record batch "
        "still comes whole",
        min=1,
    )
    kafka_session_timeout_ms: int = setting(
        10_000,
        "a member that stops heartbeating (killed, frozen) keeps its partitions this long; "
        "the broker accepts 6000 to 300000 by default",
        min=1,
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ConsumerSettings:
        return from_mapping(cls, env, PREFIX)

    @property
    def spool_dir(self) -> Path:
        return common.spool_dir(self.data_dir)

    @property
    def checkpoint_path(self) -> Path:
        return self.data_dir / "spool.checkpoint.json"
