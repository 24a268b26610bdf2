"""The ingest (consumers/ingest.py): ClickHouse parses, checks and enriches the raw lines; every
column equals what the Python reference (consumers/enrich.py) makes of the same line."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from analytics.migrations import apply_retention, migrate
from analytics.report_window import Window
from analytics.schema import EVENTS
from analytics.store import StoreError
from analytics.store.http import HttpWriter
from analytics.views import Request, view_rows
from consumers.ingest import EVENT_COLUMNS, Ingest
from consumers.sources.protocol import join_lines
from consumers.useragent import UserAgentParser
from contract.event import RECEIVED_AT_MAX_MS, RETENTION_DAYS_MAX, SCHEMA_VERSION
from tests.support.chdb_events import Store, hour_ago_ms, wire
from tests.support.clickhouse_front import ClickHouseFront

GMAIL = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
BOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
# ByteDance's crawler: a phone to ua-parser, a crawler to the crawler list alone.
LIST_ONLY_BOT = (
    "Mozilla/5.0 (Linux; Android 5.0) AppleWebKit/537.36 (KHTML, like Gecko) Mobile "
    "Safari/537.36 (compatible; Bytespider; spider-feedback@bytedance.com)"
)
# Every column but inserted_at (its DEFAULT differs between two inserts).
STORED = f"SELECT * EXCEPT inserted_at FROM {EVENTS} ORDER BY event_id"
ROLLUP = (
    "SELECT period, site, campaign, event_type, verified, machine_open, is_bot, proxied, ivt, "
    "finalizeAggregation(events_live) AS events, finalizeAggregation(visitors) AS visitors "
    "FROM beacon.rollup_events_hourly ORDER BY ALL"
)


# A country on the wire and as stored: two ASCII letters, upper-cased; anything else "", the
# event kept.
COUNTRIES = (
    ("c-good", "DE", "DE"),
    ("c-lower", "de", "DE"),
    ("c-three", "DEU", ""),
    ("c-number", 49, ""),
    ("c-object", {"code": "DE"}, ""),
    ("c-array", ["DE"], ""),
    ("c-null", None, ""),
    ("c-digit", "D1", ""),
    ("c-non-ascii", "DÉ", ""),
    ("c-dotted-i", "\u0130T", ""),  # upper-cased by Python alone, and not ASCII
    ("c-newline", "DE\n", ""),
    ("c-empty", "", ""),
)


# Invalid traffic (analytics/ivt.py): (site, event type, wire fields, the reason stored). The
# rules in order: a mail proxy is valid, then crawler, data_center, prefetch.
DC_PREFETCH = {"network": "data_center", "purpose": "prefetch"}
CRAWLER_PREFETCH = {"network": "crawler", "purpose": "prefetch"}
IVT_CASES: tuple[tuple[str, str, dict[str, Any], str], ...] = (
    ("ivt-browser", "impression", {}, ""),
    ("ivt-data-center", "impression", {"network": "data_center"}, "data_center"),
    ("ivt-crawler-network", "click", {"network": "crawler"}, "crawler"),
    ("ivt-prefetch", "impression", {"purpose": "prefetch"}, "prefetch"),
    ("ivt-prerender", "pageview", {"purpose": "prerender"}, "prefetch"),
    ("ivt-preview", "open", {"purpose": "preview"}, "prefetch"),
    ("ivt-list-only-bot", "impression", {"user_agent": LIST_ONLY_BOT}, "crawler"),
    ("ivt-googlebot", "click", {"user_agent": BOT}, "crawler"),
    ("ivt-bot-first", "impression", {"user_agent": BOT, **DC_PREFETCH}, "crawler"),
    ("ivt-dc-before-prefetch", "impression", DC_PREFETCH, "data_center"),
    # Gmail's proxy fetches from Google's ranges: valid for every event type, not only opens.
    ("ivt-gmail-dc", "impression", {"user_agent": GMAIL, "network": "data_center"}, ""),
    ("ivt-gmail-open", "open", {"user_agent": GMAIL, "network": "data_center"}, ""),
    ("ivt-gmail-crawler", "click", {"user_agent": GMAIL, **CRAWLER_PREFETCH}, ""),
    ("ivt-other-network", "impression", {"network": "vpn"}, ""),  # not one the rule names
    ("ivt-null-purpose", "impression", {"purpose": None, "network": None}, ""),
    ("ivt-number-purpose", "impression", {"purpose": 0}, "prefetch"),  # its text, "0"
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
        wire("open", at + 11, user_agent=GMAIL, ip="17.1.2.0"),  # a proxy from Apple's network
        wire(
            "click",
            at + 4,
            click_id="c-1",
            url_host="shop.example",
            url_path="/p/1",
            user_agent="Mozilla/5.0",
            ip="17.58.63.0",
        ),
        v1,
        wire("conversion", at + 6, order_id="o-1", value="12.3456", currency="EUR", verified=1),
        wire("conversion", at + 7, order_id="o-2", value="99999999999999"),
        wire("pageview", at + 8, props={"scroll_pct": "50", "ü": "ö"}, referrer="https://a.b/"),
        wire("pageview", at + 9, consent="granted", newer_field={"nested": [1, 2]}),
        wire("pageview", at + 10, user_agent="", campaign=None),
        wire("pageview", at + 12, user_agent='say "hi"\\ \u2028 ü'),
        *(
            wire("pageview", at + 13 + i, site=site, country=value)
            for i, (site, value, _) in enumerate(COUNTRIES)
        ),
        *(
            wire(kind, at + 40 + i, site=site, campaign="c", ad="a", **fields)
            for i, (site, kind, fields, _) in enumerate(IVT_CASES)
        ),
    ]


def body(events: list[dict[str, Any]]) -> list[bytes]:
    return [b"\n".join(orjson.dumps(e) for e in events)]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    made = Store(tmp_path / "store")
    yield made
    made.close()


def test_the_columns_are_those_of_the_migrated_table(store: Store) -> None:
    names = store.writer.query_sync(
        "SELECT name FROM system.columns WHERE database = 'beacon' AND table = 'events'", "TSV"
    ).split()
    assert set(EVENT_COLUMNS) == set(names) - {"inserted_at"}
    assert len(EVENT_COLUMNS) == len(set(EVENT_COLUMNS))


def reference_rows(store: Store, events: list[dict[str, Any]]) -> tuple[list, list]:
    """The events and rollup rows the Python reference (Enricher.to_row, a line at a time)
    makes of `events`, in the same store emptied first."""
    for table in (EVENTS, "beacon.rollup_events_hourly"):
        store.writer.query_sync(f"TRUNCATE TABLE {table}", "TSV")
    store.add(events)
    return store.rows(STORED), store.rows(ROLLUP)


async def test_the_ingest_stores_what_the_python_reference_makes_of_each_line(
    store: Store,
) -> None:
    events = mixed_events()
    stored = await Ingest(store.writer).store(body(events), "ingest-1")
    assert (stored.rows, stored.rejects, stored.refilled) == (len(events), [], 0)
    by_sql, rollup_by_sql = store.rows(STORED), store.rows(ROLLUP)
    assert (by_sql, rollup_by_sql) == reference_rows(store, events)
    apple = next(r for r in by_sql if r["ip"] == "17.58.63.0" and r["event_type"] == "open")
    assert (apple["machine_open"], apple["machine_reason"], apple["mail_proxy"]) == (
        1, "apple_mpp", "apple"
    )  # fmt: skip
    click = next(r for r in by_sql if r["event_type"] == "click")
    assert (click["machine_open"], click["machine_reason"]) == (0, "")  # opens only
    countries = {r["site"]: r["country"] for r in by_sql if r["site"].startswith("c-")}
    assert countries == {site: stored for site, _, stored in COUNTRIES}
    assert {r["country"] for r in by_sql if not r["site"].startswith("c-")} == {""}
    # Each row's reason: the Python reference's (above) and the one expected.
    reasons = {r["site"]: r["ivt"] for r in by_sql if r["site"].startswith("ivt-")}
    assert reasons == {site: reason for site, _, _, reason in IVT_CASES}
    assert next(r for r in by_sql if r["user_agent"] == BOT)["ivt"] == "crawler"  # an open
    # What the consumer counts (consumers/metrics.py rows_invalid) is what it stored.
    assert stored.invalid == dict(Counter(r["ivt"] for r in by_sql if r["ivt"]))
    rolled = Counter()
    for r in rollup_by_sql:
        if r["site"].startswith("ivt-"):
            rolled[r["site"], r["ivt"]] += r["events"]
    assert rolled == Counter({(site, reason): 1 for site, _, _, reason in IVT_CASES})


async def test_a_line_break_json_keeps_unescaped_fails_neither_a_batch_nor_a_report(
    store: Store,
) -> None:
    # ClickHouse writes U+0085 (NEL) unescaped inside a JSON string, and str.splitlines breaks
    # there: a batch's agents came back in halves (the consumer stopped, and again on every
    # replay of the batch), and so did a report's rows.
    nel = "\u0085"
    events = [
        wire("open", hour_ago_ms(), user_agent=f"Mozilla{nel}x", network=f"dc{nel}",
             site="shop", campaign=f"spring{nel}", recipient="r1", verified=1)
    ]  # fmt: skip
    stored = await Ingest(store.writer).store(body(events), "ingest-nel")
    assert (stored.rows, stored.rejects) == (1, [])
    assert store.rows(STORED) == reference_rows(store, events)[0]
    [row] = view_rows(store.query, Request("campaign", Window.last_days(1)))
    assert (row["campaign"], row["opens"]) == (f"spring{nel}", 1)


async def test_a_batch_over_more_days_than_an_insert_may_make_partitions_is_stored(
    store: Store,
) -> None:
    # The rollups are partitioned by day: ClickHouse refuses an insert into more than 100
    # partitions by default, so such a batch (a backfill, a producer's clock) failed at every
    # retry, holding its partition or the spool back for good.
    day_ms = 86_400_000
    events = [wire("pageview", hour_ago_ms() - i * day_ms, site="shop") for i in range(150)]
    stored = await Ingest(store.writer).store(body(events), "ingest-days")
    assert (stored.rows, stored.rejects) == (150, [])
    [found] = store.rows(
        "SELECT uniqExact(toDate(period)) AS days, countIf(live) AS live_rows "
        "FROM beacon.rollup_events_hourly"
    )
    assert found == {"days": 150, "live_rows": 150}


def test_the_list_only_bot_is_no_bot_to_ua_parser_alone() -> None:
    # So the row above is the crawler list's doing.
    assert UserAgentParser(crawlers=lambda ua: False)(LIST_ONLY_BOT).is_bot == 0


BAD_LINES = [
    (b"{not json", "malformed_json"),
    (b"", "malformed_json"),
    (b"[1, 2]", "not_an_event"),
    (b'{"no_event_id": 1}', "not_an_event"),
    (b'{"event_id": "nope", "received_at": 1}', "bad_event_id"),
    (b'{"event_id": 7, "received_at": 1}', "bad_event_id"),
]


def bad(event: dict[str, Any], **fields: Any) -> bytes:
    return orjson.dumps({**event, **fields})


async def test_each_bad_line_is_refused_with_its_reason_and_its_number(store: Store) -> None:
    good = [wire("open", hour_ago_ms() + i) for i in range(4)]
    template = wire("open", hour_ago_ms() + 99)
    refused = [
        *BAD_LINES,
        (bad(template, schema_version=99), "unknown_schema_version"),
        (bad(template, schema_version=-1), "unknown_schema_version"),
        (bad(template, received_at="soon"), "bad_received_at"),
        (bad(template, received_at=template["received_at"] * 1000), "bad_received_at"),  # µs
        (bad(template, received_at=-1), "bad_received_at"),
        (bad(template, received_at=2**63 - 1), "bad_received_at"),
        (bad(template, value="1e5"), "bad_value"),
        (bad(template, value="١٢"), "bad_value"),  # Arabic-Indic digits are not ASCII digits
        (bad(template, visitor_id=-1), "bad_field_type"),
        (bad(template, dnt=300), "bad_field_type"),
    ]
    lines = [orjson.dumps(good[0]), *(line for line, _ in refused), *map(orjson.dumps, good[1:])]
    stored = await Ingest(store.writer).store(join_lines(lines), "ingest-bad")
    assert stored.rows == len(good)
    assert stored.rejects == [(i + 1, reason) for i, (_, reason) in enumerate(refused)]
    ids = {
        r["event_id"] for r in store.rows(f"SELECT toString(event_id) AS event_id FROM {EVENTS}")
    }
    assert ids == {e["event_id"] for e in good}


async def test_the_latest_time_taken_outlives_the_longest_retention(store: Store) -> None:
    """A row's TTL is its time plus the retention, a DateTime: past its end (2106) it wraps
    into the past and the row is deleted at the first merge, its rollup rows kept. The latest
    time taken keeps its row under the longest retention; a millisecond later is refused."""
    await apply_retention(store.writer, RETENTION_DAYS_MAX)
    last = wire("open", RECEIVED_AT_MAX_MS, site="far")
    after = wire("open", RECEIVED_AT_MAX_MS + 1, site="far")
    stored = await Ingest(store.writer).store(body([last, after]), "ingest-far")
    assert (stored.rows, stored.rejects) == (1, [(1, "bad_received_at")])
    store.writer.query_sync(f"OPTIMIZE TABLE {EVENTS} FINAL", "TSV")  # TTLs apply at a merge
    assert store.rows(f"SELECT toString(event_id) AS id FROM {EVENTS}") == [
        {"id": last["event_id"]}
    ]


async def test_a_props_not_an_object_and_a_key_given_twice_keep_their_line(store: Store) -> None:
    """As docs/tracking.md says: stored, `props` as {} and the first of two keys."""
    props = wire("open", hour_ago_ms(), props="a string", site="shop")
    twice = orjson.dumps(wire("open", hour_ago_ms() + 1, site="first"))[:-1] + b',"site":"last"}'
    stored = await Ingest(store.writer).store(join_lines([orjson.dumps(props), twice]), "ingest-x")
    assert (stored.rows, stored.rejects) == (2, [])
    rows = store.rows(f"SELECT props, site FROM {EVENTS} ORDER BY received_at")
    assert [(r["props"], r["site"]) for r in rows] == [({}, props["site"]), ({}, "first")]


async def test_numbers_and_strings_are_converted_as_the_docs_say(store: Store) -> None:
    """docs/tracking.md: a number in a string field is stored as its text, a numeric string in
    a number field as the number, a fraction in an integer field as its integer part."""
    at = hour_ago_ms()
    converted = wire("conversion", at, schema_version=str(SCHEMA_VERSION), visitor_id=1.9,
                     dnt=1.0, verified="1", site=7, value=12.5)  # fmt: skip
    stored = await Ingest(store.writer).store(body([converted]), "ingest-numbers")
    assert (stored.rows, stored.rejects) == (1, [])
    (row,) = store.rows(f"SELECT schema_version, visitor_id, dnt, verified, site, "
                        f"toString(value) AS value FROM {EVENTS}")  # fmt: skip
    assert row == {"schema_version": SCHEMA_VERSION, "visitor_id": 1, "dnt": 1, "verified": 1,
                   "site": "7", "value": "12.5"}  # fmt: skip


async def test_an_empty_record_last_in_a_batch_or_alone_is_refused_not_lost(
    store: Store,
) -> None:
    """ClickHouse reads no line after a body's last newline: an empty last record is refused
    as an empty line anywhere else is, with its number."""
    good = orjson.dumps(wire("open", hour_ago_ms()))
    ingest = Ingest(store.writer)
    stored = await ingest.store(join_lines([good, b""]), "ingest-empty-last")
    assert (stored.rows, stored.rejects) == (1, [(1, "malformed_json")])
    alone = await ingest.store(join_lines([None]), "ingest-empty-alone")
    assert (alone.rows, alone.rejects) == (0, [(0, "malformed_json")])


async def test_a_batch_repeated_with_its_token_is_stored_once_and_a_replay_refills(
    store: Store,
) -> None:
    events = mixed_events()
    ingest = Ingest(store.writer)
    await ingest.store(body(events), "ingest-again")
    again = await ingest.store(body(events), "ingest-again")
    assert (again.rows, again.refilled) == (len(events), 0)
    assert store.rows(f"SELECT count() AS n FROM {EVENTS}") == [{"n": len(events)}]
    # A replay whose token was kept but whose rows were lost (an embedded store killed
    # mid-insert): the ids are checked, the missing rows go in under a fresh token.
    store.writer.query_sync(f"ALTER TABLE {EVENTS} DELETE WHERE event_type = 'pageview' "
                            "SETTINGS mutations_sync = 2", "TSV")  # fmt: skip
    replay = await ingest.store(body(events), "ingest-again", replay=True)
    assert replay.refilled == sum(e["event_type"] == "pageview" for e in events)
    assert store.rows(f"SELECT count() AS n FROM {EVENTS}") == [{"n": len(events)}]
    # So does a retry in the same run (an insert that failed as a server or its machine went
    # down, its token kept and its rows not): the token drops the retry's insert as a repeat.
    store.writer.query_sync(f"ALTER TABLE {EVENTS} DELETE WHERE event_type = 'open' "
                            "SETTINGS mutations_sync = 2", "TSV")  # fmt: skip
    retry = await ingest.store(body(events), "ingest-again", again=True)
    assert retry.refilled == sum(e["event_type"] == "open" for e in events)
    assert store.rows(f"SELECT count() AS n FROM {EVENTS}") == [{"n": len(events)}]


async def test_a_replay_with_nothing_missing_on_a_server_whose_empty_sums_are_no_row(
    store: Store,
) -> None:
    """With `empty_result_for_aggregation_by_empty_set` in a server's profile, the id check of
    a replay that finds nothing missing read no row: the consumer exited at every try."""
    events = mixed_events()
    ingest = Ingest(store.writer)
    await ingest.store(body(events), "ingest-profile")
    store.writer.query_sync("SET empty_result_for_aggregation_by_empty_set = 1", "TSV")
    replay = await ingest.store(body(events), "ingest-profile", replay=True)
    assert (replay.rows, replay.refilled) == (len(events), 0)
    assert store.rows(f"SELECT count() AS n FROM {EVENTS}") == [{"n": len(events)}]


async def test_a_partial_replay_stores_only_the_events_not_stored_yet(store: Store) -> None:
    """A recorded batch formed again only in part (its partitions went to several members)
    has another token: its events already stored are not stored again, whatever the token."""
    events = mixed_events()
    ingest = Ingest(store.writer)
    half = len(events) // 2
    await ingest.store(body(events[:half]), "ingest-half")
    replay = await ingest.store(body(events), "ingest-part", replay=True, partial=True)
    assert (replay.rows, replay.refilled, replay.inserted) == (len(events), len(events) - half,
                                                               len(events) - half)  # fmt: skip
    assert store.rows(f"SELECT count() AS n FROM {EVENTS}") == [{"n": len(events)}]
    again = await ingest.store(body(events), "ingest-part-2", replay=True, partial=True)
    assert (again.refilled, again.inserted) == (0, 0)
    assert store.rows(f"SELECT count() AS n FROM {EVENTS}") == [{"n": len(events)}]


async def test_the_newest_event_of_each_segment_of_a_batch(store: Store) -> None:
    """A batch of several partitions reports each one's newest event (their lag in seconds)."""
    events = mixed_events()[:6]
    for at, event in enumerate(events):
        event["received_at"] = 1_000_000 * (at + 1)
        event["consent"] = "granted"
    stored = await Ingest(store.writer).store(body(events), "ingest-segments", segments=[2, 3, 1])
    assert stored.newest_by_segment == [2_000_000, 5_000_000, 6_000_000]
    assert stored.newest_ms == 6_000_000


