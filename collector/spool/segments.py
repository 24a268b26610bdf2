"""Segment files on disk: NDJSON events, one per line, under names that sort by creation time.

A segment is written as `<created_ms>-<pid>-<tag>-<nonce>.ndjson.open` under an exclusive flock and
renamed to `.ndjson` when closed; readers only ever see closed, immutable segments. A `.open`
file whose lock can be taken belongs to a dead writer: it is closed on the next start, cut back
to its last whole line. A write that stops short (a full disk: ENOSPC, or a file past
RLIMIT_FSIZE: EFBIG) is cut back to its last whole line at once, so a closed segment never
holds a torn line.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path

from contract.segments import CLOSED_SUFFIX, OPEN_SUFFIX, fsync_dir

NEW_SUFFIX = ".ndjson.new"
STALE_NEW_S = 60.0
# After a write error, a writer is ready again once a file of this size (one file system
# block) can be written beside its segments: a full disk frees space, a volume comes back.
PROBE_BYTES = 4096
PROBE_PREFIX = ".probe-"  # no segment suffix: readers, recovery and size scans skip it
NONCE_BYTES = 8  # of a segment's name: two names alike at the same ms and pid 1 in 2**64


class ShortWrite(OSError):
    """A write that stopped part way: `lines` whole lines (`kept_bytes`) of it stayed, the torn
    rest was cut off, unless `cut` is False (the cut failed too: the segment is torn)."""

    def __init__(self, cause: OSError, lines: int, kept_bytes: int, cut: bool) -> None:
        super().__init__(cause.errno, cause.strerror)
        self.lines = lines
        self.kept_bytes = kept_bytes
        self.cut = cut


def append_lines(fd: int, data: bytes, size: int, *, all_or_none: bool = False) -> None:
    """Append `data` (whole lines) to the segment `fd` of `size` bytes, opened O_APPEND.

    A write that stops part way is cut back to its last whole line (`all_or_none`: to `size`,
    none of it) and raised as ShortWrite (an error before any byte is written is raised as it
    comes): a segment holds whole lines.
    """
    written = 0
    try:
        written = os.write(fd, data)  # all of it, but on a full disk
        while written < len(data):
            # A short count is retried: the next write returns why (ENOSPC, EFBIG).
            count = os.write(fd, memoryview(data)[written:])
            if count == 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            written += count
    except OSError as exc:
        if not written:
            raise
        kept = 0 if all_or_none else data.rfind(b"\n", 0, written) + 1
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


def close_path(path: Path) -> Path:
    """The name an `.open` segment gets when it is closed."""
    return path.with_name(path.name.removesuffix(OPEN_SUFFIX) + CLOSED_SUFFIX)


def recover_orphans(directory: Path) -> list[tuple[Path, OSError]]:
    """Close segments left open by dead writers, cut back to their last whole line; returns
    those the disk refused (EIO, EACCES), left as they are for a later try. One such file
    stopped the recovery before: every writer's start (no collector took traffic), and the
    segments after it stayed open, their answered events never read.

    Safe beside live writers: a segment is `.open` only once its writer holds the lock
    (see open_segment), and a file renamed under our feet is simply skipped.
    """
    failed: list[tuple[Path, OSError]] = []
    # A writer that died between creating and renaming its segment leaves an empty `.new`; a
    # machine crash that lost the rename (the directory not synced since) leaves one holding
    # the lines written after it: it is an orphan `.open`, closed below, whatever its age (a
    # live writer's `.new` is always empty: renamed before its first write).
    for path in directory.glob("*" + NEW_SUFFIX):
        try:
            stat = path.stat()
            if stat.st_size:
                path.rename(path.with_name(path.name.removesuffix(NEW_SUFFIX) + OPEN_SUFFIX))
            elif time.time() - stat.st_mtime > STALE_NEW_S:  # else perhaps being created
                path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            failed.append((path, exc))
    for path in sorted(directory.glob("*" + OPEN_SUFFIX)):
        try:
            _close_orphan(path)
        except FileNotFoundError:
            continue  # its writer closed it while we looked: not an orphan
        except OSError as exc:
            failed.append((path, exc))
    fsync_dir(directory)
    return failed


def _close_orphan(path: Path) -> None:
    """Cut `path` back to its last whole line and close it (remove it when none), unless a live
    writer holds it."""
    with open(path, "r+b") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # a live writer owns it
        data = f.read()
        whole = data.rfind(b"\n") + 1
        f.truncate(whole)
        f.flush()
        os.fsync(f.fileno())
    if whole:
        path.rename(close_path(path))
    else:
        path.unlink()


def open_segment(directory: Path, tag: str) -> tuple[int, Path]:
    """A new `.open` segment, locked by this process: (fd, path).

    `tag` keeps the names of several writers in one process apart (the name also holds the
    creation time and the pid). The random nonce keeps apart the names of writers on other
    hosts (containers share pids): a consumer's dedup token names a batch by its segments'
    names and byte ranges, so two spools read into one ClickHouse server must never share a
    name, or one's batch is dropped as a repeat of the other's. The file is locked under a name
    recovery ignores, then renamed: an `.open` file is always locked by a live writer, so
    another process's recovery can never take it mid-creation.
    """
    created_ms = time.time_ns() // 1_000_000
    name = f"{created_ms:013d}-{os.getpid():07d}-{tag}-{os.urandom(NONCE_BYTES).hex()}"
    new_path = directory / (name + NEW_SUFFIX)
    fd = os.open(new_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        path = directory / (name + OPEN_SUFFIX)
        new_path.rename(path)
    except BaseException:
        os.close(fd)
        raise
    return fd, path


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
