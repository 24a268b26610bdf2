"""Enriched events as Arrow columns for chDB, as JSONEachRow for ClickHouse's HTTP interface."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from analytics.machine_opens import in_apple_network
from analytics.schema import EVENTS
from analytics.store.http import HttpWriter
from consumers.event_rows import BAD_FIELD_TYPE, COLUMN_NAMES, EventRows
from tests.support.chdb_events import Store, hour_ago_ms, wire
from tests.support.clickhouse_front import ClickHouseFront

GMAIL = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
BOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
# Every column but inserted_at (its DEFAULT differs between two inserts).
STORED = f"SELECT * EXCEPT inserted_at FROM {EVENTS} ORDER BY event_id"
ROLLUP = (
    "SELECT period, site, campaign, event_type, verified, machine_open, is_bot, proxied, "
    "finalizeAggregation(events_live) AS events, finalizeAggregation(visitors) AS visitors "
    "FROM beacon.rollup_events_hourly ORDER BY ALL"
)


def mixed_events() -> list[dict[str, Any]]:
    """One of each kind of row the columns must carry: every type, missing fields, extras."""
    at = hour_ago_ms()
    v1 = wire("open", at + 5, schema_version=1)
    for field in ("verified", "ip"):
        v1.pop(field, None)
    return [
        wire("open", at, site="shop", campaign="spring", message="m1", recipient="r1"),
        wire("open", at + 1, user_agent="Mozilla/5.0", ip="17.58.63.0"),  # Apple MPP
        wire("open", at + 2, user_agent=GMAIL),
        wire("open", at + 3, user_agent=BOT, visitor_id=2**64 - 1, dnt=1),
        wire("click", at + 4, click_id="c-1", url_host="shop.example", url_path="/p/1"),
        v1,
        wire("conversion", at + 6, order_id="o-1", value="12.3456", currency="EUR", verified=1),
        wire("conversion", at + 7, order_id="o-2", value="99999999999999"),
        wire("pageview", at + 8, props={"scroll_pct": "50", "ü": "ö"}, referrer="https://a.b/"),
        wire("pageview", at + 9, consent="granted", newer_field={"nested": [1, 2]}),
        wire("pageview", at + 10, user_agent=""),
    ]


def lines(events: list[dict[str, Any]]) -> list[bytes]:
    return [orjson.dumps(e) for e in events]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    made = Store(tmp_path / "store")
    made.writer.query_sync(f"SYSTEM STOP MERGES {EVENTS}", "TSV")
    yield made
    made.close()


def test_the_columns_are_those_of_the_migrated_table(store: Store) -> None:
    names = store.writer.query_sync(
        "SELECT name FROM system.columns WHERE database = 'beacon' AND table = 'events'", "TSV"
    ).split()
    assert set(COLUMN_NAMES) == set(names) - {"inserted_at"}
    assert len(COLUMN_NAMES) == len(set(COLUMN_NAMES))


async def test_arrow_columns_store_what_json_rows_store(store: Store) -> None:
    wire_lines = lines(mixed_events())
    events = [store.enricher.enrich(line) for line in wire_lines]
    body = b"".join(store.enricher.to_row(line) + b"\n" for line in wire_lines)
    await store.writer.insert(EVENTS, body, "t-json")
    from_json = store.query(STORED)
    rollup_json = store.query(ROLLUP)
    store.writer.query_sync(f"TRUNCATE TABLE {EVENTS}", "TSV")
    store.writer.query_sync("TRUNCATE TABLE beacon.rollup_events_hourly", "TSV")

    rows, unfit = EventRows.build(events)
    assert unfit == [] and len(rows) == len(events)
    await store.writer.insert(EVENTS, rows, "t-arrow")

    assert store.query(STORED) == from_json
    assert len(from_json.splitlines()) == len(events)
    assert store.query(ROLLUP) == rollup_json  # the views read Arrow blocks alike
    assert len(rollup_json.splitlines()) >= 5
    [conversion] = store.rows(f"SELECT value, received_at FROM {EVENTS} WHERE order_id = 'o-1'")
    assert conversion["value"] == 12.3456
    assert conversion["received_at"].endswith(f".{events[6]['received_at'] % 1000:03d}")


async def test_an_arrow_insert_repeated_with_its_token_is_stored_once(store: Store) -> None:
    rows, _ = EventRows.build([store.enricher.enrich(x) for x in lines(mixed_events())])
    await store.writer.insert(EVENTS, rows, "topic-0-0-10")
    await store.writer.insert(EVENTS, rows, "topic-0-0-10")  # a retry after a lost answer
    assert int(store.writer.query_sync(f"SELECT count() FROM {EVENTS}", "TSV")) == len(rows)
    more, _ = EventRows.build([store.enricher.enrich(x) for x in lines(mixed_events())])
    await store.writer.insert(EVENTS, more, "topic-0-11-21")
    assert int(store.writer.query_sync(f"SELECT count() FROM {EVENTS}", "TSV")) == 2 * len(rows)


def test_only_the_events_whose_fields_do_not_fit_are_left_out() -> None:
    events = [dict(e, browser="b") for e in mixed_events()]
    events[1]["site"] = 5  # a number where the column is a string
    events[3]["visitor_id"] = -1  # below UInt64
    events[4]["props"] = {"n": 1}  # Map(String, String)
    events[6]["dnt"] = "yes"
    rows, unfit = EventRows.build(events)
    assert unfit == [(i, BAD_FIELD_TYPE) for i in (1, 3, 4, 6)]
    assert [e["event_id"] for e in rows.events] == [
        e["event_id"] for i, e in enumerate(events) if i not in (1, 3, 4, 6)
    ]
    assert rows.table.num_rows == len(rows) == len(events) - 4


def test_ndjson_is_what_to_row_writes(store: Store) -> None:
    events = mixed_events()
    rows, _ = EventRows.build([store.enricher.enrich(x) for x in lines(events)])
    assert rows.ndjson() == b"".join(store.enricher.to_row(x) + b"\n" for x in lines(events))


async def test_the_http_writer_sends_event_rows_as_json_each_row(tmp_path: Path) -> None:
    from analytics.migrations import migrate
    from consumers.enrich import Enricher

    async with ClickHouseFront(tmp_path / "clickhouse") as front:
        writer = HttpWriter(front.url)
        try:
            await migrate(writer, retention_days=0)
            enricher = Enricher()
            rows, _ = EventRows.build([enricher.enrich(x) for x in lines(mixed_events())])
            await writer.insert(EVENTS, rows, "t-http")
            await writer.insert(EVENTS, rows, "t-http")
            insert = front.seen[-1]
            assert insert.params["query"] == f"INSERT INTO {EVENTS} FORMAT JSONEachRow"
            assert insert.body_bytes == len(rows.ndjson().decode())  # the front counts text
            assert int(front.run(f"SELECT count() FROM {EVENTS}")) == len(rows)
        finally:
            await writer.close()


async def test_the_chdb_writer_reports_a_refused_insert_as_a_store_error(store: Store) -> None:
    from analytics.store import StoreError

    rows, _ = EventRows.build([dict(e, event_id="not-a-uuid") for e in mixed_events()[:1]])
    with pytest.raises(StoreError, match="UUID"):
        await store.writer.insert(EVENTS, rows, "t-bad")
    with pytest.raises(StoreError):
        await store.writer.insert(EVENTS, b'{"event_id": "not-a-uuid"}\n', "t-bad-json")
    # The session is usable after a refused streaming insert.
    assert int(store.writer.query_sync(f"SELECT count() FROM {EVENTS}", "TSV")) == 0


@pytest.mark.parametrize(
    "ip",
    ["17.0.0.0", "17.255.255.255", "17.58.63.0", "170.1.2.3", "17.1.2", "017.1.2.3", " 17.1.2.3",
     "::ffff:17.1.2.3", "2620:149::1", "16.255.255.255", "17.1.2.3.4", "17.a.b.c", "", "junk"],
)  # fmt: skip
def test_the_apple_network_test_agrees_with_ipaddress(ip: str) -> None:
    try:
        expected = ipaddress.ip_address(ip) in ipaddress.ip_network("17.0.0.0/8")
    except ValueError:
        expected = False
    assert in_apple_network(ip) == expected
