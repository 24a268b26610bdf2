"""One writer's segments in a spool directory, shared by the spool sink and the write-ahead log.

The writer keeps the open segment (opened at the first write, whole lines only, closed by a
rename), the spool's size against its byte bound (the directory's size at the last scan plus
what this writer appended since), and whether it can write: the last write error, cleared by
the next write that succeeds, or by the probe once a block can be written beside the segments
again (no event may come while readiness fails).

Not thread-safe: one call at a time. The spool sink calls it from a worker thread; the
write-ahead log writes on the event loop and leaves the fsync and close of a closed segment's
fd (`finish`) to a thread.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import time
from pathlib import Path
from typing import TypedDict, Unpack

from collector.metrics import CollectorMetrics
from collector.settings import Settings
from collector.spool.segments import (
    ShortWrite,
    append_lines,
    can_write,
    close_path,
    open_segment,
    recover_orphans,
    spool_size,
)
from contract.segments import fsync_dir

# Readiness fails this close to the byte bound, before single events start to be refused.
HEADROOM_BYTES = 64 * 1024


def headroom_bytes(max_bytes: int) -> int:
    """How close to a bound of `max_bytes` readiness fails: HEADROOM_BYTES, or a sixteenth
    of a smaller bound."""
    return min(HEADROOM_BYTES, max_bytes // 16)


class Limits(TypedDict):
    """A writer's bounds: its segments closed at a size, an age or a pause in the writes, the
    directory's bytes."""

    segment_max_bytes: int
    segment_max_age_ms: int
    segment_idle_ms: int
    max_bytes: int


def spool_limits(settings: Settings) -> Limits:
    """The bounds BEACON_SPOOL_SEGMENT_MAX_BYTES, _SEGMENT_MAX_AGE_MS, _SEGMENT_IDLE_MS and
    _MAX_BYTES set."""
    return Limits(
        segment_max_bytes=settings.spool_segment_max_bytes,
        segment_max_age_ms=settings.spool_segment_max_age_ms,
        segment_idle_ms=settings.spool_segment_idle_ms,
        max_bytes=settings.spool_max_bytes,
    )


