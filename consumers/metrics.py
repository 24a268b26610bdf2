"""The consumer's Prometheus metrics, registered on an injected registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

INSERT_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ConsumerMetrics:
    """Every series a consumer process exports."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.rows_read = Counter(
            "beacon_consumer_rows_read", "Rows read from the source.", registry=registry
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
