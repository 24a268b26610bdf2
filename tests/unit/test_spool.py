"""The disk spool on real files: SpoolSink writes and rotates segments, SpoolSource reads them."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import re
import time
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry

from collector.buffer import EventBuffer
from collector.metrics import CollectorMetrics
from collector.sinks.spool import SpoolSink
from collector.spool import writer
from collector.spool.replay import ACKED_XATTR, SpoolReplayer
from collector.spool.segments import NEW_SUFFIX, spool_size
from collector.spool.wal import WriteAheadLog
from consumers.metrics import ConsumerMetrics
from consumers.settings import ConsumerSettings
from consumers.sources import spool as spool_source
from consumers.sources.protocol import LARGE_BYTES, join_lines
from consumers.sources.spool import Range, SpoolSource, token_for
from consumers.sources.spool_feed import SpoolFeed
from contract.segments import CLOSED_SUFFIX, OPEN_SUFFIX, closed_segments
from tests.support.helpers import metric_value
from tests.support.kafka_sink import wait_for

WAIT_S = 30  # a condition's deadline: generous, never a measure

BIG = 1 << 30  # a limit no test reaches
HOUR_MS = 3_600_000
# Limits out of the way: segments close only when a test says so.
NEVER = {
    "segment_max_bytes": BIG,
    "segment_max_age_ms": HOUR_MS,
    "segment_idle_ms": HOUR_MS,
    "max_bytes": BIG,
}


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    return tmp_path / "spool.checkpoint.json"


def make_sink(directory: Path, metrics: CollectorMetrics, **limits: int) -> SpoolSink:
    """A sink whose limits are out of the way unless the test sets them."""
    return SpoolSink(directory, metrics, **(NEVER | limits))


def lines(first: int, count: int) -> list[bytes]:
    """Distinct events of equal length (10 bytes with the newline), easy to tell apart."""
    return [b'{"n":%03d}' % i for i in range(first, first + count)]


def as_file(events: list[bytes]) -> bytes:
    return b"".join(e + b"\n" for e in events)


def files(directory: Path, suffix: str) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.endswith(suffix))


def write_segment(directory: Path, name: str, events: list[bytes]) -> Path:
    """A closed segment as a writer leaves it."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(as_file(events))
    return path


# -- SpoolSink -------------------------------------------------------------------------------


async def test_send_writes_open_segment_and_age_rotates_it(spool_dir, metrics):
    sink = make_sink(spool_dir, metrics, segment_max_age_ms=200)
    events = lines(0, 5)
    await sink.send(events)
    # Readers only see closed segments: until rotation the events sit in a `.open` file.
    [open_path] = files(spool_dir, OPEN_SUFFIX)
    assert closed_segments(spool_dir) == []
    assert open_path.read_bytes() == as_file(events)  # already handed to the OS

    await asyncio.sleep(0.25)  # older than segment_max_age_ms
    await sink.flush()
    assert files(spool_dir, OPEN_SUFFIX) == []
    [closed] = closed_segments(spool_dir)
    assert closed.name == open_path.name.removesuffix(".open")
    assert closed.read_bytes() == as_file(events)  # exactly the events, one per line
    assert metric_value(metrics, "beacon_sink_events_total", outcome="spooled") == 5
    assert metric_value(metrics, "beacon_spool_bytes") == 50
    assert metric_value(metrics, "beacon_spool_segments") == 1
    await sink.close()


async def test_flush_keeps_a_young_segment_open_and_close_rotates_it(spool_dir, metrics):
    sink = make_sink(spool_dir, metrics)  # an hour: never old enough in this test
    await sink.send(lines(0, 3))
    await sink.flush()
    assert len(files(spool_dir, OPEN_SUFFIX)) == 1
    await sink.close()  # shutdown closes whatever is open, so the consumer sees it
    assert files(spool_dir, OPEN_SUFFIX) == []
    [closed] = closed_segments(spool_dir)
    assert closed.read_bytes() == as_file(lines(0, 3))
    with pytest.raises(RuntimeError):
        await sink.send(lines(3, 1))


async def test_a_segment_under_steady_writes_closes_at_its_age_without_waiting_for_a_flush(
    spool_dir, metrics
):
    # The flush comes once a flush interval: a segment that waited for it lived up to two ages.
    sink = make_sink(spool_dir, metrics, segment_max_age_ms=100)
    await sink.send(lines(0, 2))
    await asyncio.sleep(0.15)  # older than segment_max_age_ms
    await sink.send(lines(2, 2))
    [closed] = closed_segments(spool_dir)
    assert closed.read_bytes() == as_file(lines(0, 4))
    assert files(spool_dir, OPEN_SUFFIX) == []
    await sink.close()


async def test_a_pause_in_the_events_closes_the_segment_without_waiting_for_its_age(
    spool_dir, metrics
):
    """The end of a burst reaches the consumer at once: the buffer flushes the sink once no
    event has come for the idle time, and the sink closes a segment idle that long."""
    sink = make_sink(spool_dir, metrics, segment_idle_ms=50)
    buffer = EventBuffer(
        sink,
        metrics,
        max_events=100,
        max_bytes=1 << 20,
        linger_ms=5,
        flush_interval_ms=HOUR_MS,
        idle_flush_ms=50,
    )
    buffer.start()
    try:
        for event in lines(0, 5):
            assert buffer.offer(event)
        await wait_for(lambda: closed_segments(spool_dir) != [], WAIT_S, "a closed segment")
        [closed] = closed_segments(spool_dir)
        assert closed.read_bytes() == as_file(lines(0, 5))
        assert files(spool_dir, OPEN_SUFFIX) == []
        for event in lines(5, 3):  # the next burst: a segment of its own, closed the same way
            assert buffer.offer(event)
        await wait_for(lambda: len(closed_segments(spool_dir)) == 2, WAIT_S, "a second segment")
        assert closed_segments(spool_dir)[1].read_bytes() == as_file(lines(5, 3))
    finally:
        await buffer.close()


