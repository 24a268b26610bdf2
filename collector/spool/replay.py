"""Spool replay: send closed spool segments to Kafka, oldest first, once Kafka answers again.

A segment is read and sent a part at a time (REPLAY_CHUNK_BYTES), and deleted only after
Kafka acknowledged every batch of it. A segment that fails part-way stays, and is sent again
from the first batch not acknowledged, by this process or another on the same directory, and
after a restart: how far Kafka took it is kept on the segment itself (an extended attribute,
ACKED_XATTR). Where the file system keeps none, this process goes on from there and another
sends it whole: duplicates are fine (consumers drop them by event_id), loss is not. One sent
whole that cannot be deleted (a directory gone read-only) is not sent again; its deletion is
tried each pass. An event Kafka refuses as too large alone in its batch (the topic's
max.message.bytes) can never go: it is dropped and counted, or it would hold every segment
behind it for good.
Several collector processes may share one spool directory, so a segment is replayed under an
exclusive flock, and one already unlinked is skipped. Where the events go is the Kafka
sink's producer link (collector/sinks/kafka_link.py), seen here through `Producer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from collector.loglimit import LimitedLog
from collector.metrics import CollectorMetrics
from contract.segments import closed_segments

log = logging.getLogger("beacon.kafka.replay")

# How often the replay looks for closed segments while Kafka is up (the spool closes a segment
# after spool_segment_max_age_ms, so looking much more often would find nothing new).
REPLAY_POLL_INTERVAL_S = 0.5
# A segment (up to BEACON_SPOOL_SEGMENT_MAX_BYTES, 16 MiB) is read and sent this much at a
# time, each part acknowledged before the next is read: replay holds about this much.
REPLAY_CHUNK_BYTES = 1 << 20
# Bytes of a segment Kafka acknowledged, as decimal text, kept on the segment: it goes with
# the file, and no listing of the directory sees it.
ACKED_XATTR = "user.beacon.acked_bytes"


class Producer(Protocol):
    """What replay needs of the Kafka sink's link: whether Kafka is up, a wake-up when it comes
    up, record batches produced and their acks awaited ("acked" or why not)."""

    up: bool

    def notify_on_up(self, event: asyncio.Event) -> None: ...

    async def produce(self, events: list[bytes]) -> tuple[list[Any], list[bytes]]: ...

    async def wait_ack(self, sent: Any) -> str: ...


def open_locked(path: Path) -> BinaryIO | None:
    """The segment, open and flocked; None if gone or another process has it."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(f.fileno()).st_nlink == 0:  # replayed and deleted while we waited
            raise BlockingIOError
        return f
    except BlockingIOError:
        f.close()
        return None
    except BaseException:
        f.close()
        raise


def read_part(f: BinaryIO, max_bytes: int) -> tuple[list[bytes], list[int]]:
    """The next events of an open segment, about `max_bytes` of them, never one cut in two
    ([] at its end only), and the file offset just past each event's line."""
    events: list[bytes] = []
    ends: list[int] = []
    # A part of blank lines only is read past: [] would end the segment, and its deletion
    # would take the events after them.
    while not events and (data := f.read(max_bytes)):
        start = f.tell() - len(data)
        if not data.endswith(b"\n"):
            data += f.readline()  # the rest of the last event
        at = start
        for line in data.split(b"\n"):
            at = min(at + len(line) + 1, start + len(data))
            if line:
                events.append(line)
                ends.append(at)
    return events, ends


def acked_bytes(f: BinaryIO) -> int:
    """How far Kafka took the segment, as a replay kept it (0: none kept, or no file system
    support: sent from its start)."""
    try:
        return int(os.getxattr(f.fileno(), ACKED_XATTR))
    except (OSError, ValueError):
        return 0


def keep_acked(f: BinaryIO, position: int) -> None:
    """Keep how far Kafka took the segment for whoever replays it next. Not made durable: a
    crash that loses it costs duplicates, not events."""
    with contextlib.suppress(OSError):  # no extended attributes there: this process remembers
        os.setxattr(f.fileno(), ACKED_XATTR, str(position).encode())


