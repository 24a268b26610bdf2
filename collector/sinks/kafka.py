"""The Kafka sink: a bounded in-memory queue, one pump task producing record batches, and the
disk spool for everything Kafka does not take in time.

`send` never waits on the network: it appends to the queue (or, with Kafka down or the queue
over `kafka_buffer_max_bytes`, writes to the spool). The pump hands the queue to the producer
batch by batch; a watcher per batch waits for the ack and spills the batch if it fails or is
not acknowledged within `kafka_timeout_ms`. A replay task sends spooled segments back to Kafka
once it answers again. At-least-once: a spilled batch that aiokafka still delivers late is a
duplicate, removed downstream by event_id; nothing accepted is dropped unless the spool is full
(counted as `spool_full`) or Kafka refuses an event as too large even alone (`too_large`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from collector.metrics import CollectorMetrics
from collector.settings import Settings
from collector.sinks.kafka_link import KafkaLink, Sent
from collector.sinks.spool import SpoolSink
from collector.spool.replay import SpoolReplayer
from collector.spool.writer import headroom_bytes

log = logging.getLogger("beacon.kafka")


class KafkaSink:
    """Sink producing to `settings.kafka_topic`, spilling to `spool` when Kafka cannot keep up.

    Build it inside a running event loop and call `start()`; `close()` ends it.
    """

    def __init__(self, settings: Settings, metrics: CollectorMetrics, spool: SpoolSink) -> None:
        self.metrics = metrics
        self.spool = spool
        self.link = KafkaLink(settings, metrics)
        self.linger_s = settings.kafka_linger_ms / 1000
        self.batch_max_bytes = settings.kafka_batch_max_bytes
        self.queue_max_bytes = settings.kafka_buffer_max_bytes
        self._queue: list[bytes] = []
        self._queue_bytes = 0  # in _queue only
        self._queued_at_s = 0.0  # time.monotonic() when _queue's oldest event came
        self._unacked_bytes = 0  # in _queue or in the producer: what the bound applies to
        self._watchers: set[asyncio.Task[None]] = set()
        self._wakeup = asyncio.Event()
        self._closing = False
        self._pump_task: asyncio.Task[None] | None = None
        # What else counts the spool directory's bytes against its bound (a write-ahead log):
        # recounted as soon as the replay deletes a segment, not at its next own recount.
        self.recounts: list[Callable[[], Awaitable[None]]] = []
        self.replayer = SpoolReplayer(self.link, spool.directory, metrics, self._space_freed)
        # With a write-ahead log every event reaches Kafka through the spool: a full spool
        # refuses events (so readiness says so).
        self.through_spool = settings.durability == "wal"
        # What the spool holds at exit is sent for at most one ack timeout (the rest goes at
        # the next start, if the spool's volume outlives the process).
        self.drain_s = settings.kafka_timeout_ms / 1000
        self.link.notify_on_up(self._wakeup)

    def start(self) -> KafkaSink:
        """Start connecting (in the background: a down broker does not stop the collector)."""
        self.link.start()
        self.replayer.start()
        self._pump_task = asyncio.create_task(self._pump(), name="beacon-kafka-pump")
        return self

    # -- the protocol --------------------------------------------------------------------

    async def send(self, events: list[bytes]) -> None:
        if self._closing:
            raise RuntimeError("send after close")
        if not self.link.up:
            await self._spill(events, "kafka_down")
            return
        room = self.queue_max_bytes - self._unacked_bytes
        taken, size = 0, 0
        for raw in events:  # whole events in order: the queue takes a prefix, the spool the rest
            if size + len(raw) > room:
                break
            size += len(raw)
            taken += 1
        if taken:
            if not self._queue:
                self._queued_at_s = time.monotonic()
            self._queue.extend(events if taken == len(events) else events[:taken])
            self._queue_bytes += size
            self._add_unacked(size)
            self._wakeup.set()
        if taken < len(events):
            await self._spill(events[taken:], "queue_full")

    async def _space_freed(self) -> None:
        """The replay deleted a segment: the bound has that much more room."""
        await self.flush()
        for recount in self.recounts:
            await recount()

    async def flush(self) -> None:
        """fsync the spool (and let it rotate aged segments so replay can take them).

        Deliberately does not wait for Kafka acks: the buffer calls this every flush interval
        and must not stall behind a slow broker; ack deadlines are the watchers' job.
        """
        await self.spool.flush()

    def healthy(self) -> bool:
        """Events can be taken without loss: by Kafka, or else by the spool (replayed later).

        Kafka being down does not make a collector unready: with every collector unready a
        load balancer would have nowhere to send the pixels the spools could hold. Its state
        is `beacon_kafka_up` (and the BeaconKafkaUnreachable alert).
        """
        if self._closing:
            return False
        if self.through_spool:  # write-ahead mode: every event goes through the spool first
            return self.spool.healthy()
        if self.spool.healthy():
            return True
        # The spool full: ready while Kafka takes events at once, the queue kept to the
        # spool's headroom. A broker slower than the intake fills the queue, and then every
        # event is dropped, the load balancer none the wiser.
        headroom = headroom_bytes(self.queue_max_bytes)
        return self.link.up and self._unacked_bytes + headroom < self.queue_max_bytes

    def connected(self) -> bool:
        """The producer reaches the broker."""
        return self.link.up

    async def close(self) -> None:
        """Produce what is queued (or spool it), wait for every ack or its timeout, close the
        spool, send what it holds (waiting for a link that is down), stop the producer. Each
        step is bounded by kafka_timeout_ms: the replay's part in flight, the acks, the
        spool's sending, a connect in progress and the batches the producer still holds
        (KafkaLink.close)."""
        if self._closing:
            return
        self._closing = True
        await self.replayer.stop()
        self._wakeup.set()
        if self._pump_task is not None:
            await self._pump_task  # drains the queue once more, then returns
        else:  # never started: nothing was produced
            await self._drain_queue()
        while self._watchers:  # each ends at its ack or its deadline, spilling on failure
            results = await asyncio.gather(*self._watchers, return_exceptions=True)
            for error in (r for r in results if isinstance(r, BaseException)):
                log.error("a Kafka ack watcher failed; its events may be lost", exc_info=error)
        await self.spool.close()  # fsyncs and closes the open segment: replay can take it
        # Kafka up: the spool goes now, not at a next start on this volume, which a pod
        # deleted (an emptyDir) never has; what Kafka was slow to take just now included.
        await self.replayer.drain(self.drain_s)
        await self.link.close()
        log.info("Kafka sink closed")

    # -- the pump -------------------------------------------------------------------------

    async def _pump(self) -> None:
        while not (self._closing and not self._queue):
            await self._wakeup.wait()
            self._wakeup.clear()
            if self._queue_bytes < self.batch_max_bytes and not self._closing:
                # Let a batch fill for a moment: fewer, larger produce requests.
                await asyncio.sleep(self.linger_s)
            try:
                await self._drain_queue()
            except Exception:  # a bug must not stop the pump: the next events still need it
                log.exception("Kafka pump failed; the events it held may be lost")

    async def _drain_queue(self) -> None:
        events, self._queue = self._queue, []
        self._queue_bytes = 0
        if not events:
            return
        if not self.link.up:
            self._add_unacked(-sum(map(len, events)))
            await self._spill(events, "kafka_down")
            return
        # The deadline runs from the oldest event's arrival, not from its send: events that
        # waited for the pump or the producer have less time left, and none is at risk (in
        # memory only) for longer than the pump's linger and kafka_timeout_ms.
        deadline_s = self._queued_at_s + self.linger_s + self.link.timeout_s
        try:
            sent, rest = await self.link.produce(events, deadline_s)
        except Exception:  # a bug: none of them watched, so all to the spool (some twice)
            log.exception("Kafka produce failed; its events go to the spool")
            sent, rest = [], events
        for batch in sent:
            task = asyncio.create_task(self._watch(batch), name="beacon-kafka-ack")
            self._watchers.add(task)
            task.add_done_callback(self._watchers.discard)
        if rest:
            self._add_unacked(-sum(map(len, rest)))
            await self._spill(rest, "timeout" if self.link.up else "kafka_down")

    async def _watch(self, sent: Sent) -> None:
        outcome = await self.link.wait_ack(sent)
        self._add_unacked(-sent.size_bytes)
        if outcome != "acked":
            late = outcome == "timeout"
            too_large = outcome == "too_large"  # else failed: the link is marked down
            await self._spill(
                sent.events, "timeout" if late else "too_large" if too_large else "kafka_down"
            )

    # -- helpers --------------------------------------------------------------------------

    def _add_unacked(self, delta_bytes: int) -> None:
        self._unacked_bytes += delta_bytes
        self.metrics.kafka_queue_bytes.set(self._unacked_bytes)

    async def _spill(self, events: list[bytes], reason: str) -> None:
        kept = await self.spool.keep(events)
        # What the spool took: the rest is counted lost by it (spool_full, spool_error).
        self.metrics.kafka_spilled.labels(reason).inc(kept)
