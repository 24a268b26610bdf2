"""Erasure and export on real chDB: the SQL, the store port's POST /erase, ClickHouse over HTTP."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from analytics import erasure, query_server, subject_cli
from analytics.migrations import migrate
from analytics.query_server import create_query_app
from analytics.rollup_settle import Settler, due_before_erasure, rebuild_after_erasure
from analytics.rollups import EVENTS_HOURLY
from analytics.schema import ERASURES, EVENTS
from analytics.settings import StoreSettings
from analytics.store import StoreError
from analytics.store.http import HttpWriter
from analytics.subject_cli import run_erase
from consumers.ingest import Ingest
from consumers.settings import ConsumerSettings
from contract import owner
from tests.support.chdb_events import ErasedBeforeTheInsert, Store, hour_ago_ms, wire
from tests.support.clickhouse_front import ClickHouseFront

JSON = {"Content-Type": "application/json"}


def people(at_ms: int) -> list[dict]:
    """alice: 2 events (the first also stored twice: see `insert`); bob: 1; a visitor; a site."""
    return [
        wire("open", at_ms, site="mail", recipient="alice"),
        wire("click", at_ms + 1, site="mail", recipient="alice"),
        wire("open", at_ms + 2, site="mail", recipient="bob"),
        wire("pageview", at_ms + 3, site="blog", visitor_id=12345678901234567890),
        wire("pageview", at_ms + 4, site="gone", recipient="carol"),
        wire("open", at_ms + 5, site="mail", recipient="o'brien\\"),
    ]


def batches() -> list[list[dict]]:
    """Two inserts, the second repeating alice's first event, as a replay with another token
    does (one insert would fold the copies: ReplacingMergeTree merges within an insert)."""
    events = people(hour_ago_ms())
    return [events, events[:1]]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "clickhouse")
    for batch in batches():
        s.add(batch)
    yield s
    s.close()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def count(store: Store, where: str = "1") -> int:
    return int(store.writer.query_sync(f"SELECT count() FROM {EVENTS} WHERE {where}", "TSV"))


def test_condition_quotes_values_and_refuses_anything_else() -> None:
    assert erasure.condition("recipient", "o'brien\\") == "recipient = 'o\\'brien\\\\'"
    assert erasure.condition("visitor", "42") == "visitor_id = 42"
    assert erasure.condition("site", "blog") == "site = 'blog'"
    for field, value, reason in [
        ("email", "a@b.c", "unknown_field"),
        ("recipient", "", "empty_value"),
        ("recipient", "x" * 257, "value_too_long"),
        ("recipient", "bob\n", "control_chars"),
        ("visitor", "12ab", "bad_visitor_id"),
        ("visitor", "0", "bad_visitor_id"),
        ("visitor", str(2**64), "bad_visitor_id"),
    ]:
        with pytest.raises(erasure.RequestError) as caught:
            erasure.condition(field, value)
        assert caught.value.reason == reason


async def test_erase_removes_exactly_the_rows_asked_for(store: Store) -> None:
    writer = store.writer
    assert await erasure.erase(writer, "recipient", "x' OR 1=1 OR '") == 0  # just a value
    assert count(store) == 7
    assert await erasure.erase(writer, "recipient", "alice") == 3  # every stored copy
    assert count(store, "recipient = 'alice'") == 0
    assert await erasure.erase(writer, "recipient", "o'brien\\") == 1
    assert await erasure.erase(writer, "visitor", "12345678901234567890") == 1
    assert await erasure.erase(writer, "site", "gone") == 1
    assert await erasure.erase(writer, "recipient", "alice") == 0  # again: nothing left
    left = store.rows(f"SELECT recipient, site FROM {EVENTS} FINAL")
    assert left == [{"recipient": "bob", "site": "mail"}]


def body(events: list[dict]) -> list[bytes]:
    return [b"\n".join(orjson.dumps(e) for e in events)]


def recipients_in_rollup(store: Store) -> int:
    sql = f"SELECT uniqExactMerge(recipients) AS n FROM {EVENTS_HOURLY.table}"
    return int(store.rows(sql)[0]["n"])


def alice_then_bob(at_ms: int) -> list[dict]:
    return [wire("open", at_ms, recipient="alice"), wire("open", at_ms + 1, recipient="bob")]


@pytest.fixture
def empty(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "clickhouse")
    yield s
    s.close()


async def test_a_batch_replayed_after_an_erasure_does_not_bring_its_person_back(
    empty: Store,
) -> None:
    # Stored, then the consumer dies before its commit; the person is erased; the batch is
    # replayed under its token, which ClickHouse drops, and the check of its stored ids finds
    # the erased rows missing.
    store, events = empty, alice_then_bob(hour_ago_ms())
    ingest = Ingest(store.writer)
    await ingest.store(body(events), "beacon.events-0-100-101")
    assert await erasure.erase(store.writer, "recipient", "alice") == 1
    assert recipients_in_rollup(store) == 1

    replayed = await ingest.store(body(events), "beacon.events-0-100-101", replay=True)
    assert (replayed.refilled, replayed.erased) == (0, 1)
    assert count(store, "recipient = 'alice'") == 0 and count(store, "recipient = 'bob'") == 1
    assert recipients_in_rollup(store) == 1


async def test_a_row_left_out_for_an_erasure_is_not_counted_as_invalid_traffic(
    empty: Store,
) -> None:
    """rows_invalid counts rows stored as invalid traffic: an erased person's crawler row is
    not stored at all, and was counted there all the same."""
    crawler = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
    at = hour_ago_ms()
    events = [wire("open", at + i, recipient=who, user_agent=crawler)
              for i, who in enumerate(("alice", "alice", "bob"))]  # fmt: skip
    assert await erasure.erase(empty.writer, "recipient", "alice") == 0
    stored = await Ingest(empty.writer).store(body(events), "beacon.events-0-0-2")
    assert (stored.inserted, stored.erased, stored.invalid) == (1, 2, {"crawler": 1})
    assert count(empty, "recipient = 'alice'") == 0 and count(empty, "ivt = 'crawler'") == 1


async def test_a_replay_does_not_put_back_a_row_without_consent_a_site_erasure_deleted(
    empty: Store,
) -> None:
    # Such a row's time is its hour's start: the erasure's DELETE takes it by that time, but
    # a new batch would keep it (it may have come up to an hour later). A replay that finds
    # it missing leaves it out: the DELETE may be why.
    store, at_ms = empty, now_ms() - 600_000
    events = [
        wire("pageview", at_ms, site="blog", consent="missing"),
        wire("pageview", at_ms, site="shop", consent="missing"),
    ]
    ingest = Ingest(store.writer)
    await ingest.store(body(events), "beacon.events-0-100-101")
    assert await erasure.erase(store.writer, "site", "blog") == 1
    replayed = await ingest.store(body(events), "beacon.events-0-100-101", replay=True)
    assert (replayed.refilled, replayed.erased) == (0, 1)
    assert count(store, "site = 'blog'") == 0 and count(store, "site = 'shop'") == 1
    # Rows of the site's hours after the erasure, lost (the token kept, the rows not, as a
    # kill can leave them): the replay puts them back.
    later_ms = now_ms() + 1000
    later = [wire("pageview", later_ms, site=s, consent="missing") for s in ("blog", "shop")]
    await ingest.store(body(later), "beacon.events-0-102-103")
    lose = f"DELETE FROM {EVENTS} WHERE toUnixTimestamp64Milli(received_at) = {later_ms}"
    empty.writer.query_sync(lose, "TSV")
    assert count(store) == 1
    replayed = await ingest.store(body(later), "beacon.events-0-102-103", replay=True)
    assert (replayed.refilled, replayed.erased) == (2, 0)
    assert count(store, "site = 'blog'") == 1 and count(store, "site = 'shop'") == 2


async def test_events_on_their_way_at_an_erasure_are_left_out_and_later_ones_kept(
    empty: Store,
) -> None:
    store = empty
    at = hour_ago_ms()
    assert await erasure.erase(store.writer, "recipient", "alice") == 0  # nothing stored yet
    assert await erasure.erase(store.writer, "visitor", "12345678901234567890") == 0
    late = time.time_ns() // 1_000_000 + 60_000  # received after the erasure
    on_the_way = [
        wire("open", at, recipient="alice"),
        wire("click", at + 1, recipient="alice"),
        wire("pageview", at + 2, site="blog", visitor_id=12345678901234567890),
        wire("open", at + 3, recipient="bob"),
        wire("open", late, recipient="alice"),  # a new event of theirs, after the erasure
    ]
    stored = await Ingest(store.writer).store(body(on_the_way), "beacon.events-0-0-4")
    assert (stored.rows, stored.erased, stored.inserted) == (5, 3, 2)
    left = store.rows(f"SELECT recipient, toUnixTimestamp64Milli(received_at) AS ms FROM {EVENTS}")
    kept_rows = sorted((r["recipient"], int(r["ms"])) for r in left)
    assert kept_rows == [("alice", late), ("bob", at + 3)]
    # The list names nobody in clear: a hash of each id, and when.
    erasures = store.query(f"SELECT * FROM {ERASURES}")
    assert "alice" not in erasures and "12345678901234567890" not in erasures
    assert len(erasures.splitlines()) == 2


class BackBeforeTheDelete:
    """The store as an erasure finds it when its person comes back between its record and its
    DELETE: the consumer stores their new event, received after the erasure."""

    def __init__(self, writer: object, events: list[dict]) -> None:
        self.writer, self.events = writer, events

    async def execute(self, sql: str) -> None:
        if sql.startswith("DELETE") and self.events:
            events, self.events = self.events, []
            await Ingest(self.writer).store(body(events), "beacon.events-0-9-9")  # type: ignore[arg-type]
        await self.writer.execute(sql)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self.writer, name)


async def test_an_event_received_after_the_erasure_stays_when_stored_before_its_delete(
    empty: Store,
) -> None:
    """As the consumer keeps it (above): in the events and in its day's rollups, which the
    erasure does not rebuild when its DELETE takes nothing of that day."""
    store = empty
    yesterday = hour_ago_ms() - 86_400_000
    store.add(alice_then_bob(yesterday))
    late = time.time_ns() // 1_000_000 + 60_000
    back = BackBeforeTheDelete(store.writer, [wire("open", late, recipient="alice")])
    assert await erasure.erase(back, "recipient", "alice") == 1  # type: ignore[arg-type]
    left = store.rows(f"SELECT recipient, toUnixTimestamp64Milli(received_at) AS ms FROM {EVENTS}")
    assert sorted((r["recipient"], int(r["ms"])) for r in left) == [
        ("alice", late),
        ("bob", yesterday + 1),
    ]
    assert recipients_in_rollup(store) == 2  # bob yesterday, alice today: as the events say


async def test_a_row_stored_before_the_erasure_goes_whatever_time_its_collector_gave_it(
    empty: Store,
) -> None:
    """A collector's clock ahead of the store's: its row says it came after the erasure, but
    was stored before it."""
    store = empty
    ahead = now_ms() + 600_000
    store.add([wire("open", ahead, recipient="alice"), wire("open", ahead, recipient="bob")])
    await asyncio.sleep(1.1)  # stored a second before the erasure, as inserted_at tells seconds
    assert await erasure.erase(store.writer, "recipient", "alice") == 1
    assert [r["recipient"] for r in store.rows(f"SELECT recipient FROM {EVENTS}")] == ["bob"]


async def test_an_erasure_that_comes_while_a_batch_is_on_its_way_still_erases_it(
    empty: Store,
) -> None:
    store, events = empty, alice_then_bob(hour_ago_ms())
    racing = ErasedBeforeTheInsert(store.writer, "recipient", "alice")
    ingest = Ingest(racing)  # type: ignore[arg-type]
    stored = await ingest.store(body(events), "beacon.events-0-0-1")
    assert racing.erased == 0  # nothing of hers was stored when it ran
    assert (stored.erased, stored.inserted) == (0, 2) and stored.erase is not None
    assert count(store, "recipient = 'alice'") == 1  # until the batch deletes it, before its ack
    # The consumer dies here, or the delete fails: the batch comes again, and its insert is
    # taken for a repeat of its token. That attempt deletes her rows.
    again = await Ingest(store.writer).store(body(events), "beacon.events-0-0-1", again=True)
    assert (again.erased, again.erase) == (1, stored.erase)
    assert await ingest.erase_recorded(again.erase) == 1
    assert count(store, "recipient = 'alice'") == 0 and count(store, "recipient = 'bob'") == 1
    assert recipients_in_rollup(store) == 1
    # With no erasure between, nothing but the two reads.
    calm = await Ingest(store.writer).store(body([wire("open", hour_ago_ms(), recipient="alice")]),
                                            "beacon.events-0-2-2")  # fmt: skip
    assert (calm.erased, calm.inserted, calm.erase) == (1, 0, None)


class ErasedEarlierBeforeTheInsert(ErasedBeforeTheInsert):
    """As ErasedBeforeTheInsert, but stamped before an erasure the batch read: two erasures
    at once on a server, this one's clock read first and its record committed last."""

    async def insert_from(self, *args: object) -> None:
        if self.erased is None:
            record = erasure.record_statement(self.field, self.value, now_ms() - 5_000)
            await self.writer.execute(record)  # type: ignore[attr-defined]
            self.erased = 0  # its DELETE ran before the insert landed: none of the batch's
        await self.writer.insert_from(*args)  # type: ignore[attr-defined]


