"""The spool consumer against real chDB: in-process pipeline runs and a crash-tested process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from analytics import erasure
from analytics.migrations import migrate
from analytics.schema import EVENTS
from analytics.store import StoreError
from analytics.store.chdb import ChdbWriter
from collector.metrics import CollectorMetrics
from collector.sinks.spool import SpoolSink
from consumers import pipeline as pipeline_module
from consumers.enrich import Enricher
from consumers.metrics import ConsumerMetrics
from consumers.pipeline import Pipeline
from consumers.settings import ConsumerSettings
from consumers.sources.protocol import Batch
from consumers.sources.spool import SpoolSource, token_for
from consumers.sources.spool_feed import SpoolFeed, merge
from contract.segments import closed_segments
from tests.support.chdb_events import mail_opens
from tests.support.helpers import free_port, metric_value, store_port_query

REPO = Path(__file__).resolve().parents[2]
WAIT_S = 90.0  # generous: the machine is small and shared


# -- events and the spool ---------------------------------------------------------------------


async def spool_events(spool_dir: Path, lines: list[bytes], segment_max_bytes: int) -> int:
    """Write lines the way the collector does (batches of 50); returns the closed segments."""
    sink = SpoolSink(
        spool_dir,
        CollectorMetrics(CollectorRegistry()),
        segment_max_bytes=segment_max_bytes,
        segment_max_age_ms=3_600_000,
        segment_idle_ms=3_600_000,
        max_bytes=1 << 30,
    )
    for i in range(0, len(lines), 50):
        await sink.send(lines[i : i + 50])
    await sink.close()
    return len(closed_segments(spool_dir))


def encode(events: list[dict[str, Any]]) -> list[bytes]:
    return [orjson.dumps(e) for e in events]


def pending_in_checkpoint(config: ConsumerSettings) -> list:
    return orjson.loads(config.checkpoint_path.read_bytes())["pending"]


# -- the in-process store and pipeline ---------------------------------------------------------


@pytest.fixture
def config(tmp_path: Path) -> ConsumerSettings:
    """Small batches so every test inserts several; a short poll so idle waits are short."""
    return ConsumerSettings(
        data_dir=tmp_path, batch_max_rows=40, batch_max_age_ms=50, poll_interval_ms=10
    )


@pytest.fixture
async def store(config: ConsumerSettings) -> AsyncIterator[ChdbWriter]:
    writer = ChdbWriter(config.store_dir)
    await migrate(writer, config.retention_days)
    # ReplacingMergeTree merges would hide a doubled insert from count(); without merges
    # only the insert dedup token can keep count() at N.
    await writer.execute(f"SYSTEM STOP MERGES {EVENTS}")
    yield writer
    await writer.close()


async def count(writer: ChdbWriter, expr: str = "count()") -> int:
    return int(await writer.query(f"SELECT {expr} FROM {EVENTS}", "TSV"))


async def run_until_stored(pipeline: Pipeline, writer: ChdbWriter, rows: int) -> None:
    """Run the consume loop until `rows` rows are in, then stop it (it drains) and wait."""
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(stop))
    deadline = time.monotonic() + WAIT_S
    while await count(writer) < rows:
        if task.done():
            task.result()  # raises what broke the loop
            pytest.fail("the pipeline returned before the rows were in")
        assert time.monotonic() < deadline, f"only {await count(writer)} of {rows} rows in"
        await asyncio.sleep(0.02)
    stop.set()
    await asyncio.wait_for(task, WAIT_S)


def new_pipeline(config: ConsumerSettings, writer: ChdbWriter) -> Pipeline:
    source = SpoolSource(config.spool_dir, config.checkpoint_path)
    metrics = ConsumerMetrics(CollectorRegistry())
    return Pipeline(SpoolFeed(source, metrics, config), writer, metrics, config)


async def test_pipeline_moves_every_event_into_the_store(config, store):
    events = mail_opens(250)
    for i, event in enumerate(events):  # some invalid traffic (analytics/ivt.py), counted
        if i % 5 == 0:
            event["network"] = "data_center"
        elif i % 7 == 0:
            event["purpose"] = "prefetch"
    assert await spool_events(config.spool_dir, encode(events), 16 * 1024) >= 3
    pipeline = new_pipeline(config, store)
    await run_until_stored(pipeline, store, len(events))

    assert await count(store) == len(events)
    answer = await store.query(
        "SELECT toString(event_id) AS event_id, toUnixTimestamp64Milli(received_at) AS ms, "
        "event_type, site, campaign, recipient, url_host, url_query, props, visitor_id, dnt "
        f"FROM {EVENTS}"
    )
    stored = [orjson.loads(line) for line in answer.splitlines()]
    by_id = {row["event_id"]: row for row in stored}
    assert by_id.keys() == {event["event_id"] for event in events}
    for event in events:
        row = by_id[event["event_id"]]
        assert int(row["ms"]) == event["received_at"]  # to the millisecond
        assert row["props"] == event["props"]
        assert int(row["visitor_id"]) == event["visitor_id"]
        for name in ("event_type", "site", "campaign", "recipient", "url_host", "url_query", "dnt"):
            assert row[name] == event[name], name

    metrics = pipeline.metrics
    assert metric_value(metrics, "beacon_consumer_rows_inserted_total") == len(events)
    assert metric_value(metrics, "beacon_consumer_inserts_total", outcome="ok") >= 250 / 40
    invalid = orjson.loads(await store.query(
        f"SELECT groupArray((ivt, toUInt32(n))) FROM (SELECT ivt, count() AS n FROM {EVENTS} "
        "GROUP BY ivt)", "JSONCompactEachRow"))[0]  # fmt: skip
    assert dict(invalid) == {"": 172, "data_center": 50, "prefetch": 28}
    for reason, n in invalid:
        if reason:
            assert metric_value(metrics, "beacon_consumer_rows_invalid_total", reason=reason) == n
    assert metric_value(metrics, "beacon_consumer_rows_invalid_total", reason="crawler") == 0
    assert closed_segments(config.spool_dir) == []  # inserted segments are freed
    assert pending_in_checkpoint(config) == []


async def test_replay_after_a_crash_between_insert_and_commit_stores_nothing_twice(config, store):
    events = mail_opens(120)
    await spool_events(config.spool_dir, encode(events), 8 * 1024)

    # A consumer that inserts its batch and dies before committing it.
    crashed = SpoolSource(config.spool_dir, config.checkpoint_path)
    chunks, _, ranges = crashed.read(50)
    lines = [line for chunk in chunks for line in chunk.split(b"\n")]
    ranges = merge(ranges)
    crashed.begin(ranges)
    enricher = Enricher()
    body = b"".join(enricher.to_row(line) + b"\n" for line in lines)
    await store.insert(EVENTS, body, token_for(ranges))
    del crashed
    assert await count(store) == 50

    pipeline = new_pipeline(config, store)
    assert pipeline.feed.source.pending == ranges
    await run_until_stored(pipeline, store, len(events))

    assert metric_value(pipeline.metrics, "beacon_consumer_replayed_batches_total") == 1
    # No FINAL and no merges: the replayed batch was dropped by its token, not merged away.
    assert await count(store) == len(events)
    assert await count(store, "uniqExact(event_id)") == len(events)
    assert pending_in_checkpoint(config) == []
    assert closed_segments(config.spool_dir) == []


class ErasedOnTheWay:
    """The store, with a person erased just before the first batch's insert lands, and the
    first DELETE of the batch's own check failing."""

    def __init__(self, writer: ChdbWriter, recipient: str) -> None:
        self.writer, self.recipient = writer, recipient
        self.erased = self.failed = False

    async def insert_from(self, *args: Any) -> None:
        if not self.erased:
            self.erased = True
            await erasure.erase(self.writer, "recipient", self.recipient)
        await self.writer.insert_from(*args)

    async def execute(self, sql: str) -> None:
        if sql.startswith("DELETE") and not self.failed:
            self.failed = True
            raise StoreError("the store failed the DELETE")
        await self.writer.execute(sql)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.writer, name)


