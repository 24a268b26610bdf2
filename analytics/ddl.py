"""The ClickHouse DDL files in deploy/clickhouse/, made and checked with the embedded engine (chDB).

    python -m analytics.ddl single-node > deploy/clickhouse/single-node.sql
    python -m analytics.ddl cluster > deploy/clickhouse/cluster.sql
    python -m analytics.ddl load FILE.sql [--cluster] [--plain]
    python -m analytics.ddl queries < queries.json

single-node: the schema `beacon consume` migrates to (analytics/schema.py), as one file for a
ClickHouse server's first start (docker-entrypoint-initdb.d) or a DBA.
cluster: the same tables for a sharded, replicated cluster: each MergeTree table becomes
`<name>_local` (Replicated*MergeTree, ON CLUSTER) behind a Distributed `<name>`: the statements
cluster mode's migrations run (analytics/cluster_ddl.py), with the `{cluster}` macro.
load: runs FILE.sql in a throwaway chDB with a one-node cluster `beacon` (macros cluster, shard,
replica; an in-memory Keeper for Replicated* engines) and prints the tables as JSON. Every
statement is parsed whole by ClickHouse's parser; ON CLUSTER clauses are dropped to run it
(clickhouse-local runs no distributed DDL). ALTERs and INSERTs of Replicated* tables are only
parsed (a replica of the in-memory Keeper stays read-only); with --plain, Replicated* engines
become their plain twins, so everything runs, and so does the consumer's start-up migration on
top (in cluster mode for a cluster's file), which must change nothing.
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

from analytics.cluster_ddl import cluster_statements, on_cluster, schema_migrations
from analytics.migrations import MIGRATIONS, RETAINED, migrate, ttl_statement
from analytics.rollups import VIEWS
from analytics.schema import DATABASE
from analytics.settings import StoreSettings
from analytics.store import Cluster, StoreError, insert_select, insert_settings

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
ONE_NODE = Cluster("beacon")  # the cluster of CLUSTER_CONFIG

CLUSTER_HEADER = """\
-- Beacon schema for a ClickHouse cluster: every table of the single-node schema
-- (single-node.sql, analytics/schema.py) as <name>_local, ReplicatedReplacingMergeTree on each
-- shard, behind a Distributed <name> that consumers insert into and reports read. Made by
--   python -m analytics.ddl cluster > deploy/clickhouse/cluster.sql
-- from the statements that `beacon migrate` and the consumers run in cluster mode
-- (BEACON_CLICKHOUSE_CLUSTER=<name>: ON CLUSTER '<name>', analytics/cluster_ddl.py), and
-- checked by tests/integration/test_deploy.py. Needs the macros {cluster}, {shard} and
-- {replica} on every server ({replica} unique in the whole cluster) and Keeper. Either let
-- `beacon migrate` (or the first consumer) create it, or run this file once, on any node:
--   clickhouse-client --multiquery < deploy/clickhouse/cluster.sql
-- Consumers in cluster mode then find every migration recorded and change nothing but the
-- TTL, when BEACON_RETENTION_DAYS differs. They insert into the Distributed tables with
-- distributed_foreground_insert = 1, insert_quorum and a dedup token on each insert, and
-- settle the rollups on each shard; see docs/operations.md "ClickHouse".
"""


class ConnWriter:
    """The consumers' Writer protocol over a chDB connection (synchronous underneath).

    With a `cluster` (ONE_NODE, the cluster of CLUSTER_CONFIG) it runs cluster mode: a
    statement with ON CLUSTER is parsed whole by ClickHouse's parser (EXPLAIN AST), then run
    without the clause (chDB runs no distributed DDL) and, with `plain`, on the plain twins of
    Replicated* engines (a replica of the in-memory Keeper stays read-only). Every shard of the
    cluster is this one node.
    """

    def __init__(self, conn, cluster: Cluster | None = None, plain: bool = False) -> None:  # type: ignore[no-untyped-def]
        self.conn = conn
        self.cluster = cluster
        self.plain = plain
        self.parsed: list[str] = []  # the ON CLUSTER statements parsed whole, in order

    def parse(self, sql: str) -> None:
        """Have ClickHouse's parser read `sql` whole (it raises StoreError when it cannot)."""
        self._query(f"EXPLAIN AST {sql}", "TSV")

    def run(self, sql: str, fmt: str = "TSV") -> str:
        if self.cluster is not None and ON_CLUSTER_RE.search(sql):
            self.parse(sql)
            self.parsed.append(sql)
            sql = ON_CLUSTER_RE.sub("", sql)
        if self.plain:
            sql = plain_twin(sql)
        return self._query(sql, fmt)

    def _query(self, sql: str, fmt: str) -> str:
        try:
            return self.conn.query(sql, fmt).data()
        except Exception as exc:  # chDB raises its own types for ClickHouse errors
            raise StoreError(str(exc)) from exc

    def on_host(self, host: str) -> ConnWriter:
        return self  # one node: every shard's replica is this one

    async def insert(self, table: str, rows: bytes, token: str) -> None:
        clause = insert_settings(token, self.cluster)
        self.run(f"INSERT INTO {table} {clause} FORMAT JSONEachRow\n{rows.decode()}")

    async def insert_from(
        self, table: str, columns: Sequence[str], select: str, token: str
    ) -> None:
        self.run(insert_select(table, columns, select, token, self.cluster))

    async def load(self, table: str, body: Sequence[bytes], fmt: str) -> None:
        self.run(f"INSERT INTO {table} FORMAT {fmt}\n{b''.join(body).decode()}")

    async def execute(self, sql: str) -> None:
        self.run(sql)

    async def query(self, sql: str, fmt: str = "JSONEachRow") -> str:
        return self.run(sql, fmt)

    def new_session(self, batch: str = "") -> None:
        pass  # one chDB connection, one session

    async def await_earlier_inserts(self, batch: str | None = None) -> None:
        pass  # each statement runs to its end before its call returns

    async def close(self) -> None:
        return None