async def test_an_erasure_stamped_before_one_the_batch_read_still_erases_it(
    empty: Store,
) -> None:
    store, at_ms = empty, hour_ago_ms()
    await erasure.erase(store.writer, "recipient", "carol")  # the batch reads this one
    events = [wire("open", at_ms, recipient="alice"), wire("open", at_ms + 1, visitor_id=42)]
    racing = ErasedEarlierBeforeTheInsert(store.writer, "visitor", "42")
    await assert_the_erase_step_takes(
        store, racing, events, "visitor_id = 42", "recipient = 'alice'"
    )


async def assert_the_erase_step_takes(
    store: Store, racing: ErasedBeforeTheInsert, events: list[dict], erased: str, kept: str
) -> None:
    """The batch stored through `racing`, its row `erased` still there; its erase step then
    takes that one row and leaves the `kept` one."""
    ingest = Ingest(racing)  # type: ignore[arg-type]
    stored = await ingest.store(body(events), "beacon.events-0-0-1")
    assert stored.erase is not None and count(store, erased) == 1
    assert await ingest.erase_recorded(stored.erase) == 1
    assert count(store, erased) == 0 and count(store, kept) == 1


class ErasedAsTheInsertLands(ErasedBeforeTheInsert):
    """An erasure recorded (two seconds on) while the batch's insert runs, its DELETE done
    before the insert's parts land: their rows are stored before it, by inserted_at."""

    async def insert_from(self, *args: object) -> None:
        await self.writer.insert_from(*args)  # type: ignore[attr-defined]
        record = erasure.record_statement(self.field, self.value, now_ms() + 2_000)
        await self.writer.execute(record)  # type: ignore[attr-defined]


