"""The HTTP writer against a ClickHouse HTTP front on chDB (tests/support/clickhouse_front.py)."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from analytics import erasure
from analytics.migrations import MIGRATIONS, migrate
from analytics.report import run_query
from analytics.report_window import Filters, Window
from analytics.rollup_settle import Settler
from analytics.rollups import EVENTS_HOURLY, EVENTS_MERGED
from analytics.schema import EVENTS
from analytics.store import StoreError, read_guard
from analytics.store.http import (
    FRAME_INPUT_BYTES,
    HttpWriter,
    compressed_frames,
    earlier_inserts_sql,
)
from analytics.store.readers import HttpReader, ReadLimits
from analytics.views import Request, view_rows
from collector.event import build_event
from consumers.enrich import Enricher
from consumers.service import consume
from consumers.settings import ConsumerSettings
from tests.support.clickhouse_front import ClickHouseFront
from tests.support.helpers import free_port

PASSWORD = "s3cret"
UA = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1_2 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.1.2 Mobile/15E148 Safari/604.1"
)


@pytest.fixture
async def front(tmp_path: Path):  # type: ignore[no-untyped-def]
    async with ClickHouseFront(tmp_path / "clickhouse", user="beacon", password=PASSWORD) as f:
        yield f


@pytest.fixture
async def writer(front: ClickHouseFront):  # type: ignore[no-untyped-def]
    writer = HttpWriter(front.url, user="beacon", password=PASSWORD)
    yield writer
    await writer.close()


@pytest.fixture
async def store(front: ClickHouseFront, writer: HttpWriter) -> HttpWriter:
    """Migrated through HTTP; merges stopped so only the insert token can keep count() exact."""
    await migrate(writer, retention_days=395)
    front.run(f"SYSTEM STOP MERGES {EVENTS}")
    return writer


def rows(count: int, campaign: str = "spring", received_ms: int | None = None) -> bytes:
    """Enriched rows, as the pipeline hands them to a writer."""
    now_ms = received_ms or int(time.time() * 1000)
    enricher = Enricher(ua_cache_max_entries=10)
    lines = [
        enricher.to_row(
            orjson.dumps(
                build_event(
                    {"e": "open", "s": "shop", "c": campaign, "r": f"rcpt-{i}"},
                    {"n": str(i)},
                    page_url="https://shop.example/p",
                    user_agent=UA,
                    ip="203.0.113.0",
                    visitor_id=i + 1,
                    dnt=False,
                    transport="pixel",
                    received_ms=now_ms + i,
                    keep_query=frozenset(),
                    notes=[],
                )
            )
        )
        for i in range(count)
    ]
    return b"\n".join(lines) + b"\n"


async def count(front: ClickHouseFront, where: str = "1") -> int:
    return int(front.run(f"SELECT count() FROM {EVENTS} WHERE {where}"))


async def test_migrations_run_through_http_and_record_once(front, writer):
    every = [version for version, _, _, _ in MIGRATIONS]
    assert every[:6] == [1, 2, 3, 4, 5, 6]
    assert await migrate(writer, retention_days=395) == every
    assert await migrate(writer, retention_days=395) == []
    versions = front.run("SELECT version FROM beacon.schema_migrations ORDER BY version")
    assert versions == "".join(f"{version}\n" for version in every)


async def test_an_insert_repeated_with_its_token_is_stored_once(front, store):
    batch = rows(25)
    await store.insert(EVENTS, batch, "spool:seg-1:0-25")
    await store.insert(EVENTS, batch, "spool:seg-1:0-25")  # a retry after a lost answer
    assert await count(front) == 25
    # The token, not the block's hash, decides: other bytes under the same token are dropped.
    await store.insert(EVENTS, rows(25), "spool:seg-1:0-25")
    assert await count(front) == 25
    await store.insert(EVENTS, rows(5, campaign="fall"), "spool:seg-1:25-30")
    assert await count(front) == 30
    stored = front.run(
        f"SELECT browser, browser_version, os, device_type, is_bot FROM {EVENTS} LIMIT 1"
    )
    assert stored == "Mobile Safari\t17.1\tiOS\tmobile\t0\n"


async def test_fields_without_a_column_do_not_fail_an_insert(front, store):
    row = orjson.loads(rows(1))
    row["added_by_a_newer_collector"] = "x"
    await store.insert(EVENTS, orjson.dumps(row) + b"\n", "t-unknown-field")
    assert await count(front) == 1


async def test_the_insert_carries_its_settings_and_a_compressed_body(front, store):
    await store.insert(EVENTS, rows(200), "t-zstd")
    seen = front.seen[-1]
    assert seen.params["insert_deduplication_token"] == "t-zstd"
    assert seen.params["async_insert"] == "0"
    assert seen.params["insert_deduplicate"] == "1"  # whatever the server's profile says
    assert seen.params["input_format_skip_unknown_fields"] == "1"
    assert seen.content_encoding == "zstd"  # the default
    assert seen.wire_bytes * 4 < seen.body_bytes  # the front decoded it: really compressed
    for compression in ("gzip", "none"):
        writer = HttpWriter(front.url, user="beacon", password=PASSWORD, compression=compression)
        try:
            await writer.insert(EVENTS, rows(200, campaign=compression), f"t-{compression}")
        finally:
            await writer.close()
        seen = front.seen[-1]
        assert seen.content_encoding == ("" if compression == "none" else compression)
        assert (seen.wire_bytes * 4 < seen.body_bytes) == (compression == "gzip")
    assert await count(front) == 600


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
async def test_a_body_in_pieces_goes_compressed_a_frame_at_a_time(
    front, tmp_path: Path, compression: str
) -> None:
    # A batch's lines come as pieces (records and the newlines between them); compressed,
    # they go a frame at a time, never joined whole.
    lines = [b'{"n":%d,"pad":"%s"}' % (i, b"x" * (i % 97)) for i in range(40_000)]
    pieces = [piece for line in lines for piece in (line, b"\n")]
    frames = [frame async for frame in compressed_frames(pieces, compression)]
    assert len(frames) == sum(map(len, pieces)) // FRAME_INPUT_BYTES + 1 > 2
    # ClickHouse itself (chDB, the same reader as the HTTP interface's Content-Encoding)
    # reads the frames as one body.
    path = tmp_path / f"lines.{compression}"
    path.write_bytes(b"".join(frames))
    read = f"file('{path}', 'LineAsString', 'line String', '{compression}')"
    assert front.run(f"SELECT count(), sum(JSONExtractUInt(line, 'n')) FROM {read}") == (
        f"{len(lines)}\t{sum(range(len(lines)))}\n"
    )
    writer = HttpWriter(front.url, user="beacon", password=PASSWORD, compression=compression)
    try:
        front.run("CREATE TABLE default.framed (line String) ENGINE = MergeTree ORDER BY ()")
        await writer.load("default.framed", pieces, "LineAsString")
    finally:
        await writer.close()
    seen = front.seen[-1]
    assert seen.content_encoding == compression
    assert seen.body_bytes == sum(map(len, pieces)) > 4 * seen.wire_bytes
    assert front.run("SELECT count(), uniqExact(line) FROM default.framed") == (
        f"{len(lines)}\t{len(lines)}\n"
    )


async def test_every_statement_asks_for_its_whole_answer_and_a_load_is_not_queued(front, store):
    """Whatever the server's profile: a 200 only after the statement's end (no progress
    headers), and lines loaded before the statement that reads them (no async insert)."""
    await store.execute("CREATE TEMPORARY TABLE IF NOT EXISTS probe (line String)")
    await store.load("probe", [b"a\nb"], "LineAsString")
    assert await store.query("SELECT count() FROM probe", "TSV") == "2\n"
    load = next(
        seen for seen in front.seen if "FORMAT LineAsString" in seen.params.get("query", "")
    )
    assert load.params["async_insert"] == "0"
    assert all(
        (seen.params["wait_end_of_query"], seen.params["send_progress_in_http_headers"])
        == ("1", "0")
        for seen in front.seen
    )


async def test_an_exception_after_a_200_began_is_a_store_error() -> None:
    """A server that sent its 200 before the statement failed (progress headers, as a profile
    may still ask) names the exception in a header: the statement failed."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = b"Code: 241. DB::Exception: Memory limit exceeded. (MEMORY_LIMIT_EXCEEDED)\n"
        writer.write(
            b"HTTP/1.1 200 OK\r\nX-ClickHouse-Exception-Code: 241\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    writer = HttpWriter(f"http://127.0.0.1:{port}/", compression="none")
    try:
        with pytest.raises(StoreError, match=r"code 241: .*MEMORY_LIMIT_EXCEEDED"):
            await writer.execute("INSERT INTO t SELECT 1")
    finally:
        await writer.close()
        server.close()
        await server.wait_closed()


async def test_replicas_behind_one_address_take_an_insert_on_a_quorum(front, store):
    """Acknowledged on one replica alone, a batch would go with that one's disk: replicas
    behind one address wait for a quorum, as a cluster's shards do; one server does not."""
    replicas = HttpWriter(front.url, user="beacon", password=PASSWORD, replicas_cluster="default",
                          insert_quorum="auto")  # fmt: skip
    try:
        await replicas.insert(EVENTS, rows(3), "t-quorum")
        await replicas.insert_from(EVENTS, ["event_id"], "SELECT generateUUIDv7()", "t-quorum-2")
    finally:
        await replicas.close()
    inserted, selected = front.seen[-2:]
    assert inserted.params["insert_quorum"] == "auto"
    assert "insert_quorum = 'auto'" in selected.statement
    await store.insert(EVENTS, rows(3), "t-one-server")
    assert "insert_quorum" not in front.seen[-1].params
    assert await count(front) == 7


async def test_the_look_for_an_earlier_insert_needs_no_session(front, store):
    """A retry looks before its batch's statements: the last session it opened may be held
    by the very insert looked for, or gone with its server for good."""
    store.new_session("beacon.events-0-0-1")
    await store.execute("SELECT 1")  # the batch's session, opened
    front.sessions.clear()  # its server restarted, or another answers at the address
    await store.await_earlier_inserts("beacon.events-0-0-1")
    assert "session_id" not in front.seen[-1].params


async def test_queries_answer_in_the_format_asked(store):
    await store.insert(EVENTS, rows(3), "t-formats")
    sql = f"SELECT campaign, count() AS n FROM {EVENTS} GROUP BY campaign"
    assert await store.query(sql, "TSV") == "spring\t3\n"
    assert await store.query(sql, "CSV") == '"spring",3\n'
    assert orjson.loads(await store.query(sql)) == {"campaign": "spring", "n": 3}
    assert orjson.loads(await store.query(sql, "JSON"))["data"] == [{"campaign": "spring", "n": 3}]


@pytest.mark.parametrize(
    ("sql", "code", "words"),
    [
        ("SELEC 1", "62", "Syntax error"),
        ("SELECT * FROM beacon.nowhere", "60", "UNKNOWN_TABLE"),
    ],
)
async def test_clickhouse_errors_surface_with_code_and_message(store, sql, code, words):
    with pytest.raises(StoreError) as caught:
        await store.query(sql)
    message = str(caught.value)
    assert f"HTTP 500, code {code}:" in message and words in message


async def test_a_row_clickhouse_cannot_parse_fails_the_insert_with_its_message(store):
    with pytest.raises(StoreError, match=r"HTTP 500, code 376: .*Cannot parse uuid"):
        await store.insert(EVENTS, b'{"event_id": "not-a-uuid"}\n', "t-bad")


async def test_wrong_credentials_are_a_store_error(front):
    writer = HttpWriter(front.url, user="beacon", password="wrong")
    try:
        with pytest.raises(StoreError, match=r"HTTP 403, code 516:.*Authentication failed"):
            await writer.execute("SELECT 1")
    finally:
        await writer.close()


async def test_a_failing_server_is_a_store_error_until_it_recovers(front, store):
    front.fail_all = True
    with pytest.raises(StoreError, match="HTTP 503"):
        await store.insert(EVENTS, rows(2), "t-outage")
    front.fail_all = False
    await store.insert(EVENTS, rows(2), "t-outage")  # the pipeline's retry, same token
    assert await count(front) == 2


async def test_an_unreachable_server_is_a_store_error():
    writer = HttpWriter(f"http://127.0.0.1:{free_port()}/")
    try:
        with pytest.raises(StoreError, match="unreachable"):
            await writer.execute("SELECT 1")
    finally:
        await writer.close()


async def test_a_server_that_never_answers_times_out_as_a_store_error():
    release, released = asyncio.Event(), asyncio.Event()

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()  # take the connection, never answer
        writer.close()
        released.set()

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    writer = HttpWriter(f"http://127.0.0.1:{port}/", timeout_s=0.3)
    started = time.monotonic()
    try:
        # Without its own timeout the call would hang: this wait's TimeoutError is no StoreError.
        with pytest.raises(StoreError, match=r"no answer in 0\.3 s.*may still run"):
            await asyncio.wait_for(writer.execute("SELECT 1"), 60)
        print(f"gave up after {time.monotonic() - started:.2f} s (timeout_s=0.3)")
    finally:
        await writer.close()
        release.set()
        await asyncio.wait_for(released.wait(), 5)
        server.close()
        await server.wait_closed()


async def test_a_bad_token_is_refused_before_anything_is_sent(front, store):
    sent = len(front.seen)
    with pytest.raises(ValueError):
        await store.insert(EVENTS, rows(1), "no spaces or 'quotes'")
    assert len(front.seen) == sent


async def test_report_asks_clickhouse_over_http_when_a_url_is_set(front, store, tmp_path):
    await store.insert(EVENTS, rows(4, campaign="spring"), "t-report")
    settings = ConsumerSettings(
        data_dir=tmp_path / "no-store-here",
        clickhouse_url=front.url,
        clickhouse_user="beacon",
        clickhouse_password=PASSWORD,
    )
    # The report is a synchronous CLI path with its own event loop: run it off this one.
    request = Request("events", Window.last_days(1), Filters("shop", None), "day")
    report = await asyncio.to_thread(view_rows, lambda sql: run_query(settings, sql), request)
    assert [(r["campaign"], r["events"], r["recipients"]) for r in report] == [("spring", 4, 4)]
    assert await asyncio.to_thread(run_query, settings, "SELECT 1 AS x", "TSV") == "1\n"
    wrong = ConsumerSettings(data_dir=tmp_path, clickhouse_url=front.url)
    with pytest.raises(StoreError, match="516"):
        await asyncio.to_thread(run_query, wrong, "SELECT 1")


async def test_a_clickhouse_server_gets_the_same_guard_and_profile(tmp_path: Path) -> None:
    async with ClickHouseFront(tmp_path / "ch") as front:
        writer = HttpWriter(front.url)
        await migrate(writer, retention_days=0)
        reader = HttpReader(writer, ReadLimits(timeout_s=30, max_result_bytes=1_000_000))
        try:
            assert await reader.query(f"SELECT count() AS n FROM {EVENTS}") == '{"n":0}\n'
            with pytest.raises(read_guard.Refused, match="table_function"):
                await reader.query("SELECT * FROM file('/etc/hostname', 'LineAsString')")
            read_only = [s for s in front.seen if s.params.get("readonly") == "1"]
            assert len(read_only) == 5  # per read: the reprint, its parse, the read itself
        finally:
            await writer.close()


async def test_settling_and_reads_count_nothing_as_zero_whatever_the_servers_profile(
    tmp_path: Path,
) -> None:
    """A server whose profile sets empty_result_for_aggregation_by_empty_set answers no row for
    an aggregate over no rows: the writer turns it off for its statements, so a day settles and
    an erasure's rebuild of a day left empty runs, and a read of nothing counts 0."""
    empty_set = "empty_result_for_aggregation_by_empty_set"
    async with ClickHouseFront(tmp_path / "ch", profile={empty_set: "1"}) as front:
        nothing = f"SELECT count() FROM {EVENTS}"
        writer = HttpWriter(front.url)
        try:
            await migrate(writer, retention_days=0)
            assert front.run(nothing) == ""  # the server's profile, past the writer
            day = dt.date(2026, 3, 1)
            noon = dt.datetime.combine(day, dt.time(12), dt.UTC).timestamp()
            await writer.insert(EVENTS, rows(3, received_ms=int(noon * 1000)), "t-settle")
            settler = Settler(writer, clock=lambda: noon + 86400, insert_margin_s=-5)
            assert await settler.settle_due() == [day]
            rollup = EVENTS_HOURLY.table
            settled = f"SELECT sum(events_settled) FROM {rollup} WHERE live = 0"
            assert front.run(settled) == "3\n"
            front.run(f"ALTER TABLE {EVENTS} DELETE WHERE 1 SETTINGS mutations_sync = 1")
            await settler.rebuild([day])  # the day's rollups now recomputed from no events
            assert front.run(f"SELECT * FROM {rollup}") == ""
            reader = HttpReader(writer, ReadLimits(timeout_s=30, max_result_bytes=1_000_000))
            assert await reader.query(f"SELECT count() AS n FROM {EVENTS}") == '{"n":0}\n'
            assert front.run(nothing) == ""  # set for the writer's statements alone
        finally:
            await writer.close()


async def test_settling_a_day_has_the_day_timeout_and_a_batch_its_own(tmp_path: Path) -> None:
    """Settling a day reads all of it: past some tens of millions of events a server takes
    longer than a batch's statement may (60 s), and the day was never settled, nor a batch
    that met an erasure (its rebuild) ever stored."""
    async with ClickHouseFront(tmp_path / "ch") as front:
        writer = HttpWriter(front.url, timeout_s=0.5, day_timeout_s=60)
        try:
            await migrate(writer, retention_days=0)
            day = dt.date(2026, 3, 1)
            noon = dt.datetime.combine(day, dt.time(12), dt.UTC).timestamp()
            await writer.insert(EVENTS, rows(3, received_ms=int(noon * 1000)), "t-day")
            slow = threading.Event()
            stage_insert = re.compile(r"INSERT INTO \S+_stage_")  # a day read into a stage
            front.hold = lambda sql: slow if stage_insert.match(sql) else None
            asyncio.get_running_loop().call_later(2.0, slow.set)  # each stage's read: 2 s
            settler = Settler(writer, clock=lambda: noon + 86400, insert_margin_s=-5)
            assert await settler.settle_due() == [day]
            rollup = EVENTS_HOURLY.table
            assert front.run(f"SELECT sum(events_settled) FROM {rollup}") == "3\n"
            deleting = threading.Event()
            front.hold = lambda sql: deleting if sql.startswith("DELETE") else None
            asyncio.get_running_loop().call_later(2.0, deleting.set)  # an erasure's: 2 s
            assert await erasure.erase(writer, "recipient", "rcpt-1") == 1
            assert front.run(f"SELECT {EVENTS_MERGED} FROM {rollup}") == "2\n"  # rebuilt
            # The day's bound goes with the statements over days alone, and a cluster's
            # DELETE (ON CLUSTER) waits for its hosts as long.
            timeouts = {
                s.statement.split()[0] + (" stage" if "_stage_" in s.statement else ""):
                s.params.get("distributed_ddl_task_timeout") for s in front.seen
            }  # fmt: skip
            assert timeouts["DELETE"] == timeouts["INSERT stage"] == "60"
            assert timeouts["SELECT"] is None and timeouts["CREATE"] is None
            batch = threading.Event()
            front.hold = lambda sql: batch if sql.startswith("INSERT") else None
            try:
                with pytest.raises(StoreError, match=r"no answer in 0\.5 s"):
                    await writer.insert(EVENTS, rows(1), "t-batch")
            finally:
                batch.set()
        finally:
            await writer.close()


def test_the_earlier_inserts_count_reads_clickhouses_own_processes_table(front) -> None:
    # On chDB itself, past the front (which lists its own statements as system.processes).
    assert front.run(earlier_inserts_sql("", 0.25, "spool-1")) == "0\n"
    for cluster, batch in (("", None), ("beacon", "spool-1")):
        front.run(f"EXPLAIN AST {earlier_inserts_sql(cluster, 0.25, batch)}")  # parses


async def test_the_query_port_waits_behind_neither_a_days_settling_nor_an_erasure(
    tmp_path: Path, front: ClickHouseFront, writer: HttpWriter
) -> None:
    """A day's settling may take the server up to the day timeout, an erasure's DELETE as
    long: the query port's erasures waited behind the one, and its reads behind both, in the
    one writer's session."""
    await migrate(writer, retention_days=0)  # merges on: an erasure's DELETE waits for its own
    day = dt.date.today() - dt.timedelta(days=2)
    noon_ms = int(dt.datetime.combine(day, dt.time(12), dt.UTC).timestamp() * 1000)
    await writer.insert(EVENTS, rows(3, received_ms=noon_ms), "t-settled-day")
    settling, deleting, held = threading.Event(), threading.Event(), []
    stage_insert = re.compile(r"INSERT INTO \S+_stage_")

    def hold(statement: str) -> threading.Event | None:
        if stage_insert.match(statement) and not held:  # the settling's, not the erasure's
            held.append(statement)
            return settling
        if statement.startswith("DELETE") and "rcpt-2" in statement:
            held.append(statement)
            return deleting
        return None

    front.hold = hold
    port = free_port()
    env = {
        **os.environ,
        "BEACON_DATA_DIR": str(tmp_path / "data"),
        "BEACON_CLICKHOUSE_URL": front.url,
        "BEACON_CLICKHOUSE_USER": "beacon",
        "BEACON_CLICKHOUSE_PASSWORD": PASSWORD,
        "BEACON_STORE_PORT": str(port),
    }
    consumer = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "beacon", "consume", env=env
    )
    try:
        deadline = time.monotonic() + 120
        while not held:  # the consumer's settling reads the day
            assert time.monotonic() < deadline and consumer.returncode is None
            await asyncio.sleep(0.05)
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as client:
            body = {"field": "recipient", "value": "rcpt-1", "by": "test"}
            answer = await client.post(f"{url}/erase", json=body, timeout=60)
            assert answer.status == 200, await answer.text()
            assert (await answer.json())["rows"] == 1
            body = {"field": "recipient", "value": "rcpt-2", "by": "test"}
            erasing = asyncio.create_task(client.post(f"{url}/erase", json=body, timeout=120))
            while len(held) < 2:  # its DELETE runs
                assert time.monotonic() < deadline and not erasing.done()
                await asyncio.sleep(0.05)
            read = {"sql": f"SELECT count() AS n FROM {EVENTS}"}
            answer = await client.post(f"{url}/query", json=read, timeout=60)
            assert answer.status == 200, await answer.text()
            assert await answer.text() == '{"n":2}\n'
            assert front.running and not (settling.is_set() or deleting.is_set())  # both run
            deleting.set()
            assert (await (await erasing).json())["rows"] == 1
    finally:
        settling.set()
        deleting.set()
        if consumer.returncode is None:
            consumer.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(consumer.wait(), 120) == 0