def delete(path: Path) -> None:
    """A replayed segment's end (the one place a directory that refuses it is met)."""
    path.unlink()


class SpoolReplayer:
    """Background task moving spooled events into Kafka through the sink's producer link."""

    def __init__(
        self,
        link: Producer,
        directory: Path,
        metrics: CollectorMetrics,
        after_delete: Callable[[], Awaitable[None]],
    ) -> None:
        self.link = link
        self.directory = directory
        self.metrics = metrics
        self.after_delete = after_delete  # lets the spool recount its bytes (its size bound)
        self.chunk_bytes = REPLAY_CHUNK_BYTES
        # Bytes of a segment Kafka acknowledged, by (name, inode): a failed pass goes on from
        # there (its first batch not acknowledged), not from the start, so a batch refused
        # again and again repeats nothing.
        self._acked_bytes: dict[tuple[str, int], int] = {}
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._limited = LimitedLog(log)
        # The loop time a drain ends at: checked between parts too, as its timeout alone can
        # be lost (a send's wait_for, Python 3.11, swallows a cancellation that comes as the
        # send completes), and a healthy Kafka would then take the whole spool past it.
        self._drain_until: float | None = None
        link.notify_on_up(self._wake)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="beacon-kafka-replay")

    def wake(self) -> None:
        """Look for closed segments now (a write-ahead log just closed one)."""
        self._wake.set()

    async def stop(self) -> None:
        """Stop after the part in progress (bounded by the producer's ack timeout)."""
        self._stop.set()
        self._wake.set()
        if self._task is not None:
            await self._task

    async def drain(self, seconds: float) -> None:
        """Send what is closed on disk, for at most `seconds` (at shutdown: a spool on a pod's
        own volume goes with the pod; what is left is sent at the next start). A link down
        now (taken for down after a late ack, a broker failing over) is back within a second:
        its time is waited for, not given up at once, and a part not taken is sent again."""
        loop = asyncio.get_running_loop()
        deadline = self._drain_until = loop.time() + seconds
        try:
            async with asyncio.timeout_at(deadline):
                while True:
                    if self._drained():
                        raise TimeoutError
                    self._wake.clear()  # the link's up, from here on (the run task has ended)
                    if self.link.up:
                        if await self._replay_all(until_stopped=False):
                            return
                        await asyncio.sleep(REPLAY_POLL_INTERVAL_S)  # not at network speed
                    elif await asyncio.to_thread(closed_segments, self.directory):
                        # Bounded on its own too: a send's wait_for (Python 3.11) can swallow
                        # the cancellation of a timeout that fires as its send completes.
                        await asyncio.wait_for(self._wake.wait(), deadline - loop.time())
                    else:
                        return  # nothing to send
        except TimeoutError:
            log.warning("spool not fully replayed at shutdown; the rest goes at next start")
        except Exception:  # the segments stay on disk: the next start sends them
            log.exception("spool replay at shutdown failed; the rest goes at next start")

    def _drained(self) -> bool:
        """A drain's time is up."""
        until = self._drain_until
        return until is not None and asyncio.get_running_loop().time() >= until

    async def _run(self) -> None:
        while not self._stop.is_set():
            if self.link.up:
                try:
                    await self._replay_all()
                except Exception:  # a bug or a disk error must not end replay for good
                    log.exception("spool replay failed; retrying")
            if self._stop.is_set():  # stopped mid-segment: its wake-up is not waited for again
                break
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), REPLAY_POLL_INTERVAL_S)

    async def _replay_all(self, *, until_stopped: bool = True) -> bool:
        """Send every closed segment; True if each is done (_replay)."""
        paths = await asyncio.to_thread(closed_segments, self.directory)
        names = {path.name for path in paths}
        for key in [k for k in self._acked_bytes if k[0] not in names]:
            del self._acked_bytes[key]  # deleted by another process
        for path in paths:
            if (until_stopped and self._stop.is_set()) or not self.link.up or self._drained():
                return False
            if not await self._replay(path, until_stopped):
                return False  # Kafka failed us, or a stop: try again once it is back up
        return True

    def _unreadable(self, path: Path, exc: OSError) -> bool:
        """A segment the disk does not give (EIO, EACCES): the ones after it go on (True), or
        one would hold every segment behind it for good; it is tried again at the next pass,
        from its first part not acknowledged."""
        self._limited.warning("unreadable", "cannot read %s to replay it (%s); the segments "
                              "after it go on, and it is tried again", path.name, exc)  # fmt: skip
        return True

    def _drop_refused(self, sizes_bytes: list[int]) -> None:
        """Events no batch can carry: a batch of one, refused as too large. Counted as lost
        (again only where the segment cannot keep how far Kafka took it: sent again from its
        start by the next start or another process, as the replayed count counts it)."""
        self.metrics.events_dropped.labels("too_large").inc(len(sizes_bytes))
        self._limited.warning("too_large", "Kafka refused %d events as too large even alone "
                              "(up to %d bytes: raise the topic's max.message.bytes); they are "
                              "dropped", len(sizes_bytes), max(sizes_bytes))  # fmt: skip

    async def _send(self, events: list[bytes]) -> tuple[int, int]:
        """Send a part's events: how many of them are done, and how many of those delivered.
        The batches hold the events in order: those of the leading batches acknowledged, or
        refused with one event alone (dropped, counted: it can never go), are done; the rest
        goes again."""
        sent, _ = await self.link.produce(events)  # what it did not take goes again too
        outcomes = await asyncio.gather(*(self.link.wait_ack(batch) for batch in sent))
        taken, refused = 0, []
        for batch, outcome in zip(sent, outcomes, strict=True):
            if outcome == "too_large" and len(batch.events) == 1:
                refused.append(batch.size_bytes)
            elif outcome != "acked":
                break
            taken += len(batch.events)
        if refused:
            self._drop_refused(refused)
        self.metrics.kafka_replayed.inc(taken - len(refused))
        return taken, taken - len(refused)

    async def _replay(self, path: Path, until_stopped: bool = True) -> bool:
        """Send one segment; True if it is done (sent and deleted, or not ours to send, or
        sent and not deletable). `until_stopped`: a stop ends it after the part in flight."""
        try:
            f = await asyncio.to_thread(open_locked, path)
        except OSError as exc:
            return self._unreadable(path, exc)
        if f is None:
            return True
        key = (path.name, os.fstat(f.fileno()).st_ino)  # a name is never used again
        replayed = 0
        try:
            f.seek(max(self._acked_bytes.get(key, 0), await asyncio.to_thread(acked_bytes, f)))
            while True:
                try:
                    events, ends = await asyncio.to_thread(read_part, f, self.chunk_bytes)
                except OSError as exc:
                    return self._unreadable(path, exc)
                if not events:
                    break
                if self._drained():
                    return False  # this part waits for the next start
                taken, delivered = await self._send(events)
                replayed += delivered
                if taken:
                    at = f.tell() if taken == len(events) else ends[taken - 1]
                    self._acked_bytes[key] = at
                    await asyncio.to_thread(keep_acked, f, at)
                if taken < len(events):
                    log.warning("replay of %s incomplete; the rest of it is sent again", path.name)
                    return False
                if until_stopped and self._stop.is_set():
                    # A stop waits for one part, not a whole segment (16 MiB: 16 acks, each
                    # up to kafka_timeout_ms): drain() goes on from the part acknowledged.
                    return False
            # Still under our flock, so no other process re-sends it. No directory fsync: a
            # power loss that undoes the unlink costs a duplicate replay, not an event.
            try:
                await asyncio.to_thread(delete, path)
            except OSError as exc:
                if replayed:
                    log.error("replayed %s but cannot delete it (%s); it is not sent again, "
                              "and its deletion is tried again", path.name, exc)  # fmt: skip
                return True  # on to the next segment
        finally:
            f.close()
        self._acked_bytes.pop(key, None)
        log.info("replayed %d events from %s", replayed, path.name)
        await self.after_delete()
        return True
