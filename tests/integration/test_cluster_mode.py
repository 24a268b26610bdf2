"""Cluster mode (BEACON_CLICKHOUSE_CLUSTER) as far as this machine allows.

No ClickHouse cluster can run here (DESIGN.md): the scenarios run on chDB's one-node cluster
(tests/support/cluster_bed.py), where every ON CLUSTER statement is parsed whole by ClickHouse's
own parser and then run without the clause on the plain twins of the Replicated engines. What
that leaves untested (Keeper, replication, distributed DDL, a second host) is listed in
docs/operations.md "ClickHouse".
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from analytics import cluster as cluster_mode
from analytics.connect import open_writer
from analytics.ddl import statements
from analytics.erasure import delete_statement
from analytics.migrations import MIGRATIONS
from analytics.schema import EVENTS
from analytics.settings import StoreSettings
from analytics.store import Cluster, StoreError, insert_params
from analytics.store.http import HttpWriter
from contract.config import SettingsError
from tests.support.clickhouse_front import ClickHouseFront

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_SQL = ROOT / "deploy" / "clickhouse" / "cluster.sql"
LOCAL_TABLES = 6  # events_local and the five rollups' <name>_local


def bed(scenario: str) -> Any:
    """A scenario of tests/support/cluster_bed.py, in a process of its own (chDB: one engine
    per process, with the one-node cluster's configuration)."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.support.cluster_bed", scenario],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


# -- migrations ------------------------------------------------------------------------------------


def test_cluster_migrate_runs_the_shipped_cluster_ddl_and_a_second_run_is_a_no_op() -> None:
    result = bed("migrate")
    assert result["first"] == [v for v, _, _, _ in MIGRATIONS]
    assert result["second"] == []
    # One source of truth: the statements cluster mode ran (each parsed whole, ON CLUSTER
    # included) are deploy/clickhouse/cluster.sql's, with the cluster's name for the macro.
    shipped = [
        s.replace("{cluster}", "beacon")
        for s in statements(CLUSTER_SQL.read_text())
        if "ON CLUSTER" in s
    ]
    assert result["parsed_first"] == shipped
    # The second run only makes sure the database and the migrations table are there.
    assert [s.split("\n")[0] for s in result["parsed_second"]] == [
        "CREATE DATABASE IF NOT EXISTS beacon ON CLUSTER 'beacon'",
        "CREATE TABLE IF NOT EXISTS beacon.schema_migrations ON CLUSTER 'beacon'",
    ]
    engines = result["engines"]
    assert engines["events"] == "Distributed"
    assert engines["events_local"] == "ReplacingMergeTree"  # the plain twin of the Replicated
    for name in ("rollup_events_hourly", "rollup_clicks", "rollup_settling"):
        assert engines[name] == "Distributed"
        assert engines[f"{name}_local"].endswith("MergeTree")


def test_mode_mismatches_are_refused_before_anything_runs() -> None:
    refused = bed("mismatch")
    assert "no such cluster" in refused["unknown_cluster"]
    for case in ("cluster_on_single", "erase_cluster_on_single"):
        assert "holds a single-node schema" in refused[case], case
    for case in ("single_on_cluster", "erase_single_on_cluster"):
        assert "is a Distributed table" in refused[case], case
        assert "BEACON_CLICKHOUSE_CLUSTER" in refused[case], case


# -- erasure and settling --------------------------------------------------------------------------


def test_erasure_deletes_on_each_shard_and_rebuilds_the_rollups_there() -> None:
    result = bed("erase")
    assert result["rows"] == 2 and result["alice_left"] == 0
    assert result["before"]["events_local"] - result["after"]["events_local"] == 2
    # alice leaves no hash and no count in the rollups, bob stays.
    assert (result["before"]["recipients"], result["after"]["recipients"]) == (2, 1)
    assert (result["before"]["events"], result["after"]["events"]) == (3, 1)
    assert (result["before"]["clicks"], result["after"]["clicks"]) == (1, 0)
    assert (result["replay_erased"], result["alice_after_replay"]) == (2, 0)
    # Once per shard on a replica of each (ALTER ... DELETE ON CLUSTER), waiting for all.
    # The rows received up to the erasure's time (one of theirs after it stays).
    (statement,) = result["statements"]
    assert re.fullmatch(
        r"ALTER TABLE beacon\.events_local ON CLUSTER 'beacon' DELETE WHERE recipient = 'alice' "
        r"AND \(received_at <= fromUnixTimestamp64Milli\(\d+, 'UTC'\) "
        r"OR toUnixTimestamp\(inserted_at\) < intDiv\(\d+, 1000\)\) SETTINGS mutations_sync = 2",
        statement,
    )


def test_a_closed_day_is_settled_on_each_shards_local_tables() -> None:
    result = bed("settle")
    assert len(result["first"]) == 1 and result["second"] == []
    assert result["live_before"] == [1, 0]  # live rows from the views
    assert result["flags_after"] == [0, 1]  # sums only, no sets of event ids left
    assert result["events"] == 3  # the same count, now settled
    touched = {s.split()[2] for s in result["statements"] if s.startswith(("INSERT", "ALTER"))}
    assert all(t.endswith("_local") or "_stage_" in t for t in touched), touched
    assert "beacon.rollup_settling_local" in touched


def test_the_cluster_statements_of_erasure_parse() -> None:
    statement = delete_statement("recipient = 'x'", Cluster("beacon"))
    done = subprocess.run(
        [sys.executable, "-c", "import chdb, sys; print(chdb.query(sys.argv[1], 'TSV'))",
         f"EXPLAIN AST {statement}"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "AlterCommand DELETE" in done.stdout


# -- inserts ---------------------------------------------------------------------------------------


def test_a_repeated_token_is_stored_once_through_the_distributed_table() -> None:
    result = bed("dedup")
    assert result["stored"] == [5, 5]  # the replay answers as stored...
    first, other_token, json_twice = result["events_local"]
    assert first == 5  # ...and the shard dropped it by its token
    assert other_token == 10  # a fresh token stores a second copy, on the same shard
    assert result["final"] == 5  # which FINAL folds (sharded by event_id)
    assert json_twice == 15  # the JSONEachRow path too: twice under one token, once stored


def test_each_insert_makes_a_part_per_table_on_every_shard() -> None:
    result = bed("parts")
    for way in ("distributed", "local"):
        new = result[way]["new_parts"]
        assert len(new) == LOCAL_TABLES and set(new.values()) == {1}, (way, new)
    # Three shards: each gets its slice of the batch, so a part of every table on each.
    new = result["distributed_3_shards"]["new_parts"]
    assert len(new) == LOCAL_TABLES and set(new.values()) == {3}, new
    print(f"\nnew parts per 10k-row insert: {json.dumps(result, indent=1)}")


async def test_the_http_writer_sends_the_cluster_insert_settings(tmp_path: Path) -> None:
    cluster = Cluster("beacon", insert_quorum="2")
    async with ClickHouseFront(tmp_path / "clickhouse") as front:
        front.run("CREATE DATABASE beacon")
        window = "SETTINGS non_replicated_deduplication_window = 100"
        columns = "(event_id UUID, site String)"
        front.run(f"CREATE TABLE {EVENTS} {columns} ENGINE = MergeTree ORDER BY event_id {window}")
        writer = HttpWriter(front.url, cluster=cluster)
        try:
            row = orjson.dumps({"event_id": "0190b0a0-0000-7000-8000-000000000001", "site": "a"})
            await writer.insert(EVENTS, row, "t:p0:0-0")
            sent = front.seen[-1].params
            wanted = {
                "distributed_foreground_insert": "1",
                "insert_deduplicate": "1",
                "insert_quorum": "2",
                "insert_deduplication_token": "t:p0:0-0",
                "async_insert": "0",
            }
            assert {k: sent.get(k) for k in wanted} == wanted
            await writer.insert_from(EVENTS, ["event_id", "site"], "SELECT event_id, 'b' FROM "
                                     f"{EVENTS}", "t:p0:1-1")  # fmt: skip
            statement = front.seen[-1].statement
            for name, value in insert_params("t:p0:1-1", cluster).items():
                shown = value if value.isdigit() else f"'{value}'"
                assert f"{name} = {shown}" in statement, name
        finally:
            await writer.close()
        # A single server's writer sends none of the cluster's.
        single = HttpWriter(front.url)
        try:
            await single.insert(EVENTS, row, "t:p0:2-2")
            assert "distributed_foreground_insert" not in front.seen[-1].params
        finally:
            await single.close()


def test_a_writer_reaches_a_shard_by_its_host_name() -> None:
    writer = HttpWriter("https://clickhouse.beacon.svc:8443/?x=1", "u", "p", cluster=Cluster("c"))
    replica = writer.on_host("chi-beacon-c-1-0")
    assert replica.url == "https://chi-beacon-c-1-0:8443/?x=1"
    assert replica.cluster == writer.cluster
    assert writer.on_host("fd00::1").url == "https://[fd00::1]:8443/?x=1"


class FakeShards:
    """Two shards of two replicas; a replica named in `down` fails whatever it is asked."""

    def __init__(self, down: set[str]) -> None:
        self.down, self.host, self.asked = down, "", []  # type: ignore[var-annotated]

    def on_host(self, host: str) -> FakeShards:
        replica = FakeShards(self.down)
        replica.host, replica.asked = host, self.asked
        return replica

    async def query(self, sql: str, fmt: str = "JSONEachRow") -> str:
        assert "system.clusters" in sql
        return '[1, ["s1-a", "s1-b"]]\n[2, ["s2-a", "s2-b"]]\n'

    async def close(self) -> None:
        return None


async def test_work_on_each_shard_goes_to_the_next_replica_when_one_fails() -> None:
    async def work(replica: Any) -> str:
        replica.asked.append(replica.host)
        if replica.host in replica.down:
            raise StoreError("unreachable")
        return str(replica.host)

    shards = FakeShards({"s1-a"})
    assert await cluster_mode.on_each_shard(shards, Cluster("c"), work) == ["s1-b", "s2-a"]  # type: ignore[arg-type]
    assert shards.asked == ["s1-a", "s1-b", "s2-a"]
    with pytest.raises(StoreError, match="shard 2, s2-b"):
        await cluster_mode.on_each_shard(FakeShards({"s2-a", "s2-b"}), Cluster("c"), work)  # type: ignore[arg-type]


# -- settings --------------------------------------------------------------------------------------


def test_the_cluster_settings() -> None:
    url = {"BEACON_CLICKHOUSE_URL": "http://ch:8123"}
    settings = StoreSettings.from_env({**url, "BEACON_CLICKHOUSE_CLUSTER": "beacon"})
    assert settings.cluster == Cluster("beacon", "auto")
    assert StoreSettings.from_env(url).cluster is None
    # Replicas behind one address: no cluster mode; the writer looks for inserts on each.
    replicas = StoreSettings.from_env({**url, "BEACON_CLICKHOUSE_REPLICAS_CLUSTER": "default"})
    assert replicas.cluster is None
    assert open_writer(replicas).processes_cluster == "default"  # type: ignore[attr-defined]
    assert open_writer(settings).processes_cluster == "beacon"  # type: ignore[attr-defined]
    for env, message in (
        ({"BEACON_CLICKHOUSE_CLUSTER": "beacon"}, "BEACON_CLICKHOUSE_URL"),
        ({**url, "BEACON_CLICKHOUSE_CLUSTER": "a.b"}, "BEACON_CLICKHOUSE_CLUSTER"),
        ({**url, "BEACON_CLICKHOUSE_CLUSTER": "x'--"}, "BEACON_CLICKHOUSE_CLUSTER"),
        ({**url, "BEACON_CLICKHOUSE_INSERT_QUORUM": "most"}, "BEACON_CLICKHOUSE_INSERT_QUORUM"),
        ({"BEACON_CLICKHOUSE_REPLICAS_CLUSTER": "r"}, "BEACON_CLICKHOUSE_URL"),
        ({**url, "BEACON_CLICKHOUSE_REPLICAS_CLUSTER": "x'--"}, "_CLUSTER: letters"),
        (
            {**url, "BEACON_CLICKHOUSE_REPLICAS_CLUSTER": "r", "BEACON_CLICKHOUSE_CLUSTER": "c"},
            "set one of the two",
        ),
    ):
        with pytest.raises(SettingsError, match=message):
            StoreSettings.from_env(env)
