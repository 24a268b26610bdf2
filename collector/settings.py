"""Collector settings: one frozen dataclass, built from BEACON_* variables."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from collector.consent import COOKIE_DOMAIN_RE, COOKIE_NAME_RE
from collector.destinations import check_destination
from collector.signing import load_keyring
from contract import common
from contract.common import PREFIX
from contract.config import SettingsError, from_mapping, refuse_short_secret, setting

DAY_MS = common.DAY_MS
# The write-ahead log keeps a POST /e array whole or refuses it (503), so the smallest spool must
# hold the largest array as stored: 100 events, each with the request's page address and user
# agent at their caps (2,000 and 512 characters, JSON-escaped) besides the 64 KiB body.
SPOOL_MIN_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a collector process needs; read once in __main__."""

    host: str = setting("127.0.0.1", "address to listen on")
    port: int = setting(8080, "port to listen on", min=0)
    data_dir: Path = setting(common.DATA_DIR, common.DATA_DIR_HELP)
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
    consent_required: tuple[str, ...] = setting(
        (), "sites whose events need consent=1 ('*': every site); the others need none"
    )
    consent_missing: str = setting(
        "drop",
        "events without consent where it is needed: drop, or keep them without identifiers",
        choices=("drop", "aggregate"),
    )
    visitor_cookie: bool = setting(
        False, "consented events: a first-party visitor cookie instead of the daily hash"
    )
    cookie_name: str = setting("beacon_vid", "name of the visitor cookie")
    cookie_domain: str = setting("", "Domain of the visitor cookie; empty: the collector host")
    cookie_max_age_s: int = setting(
        34_128_000, "lifetime of the visitor cookie in seconds (395 days)", min=1
    )
    cookie_same_site: str = setting(
        "Lax", "SameSite of the visitor cookie", choices=("Lax", "Strict", "None")
    )
    forwarded_header: str = setting("", "trusted proxy header with the client IP (X-Forwarded-For)")
    forwarded_trusted_hops: int = setting(
        1,
        "proxies in front that append to that header: the client is this many from the right",
        min=1,
    )
    url_query_keep: tuple[str, ...] = setting((), "page URL query keys kept besides utm_*")
    geo_db: str = setting(
        "",
        "IP-to-country data: a directory of -num CSV files, or CSV files (comma-separated); "
        "empty: the installed data; off: no country",
    )
    network_db: str = setting(
        "",
        "data-center and crawler address ranges: a file in iporigin's range-table format; "
        "empty: the installed iporigin package's; off: no network lookup",
    )
    # Key material: kept out of repr, so out of logs and tracebacks.
    secret: str = dataclasses.field(
        default="",
        repr=False,
        metadata={"help": "visitor-id key, 16 chars or more; default: a random one in data_dir"},
    )
    # The minimums leave room for a whole POST /e array (collector/handlers.py
    # MAX_BATCH_EVENTS, MAX_BODY_BYTES), which is taken whole or not at all: a smaller bound
    # would answer it 503 for good.
    buffer_max_events: int = setting(
        100_000, "events held in memory before new ones are dropped", min=100
    )
    # A POST's events are its body's (64 KiB at most) and each one's headers (8 KiB).
    buffer_max_bytes: int = setting(
        64 << 20, "bytes of events held in memory before new ones are dropped", min=4 << 20
    )
    linger_ms: int = setting(
        20, "how long the buffer waits before handing events to the sink", min=1
    )
    flush_interval_ms: int = setting(1000, "how often the sink is flushed (spool: fsync)", min=1)
    drain_ms: int = setting(1000, "after SIGTERM: not-ready but serving, this long", min=0)
    spool_segment_max_bytes: int = setting(16 << 20, "spool segment rotated at this size", min=1024)
    spool_segment_max_age_ms: int = setting(1000, "spool segment rotated at this age", min=1)
    spool_segment_idle_ms: int = setting(
        100,
        "spool segment rotated once no event has come for this long (the end of a burst "
        "reaches the consumer at once); the buffer flushes the sink then",
        min=1,
    )
    spool_max_bytes: int = setting(
        1 << 30, "total spool size; events beyond it are dropped", min=SPOOL_MIN_BYTES
    )
    durability: str = setting(
        "memory",
        "memory: events wait in memory for the sink; wal: each is on disk before the answer",
        choices=("memory", "wal"),
    )

    kafka_bootstrap: str = setting("", "Kafka bootstrap servers (host:port,...); empty: no Kafka")
    kafka_topic: str = setting(common.EVENTS_TOPIC, common.EVENTS_TOPIC_HELP)
    kafka_dlq_topic: str = setting(common.DLQ_TOPIC, common.DLQ_TOPIC_HELP)
    kafka_partitions: int = setting(
        6, "partitions of the topics `beacon kafka init` creates", min=1
    )
    kafka_replication: int = setting(3, "replication factor of those topics (one broker: 1)", min=1)
    kafka_min_insync_replicas: int = setting(
        2,
        "min.insync.replicas of those topics: copies an acks=all write needs (one broker: 1)",
        min=1,
    )
    kafka_retention_ms: int = setting(
        3 * DAY_MS, "retention.ms of the events topic (3 days); -1: forever", min=-1
    )
    kafka_dlq_retention_ms: int = setting(
        common.DLQ_RETENTION_MS,
        "retention.ms of the dead-letter topic (14 days); -1: forever",
        min=-1,
    )
    kafka_compression: str = setting(
        "lz4", "producer compression", choices=("none", "gzip", "lz4", "zstd")
    )
    kafka_linger_ms: int = setting(5, "producer linger before a batch is sent", min=0)
    kafka_batch_max_bytes: int = setting(1 << 20, "bytes per producer record batch", min=1024)
    kafka_record_max_bytes: int = setting(
        64 * 1024,
        "events per Kafka record: an NDJSON chunk of up to this many bytes (an event larger "
        "goes alone; 1: one event per record)",
        min=1,
    )
    kafka_timeout_ms: int = setting(
        5000, "a batch not acknowledged in this time goes to the spool", min=100
    )
    kafka_buffer_max_bytes: int = setting(
        64 << 20, "unacknowledged bytes in flight to Kafka; beyond it, to the spool", min=1 << 16
    )

    # Signed URLs (collector/signing.py). Key material is kept out of repr, so out of logs.
    signing_keys: str = dataclasses.field(
        default="",
        repr=False,
        metadata={"help": "URL signing keys 'kid:secret,kid:secret'; the last one signs"},
    )
    signing_key_file: Path | None = setting(
        None, "file with signing keys, one 'kid:secret' a line, after BEACON_SIGNING_KEYS"
    )
    signature_policy: str = setting(
        "record_unverified",
        "pixel with a missing or bad signature: record it as unverified, or drop it (counted)",
        choices=("record_unverified", "drop"),
    )
    click_fallback_url: str = setting(
        "", "where a refused click redirect goes instead of a 400 page (http or https)"
    )
    public_url: str = setting(
        "", "base URL in tracking links `beacon url` prints; default http://HOST:PORT"
    )

    # Limits against slow and flooding clients (collector/limits.py, collector/ratelimit.py).
    header_timeout_ms: int = setting(
        10_000, "a request head must arrive within this (slowloris); 0: no limit", min=0
    )
    body_timeout_ms: int = setting(
        10_000, "a POST /e body must arrive within this after its head; 0: no limit", min=0
    )
    keepalive_timeout_ms: int = setting(
        75_000, "an idle keep-alive connection is closed after this", min=1
    )
    max_connections: int = setting(
        0,
        "open connections per worker; at the cap an idle one is closed to make room, else the"
        " new one; 0: the open-files limit less 128",
        min=0,
    )
    rate_limit_per_s: float = setting(
        0.0, "requests per second per client IP (token bucket); 0: no rate limit", min=0
    )
    rate_limit_burst: int = setting(20, "requests a client IP may send at once", min=1)
    rate_limit_ipv6_prefix: int = setting(
        64,
        "IPv6 clients share a bucket per network of this prefix length (IPv4: per address)",
        min=1,
    )
    pixel_fast_path: bool = setting(
        True,
        "answer pixel-only connections below aiohttp's web layer (the visitor cookie included)",
    )

    def __post_init__(self) -> None:
        if self.sink == "kafka" and not self.kafka_bootstrap:
            raise SettingsError(f"{PREFIX}SINK=kafka needs {PREFIX}KAFKA_BOOTSTRAP")
        if self.kafka_min_insync_replicas > self.kafka_replication:
            raise SettingsError(
                f"{PREFIX}KAFKA_MIN_INSYNC_REPLICAS={self.kafka_min_insync_replicas} is more than "
                f"{PREFIX}KAFKA_REPLICATION={self.kafka_replication}: a write cannot wait for "
                "more copies than there are (one broker: set both to 1)"
            )
        for name in ("kafka_retention_ms", "kafka_dlq_retention_ms"):
            if getattr(self, name) == 0:  # Kafka would delete every segment as it closes
                raise SettingsError(f"{PREFIX}{name.upper()}: -1 (forever) or a positive number")
        if self.rate_limit_ipv6_prefix > 128:
            raise SettingsError(
                f"{PREFIX}RATE_LIMIT_IPV6_PREFIX: 1 to 128, got {self.rate_limit_ipv6_prefix}"
            )
        if self.durability == "wal" and self.sink == "memory":
            # The write-ahead log is the spool: a memory sink has none to write ahead to.
            raise SettingsError(
                f"{PREFIX}DURABILITY=wal needs a spool: {PREFIX}SINK=memory has none"
            )
        # Both go into a Set-Cookie header as they are.
        if not COOKIE_NAME_RE.match(self.cookie_name):
            raise SettingsError(
                f"{PREFIX}COOKIE_NAME: letters, digits, _ and -, up to 64; got {self.cookie_name!r}"
            )
        if self.cookie_domain and not COOKIE_DOMAIN_RE.match(self.cookie_domain):
            raise SettingsError(
                f"{PREFIX}COOKIE_DOMAIN: a host name like example.com, got {self.cookie_domain!r}"
            )
        # A short secret makes guessable visitor ids. Empty is unset: collector/server.py then
        # makes a random one and keeps it in data_dir.
        refuse_short_secret(f"{PREFIX}SECRET", self.secret, "unset: a random one")
        keyring = load_keyring(self.signing_keys, self.signing_key_file)  # raises SettingsError
        if self.signature_policy == "drop" and not keyring:
            raise SettingsError(
                f"{PREFIX}SIGNATURE_POLICY=drop needs {PREFIX}SIGNING_KEYS or "
                f"{PREFIX}SIGNING_KEY_FILE"
            )
        if self.click_fallback_url and check_destination(self.click_fallback_url):
            raise SettingsError(
                f"{PREFIX}CLICK_FALLBACK_URL: expected an absolute http(s) URL, "
                f"got {self.click_fallback_url!r}"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        return from_mapping(cls, env, PREFIX)

    @property
    def spool_dir(self) -> Path:
        return common.spool_dir(self.data_dir)

    @property
    def uses_kafka(self) -> bool:
        """kafka, or auto with a bootstrap address; auto without one is the embedded spool setup."""
        return self.sink == "kafka" or (self.sink == "auto" and bool(self.kafka_bootstrap))

    @property
    def base_url(self) -> str:
        """Where tracking links point: the public URL, or this collector's own address."""
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")


__all__ = ["PREFIX", "Settings", "SettingsError"]
