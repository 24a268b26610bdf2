"""Schema migrations on real chDB: versions, idempotence, the retention TTL."""

from __future__ import annotations

from pathlib import Path

import pytest

from analytics.migrations import (
    MIGRATIONS,
    SCHEMA_MIGRATIONS,
    SET_MERGE_MAX_BYTES,
    apply_retention,
    cap_set_merges,
    migrate,
)
from analytics.rekey import OLD_KEY, rekey_events, sort_key
from analytics.rollups import SET_ROLLUPS
from analytics.schema import DATABASE, EVENTS, EVENTS_SORT_KEY, EVENTS_V1
from analytics.settings import StoreSettings
from analytics.store.chdb import ChdbWriter
from contract.config import SettingsError

UA_COLUMNS = {
    "browser": "LowCardinality(String)",
    "browser_version": "LowCardinality(String)",
    "os": "LowCardinality(String)",
    "device_type": "LowCardinality(String)",
    "is_bot": "UInt8",
}

VERSIONS = [version for version, _, _, _ in MIGRATIONS]


@pytest.fixture
async def writer(tmp_path: Path):  # type: ignore[no-untyped-def]
    writer = ChdbWriter(tmp_path / "clickhouse")
    yield writer
    await writer.close()


async def recorded_versions(writer: ChdbWriter) -> list[int]:
    text = await writer.query(
        f"SELECT version FROM {DATABASE}.schema_migrations ORDER BY version", "TSV"
    )
    return [int(v) for v in text.split()]


async def columns(writer: ChdbWriter) -> dict[str, str]:
    text = await writer.query(
        f"SELECT name, type FROM system.columns WHERE database = '{DATABASE}' AND table = 'events'",
        "TSV",
    )
    return dict(line.split("\t") for line in text.splitlines())


async def ttl_clause(writer: ChdbWriter) -> str:
    """The TTL clause of the events table as ClickHouse shows it ("" when none)."""
    create = await writer.query(
        f"SELECT create_table_query FROM system.tables "
        f"WHERE database = '{DATABASE}' AND name = 'events'",
        "TSVRaw",
    )
    _, ttl, rest = create.partition("TTL ")
    return ttl + rest.split(" SETTINGS")[0] if ttl else ""


async def test_migrating_twice_applies_and_records_each_version_once(writer):
    assert VERSIONS[:6] == [1, 2, 3, 4, 5, 6]
    assert await migrate(writer, retention_days=395) == VERSIONS
    assert await migrate(writer, retention_days=395) == []
    assert await recorded_versions(writer) == VERSIONS
    found = await columns(writer)
    assert {name: found[name] for name in UA_COLUMNS} == UA_COLUMNS
    assert found["country"] == "LowCardinality(String)"


async def test_a_version_1_table_gains_the_user_agent_columns_and_keeps_its_rows(writer):
    await writer.execute(f"CREATE DATABASE {DATABASE}")
    await writer.execute(EVENTS_V1)
    await writer.execute(
        f"INSERT INTO {EVENTS} (event_id, received_at, event_type, user_agent) "
        "VALUES ('0190b3a4-0000-7000-8000-000000000001', now64(3), 'open', 'curl/8')"
    )
    await migrate(writer, retention_days=395)  # no schema_migrations yet: v1 reruns harmlessly
    assert await recorded_versions(writer) == VERSIONS
    row = await writer.query(f"SELECT user_agent, browser, is_bot FROM {EVENTS}", "TSV")
    assert row == "curl/8\t\t0\n"  # old rows read the new columns' defaults


async def test_a_migration_that_ran_but_was_not_recorded_reruns_safely(writer):
    await migrate(writer, retention_days=0)
    # As after a crash between the ALTER and its record.
    await writer.execute(f"ALTER TABLE {DATABASE}.schema_migrations DELETE WHERE version = 2")
    assert await recorded_versions(writer) == [v for v in VERSIONS if v != 2]
    assert await migrate(writer, retention_days=0) == [2]
    assert await recorded_versions(writer) == VERSIONS


async def test_a_version_5_table_gains_the_country_column_and_its_rows_read_empty(writer):
    await writer.execute(f"CREATE DATABASE {DATABASE}")
    await writer.execute(SCHEMA_MIGRATIONS)
    for version, name, sqls, _ in MIGRATIONS[:5]:
        for sql in sqls:
            await writer.execute(sql)
        await writer.execute(
            f"INSERT INTO {DATABASE}.schema_migrations (version, name) VALUES ({version}, '{name}')"
        )
    await writer.execute(
        f"INSERT INTO {EVENTS} (event_id, received_at, event_type, ip) "
        "VALUES ('0190b3a4-0000-7000-8000-000000000001', now64(3), 'open', '81.2.69.0')"
    )
    assert (await migrate(writer, retention_days=0))[0] == 6
    row = await writer.query(f"SELECT ip, country FROM {EVENTS}", "TSV")
    assert row == "81.2.69.0\t\n"


class Recording:
    """A writer that remembers the statements it executed."""

    def __init__(self, inner: ChdbWriter) -> None:
        self.inner = inner
        self.statements: list[str] = []

    async def execute(self, sql: str) -> None:
        self.statements.append(sql)
        await self.inner.execute(sql)

    async def query(self, sql: str, fmt: str = "JSONEachRow") -> str:
        return await self.inner.query(sql, fmt)


async def test_retention_sets_changes_and_removes_the_ttl(writer):
    await migrate(writer, retention_days=30)
    assert "toIntervalDay(30)" in await ttl_clause(writer)
    await apply_retention(writer, 7)
    assert "toIntervalDay(7)" in await ttl_clause(writer)
    recording = Recording(writer)
    await apply_retention(recording, 7)  # type: ignore[arg-type]
    assert recording.statements == []  # already so: MODIFY TTL would rewrite every part
    await apply_retention(writer, 0)
    assert await ttl_clause(writer) == ""
    await migrate(writer, retention_days=0)  # and migrating again keeps it off
    assert await ttl_clause(writer) == ""


