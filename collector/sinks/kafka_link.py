"""The collector's one Kafka producer: (re)connected in the background, with "is Kafka up" as state.

Shared by the live path (KafkaSink's pump) and the spool replay. Events are handed to aiokafka as
whole record batches (`create_batch` / `send_batch`, ~2 us per record against ~12 us for
`send`), one partition after another like Kafka's sticky partitioner: a batch is filled for one
partition, then the next batch goes to the next partition. A record holds an NDJSON chunk of
events up to `kafka_record_max_bytes` (docs/tracking.md "Event format"), as Snowplow's
collector packs them: a consumer pays its per-record cost once per chunk, and so does this producer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, RecordListTooLargeError

from collector.metrics import CollectorMetrics
from collector.settings import Settings

log = logging.getLogger("beacon.kafka")

# How often a down link asks the broker again; an outage shorter than this costs at most this
# much extra spooling.
RECONNECT_INTERVAL_S = 1.0
# A batch the broker refuses as too large (past the topic's max.message.bytes, which the
# producer cannot see) halves the bound on the batches that follow, down to one event a batch;
# its events go to the spool and are replayed in the smaller batches. The link stays up: the
# broker is.
TOO_LARGE = (MessageSizeTooLargeError, RecordListTooLargeError)


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a late batch's outcome as seen; it was spilled already when its deadline passed."""
    if not future.cancelled():
        future.exception()


@dataclass(slots=True)
class Sent:
    """One record batch handed to the producer, waiting for its ack."""

    events: list[bytes]
    size_bytes: int
    ack: asyncio.Future[Any]
    sent_at_s: float  # time.monotonic() when the producer took it
    deadline_s: float  # time.monotonic() by which it is acked or spilled
    # The producer that took it: one replaced since fails its batches as it stops, and that
    # says nothing of the one in its place (None: the current one).
    producer: AIOKafkaProducer | None = None


