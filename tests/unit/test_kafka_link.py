"""The Kafka link's bound on its batches, as refusals for size move it (no broker: the refusal
is the edge; tests/integration/test_kafka_sink.py has them from a real one)."""

from __future__ import annotations

import asyncio

from aiokafka.errors import MessageSizeTooLargeError, ProducerClosed, RecordListTooLargeError

from collector.metrics import CollectorMetrics
from collector.settings import Settings
from collector.sinks.kafka_link import KafkaLink, Sent


def refused(link: KafkaLink, events: list[bytes], error: Exception) -> str:
    """wait_ack's outcome for a batch of `events` the broker refused with `error`."""

    async def outcome() -> str:
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        ack.set_exception(error)
        sent = Sent(events, sum(map(len, events)), ack, 0.0, float("inf"))
        return await link.wait_ack(sent)

    return asyncio.run(outcome())


def test_refused_batches_halve_the_bound_down_to_an_event_a_batch_and_a_lone_event_never(
    settings: Settings, metrics: CollectorMetrics
) -> None:
    link = KafkaLink(settings, metrics)
    assert link.batch_max_bytes == settings.kafka_batch_max_bytes
    huge = b"x" * 100_000
    assert refused(link, [huge], MessageSizeTooLargeError()) == "too_large"
    assert link.batch_max_bytes == settings.kafka_batch_max_bytes  # says nothing of smaller
    batch = [b"y" * 1000] * 100
    for error in (RecordListTooLargeError(), MessageSizeTooLargeError()):  # at once: once
        assert refused(link, batch, error) == "too_large"
    assert link.batch_max_bytes == 50_000
    assert refused(link, [b"a", b"b"], MessageSizeTooLargeError()) == "too_large"
    assert link.batch_max_bytes == 1  # an event a batch: below that no batch is refused
    assert not link._changed.is_set()  # never marked down: the broker answers


class Producer:
    """A producer at the edge: batches of one record; its `gate`, when set, holds a send as a
    full partition queue does, and it refuses every send once `closed`."""

    def __init__(self) -> None:
        self.taken: list[bytes] = []
        self.gate: asyncio.Event | None = None
        self.closed = False

    def create_batch(self) -> Batch:
        return Batch()

    async def send_batch(self, batch: Batch, topic: str, partition: int) -> asyncio.Future[None]:
        if self.gate is not None:
            await self.gate.wait()
        if self.closed:
            raise ProducerClosed()
        self.taken.append(batch.value)
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        ack.set_result(None)
        return ack


class Batch:
    def __init__(self) -> None:
        self.value = b""

    def append(self, key: None, value: bytes, timestamp: None) -> object | None:
        if self.value:
            return None  # full: one record a batch
        self.value = value
        return object()

    def close(self) -> None:
        pass


def test_a_producer_replaced_during_a_send_takes_the_new_one_down_never(
    settings: Settings, metrics: CollectorMetrics
) -> None:
    """A send waited on a producer that failed; the link replaced it meanwhile, and the old
    one, stopping, refused the next batch: that marked the new, healthy one down (and renewed
    it), and the rest of the events went to the spool. Its late failures did the same."""

    async def scenario() -> None:
        link = KafkaLink(settings, metrics)
        old, new = Producer(), Producer()
        link.producer, link.partitions, link.up = old, [0], True  # type: ignore[assignment]
        link.batch_max_bytes = 1  # a batch an event
        old.gate = asyncio.Event()
        events = [b"a", b"b", b"c"]
        sending = asyncio.create_task(link.produce(events))
        await asyncio.sleep(0)  # the first batch waits on the old producer's queue
        link.producer = new  # type: ignore[assignment]  # what a renewing connect does
        old.closed = True
        old.gate.set()
        sent, rest = await sending
        assert (new.taken, rest, [s.events for s in sent]) == (events, [], [[e] for e in events])
        assert link.up and not link._renew
        # A batch the old producer took and fails as it stops: kept, the link left up.
        failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        failed.set_exception(ProducerClosed())
        late = Sent([b"d"], 1, failed, 0.0, float("inf"), old)  # type: ignore[arg-type]
        assert await link.wait_ack(late) == "failed"
        assert link.up and not link._renew

    asyncio.run(scenario())
