"""What the pipeline loop (consumers/pipeline.py) reads: a feed of batches, and the batch.

A feed knows its source: how records are read and cut into batches, each batch's dedup token,
how a batch is recorded before its insert and acknowledged after it, where rejects go, and what
a rebalance means. The spool feed (sources/spool_feed.py) and the Kafka feed
(sources/kafka_feed.py) implement it; the loop does the rest the same way for both.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, Protocol, TypeVar

if TYPE_CHECKING:
    from consumers.ingest import Erase

T = TypeVar("T")


class Batch:
    """Wire lines bound for ClickHouse under one dedup token, and how far their way got.

    `pieces` is the lines joined by newlines, in pieces (consumers/ingest.py numbers the lines
    from 0). Each step is done once: a retry after a failure starts at the first step not done.
    """

    def __init__(
        self, pieces: list[bytes], token: str, replay: bool, partial: bool = False
    ) -> None:
        self.pieces = pieces
        self.token = token
        self.replay = replay  # formed again from a recorded range: the ids are checked after
        # A replay not formed exactly as recorded (under another token): only its events not
        # already stored go in.
        self.partial = partial
        # Lines of each source of the batch (a Kafka partition), in order: the newest event is
        # reported for each. Empty: one source.
        self.segments: list[int] = []
        self.cut_by = "replay" if replay else ""  # consumers/metrics.py CUT_REASONS
        self.good = 0  # lines stored
        self.rejects: list[tuple[int, str]] = []  # (line number, reason), in line order
        # Recorded as in flight: an exact replay by the run before. A partial one records
        # itself before its insert (Kafka's `:p`), or, replayed again after a crash, it would
        # be taken for the batch its range was recorded in and stored whole under its token.
        self.marked = replay and not partial
        self.stored = False  # ClickHouse acknowledged the insert; good and rejects are known
        self.rejects_taken = False  # the feed has taken the rejects (DLQ, log)
        # received_at of the newest stored event of each segment (consumers/ingest.py)
        self.newest_by_segment: list[int] = []
        # Stored, and rows of it may be of people erased meanwhile: deleted before the ack
        # (consumers/ingest.py Stored.erase).
        self.erase: Erase | None = None
        self.insert_failed = False  # an insert of it failed: it may have landed all the same
        # Taken away (a Kafka rebalance) and counted so, though its commit may have landed.
        self.revoked = False
        self.failures = 0
        self.retry_at = 0.0  # monotonic time the next attempt is due

    @property
    def newest_ms(self) -> int:
        """received_at of the batch's newest stored event; 0: none, or not stored yet."""
        return max(self.newest_by_segment, default=0)

    @property
    def label(self) -> str:
        """Where the batch came from, for the log."""
        return self.token

    def failed(self, now: float, retry_max_s: float) -> float:
        """Back off after a failed step; returns the delay in seconds."""
        self.failures += 1
        # Capped doublings: the delay is at its bound long before, and 2.0**1024 overflows
        # (a store down for hours ended the consumer with OverflowError).
        delay_s = min(0.1 * 2 ** min(self.failures - 1, 30), retry_max_s)
        self.retry_at = now + delay_s
        return delay_s


class Quiet:
    """The feeds' `quiet` cut: once their source showed nothing new (and, for the spool, no
    segment being written) for a poll interval, at most once a batch age, so the end of a burst
    is stored at once and a trickle still makes about one insert an age."""

    def __init__(self, poll_s: float, max_age_s: float) -> None:
        self.poll_s = poll_s
        self.max_age_s = max_age_s
        self.since: float | None = None  # since when the source showed nothing
        self.cut_at = -math.inf  # when the last batch was cut for it

    def saw(self, active: bool, at: float) -> None:
        """A look at the source at `at`: `active` when anything was new or being written."""
        if active:
            self.since = None
        elif self.since is None:
            self.since = at

    def due(self, now: float) -> bool:
        return (
            self.since is not None
            and now - self.since >= self.poll_s
            and now - self.cut_at >= self.max_age_s
        )


# Small values (one event a record) are joined into pieces of about PIECE_BYTES; a value of
# LARGE_BYTES or more (the collector's NDJSON chunks, spool segments) travels as it is.
PIECE_BYTES = 64 * 1024
LARGE_BYTES = 16 * 1024


def lines_of(value: bytes | None) -> bytes:
    """A record value's lines as the batch numbers them: a value's own trailing newline would
    read as an empty line, so it is dropped (the same object when there is none)."""
    return (value or b"").rstrip(b"\n")


def join_lines(values: Sequence[bytes | None]) -> list[bytes]:
    """Record values (one event each, or NDJSON chunks) as the pieces of one body of lines,
    without copying a large value: their concatenation is their `lines_of` joined by
    newlines."""
    pieces: list[bytes] = []
    run: list[bytes] = []
    size = 0
    for value in values:
        value = lines_of(value)
        if len(value) >= LARGE_BYTES:
            if run:
                pieces += [b"\n".join(run), b"\n"]
                run, size = [], 0
            pieces += [value, b"\n"]
            continue
        run.append(value)
        size += len(value)
        if size >= PIECE_BYTES:
            pieces += [b"\n".join(run), b"\n"]
            run, size = [], 0
    if run:
        pieces.append(b"\n".join(run))
    elif pieces:
        pieces.pop()  # no newline after the last line
    if values and not lines_of(values[-1]):
        # An empty last line (an empty record) would end the body with a newline, after which
        # ClickHouse reads no line: one more makes it a line, refused and dead-lettered as an
        # empty line anywhere else is.
        pieces.append(b"\n")
    return pieces


class Feed(Protocol):
    """A source of batches, as the pipeline loop drives it."""

    # What a failed step may raise: the loop holds the batch and retries the step.
    errors: tuple[type[Exception], ...]
    # Held over each insert attempt: what takes a batch away waits for the attempt to end.
    inserting: asyncio.Lock

    async def start(self) -> None: ...

    async def stop(self) -> None:
        """Release the source (leave the group); called once, also after a failure."""

    async def read(self, final: bool) -> int:
        """Take what the source has into the feed's buffers; returns the records taken.
        `final` (stopping): only what can be taken without waiting for more."""

    async def idle(self, stop: asyncio.Event) -> None:
        """Wait before the next read after a pass that read and committed nothing."""

    def batches(self, now: float, final: bool) -> list[Batch]:
        """Every batch on its way, after cutting the due ones; `final` cuts all buffered."""

    def owns(self, batch: Batch) -> bool:
        """False once the batch is no longer this feed's to record or commit (revoked)."""

    async def reject(self, batch: Batch) -> None:
        """Take the batch's rejects (dead-letter them, or log them), after its insert."""

    async def alive_through(self, step: Awaitable[T]) -> T:
        """Await a step of the loop that can take long, outside `inserting`, while the source
        still hears from this reader (a Kafka group would take it for stuck)."""

    async def mark(self, batches: list[Batch]) -> None:
        """Record the batches as in flight, before their insert."""

    async def commit(self, batches: list[Batch]) -> None:
        """The batches are stored: move past them for good."""

    def hold(self, batch: Batch) -> None:
        """Read no further behind a batch that waits for a retry."""

    def after_pass(self) -> None:
        """Refresh the feed's own gauges after a pass of the loop."""