class KafkaLink:
    """An AIOKafkaProducer that is started, probed and restarted by a background task."""

    def __init__(self, settings: Settings, metrics: CollectorMetrics) -> None:
        if metrics.kafka_up is None:
            raise ValueError("a Kafka link needs CollectorMetrics(kafka=True)")
        self.settings = settings
        self.metrics = metrics
        self.up_gauge = metrics.kafka_up  # beacon_kafka_up
        self.topic = settings.kafka_topic
        self.timeout_s = settings.kafka_timeout_ms / 1000
        self.record_max_bytes = settings.kafka_record_max_bytes
        # The events' bytes a batch takes: kafka_batch_max_bytes, less after a batch refused
        # as too large (for the life of the process: the topic's limit rarely changes).
        self.batch_max_bytes = settings.kafka_batch_max_bytes
        self.producer: AIOKafkaProducer | None = None
        self.partitions: list[int] = []
        self.up = False
        self._cursor = 0  # index into partitions of the next batch
        self._changed = asyncio.Event()  # set by mark_down and close: the task looks again
        self._stop = asyncio.Event()
        self._on_up: list[asyncio.Event] = []
        self._task: asyncio.Task[None] | None = None
        self._last_error: str | None = None
        # A send or an ack failed: the next connect starts a new producer. One whose sender
        # task died fails every send while the metadata probe still answers.
        self._renew = False
        self._stopping: set[asyncio.Task[None]] = set()  # producers replaced, still stopping
        self.up_gauge.set(0)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="beacon-kafka-link")

    def notify_on_up(self, event: asyncio.Event) -> None:
        """Set `event` whenever the link comes up (pump and replay wait on it)."""
        self._on_up.append(event)

    def mark_down(self, why: str, renew: bool = False) -> None:
        if self.up:
            log.warning("Kafka unreachable or slow (%s); events go to the spool", why)
        self._renew = self._renew or renew
        self.up = False
        self.up_gauge.set(0)
        self._changed.set()

    def _stopped(self, task: asyncio.Task[None]) -> None:
        self._stopping.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("stopping a replaced Kafka producer failed: %r", task.exception())

    async def close(self) -> None:
        """Stop reconnecting and stop the producer (it waits for batches it still holds)."""
        self._stop.set()
        self._changed.set()
        if self._task is not None:
            # A connect in progress asks the brokers in turn, each for up to timeout_s: with
            # several that take the connection and never answer (a network that drops their
            # packets), longer than a shutdown's grace period. It gets one timeout.
            try:
                await asyncio.wait_for(self._task, self.timeout_s)
            except TimeoutError:
                log.warning("Kafka connect cut short at close after %g s", self.timeout_s)
        if self._stopping:
            await asyncio.gather(*self._stopping, return_exceptions=True)
        self.up = False
        self.up_gauge.set(0)
        if self.producer is not None:
            await self.producer.stop()
            self.producer = None

    # -- sending ----------------------------------------------------------------------------

    async def produce(
        self, events: list[bytes], deadline_s: float | None = None
    ) -> tuple[list[Sent], list[bytes]]:
        """Hand events to the producer in record batches; returns the batches handed over and
        the events that could not be (the link is or went down, or `deadline_s` passed): the
        caller keeps those.

        `deadline_s` (time.monotonic(), default timeout_s from now) is when the events must be
        acknowledged or kept elsewhere. The sink counts it from when the events were queued,
        so time spent waiting for the pump or the producer counts against kafka_timeout_ms:
        that is what bounds what a SIGKILL can lose.
        """
        if deadline_s is None:
            deadline_s = time.monotonic() + self.timeout_s
        sent: list[Sent] = []
        start = 0
        # The producer of the moment, each batch: one replaced while this waited on it (its
        # partition's queue full) refuses the next batch as it stops, and the new one takes it.
        while start < len(events) and self.up and (producer := self.producer) is not None:
            remaining_s = deadline_s - time.monotonic()
            if remaining_s <= 0:
                break  # too late to send: the caller spools them
            batch = producer.create_batch()
            end, size_bytes = start, 0
            # A batch takes at least one record, so an event larger than a batch still goes.
            while end < len(events):
                chunk_end, chunk_bytes = self._chunk(events, end)
                if end > start and size_bytes + chunk_bytes > self.batch_max_bytes:
                    break
                value = events[end] if chunk_end == end + 1 else b"\n".join(events[end:chunk_end])
                if batch.append(key=None, value=value, timestamp=None) is None:
                    break
                size_bytes += chunk_bytes
                end = chunk_end
            batch.close()  # a closed batch is sent at once, not lingered over by aiokafka
            partition = self.partitions[self._cursor % len(self.partitions)]
            self._cursor += 1
            try:
                # Waits while the previous batch of this partition is not yet on the wire;
                # bounded, so a stuck broker turns into a spill instead of a stuck pump.
                ack = await asyncio.wait_for(
                    producer.send_batch(batch, self.topic, partition=partition), remaining_s
                )
            except TimeoutError:
                if producer is self.producer and self._fair(remaining_s):
                    self.mark_down(f"send_batch took over {remaining_s:.3f} s")
                break  # the caller keeps the events: spooled as late
            except Exception as exc:  # whatever it was, the caller keeps the events
                if producer is not self.producer:
                    continue  # replaced meanwhile: the batch goes to the new one
                # Besides KafkaError: a partition the topic no longer has (AssertionError).
                # The reconnect asks the broker for the partitions again.
                self.mark_down(f"send_batch: {exc!r}", renew=True)
                break
            now_s = time.monotonic()
            sent.append(Sent(events[start:end], size_bytes, ack, now_s, deadline_s, producer))
            self.metrics.kafka_batch_records.observe(end - start)
            start = end
        return sent, events[start:]

    def _fair(self, waited_s: float) -> bool:
        """Whether the broker had time enough to be called down for not answering in it: at
        least half the timeout. Events that came to it late (their pump held up) are spooled
        as late, and a healthy link stays up."""
        return waited_s >= self.timeout_s / 2

    def _chunk(self, events: list[bytes], start: int) -> tuple[int, int]:
        """End of the chunk of events from `start` (at least one) and its events' bytes."""
        end, size = start + 1, len(events[start])
        room = min(self.record_max_bytes, self.batch_max_bytes)
        while end < len(events) and size + len(events[end]) + (end - start) <= room:
            size += len(events[end])
            end += 1
        return end, size

    async def wait_ack(self, sent: Sent) -> str:
        """Wait for one batch's ack until its deadline: acked, failed, timeout or too_large.

        A failed or late batch marks the link down; aiokafka may still deliver a late batch,
        which then is a duplicate of the spilled copy (removed downstream by event_id). A batch
        refused as too large leaves the link up and smaller batches after it.
        """
        remaining_s = max(0.0, sent.deadline_s - time.monotonic())
        # asyncio.wait, not wait_for: cancelling `ack` (a shield over aiokafka's batch future)
        # would detach it, and the batch's later failure would be logged as never retrieved.
        try:
            await asyncio.wait([sent.ack], timeout=remaining_s)
        finally:
            if not sent.ack.done():  # late, or this wait cancelled (a drain's time ran out)
                sent.ack.add_done_callback(_retrieve)
        current = sent.producer is None or sent.producer is self.producer
        if not sent.ack.done():
            outcome = "timeout"
            waited_s = time.monotonic() - sent.sent_at_s
            if current and self._fair(waited_s):
                self.mark_down(f"no ack in {waited_s:.3f} s")
        elif not sent.ack.cancelled() and isinstance(sent.ack.exception(), TOO_LARGE):
            outcome = "too_large"  # the caller keeps the events; they go again, smaller
            self._shrink(sent, sent.ack.exception())
        elif sent.ack.cancelled() or sent.ack.exception() is not None:
            outcome = "failed"  # the caller keeps the events, whatever the error was
            error = "cancelled" if sent.ack.cancelled() else repr(sent.ack.exception())
            if current:
                self.mark_down(f"produce failed: {error}", renew=True)
        else:
            outcome = "acked"
            self.metrics.kafka_produce_seconds.observe(time.monotonic() - sent.sent_at_s)
        self.metrics.kafka_events.labels(outcome).inc(len(sent.events))
        return outcome

    def _shrink(self, sent: Sent, error: BaseException | None) -> None:
        """Halve the batch bound below the refused batch. Batches refused together (all sent
        at the old bound) lower it once, not once each; one event refused alone cannot go
        smaller (the replay of the spool drops it, counted)."""
        if len(sent.events) == 1:  # its size says nothing of the batches of smaller events
            return
        bound = max(1, sent.size_bytes // 2)  # at 1, one event a batch (and a record)
        if bound >= self.batch_max_bytes:
            return
        log.warning("Kafka refused a batch of %d events' bytes as too large (%r: the topic's "
                    "max.message.bytes); batches now take at most %d", sent.size_bytes, error,
                    bound)  # fmt: skip
        self.batch_max_bytes = bound

    # -- connecting ---------------------------------------------------------------------------

    def _metadata_updated(self, cluster: Any) -> None:
        """The producer's client refreshed its metadata (every metadata_max_age_ms, aiokafka's
        5 minutes by default, and after a send's error): batches go round the topic's
        partitions that have a leader now. Partitions added to the topic take events within
        that time, and one without a leader at the connect takes them again."""
        if self.up and self.producer is not None and cluster is self.producer.client.cluster:
            if partitions := cluster.available_partitions_for_topic(self.topic):
                self.partitions = sorted(partitions)

    def _new_producer(self) -> AIOKafkaProducer:
        compression = self.settings.kafka_compression
        return AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            client_id="beacon-collector",
            acks="all",
            compression_type=None if compression == "none" else compression,
            # Our batches are closed before send_batch, so aiokafka's linger never delays them;
            # KafkaSink lingers itself. Set anyway so nothing depends on aiokafka's default.
            linger_ms=self.settings.kafka_linger_ms,
            max_batch_size=self.settings.kafka_batch_max_bytes,
            # Also the accumulator's batch TTL: aiokafka gives up on a batch about when we do.
            request_timeout_ms=self.settings.kafka_timeout_ms,
            # The idempotent producer waits for a producer id and hangs while the broker is
            # down (https://github.com/aio-libs/aiokafka/issues/1101). Retries can therefore
            # duplicate a batch; consumers drop duplicates by event_id.
            enable_idempotence=False,
        )

    async def _run(self) -> None:
        while not self._stop.is_set():
            # Cleared before the connect, not after it: a close() during the connect would
            # otherwise be wiped out, and the wait below (and close with it) never end.
            self._changed.clear()
            if not self.up:
                await self._connect_once()
            if self.up and not self._stop.is_set():
                await self._changed.wait()  # until mark_down or close
            # Down, or just marked down: not tried again at once, or a broker whose metadata
            # answers while every send fails would be tried at network speed.
            if not self.up:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), RECONNECT_INTERVAL_S)

    async def _connect_once(self) -> None:
        """Start the producer if needed (again, after a send or an ack failed), then ask the
        broker for the topic's partition leaders."""
        try:
            if self._renew and self.producer is not None:
                old, self.producer, self._renew = self.producer, None, False
                # Stopped beside the new one, to its end: it waits for the batches it holds
                # (their callers spool their events once their acks time out), and stop()
                # cut short by a timeout would leave its sender and connections running.
                stopping = asyncio.create_task(old.stop())
                self._stopping.add(stopping)
                stopping.add_done_callback(self._stopped)
            if self.producer is None:
                producer = self._new_producer()
                try:
                    await producer.start()
                except BaseException:
                    await producer.stop()  # closes its client; a failed start leaves no tasks
                    raise
                self.producer = producer
                producer.client.cluster.add_listener(self._metadata_updated)
            # A fresh metadata request is the probe: cached metadata would say "up" forever.
            cluster = await self.producer.client.fetch_all_metadata()
            partitions = cluster.available_partitions_for_topic(self.topic)
            if not partitions:
                raise KafkaError(f"topic {self.topic!r} missing or leaderless (beacon kafka init?)")
            await self.producer.partitions_for(self.topic)  # the producer's own metadata too
        except Exception as exc:  # whatever it was, try again later: the collector serves on
            error = repr(exc)
            if error != self._last_error:  # once per distinct cause, not once a second
                log.warning("Kafka not usable yet, retrying every %g s: %s",
                            RECONNECT_INTERVAL_S, error)  # fmt: skip
                self._last_error = error
            return
        self._last_error = None
        self.partitions = sorted(partitions)
        self.up = True
        self.up_gauge.set(1)
        log.info("Kafka up: %s, topic %s, partitions %s", self.settings.kafka_bootstrap,
                 self.topic, self.partitions)  # fmt: skip
        for event in self._on_up:
            event.set()