async def test_a_person_erased_while_their_batch_is_on_its_way_is_deleted_before_its_ack(
    config, store
):
    events = mail_opens(120)
    await spool_events(config.spool_dir, encode(events), 8 * 1024)
    await store.execute(f"SYSTEM START MERGES {EVENTS}")  # a DELETE waits for its mutation
    racing = ErasedOnTheWay(store, "rcpt-3")
    pipeline = new_pipeline(config, racing)  # type: ignore[arg-type]
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(stop))
    deadline = time.monotonic() + WAIT_S
    while closed_segments(config.spool_dir) or await count(store) != len(events) - 1:
        assert not task.done() and time.monotonic() < deadline, await count(store)
        await asyncio.sleep(0.02)
    stop.set()
    await asyncio.wait_for(task, WAIT_S)
    assert racing.failed  # the first try failed, the batch waited, its retry deleted
    assert await count(store, "countIf(recipient = 'rcpt-3')") == 0
    assert metric_value(pipeline.metrics, "beacon_consumer_rows_erased_total") == 1
    # Counted as its own step (the insert went through), which the insert-errors alert reads.
    assert metric_value(pipeline.metrics, "beacon_consumer_retries_total", step="erase") == 1
    assert metric_value(pipeline.metrics, "beacon_consumer_retries_total", step="insert") == 0
    assert metric_value(pipeline.metrics, "beacon_consumer_inserts_total", outcome="error") == 0
    assert pending_in_checkpoint(config) == []


