"""One owner per role of a data directory, and who it is.

Two collectors must not write one spool, and two consumers must not read one spool or open one
embedded store (chDB refuses a second process, and a second reader would store events twice).
Nor may two kinds of process read one spool: a collector with the Kafka sink sends its spooled
segments to Kafka, and a consumer without Kafka stores them; both on one data directory (half
moved from one mode to the other) would store each event twice and stop on segments the other
deleted.
So a process claims its role: an exclusive `flock` on `<data_dir>/<role>.lock`, which the
kernel drops when the last process holding it ends, however it ends (no stale lock after a
crash). The file says who holds it (pid, command, store URL) for the one line a refused command
prints, and for `beacon report`, which goes through the owner's store port.

A supervisor's children share its claim: they inherit the locked descriptor and find its number
in `BEACON_CLAIMED_FDS` (`collector=5,consumer=6`); the same open file holds the lock, so the
role stays claimed until the last of them ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

CLAIMS_ENV = "BEACON_CLAIMED_FDS"
COLLECTOR = "collector"  # writes the spool
CONSUMER = "consumer"  # reads the spool, owns the embedded store and its query port
SPOOL_READER = "spool-reader"  # takes closed segments: into Kafka (a collector) or the store


@dataclasses.dataclass(frozen=True)
class Owner:
    """What a lock file says of the process holding it."""

    pid: int
    command: str
    since: str = ""
    store_url: str = ""

    def __str__(self) -> str:
        since = f", since {self.since}" if self.since else ""
        return f"{self.command} (pid {self.pid}{since})"


class InUse(Exception):
    """The role is held by another process."""

    def __init__(self, data_dir: Path, role: str, owner: Owner) -> None:
        super().__init__(f"{data_dir}/ is in use by {owner}")
        self.data_dir = data_dir
        self.role = role
        self.owner = owner


@dataclasses.dataclass(frozen=True)
class Claim:
    """A held role: `fd` is open and locked until this process (and its children) end."""

    role: str
    fd: int


def lock_path(data_dir: Path, role: str) -> Path:
    return data_dir / f"{role}.lock"


def inherited(text: str) -> dict[str, int]:
    """The claims a supervisor passed down: `collector=5,consumer=6` -> {role: fd}."""
    claims = {}
    for item in text.split(","):
        role, _, fd = item.partition("=")
        if fd.strip().isdigit():
            claims[role.strip()] = int(fd)
    return claims


def claimed_env(claims: Mapping[str, Claim]) -> str:
    return ",".join(f"{role}={claim.fd}" for role, claim in claims.items())


def _same_file(fd: int, path: Path) -> bool:
    try:
        held, there = os.fstat(fd), path.stat()
    except OSError:
        return False
    return (held.st_dev, held.st_ino) == (there.st_dev, there.st_ino)


def claim(
    data_dir: Path,
    role: str,
    command: str,
    passed: Mapping[str, int] | None = None,
    store_url: str = "",
) -> Claim:
    """Hold `role` of `data_dir` for this process, or raise InUse naming who holds it."""
    path = lock_path(data_dir, role)
    fd = (passed or {}).get(role)
    if fd is not None and _same_file(fd, path):
        # The supervisor's own open file: locking it again succeeds and changes nothing.
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return Claim(role, fd)
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise InUse(data_dir, role, read_owner(path)) from None
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    record = {"pid": os.getpid(), "command": command, "since": since, "store_url": store_url}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode() + b"\n", 0)
    return Claim(role, fd)


def release(claim_: Claim) -> None:
    """Let go of a claim this process made (its children's copies hold it on, if any)."""
    os.close(claim_.fd)


@contextlib.contextmanager
def holding(data_dir: Path, role: str, command: str) -> Iterator[Claim]:
    """The role claimed for a block: a command that opens the store for a moment."""
    held = claim(data_dir, role, command)
    try:
        yield held
    finally:
        release(held)


def read_owner(path: Path) -> Owner:
    """What the lock file says; a holder that has not written it yet is 'another process'."""
    try:
        record = json.loads(path.read_text())
        return Owner(
            int(record["pid"]), str(record["command"]), record["since"], record["store_url"]
        )
    except (OSError, ValueError, KeyError, TypeError):
        return Owner(0, "another process")


def owner(data_dir: Path, role: str) -> Owner | None:
    """Who holds `role` now; None when nobody does (a file an ended owner left says nothing)."""
    path = lock_path(data_dir, role)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return read_owner(path)
    finally:
        os.close(fd)  # also drops the shared lock when it was taken
    return None