async def test_a_consumer_whose_replicas_cluster_the_server_lacks_stops_at_start(
    tmp_path: Path, front
) -> None:
    # Not at the first retry, in an incident: the retry's wait could not read a thing then.
    front.clusters = {"replicas"}
    settings = ConsumerSettings(
        data_dir=tmp_path / "data",
        clickhouse_url=front.url,
        clickhouse_user="beacon",
        clickhouse_password=PASSWORD,
        clickhouse_replicas_cluster="replica",
        store_port=free_port(),
    )
    with pytest.raises(StoreError, match=r"701.*BEACON_CLICKHOUSE_REPLICAS_CLUSTER"):
        await asyncio.wait_for(consume(settings), 120)
    assert any("clusterAllReplicas('replica'" in seen.statement for seen in front.seen)


@pytest.mark.parametrize("replicas", ["", "replicas"])
async def test_a_retry_waits_for_its_own_batchs_insert_still_running_not_anothers(
    front, store, replicas: str
) -> None:
    # With BEACON_CLICKHOUSE_REPLICAS_CLUSTER, the count reads every replica (the front is the
    # cluster's one), not only the server the load balancer picks for it.
    front.clusters = {"replicas"}
    gate = threading.Event()
    front.hold = lambda statement: gate if statement.startswith("INSERT") else None
    running = HttpWriter(front.url, user="beacon", password=PASSWORD)
    # The wait's bound is the writer's timeout, each request's too: long enough for a loaded
    # machine's answer to the count, short enough for the test.
    waiting = HttpWriter(
        front.url, user="beacon", password=PASSWORD, timeout_s=3.0, replicas_cluster=replicas
    )
    running.new_session("beacon.events-0-0-9")
    insert = asyncio.create_task(running.insert(EVENTS, rows(1), "beacon.events-0-0-9"))
    try:
        deadline = time.monotonic() + 60
        while not front.running:
            assert time.monotonic() < deadline and not insert.done()
            await asyncio.sleep(0.01)
        await waiting.await_earlier_inserts("beacon.events-1-0-9")  # another batch's: no wait
        asked = front.seen[-1]
        assert ("clusterAllReplicas('replicas', system.processes)" in asked.statement) is bool(
            replicas
        )
        assert asked.params.get("skip_unavailable_shards") == ("1" if replicas else None)
        for batch in ("beacon.events-0-0-9", None):  # its own, or any batch's: waits, to a bound
            with pytest.raises(StoreError, match="still runs"):
                await waiting.await_earlier_inserts(batch)
        gate.set()
        await insert
        await waiting.await_earlier_inserts("beacon.events-0-0-9")
        assert await count(front) == 1
    finally:
        gate.set()
        await running.close()
        await waiting.close()