async def test_a_batchs_erase_step_takes_its_rows_stored_before_the_erasure_whatever_their_time(
    empty: Store,
) -> None:
    """As `erase` does: a collector's clock ahead put alice's row after the erasure."""
    store = empty
    events = [
        wire("open", now_ms() + 600_000, recipient="alice"),
        wire("open", now_ms(), recipient="bob"),
    ]
    racing = ErasedAsTheInsertLands(store.writer, "recipient", "alice")
    await assert_the_erase_step_takes(
        store, racing, events, "recipient = 'alice'", "recipient = 'bob'"
    )


def count_rows(writer: object, where: str) -> int:
    return int(writer.query_sync(f"SELECT count() FROM {EVENTS} WHERE {where}", "TSV"))  # type: ignore[attr-defined]


class ErasedAroundTheInsert(ErasedBeforeTheInsert):
    """An erasure interleaved with the batch's insert: recorded and its rows counted by day
    before the insert lands (finding only an earlier day of theirs), its DELETE and rebuild
    after it (the DELETE takes the batch's rows too; the rebuild, the days it counted only)."""

    async def insert_from(self, *args: object) -> None:
        writer = self.writer
        if self.erased is None:
            where = erasure.condition(self.field, self.value)
            await writer.execute(erasure.record_statement(self.field, self.value, now_ms()))  # type: ignore[attr-defined]
            by_day = await writer.query(  # type: ignore[attr-defined]
                f"SELECT DISTINCT toString(toDate(received_at)) FROM {EVENTS} WHERE {where}", "TSV"
            )
            days = by_day.split()
            await writer.insert_from(*args)  # type: ignore[attr-defined]
            self.erased = count_rows(writer, where)
            await due_before_erasure(writer, days)  # type: ignore[arg-type]
            await writer.execute(erasure.delete_statement(where, None))  # type: ignore[attr-defined]
            await rebuild_after_erasure(writer, days)  # type: ignore[arg-type]
            return
        await writer.insert_from(*args)  # type: ignore[attr-defined]