async def test_the_write_ahead_log_closes_its_segment_after_a_pause(spool_dir, metrics):
    wal = WriteAheadLog(spool_dir, metrics, **(NEVER | {"segment_idle_ms": 50}))
    assert all(wal.append(event) for event in lines(0, 3))
    await wal.tick()
    assert closed_segments(spool_dir) == []  # just written to: not idle yet
    await asyncio.sleep(0.1)
    await wal.tick()
    [closed] = closed_segments(spool_dir)
    assert closed.read_bytes() == as_file(lines(0, 3))
    await wal.close()


async def test_a_wal_segment_whose_rename_failed_is_closed_by_the_pump_not_a_restart(
    spool_dir, metrics, monkeypatch
):
    """Its events waited `.open` for the next start's recovery, however long that was."""
    wal = WriteAheadLog(spool_dir, metrics, **(NEVER | {"segment_idle_ms": 10}))
    assert all(wal.append(event) for event in lines(0, 3))
    rename = Path.rename

    def fails_once(path: Path, target: Path) -> Path:
        monkeypatch.setattr(Path, "rename", rename)
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(Path, "rename", fails_once)
    await asyncio.sleep(0.05)
    await wal.tick()  # the idle close fails; once its fd is closed, the tick closes it
    [closed] = closed_segments(spool_dir)
    assert closed.read_bytes() == as_file(lines(0, 3)) and files(spool_dir, OPEN_SUFFIX) == []
    assert metric_value(metrics, "beacon_wal_segments_total") == 1
    assert all(wal.append(event) for event in lines(3, 2))  # into a segment of its own
    await wal.close()
    assert [p.read_bytes() for p in closed_segments(spool_dir)] == [
        as_file(lines(0, 3)), as_file(lines(3, 2))
    ]  # fmt: skip
    assert metric_value(metrics, "beacon_wal_segments_total") == 2


