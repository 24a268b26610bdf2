"""The write-ahead log (BEACON_DURABILITY=wal): each event is in a spool file before its answer.

The spool is the log. `append` writes the event and its newline to this process's open spool
segment with one `os.write` on the event loop: the bytes are in the OS page cache when the
handler answers, so a killed process loses none of them (a machine crash can lose what the OS
has not written back yet; the pump fsyncs every `flush_interval_ms`). The pump closes aged
segments; from there everything is the spool's usual path: the Kafka sink's replayer ships
closed segments and deletes them after the acks, or the embedded consumer reads them. Segments
a killed process left `.open` are closed by `recover_orphans` at the next start and replayed.

Bounded by `spool_max_bytes`: an event that does not fit is refused and counted (`spool_full`).
An event that cannot be written (a full disk, a file past RLIMIT_FSIZE, a volume gone) is counted
(`spool_error`), and readiness fails (`unready_reason`) until the log can write again: the pump
tries a write beside the segments each `flush_interval_ms`, as no event comes while it is not
ready.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from collector.metrics import CollectorMetrics
from collector.settings import Settings
from collector.sinks.spool import (
    can_write,
    close_path,
    fsync_dir,
    open_segment,
    recover_orphans,
    spool_size,
)

log = logging.getLogger("beacon.wal")


class WriteAheadLog:
    """Synchronous appends into spool segments; file work beyond `os.write` runs in a thread."""

    def __init__(
        self,
        directory: Path,
        metrics: CollectorMetrics,
        *,
        segment_max_bytes: int,
        segment_max_age_ms: int,
        max_bytes: int,
        on_segment_closed: Callable[[], None] | None = None,
    ) -> None:
        self.directory = directory
        self.metrics = metrics
        self.segment_max_bytes = segment_max_bytes
        self.segment_max_age_ms = segment_max_age_ms
        self.max_bytes = max_bytes
        self.on_segment_closed = on_segment_closed  # e.g. wake the Kafka replay: less latency
        self._fd = -1
        self._path: Path | None = None
        self._opened_ms = 0
        self._segment_bytes = 0
        self._seq = 0
        # The bound: the directory's size at the last scan plus what this process wrote since.
        self._scanned_bytes = 0
        self._appended_bytes = 0
        # Closed segments whose fd still waits for its fsync and close (done off the loop).
        self._retired: list[int] = []
        self.error: str | None = None
        self._failures = 0  # failed appends: a probe's answer is stale after one
        directory.mkdir(parents=True, exist_ok=True)
        recover_orphans(directory)
        self._scanned_bytes, _ = spool_size(directory)

    def append(self, event: bytes) -> bool:
        """Write one event ahead of its answer; False (and counted) when it cannot be."""
        data = event + b"\n"
        if self._scanned_bytes + self._appended_bytes + len(data) > self.max_bytes:
            self.metrics.events_dropped.labels("spool_full").inc()
            return False
        try:
            if self._fd < 0:
                self._seq += 1
                self._fd, self._path, self._opened_ms = open_segment(
                    self.directory, f"w{self._seq:06d}"
                )
                self._segment_bytes = 0
            written = os.write(self._fd, data)
            if written != len(data):  # a short write only happens with the disk full
                raise OSError(28, "short write")
        except OSError as exc:
            self._undo_partial_write()
            self.error = exc.strerror or str(exc)
            self._failures += 1
            self.metrics.events_dropped.labels("spool_error").inc()
            return False
        self.error = None
        self._segment_bytes += len(data)
        self._appended_bytes += len(data)
        self.metrics.wal_events.inc()
        if self._segment_bytes >= self.segment_max_bytes:
            self._close_segment()
        return True

    def healthy(self) -> bool:
        return self.unready_reason() is None

    def unready_reason(self) -> str | None:
        """Why events cannot be written ahead now (the last write error, or a full spool)."""
        if self.error is not None:
            return self.error
        if self._scanned_bytes + self._appended_bytes >= self.max_bytes:
            return "spool full"
        return None

    async def tick(self) -> None:
        """Close the segment once it is old enough, then finish closed segments off the loop."""
        age_ms = time.time_ns() // 1_000_000 - self._opened_ms
        if self._fd >= 0 and age_ms >= self.segment_max_age_ms:
            self._close_segment()
        if self._retired:
            retired, self._retired = self._retired, []
            await asyncio.to_thread(self._finish, retired)
            await self.rescan()

    async def sync(self) -> None:
        """fsync the open segment: bounds what a machine crash (not a process kill) can take."""
        fd = self._fd
        if fd >= 0:
            # The fd stays open meanwhile: a segment closed by `append` only retires its fd,
            # and only this pump (tick, close) closes retired fds.
            await asyncio.to_thread(os.fsync, fd)

    async def rescan(self) -> None:
        """Recount the spool directory (replay and consumers free space in it); after a write
        error, find out whether the log can write again."""
        counted = self._appended_bytes
        try:
            total, count = await asyncio.to_thread(spool_size, self.directory)
        except OSError as exc:  # the directory is gone or unreadable: nothing can be written
            self.error = exc.strerror or str(exc)
            return
        if self.error is not None:
            failures = self._failures
            reason = await asyncio.to_thread(can_write, self.directory, "wal")
            if failures == self._failures:
                self.error = reason
        self._scanned_bytes = total
        self._appended_bytes -= counted  # appends during the scan may count twice: errs safe
        self.metrics.spool_bytes.set(total)
        self.metrics.spool_segments.set(count)

    async def close(self) -> None:
        """Close the open segment, fsync everything and make the renames durable."""
        if self._fd >= 0:
            self._close_segment()
        retired, self._retired = self._retired, []
        await asyncio.to_thread(self._finish, retired)

    # -- helpers --------------------------------------------------------------------------

    def _close_segment(self) -> None:
        """Rename the segment to its closed name now (readers may take it), retire its fd."""
        assert self._path is not None
        fd, path = self._fd, self._path
        self._fd, self._path = -1, None
        try:
            path.rename(close_path(path))
            # Unlocked after the rename: replay takes closed segments under their flock.
            fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError as exc:  # the events are still in the `.open` file: recovered later
            log.error("closing WAL segment %s failed: %s", path.name, exc)
        self._retired.append(fd)
        self.metrics.wal_segments.inc()
        if self.on_segment_closed is not None:
            self.on_segment_closed()

    def _finish(self, fds: list[int]) -> None:
        for fd in fds:
            try:
                os.fsync(fd)
            except OSError as exc:  # the page cache still holds it: only a machine crash loses it
                log.error("fsync of a closed WAL segment failed: %s", exc)
            finally:
                os.close(fd)
        if fds:
            fsync_dir(self.directory)

    def _undo_partial_write(self) -> None:
        """Cut a torn tail so the segment keeps whole lines only."""
        if self._fd >= 0:
            try:
                os.ftruncate(self._fd, self._segment_bytes)
            except OSError as exc:
                # Never closed torn: left `.open` and unlocked, the next start's recovery cuts
                # it (readers never take an `.open` segment); the next event opens a new one.
                log.error("cannot cut a torn WAL write (%s); recovery will cut it", exc)
                fd, self._fd, self._path = self._fd, -1, None
                self._retired.append(fd)


def make_wal(
    settings: Settings, metrics: CollectorMetrics, on_segment_closed: Callable[[], None] | None
) -> WriteAheadLog | None:
    """The write-ahead log BEACON_DURABILITY=wal asks for, in the spool directory; else None."""
    if settings.durability != "wal":
        return None
    return WriteAheadLog(
        settings.spool_dir,
        metrics,
        segment_max_bytes=settings.spool_segment_max_bytes,
        segment_max_age_ms=settings.spool_segment_max_age_ms,
        max_bytes=settings.spool_max_bytes,
        on_segment_closed=on_segment_closed,
    )
