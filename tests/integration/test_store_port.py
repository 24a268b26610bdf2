"""The store port reads Beacon's tables and nothing else: real chDB behind a loopback server,
hostile statements, cross-site requests, limits, and reads that never hold up the writer."""

from __future__ import annotations

import asyncio
import csv
import io
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from analytics.query_server import create_query_app
from analytics.report import csv_cell, render
from analytics.schema import EVENTS
from analytics.store import read_guard
from analytics.store.readers import ChdbReader, ReadLimits
from tests.support.chdb_events import Store, hour_ago_ms, wire

JSON = {"Content-Type": "application/json"}
SECRET = "the-host-file-secret-7f3a"
# A read that sleeps about 40 s in blocks of 65,536 rows (sleepEachRow caps a block at 3 s),
# over a table of Beacon's database that this module makes for it.
ROWS = "beacon.test_rows"
LONG_READ = f"SELECT sum(sleepEachRow(0.00004)) FROM {ROWS}"
RUNNING_READS = "SELECT count() FROM system.processes WHERE startsWith(query, '/* beacon-read')"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    s = Store(tmp_path_factory.mktemp("store-port") / "clickhouse")
    s.add([wire("open", hour_ago_ms(), site="mail", recipient="alice")])
    s.writer.query_sync(
        f"CREATE TABLE {ROWS} ENGINE = MergeTree ORDER BY n AS SELECT number AS n FROM numbers(1e6)"
    )
    yield s
    s.close()


async def serve(store: Store, reader: ChdbReader, tmp_path: Path) -> TestClient:
    app = create_query_app(store.writer, reader, CollectorRegistry(), tmp_path / "audit.log")  # type: ignore[arg-type]
    # As consumers/service.py runs it: a handler whose client left is cancelled.
    client = TestClient(TestServer(app, host="127.0.0.1", handler_cancellation=True))
    await client.start_server()
    return client


@pytest.fixture
async def port(store: Store, tmp_path: Path) -> AsyncIterator[TestClient]:
    client = await serve(store, store.reader(), tmp_path)
    yield client
    await client.close()


