"""ClickHouse writers: one protocol, one module per way of reaching ClickHouse."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

# Tokens go into SQL text: keep them to characters that need no quoting.
TOKEN_RE = re.compile(r"^[A-Za-z0-9:._-]{1,200}\Z")


def json_rows(text: str) -> list[Any]:
    """The rows of a JSONEachRow or JSONCompactEachRow answer. Split at newlines alone:
    ClickHouse leaves U+0085 unescaped inside a string, and str.splitlines breaks there."""
    return [orjson.loads(line) for line in text.split("\n") if line.strip()]


# Since 26.2 async_insert defaults to 1; batches are big already and a token must apply to
# exactly its insert (DESIGN.md). optimize_on_insert = 0: a ReplacingMergeTree would merge each
# block by its sort key on the way in, over half an insert's cost (docs/performance.md
# "Consumer"); a duplicate inside one batch is collapsed by merges and FINAL like any other.
# insert_deduplicate = 1: the token works only with it, and a server's profile may turn it off.
# max_partitions_per_insert_block = 0: the rollups are partitioned by day, and a batch of events
# over more than 100 days (a backfill, a producer's clock) failed at every retry (code 252),
# its partition or spool held back for good.
INSERT_SETTINGS = {
    "async_insert": "0",
    "optimize_on_insert": "0",
    "insert_deduplicate": "1",
    "max_partitions_per_insert_block": "0",
}
# Inserts of a few rows in the statement (marks, records) that a later statement reads: never
# queued by a server's async_insert, whatever its profile's wait_for_async_insert says.
VALUES_SETTINGS = "SETTINGS async_insert = 0"
# Into a Distributed table (a cluster, docs/operations.md "ClickHouse"): acknowledged only once
# every shard has its slice (the default writes it to the initiator's disk and sends it later,
# lost with that disk), deduplicated by the token on each shard, and on a quorum of each
# shard's replicas (`insert_quorum`: "auto" is a majority).
CLUSTER_INSERT_SETTINGS = {"distributed_foreground_insert": "1"}
CLUSTER_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")  # cluster names have no dots
QUORUM_RE = re.compile(r"^(auto|[0-9]{1,2})\Z")


@dataclass(frozen=True, slots=True)
class Cluster:
    """A ClickHouse cluster a writer works on: its name in `remote_servers` and the quorum of
    replicas an insert waits for on each shard."""

    name: str
    insert_quorum: str = "auto"

    def __post_init__(self) -> None:
        if not CLUSTER_NAME_RE.match(self.name):
            raise ValueError(f"bad cluster name {self.name!r}")
        if not QUORUM_RE.match(self.insert_quorum):
            raise ValueError(f"bad insert quorum {self.insert_quorum!r}")

    @property
    def on(self) -> str:
        """The ON CLUSTER clause of a statement run on every server of the cluster."""
        return f"ON CLUSTER '{self.name}'"


def insert_params(token: str, cluster: Cluster | None = None, quorum: str = "") -> dict[str, str]:
    """The settings of an insert under the dedup `token`, into a cluster's Distributed table
    when `cluster` is given: the one place they are chosen (INSERT_SETTINGS and
    CLUSTER_INSERT_SETTINGS). `quorum`: replicas behind one address, without a cluster, an
    insert waits for (a batch acknowledged on one replica alone goes with that one's disk)."""
    if not TOKEN_RE.match(token):
        raise ValueError(f"bad dedup token {token!r}")
    if quorum and not QUORUM_RE.match(quorum):
        raise ValueError(f"bad insert quorum {quorum!r}")
    settings = dict(INSERT_SETTINGS)
    if cluster is not None:
        settings |= CLUSTER_INSERT_SETTINGS | {"insert_quorum": cluster.insert_quorum}
    elif quorum:
        settings["insert_quorum"] = quorum
    return settings | {"insert_deduplication_token": token}


def insert_settings(token: str, cluster: Cluster | None = None, quorum: str = "") -> str:
    """The SETTINGS clause of an insert under the dedup `token` (insert_params)."""
    # Values are numbers, names or tokens (TOKEN_RE): none needs escaping inside quotes.
    params = insert_params(token, cluster, quorum).items()
    return "SETTINGS " + ", ".join(f"{k} = {v if v.isdigit() else repr(v)}" for k, v in params)


def insert_select(
    table: str,
    columns: Sequence[str],
    select: str,
    token: str,
    cluster: Cluster | None = None,
    quorum: str = "",
) -> str:
    """The statement of Writer.insert_from."""
    clause = insert_settings(token, cluster, quorum)
    return f"INSERT INTO {table} ({', '.join(columns)}) {select} {clause}"


def cluster_of(writer: object) -> Cluster | None:
    """The cluster `writer` works on (its `cluster` attribute), None for a single server."""
    cluster = getattr(writer, "cluster", None)
    return cluster if isinstance(cluster, Cluster) else None


def quorum_of(writer: object) -> str:
    """The insert quorum of replicas behind one address that `writer` waits for (its
    `quorum`); "" for none (a cluster's is its Cluster's)."""
    quorum = getattr(writer, "quorum", "")
    return quorum if isinstance(quorum, str) else ""


# Set while a task reads or rewrites whole days (settling, an erasure's count, DELETE and
# rebuild): a server's writer holds those statements to its day timeout, not to a batch's. A
# context variable, so the batch statements other tasks run meanwhile keep their own bound.
WHOLE_DAYS: ContextVar[bool] = ContextVar("whole_days", default=False)


@contextlib.contextmanager
def whole_days() -> Iterator[None]:
    """The statements run within read or rewrite whole days (WHOLE_DAYS)."""
    token = WHOLE_DAYS.set(True)
    try:
        yield
    finally:
        WHOLE_DAYS.reset(token)


class StoreError(Exception):
    """ClickHouse refused or failed a statement; the message is ClickHouse's."""


class Writer(Protocol):
    async def insert(self, table: str, rows: bytes, token: str) -> None:
        """Insert rows in JSONEachRow; a repeated `token` is deduplicated by ClickHouse."""

    async def insert_from(
        self, table: str, columns: Sequence[str], select: str, token: str
    ) -> None:
        """INSERT INTO `table` (`columns`) `select`, under the dedup `token`."""

    async def load(self, table: str, body: Sequence[bytes], fmt: str) -> None:
        """Stream `body` (its pieces in order, not joined first), in the input format `fmt`,
        into `table` as it is (no token)."""

    async def execute(self, sql: str) -> None:
        """Run a statement that returns nothing (DDL, ALTER)."""

    async def query(self, sql: str, fmt: str = "JSONEachRow") -> str:
        """Run a query and return its output in `fmt`."""

    def new_session(self, batch: str = "") -> None:
        """Run the statements that follow in a session of their own, which each one after the
        first must find (the ingest's temporary tables live in it), for the batch whose dedup
        token is `batch`; a no-op for a store that is one session."""

    async def await_earlier_inserts(self, batch: str | None = None) -> None:
        """Return once no insert of the batch `batch` (None: of any) begun before this call
        still runs: one whose client gave up (a timeout) may still land, and the retry of its
        batch must come after it. Raises StoreError when one still runs after a bound."""

    async def close(self) -> None: ...


class ShardReach(Protocol):
    """A writer that can open another on one server of its cluster (a shard's replica, by its
    host name in `remote_servers`), for the work done shard by shard (analytics/cluster.py)."""

    def on_host(self, host: str) -> Writer: ...