async def test_a_stop_reads_the_spool_for_a_bounded_time_and_the_next_start_takes_the_rest(
    config, store, monkeypatch
):
    """`beacon run` kills a consumer still draining after 60 s: a stop reads on for at most
    FINAL_READ_S (here none at all), the rest stays on disk for the next start."""
    events = mail_opens(120)
    await spool_events(config.spool_dir, encode(events), 8 * 1024)
    monkeypatch.setattr(pipeline_module, "FINAL_READ_S", 0.0)
    stop = asyncio.Event()
    stop.set()
    await asyncio.wait_for(new_pipeline(config, store).run(stop), WAIT_S)
    assert await count(store) == 0
    assert closed_segments(config.spool_dir)

    monkeypatch.undo()
    await run_until_stored(new_pipeline(config, store), store, len(events))
    assert await count(store, "uniqExact(event_id)") == await count(store) == len(events)
    assert closed_segments(config.spool_dir) == []


def test_a_batch_that_fails_for_hours_waits_its_bound_and_goes_on() -> None:
    batch = Batch([], "spool-x", replay=False)
    delays_s = [batch.failed(now=0.0, retry_max_s=30.0) for _ in range(2000)]  # 2.0**1024 overflows
    assert delays_s[:3] == [0.1, 0.2, 0.4] and delays_s[-1] == 30.0


class FailsOnceAndLooks:
    """The store, whose first insert fails (a timeout: it may land all the same), and which
    notes each look for an earlier insert still running, and whether the feed's insert lock
    (the one a Kafka revocation waits for) was held meanwhile."""

    def __init__(self, writer: ChdbWriter) -> None:
        self.writer, self.failed = writer, False
        self.looks: list[bool] = []
        self.feed: SpoolFeed | None = None

    async def insert_from(self, *args: Any) -> None:
        if not self.failed:
            self.failed = True
            raise StoreError("timed out")
        await self.writer.insert_from(*args)

    async def await_earlier_inserts(self, batch: str | None = None) -> None:
        assert self.feed is not None
        self.looks.append(self.feed.inserting.locked())
        await self.writer.await_earlier_inserts(batch)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.writer, name)


async def stored_through(looking: FailsOnceAndLooks, config, store) -> ConsumerMetrics:  # type: ignore[no-untyped-def]
    """30 mail opens spooled and stored by a pipeline through `looking`; its metrics."""
    events = mail_opens(30)
    await spool_events(config.spool_dir, encode(events), 1 << 20)
    source = SpoolSource(config.spool_dir, config.checkpoint_path)
    metrics = ConsumerMetrics(CollectorRegistry())
    looking.feed = SpoolFeed(source, metrics, config)
    pipeline = Pipeline(looking.feed, looking, metrics, config)  # type: ignore[arg-type]
    await run_until_stored(pipeline, store, len(events))
    return metrics