class SegmentWriter:
    """Appends whole lines to this writer's open segment in `directory`, bounded by `max_bytes`
    for the whole directory; publishes the spool's size and bound (beacon_spool_bytes,
    _segments, _max_bytes)."""

    def __init__(
        self,
        directory: Path,
        metrics: CollectorMetrics,
        *,
        label: str,
        tag: str,
        **limits: Unpack[Limits],
    ) -> None:
        self.directory = directory
        self.metrics = metrics
        self.label = label  # in log lines and probe names: "spool", "WAL"
        self.tag = tag  # before the sequence number in segment names: one per writer
        self.log = logging.getLogger(f"beacon.{label.lower()}")
        self.segment_max_bytes = limits["segment_max_bytes"]
        self.segment_max_age_ns = limits["segment_max_age_ms"] * 1_000_000
        self.segment_idle_ns = limits["segment_idle_ms"] * 1_000_000
        self.max_bytes = limits["max_bytes"]
        metrics.spool_max_bytes.set(self.max_bytes)  # the spool alert's line
        self.fd = -1
        self.path: Path | None = None
        # Monotonic, as the idle time: a wall clock stepped back would keep a segment open
        # under steady traffic until it caught up (its name keeps the wall clock's time).
        self.opened_ns = 0
        self.segment_bytes = 0
        # The open segment reached the file size limit (RLIMIT_FSIZE: EFBIG): every later write
        # to it would fail so, until it closed at its age; it is full whatever its size.
        self.at_file_limit = False
        self.written_ns = 0  # monotonic time of the last write
        self._seq = 0
        # The bound: the directory's size at the last scan plus what this writer wrote since.
        self.scanned_bytes = 0
        self.appended_bytes = 0
        # Closed or abandoned segments whose fd still waits for its fsync and close.
        self._retired: list[int] = []
        self.error: str | None = None
        self.failures = 0  # failed writes: a probe's answer is stale after one
        # One rescan at a time: two at once (a write-ahead log's own, and the Kafka replay's
        # after a deletion) took the same appended bytes off twice, and the bound let that
        # much more in; and a probe begun before the other's could put back a stale error.
        self._rescanning = asyncio.Lock()
        directory.mkdir(parents=True, exist_ok=True)
        for path, exc in recover_orphans(directory):
            self.log.error("cannot close %s, left open by a dead writer (%s); left as it is, "
                           "for the next start", path.name, exc)  # fmt: skip
        self._publish(*spool_size(directory))

    # -- the bound -----------------------------------------------------------------------------

    @property
    def used_bytes(self) -> int:
        """The spool's size as far as this writer knows."""
        return self.scanned_bytes + self.appended_bytes

    def near_full(self) -> bool:
        """The spool is within its headroom of its bound: unready, before events are refused
        (the spool sink and the write-ahead log alike)."""
        return self.used_bytes + headroom_bytes(self.max_bytes) >= self.max_bytes

    def full(self) -> bool:
        """The open segment has reached its size, or the file size limit: close it."""
        return self.segment_bytes >= self.segment_max_bytes or self.at_file_limit

    def aged(self) -> bool:
        """The open segment has reached its age, or no line has come for the idle time: close
        it. The pause closes it so that readers take the end of a burst at once, not an age
        later."""
        if self.fd < 0:
            return False
        if time.monotonic_ns() - self.written_ns >= self.segment_idle_ns:
            return True
        return time.monotonic_ns() - self.opened_ns >= self.segment_max_age_ns

    # -- file work (blocking) ------------------------------------------------------------------

    def write(self, data: bytes, *, all_or_none: bool = False) -> None:
        """Append `data` (whole lines) to the open segment, opening one first if none is.

        Raises OSError, recorded as the writer's error. A ShortWrite's whole lines stay and are
        counted (`all_or_none`: none stays); its torn rest is cut off, or, when that fails too,
        the segment is abandoned (never closed torn). Unbuffered: in the OS now, so a crash of
        this process loses nothing written.
        """
        try:
            if self.fd < 0:
                self._seq += 1
                self.fd, self.path = open_segment(self.directory, f"{self.tag}{self._seq:06d}")
                self.opened_ns = time.monotonic_ns()
                self.segment_bytes = 0
                self.at_file_limit = False
            append_lines(self.fd, data, self.segment_bytes, all_or_none=all_or_none)
        except OSError as exc:
            self.failed(exc)
            if isinstance(exc, ShortWrite):
                if exc.cut:
                    self.segment_bytes += exc.kept_bytes
                    self.appended_bytes += exc.kept_bytes
                else:
                    self.log.error(
                        "cannot cut a torn %s write (%s); recovery will cut it", self.label, exc
                    )
                    self.abandon()
            # Closed at once by its writer when it holds lines (and was not abandoned torn):
            # an empty one fails alike at any size (a limit of a byte, or the disk itself).
            self.at_file_limit = (
                exc.errno == errno.EFBIG and self.fd >= 0 and self.segment_bytes > 0
            )
            raise
        self.error = None
        self.segment_bytes += len(data)
        self.appended_bytes += len(data)
        self.written_ns = time.monotonic_ns()

    def sync(self) -> None:
        """fsync the open segment."""
        if self.fd >= 0:
            os.fsync(self.fd)

    def seal(self) -> None:
        """Give the open segment its closed name now (readers may take it) and retire its fd
        for `finish`; one with nothing in it (its first write failed) is removed instead, or
        a disk that stays full would leave an empty segment a tick. Raises OSError when the
        rename fails: the segment stays open."""
        assert self.path is not None
        if self.segment_bytes:
            self.path.rename(close_path(self.path))
        else:
            self.path.unlink()
        fd = self.fd
        self._retire()
        # Unlocked after the rename: replay takes closed segments under their flock.
        fcntl.flock(fd, fcntl.LOCK_UN)

    def abandon(self) -> None:
        """Stop writing to the open segment and leave it `.open`: the next start's recovery
        closes it, cut back to its last whole line (readers never take an `.open` segment).
        The next write opens a new one."""
        self._retire()

    def retired(self) -> list[int]:
        """The fds of sealed and abandoned segments, handed over for `finish`."""
        fds, self._retired = self._retired, []
        return fds

    def finish(self, fds: list[int]) -> None:
        """fsync and close retired fds (closing releases the flock), then make the renames
        durable."""
        for fd in fds:
            try:
                os.fsync(fd)
            except OSError as exc:  # the page cache still holds it: only a machine crash loses it
                self.log.error("fsync of a closed %s segment failed: %s", self.label, exc)
            finally:
                os.close(fd)
        if fds:
            fsync_dir(self.directory)

    # -- state ---------------------------------------------------------------------------------

    def failed(self, exc: OSError) -> None:
        """Remember why the writer cannot write: readiness fails until it can again."""
        self.error = exc.strerror or str(exc)
        self.failures += 1

    async def rescan(self) -> None:
        """Recount the spool directory (replay and consumers free space in it); after a write
        error, find out whether a block can be written now."""
        async with self._rescanning:
            await self._rescan()

    async def _rescan(self) -> None:
        counted = self.appended_bytes
        try:
            total, count = await asyncio.to_thread(spool_size, self.directory)
        except OSError as exc:  # the directory is gone or unreadable: nothing can be written
            self.failed(exc)
            return
        if self.error is not None:
            failures = self.failures
            reason = await asyncio.to_thread(can_write, self.directory, self.label.lower())
            if failures == self.failures:  # no write failed meanwhile
                self.error = reason
        self.appended_bytes -= counted  # writes during the scan may count twice: errs safe
        self._publish(total, count)

    def _publish(self, total: int, count: int) -> None:
        self.scanned_bytes = total
        self.metrics.spool_bytes.set(total)
        self.metrics.spool_segments.set(count)

    def _retire(self) -> None:
        self._retired.append(self.fd)
        self.fd, self.path = -1, None