async def test_an_erasure_whose_delete_took_the_batchs_rows_still_clears_its_rollups(
    empty: Store,
) -> None:
    store = empty
    earlier = wire("open", hour_ago_ms() - 3 * 86_400_000, recipient="alice")
    await Ingest(store.writer).store(body([earlier]), "beacon.events-0-0-0")
    racing = ErasedAroundTheInsert(store.writer, "recipient", "alice")
    ingest = Ingest(racing)  # type: ignore[arg-type]
    stored = await ingest.store(body(alice_then_bob(hour_ago_ms())), "beacon.events-0-1-2")
    assert racing.erased == 2 and count(store, "recipient = 'alice'") == 0
    assert stored.erase is not None
    assert await ingest.erase_recorded(stored.erase) == 0  # nothing left to delete
    assert recipients_in_rollup(store) == 1  # bob's: the views had counted her on the way in


async def test_an_erasure_leaves_others_rows_of_any_time_alone(empty: Store) -> None:
    # Another producer's row at the epoch: no erasure of theirs, so kept. (One before it is
    # refused: outside the rollups' time range, docs/tracking.md.)
    store = empty
    assert await erasure.erase(store.writer, "recipient", "alice") == 0
    events = [wire("open", ms, recipient="bob") for ms in (0, -1000)]
    events += [wire("open", 0, recipient="alice")]
    stored = await Ingest(store.writer).store(body(events), "beacon.events-0-0-2")
    assert (stored.erased, stored.inserted, stored.rejects) == (1, 1, [(1, "bad_received_at")])
    assert count(store, "recipient = 'bob'") == 1


