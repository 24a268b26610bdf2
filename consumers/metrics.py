"""The consumer's Prometheus metrics, registered on an injected registry."""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from analytics.ivt import STORED_REASONS
from consumers.ingest import REJECT_REASONS

INSERT_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# The label values consumers/pipeline.py and consumers/sources/ emit (tests/unit/
# test_metric_labels.py holds the code to these).
INSERT_OUTCOMES = ("ok", "error")
RETRY_STEPS = ("dlq", "mark", "wait", "insert", "erase", "commit")
BATCH_OUTCOMES = ("stored", "rejected", "failed", "revoked")
# What cut a batch: its row or byte bound, its age, a quiet source (no collector writing to the
# spool; nothing fetched from Kafka, every partition read to its end), shutting down, or a
# recorded batch formed again.
CUT_REASONS = ("rows", "bytes", "age", "quiet", "final", "replay", "replay_split")
# The lag gauges' topic label in spool mode, which has no topic nor partitions.
SPOOL_TOPIC = "spool"


class ConsumerMetrics:
    """Every series a consumer process exports."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.rows_read = Counter(
            "beacon_consumer_rows_read", "Kafka records (or spool lines) read.", registry=registry
        )
        self.rows_inserted = Counter(
            "beacon_consumer_rows_inserted",
            "Rows inserted into ClickHouse; a batch stored again under its token (a replay, a"
            " retry) counts again, though ClickHouse keeps it once.",
            registry=registry,
        )
        self.rows_rejected = Counter(
            "beacon_consumer_rows_rejected",
            "Rows that could not be stored, by reason; a batch stored again (a replay, a"
            " retry) counts again, as in rows_inserted.",
            ["reason"],
            registry=registry,
        )
        self.rows_invalid = Counter(
            "beacon_consumer_rows_invalid",
            "Rows stored as general invalid traffic (the ivt column), by reason; a replayed"
            " batch counts again, as in rows_inserted.",
            ["reason"],
            registry=registry,
        )
        self.rows_erased = Counter(
            "beacon_consumer_rows_erased",
            "Rows left out of the store, or deleted right after their batch's insert: their"
            " person was erased after the event was received (it was in the spool or Kafka"
            " then, its batch was replayed, or on its way into the store).",
            registry=registry,
        )
        self.inserts = Counter(
            "beacon_consumer_inserts",
            "ClickHouse insert attempts by outcome.",
            ["outcome"],
            registry=registry,
        )
        self.insert_seconds = Histogram(
            "beacon_consumer_insert_seconds",
            "Time per ClickHouse insert.",
            buckets=INSERT_BUCKETS_S,
            registry=registry,
        )
        self.batch_rows = Histogram(
            "beacon_consumer_batch_rows",
            "Rows per insert.",
            buckets=(1, 10, 100, 1000, 10_000, 100_000),
            registry=registry,
        )
        self.backlog_segments = Gauge(
            "beacon_consumer_backlog_segments",
            "Closed spool segments not yet fully inserted.",
            registry=registry,
        )
        self.replayed_batches = Counter(
            "beacon_consumer_replayed_batches",
            "Batches inserted again after a restart (deduplicated by token).",
            registry=registry,
        )
        # lag_records, dlq_records, records_expired, records_header_replaced, partition_restarts
        # and paused_partitions are the Kafka source's (zero when the consumer reads the spool);
        # retries and batches count for either source.
        self.lag_records = Gauge(
            "beacon_consumer_lag_records",
            "Records in a partition not yet committed: end offset - committed offset.",
            ["topic", "partition"],
            registry=registry,
        )
        self.retries = Counter(
            "beacon_consumer_retries",
            "Failed batch steps that will be retried, by step (dlq, mark, insert, erase, commit).",
            ["step"],
            registry=registry,
        )
        self.dlq_records = Counter(
            "beacon_consumer_dlq_records",
            "Undecodable records sent to the dead-letter topic, by reason.",
            ["reason"],
            registry=registry,
        )
        self.records_expired = Counter(
            "beacon_consumer_records_expired",
            "Kafka records gone from their partition before this consumer group stored them"
            " (retention or a deletion removed them): their events are lost. Those of a batch"
            " recorded in flight are not counted (it may have been stored).",
            registry=registry,
        )
        self.records_header_replaced = Counter(
            "beacon_consumer_records_header_replaced",
            "Kafka records whose header key was not UTF-8 (another producer wrote them), read"
            " with its bytes replaced as Kafka's own clients read them; their events go on as"
            " any other.",
            registry=registry,
        )
        self.partition_restarts = Counter(
            "beacon_consumer_partition_restarts",
            "Partitions found to end before the offset this consumer had read to, read again"
            " from their start: the broker lost the log, or the topic was made again.",
            registry=registry,
        )
        self.paused_partitions = Gauge(
            "beacon_consumer_paused_partitions",
            "Assigned partitions not fetched while their batch waits for a retry.",
            registry=registry,
        )
        self.batches = Counter(
            "beacon_consumer_batches",
            "Batches by outcome: stored, rejected (no good row), failed (retried), revoked.",
            ["outcome"],
            registry=registry,
        )
        self.batch_cuts = Counter(
            "beacon_consumer_batch_cuts",
            "Batches cut, by what cut them: rows or bytes (the bound), age, quiet (nothing "
            "written to the spool, or fetched from Kafka, for a poll interval), final (shutting "
            "down), replay (a recorded batch), replay_split (what was read of a recorded batch "
            "whose other ranges were not, after ten batch ages: a partition without a leader).",
            ["reason"],
            registry=registry,
        )
        # How far behind the stored data is, in time: from the events' own received_at (the
        # collector's clock), per partition of the Kafka source or for the spool
        # (topic="spool", partition="").
        self.newest_event_timestamp = Gauge(
            "beacon_consumer_newest_event_timestamp_seconds",
            "received_at (Unix time) of the newest event stored from a partition; rows kept"
            " without consent (their time cut to the hour) are left out.",
            ["topic", "partition"],
            registry=registry,
        )
        self.lag_seconds = Gauge(
            "beacon_consumer_lag_seconds",
            "Age of the newest event stored from a partition while records of it wait to be"
            " stored (Kafka: lag_records > 0; spool: closed segments left); 0 when none waits.",
            ["topic", "partition"],
            registry=registry,
        )
        # Every label value at 0 from the start: a counter child made at its first increment
        # shows up at 1, and rate() or increase() never see that first one.
        for counter, values in (
            (self.rows_rejected, REJECT_REASONS),
            (self.rows_invalid, STORED_REASONS),
            (self.dlq_records, REJECT_REASONS),
            (self.inserts, INSERT_OUTCOMES),
            (self.retries, RETRY_STEPS),
            (self.batches, BATCH_OUTCOMES),
            (self.batch_cuts, CUT_REASONS),
        ):
            for value in values:
                counter.labels(value)

    def stored_newest(self, source: tuple[str, str], newest_ms: int) -> None:
        """The newest event stored from `source` (topic, partition) has received_at `newest_ms`."""
        self.newest_event_timestamp.labels(*source).set(newest_ms / 1000)

    def show_lag_seconds(
        self, source: tuple[str, str], waiting: bool, newest_ms: int, now_s: float
    ) -> None:
        """How old the newest event stored from `source` is while records of it wait; 0 when
        none waits; not shown while records wait and none was stored yet (`newest_ms` 0)."""
        if waiting and not newest_ms:
            with contextlib.suppress(KeyError):
                self.lag_seconds.remove(*source)
            return
        self.lag_seconds.labels(*source).set(max(0.0, now_s - newest_ms / 1000) if waiting else 0.0)
