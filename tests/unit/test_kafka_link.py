"""The Kafka link's bound on its batches, as refusals for size move it (no broker: the refusal
is the edge; tests/integration/test_kafka_sink.py has them from a real one)."""

from __future__ import annotations

import asyncio

from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError

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