async def test_thousands_of_erasures_are_read_by_the_insert_not_written_into_it(
    empty: Store,
) -> None:
    # A bulk erasure with a backlog waiting: a term per erasure would pass ClickHouse's
    # 256 KiB query size and fail the batch on every retry.
    store = empty
    at = hour_ago_ms()
    for i in range(5000):
        if i % 1000 == 0:
            await erasure.erase(store.writer, "recipient", f"u-{i}")  # some the real way
    await store.writer.execute(
        f"INSERT INTO {ERASURES} SELECT 'recipient', sipHash64(toString('u-' || "
        "toString(number))), now64(3) FROM numbers(5000)"
    )
    events = [wire("open", at + i, recipient=f"u-{i}") for i in (1, 2000, 4999)]
    events.append(wire("open", at, recipient="bob"))
    stored = await Ingest(store.writer).store(body(events), "beacon.events-0-0-3")
    assert (stored.erased, stored.inserted) == (3, 1)
    assert store.rows(f"SELECT recipient FROM {EVENTS}") == [{"recipient": "bob"}]


async def test_a_batchs_erase_step_deletes_after_thousands_of_erasures_in_statements_that_fit(
    empty: Store,
) -> None:
    # A bulk erasure while a backlog is replayed: the erase step listed every id erased since
    # the batch's oldest event in one DELETE, past 256 KiB at ~3,600 of them, and failed the
    # batch on every retry, holding every partition behind it.
    store, at = empty, hour_ago_ms()
    events = [wire("open", at + i, recipient=f"u-{i}") for i in (1, 2000, 4999)]
    events.append(wire("open", at, recipient="bob"))
    assert (await Ingest(store.writer).store(body(events), "beacon.events-0-0-3")).inserted == 4
    await store.writer.execute(
        f"INSERT INTO {ERASURES} SELECT 'recipient', sipHash64(toString('u-' || "
        "toString(number))), now64(3) FROM numbers(5000)"
    )
    await erasure.erase(store.writer, "visitor", "7")  # another field's list beside it
    again = await Ingest(store.writer).store(body(events), "beacon.events-0-0-3", again=True)
    assert again.erase is not None
    assert await Ingest(store.writer).erase_recorded(again.erase) == 3
    assert store.rows(f"SELECT recipient FROM {EVENTS}") == [{"recipient": "bob"}]
    assert recipients_in_rollup(store) == 1


class SettledBetweenDeletes:
    """The store as a settling pass finds it between two DELETEs of one erasure step: the
    pass runs right after the first."""

    def __init__(self, writer: object, settler: Settler) -> None:
        self.writer, self.settler = writer, settler
        self.settled = False

    async def execute(self, sql: str, *args: object) -> None:
        await self.writer.execute(sql, *args)  # type: ignore[attr-defined]
        if sql.startswith("DELETE") and not self.settled:
            self.settled = True
            await self.settler.settle_due()

    def __getattr__(self, name: str) -> object:
        return getattr(self.writer, name)


