"""The spool's segment files: NDJSON events, one per line, written by the collector's spool and
write-ahead log and read by the consumer's spool source."""

from __future__ import annotations

import os
from pathlib import Path

CLOSED_SUFFIX = ".ndjson"  # whole: every line is an event, nothing is written to it again
OPEN_SUFFIX = ".ndjson.open"  # being written; renamed to CLOSED_SUFFIX when done


def closed_segments(directory: Path) -> list[Path]:
    """Closed segments, oldest first (names start with the creation time in ms)."""
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(CLOSED_SUFFIX))
    except FileNotFoundError:
        return []
    return [directory / n for n in names]


def writing(directory: Path) -> bool:
    """Whether a writer has a segment open in `directory` (lines may still come to it)."""
    try:
        return any(n.endswith(OPEN_SUFFIX) for n in os.listdir(directory))
    except FileNotFoundError:
        return False


def fsync_dir(directory: Path) -> None:
    """Make renames and unlinks in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