async def test_the_http_writer_runs_the_same_ingest_on_a_server(tmp_path: Path) -> None:
    events = mixed_events()
    async with ClickHouseFront(tmp_path / "store") as front:
        writer = HttpWriter(front.url)
        try:
            await migrate(writer, 0)
            migrating = front.seen[:]
            stored = await Ingest(writer).store(body(events), "ingest-http")
            assert stored.rows == len(events)
            batch = front.seen[len(migrating) :]
            served = [orjson.loads(x) for x in (await writer.query(STORED)).splitlines()]
            # Every statement of the batch went in one server session of its own, which each
            # one after the first had to find there.
            sessions = {seen.params.get("session_id") for seen in batch}
            assert len(sessions) == 1 and None not in sessions
            assert sessions.isdisjoint(seen.params.get("session_id") for seen in migrating)
            checks = [seen.params.get("session_check") for seen in batch]
            assert checks == [None] + ["1"] * (len(batch) - 1)
        finally:
            await writer.close()
        store = Store(tmp_path / "store", migrated=True)
        try:
            assert served == reference_rows(store, events)[0]
        finally:
            store.close()


async def test_a_batch_whose_statement_reaches_another_server_fails_then_is_stored_once(
    tmp_path: Path,
) -> None:
    # Several servers behind one address: after the lines' load the next connection reaches
    # another one, which has no such session. Run there, the staging would find no lines and
    # the batch would be stored empty and committed; it must fail, and its retry store it.
    events = mixed_events()
    async with ClickHouseFront(tmp_path / "store") as front:
        writer = HttpWriter(front.url)
        try:
            await migrate(writer, 0)
            ingest = Ingest(writer)
            front.moves_after = lambda seen: "LineAsString" in seen.statement
            with pytest.raises(StoreError, match="SESSION_NOT_FOUND"):
                await ingest.store(body(events), "ingest-moved")
            front.moves_after = None
            stored = await ingest.store(body(events), "ingest-moved")
            assert stored.rows == len(events)
            rows = await writer.query(f"SELECT count() FROM {EVENTS}", "TSV")
            assert int(rows) == len(events)
        finally:
            await writer.close()


