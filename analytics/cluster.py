"""Cluster mode (BEACON_CLICKHOUSE_CLUSTER): which schema a server has, and work shard by shard.

A writer in cluster mode carries its Cluster (analytics/store); the schema must agree: a
Distributed beacon.events is a cluster's (deploy/clickhouse/cluster.sql), anything else a
single server's. A mismatch is refused before anything runs: single-node DDL on whichever
replica a Service picks lets the replicas diverge silently, and cluster DDL on one server
makes tables nobody reads.

Some work has to run on each shard's own tables: settling a day of the rollups swaps a
partition of the shard's `<rollup>_local` (analytics/rollup_settle.py). It goes to one
replica of each shard, by the host name the cluster's `remote_servers` gives it, on the
scheme and port of BEACON_CLICKHOUSE_URL (the replicas' changes replicate).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import orjson

from analytics.schema import DATABASE
from analytics.store import Cluster, ShardReach, StoreError, Writer, cluster_of

T = TypeVar("T")


class ModeError(StoreError):
    """The server's schema is not the one the cluster setting says."""


async def events_engine(writer: Writer) -> str:
    """The engine of beacon.events, "" when there is none yet."""
    text = await writer.query(
        f"SELECT engine FROM system.tables WHERE database = '{DATABASE}' AND name = 'events'",
        "TSV",
    )
    return text.strip()


async def check_mode(writer: Writer) -> Cluster | None:
    """The writer's cluster (None: one server) once the server's schema agrees with it;
    ModeError when it does not, or when the server knows no such cluster."""
    cluster = cluster_of(writer)
    engine = await events_engine(writer)
    if cluster is None:
        if engine == "Distributed":
            raise ModeError(
                f"{DATABASE}.events is a Distributed table: this server holds a cluster's schema "
                "(deploy/clickhouse/cluster.sql). Set BEACON_CLICKHOUSE_CLUSTER to the "
                "cluster's name; single-node statements here would change one replica only"
            )
        return None
    if engine and engine != "Distributed":
        raise ModeError(
            f"BEACON_CLICKHOUSE_CLUSTER={cluster.name}, but {DATABASE}.events is a {engine} "
            "table: this server holds a single-node schema. Unset BEACON_CLICKHOUSE_CLUSTER, "
            "or point BEACON_CLICKHOUSE_URL at the cluster"
        )
    if not await shards(writer, cluster):
        raise ModeError(
            f"BEACON_CLICKHOUSE_CLUSTER={cluster.name}: the server has no such cluster in "
            "remote_servers (SELECT DISTINCT cluster FROM system.clusters)"
        )
    return cluster


async def shards(writer: Writer, cluster: Cluster) -> list[tuple[int, list[str]]]:
    """(shard number, host names of its replicas in order) of `cluster`."""
    text = await writer.query(
        "SELECT shard_num, groupArray(host_name) FROM (SELECT shard_num, replica_num, "
        f"host_name FROM system.clusters WHERE cluster = '{cluster.name}' "
        "ORDER BY shard_num, replica_num) GROUP BY shard_num ORDER BY shard_num",
        "JSONCompactEachRow",
    )
    return [(int(n), list(hosts)) for n, hosts in map(orjson.loads, text.splitlines())]


async def on_each_shard(
    writer: Writer, cluster: Cluster, work: Callable[[Writer], Awaitable[T]]
) -> list[T]:
    """`work` run on one replica of every shard, shard after shard: the first replica that
    does it without a StoreError; the last error when none of a shard's replicas can."""
    reach: ShardReach = writer  # type: ignore[assignment]  # a writer in cluster mode does
    if not hasattr(writer, "on_host"):
        raise StoreError(f"{type(writer).__name__} cannot reach the shards of a cluster")
    done = []
    for shard, hosts in await shards(writer, cluster):
        failure: StoreError | None = None
        for host in hosts:
            replica = reach.on_host(host)
            try:
                done.append(await work(replica))
                break
            except StoreError as exc:  # down, or failing: the next replica of the shard
                failure = StoreError(f"shard {shard}, {host}: {exc}")
            finally:
                if replica is not writer:
                    await replica.close()
        else:
            raise failure or StoreError(f"shard {shard} has no replica")
    return done