async def test_a_retry_waits_for_an_earlier_insert_outside_the_lock_a_revocation_waits_for(
    config, store
):
    """The wait can take the writer's timeout (60 s on a server), past a group's rebalance
    timeout: waited outside the lock, and not again under it (another member's insert running
    then is no earlier attempt of this batch)."""
    looking = FailsOnceAndLooks(store)
    await stored_through(looking, config, store)
    assert looking.failed and looking.looks == [False]


class FailsOnceAndCannotLook(FailsOnceAndLooks):
    """As FailsOnceAndLooks, but its first look for an earlier insert fails too."""

    async def await_earlier_inserts(self, batch: str | None = None) -> None:
        if not self.looks:
            self.looks.append(False)
            raise StoreError("no answer in 60 s")
        await super().await_earlier_inserts(batch)


async def test_a_wait_for_an_earlier_insert_that_fails_is_its_own_step_not_an_insert_error(
    config, store
):
    """It was counted and logged as a failed insert, though none was tried."""
    metrics = await stored_through(FailsOnceAndCannotLook(store), config, store)
    assert metric_value(metrics, "beacon_consumer_retries_total", step="wait") == 1
    assert metric_value(metrics, "beacon_consumer_retries_total", step="insert") == 1
    assert metric_value(metrics, "beacon_consumer_inserts_total", outcome="error") == 1


async def test_malformed_lines_are_counted_and_skipped(config, store):
    good = encode(mail_opens(30))
    bad = [b'{"event_id": "0190', b"not json at all", b"\xff\xfe"]
    lines = good[:10] + bad[:2] + good[10:25] + bad[2:] + good[25:]
    await spool_events(config.spool_dir, lines, 1024)

    pipeline = new_pipeline(config, store)
    await run_until_stored(pipeline, store, len(good))

    assert await count(store) == len(good)
    metrics = pipeline.metrics
    assert (
        metric_value(metrics, "beacon_consumer_rows_rejected_total", reason="malformed_json") == 3
    )
    assert metric_value(metrics, "beacon_consumer_rows_inserted_total") == len(good)
    # A rejected line does not hold the spool back: its segment is done and deleted.
    assert closed_segments(config.spool_dir) == []
    assert pending_in_checkpoint(config) == []


# -- the consumer process, killed and restarted ------------------------------------------------

# Run in a child so no chDB session stays open in the test process: create the schema as the
# consumer would, then turn merges off for good (`SYSTEM STOP MERGES` does not outlive the
# process). Merges of the ReplacingMergeTree would otherwise hide a doubled insert.
PREPARE_STORE = """
import asyncio, sys
from pathlib import Path
from analytics.schema import EVENTS
from analytics.store import StoreError
from analytics import erasure
from analytics.migrations import migrate
from consumers.settings import ConsumerSettings
from analytics.store.chdb import ChdbWriter

async def main():
    writer = ChdbWriter(Path(sys.argv[1]))
    await migrate(writer, ConsumerSettings().retention_days)
    await writer.execute(
        f"ALTER TABLE {EVENTS} MODIFY SETTING max_bytes_to_merge_at_max_space_in_pool = 1, "
        "max_bytes_to_merge_at_min_space_in_pool = 1"
    )
    await writer.close()

asyncio.run(main())
"""


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Every child a test starts; killed in teardown whatever happened in the test."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


def store_query(port: int, sql: str) -> str | None:
    """Ask the consumer's query port; None while nothing listens there."""
    try:
        return store_port_query(port, sql)
    except urllib.error.HTTPError:
        raise  # the store answered with an error: that is a failure, not "not up yet"
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def wait_for(what: str, check: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path):
    deadline = time.monotonic() + WAIT_S
    while not check():
        if proc.poll() is not None:
            pytest.fail(f"consumer exited ({proc.returncode}) waiting for {what}:\n{tail(log)}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}:\n{tail(log)}")
        time.sleep(0.01)


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


