"""The disk spool: append-only NDJSON segment files, rotated by size and age, bounded in bytes.

A segment is written as `<created_ms>-<pid>-<seq>.ndjson.open` under an exclusive flock and
renamed to `.ndjson` when rotated; readers only ever see closed, immutable segments. A
`.open` file whose lock can be taken belongs to a dead writer: it is closed on the next start,
cut back to its last whole line.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import BinaryIO

from collector.metrics import CollectorMetrics

CLOSED_SUFFIX = ".ndjson"
OPEN_SUFFIX = ".ndjson.open"
NEW_SUFFIX = ".ndjson.new"
STALE_NEW_S = 60.0
# Readiness fails this close to the byte bound, before single events start to be refused.
HEADROOM_BYTES = 64 * 1024


def closed_segments(directory: Path) -> list[Path]:
    """Closed segments, oldest first (names start with the creation time in ms)."""
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(CLOSED_SUFFIX))
    except FileNotFoundError:
        return []
    return [directory / n for n in names]


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
        self._file: BinaryIO | None = None
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
                self._error = exc.strerror or str(exc)
                self.metrics.events_dropped.labels("spool_error").inc(fits)
                return
            self._error = None
            self.metrics.sink_events.labels("spooled").inc(fits)

    async def flush(self) -> None:
        try:
            await asyncio.to_thread(self._flush, False)
        except OSError as exc:
            self._error = exc.strerror or str(exc)

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
        if self._file is None:
            self._open_segment()
        assert self._file is not None
        self._file.write(data)
        self._file.flush()  # to the OS now, so a crash of this process loses nothing written
        self._segment_bytes += len(data)
        self._total_bytes += len(data)
        if self._segment_bytes >= self.segment_max_bytes:
            self._rotate()

    def _flush(self, final: bool) -> None:
        if self._file is not None:
            os.fsync(self._file.fileno())
            aged = time.time_ns() // 1_000_000 - self._opened_ms >= self.segment_max_age_ms
            if final or aged:
                self._rotate()
        self._rescan()

    def _open_segment(self) -> None:
        self._seq += 1
        fd, self._path, self._opened_ms = open_segment(self.directory, f"{self._seq:06d}")
        self._file = os.fdopen(fd, "ab")
        self._segment_bytes = 0

    def _rotate(self) -> None:
        assert self._file is not None and self._path is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._path.rename(close_path(self._path))
        self._file.close()  # closing releases the flock
        fsync_dir(self.directory)
        self._file = None
        self._path = None

    def _rescan(self) -> None:
        total, count = spool_size(self.directory)
        self._total_bytes = total
        self.metrics.spool_bytes.set(total)
        self.metrics.spool_segments.set(count)
