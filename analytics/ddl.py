"""The ClickHouse DDL files in deploy/clickhouse/, made and checked with the embedded engine (chDB).

    python -m analytics.ddl single-node > deploy/clickhouse/single-node.sql
    python -m analytics.ddl cluster > deploy/clickhouse/cluster.sql
    python -m analytics.ddl load FILE.sql [--cluster] [--plain]
    python -m analytics.ddl queries < queries.json

single-node: the schema `beacon consume` migrates to (analytics/schema.py), as one file for a
ClickHouse server's first start (docker-entrypoint-initdb.d) or a DBA.
cluster: the same tables for a sharded, replicated cluster: each MergeTree table becomes
`<name>_local` (Replicated*MergeTree, ON CLUSTER) behind a Distributed `<name>`.
load: runs FILE.sql in a throwaway chDB with a one-node cluster `beacon` (macros cluster, shard,
replica; an in-memory Keeper for Replicated* engines) and prints the tables as JSON. ON CLUSTER
clauses are dropped (clickhouse-local runs no distributed DDL). INSERTs into Replicated* tables
are only parsed (a replica of the in-memory Keeper stays read-only); with --plain, Replicated*
engines become their plain twins, so they run, and so does the consumer's start-up migration
on top, which must change nothing.
queries: runs each SQL of a JSON list against the migrated schema; prints the errors as JSON.

Each command runs in its own process: chDB holds one engine per process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from analytics.migrations import migrate
from analytics.rollups import CLUSTER_SHARDING_KEYS, VIEWS, cluster_views
from analytics.schema import DATABASE
from analytics.settings import StoreSettings
from analytics.store import StoreError, insert_select

CLUSTER_CONFIG = """<clickhouse>
  <tcp_port>9000</tcp_port>
  <zookeeper><implementation>testkeeper</implementation></zookeeper>
  <remote_servers><beacon><shard><internal_replication>true</internal_replication>
    <replica><host>localhost</host><port>9000</port></replica>
  </shard></beacon></remote_servers>
  <macros><cluster>beacon</cluster><shard>01</shard><replica>replica-1</replica></macros>
</clickhouse>
"""
ON_CLUSTER_RE = re.compile(r"\s+ON\s+CLUSTER\s+('[^']*'|`[^`]*`|\w+)", re.IGNORECASE)
# ReplicatedFooMergeTree('/path', 'replica'[, more]) -> FooMergeTree([more])
REPLICATED_RE = re.compile(r"\bReplicated(\w*MergeTree)\s*\(\s*'[^']*'\s*,\s*'[^']*'\s*,?\s*")


# How each sharded table spreads over shards. A replayed event must land on the shard that has
# its first copy, or ReplacingMergeTree cannot merge the two: shard by the dedup key.
SHARDING_KEYS = {"events": "cityHash64(event_id)", **CLUSTER_SHARDING_KEYS}
ENGINE_RE = re.compile(r"^ENGINE = (\w*)MergeTree(?:\((.*)\))?$", re.MULTILINE)
CLUSTER_HEADER = """\
-- Beacon schema for a ClickHouse cluster: every table of the single-node schema
-- (single-node.sql, analytics/schema.py) as <name>_local, ReplicatedReplacingMergeTree on each
-- shard, behind a Distributed <name> that consumers insert into and reports read.
-- Made by
--   python -m analytics.ddl cluster > deploy/clickhouse/cluster.sql
-- and checked by tests/integration/test_deploy.py. Needs the macros {cluster}, {shard} and
-- {replica} on every server ({replica} unique in the whole cluster) and Keeper. Run it once,
-- on any node:
--   clickhouse-client --multiquery < deploy/clickhouse/cluster.sql
--
-- Consumers in front of a cluster must run with BEACON_RETENTION_DAYS=0: the TTL lives on the
-- _local tables here (a Distributed table has none), and a new migration in a later release is
-- applied here (ON CLUSTER) before consumers of that release start; see docs/operations.md.
-- Consumers insert with a dedup token; a Distributed table passes it on to the shard, where the
-- Replicated engine deduplicates by it (replicated_deduplication_window). Set
-- distributed_foreground_insert = 1 in the consumers' ClickHouse profile so an insert is
-- acknowledged only once it is on its shards.
"""


class ConnWriter:
    """The consumers' Writer protocol over a chDB connection (synchronous underneath)."""

    def __init__(self, conn) -> None:  # type: ignore[no-untyped-def]
        self.conn = conn

    def run(self, sql: str, fmt: str = "TSV") -> str:
        try:
            return self.conn.query(sql, fmt).data()
        except Exception as exc:  # chDB raises its own types for ClickHouse errors
            raise StoreError(str(exc)) from exc

    async def insert(self, table: str, rows: bytes, token: str) -> None:
        self.run(f"INSERT INTO {table} FORMAT JSONEachRow\n{rows.decode()}")

    async def insert_from(
        self, table: str, columns: Sequence[str], select: str, token: str
    ) -> None:
        self.run(insert_select(table, columns, select, token))

    async def load(self, table: str, body: Sequence[bytes], fmt: str) -> None:
        self.run(f"INSERT INTO {table} FORMAT {fmt}\n{b''.join(body).decode()}")

    async def execute(self, sql: str) -> None:
        self.run(sql)

    async def query(self, sql: str, fmt: str = "JSONEachRow") -> str:
        return self.run(sql, fmt)

    async def close(self) -> None:
        return None


