"""The disk spool: append-only NDJSON segment files, rotated by size and age, bounded in bytes.

A segment is written as `<created_ms>-<pid>-<seq>.ndjson.open` under an exclusive flock and
renamed to `.ndjson` when rotated; readers only ever see closed, immutable segments. A
`.open` file whose lock can be taken belongs to a dead writer: it is closed on the next start,
cut back to its last whole line. A live writer whose write stops short (a full disk: ENOSPC, or
a file past RLIMIT_FSIZE: EFBIG) cuts the segment back to its last whole line at once, so a
closed segment never holds a torn line, and counts as spooled only the events whose whole line
is in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import time
from pathlib import Path

from collector.metrics import CollectorMetrics
from contract.segments import CLOSED_SUFFIX, OPEN_SUFFIX

NEW_SUFFIX = ".ndjson.new"
STALE_NEW_S = 60.0
# Readiness fails this close to the byte bound, before single events start to be refused.
HEADROOM_BYTES = 64 * 1024
# After a write error, a writer is ready again once a file of this size (one file system
# block) can be written beside its segments: a full disk frees space, a volume comes back.
PROBE_BYTES = 4096
PROBE_PREFIX = ".probe-"  # no segment suffix: readers, recovery and size scans skip it


class ShortWrite(OSError):
    """A write that stopped part way: `lines` whole lines (`kept_bytes`) of it stayed, the torn
    rest was cut off, unless `cut` is False (the cut failed too: the segment is torn)."""

    def __init__(self, cause: OSError, lines: int, kept_bytes: int, cut: bool) -> None:
        super().__init__(cause.errno, cause.strerror)
        self.lines = lines
        self.kept_bytes = kept_bytes
        self.cut = cut


def append_lines(fd: int, data: bytes, size: int) -> None:
    """Append `data` (whole lines) to the segment `fd` of `size` bytes, opened O_APPEND.

    A write that stops part way is cut back to its last whole line and raised as ShortWrite
    (an error before any byte is written is raised as it comes): a segment holds whole lines.
    """
    written = 0
    try:
        while written < len(data):
            # A short count is retried: the next write returns why (ENOSPC, EFBIG).
            count = os.write(fd, memoryview(data)[written:])
            if count == 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            written += count
    except OSError as exc:
        if not written:
            raise
        kept = data.rfind(b"\n", 0, written) + 1
        try:
            os.ftruncate(fd, size + kept)
        except OSError:
            cut = False
        else:
            cut = True
        raise ShortWrite(exc, data.count(b"\n", 0, kept), kept, cut) from exc


def can_write(directory: Path, tag: str) -> str | None:
    """None when a block can be written in `directory` now, else why not (strerror). `tag`
    keeps the probe files of several writers in one process apart."""
    path = directory / f"{PROBE_PREFIX}{os.getpid()}-{tag}"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            append_lines(fd, b"\0" * (PROBE_BYTES - 1) + b"\n", 0)
        finally:
            os.close(fd)
            path.unlink()
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def fsync_dir(directory: Path) -> None:
    """Make renames and unlinks in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def recover_orphans(directory: Path) -> int:
    """Close segments left open by dead writers; returns the torn bytes cut off their tails.

    Safe beside live writers: a segment is `.open` only once its writer holds the lock
    (see SpoolSink._open_segment), and a file renamed under our feet is simply skipped.
    """
    torn_bytes = 0
    for path in sorted(directory.glob("*" + OPEN_SUFFIX)):
        try:
            with open(path, "r+b") as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live writer owns it
                data = f.read()
                whole = data.rfind(b"\n") + 1
                torn_bytes += len(data) - whole
                f.truncate(whole)
                f.flush()
                os.fsync(f.fileno())
            if whole:
                path.rename(path.with_name(path.name[: -len(".open")]))
            else:
                path.unlink()
        except FileNotFoundError:
            continue  # its writer closed it while we looked: not an orphan
    # A writer that died between creating and renaming its segment leaves an empty `.new`.
    for path in directory.glob("*" + NEW_SUFFIX):
        with contextlib.suppress(FileNotFoundError):
            if time.time() - path.stat().st_mtime > STALE_NEW_S:
                path.unlink()
    fsync_dir(directory)
    return torn_bytes


