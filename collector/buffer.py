"""The in-memory event buffer between the request handlers and the sink.

Handlers only append bytes to a list; one pump task swaps the list out every `linger_ms`
and hands it to the sink, so no request ever waits on disk or network. With a write-ahead log
(BEACON_DURABILITY=wal, collector/spool/wal.py) the event goes to the spool file instead, before
the answer, and the pump only ages, fsyncs and recounts the log; the sink gets it from the spool.
The sink's own flush (a spool's fsync) runs beside the pump, so a stalled disk never holds
back the drain to a sink that still takes events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from collector.metrics import CollectorMetrics
from collector.sinks import Sink
from collector.spool.wal import WriteAheadLog

log = logging.getLogger("beacon.buffer")


class EventBuffer:
    """Bounded list of serialised events (in count and bytes) plus the task that drains it
    into a sink."""

    def __init__(
        self,
        sink: Sink,
        metrics: CollectorMetrics,
        *,
        max_events: int,
        max_bytes: int,
        linger_ms: int,
        flush_interval_ms: int,
        idle_flush_ms: int | None = None,
        wal: WriteAheadLog | None = None,
    ) -> None:
        self.sink = sink
        self.wal = wal
        self.metrics = metrics
        self.max_events = max_events
        # Events are ~0.6 KB, but one may be ~100 times that (every prop and URL at its
        # limit): a count alone let a stalled sink's buffer take gigabytes.
        self.max_bytes = max_bytes
        self._bytes = 0
        self.linger_s = linger_ms / 1000
        self.flush_interval_s = flush_interval_ms / 1000
        # Once events stop for this long the sink is flushed at once (the spool closes its
        # segment then), not at the next interval; None: only by the interval.
        self.idle_flush_s = None if idle_flush_ms is None else idle_flush_ms / 1000
        self._events: list[bytes] = []
        self._task: asyncio.Task[None] | None = None
        self._flushing: asyncio.Task[None] | None = None  # the sink's flush in progress
        self._flush_wanted = False  # another, once that one ends
        self._stop = asyncio.Event()
        self._closed = False
        self._refusal_logged = False  # the first event offered after close is logged
        # Why the last offer was refused (a drop reason): a request's outcome names it.
        self.refused = ""

    def __len__(self) -> int:
        return len(self._events)

    def offer(self, event: bytes) -> bool:
        """Append one event; False (counted, and `refused` says why) when the buffer (or the
        log) is full or fails, or the buffer is closed."""
        if self._closed:
            self._refuse_closed(1)
            return False
        if self.wal is not None:
            if self.wal.append(event):
                return True
            self.refused = self.wal.refused
            return False
        if len(self._events) >= self.max_events or self._bytes + len(event) > self.max_bytes:
            return self._refuse("buffer_full", 1)
        self._bytes += len(event)
        # An exact-size copy: orjson returns its output in the block it wrote into, 4 KiB for
        # a 500-byte event. Kept until the tick and in the Kafka sink's queue until acked,
        # those blocks held 8x the bytes every bound here counts; the copy costs less than
        # it saves, as the next request reuses the freed block (docs/performance.md).
        self._events.append(b"%b" % event)
        return True

    def offer_all(self, events: list[bytes]) -> bool:
        """Append all of `events` or none (a POST's batch, which its client sends again
        whole); False (and counted, each event) when the buffer (or the log) has no room, or
        is closed."""
        if self._closed:
            self._refuse_closed(len(events))
            return False
        if self.wal is not None:
            if self.wal.append_all(events):
                return True
            self.refused = self.wal.refused
            return False
        size = sum(map(len, events))
        if len(self._events) + len(events) > self.max_events or self._bytes + size > self.max_bytes:
            return self._refuse("buffer_full", len(events))
        self._bytes += size
        self._events.extend(b"%b" % event for event in events)  # exact-size copies, as offer
        return True

    def _refuse(self, reason: str, count: int) -> bool:
        self.refused = reason
        self.metrics.events_dropped.labels(reason).inc(count)
        return False

    def _refuse_closed(self, count: int) -> None:
        # Logged too: past the stop, /metrics is rarely scraped again.
        self._refuse("shutdown", count)
        if not self._refusal_logged:
            self._refusal_logged = True
            log.warning("events came after the buffer closed (a connection outlived the "
                        "stop's drain): dropped, counted as reason=shutdown")  # fmt: skip

    def start(self) -> None:
        self._task = asyncio.create_task(self._pump(), name="beacon-buffer-pump")

    async def _drain_once(self) -> int:
        events, self._events, self._bytes = self._events, [], 0
        self.metrics.buffer_events.set(0)
        if not events:
            return 0
        try:
            await self.sink.send(events)
        except Exception:  # a sink bug must not stop the pump: count the loss, keep going
            log.exception("sink.send failed; %d events lost", len(events))
            self.metrics.events_dropped.labels("sink_error").inc(len(events))
        return len(events)

    async def _pump(self) -> None:
        last_flush = last_event = idle_flush = time.monotonic()
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.linger_s)
            self.metrics.buffer_events.set(len(self._events))
            try:
                self.metrics.fold()
            except Exception:  # a tally that fails must not stop the events
                log.exception("folding the hot path's tallies failed")
            try:
                if self.wal is not None:
                    await self.wal.tick()
                if await self._drain_once():
                    # After the send: the sink's own idle clock starts at its write, so at the
                    # pause it finds the segment idle as long as the pump does.
                    last_event = time.monotonic()
                now = time.monotonic()
                idle = (
                    self.idle_flush_s is not None
                    and last_event > idle_flush  # once a pause
                    and now - last_event >= self.idle_flush_s
                )
                if idle or now - last_flush >= self.flush_interval_s:
                    if idle:
                        idle_flush = now
                    last_flush = time.monotonic()
                    if self.wal is not None and await self.wal.sync():
                        await self.wal.rescan()
                    self._flush_aside()
            except Exception:  # a disk error must not stop the pump: the next tick retries
                log.exception("buffer pump step failed")

    def _flush_aside(self) -> None:
        """Flush the sink beside the pump, one flush at a time. A Kafka sink's flush fsyncs
        its spool: a disk that stalls there must not stop the drain to a broker that takes
        the events, nor drop them as buffer_full while readiness says yes. A flush wanted
        while one runs comes right after it (the one at a pause closes the spool's segment:
        not left for the next interval)."""
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush_sink(), name="beacon-sink-flush")
        else:
            self._flush_wanted = True

    async def _flush_sink(self) -> None:
        while True:
            self._flush_wanted = False
            try:
                await self.sink.flush()
            except Exception:  # the next interval flushes again
                log.exception("flushing the sink failed")
            if not self._flush_wanted:
                return

    async def close(self) -> None:
        """Stop the pump after its current batch, hand the rest to the sink, flush and close it."""
        self._stop.set()
        if self._task is not None:
            await self._task
        # No drain comes after the one below, and the log closes its last segment: an event
        # offered from now on (a connection that outlived the server's shutdown) is refused
        # and counted, not kept to be lost (in the log, in a segment none would close).
        self._closed = True
        if self.wal is not None:
            try:
                await self.wal.close()  # the last segment is closed, so the sink can ship it
            except OSError:  # the sink still closes: its spool goes to Kafka, its producer stops
                log.exception("closing the write-ahead log failed; recovery closes its segment")
        await self._drain_once()
        # Only now: a flush that hangs (a stuck spool disk) holds back neither the last
        # events from a sink that takes them nor the refusal of those after them.
        if self._flushing is not None:
            await self._flushing
        await self.sink.flush()
        await self.sink.close()
        self.metrics.fold()  # the last requests' counts