@pytest.mark.timeout(600)
def test_consumer_killed_mid_way_loses_nothing_and_doubles_nothing(tmp_path, processes):
    total = 5000
    config = ConsumerSettings(data_dir=tmp_path)
    segments = asyncio.run(spool_events(config.spool_dir, encode(mail_opens(total)), 256 << 10))
    assert segments >= 5
    subprocess.run(
        [sys.executable, "-c", PREPARE_STORE, str(config.store_dir)],
        cwd=REPO,
        check=True,
        timeout=WAIT_S,
    )
    port = free_port()
    env = {
        **os.environ,
        "BEACON_DATA_DIR": str(tmp_path),
        "BEACON_STORE_PORT": str(port),
        "BEACON_BATCH_MAX_ROWS": "20",  # many small inserts: many places to be killed in
        "BEACON_BATCH_MAX_AGE_MS": "50",
        "BEACON_LOG_LEVEL": "WARNING",
    }
    log = tmp_path / "consumer.log"

    def start() -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "beacon", "consume"],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        processes.append(proc)
        return proc

    def stored(expr: str = "count()") -> int:
        answer = store_query(port, f"SELECT {expr} FROM beacon.events")
        return -1 if answer is None else int(answer)

    def wait_for_rows(proc: subprocess.Popen[bytes], at_least: int) -> int:
        """Poll the store until it holds `at_least` rows; returns the count it saw."""
        seen = [-1]

        def enough() -> bool:
            seen[0] = stored()
            return seen[0] >= at_least

        wait_for(f"{at_least} rows", enough, proc, log)
        return seen[0]

    inserted = 0
    for pause_s in (0.002, 0.007, 0.013):
        proc = start()
        # Kill it once this life has inserted a good share, long before the end. The pause
        # moves the kill off the moment the count query returns (when the consumer mostly sits
        # between batches) into an insert, so the restart usually has a batch to replay.
        inserted = wait_for_rows(proc, inserted + total // 8)
        time.sleep(pause_s)
        proc.send_signal(signal.SIGKILL)
        proc.wait(WAIT_S)
        assert inserted < total  # some, not all: the kill landed mid-way

    proc = start()

    def drained() -> bool:
        # Everything inserted and committed: no segment left, no batch in flight.
        return not closed_segments(config.spool_dir) and pending_in_checkpoint(config) == []

    wait_for("the spool to drain", drained, proc, log)
    # No FINAL and no merges: a batch inserted twice would show here.
    assert stored("count()") == total
    assert stored("uniqExact(event_id)") == total

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(WAIT_S) == 0, tail(log)


def test_a_store_that_cannot_be_reached_at_start_is_one_line_and_exit_1(tmp_path: Path) -> None:
    """`beacon consume` with a ClickHouse URL where nothing listens: what a store error at
    start says, in one line, as `beacon migrate` does; no traceback."""
    env = {
        **os.environ,
        "BEACON_DATA_DIR": str(tmp_path),
        "BEACON_CLICKHOUSE_URL": f"http://127.0.0.1:{free_port()}",
        "BEACON_LOG_LEVEL": "WARNING",
    }
    done = subprocess.run(
        [sys.executable, "-m", "beacon", "consume"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=WAIT_S, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith("beacon consume: ClickHouse at http://127.0.0.1:")
    assert "unreachable" in line


async def test_a_segment_that_cannot_be_read_holds_back_none_after_it(config, store, caplog):
    events = mail_opens(120)
    await spool_events(config.spool_dir, encode(events), 8 * 1024)
    # First by name, and open() refuses it (EISDIR), as a bad block or a wrong mode would.
    (config.spool_dir / "0000000000000-1--00000000.ndjson").mkdir()
    await run_until_stored(new_pipeline(config, store), store, len(events))
    assert await count(store) == len(events)
    assert "cannot read spool segment 0000000000000-1--00000000.ndjson" in caplog.text


async def died_with_a_batch_of_two_segments(config: ConsumerSettings, events: list) -> list:
    """`events` spooled in segments of 50, and the ranges of a batch of 80 of them recorded in
    the checkpoint as pending, as a consumer that died before its insert leaves them."""
    await spool_events(config.spool_dir, encode(events), 8 * 1024)
    crashed = SpoolSource(config.spool_dir, config.checkpoint_path)
    _, _, ranges = crashed.read(80)
    ranges = merge(ranges)
    assert len(ranges) == 2
    crashed.begin(ranges)
    return ranges


async def test_a_pending_batch_whose_segment_cannot_be_read_replays_the_rest_then_reads_it(
    config, store, caplog
):
    """A consumer died with a batch of two segments pending, and the disk does not give one of
    them back at the next start (a bad block, EACCES): the rest of the batch is replayed and
    the consumer goes on, and that segment's lines are read once the disk gives them. The
    start stopped there before, and every start after it."""
    events = mail_opens(120)
    ranges = await died_with_a_batch_of_two_segments(config, events)
    segment = config.spool_dir / ranges[0].segment
    aside = segment.rename(config.spool_dir / "aside")  # no segment's name: not listed
    segment.mkdir()  # open() refuses it (EISDIR), as a bad block or a wrong mode would
    unread = aside.read_bytes().count(b"\n")
    await run_until_stored(new_pipeline(config, store), store, len(events) - unread)
    assert f"cannot read spool segment {segment.name} of the pending batch" in caplog.text
    assert pending_in_checkpoint(config) == []
    segment.rmdir()
    aside.rename(segment)  # the disk gives it back
    await run_until_stored(new_pipeline(config, store), store, len(events))
    assert await count(store) == len(events)
    assert closed_segments(config.spool_dir) == []


def immutable(path: Path, on: bool) -> None:
    """chattr: a file no one may delete, root either (ext4), as a volume gone read-only."""
    subprocess.run(["chattr", "+i" if on else "-i", str(path)], check=True)


async def test_a_segment_that_cannot_be_deleted_holds_back_nothing(config, store, caplog):
    """A segment read to its end that will not go (an immutable file here; a volume gone
    read-only, EIO): the consumer goes on past it, starts again past it without reading it
    again, and deletes it once it can. It stopped at that commit before, and at every start
    after it, with the spool behind it unread."""
    events = mail_opens(120)
    await spool_events(config.spool_dir, encode(events), 8 * 1024)
    first = closed_segments(config.spool_dir)[0]
    immutable(first, True)
    try:
        pipeline = new_pipeline(config, store)
        await run_until_stored(pipeline, store, len(events))
        assert f"cannot delete spool segment {first.name}" in caplog.text
        assert closed_segments(config.spool_dir) == [first]
        assert isinstance(pipeline.feed, SpoolFeed)
        assert pipeline.feed.source.backlog_segments() == 0  # read: no lag to page on
        more = mail_opens(50, start=1000)
        await spool_events(config.spool_dir, encode(more), 8 * 1024)
        await run_until_stored(new_pipeline(config, store), store, len(events) + len(more))
        assert await count(store) == len(events) + len(more)  # none of it read again
    finally:
        immutable(first, False)
    last = mail_opens(10, start=2000)
    await spool_events(config.spool_dir, encode(last), 8 * 1024)
    await run_until_stored(new_pipeline(config, store), store, len(events) + len(more) + 10)
    assert await count(store) == len(events) + len(more) + len(last)
    assert closed_segments(config.spool_dir) == []


async def test_a_pending_batch_whose_segment_is_gone_replays_the_rest_and_goes_on(config, store):
    """A consumer died with a batch of two segments pending, and one of them was deleted (by
    hand, or lost with a machine crash): what is left of the batch is stored and the consumer
    goes on, where it stopped at start before. With every segment of it gone, it goes on."""
    events = mail_opens(120)
    ranges = await died_with_a_batch_of_two_segments(config, events)
    gone = config.spool_dir / ranges[0].segment
    lost = gone.read_bytes()[ranges[0].start : ranges[0].end].count(b"\n")
    gone.unlink()
    await run_until_stored(new_pipeline(config, store), store, len(events) - lost)
    assert await count(store) == len(events) - lost
    assert pending_in_checkpoint(config) == [] and closed_segments(config.spool_dir) == []

    # Every segment of a pending batch gone: nothing to replay, and nothing in the way.
    more = mail_opens(120, start=1000)
    await spool_events(config.spool_dir, encode(more), 8 * 1024)
    crashed = SpoolSource(config.spool_dir, config.checkpoint_path)
    _, _, ranges = crashed.read(10)
    crashed.begin(merge(ranges))
    del crashed
    for r in merge(ranges):
        (config.spool_dir / r.segment).unlink()
    left = sum(p.read_bytes().count(b"\n") for p in closed_segments(config.spool_dir))
    assert left == len(more) - 50
    await run_until_stored(new_pipeline(config, store), store, len(events) - lost + left)
    assert pending_in_checkpoint(config) == []