async def test_a_wal_fsync_that_fails_fails_readiness_until_the_disk_writes_again(
    spool_dir, metrics, monkeypatch
):
    """A writeback error (EIO) can lose what the page cache held: it was only logged by the
    pump, readiness passing."""
    wal = WriteAheadLog(spool_dir, metrics, **NEVER)
    assert wal.append(lines(0, 1)[0])

    def eio(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    with monkeypatch.context() as patched:
        patched.setattr(os, "fsync", eio)
        assert not await wal.sync()
    assert wal.unready_reason() == "Input/output error"
    assert await wal.sync()
    await wal.rescan()  # a write beside the segments succeeds: ready again
    assert wal.unready_reason() is None
    await wal.close()


async def test_a_spool_that_fails_to_close_its_segment_still_closes(
    spool_dir, metrics, monkeypatch, caplog
):
    """An EIO at the last fsync escaped the close: a Kafka sink's close stopped there, its
    spool not sent at exit and its producer never stopped. The events stay in the `.open`
    file, which the next start closes."""
    sink = make_sink(spool_dir, metrics)
    await sink.send(lines(0, 3))

    def eio(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    with monkeypatch.context() as patched:
        patched.setattr(os, "fsync", eio)
        await sink.close()
    assert "closing the spool's open segment failed (" in caplog.text
    [left] = files(spool_dir, OPEN_SUFFIX)
    assert left.read_bytes() == as_file(lines(0, 3))


async def test_a_write_ahead_log_is_unready_before_it_refuses_an_event(spool_dir, metrics):
    """It said "spool full" only at its bound, which a refused write never reaches: events
    were refused (503, or a pixel lost) behind a /readyz 200."""
    wal = WriteAheadLog(spool_dir, metrics, **(NEVER | {"max_bytes": 1024}))
    events = iter(lines(0, 200))
    while wal.unready_reason() is None:
        assert wal.append(next(events))  # taken while ready
    assert wal.unready_reason() == "spool full"
    while wal.append(next(events)):  # the headroom: still taken, unready
        assert wal.unready_reason() == "spool full"
    assert metric_value(metrics, "beacon_events_dropped_total", reason="spool_full") == 1
    await wal.close()


async def test_two_recounts_at_once_count_the_spool_once(spool_dir, metrics):
    """The log's own recount and the Kafka replay's after a deletion: each took the bytes
    written since the last one off, so they came off twice and the bound let as much more
    in."""
    wal = WriteAheadLog(spool_dir, metrics, **(NEVER | {"max_bytes": 1 << 20}))
    for event in lines(0, 300):
        assert wal.append(event)
    await asyncio.gather(wal.rescan(), wal.rescan())
    on_disk = sum(p.stat().st_size for p in spool_dir.iterdir())
    assert wal.segments.used_bytes == on_disk == 3000
    await wal.close()


async def test_a_segment_ages_by_the_time_it_was_open_whatever_the_wall_clock_says(
    spool_dir, metrics, monkeypatch
):
    """Aged by the wall clock, a segment under steady traffic stayed open for the hour a
    clock stepped back, its events unread (and in wal mode, not sent to Kafka)."""
    sink = make_sink(spool_dir, metrics, segment_max_age_ms=50)
    await sink.send(lines(0, 1))
    wall = time.time_ns() - 3_600 * 10**9
    monkeypatch.setattr(time, "time_ns", lambda: wall)  # stepped back an hour, and stopped
    await wait_for(sink.segments.aged, WAIT_S, "the segment's age")
    await sink.close()


async def test_a_segment_whose_rename_a_machine_crash_lost_is_closed_not_deleted(
    spool_dir, metrics
):
    """Created as `.new` and renamed `.open` with no directory fsync: a machine crash can
    keep its lines (fsynced) and lose the rename. Recovery deleted every stale `.new`."""
    spool_dir.mkdir()
    lost = spool_dir / ("0000000000001-0000001-000001-00" + NEW_SUFFIX)
    lost.write_bytes(as_file(lines(0, 3)) + b'{"n":0')  # torn at the crash, too
    empty = spool_dir / ("0000000000002-0000001-000001-00" + NEW_SUFFIX)
    empty.write_bytes(b"")  # a writer that died before its rename: nothing in it
    long_ago = time.time() - 3600
    os.utime(empty, (long_ago, long_ago))  # stale; the lines' `.new` is taken whatever its age
    sink = make_sink(spool_dir, metrics)
    [closed] = closed_segments(spool_dir)
    assert closed.read_bytes() == as_file(lines(0, 3))
    assert files(spool_dir, NEW_SUFFIX) == []
    await sink.close()


async def test_size_rotation_gives_ordered_closed_segments(spool_dir, metrics):
    sink = make_sink(spool_dir, metrics, segment_max_bytes=40)
    events = lines(0, 10)
    for event in events:  # one send per event: rotation after the write that reaches 40 bytes
        await sink.send([event])
    assert len(closed_segments(spool_dir)) == 2  # 4 + 4 events; the last 2 are still open
    await sink.close()

    segments = closed_segments(spool_dir)
    assert [p.read_bytes() for p in segments] == [
        as_file(events[0:4]),
        as_file(events[4:8]),
        as_file(events[8:10]),
    ]


async def test_a_segment_whose_first_write_failed_is_removed_not_closed_empty(
    spool_dir, metrics, monkeypatch
):
    """A full disk fails the first write of a fresh segment: the idle close removes it, and
    the next write opens another. Closed empty, one a tick stayed in the spool for good."""
    wal = WriteAheadLog(spool_dir, metrics, **(NEVER | {"segment_idle_ms": 10}))

    def no_space(fd: int, data: bytes, offset: int, **_: bool) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(writer, "append_lines", no_space)
        assert not wal.append(lines(0, 1)[0])
        await asyncio.sleep(0.05)
        await wal.tick()
    assert metric_value(metrics, "beacon_events_dropped_total", reason="spool_error") == 1
    assert closed_segments(spool_dir) == [] and files(spool_dir, OPEN_SUFFIX) == []
    assert wal.append(lines(1, 1)[0])
    await wal.close()
    [closed] = closed_segments(spool_dir)
    assert closed.read_bytes() == as_file(lines(1, 1))


async def test_events_written_before_a_failed_close_are_spooled_not_counted_lost(
    spool_dir, metrics, monkeypatch
):
    sink = make_sink(spool_dir, metrics, segment_max_bytes=30)
    with monkeypatch.context() as patched:
        patched.setattr(writer.SegmentWriter, "seal", failing_seal)
        await sink.send(lines(0, 4))  # written, then the close at 30 bytes fails
        assert not sink.healthy()  # the disk failed: readiness says so until it works
    assert metric_value(metrics, "beacon_sink_events_total", outcome="spooled") == 4
    assert metric_value(metrics, "beacon_events_dropped_total", reason="spool_error") == 0
    await sink.close()
    [closed] = closed_segments(spool_dir)
    assert closed.read_bytes() == as_file(lines(0, 4))


def failing_seal(self: writer.SegmentWriter) -> None:
    raise OSError(errno.EIO, "Input/output error")


def test_an_empty_closed_segment_is_deleted_by_the_reader(spool_dir, checkpoint):
    empty = write_segment(spool_dir, f"0000000000001-0000001-000001{CLOSED_SUFFIX}", [])
    write_segment(spool_dir, f"0000000000002-0000001-000001{CLOSED_SUFFIX}", lines(0, 2))
    source = SpoolSource(spool_dir, checkpoint)
    rows, ranges = read_lines(source, 100)
    assert rows == lines(0, 2) and not empty.exists()
    source.commit(ranges)
    assert closed_segments(spool_dir) == []


async def test_spool_full_drops_counts_and_recovers_after_consumer(spool_dir, checkpoint, metrics):
    # Room for exactly 10 events of 10 bytes; segments rotate at 30 bytes.
    sink = make_sink(spool_dir, metrics, max_bytes=100, segment_max_bytes=30)
    await sink.send(lines(0, 8))
    assert sink.healthy()
    await sink.send(lines(8, 4))  # 2 fit, 2 do not
    assert metric_value(metrics, "beacon_events_dropped_total", reason="spool_full") == 2
    assert not sink.healthy()  # full: readiness must say so
    await sink.send(lines(12, 1))
    assert metric_value(metrics, "beacon_events_dropped_total", reason="spool_full") == 3
    assert metric_value(metrics, "beacon_sink_events_total", outcome="spooled") == 10

    # The consumer reads and commits the closed segment (8 events) and deletes it.
    source = SpoolSource(spool_dir, checkpoint)
    rows, ranges = read_lines(source, 100)
    assert rows == lines(0, 8)
    source.commit(ranges)
    assert closed_segments(spool_dir) == []

    await sink.flush()  # the rescan sees the space the consumer freed
    assert sink.healthy()
    await sink.send(lines(20, 8))
    assert metric_value(metrics, "beacon_events_dropped_total", reason="spool_full") == 3
    await sink.close()
    rows, _ = read_lines(source, 100)
    assert rows == lines(8, 2) + lines(20, 8)  # what was kept, in order, nothing else


async def test_orphan_from_dead_writer_is_closed_at_its_last_whole_line(spool_dir, metrics):
    spool_dir.mkdir()
    torn = spool_dir / ("0000000000001-0000001-000001" + OPEN_SUFFIX)
    torn.write_bytes(as_file(lines(0, 2)) + b'{"n":00')  # the writer died mid-line
    only_torn = spool_dir / ("0000000000002-0000001-000002" + OPEN_SUFFIX)
    only_torn.write_bytes(b'{"n":')  # not one whole line: nothing to keep

    sink = make_sink(spool_dir, metrics)
    assert files(spool_dir, OPEN_SUFFIX) == []
    [closed] = closed_segments(spool_dir)
    assert closed.name == "0000000000001-0000001-000001" + CLOSED_SUFFIX
    assert closed.read_bytes() == as_file(lines(0, 2))
    await sink.close()


async def test_an_orphan_the_disk_refuses_stops_neither_the_start_nor_the_others(
    spool_dir, metrics, caplog
):
    """A segment left open by a dead writer that cannot be read (a bad block, EACCES; here a
    directory by its name, which open() refuses): left as it is, and logged. The recovery went
    no further before, and the writer's start failed: no collector took traffic."""
    spool_dir.mkdir()
    bad = spool_dir / ("0000000000001-0000001-000001" + OPEN_SUFFIX)
    bad.mkdir()
    orphan = spool_dir / ("0000000000002-0000001-000002" + OPEN_SUFFIX)
    orphan.write_bytes(as_file(lines(0, 2)) + b'{"n":00')

    sink = make_sink(spool_dir, metrics)
    await sink.send(lines(2, 1))  # the writer works
    await sink.close()
    assert files(spool_dir, OPEN_SUFFIX) == [bad]
    first, _ = closed_segments(spool_dir)
    assert first.name == "0000000000002-0000001-000002" + CLOSED_SUFFIX
    assert first.read_bytes() == as_file(lines(0, 2))
    assert f"cannot close {bad.name}, left open by a dead writer" in caplog.text


async def test_open_segment_locked_by_a_live_writer_is_left_alone(spool_dir, metrics):
    spool_dir.mkdir()
    path = spool_dir / ("0000000000001-0000001-000001" + OPEN_SUFFIX)
    content = as_file(lines(0, 2)) + b'{"n":00'  # mid-write: the tail is not torn, just early
    path.write_bytes(content)
    with open(path, "r+b") as live:
        fcntl.flock(live, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a live SpoolSink holds
        sink = make_sink(spool_dir, metrics)
        assert path.read_bytes() == content
        assert closed_segments(spool_dir) == []
        await sink.close()


async def test_second_sink_does_not_touch_the_first_sinks_open_segment(spool_dir, metrics):
    first = make_sink(spool_dir, metrics)
    await first.send(lines(0, 3))
    [open_path] = files(spool_dir, OPEN_SUFFIX)

    second = make_sink(spool_dir, metrics)  # a restarted sibling worker runs orphan recovery
    assert files(spool_dir, OPEN_SUFFIX) == [open_path]
    await first.send(lines(3, 2))  # the first writer carries on in the same file
    await first.close()
    await second.close()
    [closed] = closed_segments(spool_dir)
    assert closed.read_bytes() == as_file(lines(0, 5))


async def test_write_ahead_log_and_sink_share_a_directory_the_consumer_reads(
    spool_dir, checkpoint, metrics
):
    """BEACON_DURABILITY=wal writes into the same spool as the sink, from the same process."""
    sink = make_sink(spool_dir, metrics)
    await sink.send(lines(0, 3))
    # Its start-up recovery leaves the sink's open segment alone: the sink holds its lock.
    wal = WriteAheadLog(spool_dir, metrics, **NEVER)
    assert all(wal.append(event) for event in lines(3, 4))
    opened = files(spool_dir, OPEN_SUFFIX)
    assert len(opened) == 2 and len({p.name.split("-")[2] for p in opened}) == 2  # own names
    assert spool_size(spool_dir) == (len(as_file(lines(0, 7))), 2)
    await wal.close()
    await sink.close()
    rows, _ = read_lines(SpoolSource(spool_dir, checkpoint), 100)
    assert sorted(rows) == lines(0, 7)


async def test_the_sink_and_the_log_write_one_segment_format(tmp_path, metrics):
    """Both go through one segment writer: the same bytes, the same names but their tag."""
    events = [b'{"n":1,"s":"a"}', b'{"n":2,"s":"\xc3\xa9"}']
    expected = b'{"n":1,"s":"a"}\n{"n":2,"s":"\xc3\xa9"}\n'  # NDJSON: one event a line
    sink = make_sink(tmp_path / "sink", metrics)
    await sink.send(events)
    await sink.close()
    wal = WriteAheadLog(tmp_path / "wal", metrics, **NEVER)
    assert all(wal.append(event) for event in events)
    await wal.close()
    [from_sink] = closed_segments(tmp_path / "sink")
    [from_wal] = closed_segments(tmp_path / "wal")
    assert from_sink.read_bytes() == from_wal.read_bytes() == expected
    name = rf"\d{{13}}-{os.getpid():07d}-%s000001-[0-9a-f]{{16}}{re.escape(CLOSED_SUFFIX)}"
    assert re.fullmatch(name % "", from_sink.name) and re.fullmatch(name % "w", from_wal.name)


async def test_spools_of_two_hosts_never_name_a_batch_alike(
    tmp_path, checkpoint, metrics, monkeypatch
):
    """Spool-mode consumers on two hosts storing into one ClickHouse server: a segment opened
    at the same ms by the same pid (containers) with the same bytes' count must still give
    another token, or the server drops one host's batch as a repeat of the other's."""
    monkeypatch.setattr(time, "time_ns", lambda: 1_700_000_000_000_000_000)  # one clock
    tokens = set()
    for host in ("a", "b"):
        sink = make_sink(tmp_path / host, metrics)
        await sink.send([b'{"host":"%s"}' % host.encode()])
        await sink.close()
        [segment] = closed_segments(tmp_path / host)
        _, ranges = read_lines(SpoolSource(tmp_path / host, tmp_path / f"{host}.json"), 10)
        assert ranges == [Range(segment.name, 0, 13)]
        tokens.add(token_for(ranges))
    assert len(tokens) == 2


# -- SpoolSource ------------------------------------------------------------------------------


def read_lines(
    source: SpoolSource, max_rows: int, max_bytes: int = 1 << 30
) -> tuple[list[bytes], list[Range]]:
    """SpoolSource.read's chunks split into lines (checking the count it gives)."""
    chunks, rows, ranges = source.read(max_rows, max_bytes)
    split = [line for chunk in chunks for line in chunk.split(b"\n")]
    assert rows == len(split)
    return split, ranges


def test_a_segment_deleted_between_the_listing_and_its_read_is_passed_over(
    spool_dir, checkpoint, monkeypatch
):
    """By hand, as an operator frees space: the consumer ended with FileNotFoundError."""
    gone = spool_dir / "0000000000001-0000001-000001.ndjson"
    write_segment(spool_dir, "0000000000002-0000001-000002.ndjson", lines(3, 4))
    listed = closed_segments(spool_dir)
    monkeypatch.setattr(spool_source, "closed_segments", lambda d: [gone, *listed])
    rows, _ = read_lines(SpoolSource(spool_dir, checkpoint), 100)
    assert rows == lines(3, 4)


def three_segments(directory: Path) -> None:
    write_segment(directory, "0000000000001-0000001-000001.ndjson", lines(0, 3))
    write_segment(directory, "0000000000002-0000001-000002.ndjson", lines(3, 4))
    write_segment(directory, "0000000000003-0000001-000003.ndjson", lines(7, 2))


def test_read_respects_max_rows_across_segments(spool_dir, checkpoint):
    three_segments(spool_dir)
    source = SpoolSource(spool_dir, checkpoint)
    rows, ranges = read_lines(source, 5)
    assert rows == lines(0, 5)
    assert ranges == [
        Range("0000000000001-0000001-000001.ndjson", 0, 30),
        Range("0000000000002-0000001-000002.ndjson", 0, 20),
    ]
    rows, ranges = read_lines(source, 5)
    assert rows == lines(5, 4)
    assert ranges == [
        Range("0000000000002-0000001-000002.ndjson", 20, 40),
        Range("0000000000003-0000001-000003.ndjson", 0, 20),
    ]
    assert source.read(5) == ([], 0, [])


def test_read_stops_at_the_line_that_reaches_max_bytes(spool_dir, checkpoint):
    three_segments(spool_dir)  # lines of 10 bytes: 3, 4 and 2 of them
    source = SpoolSource(spool_dir, checkpoint)
    first, second, third = (p.name for p in closed_segments(spool_dir))
    assert read_lines(source, 100, 25) == (lines(0, 3), [Range(first, 0, 30)])
    assert read_lines(source, 100, 31) == (lines(3, 4), [Range(second, 0, 40)])
    assert read_lines(source, 100, 5) == (lines(7, 1), [Range(third, 0, 10)])  # one at least
    assert read_lines(source, 100, 10) == (lines(8, 1), [Range(third, 10, 20)])


async def test_the_feed_cuts_a_batch_by_bytes(spool_dir, checkpoint, tmp_path):
    three_segments(spool_dir)
    config = ConsumerSettings(data_dir=tmp_path, batch_max_rows=100, batch_max_bytes=45)
    metrics = ConsumerMetrics(CollectorRegistry())
    feed = SpoolFeed(SpoolSource(spool_dir, checkpoint), metrics, config)
    assert await feed.read(final=False) == 5  # 3 lines, then the one that reaches 45 bytes
    [batch] = feed.batches(time.monotonic(), final=False)
    assert batch.cut_by == "bytes"
    assert metric_value(metrics, "beacon_consumer_batch_cuts_total", reason="bytes") == 1


@pytest.mark.parametrize("cut_bytes", [1, 4], ids=["its-newline", "mid-line"])
def test_a_closed_segment_cut_by_a_crash_keeps_its_last_line_whole_and_apart(
    spool_dir, checkpoint, cut_bytes
):
    """A machine crash after a segment's rename, before its bytes were synced, leaves it cut
    short: its last line lost its newline, or more. That line stays as it is, one of its own."""
    first = write_segment(spool_dir, "0000000000001-0000001-000001.ndjson", lines(0, 3))
    first.write_bytes(first.read_bytes()[:-cut_bytes])
    write_segment(spool_dir, "0000000000002-0000001-000002.ndjson", lines(3, 2))
    last = lines(2, 1)[0][: 10 - cut_bytes]
    source = SpoolSource(spool_dir, checkpoint)

    rows, ranges = read_lines(source, 100)
    assert rows == [*lines(0, 2), last, *lines(3, 2)]
    assert ranges[0] == Range(first.name, 0, 31 - cut_bytes)  # a byte past the file
    source.begin(ranges)
    assert SpoolSource(spool_dir, checkpoint).read_ranges(ranges) == (
        [as_file([*lines(0, 2), last]).removesuffix(b"\n"), b"\n".join(lines(3, 2))],
        ranges,
    )
    source.commit(ranges)
    assert closed_segments(spool_dir) == []
    assert source.read(100) == ([], 0, [])


def test_a_segments_deletion_is_durable_before_a_save_forgets_its_offset(
    spool_dir, checkpoint, monkeypatch
):
    """Unsynced, a deletion a power loss undid brought the segment back with no offset in the
    checkpoint the next commit saved: read again from its start, under other tokens."""
    three_segments(spool_dir)
    source = SpoolSource(spool_dir, checkpoint)
    synced: list[str] = []
    fsync = os.fsync

    def recording(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        fsync(fd)

    monkeypatch.setattr(spool_source.os, "fsync", recording)
    _, ranges = read_lines(source, 5)
    source.commit(ranges)  # saved, then the first segment, done, deleted
    assert len(closed_segments(spool_dir)) == 2
    assert synced[-1] == str(spool_dir)  # before the next save, which forgets its offset


def test_commit_deletes_finished_segments_and_a_new_source_continues(spool_dir, checkpoint):
    three_segments(spool_dir)
    source = SpoolSource(spool_dir, checkpoint)
    _, ranges = read_lines(source, 5)
    source.commit(ranges)
    # The first segment is done and gone; the second is half read and stays.
    assert [p.name for p in closed_segments(spool_dir)] == [
        "0000000000002-0000001-000002.ndjson",
        "0000000000003-0000001-000003.ndjson",
    ]
    # Saved before the delete: a finished segment may linger in it, and is forgotten on load.
    state = orjson.loads(checkpoint.read_bytes())
    assert state["offsets"]["0000000000002-0000001-000002.ndjson"] == 20
    assert state["pending"] == []

    # A restart (rows read after the commit but not committed are read again).
    source.read(5)
    restarted = SpoolSource(spool_dir, checkpoint)
    rows, ranges = read_lines(restarted, 100)
    assert rows == lines(5, 4)
    restarted.commit(ranges)
    assert closed_segments(spool_dir) == []
    assert orjson.loads(checkpoint.read_bytes())["pending"] == []
    assert SpoolSource(spool_dir, checkpoint).offsets == {}


def test_pending_batch_survives_a_restart_and_replays_exactly(spool_dir, checkpoint):
    three_segments(spool_dir)
    source = SpoolSource(spool_dir, checkpoint)
    rows, ranges = read_lines(source, 5)
    source.begin(ranges)  # then the process dies before commit
    del source

    restarted = SpoolSource(spool_dir, checkpoint)
    assert restarted.pending == ranges
    replayed, settled = restarted.read_ranges(restarted.pending)
    assert b"\n".join(replayed).split(b"\n") == rows == lines(0, 5)
    assert settled == ranges
    # Segments in the pending batch are kept until it is committed.
    assert len(closed_segments(spool_dir)) == 3
    # New reads start after the pending batch, so the replay is not read twice.
    rest, _ = read_lines(restarted, 100)
    assert rest == lines(5, 4)


def test_token_is_stable_for_the_same_ranges_and_differs_otherwise(spool_dir, checkpoint):
    three_segments(spool_dir)
    _, ranges = read_lines(SpoolSource(spool_dir, checkpoint), 5)
    # The same position read by another process (after a crash) gives the same token.
    _, again = read_lines(SpoolSource(spool_dir, checkpoint), 5)
    assert token_for(again) == token_for(ranges)
    assert token_for([Range(r.segment, r.start, r.end) for r in ranges]) == token_for(ranges)

    others = [
        ranges[:1],
        [*ranges[:1], Range(ranges[1].segment, 0, 10)],
        [Range("0000000000009-0000001-000001.ndjson", 0, 30), ranges[1]],
    ]
    tokens = {token_for(ranges), *(token_for(o) for o in others)}
    assert len(tokens) == 4


async def test_segment_closed_late_with_an_older_name_is_still_read(spool_dir, checkpoint, metrics):
    slow = make_sink(spool_dir, metrics)  # e.g. a worker with little traffic
    await slow.send(lines(0, 2))
    await asyncio.sleep(0.01)  # the busy writer's segment gets a later creation time
    busy = make_sink(spool_dir, metrics)
    await busy.send(lines(10, 3))
    await busy.close()

    source = SpoolSource(spool_dir, checkpoint)
    rows, ranges = read_lines(source, 100)
    assert rows == lines(10, 3)
    source.commit(ranges)
    consumed = ranges[0].segment

    await slow.close()
    [late] = closed_segments(spool_dir)
    assert late.name < consumed  # sorts before what was already consumed
    rows, _ = read_lines(source, 100)
    assert rows == lines(0, 2)


async def test_not_ready_before_the_last_event_no_longer_fits(spool_dir, metrics):
    # Room left for less than the headroom: readiness fails while events still fit, so a load
    # balancer moves traffic away before anything is refused.
    sink = make_sink(spool_dir, metrics, max_bytes=64 * 1024)
    await sink.send([b"x" * 1000] * 62)
    assert not sink.healthy()
    assert metric_value(metrics, "beacon_events_dropped_total", reason="spool_full") == 0
    await sink.close()


async def test_stale_new_file_of_a_writer_that_died_at_creation_is_removed(spool_dir, metrics):
    spool_dir.mkdir(parents=True, exist_ok=True)
    stale = spool_dir / f"0000000000001-0000001-000001{NEW_SUFFIX}"
    stale.write_bytes(b"")
    os.utime(stale, (1, 1))
    fresh = spool_dir / f"0000000000002-0000001-000001{NEW_SUFFIX}"
    fresh.write_bytes(b"")  # maybe a live writer between create and rename: left alone
    sink = make_sink(spool_dir, metrics)
    assert not stale.exists() and fresh.exists()
    await sink.close()


# -- SpoolFeed --------------------------------------------------------------------------------


async def test_the_feed_cuts_a_batch_at_once_when_no_collector_has_a_segment_open(
    spool_dir, checkpoint
):
    """A quiet spool (everything written is read, nothing open nor new for a poll interval) is
    stored without waiting for the batch age; at most once an age, so a trickle of events still
    makes about one insert an age."""
    config = ConsumerSettings(
        data_dir=spool_dir.parent, batch_max_age_ms=HOUR_MS, poll_interval_ms=10_000
    )
    poll_s = 10.0  # long: the test never waits for it, and a slow machine never passes it
    metrics = ConsumerMetrics(CollectorRegistry())
    feed = SpoolFeed(SpoolSource(spool_dir, checkpoint), metrics, config)
    write_segment(spool_dir, "0000000000001-0000001-000001.ndjson", lines(0, 3))
    still_open = write_segment(spool_dir, "0000000000002-0000001-000002.ndjson.open", lines(3, 2))
    assert await feed.read(final=False) == 3
    assert feed.batches(time.monotonic(), final=False) == []  # a collector is still writing

    still_open.rename(spool_dir / "0000000000002-0000001-000002.ndjson")
    assert await feed.read(final=False) == 2
    assert feed.batches(time.monotonic() + poll_s, final=False) == []  # lines came: not quiet
    assert await feed.read(final=False) == 0  # nothing open, nothing new: quiet from here
    looked = time.monotonic()
    # One look is not enough: under load a segment closes at its age and the next opens at
    # the next write, a gap a look can fall into.
    assert feed.batches(looked, final=False) == []
    [batch] = feed.batches(looked + poll_s, final=False)
    assert batch.pieces == [as_file(lines(0, 5))[:-1]]
    assert metric_value(metrics, "beacon_consumer_batch_cuts_total", reason="quiet") == 1
    await feed.mark([batch])
    await feed.commit([batch])

    write_segment(spool_dir, "0000000000003-0000001-000003.ndjson", lines(5, 1))
    assert await feed.read(final=False) == 1
    assert await feed.read(final=False) == 0
    # Quiet again, but one quiet cut an age: the age cuts it.
    assert feed.batches(time.monotonic() + poll_s, final=False) == []
    [batch] = feed.batches(time.monotonic() + HOUR_MS / 1000, final=False)
    assert batch.pieces == [lines(5, 1)[0]]
    assert metric_value(metrics, "beacon_consumer_batch_cuts_total", reason="quiet") == 1
    assert metric_value(metrics, "beacon_consumer_batch_cuts_total", reason="age") == 1


def test_join_lines_keeps_large_values_whole_and_joins_small_ones() -> None:
    large = b"x" * LARGE_BYTES
    values = [b"a", b"b\n", large, b"c", large + b"\n", b"d"]
    pieces = join_lines(values)
    assert b"".join(pieces) == b"a\nb\n" + large + b"\nc\n" + large + b"\nd"
    assert sum(piece is large for piece in pieces) == 1  # not copied (the other had a newline)
    assert join_lines([]) == [] and b"".join(join_lines([large])) == large


def test_join_lines_keeps_an_empty_last_record_as_a_line() -> None:
    # A body's last newline ends a line and starts none (ClickHouse's LineAsString): an empty
    # last record needs one more to be read as the empty line it is.
    assert b"".join(join_lines([b"a", b""])) == b"a\n\n"
    assert b"".join(join_lines([b"a", b"\n"])) == b"a\n\n"
    assert b"".join(join_lines([None])) == b"\n"
    assert b"".join(join_lines([b"x" * LARGE_BYTES, b""])) == b"x" * LARGE_BYTES + b"\n\n"


def started_with_a_log(
    spool_dir: Path, metrics: CollectorMetrics
) -> tuple[WriteAheadLog, SpoolSink, EventBuffer]:
    """A buffer writing ahead to its log, started, one event taken."""
    wal = WriteAheadLog(spool_dir, metrics, **NEVER)
    sink = make_sink(spool_dir, metrics)
    buffer = EventBuffer(sink, metrics, max_events=100, max_bytes=1 << 20, linger_ms=5,
                         flush_interval_ms=HOUR_MS, wal=wal)  # fmt: skip
    buffer.start()
    assert buffer.offer(b'{"n":1}')
    return wal, sink, buffer


async def test_a_write_ahead_log_that_fails_to_close_still_lets_the_sink_close(
    spool_dir, metrics, monkeypatch
):
    """An EIO at the log's last fsync left the sink open: the spool not sent at exit, the
    producer never stopped."""
    wal, sink, buffer = started_with_a_log(spool_dir, metrics)

    async def fails() -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(wal, "close", fails)
    await buffer.close()
    assert sink._closed


async def test_an_event_offered_while_the_write_ahead_log_closes_is_refused_and_counted(
    spool_dir, metrics, monkeypatch
):
    """Taken then, it went into a segment of its own that nothing in this process closed."""
    wal, _, buffer = started_with_a_log(spool_dir, metrics)
    close = wal.close
    during: list[bool] = []

    async def offered_meanwhile() -> None:
        during.append(buffer.offer(b'{"n":2}'))
        await close()

    monkeypatch.setattr(wal, "close", offered_meanwhile)
    await buffer.close()
    assert during == [False]
    assert metric_value(metrics, "beacon_events_dropped_total", reason="shutdown") == 1
    assert not list(spool_dir.glob(f"*{OPEN_SUFFIX}"))
    assert [orjson.loads(line) for p in closed_segments(spool_dir)
            for line in p.read_bytes().splitlines()] == [{"n": 1}]  # fmt: skip


class Batch:
    """A record batch the link took: its events."""

    def __init__(self, events: list[bytes]) -> None:
        self.events = events
        self.size_bytes = sum(map(len, events))


async def no_recount() -> None:
    """A replayer's after_delete where no spool counts its bytes."""


class OneEventBatches:
    """The replay's Kafka link, at the edge the test is not about: a batch an event, each
    acknowledged unless `outcomes` names it (event -> outcome)."""

    up = True

    def __init__(self, outcomes: dict[bytes, str]) -> None:
        self.outcomes = outcomes
        self.produced: list[bytes] = []

    def notify_on_up(self, event: asyncio.Event) -> None:
        pass

    async def produce(self, events: list[bytes]) -> tuple[list[Batch], list[bytes]]:
        self.produced.extend(events)
        return [Batch([event]) for event in events], []

    async def wait_ack(self, sent: Batch) -> str:
        return self.outcomes.get(sent.events[0], "acked")


async def test_a_replay_goes_on_from_its_first_batch_not_taken_and_drops_an_event_refused_alone(
    spool_dir, metrics
):
    """A part that failed was sent again whole, its acknowledged batches with it, and an event
    refused alone held every segment behind it."""
    events = [b'{"n":1}', b'{"n":"huge"}', b'{"n":3}', b'{"n":4}']
    segment = write_segment(spool_dir, f"0000000000001-0000001-000001{CLOSED_SUFFIX}", events)
    link = OneEventBatches({events[1]: "too_large", events[2]: "timeout"})

    replayer = SpoolReplayer(link, spool_dir, metrics, no_recount)
    assert not await replayer._replay(segment)  # the third event's batch timed out
    assert metric_value(metrics, "beacon_events_dropped_total", reason="too_large") == 1
    assert metric_value(metrics, "beacon_kafka_replayed_events_total") == 1
    assert segment.exists()
    del link.outcomes[events[2]]  # the broker answers in time again
    assert await replayer._replay(segment)
    assert metric_value(metrics, "beacon_events_dropped_total", reason="too_large") == 1
    assert metric_value(metrics, "beacon_kafka_replayed_events_total") == 3
    assert not segment.exists() and link.produced == events + events[2:]


async def test_another_process_or_a_restart_goes_on_where_kafka_took_the_segment(
    spool_dir, metrics
):
    """How far Kafka took a segment was this process's alone: another worker on the spool, or
    the next start, sent it whole again and counted its event refused as too large again."""
    events = [b'{"n":1}', b'{"n":"huge"}', b'{"n":3}', b'{"n":4}']
    segment = write_segment(spool_dir, f"0000000000001-0000001-000001{CLOSED_SUFFIX}", events)
    first = OneEventBatches({events[1]: "too_large", events[2]: "timeout"})

    assert not await SpoolReplayer(first, spool_dir, metrics, no_recount)._replay(segment)
    assert os.getxattr(segment, ACKED_XATTR) == str(len(b"\n".join(events[:2])) + 1).encode()
    other = OneEventBatches({})
    assert await SpoolReplayer(other, spool_dir, metrics, no_recount)._replay(segment)
    assert other.produced == events[2:] and not segment.exists()
    assert metric_value(metrics, "beacon_events_dropped_total", reason="too_large") == 1
    assert metric_value(metrics, "beacon_kafka_replayed_events_total") == 3


async def test_a_segment_whose_file_system_keeps_no_attributes_is_still_replayed(
    spool_dir, metrics, monkeypatch
):
    """Where none can be kept, this process remembers how far Kafka took it."""

    def refused(*args: object) -> None:
        raise OSError(errno.ENOTSUP, "not supported")

    monkeypatch.setattr(os, "setxattr", refused)
    events = [b'{"n":1}', b'{"n":2}']
    segment = write_segment(spool_dir, f"0000000000001-0000001-000001{CLOSED_SUFFIX}", events)
    link = OneEventBatches({events[1]: "timeout"})

    replayer = SpoolReplayer(link, spool_dir, metrics, no_recount)
    assert not await replayer._replay(segment)
    del link.outcomes[events[1]]
    assert await replayer._replay(segment)
    assert link.produced == [*events, events[1]] and not segment.exists()


class SwallowsACancellation(OneEventBatches):
    """A link whose first send, cancelled as it completes, returns all the same: what a
    send's wait_for does in Python 3.11 when a timeout fires in the same step."""

    def __init__(self) -> None:
        super().__init__({})
        self.swallowed = False

    async def produce(self, events: list[bytes]) -> tuple[list[Batch], list[bytes]]:
        try:
            await asyncio.sleep(0.5)
        except asyncio.CancelledError:
            if self.swallowed:
                raise
            self.swallowed = True
        return await super().produce(events)


async def test_a_drain_whose_timeout_was_swallowed_still_ends_at_its_time(spool_dir, metrics):
    """The drain's timeout lost in a send, its loop went on with a healthy Kafka until the
    spool was empty: a shutdown past its bound, killed before the producer was stopped."""
    for n in range(100):
        write_segment(spool_dir, f"{n:013d}-0000001-000001{CLOSED_SUFFIX}", [b'{"n":%d}' % n])
    link = SwallowsACancellation()

    replayer = SpoolReplayer(link, spool_dir, metrics, no_recount)
    await asyncio.wait_for(replayer.drain(0.2), 30)  # the rest: 50 s at a send each 0.5 s
    assert link.swallowed and 0 < len(closed_segments(spool_dir)) < 100
