"""The dead-letter topic: records that cannot become rows, kept as they came, with why."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer, ConsumerRecord

# Header names on a dead-lettered record: the reason, and where the record came from.
REASON = "beacon.reason"
SOURCE_TOPIC = "beacon.source.topic"
SOURCE_PARTITION = "beacon.source.partition"
SOURCE_OFFSET = "beacon.source.offset"


def headers_for(record: ConsumerRecord, reason: str) -> list[tuple[str, bytes]]:
    """The record's own headers, then ours."""
    return [
        *record.headers,
        (REASON, reason.encode()),
        (SOURCE_TOPIC, record.topic.encode()),
        (SOURCE_PARTITION, str(record.partition).encode()),
        (SOURCE_OFFSET, str(record.offset).encode()),
    ]


class DeadLetters:
    """A producer for the DLQ topic; `send` returns once every record is acknowledged.

    acks="all": a batch's offsets are committed only after its rejects are durable, so a
    reject is in the DLQ or will be read again. A replayed batch sends its rejects again:
    the DLQ is at-least-once, and the source offset header tells repeats apart.
    Idempotence stays off: with it aiokafka hangs while the broker is down
    (https://github.com/aio-libs/aiokafka/issues/1101).
    """

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            enable_idempotence=False,
            client_id="beacon-consumer-dlq",
        )

    async def start(self) -> None:
        await self._producer.start()

    async def send(self, rejects: Sequence[tuple[ConsumerRecord, str]]) -> None:
        """Produce every reject and wait for all acknowledgements; raises KafkaError."""
        waits = [
            await self._producer.send(
                self.topic,
                value=record.value,
                key=record.key,
                headers=headers_for(record, reason),
            )
            for record, reason in rejects
        ]
        await asyncio.gather(*waits)

    async def stop(self) -> None:
        await self._producer.stop()
