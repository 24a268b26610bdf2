"""The consumer's Prometheus metrics, registered on an injected registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

INSERT_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ConsumerMetrics:
    """Every series a consumer process exports."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.rows_read = Counter(
            "beacon_consumer_rows_read", "Kafka records (or spool lines) read.", registry=registry
        )
        self.rows_inserted = Counter(
            "beacon_consumer_rows_inserted", "Rows inserted into ClickHouse.", registry=registry
        )
        self.rows_rejected = Counter(
            "beacon_consumer_rows_rejected",
            "Rows that could not be stored, by reason.",
            ["reason"],
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
        # lag_records, dlq_records and paused_partitions are the Kafka source's (zero when the
        # consumer reads the spool); retries and batches count for either source.
        self.lag_records = Gauge(
            "beacon_consumer_lag_records",
            "Records in a partition not yet committed: end offset - committed offset.",
            ["topic", "partition"],
            registry=registry,
        )
        self.retries = Counter(
            "beacon_consumer_retries",
            "Failed batch steps that will be retried, by step (dlq, mark, insert, commit).",
            ["step"],
            registry=registry,
        )
        self.dlq_records = Counter(
            "beacon_consumer_dlq_records",
            "Undecodable records sent to the dead-letter topic, by reason.",
            ["reason"],
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