def open_segment(directory: Path, tag: str) -> tuple[int, Path, int]:
    """A new `.open` segment, locked by this process: (fd, path, created_ms).

    `tag` keeps the names of several writers in one process apart (the name also holds the
    creation time and the pid). The file is locked under a name recovery ignores, then renamed:
    an `.open` file is always locked by a live writer, so another process's recovery can never
    take it mid-creation.
    """
    created_ms = time.time_ns() // 1_000_000
    name = f"{created_ms:013d}-{os.getpid():07d}-{tag}"
    new_path = directory / (name + NEW_SUFFIX)
    fd = os.open(new_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        path = directory / (name + OPEN_SUFFIX)
        new_path.rename(path)
    except BaseException:
        os.close(fd)
        raise
    return fd, path, created_ms


def close_path(path: Path) -> Path:
    """The name an `.open` segment gets when it is closed."""
    return path.with_name(path.name[: -len(".open")])


def spool_size(directory: Path) -> tuple[int, int]:
    """(bytes, segments) of the open and closed segments in `directory`."""
    total = 0
    count = 0
    for entry in os.scandir(directory):
        if entry.name.endswith((CLOSED_SUFFIX, OPEN_SUFFIX)):
            try:
                total += entry.stat().st_size
                count += 1
            except FileNotFoundError:
                continue  # a consumer removed it while we looked
    return total, count


class SpoolSink:
    """Sink that appends events to local segment files; all file work runs in a thread."""

    def __init__(
        self,
        directory: Path,
        metrics: CollectorMetrics,
        *,
        segment_max_bytes: int,
        segment_max_age_ms: int,
        max_bytes: int,
    ) -> None:
        self.directory = directory
        self.metrics = metrics
        self.segment_max_bytes = segment_max_bytes
        self.segment_max_age_ms = segment_max_age_ms
        self.max_bytes = max_bytes
        self._fd = -1
        self._path: Path | None = None
        self._opened_ms = 0
        self._segment_bytes = 0
        self._seq = 0
        self._total_bytes = 0
        self._error: str | None = None
        self._closed = False
        directory.mkdir(parents=True, exist_ok=True)
        recover_orphans(directory)
        self._rescan()

    # -- the protocol --------------------------------------------------------------------

    async def send(self, events: list[bytes]) -> None:
        if self._closed:
            raise RuntimeError("send after close")
        room = self.max_bytes - self._total_bytes
        fits = 0
        size = 0
        for raw in events:  # whole events only: keep the ones that fit, count the rest
            if size + len(raw) + 1 > room:
                break
            size += len(raw) + 1
            fits += 1
        if fits < len(events):
            self.metrics.events_dropped.labels("spool_full").inc(len(events) - fits)
        if fits:
            data = b"\n".join(events[:fits]) + b"\n"
            try:
                await asyncio.to_thread(self._append, data)
            except OSError as exc:
                # Spooled: the events whose whole line is in the segment; the rest are lost.
                kept = exc.lines if isinstance(exc, ShortWrite) else 0
                self._error = exc.strerror or str(exc)
                if kept:
                    self.metrics.sink_events.labels("spooled").inc(kept)
                self.metrics.events_dropped.labels("spool_error").inc(fits - kept)
                return
            self._error = None
            self.metrics.sink_events.labels("spooled").inc(fits)

    async def flush(self) -> None:
        try:
            await asyncio.to_thread(self._flush, False)
        except OSError as exc:
            self._error = exc.strerror or str(exc)
        else:
            if self._error is not None:
                # No event may come while readiness fails: ready again once the disk can
                # take a write, not only after the next successful one.
                self._error = await asyncio.to_thread(can_write, self.directory, "sink")

    def healthy(self) -> bool:
        headroom = min(HEADROOM_BYTES, self.max_bytes // 16)
        return (
            not self._closed
            and self._error is None
            and self._total_bytes + headroom < self.max_bytes
        )

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await asyncio.to_thread(self._flush, True)

    # -- file work (in a thread) -----------------------------------------------------------

    def _append(self, data: bytes) -> None:
        if self._fd < 0:
            self._open_segment()
        try:
            # Unbuffered: in the OS now, so a crash of this process loses nothing written.
            append_lines(self._fd, data, self._segment_bytes)
        except ShortWrite as exc:
            if not exc.cut:  # a torn line: never closed as it is
                self._abandon_segment()
                raise
            self._segment_bytes += exc.kept_bytes
            self._total_bytes += exc.kept_bytes
            raise
        self._segment_bytes += len(data)
        self._total_bytes += len(data)
        if self._segment_bytes >= self.segment_max_bytes:
            self._rotate()

    def _flush(self, final: bool) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)
            aged = time.time_ns() // 1_000_000 - self._opened_ms >= self.segment_max_age_ms
            if final or aged:
                self._rotate()
        self._rescan()

    def _open_segment(self) -> None:
        self._seq += 1
        self._fd, self._path, self._opened_ms = open_segment(self.directory, f"{self._seq:06d}")
        self._segment_bytes = 0

    def _rotate(self) -> None:
        assert self._fd >= 0 and self._path is not None
        os.fsync(self._fd)
        self._path.rename(close_path(self._path))
        os.close(self._fd)  # closing releases the flock
        self._fd = -1
        self._path = None
        fsync_dir(self.directory)

    def _abandon_segment(self) -> None:
        """Leave the segment `.open` and unlocked: the next start's recovery cuts its torn tail
        (readers never take an `.open` segment). The next event opens a new one."""
        fd, self._fd, self._path = self._fd, -1, None
        os.close(fd)

    def _rescan(self) -> None:
        total, count = spool_size(self.directory)
        self._total_bytes = total
        self.metrics.spool_bytes.set(total)
        self.metrics.spool_segments.set(count)
