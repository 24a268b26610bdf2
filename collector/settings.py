"""Collector settings: one frozen dataclass, built from BEACON_* variables."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from collector.config import SettingsError, from_mapping, setting

PREFIX = "BEACON_"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a collector process needs; read once in __main__."""

    host: str = setting("127.0.0.1", "address to listen on")
    port: int = setting(8080, "port to listen on", min=0)
    data_dir: Path = setting(Path("data"), "where the spool, the store and the secret live")
    sink: str = setting(
        "auto",
        "where events go; auto: kafka when a bootstrap is set, else spool",
        choices=("auto", "kafka", "spool", "memory"),
    )
    ip_mode: str = setting(
        "truncate",
        "client IP kept: /24 and /48, whole, or none",
        choices=("truncate", "full", "drop"),
    )
    dnt_policy: str = setting(
        "passive",
        "DNT/GPC: drop passive events and anonymise the rest, record as usual, or drop all",
        choices=("passive", "ignore", "all"),
    )
    forwarded_header: str = setting("", "trusted proxy header with the client IP (X-Forwarded-For)")
    url_query_keep: tuple[str, ...] = setting((), "page URL query keys kept besides utm_*")
    secret: str = setting("", "visitor-id key material; default: a random one kept in data_dir")
    buffer_max_events: int = setting(
        100_000, "events held in memory before new ones are dropped", min=1
    )
    linger_ms: int = setting(
        20, "how long the buffer waits before handing events to the sink", min=1
    )
    flush_interval_ms: int = setting(1000, "how often the sink is flushed (spool: fsync)", min=1)
    drain_ms: int = setting(1000, "after SIGTERM: not-ready but serving, this long", min=0)
    spool_segment_max_bytes: int = setting(16 << 20, "spool segment rotated at this size", min=1024)
    spool_segment_max_age_ms: int = setting(1000, "spool segment rotated at this age", min=1)
    spool_max_bytes: int = setting(
        1 << 30, "total spool size; events beyond it are dropped", min=1024
    )

    kafka_bootstrap: str = setting("", "Kafka bootstrap servers (host:port,...); empty: no Kafka")
    kafka_topic: str = setting("beacon.events", "topic events are produced to")
    kafka_dlq_topic: str = setting("beacon.events.dlq", "topic for records consumers cannot decode")
    kafka_partitions: int = setting(
        6, "partitions of the topics `beacon kafka init` creates", min=1
    )
    kafka_replication: int = setting(1, "replication factor of those topics", min=1)
    kafka_compression: str = setting(
        "lz4", "producer compression", choices=("none", "gzip", "lz4", "zstd")
    )
    kafka_linger_ms: int = setting(5, "producer linger before a batch is sent", min=0)
    kafka_batch_max_bytes: int = setting(1 << 20, "bytes per producer record batch", min=1024)
    kafka_timeout_ms: int = setting(
        5000, "a batch not acknowledged in this time goes to the spool", min=100
    )
    kafka_buffer_max_bytes: int = setting(
        64 << 20, "unacknowledged bytes in flight to Kafka; beyond it, to the spool", min=1 << 16
    )

    def __post_init__(self) -> None:
        if self.sink == "kafka" and not self.kafka_bootstrap:
            raise SettingsError(f"{PREFIX}SINK=kafka needs {PREFIX}KAFKA_BOOTSTRAP")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        return from_mapping(cls, env, PREFIX)

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"


__all__ = ["PREFIX", "Settings", "SettingsError"]