def plain_twin(sql: str) -> str:
    """`sql` with Replicated* engines made plain, with the plain engines' dedup window."""
    sql = REPLICATED_RE.sub(r"\1(", sql)
    return sql.replace(" replicated_deduplication_window", " non_replicated_deduplication_window")


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


def recorded(versions: Sequence[tuple[int, str]]) -> list[str]:
    """Statements that record the migrations (version, name) this schema already has, so
    consumers apply none of them again; each is skipped where already recorded."""
    out = ["-- The migrations this schema already has, so consumers apply none of them again."]
    for version, name in versions:
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
    rows = [(int(v), str(n)) for v, n in map(json.loads, versions.splitlines())]
    return "\n".join(out + recorded(rows)) + "\n"


def cluster() -> str:
    """deploy/clickhouse/cluster.sql: cluster mode's migrations with the `{cluster}` macro, the
    default retention's TTL on each shard's tables, and the versions recorded."""
    name = "{cluster}"
    out = [CLUSTER_HEADER, f"CREATE DATABASE IF NOT EXISTS {DATABASE} {on_cluster(name)};", ""]
    out += [schema_migrations(name) + ";", ""]
    for version, title, sqls, _ in MIGRATIONS:
        out.append(f"-- Migration {version}: {title}.")
        out += [f"{statement};\n" for sql in sqls for statement in cluster_statements(sql, name)]
    days = StoreSettings().retention_days
    out.append(f"-- The retention of each shard's rows (BEACON_RETENTION_DAYS, {days} days).")
    for table, column in RETAINED:
        out.append(ttl_statement(f"{table}_local", column, days, f" {on_cluster(name)}") + ";")
    out.append("")
    return "\n".join(out + recorded([(v, title) for v, title, _, _ in MIGRATIONS])) + "\n"


def load(writer: ConnWriter, path: Path, plain: bool) -> dict[str, object]:
    sql = path.read_text()
    is_cluster = "ENGINE = Distributed" in sql
    writer.cluster, writer.plain = (ONE_NODE if is_cluster else None), plain
    # A Replicated* replica of the in-memory Keeper never turns writable: it takes no ALTER or
    # INSERT, so only the CREATE TABLEs run (views need the columns the ALTERs add): the rest
    # is parsed only.
    writable = plain or "ENGINE = Replicated" not in sql
    skipped = []
    for statement in statements(sql):
        if not writable and not statement.upper().startswith(("CREATE TABLE", "CREATE DATABASE")):
            writer.parse(statement)
            skipped.append(statement)
            continue
        writer.run(statement)
    loaded = tables(writer)
    result: dict[str, object] = {"tables": loaded, "parsed_only": skipped}
    if writable:
        # What a consumer does at start against this schema, with the default retention: in
        # cluster mode in front of a cluster's schema.
        retention_days = StoreSettings().retention_days
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
    if args.command == "cluster":  # text only: no store needed
        sys.stdout.write(cluster())
        return
    workdir = Path(tempfile.mkdtemp(prefix="beacon-schema-"))
    # Never closed: closing a chDB connection with a replicated table on the in-memory Keeper
    # hangs, so the process ends with os._exit once the answer is out.
    writer = ConnWriter(connect(workdir, cluster=getattr(args, "cluster", False)))
    try:
        if args.command == "single-node":
            text = single_node(writer)
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
