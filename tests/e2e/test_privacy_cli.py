"""`beacon erase`, `beacon export` and the retention setting, as an operator runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from analytics.schema import DATABASE
from analytics.store.chdb import ChdbWriter
from tests.support.beacon_run import Beacon, wait_for_rows


@pytest.fixture
def beacon(tmp_path: Path) -> Iterator[Beacon]:
    with Beacon(tmp_path / "data") as b:
        yield b


def beacon_cli(b: Beacon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "beacon", *args],
        env=b.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def audit_lines(b: Beacon) -> list[dict]:
    path = b.data_dir / "audit.log"
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def count(b: Beacon, recipient: str) -> int:
    return int(b.query(f"SELECT count() FROM beacon.events WHERE recipient = '{recipient}'"))


async def test_export_then_erase_through_the_running_store_and_directly(
    beacon: Beacon, tmp_path: Path
) -> None:
    async with aiohttp.ClientSession() as http:
        for recipient, opens in (("alice", 3), ("bob", 2)):
            for i in range(opens):
                query = f"e=open&s=mail&c=welcome&m=m{i}&r={recipient}"
                async with http.get(f"{beacon.base}/p.gif?{query}") as r:
                    assert r.status == 200
    assert await wait_for_rows(beacon, 5) == 5

    out = tmp_path / "alice.json"
    export = beacon_cli(beacon, "export", "--recipient", "alice", "--output", str(out))
    assert export.returncode == 0, export.stderr
    doc = orjson.loads(out.read_bytes())
    assert (doc["field"], doc["value"]) == ("recipient", "alice")
    assert sorted(e["message"] for e in doc["events"]) == ["m0", "m1", "m2"]
    assert {e["recipient"] for e in doc["events"]} == {"alice"}
    assert out.stat().st_mode & 0o777 == 0o600

    erase = beacon_cli(beacon, "erase", "--recipient", "alice")
    assert erase.returncode == 0, erase.stderr
    assert "erased 3 rows" in erase.stdout and "store_port" in erase.stdout
    assert count(beacon, "alice") == 0 and count(beacon, "bob") == 2

    bad = beacon_cli(beacon, "erase", "--visitor", "not-a-number")
    assert bad.returncode == 2 and "bad_visitor_id" in bad.stderr
    none = beacon_cli(beacon, "erase")
    assert none.returncode == 2  # argparse: one of the ids is required

    assert beacon.stop() == 0
    # No process owns the store now: the command opens it itself.
    direct = beacon_cli(beacon, "erase", "--recipient", "bob")
    assert direct.returncode == 0, direct.stderr
    assert "erased 2 rows" in direct.stdout and "direct" in direct.stdout
    empty = beacon_cli(beacon, "export", "--recipient", "bob")
    assert empty.returncode == 0 and orjson.loads(empty.stdout)["events"] == []

    lines = audit_lines(beacon)
    assert [(a["action"], a["value"], a["rows"], a["via"]) for a in lines] == [
        ("export", "alice", 3, "store"),
        ("erase", "alice", 3, "store_port"),
        ("erase", "bob", 2, "direct"),
        ("export", "bob", 0, "store"),
    ]
    assert all(a["by"] and a["at"].endswith("Z") and a["field"] == "recipient" for a in lines)
    assert (beacon.data_dir / "audit.log").stat().st_mode & 0o777 == 0o600


def ttl_days(data_dir: Path) -> str:
    """The events table's TTL as ClickHouse shows it ("" when none)."""
    writer = ChdbWriter(data_dir / "clickhouse")
    try:
        create = writer.query_sync(
            f"SELECT create_table_query FROM system.tables "
            f"WHERE database = '{DATABASE}' AND name = 'events'",
            "TSVRaw",
        )
    finally:
        writer.close_sync()
    _, ttl, rest = create.partition(" TTL ")
    return ttl.split(" SETTINGS")[0] + rest.split(" SETTINGS")[0] if ttl else ""


def test_changing_the_retention_setting_updates_the_table(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = {**os.environ, "BEACON_DATA_DIR": str(data_dir)}

    def migrate(*args: str) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "beacon", "migrate", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr

    migrate("--set", "retention_days=30")
    assert "toIntervalDay(30)" in ttl_days(data_dir)
    env["BEACON_RETENTION_DAYS"] = "7"  # the variable, as a deployment changes it
    migrate()
    assert "toIntervalDay(7)" in ttl_days(data_dir)
    migrate("--set", "retention_days=0")
    assert ttl_days(data_dir) == ""
