"""The write-ahead log (BEACON_DURABILITY=wal): each event is in a spool file before its answer.

The spool is the log. `append` writes the event and its newline to this process's open spool
segment with one `os.write` on the event loop: the bytes are in the OS page cache when the
handler answers, so a killed process loses none of them (a machine crash can lose what the OS
has not written back yet; the pump fsyncs every `flush_interval_ms`). The pixel fast path
groups: while it answers a read (`grouping`), `append` stages the event, and the read's events
go in one `os.write` (`commit`) before its answers; under load, the events of every read of a
loop iteration go in one at its end, before the answers the fast path held
(collector/fastpath.py). A pixel whose event such a write then drops was counted accepted, as
one a sink fails later is. The pump closes aged
segments; from there everything is the spool's usual path: the Kafka sink's replayer ships
closed segments and deletes them after the acks, or the embedded consumer reads them. Segments
a killed process left `.open` are closed by `recover_orphans` at the next start and replayed; one
whose rename failed, by this process's next tick.

Bounded by `spool_max_bytes`: an event that does not fit is refused and counted (`spool_full`).
An event that cannot be written (a full disk, a file past RLIMIT_FSIZE, a volume gone) is counted
(`spool_error`), and readiness fails (`unready_reason`) until the log can write again: the pump
tries a write beside the segments each `flush_interval_ms`, as no event comes while it is not
ready.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Unpack

from collector.metrics import CollectorMetrics
from collector.settings import Settings
from collector.spool.segments import close_path, recover_orphans
from collector.spool.writer import Limits, SegmentWriter, spool_limits
from collector.tallies import CounterTally
from contract.logs import Throttle


class WriteAheadLog:
    """Synchronous appends into spool segments; file work beyond `os.write` runs in a thread."""

    def __init__(
        self,
        directory: Path,
        metrics: CollectorMetrics,
        on_segment_closed: Callable[[], None] | None = None,
        **limits: Unpack[Limits],
    ) -> None:
        self.directory = directory
        self.metrics = metrics
        self.on_segment_closed = on_segment_closed  # e.g. wake the Kafka replay: less latency
        # Own segment names ("w" + sequence): a spool sink may write beside it, in this process.
        self.segments = SegmentWriter(directory, metrics, label="WAL", tag="w", **limits)
        # Segments left `.open` (their rename failed): closed by `tick` once their fds are.
        self.abandoned: set[Path] = set()
        self._unrecovered = Throttle()  # a line a minute for one the disk refuses
        self.refused = ""  # why the last write refused its events (a drop reason)
        # Counted as the hot path counts (collector/tallies.py): an inc() of a worker's
        # counter takes a lock and writes an mmap file, ~1 us an event.
        self.written = CounterTally(metrics.wal_events)
        self.writes = CounterTally(metrics.wal_writes)
        metrics.folds += [self.written.fold, self.writes.fold]
        # The pixel fast path's group (module docstring): set while it answers a read.
        self.grouping = False
        self.staged: list[bytes] = []  # written by the next commit
        self._staged_bytes = 0

    def append(self, event: bytes) -> bool:
        """Write one event ahead of its answer (stage it, while `grouping`: its answer waits
        for `commit`); False (and counted) when it cannot be."""
        if self.grouping:
            return self._stage(event)
        return self._write(event + b"\n", 1)

    def _stage(self, event: bytes) -> bool:
        size = len(event) + 1
        segments = self.segments
        if segments.used_bytes + self._staged_bytes + size > segments.max_bytes:
            return self._refuse("spool_full", 1)
        self.staged.append(event)
        self._staged_bytes += size
        return True

    def commit(self) -> str:
        """Write the staged events in one write, all or none: "" when written (or none was
        staged), else why they were dropped (counted, as an event `append` refuses)."""
        if not self.staged:
            return ""
        events, self.staged, self._staged_bytes = self.staged, [], 0
        return "" if self._write(b"\n".join(events) + b"\n", len(events)) else self.refused

    def append_all(self, events: list[bytes]) -> bool:
        """Write events ahead of their answer, all of them or none (a POST's batch, which its
        client sends again whole); False (and counted) when they cannot be."""
        return self._write(b"\n".join(events) + b"\n", len(events))

    def _write(self, data: bytes, count: int) -> bool:
        segments = self.segments
        if segments.used_bytes + self._staged_bytes + len(data) > segments.max_bytes:
            return self._refuse("spool_full", count)
        written = self._try_write(data)
        if not written and segments.at_file_limit:
            # The segment reached the file size limit (EFBIG): closed, and the events
            # written once into a new one.
            self._close_segment()
            written = self._try_write(data)
        if not written:
            return self._refuse("spool_error", count)
        self.written.add(count)
        self.writes.inc()
        if segments.full():
            self._close_segment()
        return True

    def _refuse(self, reason: str, count: int) -> bool:
        self.refused = reason
        self.metrics.events_dropped.labels(reason).inc(count)
        return False

    def _try_write(self, data: bytes) -> bool:
        """All of `data` into the open segment, or none of it (the writer records why)."""
        try:
            self.segments.write(data, all_or_none=True)
        except OSError:
            return False
        return True

    def healthy(self) -> bool:
        return self.unready_reason() is None

    def unready_reason(self) -> str | None:
        """Why events cannot be written ahead now (the last write error, or a full spool)."""
        segments = self.segments
        if segments.error is not None:
            return segments.error
        if segments.near_full():  # before it refuses events, as the spool sink's readiness
            return "spool full"
        return None

    async def tick(self) -> None:
        """Close the segment once it is old enough, then finish closed segments off the loop."""
        if self.segments.aged():
            self._close_segment()
        retired = self.segments.retired()
        if retired:
            await asyncio.to_thread(self.segments.finish, retired)
            await self.rescan()
        if self.abandoned:
            await self._recover()

    async def sync(self) -> bool:
        """fsync the open segment: bounds what a machine crash (not a process kill) can take.
        False when it fails (EIO: written-back pages can be lost): readiness fails, as for a
        write that fails, until a write beside the segments succeeds again (`rescan`, skipped
        by the pump that tick, as the spool sink's flush does)."""
        fd = self.segments.fd
        if fd >= 0:
            # The fd stays open meanwhile: a segment closed by `append` only retires its fd,
            # and only this pump (tick, close) closes retired fds.
            try:
                await asyncio.to_thread(os.fsync, fd)
            except OSError as exc:
                self.segments.failed(exc)
                self.segments.log.error("fsync of the open WAL segment failed: %s", exc)
                return False
        return True

    async def rescan(self) -> None:
        """Recount the spool directory (replay and consumers free space in it); after a write
        error, find out whether the log can write again."""
        await self.segments.rescan()

    async def close(self) -> None:
        """Close the open segment, fsync everything and make the renames durable."""
        self.commit()
        if self.segments.fd >= 0:
            self._close_segment()
        await asyncio.to_thread(self.segments.finish, self.segments.retired())
        if self.abandoned:
            await self._recover()

    def _close_segment(self) -> None:
        """Rename the segment to its closed name now (readers may take it), retire its fd."""
        segments = self.segments
        holds_events = segments.segment_bytes > 0
        try:
            segments.seal()
        except OSError as exc:  # the events are still in the `.open` file: recovered later
            assert segments.path is not None
            segments.log.error("closing WAL segment %s failed: %s", segments.path.name, exc)
            self.abandoned.add(segments.path)
            segments.abandon()
            return
        if holds_events:  # an empty one (its first write failed) is removed, not closed
            self.metrics.wal_segments.inc()
        if self.on_segment_closed is not None:
            self.on_segment_closed()

    async def _recover(self) -> None:
        """Close the segments abandoned `.open`, as the next start's recovery would: their
        events waited for a restart, however long. Recovery skips a segment still locked (the
        live one; one abandoned meanwhile, its fd not closed yet by `finish`): those stay
        abandoned for the next tick."""
        try:
            failed = await asyncio.to_thread(recover_orphans, self.directory)
        except OSError as exc:  # the disk still fails: the next tick tries again
            self.segments.log.error("closing abandoned WAL segments failed: %s", exc)
            return
        for path, error in failed:  # the others are closed all the same
            if self._unrecovered.passes(path) is not None:
                self.segments.log.error("cannot close abandoned WAL segment %s (%s); tried "
                                        "again at the next tick", path.name, error)  # fmt: skip
        closed = {path for path in self.abandoned if close_path(path).exists()}
        self.abandoned = {path for path in self.abandoned if path.exists()}
        if closed:
            self.metrics.wal_segments.inc(len(closed))
            if self.on_segment_closed is not None:
                self.on_segment_closed()


def make_wal(
    settings: Settings, metrics: CollectorMetrics, on_segment_closed: Callable[[], None] | None
) -> WriteAheadLog | None:
    """The write-ahead log BEACON_DURABILITY=wal asks for, in the spool directory; else None."""
    if settings.durability != "wal":
        return None
    return WriteAheadLog(settings.spool_dir, metrics, on_segment_closed, **spool_limits(settings))