class Cut:
    """The store's edge while `down`: the lines' load and the staging go through, then every
    read and every TRUNCATE fails as on a lost connection (a server session keeps the
    temporary tables and what they hold)."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer
        self.down = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.writer, name)

    async def query(self, sql: str, fmt: str = "JSONEachRow") -> str:
        if self.down:
            raise StoreError("connection lost")
        return str(await self.writer.query(sql, fmt))

    async def execute(self, sql: str) -> None:
        if self.down and sql.startswith("TRUNCATE"):
            raise StoreError("connection lost")
        await self.writer.execute(sql)


async def test_a_batch_retried_after_its_tables_could_not_be_emptied_is_stored_once(
    store: Store,
) -> None:
    events = mixed_events()
    cut = Cut(store.writer)
    ingest = Ingest(cut)  # type: ignore[arg-type]  # a Writer but for the faults
    cut.down = True
    for _ in range(2):  # two attempts fail, each after staging its lines
        with pytest.raises(StoreError):
            await ingest.store(body(events), "ingest-cut")
    # Still down: the next attempt cannot empty the tables, and stops before it stages.
    with pytest.raises(StoreError):
        await ingest.store(body(events), "ingest-cut")
    cut.down = False
    stored = await ingest.store(body(events), "ingest-cut")
    assert (stored.rows, stored.rejects) == (len(events), [])
    assert store.rows(f"SELECT count() AS n FROM {EVENTS}") == [{"n": len(events)}]