async def test_a_day_settled_between_an_erasures_deletes_is_due_again_before_the_next(
    empty: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Marked due once, before the first DELETE: a pass that settled the day in between (carol
    still in it) marked it done, and a stop before the rebuild left her in its rollups."""
    store = empty
    today = dt.datetime.now(dt.UTC).date()
    noon = dt.datetime.combine(today, dt.time(12), dt.UTC).timestamp()
    day_ms = int((noon - 86_400) * 1000)  # noon yesterday, a closed day at the settler's noon
    store.add(
        [wire("open", day_ms + i, recipient=r) for i, r in enumerate(("alice", "carol", "bob"))]
    )
    settler = Settler(store.writer, clock=lambda: noon, insert_margin_s=-5)
    racing = SettledBetweenDeletes(store.writer, settler)

    async def stopped(writer: object, days: object) -> None:
        raise StoreError("stopped before the rebuild")

    monkeypatch.setattr(erasure, "rebuild_after_erasure", stopped)
    wheres = ["recipient = 'alice'", "recipient = 'carol'"]
    with pytest.raises(StoreError):
        await erasure.delete_rows(racing, wheres, None)  # type: ignore[arg-type]
    assert racing.settled
    yesterday = today - dt.timedelta(days=1)
    assert await settler.due_days() == [yesterday]  # the next pass settles it again
    await settler.settle_due()
    assert recipients_in_rollup(store) == 1  # bob


async def test_a_row_kept_without_consent_is_left_out_only_if_its_hour_ended_before(
    empty: Store,
) -> None:
    # Such a row's time is cut to the hour: it may have come up to an hour later.
    store = empty
    hour_ms = 3_600_000
    assert await erasure.erase(store.writer, "site", "blog") == 0
    # The hour of the erasure as the store recorded it: this process's clock, read apart,
    # could be in the hour before it.
    [erased] = store.rows(f"SELECT toUnixTimestamp64Milli(erased_at) AS ms FROM {ERASURES}")
    this_hour = int(erased["ms"]) // hour_ms * hour_ms
    events = [
        wire("pageview", this_hour, site="blog", consent="missing"),  # may be after
        wire("pageview", this_hour - 2 * hour_ms, site="blog", consent="missing"),  # before
        wire("pageview", this_hour - 2 * hour_ms, site="shop", consent="missing"),
    ]
    stored = await Ingest(store.writer).store(body(events), "beacon.events-0-0-2")
    assert (stored.erased, stored.inserted) == (1, 2)
    left = store.rows(f"SELECT site, toUnixTimestamp64Milli(received_at) AS ms FROM {EVENTS}")
    assert sorted((r["site"], int(r["ms"])) for r in left) == [
        ("blog", this_hour),
        ("shop", this_hour - 2 * hour_ms),
    ]


async def test_export_sql_finds_one_persons_events(store: Store) -> None:
    rows = store.rows(erasure.export_sql("recipient", "alice"))
    assert [r["event_type"] for r in rows] == ["open", "click"]  # the replayed copy once
    assert {r["recipient"] for r in rows} == {"alice"} and "user_agent" in rows[0]


def test_audit_lines_are_json_appended_and_private(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "audit.log"
    erasure.audit(path, "erase", "recipient", "alice", 3, "direct", "ops\nfake line")
    erasure.audit(path, "export", "recipient", "bob", 1, "store", "ops")
    first, second = (orjson.loads(line) for line in path.read_bytes().splitlines())
    assert first["action"] == "erase" and first["value"] == "alice" and first["rows"] == 3
    assert first["by"] == "opsfake line" and first["at"].endswith("Z")
    assert second["action"] == "export"
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.fixture
async def port(store: Store, tmp_path: Path):  # type: ignore[no-untyped-def]
    """The store port's app on loopback, over the fixture's store."""
    registry = CollectorRegistry()
    app = create_query_app(store.writer, store.reader(), registry, tmp_path / "audit.log")  # type: ignore[arg-type]
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    yield client, registry
    await client.close()


async def test_store_port_erases_and_audits(port, store: Store, tmp_path: Path) -> None:
    client, registry = port
    body = orjson.dumps({"field": "recipient", "value": "alice", "by": "dpo"})
    resp = await client.post("/erase", data=body, headers={"Content-Type": "application/json"})
    assert resp.status == 200 and await resp.json() == {"rows": 3}
    assert count(store, "recipient = 'alice'") == 0
    [line] = (tmp_path / "audit.log").read_bytes().splitlines()
    audit = orjson.loads(line)
    assert (audit["field"], audit["value"], audit["rows"]) == ("recipient", "alice", 3)
    assert (audit["via"], audit["by"]) == ("store_port", "dpo")
    value = registry.get_sample_value("beacon_erase_requests_total", {"outcome": "erased"})
    assert value == 1


class HeldRebuild:
    """The store's writer; a rollup rebuild (after the DELETE) waits for `go_on`."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer
        self.rebuilding, self.go_on = asyncio.Event(), asyncio.Event()

    async def execute(self, sql: str) -> None:
        if "REPLACE PARTITION" in sql or "DROP PARTITION" in sql:
            self.rebuilding.set()
            await self.go_on.wait()
        await self.writer.execute(sql)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.writer, name)


async def test_an_erasure_whose_client_stops_waiting_still_ends_audited(
    store: Store, tmp_path: Path
) -> None:
    # The client (beacon erase, 300 s) gives up during a long rebuild and goes: the handler
    # is cancelled, and the erasure with it, after its DELETE, before its audit line.
    registry, held = CollectorRegistry(), HeldRebuild(store.writer)
    app = create_query_app(held, store.reader(), registry, tmp_path / "audit.log")  # type: ignore[arg-type]
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        body = orjson.dumps({"field": "recipient", "value": "alice", "by": "dpo"})
        asking = asyncio.create_task(client.post("/erase", data=body, headers=JSON))
        await asyncio.wait_for(held.rebuilding.wait(), 60)
        asking.cancel()  # the client goes: its connection closed
        with contextlib.suppress(asyncio.CancelledError):
            await asking
        held.go_on.set()
        audit = tmp_path / "audit.log"
        deadline = time.monotonic() + 60
        while not audit.exists() or not audit.read_bytes():
            assert time.monotonic() < deadline, "no audit line"
            await asyncio.sleep(0.05)
        assert orjson.loads(audit.read_bytes())["rows"] == 3
        value = registry.get_sample_value("beacon_erase_requests_total", {"outcome": "erased"})
        assert value == 1 and count(store, "recipient = 'alice'") == 0
    finally:
        await client.close()