def connect(workdir: Path, cluster: bool):  # type: ignore[no-untyped-def]
    import chdb

    if not cluster:
        return chdb.connect(str(workdir / "store"))
    config = workdir / "config.xml"
    config.write_text(CLUSTER_CONFIG)
    return chdb.connect(f"{workdir / 'store'}?config-file={config}")


def statements(sql: str) -> list[str]:
    """The statements of a file: split at a `;` that ends a line (no string in ours has one)."""
    out = []
    for part in re.split(r";\s*$", sql, flags=re.MULTILINE):
        lines = [ln for ln in part.strip().splitlines() if not ln.lstrip().startswith("--")]
        if lines:
            out.append("\n".join(lines).strip())
    return out


def tables(writer: ConnWriter) -> dict[str, dict[str, object]]:
    """Every table of the database: engine, create statement, columns (name, type, default)."""
    found: dict[str, dict[str, object]] = {}
    listing = writer.run(
        f"SELECT name, engine FROM system.tables WHERE database = '{DATABASE}' ORDER BY name",
        "JSONEachRow",
    )
    for line in listing.splitlines():
        row = json.loads(line)
        columns = writer.run(
            "SELECT name, type, default_kind, default_expression FROM system.columns "
            f"WHERE database = '{DATABASE}' AND table = '{row['name']}' ORDER BY position",
            "JSONCompactEachRow",
        )
        create = writer.run(f"SHOW CREATE TABLE {DATABASE}.{row['name']}", "TSVRaw")
        found[row["name"]] = {
            "engine": row["engine"],
            "create": create.strip(),
            "columns": [json.loads(c) for c in columns.splitlines()],
        }
    return found


def recorded(versions: str) -> list[str]:
    """Statements that record the migrations (JSON lines) this schema already has, so consumers
    apply none of them again; each is skipped where already recorded."""
    out = ["-- The migrations this schema already has, so consumers apply none of them again."]
    for line in versions.splitlines():
        version, name = json.loads(line)
        out.append(
            f"INSERT INTO {DATABASE}.schema_migrations (version, name) SELECT {version}, "
            f"'{name}' WHERE {version} NOT IN (SELECT version FROM {DATABASE}.schema_migrations);"
        )
    return out


def migrated(writer: ConnWriter, retention_days: int) -> tuple[dict[str, dict[str, object]], str]:
    """Run the consumer's migrations; the tables and the recorded versions (JSON lines)."""
    asyncio.run(migrate(writer, retention_days))
    versions = writer.run(
        f"SELECT version, name FROM {DATABASE}.schema_migrations ORDER BY version",
        "JSONCompactEachRow",
    )
    return tables(writer), versions


def single_node(writer: ConnWriter) -> str:
    retention_days = StoreSettings().retention_days
    found, versions = migrated(writer, retention_days)
    out = [
        "-- Beacon schema for a single ClickHouse server: what `beacon consume` migrates to",
        f"-- (analytics/schema.py), with the default retention of {retention_days} days. Made by",
        "--   python -m analytics.ddl single-node \\",
        "--     > deploy/clickhouse/single-node.sql",
        "-- and checked against the migrations by tests/integration/test_deploy.py.",
        "-- Safe to run twice.",
        "",
        f"CREATE DATABASE IF NOT EXISTS {DATABASE};",
        "",
    ]
    # Tables first, then the rollups' materialized views that fill them (analytics/rollups.py).
    rest = sorted(set(found) - {"schema_migrations", "events"}, key=lambda n: (n in VIEWS, n))
    for name in ("schema_migrations", "events", *rest):
        create = str(found[name]["create"]).replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS", 1)
        create = create.replace(
            "CREATE MATERIALIZED VIEW", "CREATE MATERIALIZED VIEW IF NOT EXISTS", 1
        )
        out += [create + ";", ""]
    return "\n".join(out + recorded(versions)) + "\n"


def replicated_engine(create: str, table: str) -> str:
    """The CREATE statement with its *MergeTree engine turned into the Replicated one."""
    match = ENGINE_RE.search(create)
    if match is None:
        raise SystemExit(f"{table}: no MergeTree-family engine in {create!r}")
    kind, args = match.group(1), match.group(2)
    path = f"'/clickhouse/tables/{{shard}}/{DATABASE}/{table}', '{{replica}}'"
    engine = f"ENGINE = Replicated{kind}MergeTree({path}{', ' + args if args else ''})"
    create = create[: match.start()] + engine + create[match.end() :]
    return create.replace("non_replicated_deduplication_window", "replicated_deduplication_window")