def test_a_retention_whose_ttl_would_wrap_is_refused_at_start() -> None:
    """Today plus 29,000 days passes a DateTime's end: ClickHouse wraps the TTL into the past
    and deletes every row at its part's first merge. A hundred years (36500) is what one would
    set."""
    assert StoreSettings.from_env({}).retention_days == 395
    assert StoreSettings.from_env({"BEACON_RETENTION_DAYS": "3660"}).retention_days == 3660
    with pytest.raises(SettingsError, match="BEACON_RETENTION_DAYS: must be <= 3660"):
        StoreSettings.from_env({"BEACON_RETENTION_DAYS": "36500"})


async def merge_caps(writer: ChdbWriter) -> dict[str, int]:
    """Each table of the store with a cap on the parts its merges make, and the cap."""
    text = await writer.query(
        "SELECT name, extract(create_table_query, "
        "'max_bytes_to_merge_at_max_space_in_pool = ([0-9]+)') AS cap "
        f"FROM system.tables WHERE database = '{DATABASE}' AND cap != ''",
        "TSV",
    )
    return {name: int(cap) for name, cap in (line.split("\t") for line in text.splitlines())}


async def test_the_embedded_store_caps_the_merges_of_the_rollups_with_sets(writer):
    """A merge holds the sets of its rows in memory, and a live day's sets grow with its
    traffic: the store's owner caps the parts those rollups merge into, and only those."""
    await migrate(writer, retention_days=0)
    caps = await merge_caps(writer)
    assert caps == {rollup.name: SET_MERGE_MAX_BYTES for rollup in SET_ROLLUPS}
    assert {"rollup_events_hourly", "rollup_pages_daily"} <= caps.keys()
    recording = Recording(writer)
    await cap_set_merges(recording)  # type: ignore[arg-type]
    assert recording.statements == []  # already so
    await writer.execute(
        f"ALTER TABLE {DATABASE}.rollup_events_hourly "
        "MODIFY SETTING max_bytes_to_merge_at_max_space_in_pool = 1"
    )
    await migrate(writer, retention_days=0)  # a cap of another release is set again
    assert await merge_caps(writer) == caps


async def test_a_server_keeps_its_own_merge_policy(writer):
    """Through a writer that is not the store's only one (a ClickHouse server), no cap."""
    await migrate(Recording(writer), retention_days=0)  # type: ignore[arg-type]
    assert await merge_caps(writer) == {}


async def store_before_migration_10(writer: ChdbWriter) -> None:
    await writer.execute(f"CREATE DATABASE {DATABASE}")
    await writer.execute(SCHEMA_MIGRATIONS)
    for version, name, sqls, _ in MIGRATIONS[:9]:
        for sql in sqls:  # migration 1 as it was made before 10
            await writer.execute(
                sql.replace(f"ORDER BY ({EVENTS_SORT_KEY})", f"ORDER BY ({OLD_KEY})")
            )
        await writer.execute(
            f"INSERT INTO {DATABASE}.schema_migrations (version, name) VALUES ({version}, '{name}')"
        )
    assert await sort_key(writer) == OLD_KEY


async def test_a_server_keeps_its_sort_key_and_says_so(writer, caplog):
    """Through a writer that is not the store's only one (a ClickHouse server), nothing is
    copied: consumers of the release before may still be inserting."""
    await store_before_migration_10(writer)
    shared = Recording(writer)
    await rekey_events(shared)  # type: ignore[arg-type]
    assert await sort_key(writer) == OLD_KEY
    assert not [s for s in shared.statements if "events_rekeyed" in s and "DROP" not in s]
    assert "keeps its sort key" in caplog.text


async def test_a_table_sorted_by_the_id_is_copied_into_the_arrival_time_key_once(writer):
    """Schema migration 10 on a store made before it: the rows, the rollups' views and the
    dedup backstop all stay; a second run copies nothing."""
    await store_before_migration_10(writer)
    row = (
        f"INSERT INTO {EVENTS} (event_id, received_at, event_type, site) VALUES "
        "('0190b3a4-0000-7000-8000-00000000000{n}', '2026-12-01 10:00:00.00{n}', 'open', 's')"
    )
    for n in (1, 2):
        await writer.execute(row.format(n=n))
    assert await migrate(writer, retention_days=0) == [10, 11]
    assert await sort_key(writer) == EVENTS_SORT_KEY
    tables = await writer.query(f"SHOW TABLES FROM {DATABASE} LIKE 'events%'", "TSV")
    assert tables.split() == ["events"]
    await writer.execute(row.format(n=2))  # a replayed event
    await writer.execute(row.format(n=3))
    final = await writer.query(f"SELECT count() FROM {EVENTS} FINAL", "TSV")
    assert final.strip() == "3"
    # The hourly rollup's view fires for the new table: its three inserts counted there.
    rolled = await writer.query(
        f"SELECT uniqExactMerge(events_live) FROM {DATABASE}.rollup_events_hourly", "TSV"
    )
    assert rolled.strip() == "3"
    before = await create_query(writer)
    await rekey_events(writer)  # a rerun: nothing to do
    after = await create_query(writer)
    assert before == after and "click_id_bloom" in after  # the skip index came along


async def create_query(writer: ChdbWriter) -> str:
    return await writer.query(
        f"SELECT create_table_query FROM system.tables "
        f"WHERE database = '{DATABASE}' AND name = 'events'",
        "TSVRaw",
    )
