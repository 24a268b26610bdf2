"""Store settings: where the events live and how they are read; one frozen dataclass, built
from BEACON_* variables. The consumer's settings extend it (consumers/settings.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from analytics.store import CLUSTER_NAME_RE, QUORUM_RE, Cluster
from analytics.store.readers import ReadLimits
from contract import common
from contract.common import PREFIX
from contract.config import (
    SettingsError,
    from_mapping,
    is_placeholder,
    refuse_short_secret,
    setting,
)
from contract.event import RETENTION_DAYS_MAX

# A listen address is not an address to call.
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]"})


def site_hosts_of(text: str) -> dict[str, tuple[str, ...]]:
    """BEACON_SITE_HOSTS (`site=host,host;site2=host`) as a mapping; raises SettingsError."""
    out: dict[str, tuple[str, ...]] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        site, sep, hosts = part.partition("=")
        names = tuple(h.strip().lower() for h in hosts.split(",") if h.strip())
        if not sep or not site.strip() or not names:
            raise SettingsError(
                f"{PREFIX}SITE_HOSTS: expected site=host,host;site2=host, got {part!r}"
            )
        out[site.strip()] = names
    return out


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """Everything a process that writes or reads the store needs; read once in __main__."""

    data_dir: Path = setting(common.DATA_DIR, common.DATA_DIR_HELP)
    store_host: str = setting("127.0.0.1", "address of the store's local query port")
    store_port: int = setting(
        8124, "port where the process owning the store answers queries", min=0
    )
    store_query_timeout_s: int = setting(
        30, "a read through the store port (or the dashboard) is stopped after this", min=1
    )
    store_query_max_result_bytes: int = setting(
        64 * 1024 * 1024, "a read through the store port may answer this much at most", min=1
    )
    store_query_concurrency: int = setting(
        4, "reads the embedded store runs at once; one more is answered 503 busy", min=1
    )
    store_query_max_memory_bytes: int = setting(
        1 << 30,
        "a read through the store port (or the dashboard) that needs more memory is stopped",
        min=16 * 1024 * 1024,
    )
    retention_days: int = setting(
        395,
        "events older than this are deleted by TTL; 0 keeps them (longer ones would wrap "
        "the TTL past a DateTime's end)",
        min=0,
        max=RETENTION_DAYS_MAX,
    )
    audit_log: Path | None = setting(
        None, "where `beacon erase` and `beacon export` append their audit lines"
    )

    visit_gap_s: int = setting(
        1800,
        "a visitor's events this far apart or more are two visits (settled days keep the gap "
        "they were settled with; reports read other days from raw events)",
        min=1,
        max=86400,
    )
    duplicate_click_window_s: int = setting(
        30,
        "a click on an ad this soon after the same person's click on it is a duplicate, "
        "invalid traffic that reports leave out (0: none is)",
        min=0,
        max=86400,
    )
    goals: tuple[str, ...] = setting(
        (),
        "goals, comma-separated: a custom event's name, or a page path starting with /; "
        "empty: every custom event is a goal",
    )
    site_hosts: str = setting(
        "",
        "each site's own hosts, whose referrers are not sources: site=host,host;site2=host "
        "(a page's own host always counts)",
    )

    dashboard_token: str = setting(
        "",
        "token for the dashboard page (a long random string, 16 chars or more); empty: off",
        secret=True,
    )
    dashboard_host: str = setting("127.0.0.1", "`beacon dashboard`: address to listen on")
    dashboard_port: int = setting(8125, "`beacon dashboard`: port to listen on", min=0)

    clickhouse_url: str = setting("", "ClickHouse HTTP URL; empty: the embedded store (chDB)")
    clickhouse_user: str = setting("default", "ClickHouse user")
    clickhouse_password: str = setting("", "ClickHouse password", secret=True)
    clickhouse_compression: str = setting(
        "zstd",
        "request bodies to ClickHouse: zstd (level 1, ~19x smaller, ~0.4 us of CPU an event), "
        "gzip (level 1, ~11x, ~1.5 us) or none (the consumer then only moves bytes)",
        choices=("zstd", "gzip", "none"),
    )
    clickhouse_day_timeout_s: int = setting(
        3600,
        "how long a ClickHouse server may take over a statement that reads or rewrites whole "
        "days (settling a day, an erasure's DELETE and its rebuild) before it is tried again; "
        "other statements have 60 s",
        min=60,
        max=86400,
    )
    clickhouse_cluster: str = setting(
        "",
        "the ClickHouse cluster's name in remote_servers (deploy/clickhouse/cluster.sql); empty: "
        "a single server",
    )
    clickhouse_replicas_cluster: str = setting(
        "",
        "several servers answer at the URL (replicas behind a load balancer) and no cluster is "
        "set: their cluster's name in remote_servers, where a retried batch looks for its "
        "earlier insert still running; empty: the URL is one server",
    )
    clickhouse_insert_quorum: str = setting(
        "auto",
        "with a cluster, or replicas behind the URL: replicas (of each shard) an insert waits "
        "for (auto: a majority; 0 or 1: the one written to)",
    )

    def __post_init__(self) -> None:
        # The token is all that guards the dashboard's figures: a short one can be guessed.
        refuse_short_secret(f"{PREFIX}DASHBOARD_TOKEN", self.dashboard_token, "empty: off")
        if is_placeholder(self.clickhouse_password):  # "" is no password: allowed
            raise SettingsError(
                f"{PREFIX}CLICKHOUSE_PASSWORD: a placeholder value; set the real one"
            )
        site_hosts_of(self.site_hosts)  # refused at start, not when a report is asked
        if self.clickhouse_cluster and not self.clickhouse_url:
            raise SettingsError(
                f"{PREFIX}CLICKHOUSE_CLUSTER: a cluster is reached through a server: set "
                f"{PREFIX}CLICKHOUSE_URL too"
            )
        if self.clickhouse_cluster and not CLUSTER_NAME_RE.match(self.clickhouse_cluster):
            raise SettingsError(
                f"{PREFIX}CLICKHOUSE_CLUSTER: letters, digits, _ and - only (the name in "
                f"remote_servers), got {self.clickhouse_cluster!r}"
            )
        self._check_replicas_cluster()
        if not QUORUM_RE.match(self.clickhouse_insert_quorum):
            raise SettingsError(
                f"{PREFIX}CLICKHOUSE_INSERT_QUORUM: auto or a number of replicas, got "
                f"{self.clickhouse_insert_quorum!r}"
            )

    def _check_replicas_cluster(self) -> None:
        name = f"{PREFIX}CLICKHOUSE_REPLICAS_CLUSTER"
        if not self.clickhouse_replicas_cluster:
            return
        if not self.clickhouse_url:
            raise SettingsError(f"{name}: replicas are reached through a server: set "
                                f"{PREFIX}CLICKHOUSE_URL too")  # fmt: skip
        if self.clickhouse_cluster:
            raise SettingsError(
                f"{name}: cluster mode ({PREFIX}CLICKHOUSE_CLUSTER) looks on every replica of "
                "its cluster already; set one of the two"
            )
        if not CLUSTER_NAME_RE.match(self.clickhouse_replicas_cluster):
            raise SettingsError(
                f"{name}: letters, digits, _ and - only (the name in remote_servers), got "
                f"{self.clickhouse_replicas_cluster!r}"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> StoreSettings:
        return from_mapping(cls, env, PREFIX)

    @property
    def cluster(self) -> Cluster | None:
        """The cluster the store is, or None for one server (or the embedded store)."""
        if not self.clickhouse_cluster:
            return None
        return Cluster(self.clickhouse_cluster, self.clickhouse_insert_quorum)

    @property
    def store_dir(self) -> Path:
        return self.data_dir / "clickhouse"

    @property
    def audit_path(self) -> Path:
        """The audit log: `audit_log`, or audit.log in the data directory."""
        if self.audit_log is None or self.audit_log == Path(""):  # unset, or set to ""
            return self.data_dir / "audit.log"
        return self.audit_log

    @property
    def store_url(self) -> str:
        """Where local clients call the store port: a listen-anywhere address answers on
        loopback, and the port serves loopback callers only (analytics/query_server.py)."""
        host = "127.0.0.1" if self.store_host in WILDCARD_HOSTS else self.store_host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.store_port}"

    @property
    def read_limits(self) -> ReadLimits:
        """The limits of every read through the store port and the dashboard."""
        return ReadLimits(
            self.store_query_timeout_s,
            self.store_query_max_result_bytes,
            self.store_query_concurrency,
            self.store_query_max_memory_bytes,
        )