async def ask(
    client: TestClient, sql: str, headers: dict[str, str] = JSON
) -> aiohttp.ClientResponse:
    return await client.post("/query", data=orjson.dumps({"sql": sql}), headers=headers)


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("SELECT * FROM file('{secret}', 'LineAsString')", "table_function"),
        ("SELECT file('{secret}')", "host_function"),
        ("select * from url('http://127.0.0.1:9/', 'LineAsString')", "table_function"),
        ("SELECT * FROM numbers(3)", "table_function"),
        ("SELECT 1 INTO OUTFILE '{out}'", "output_clause"),
        ("SELECT 1 /* a comment */ INTO/**/OUTFILE '{out}' FORMAT TSV", "output_clause"),
        ("SELECT 1 FORMAT JSON", "output_clause"),
        ("SELECT 1 SETTINGS max_execution_time = 0", None),
        ("SELECT * FROM (SELECT 1 SETTINGS readonly = 0)", None),
        ("SELECT count() FROM system.tables", "foreign_table"),
        ("SELECT count() FROM `system`.`processes`", "foreign_table"),
        ("INSERT INTO beacon.events (site) VALUES ('forged')", None),
        ("DELETE FROM beacon.events WHERE 1", None),
        ("SHOW TABLES FROM system", "not_a_select"),
    ],
)
async def test_a_statement_that_leaves_beacons_tables_is_refused(
    port: TestClient, store: Store, tmp_path: Path, sql: str, reason: str | None
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    out = tmp_path / "written-by-a-query.txt"
    resp = await ask(port, sql.format(secret=secret, out=out))
    body = await resp.text()
    assert resp.status == 403, body
    answer = orjson.loads(body)
    assert answer["error"] in ("read_only", "query_not_read_only")
    if reason:
        assert reason in answer["detail"]
    assert SECRET not in body
    assert not out.exists()
    assert store.query(f"SELECT count() AS n FROM {EVENTS} WHERE site = 'forged'") == '{"n":0}\n'


@pytest.mark.parametrize(
    "sql",
    [
        f"SELECT count() FROM {EVENTS}",
        f"WITH o AS (SELECT * FROM {EVENTS} WHERE event_type = 'open') SELECT count() FROM o",
        f"SELECT 1 FROM {EVENTS} UNION ALL SELECT 2 FROM {EVENTS}",
        f"SELECT count() FROM {EVENTS} WHERE site IN (SELECT site FROM {EVENTS})",
    ],
)
async def test_reads_of_beacons_tables_are_answered(port: TestClient, sql: str) -> None:
    resp = await ask(port, sql)
    assert resp.status == 200, await resp.text()


@pytest.mark.parametrize(
    "tail", [f"DROP TABLE {EVENTS}", "SELECT 'x' INTO OUTFILE '{out}'", "SELECT file('{secret}')"]
)
async def test_several_statements_in_one_request_run_none(
    port: TestClient, store: Store, tmp_path: Path, tail: str
) -> None:
    """chDB runs every statement of a multi-statement query: the guard's own steps too, if
    they were handed the text as a statement."""
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    out = tmp_path / "written-by-a-query.txt"
    sql = f"SELECT count() FROM {EVENTS}; " + tail.format(out=out, secret=secret)
    resp = await ask(port, sql)
    body = await resp.text()
    assert resp.status == 400, body
    assert orjson.loads(body)["error"] == "query_failed" and "Multi-statements" in body
    assert SECRET not in body and not out.exists()
    assert store.query(f"EXISTS TABLE {EVENTS}") == '{"result":1}\n'


async def test_quotes_backslashes_tabs_and_newlines_keep_their_meaning(port: TestClient) -> None:
    sql = f"SELECT\t'it\\'s', 'a\\\\b',\n'c''d' AS x\r\nFROM {EVENTS} LIMIT 1"
    resp = await ask(port, sql)
    assert resp.status == 200, await resp.text()
    assert list(orjson.loads(await resp.text()).values()) == ["it's", "a\\b", "c'd"]


@pytest.mark.parametrize(
    ("headers", "status", "error"),
    [
        # A form a web page posts without a preflight: text/plain, another site's Origin.
        ({"Content-Type": "text/plain", "Origin": "http://evil.example"}, 403, "cross_origin"),
        ({"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
        ({**JSON, "Origin": "http://evil.example"}, 403, "cross_origin"),
        ({**JSON, "Origin": "null"}, 403, "cross_origin"),
        ({**JSON, "Sec-Fetch-Site": "cross-site"}, 403, "cross_origin"),
        ({**JSON, "Sec-Fetch-Site": "same-site"}, 403, "cross_origin"),
    ],
)
async def test_cross_site_and_simple_requests_are_refused(
    port: TestClient, headers: dict[str, str], status: int, error: str
) -> None:
    body = orjson.dumps({"sql": f"SELECT count() FROM {EVENTS}"})
    resp = await port.post("/query", data=body, headers=headers)
    assert resp.status == status
    assert (await resp.json())["error"] == error


async def test_a_loopback_origin_and_no_origin_are_served(port: TestClient) -> None:
    origin = str(port.make_url("/")).rstrip("/")
    sql = f"SELECT count() FROM {EVENTS}"
    first = await ask(port, sql, {**JSON, "Origin": origin})
    assert first.status == 200, await first.text()
    assert (await ask(port, sql, {**JSON, "Sec-Fetch-Site": "same-origin"})).status == 200


async def test_a_read_over_its_time_or_size_limit_is_stopped_and_counted(
    store: Store, tmp_path: Path
) -> None:
    reader = ChdbReader(store.writer.path, ReadLimits(timeout_s=1, max_result_bytes=100_000))
    client = await serve(store, reader, tmp_path)
    try:
        slow = await ask(client, LONG_READ)
        assert slow.status == 504
        answer = await slow.json()
        assert (answer["error"], answer["limit"]) == (
            "query_timeout",
            "BEACON_STORE_QUERY_TIMEOUT_S",
        )
        big = await ask(client, f"SELECT n FROM {ROWS}")
        assert big.status == 413
        answer = await big.json()
        assert (answer["error"], answer["limit"]) == (
            "query_too_large",
            "BEACON_STORE_QUERY_MAX_RESULT_BYTES",
        )
        page = await (await client.get("/metrics")).text()
        assert 'beacon_store_queries_total{outcome="timeout"} 1.0' in page
        assert 'beacon_store_queries_total{outcome="too_large"} 1.0' in page
    finally:
        await client.close()
        await reader.close()


async def read_under(
    store: Store, limits: ReadLimits, sql: str, tmp_path: Path
) -> tuple[int, str, str]:
    """One read through a store port whose reads have `limits`: status, answer, metrics page."""
    reader = ChdbReader(store.writer.path, limits)
    client = await serve(store, reader, tmp_path)
    try:
        resp = await ask(client, sql)
        answer = await resp.text()
        return resp.status, answer, await (await client.get("/metrics")).text()
    finally:
        await client.close()
        await reader.close()


async def test_a_read_over_its_memory_limit_is_stopped_and_counted(
    store: Store, tmp_path: Path
) -> None:
    # The set of a million distinct numbers takes tens of MiB: past 8 MiB, under 1 GiB.
    sql = f"SELECT uniqExact(n) FROM {ROWS}"
    counted = 'beacon_store_queries_total{outcome="memory_limit"} 1.0'
    small = ReadLimits(timeout_s=30, max_result_bytes=100_000, max_memory_bytes=8 << 20)
    status, answer, page = await read_under(store, small, sql, tmp_path)
    body = orjson.loads(answer)
    assert (status, body["error"]) == (413, "query_memory_limit")
    assert "MEMORY_LIMIT_EXCEEDED" in body["detail"]
    assert body["limit"] == "BEACON_STORE_QUERY_MAX_MEMORY_BYTES"
    assert counted in page
    default = ReadLimits(timeout_s=30, max_result_bytes=100_000)
    status, answer, page = await read_under(store, default, sql, tmp_path)
    assert (status, answer.strip()) == (200, '{"uniqExact(n)":1000000}')
    assert counted not in page


async def until(condition, deadline_s: float = 60.0) -> bool:  # type: ignore[no-untyped-def]
    """Poll `condition` (a blocking call, run in a thread) until it holds or time runs out."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if await asyncio.to_thread(condition):
            return True
        await asyncio.sleep(0.1)
    return bool(await asyncio.to_thread(condition))


def running_reads(store: Store) -> int:
    return int(store.writer.query_sync(RUNNING_READS, "TSV"))


async def test_a_long_read_holds_up_no_insert_and_stops_when_its_client_leaves(
    store: Store, port: TestClient
) -> None:
    reading = asyncio.create_task(ask(port, LONG_READ))
    assert await until(lambda: running_reads(store) == 1), "the read never started"
    # The writer's session inserts and erases while the read runs.
    store.add([wire("click", hour_ago_ms(), site="mail", recipient="bob")])
    erase = orjson.dumps({"field": "recipient", "value": "bob", "by": "test"})
    erased = await port.post("/erase", data=erase, headers=JSON)
    assert erased.status == 200 and await erased.json() == {"rows": 1}
    assert running_reads(store) == 1 and not reading.done()
    # The client goes away: the read is stopped, not run to its end.
    reading.cancel()
    assert await until(lambda: running_reads(store) == 0), "the read ran on after its client"
    page = await (await port.get("/metrics")).text()
    assert 'beacon_store_queries_total{outcome="client_gone"} 1.0' in page


class Broken:
    """A reader with a fault of its own (not a store's refusal): the counting is tested."""

    async def query(self, sql: str, fmt: str = "JSONEachRow") -> str:
        raise RuntimeError("a fault of the reader")


async def test_a_fault_of_the_port_is_a_500_counted_as_error(store: Store, tmp_path: Path) -> None:
    client = await serve(store, Broken(), tmp_path)  # type: ignore[arg-type]
    try:
        r = await ask(client, "SELECT 1")
        assert r.status == 500
        page = await (await client.get("/metrics")).text()
        assert 'beacon_store_queries_total{outcome="error"} 1.0' in page
        for outcome in ("client_gone", "failed"):
            assert f'beacon_store_queries_total{{outcome="{outcome}"}} 0.0' in page
    finally:
        await client.close()


async def test_a_read_past_the_concurrency_limit_is_refused_as_busy(
    store: Store, tmp_path: Path
) -> None:
    reader = ChdbReader(store.writer.path, ReadLimits(30, 1_000_000, concurrency=1))
    client = await serve(store, reader, tmp_path)
    try:
        reading = asyncio.create_task(ask(client, LONG_READ))
        assert await until(lambda: running_reads(store) == 1), "the read never started"
        busy = await ask(client, f"SELECT count() FROM {EVENTS}")
        assert busy.status == 503 and busy.headers["Retry-After"] == "1"
        assert (await busy.json())["error"] == "busy"
        reading.cancel()
        assert await until(lambda: running_reads(store) == 0)
        # The session is back: the next read is answered.
        deadline = time.monotonic() + 60
        while (answer := await ask(client, f"SELECT count() FROM {EVENTS}")).status == 503:
            assert time.monotonic() < deadline, "the session never came back"
            await asyncio.sleep(0.1)
        assert answer.status == 200
    finally:
        await client.close()
        await reader.close()


def test_the_guard_reads_clickhouses_own_parse() -> None:
    """Known trees, as `EXPLAIN AST` prints them (chDB 4.4)."""
    select = " SelectWithUnionQuery (children 1)\n  ExpressionList (children 1)\n"
    read_guard.check(select + "   SelectQuery (children 1)\n")
    outfile = " SelectWithUnionQuery (children 2)\n  ExpressionList (children 1)\n  Literal 'x'\n"
    with pytest.raises(read_guard.Refused, match="output_clause"):
        read_guard.check(outfile)
    with pytest.raises(read_guard.Refused, match="not_a_select"):
        read_guard.check(" ShowTables (children 1)\n  Identifier system\n")
    with pytest.raises(read_guard.Refused, match="not_a_select"):
        read_guard.check("")


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        ('=HYPERLINK("http://evil.example","x")', '\'=HYPERLINK("http://evil.example","x")'),
        ("+1+cmd|' /C calc'!A0", "'+1+cmd|' /C calc'!A0"),
        ("-2+3", "'-2+3"),
        ("@SUM(1)", "'@SUM(1)"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("spring-sale", "spring-sale"),
        (-3, "-3"),
        (0.25, "0.25"),
        ({"EUR": -5.0}, "'-5.0 EUR"),
    ],
)
def test_csv_cells_that_a_spreadsheet_would_run_are_neutralised(value: object, cell: str) -> None:
    assert csv_cell(value) == cell
    text = render([{"campaign": value}], ["campaign"], "csv")
    assert list(csv.reader(io.StringIO(text, newline=""))) == [["campaign"], [cell]]