def cluster(writer: ConnWriter) -> str:
    found, versions = migrated(writer, StoreSettings().retention_days)
    on_cluster = "ON CLUSTER '{cluster}'"
    out = [CLUSTER_HEADER, f"CREATE DATABASE IF NOT EXISTS {DATABASE} {on_cluster};", ""]
    # One migrations table for the whole cluster (no {shard} in its path): any node answers.
    out += [
        f"CREATE TABLE IF NOT EXISTS {DATABASE}.schema_migrations {on_cluster}",
        "(version UInt32, name String, applied_at DateTime DEFAULT now())",
        f"ENGINE = ReplicatedMergeTree('/clickhouse/tables/{DATABASE}/schema_migrations', "
        "'{replica}')",
        "ORDER BY version;",
        "",
    ]
    for name, table in found.items():
        if name == "schema_migrations" or name in VIEWS:  # the views follow the tables
            continue
        if name not in SHARDING_KEYS or not str(table["engine"]).endswith("MergeTree"):
            # New kinds of objects (a rollup view, another table) need a decision here: how
            # they shard, and a view attaches to the _local table on each shard.
            raise SystemExit(
                f"{DATABASE}.{name} ({table['engine']}): not yet known to the cluster DDL; "
                "extend SHARDING_KEYS and cluster() in analytics/ddl.py"
            )
        local = f"{DATABASE}.{name}_local"
        create = str(table["create"]).replace(
            f"CREATE TABLE {DATABASE}.{name}\n",
            f"CREATE TABLE IF NOT EXISTS {local} {on_cluster}\n",
            1,
        )
        if local not in create:
            raise SystemExit(f"unexpected SHOW CREATE TABLE output: {create[:200]!r}")
        out += [replicated_engine(create, f"{name}_local") + ";", ""]
        out += [
            f"CREATE TABLE IF NOT EXISTS {DATABASE}.{name} {on_cluster} AS {local}",
            f"ENGINE = Distributed('{{cluster}}', {DATABASE}, {name}_local, "
            f"{SHARDING_KEYS[name]});",
            "",
        ]
    # The rollups' views, on each shard from events_local into <rollup>_local.
    out += [view + ";\n" for view in cluster_views(on_cluster)]
    return "\n".join(out + recorded(versions)) + "\n"


def load(writer: ConnWriter, path: Path, plain: bool) -> dict[str, object]:
    sql = path.read_text()
    if plain:
        sql = REPLICATED_RE.sub(r"\1(", sql)
    todo = statements(ON_CLUSTER_RE.sub("", sql))
    # A Replicated* replica of the in-memory Keeper never turns writable: parse INSERTs only.
    writable = not any("ENGINE = Replicated" in statement for statement in todo)
    skipped = []
    for statement in todo:
        if not writable and statement.upper().startswith("INSERT"):
            writer.run(f"EXPLAIN AST {statement}")
            skipped.append(statement)
            continue
        writer.run(statement)
    loaded = tables(writer)
    result: dict[str, object] = {"tables": loaded, "parsed_only": skipped}
    if writable:
        # What a consumer does at start against this schema; with the retention it would run
        # with: 0 in front of a cluster (the TTL is on the _local tables), else the default.
        cluster = any("ENGINE = Distributed" in statement for statement in todo)
        retention_days = 0 if cluster else StoreSettings().retention_days
        result["migrations_applied"] = asyncio.run(migrate(writer, retention_days))
        result["changed_by_consumer_start"] = tables(writer) != loaded
    return result


def queries(writer: ConnWriter, sqls: list[str]) -> dict[str, str]:
    asyncio.run(migrate(writer, 0))
    errors: dict[str, str] = {}
    for sql in sqls:
        try:
            writer.run(sql)
        except StoreError as exc:
            errors[sql] = str(exc)[:1000]
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("single-node", help="print the single-node DDL")
    sub.add_parser("cluster", help="print the cluster DDL")
    load_cmd = sub.add_parser("load", help="run a DDL file in chDB, print the tables as JSON")
    load_cmd.add_argument("file", type=Path)
    load_cmd.add_argument("--cluster", action="store_true", help="one-node cluster and Keeper")
    load_cmd.add_argument("--plain", action="store_true", help="Replicated* engines made plain")
    sub.add_parser("queries", help="run a JSON list of SQL from stdin, print errors as JSON")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="beacon-schema-"))
    # Never closed: closing a chDB connection with a replicated table on the in-memory Keeper
    # hangs, so the process ends with os._exit once the answer is out.
    writer = ConnWriter(connect(workdir, cluster=getattr(args, "cluster", False)))
    try:
        if args.command == "single-node":
            text = single_node(writer)
        elif args.command == "cluster":
            text = cluster(writer)
        elif args.command == "load":
            text = json.dumps(load(writer, args.file, args.plain), indent=2)
        else:
            text = json.dumps(queries(writer, json.load(sys.stdin)), indent=2)
    except (StoreError, SystemExit) as exc:
        print(f"analytics.ddl {args.command}: {exc}", file=sys.stderr)
        sys.stderr.flush()
        shutil.rmtree(workdir, ignore_errors=True)
        os._exit(1)
    sys.stdout.write(text + ("" if text.endswith("\n") else "\n"))
    sys.stdout.flush()
    shutil.rmtree(workdir, ignore_errors=True)
    os._exit(0)


if __name__ == "__main__":
    main()