async def test_a_stop_waits_for_an_erasure_under_way_for_a_bounded_time(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(query_server, "ERASE_STOP_WAIT_S", 0.5)
    held = HeldRebuild(store.writer)  # never let go on: an erasure that outlasts the stop
    app = create_query_app(held, store.reader(), CollectorRegistry(), tmp_path / "audit.log")  # type: ignore[arg-type]
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    body = orjson.dumps({"field": "recipient", "value": "alice"})
    asking = asyncio.create_task(client.post("/erase", data=body, headers=JSON))
    await asyncio.wait_for(held.rebuilding.wait(), 60)
    await asyncio.wait_for(client.close(), 60)  # the stop: not held by it for good
    assert "1 erasures still running at the stop" in caplog.text
    held.go_on.set()
    with contextlib.suppress(Exception):
        await asking


async def test_beacon_erase_past_its_wait_says_the_erasure_goes_on_and_it_does(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The command gave up on its wait with "timed out", status 1, while the store port's
    erasure ran on to its audit line: taken for a failure that was not one."""
    monkeypatch.setattr(subject_cli, "ERASE_WAIT_S", 0.5)
    held, audit = HeldRebuild(store.writer), tmp_path / "audit.log"
    app = create_query_app(held, store.reader(), CollectorRegistry(), audit)  # type: ignore[arg-type]
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    data_dir = tmp_path / "data"
    url = str(server.make_url("")).rstrip("/")
    claim = owner.claim(data_dir, owner.CONSUMER, "beacon consume", store_url=url)
    try:
        settings = StoreSettings(data_dir=data_dir, audit_log=audit)
        args = argparse.Namespace(recipient="alice", visitor=None, site=None)
        status = await asyncio.to_thread(subject_cli.erase_command, settings, args)
        assert status == subject_cli.STILL_ERASING
        assert f"goes on there, and appends its line to {audit} when it ends" in (
            capsys.readouterr().err
        )
        assert held.rebuilding.is_set() and not audit.read_bytes()  # no audit line yet
        held.go_on.set()
        deadline = time.monotonic() + 60
        while not audit.exists() or not audit.read_bytes():
            assert time.monotonic() < deadline, "no audit line"
            await asyncio.sleep(0.05)
        assert orjson.loads(audit.read_bytes())["rows"] == 3
    finally:
        owner.release(claim)
        await server.close()


@pytest.mark.parametrize(
    ("data", "headers", "status", "error"),
    [
        (b'{"field":"email","value":"a"}', {}, 400, "unknown_field"),
        (b'{"field":"recipient","value":"bob","sql":"DROP"}', {}, 400, None),
        (b'{"field":"recipient","value":["bob"]}', {}, 400, None),
        (b"[1]", {}, 400, None),
        (b"{oops", {}, 400, "malformed_json"),
        (b'{"field":"recipient","value":"bob"}', {"Content-Type": "text/plain"}, 415, None),
        (b'{"field":"recipient","value":"bob"}', {"Host": "rebound.example:8124"}, 403, None),
    ],
)
async def test_store_port_refuses_bad_or_foreign_requests(
    port, store: Store, data: bytes, headers: dict[str, str], status: int, error: str | None
) -> None:
    client, _ = port
    resp = await client.post(
        "/erase", data=data, headers={"Content-Type": "application/json", **headers}
    )
    assert resp.status == status
    if error:
        assert (await resp.json())["error"] == error
    assert count(store) == 7  # nothing erased


async def test_query_port_stays_read_only(port, store: Store) -> None:
    client, _ = port
    sql = orjson.dumps({"sql": "DELETE FROM beacon.events WHERE 1"})
    resp = await client.post("/query", data=sql, headers=JSON)
    assert resp.status == 403
    assert (await resp.json())["error"] == "read_only"
    assert count(store) == 7


async def test_query_port_refuses_a_foreign_host_name(port) -> None:
    """DNS rebinding: a loopback peer that names another host reads nothing."""
    client, _ = port
    sql = orjson.dumps({"sql": "SELECT count() FROM beacon.events"})
    foreign = {**JSON, "Host": "evil.example:80"}
    refused = await client.post("/query", data=sql, headers=foreign)
    assert refused.status == 403
    assert (await refused.json())["error"] == "loopback_only"
    assert (await client.post("/query", data=sql, headers=JSON)).status == 200
    page = await (await client.get("/metrics")).text()
    assert 'beacon_store_queries_total{outcome="not_local"} 1.0' in page
    assert 'beacon_store_queries_total{outcome="ok"} 1.0' in page


async def test_erase_against_a_clickhouse_server(tmp_path: Path) -> None:
    async with ClickHouseFront(tmp_path / "ch") as front:
        writer = HttpWriter(front.url)
        await migrate(writer, retention_days=0)
        await writer.close()
        for batch in batches():
            lines = b"\n".join(
                orjson.dumps({**e, "received_at": e["received_at"] / 1000}) for e in batch
            )
            front.run(f"INSERT INTO {EVENTS} FORMAT JSONEachRow\n{lines.decode()}")
        settings = ConsumerSettings(data_dir=tmp_path / "data", clickhouse_url=front.url)
        rows, via = await asyncio.to_thread(run_erase, settings, "recipient", "alice")
        assert (rows, via) == (3, "clickhouse")
        assert front.run(f"SELECT count() FROM {EVENTS} WHERE recipient = 'alice'") == "0\n"
        [line] = settings.audit_path.read_bytes().splitlines()
        assert orjson.loads(line)["via"] == "clickhouse"


async def test_a_batchs_erase_step_on_a_server_outlives_the_batchs_session(
    tmp_path: Path,
) -> None:
    # Server mode: the batch's statements run in a session of its own; its erase step runs
    # after it, maybe much later (a retry), when the server has forgotten that session.
    async with ClickHouseFront(tmp_path / "ch") as front:
        writer = HttpWriter(front.url)
        try:
            await migrate(writer, retention_days=0)
            racing = ErasedBeforeTheInsert(writer, "recipient", "alice")
            ingest = Ingest(racing)  # type: ignore[arg-type]
            stored = await ingest.store(body(alice_then_bob(hour_ago_ms())), "beacon.events-0-0-1")
            assert stored.erase is not None
            front.sessions.clear()  # a restart, or the session's 60 s idle timeout
            assert await ingest.erase_recorded(stored.erase) == 1
            assert front.run(f"SELECT count() FROM {EVENTS} WHERE recipient = 'alice'") == "0\n"
        finally:
            await writer.close()


async def test_a_retry_waits_for_an_insert_that_outlived_its_client(tmp_path: Path) -> None:
    # A server goes on with an insert whose client timed out. The person is erased before the
    # batch's retry, which leaves her rows out and lands nothing under the token: her rows
    # that the first insert lands after must still go.
    async with ClickHouseFront(tmp_path / "ch") as front:
        setup = HttpWriter(front.url)
        writer = HttpWriter(front.url, timeout_s=1.0)
        try:
            await migrate(setup, retention_days=0)
            gate, held = threading.Event(), []

            def hold(statement: str) -> threading.Event | None:
                if statement.startswith(f"INSERT INTO {EVENTS} (") and not held:
                    held.append(statement)
                    return gate
                return None

            front.hold = hold
            events = body([wire("open", hour_ago_ms(), recipient="alice")])
            with pytest.raises(StoreError):
                await Ingest(writer).store(events, "beacon.events-0-0-0")
            assert held and front.running  # the server runs it on
            assert await erasure.erase(setup, "recipient", "alice") == 0  # not landed yet
            asyncio.get_running_loop().call_later(3.0, gate.set)
            # The retry, in a session of its own (another Ingest: the front keeps every
            # session's temporary tables in one chDB session), retried as the pipeline does.
            retry, deadline = Ingest(writer), time.monotonic() + 60
            while True:
                try:
                    stored = await retry.store(events, "beacon.events-0-0-0", again=True)
                    break
                except StoreError:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.1)
            assert stored.erase is not None
            erased = await retry.erase_recorded(stored.erase)
            gate.set()
            while front.running:  # without the wait, the first insert lands only now
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            assert front.run(f"SELECT count() FROM {EVENTS} WHERE recipient = 'alice'") == "0\n"
            assert erased == 1  # the row the first insert landed while the retry waited
        finally:
            gate.set()
            await writer.close()
            await setup.close()


async def test_no_erasure_without_a_writable_audit_log(store: Store, tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the log's directory should be")
    app = create_query_app(
        store.writer,  # type: ignore[arg-type]
        store.reader(),
        CollectorRegistry(),
        blocked / "audit.log",
    )
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        body = orjson.dumps({"field": "recipient", "value": "alice"})
        resp = await client.post("/erase", data=body, headers={"Content-Type": "application/json"})
        assert resp.status == 503
        assert (await resp.json())["error"] == "audit_log_not_writable"
    finally:
        await client.close()
    assert count(store, "recipient = 'alice'") == 3  # nothing erased unrecorded
