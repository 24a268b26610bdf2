"""The statements of a ClickHouse cluster, made from the single-node migrations' as text.

Each MergeTree table `beacon.<name>` of a migration becomes `<name>_local`, the Replicated
engine of its family on every shard, behind a Distributed `<name>` that consumers insert into
and reports read; an ALTER changes both (the Distributed table gets the column changes only);
a rollup's view reads `events_local` into `<rollup>_local` on each shard. Everything runs
ON CLUSTER. The same function makes deploy/clickhouse/cluster.sql (`python -m analytics.ddl
cluster`, with the `{cluster}` macro) and what `beacon migrate` and the consumers' start-up
migration run with BEACON_CLICKHOUSE_CLUSTER (the cluster's name): one source of truth, and
no chDB needed to make it.
"""

from __future__ import annotations

import re

from analytics.rollups import CLUSTER_SHARDING_KEYS
from analytics.schema import DATABASE
from analytics.visits import VISITS, VISITS_SETTLED

# How each sharded table spreads over shards. A replayed event must land on the shard that has
# its first copy, or ReplacingMergeTree cannot merge the two: shard by the dedup key.
# Visits are computed when reading on a cluster (analytics/visits.py): their tables stay empty.
SHARDING_KEYS = {
    "events": "cityHash64(event_id)",
    **CLUSTER_SHARDING_KEYS,
    **{t.split(".")[1]: "rand()" for t in (VISITS, VISITS_SETTLED)},
    "erasures": "rand()",  # a few rows, read whole by every consumer
}
# A cluster-wide Keeper path (no {shard}): every replica of every shard holds the same
# migrations, so any node a Service picks answers which ones ran (docs/operations.md).
MIGRATIONS_PATH = f"/clickhouse/tables/{DATABASE}/schema_migrations"

CREATE_RE = re.compile(rf"^CREATE TABLE IF NOT EXISTS {DATABASE}\.(\w+)\n")
ALTER_RE = re.compile(rf"^ALTER TABLE {DATABASE}\.(\w+)\n")
VIEW_RE = re.compile(
    rf"^CREATE MATERIALIZED VIEW IF NOT EXISTS ({DATABASE}\.\w+) TO {DATABASE}\.(\w+)\n"
    rf"AS (.*\nFROM {DATABASE}\.events)\n",
    re.DOTALL,
)
# A rollup view's new query (analytics/rollups.py add_dim_statements).
VIEW_QUERY_RE = re.compile(
    rf"^ALTER TABLE ({DATABASE}\.\w+_mv)\nMODIFY QUERY (.*\nFROM {DATABASE}\.events)\n", re.DOTALL
)
ENGINE_RE = re.compile(r"^ENGINE = (\w*)MergeTree(?:\((.*)\))?$", re.MULTILINE)
# Clauses of an ALTER a Distributed table takes too (it has no index, TTL or partitions).
DISTRIBUTED_CLAUSE_RE = re.compile(r"^(ADD|DROP|MODIFY|RENAME|COMMENT) COLUMN\b")


def on_cluster(cluster: str) -> str:
    return f"ON CLUSTER '{cluster}'"


def schema_migrations(cluster: str) -> str:
    """The migrations table of a cluster: one for all of it, replicated to every node."""
    return (
        f"CREATE TABLE IF NOT EXISTS {DATABASE}.schema_migrations {on_cluster(cluster)}\n"
        "(version UInt32, name String, applied_at DateTime DEFAULT now())\n"
        f"ENGINE = ReplicatedMergeTree('{MIGRATIONS_PATH}', '{{replica}}')\n"
        "ORDER BY version"
    )


def cluster_statements(sql: str, cluster: str) -> list[str]:
    """The statements that make on `cluster` what single-node `sql` makes on one server."""
    sql = "\n".join(ln for ln in sql.strip().splitlines() if not ln.lstrip().startswith("--"))
    if match := CREATE_RE.match(sql):
        return _create(sql, match.group(1), cluster)
    if match := VIEW_QUERY_RE.match(sql):
        view, select = match.groups()
        rest = sql[match.end() :]
        return [f"ALTER TABLE {view} {on_cluster(cluster)}\nMODIFY QUERY {select}_local\n{rest}"]
    if match := ALTER_RE.match(sql):
        return _alter(sql, match.group(1), cluster)
    if match := VIEW_RE.match(sql):
        view, target, select = match.groups()
        rest = sql[match.end() :]
        return [
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS {view} {on_cluster(cluster)} "
            f"TO {DATABASE}.{target}_local\nAS {select}_local\n{rest}"
        ]
    # A new kind of statement needs a decision here: how it runs on every shard.
    raise ValueError(f"not known to the cluster schema (analytics/cluster_ddl.py): {sql[:200]!r}")


def _create(sql: str, name: str, cluster: str) -> list[str]:
    if name not in SHARDING_KEYS:
        raise ValueError(f"{DATABASE}.{name}: no sharding key (cluster_ddl.SHARDING_KEYS)")
    local = f"{DATABASE}.{name}_local"
    create = CREATE_RE.sub(f"CREATE TABLE IF NOT EXISTS {local} {on_cluster(cluster)}\n", sql)
    return [
        replicated(create, f"{name}_local"),
        f"CREATE TABLE IF NOT EXISTS {DATABASE}.{name} {on_cluster(cluster)} AS {local}\n"
        f"ENGINE = Distributed('{cluster}', {DATABASE}, {name}_local, {SHARDING_KEYS[name]})",
    ]


def _alter(sql: str, name: str, cluster: str) -> list[str]:
    head = f"ALTER TABLE {DATABASE}.{name}"
    clauses = [c.strip() for c in sql[len(head) :].split(",\n")]
    out = [f"{head}_local {on_cluster(cluster)}\n    " + ",\n    ".join(clauses)]
    columns = [c for c in clauses if DISTRIBUTED_CLAUSE_RE.match(c)]
    if columns:
        out.append(f"{head} {on_cluster(cluster)}\n    " + ",\n    ".join(columns))
    return out


def replicated(create: str, table: str) -> str:
    """The CREATE statement with its *MergeTree engine turned into the Replicated one, on a
    Keeper path of its shard."""
    match = ENGINE_RE.search(create)
    if match is None:
        raise ValueError(f"{table}: no MergeTree-family engine in {create[:200]!r}")
    kind, args = match.group(1), match.group(2)
    path = f"'/clickhouse/tables/{{shard}}/{DATABASE}/{table}', '{{replica}}'"
    engine = f"ENGINE = Replicated{kind}MergeTree({path}{', ' + args if args else ''})"
    create = create[: match.start()] + engine + create[match.end() :]
    # Plain MergeTree needs its own window to honour a dedup token; Replicated has one.
    return create.replace("non_replicated_deduplication_window", "replicated_deduplication_window")
